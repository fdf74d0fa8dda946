"""The campaign spec: a YAML file validated by pydantic models.

Every model forbids unknown keys, so a typo in a spec file is an error that names the key
(and suggests the nearest valid one) instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raymail.errors import SpecError

HostPort = Annotated[str, Field(pattern=r"^\[?[A-Za-z0-9.:_-]+\]?:\d{1,5}$")]
_ADDRESS_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SmtpSettings(_Strict):
    """How delivery servers talk SMTP."""

    helo_name: str = Field("raymail.localhost", description="Name sent in EHLO/HELO.")
    port: int = Field(25, ge=1, le=65535, description="Port of mail exchangers found by MX lookup.")
    starttls: Literal["opportunistic", "required", "never"] = Field(
        "opportunistic",
        description="opportunistic: STARTTLS when offered, certificates not verified (what "
        "MTAs do on port 25); required: fail the portion when STARTTLS is not offered; "
        "never: plain text.",
    )
    verify_certificates: bool = Field(False, description="Verify server certificates.")
    pipelining: bool = Field(True, description="Use PIPELINING (RFC 2920) when offered.")
    connect_timeout_s: float = Field(30.0, gt=0, description="TCP connect + banner timeout.")
    command_timeout_s: float = Field(60.0, gt=0, description="Timeout for one SMTP reply.")
    data_timeout_s: float = Field(120.0, gt=0, description="Timeout for the reply to DATA end.")
    max_messages_per_connection: int = Field(
        1000, ge=1, description="Reconnect after this many transactions on one connection."
    )
    max_rcpt_per_transaction: int = Field(
        100, ge=1, le=1000, description="RCPT TO per transaction when content is shared."
    )


class RetrySettings(_Strict):
    """What to do with deferred (4xx, dropped connection) recipients within a run."""

    max_attempts: int = Field(4, ge=1, description="Attempts per recipient within one run.")
    initial_backoff_s: float = Field(2.0, ge=0, description="Wait before the first retry.")
    max_backoff_s: float = Field(60.0, ge=0, description="Upper bound of the backoff.")
    multiplier: float = Field(2.0, ge=1, description="Backoff growth per attempt.")


class CampaignSpec(_Strict):
    """One campaign: who sends what to whom, and with how much capacity."""

    campaign: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Campaign id."
    )
    sender: str = Field(..., description="From address, 'Name <addr@domain>' or 'addr@domain'.")
    subject: str = Field(..., min_length=1, description="Subject template (jinja2).")
    text: str = Field(..., description="Plain-text body template (jinja2).")
    html: str | None = Field(None, description="HTML body template; multipart/alternative.")
    recipients: str = Field(..., description="Path to a .csv or .parquet recipient table.")
    mx_override: dict[str, HostPort] | None = Field(
        None,
        description="Map of recipient domain (or '*') to host:port; when absent, real MX lookup.",
    )
    nameservers: list[HostPort] = Field(
        default_factory=list,
        description="DNS servers (host:port) for MX lookups; default: the system resolver.",
    )
    delivery_servers: int = Field(2, ge=1, le=1024, description="Delivery server actors.")
    concurrency: int = Field(25, ge=1, le=2000, description="SMTP connections per server.")
    target_minutes: float | None = Field(
        None, gt=0, description="Size servers and concurrency to finish within this time."
    )
    max_delivery_servers: int | None = Field(
        None, ge=1, description="Upper bound when sizing for target_minutes."
    )
    source_addresses: list[str] = Field(
        default_factory=list,
        description="Local addresses to bind, one per delivery server (cycled).",
    )
    return_domain: str | None = Field(
        None, description="Domain of the VERP return path; default: the sender's domain."
    )
    reply_to: str | None = Field(None, description="Reply-To address.")
    unsubscribe_mailto: str | None = Field(
        None, description="mailto address for List-Unsubscribe; default unsubscribe@return."
    )
    unsubscribe_url: str | None = Field(
        None,
        description="https URL template for one-click unsubscribe (RFC 8058); '{token}' is "
        "replaced by the recipient's token.",
    )
    verp_secret: str = Field(
        "change-me", min_length=1, description="Key that signs VERP and unsubscribe tokens."
    )
    portion_size: int = Field(100, ge=1, le=10000, description="Recipients per portion.")
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    in_doubt: Literal["resend", "skip"] = Field(
        "resend",
        description="Recipients whose message may have been delivered (the connection died "
        "after the body was sent, or a server died mid-transaction): send again (risking a "
        "duplicate) or skip (risking a miss). Either way the report lists them.",
    )
    stall_timeout_s: float = Field(
        120.0,
        gt=0,
        description="A delivery server with work but no progress this long is "
        "replaced and its portions go to the others.",
    )
    checkpoint_interval_s: float = Field(
        2.0, gt=0, description="Longest time outcomes stay only in memory before Parquet."
    )

    @field_validator("sender")
    @classmethod
    def _sender_has_address(cls, value: str) -> str:
        if not _ADDRESS_RE.match(sender_address(value)):
            raise ValueError(f"not an email address: {value!r}")
        return value

    @field_validator("mx_override")
    @classmethod
    def _lower_domains(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else {k.lower(): v for k, v in value.items()}

    @property
    def sender_domain(self) -> str:
        return sender_address(self.sender).rsplit("@", 1)[1].lower()

    @property
    def bounce_domain(self) -> str:
        return (self.return_domain or self.sender_domain).lower()


def sender_address(sender: str) -> str:
    """The bare address inside 'Name <addr>' (or the string itself)."""
    match = re.search(r"<([^<>]*)>\s*$", sender)
    return (match.group(1) if match else sender).strip()


def _format_error(source: str, err: dict[str, Any], model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        known = _known_keys(model, err["loc"][:-1])
        hint = difflib.get_close_matches(key, known, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{source}: unknown key '{loc}'{suggestion}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{loc}'"
    return f"{source}: key '{loc}': {err['msg']} (got {err.get('input')!r})"


def _known_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    current: type[BaseModel] = model
    for part in path:
        field = current.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


def parse_spec(data: Any, source: str = "<spec>") -> CampaignSpec:
    """Validate already-parsed YAML/JSON data; raise SpecError naming every bad key."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a campaign spec must be a mapping of keys to values")
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        lines = [_format_error(source, e, CampaignSpec) for e in exc.errors()]  # type: ignore[arg-type]
        raise SpecError("\n".join(lines)) from None


def load_spec(path: str | Path) -> CampaignSpec:
    """Read a YAML spec file; relative recipient paths are taken from the spec's folder."""
    spec_path = Path(path)
    try:
        text = spec_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{spec_path}: spec file not found") from None
    except OSError as exc:
        raise SpecError(f"{spec_path}: cannot read spec file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{spec_path}: not valid YAML: {exc}") from None
    spec = parse_spec(data, str(spec_path))
    recipients = spec.recipients
    if "://" not in recipients and not Path(recipients).is_absolute():
        recipients = str((spec_path.parent / recipients).resolve())
        spec = spec.model_copy(update={"recipients": recipients})
    return spec
