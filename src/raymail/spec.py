"""The campaign spec: a YAML file validated by pydantic models.

Every model forbids unknown keys, so a typo in a spec file is an error that names the key
(and suggests the nearest valid one) instead of a silently ignored setting.

One module, longer than the rest, because it is the schema of one YAML file: ``CampaignSpec``,
its sections and the loader, every key with its description, read top to bottom like a
reference. Sections that belong to one package are kept there (the message's DKIM,
attachments and S/MIME in ``compose/settings.py``; shaping in ``shaping/rules.py``).
"""

from __future__ import annotations

import codecs
import os
import re
import secrets
from pathlib import Path
from typing import Any, Final, Literal, get_args

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from raymail._io import read_yaml
from raymail._strict import StrictModel, error_lines
from raymail.compose.settings import AttachmentSettings, DkimSettings, SmimeSettings
from raymail.errors import SpecError
from raymail.hostport import HostPort, ListenAddress
from raymail.shaping.rules import ShapingSettings
from raymail.status import InDoubtPolicy

_ADDRESS_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


class SmtpSettings(StrictModel):
    """How delivery servers talk SMTP."""

    helo_name: str | None = Field(
        None,
        description="Name sent in EHLO/HELO; default: the fully qualified name of the machine "
        "each delivery server runs on (socket.getfqdn()), warned about when it has no dot. "
        "It should resolve to the sending address, whose PTR should name it.",
    )
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
    max_connections_per_mx: int | None = Field(
        None,
        ge=1,
        le=2000,
        description="Connections one delivery server spreads portions over per mail "
        "exchanger (host and port); default: its concurrency. Each portion always gets one "
        "connection; with a slow receiver its messages go out over more, up to this limit.",
    )


def exponential_backoff(attempt: int, initial_s: float, multiplier: float, max_s: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``initial_s`` growing by
    ``multiplier`` per attempt, at most ``max_s`` (deliveries and status webhooks alike)."""
    return min(initial_s * multiplier ** (attempt - 1), max_s)


# The deferral queue's default waits after each temporary failure (the last one repeating):
# the shape of an MTA's queue (issue 13: "2 m, 10 m, 30 m, 1 h, then every 2 h").
DEFAULT_SCHEDULE: Final = ("2m", "10m", "30m", "1h", "2h")


class RetrySettings(StrictModel):
    """What to do with deferred (4xx, dropped connection) recipients.

    By default a run behaves like an MTA's deferral queue (issue 13): the n-th temporary
    failure waits the n-th delay of ``schedule`` (2m, 10m, 30m, 1h, then every 2h), with no
    attempt limit but ``max_age`` (3 days) since the recipient's first attempt, after which
    the recipient is ``expired``. A retry due within ``linger`` is waited for in the run's
    process; a run whose only work left is retries due later ends its process in the
    ``waiting`` stage, and ``raymail resume`` (or the queue scheduler) continues it when they
    are due. ``schedule: []`` restores in-run retries only: ``max_attempts`` attempts with
    exponential backoff, then what is still deferred settles as ``deferred``.
    """

    max_attempts: int = Field(
        4,
        ge=1,
        le=999,
        description="Attempts per recipient (per address) within one run (only with "
        "schedule: [], the in-run retries).",
    )
    initial_backoff_s: float = Field(2.0, ge=0, description="Wait before the first retry.")
    max_backoff_s: float = Field(60.0, ge=0, description="Upper bound of the backoff.")
    multiplier: float = Field(2.0, ge=1, description="Backoff growth per attempt.")
    schedule: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SCHEDULE),
        description="Deferral queue: the wait after each temporary failure, in order, the "
        "last repeating (default [2m, 10m, 30m, 1h, 2h]); [] retries within the run only "
        "(max_attempts, exponential backoff, then deferred).",
    )
    max_age: str = Field(
        "3d",
        description="With a schedule: how long after its first attempt a recipient that got "
        "only temporary failures is given up as expired (3d, 12h, 90m, 30s).",
    )
    linger: str = Field(
        "2m",
        description="With a schedule: the longest wait for a due retry inside the run's "
        "process; a longer one ends the process in the waiting stage (resume picks it up).",
    )

    @field_validator("schedule")
    @classmethod
    def _delays(cls, value: list[str]) -> list[str]:
        for i, item in enumerate(value):
            try:
                duration_seconds(str(item))
            except ValueError as exc:
                raise ValueError(f"retry.schedule[{i}]: {exc}") from None
        return [str(item) for item in value]

    @field_validator("max_age", "linger")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        duration_seconds(value)
        return value

    @model_validator(mode="after")
    def _fits(self) -> RetrySettings:
        if self.schedule and duration_seconds(self.max_age) <= 0:
            raise ValueError("retry.max_age must be longer than 0s when retry.schedule is set")
        return self

    @property
    def deferral_queue(self) -> bool:
        """Whether deferred recipients wait by ``schedule`` until ``max_age``."""
        return bool(self.schedule)

    @property
    def max_age_s(self) -> float:
        return duration_seconds(self.max_age)

    @property
    def linger_s(self) -> float:
        return duration_seconds(self.linger)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next:
        the schedule's entry for it (the last one repeating), else the exponential backoff."""
        if self.schedule:
            return duration_seconds(self.schedule[min(attempt, len(self.schedule)) - 1])
        return exponential_backoff(
            attempt, self.initial_backoff_s, self.multiplier, self.max_backoff_s
        )

    def gives_up(self, attempt: int) -> bool:
        """Whether a recipient still deferred after ``attempt`` stops being retried in this
        run: never with a schedule (``max_age`` decides), else after ``max_attempts``."""
        return not self.schedule and attempt >= self.max_attempts


class ForwardRetrySettings(RetrySettings):
    """Retries of a forward to customer service: the outbox's own backoff (``max_attempts``,
    then parked), not a campaign's deferral queue, unless a schedule is given."""

    schedule: list[str] = Field(
        default_factory=list,
        description="Delays between forward attempts (e.g. [1m, 5m]); empty: exponential "
        "backoff from initial_backoff_s up to max_backoff_s.",
    )


HopChoice = Literal["alternate", "give_up"]


class OnFailure(StrictModel):
    """Per kind of failure, what happens to a recipient that has alternates (issue 14).

    A hop is sent in the same run once the failed attempt is settled, to the recipient's
    next address in its ``alternates`` column, as a ledger row of its own (same ``row``,
    ``hop`` N, ``alternate_of`` the address it stands in for). A recipient accepted at any
    hop is never sent to another.
    """

    hard_bounce: HopChoice = Field(
        "alternate",
        description="A permanent refusal of the address (5xx other than a block, or no "
        "mail exchanger): try the next alternate, or give up.",
    )
    expired: HopChoice = Field(
        "alternate",
        description="Only temporary failures until retry.max_age: try the next alternate, "
        "or give up.",
    )
    blocked: Literal["give_up", "alternate", "other_server", "other_server_then_alternate"] = Field(
        "give_up",
        description="A 5xx that refuses the sender rather than the address (policy, "
        "reputation, spam): give up, try the next alternate (often at another domain "
        "that may not block the sender), or retry the same address later through "
        "another delivery server of the run (another source address), then, once "
        "every server has been refused, give up (other_server) or try the next "
        "alternate (other_server_then_alternate).",
    )
    blocked_delay_s: float | None = Field(
        None,
        ge=0.0,
        le=3600.0,
        description="blocked: other_server waits this long before the retry through "
        "another server; absent: the retry policy's delay after the failed attempt "
        "(retry.schedule's step, else the backoff).",
    )
    in_doubt: Literal["resend", "skip", "alternate"] | None = Field(
        None,
        description="The message may have been delivered: resend, skip, or send to the "
        "next alternate instead (risks two copies: the first may have arrived). Absent: "
        "the spec's in_doubt decides.",
    )


def raymail_home() -> Path:
    """Where raymail keeps state that outlives a run: $RAYMAIL_HOME, else ~/.raymail."""
    configured = os.environ.get("RAYMAIL_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".raymail"


VERP_SECRET_FILE = "verp_secret"  # in raymail_home(): the secret of specs that set none
_PUBLIC_SECRET = "change-me"  # the old default: public, so it must never sign anything
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def home_verp_secret() -> str:
    """The secret kept in $RAYMAIL_HOME/verp_secret, made (0600) on first use.

    A spec without ``verp_secret`` signs with it; the returns server and the web service on
    the same RAYMAIL_HOME load the same spec and so verify with the same key.
    """
    path = raymail_home() / VERP_SECRET_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: use theirs
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path.read_text(encoding="utf-8").strip()


class SuppressionRules(StrictModel):
    """When a returned message takes an address off every future campaign."""

    hard_bounce_after: int = Field(
        1,
        ge=1,
        description="Suppress after this many hard bounces (hard_bounce_address, "
        "hard_bounce_domain), counted since the address was last un-suppressed.",
    )
    soft_bounce_after: int = Field(
        3,
        ge=1,
        description="Suppress after this many soft bounces (mailbox_full, transient) within "
        "soft_bounce_window_days.",
    )
    soft_bounce_window_days: float = Field(
        30.0, gt=0, description="Window in which soft bounces are counted."
    )
    complaints: bool = Field(True, description="Suppress at the first complaint (ARF report).")
    remove_requests: bool = Field(
        True, description="Suppress at the first removal request (reply or List-Unsubscribe)."
    )


class ReturnsSettings(StrictModel):
    """The returns server (the seed's C servers): where it listens, what it keeps, whom it tells.

    One model for a campaign spec's ``returns`` key and for the returns server's config, so
    the driver and the server agree on the suppression list and its rules.
    """

    listen: ListenAddress = Field(
        "127.0.0.1:2526",
        description="host:port the returns server (the MX of the return domain) listens on.",
    )
    reply_address: str | None = Field(
        None, description="Address replies are sent to (usually the spec's reply_to)."
    )
    abuse_address: str | None = Field(
        None, description="Address complaint reports (ARF) and abuse mail are sent to."
    )
    customer_service: HostPort | None = Field(
        None,
        description="host:port of the customer-service SMTP server that human replies and "
        "challenge-response requests are forwarded to; none: they stay in the outbox.",
    )
    customer_service_address: str | None = Field(
        None, description="Envelope recipient of forwarded messages at customer_service."
    )
    forward_sender: str = Field(
        "",
        description="Envelope sender of forwarded messages; empty: the null sender <>, so a "
        "failed forward never bounces back into the returns server.",
    )
    forward_retry: ForwardRetrySettings = Field(
        default_factory=lambda: ForwardRetrySettings(
            max_attempts=8, initial_backoff_s=5.0, max_backoff_s=600.0
        ),
        description="Retries of a failed forward before it is parked (it stays in the "
        "outbox until delivered; 'raymail returns forward' retries parked ones).",
    )
    home: str = Field(
        default_factory=lambda: str(raymail_home()),
        description="Folder of the returns archive, events and outbox (returns/ inside it).",
    )
    suppression_path: str | None = Field(
        None, description="The suppression list (Parquet); default HOME/suppression.parquet."
    )
    max_message_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest returned message accepted (552 above)."
    )
    max_recipients: int = Field(
        20, ge=1, le=1000, description="RCPT TO accepted per transaction (452 above)."
    )
    rules: SuppressionRules = Field(default_factory=SuppressionRules)

    @field_validator("reply_address", "abuse_address", "customer_service_address", "forward_sender")
    @classmethod
    def _is_address(cls, value: str | None) -> str | None:
        if value and not _ADDRESS_RE.match(value):
            raise ValueError(f"not an email address: {value!r}")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _forward_needs_address(self) -> ReturnsSettings:
        if self.customer_service and not self.customer_service_address:
            raise ValueError("customer_service needs customer_service_address (who gets them)")
        return self

    @property
    def suppression_file(self) -> Path:
        """The suppression list's path (the configured one, else under ``home``)."""
        if self.suppression_path:
            return Path(self.suppression_path).expanduser()
        return Path(self.home).expanduser() / "suppression.parquet"

    @property
    def returns_dir(self) -> Path:
        """Archive, events, rejects and outbox live here."""
        return Path(self.home).expanduser() / "returns"


class S3Settings(StrictModel):
    """Object storage for ``s3://`` recipients and exports; unset keys fall back to the
    usual AWS environment variables, then the AWS SDK's default chain (profiles, roles)."""

    endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint, e.g. http://minio.internal:9000; default "
        "$AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL, then AWS itself.",
    )
    region: str | None = Field(
        None, description="Region; default $AWS_REGION, then $AWS_DEFAULT_REGION."
    )
    access_key_id: str | None = Field(
        None, description="Access key; default $AWS_ACCESS_KEY_ID (prefer the environment)."
    )
    secret_access_key: str | None = Field(
        None, description="Secret key; default $AWS_SECRET_ACCESS_KEY (prefer the environment)."
    )
    session_token: str | None = Field(
        None, description="Session token; default $AWS_SESSION_TOKEN."
    )

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> S3Settings:
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("access_key_id and secret_access_key go together")
        return self


class RoutingSettings(StrictModel):
    """How portions are matched to delivery servers (issue: learned routing)."""

    policy: Literal["learned", "round_robin", "equal_shares"] = Field(
        "learned",
        description="learned: minimise the expected time to the last delivery from what "
        "each server has shown per domain, exploring a bounded share; round_robin: deal "
        "each domain's portions to the servers in turn; equal_shares: cut the list into "
        "one equal contiguous share per server (the seed's plain partitioning).",
    )
    table: str | None = Field(
        None,
        description="Directory of the routing table (Parquet), kept across runs; default "
        "$RAYMAIL_HOME/routing (RAYMAIL_HOME defaults to ~/.raymail).",
    )
    exploration: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Most share of the work given to (server, domain) pairs with little or "
        "stale evidence while a known-good server exists.",
    )
    half_life_days: float = Field(
        7.0, gt=0, description="Evidence this old counts half as much as new evidence."
    )
    probe: bool = Field(
        True, description="Measure RTT and hop count from each server to the mail exchangers."
    )
    probe_interval_s: float = Field(
        300.0, ge=1.0, description="Time between two probe rounds of one delivery server."
    )
    probe_timeout_s: float = Field(
        10.0, gt=0, le=120.0, description="Longest one probe round may take on one server."
    )
    probe_max_hosts: int = Field(
        20, ge=1, le=1000, description="Mail exchangers one probe round measures at most."
    )


StorageClass = Literal[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
]
# Warm to cold; GLACIER and DEEP_ARCHIVE must be restored before they can be read.
STORAGE_CLASSES: tuple[str, ...] = get_args(StorageClass)


class TierRule(StrictModel):
    """Archived objects nobody read for a while move to a colder (cheaper) storage class."""

    unread_days: float = Field(
        ..., gt=0, description="Days since an object was last read (or archived)."
    )
    to: StorageClass = Field(..., description="The storage class such objects move to.")


class ArchiveSettings(StrictModel):
    """When the campaign's tracking data and ledger go to object storage, and how cold."""

    to: str = Field(
        ..., pattern=r"^s3://[^/]+", description="s3://bucket/prefix the archive is written to."
    )
    s3: S3Settings | None = Field(
        None, description="Endpoint and credentials; default: the spec's s3, then environment."
    )
    older_than_days: float | None = Field(
        None, gt=0, description="Archive each day of events once it is this many days old."
    )
    larger_than_mb: float | None = Field(
        None, gt=0, description="Archive all of the campaign's events once they exceed this."
    )
    when_finished: bool = Field(
        False,
        description="Archive the events and the run's ledger once the run is complete.",
    )
    storage_class: StorageClass = Field(
        "STANDARD", description="Storage class objects are written in."
    )
    tiers: list[TierRule] = Field(
        default_factory=list,
        description="Colder classes for objects unread for N days, e.g. "
        "[{unread_days: 30, to: STANDARD_IA}, {unread_days: 90, to: GLACIER_IR}].",
    )
    warm_to: StorageClass | None = Field(
        "STANDARD",
        description="Class an object read again (by a query) moves back to at the next tier "
        "pass; null: it stays where it is.",
    )

    @model_validator(mode="after")
    def _tiers_get_colder(self) -> ArchiveSettings:
        ordered = sorted(self.tiers, key=lambda t: t.unread_days)
        ranks = [STORAGE_CLASSES.index(t.to) for t in ordered]
        if ranks != sorted(ranks) or len(set(ranks)) != len(ranks):
            raise ValueError("tiers: a longer unread_days must move to a colder storage class")
        return self


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_DURATION_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as '3d', '12h', '90m', '30s' or '2w'."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not a duration like 3d, 12h, 90m or 30s: {text!r}")
    return float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]


class FollowupRule(StrictModel):
    """A further campaign sent to the recipients the tracking events select."""

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The rule's id (its selections are recorded under it); default: derived "
        "from when, link and send.",
    )
    when: Literal["not_opened", "opened", "clicked", "not_clicked", "delivered"] = Field(
        ..., description="Who qualifies, among the recipients the campaign was delivered to."
    )
    after: str = Field(
        "0s",
        description="How long after a recipient's delivery the rule applies to them "
        "(3d, 12h, 90m, 30s).",
    )
    link: str | None = Field(
        None, description="For clicked / not_clicked: the link's name (or its URL)."
    )
    send: str = Field(
        ..., description="Campaign spec of the follow-up (relative to this spec's folder)."
    )
    include_bots: bool = Field(
        False, description="Count opens and clicks flagged as proxies or scanners."
    )

    @field_validator("after")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        duration_seconds(value)
        return value

    @model_validator(mode="after")
    def _link_fits_when(self) -> FollowupRule:
        if self.link and self.when not in ("clicked", "not_clicked"):
            raise ValueError(f"link is only for when: clicked / not_clicked, not {self.when}")
        return self

    @property
    def after_s(self) -> float:
        return duration_seconds(self.after)


class TrackingSettings(StrictModel):
    """Open pixel and click redirects added to the HTML part at render time (text untouched)."""

    opens: bool = Field(
        False, description="Add a per-recipient open pixel (web.base_url/o/TOKEN.gif) to the HTML."
    )
    clicks: bool = Field(
        False,
        description="Rewrite the HTML part's http(s) links to signed per-recipient redirects "
        "(web.base_url/c/TOKEN); the target comes from the campaign's link table or the token.",
    )


class MailingListSettings(StrictModel):
    """One list people subscribe to through the web service (double opt-in)."""

    confirm_subject: str = Field(
        "Please confirm your subscription", description="Subject of the confirmation email."
    )
    confirm_text: str = Field(
        "Please confirm that you want to receive our mail:\n{{ confirm_url }}\n\n"
        "If you did not ask for this, ignore this message.\n",
        description="Text of the confirmation email (jinja2; confirm_url, email and the "
        "subscriber's fields are defined).",
    )
    confirm_unsubscribe: bool = Field(
        False, description="Send an email confirming an unsubscribe of this list's campaigns."
    )
    unsubscribed_subject: str = Field(
        "You are unsubscribed", description="Subject of the unsubscribe confirmation."
    )
    unsubscribed_text: str = Field(
        "You will not receive these messages any more.\n",
        description="Text of the unsubscribe confirmation (jinja2; email is defined).",
    )


class WebSettings(StrictModel):
    """The web service (raymail web serve): one-click unsubscribe, subscribe, tracking."""

    base_url: str = Field(
        ...,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Public URL of the web service (behind the load balancer), e.g. "
        "'https://mail.shop.example'; unsubscribe, pixel, click and confirm links start here.",
    )
    secret: str | None = Field(
        None,
        min_length=16,
        description="Key that signs subscribe confirmations; default verp_secret.",
    )
    home: str | None = Field(
        None, description="Folder of the change log and the list store; default $RAYMAIL_HOME."
    )
    apply_interval_s: float = Field(
        2.0, gt=0, le=3600, description="Longest time an accepted change waits to be applied."
    )
    apply_batch: int = Field(
        1000,
        ge=1,
        description="Apply as soon as this many changes wait, without waiting for the interval.",
    )
    replicas: int = Field(1, ge=1, le=256, description="Serve replicas of the HTTP ingress.")
    max_body_bytes: int = Field(
        16_384, ge=256, le=10 * 1024 * 1024, description="Largest request body (413 above)."
    )
    max_events_per_request: int = Field(
        1000, ge=1, description="Events one POST /events may carry (422 above)."
    )
    ingest_key: str | None = Field(
        None, min_length=16, description="Bearer key POST /events requires; absent: ingest off."
    )
    confirm_ttl_hours: float = Field(
        72.0, gt=0, description="How long a subscribe confirmation link stays valid."
    )
    lists: dict[str, MailingListSettings] = Field(
        default_factory=dict,
        description="Lists people can subscribe to, by list id (letters, digits, . _ -).",
    )

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("lists")
    @classmethod
    def _list_ids(cls, value: dict[str, MailingListSettings]) -> dict[str, MailingListSettings]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
                raise ValueError(f"list id {name!r}: use letters, digits, '.', '_', '-'")
        return value

    @property
    def home_dir(self) -> Path:
        """Where the change log (web/) and the list store (lists/) live."""
        return Path(self.home).expanduser() if self.home else raymail_home()


class CampaignSpec(StrictModel):
    """One campaign: who sends what to whom, and with how much capacity."""

    campaign: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Campaign id."
    )
    sender: str = Field(..., description="From address, 'Name <addr@domain>' or 'addr@domain'.")
    subject: str = Field(..., min_length=1, description="Subject template (jinja2).")
    text: str = Field(..., description="Plain-text body template (jinja2).")
    html: str | None = Field(None, description="HTML body template; multipart/alternative.")
    recipients: str = Field(
        ...,
        description="Path or s3:// URL of a .csv or .parquet recipient table.",
    )
    recipients_encoding: str = Field(
        "utf-8",
        description="Character encoding of a CSV recipient list (utf-8, cp1252, latin-1, ...); "
        "a row not valid in it is rejected with its row number, the rest is sent.",
    )
    s3: S3Settings | None = Field(
        None, description="Endpoint and credentials for s3:// URLs (default: environment)."
    )
    export: str | None = Field(
        None,
        description="Folder or s3:// prefix the run's Parquet (ledger, observations, "
        "recipients, rejects) and JSON (run.json, report.json) are copied to while it runs "
        "and when it ends; the run directory stays the working copy.",
    )
    export_interval_s: float = Field(
        60.0, gt=0, description="Longest time between two exports while a run goes on."
    )
    metrics_domains: int = Field(
        1000,
        ge=0,
        description="Distinct recipient domains each delivery server labels in its Ray "
        "metrics; later ones are labelled 'other' (bounds the Prometheus series).",
    )
    mx_override: dict[str, HostPort] | None = Field(
        None,
        description="Map of recipient domain (or '*') to host:port; when absent, real MX lookup.",
    )
    nameservers: list[HostPort] = Field(
        default_factory=list,
        description="DNS servers (host:port) for MX lookups; default: the system resolver.",
    )
    delivery_servers: int = Field(2, ge=1, le=1024, description="Delivery server actors.")
    delivery_pool: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Name of a set of shared, long-lived delivery servers (named detached "
        "Ray actors) this campaign sends through, together with every other campaign naming "
        "it: priority decides who gets their connections. Absent: the run starts delivery "
        "servers of its own and ends them when it ends.",
    )
    priority: int = Field(
        100,
        ge=0,
        le=1_000_000,
        description="Lower is more urgent (0: transactional). On shared delivery servers "
        "(delivery_pool) a more urgent campaign's messages get the connections first, bulk "
        "campaigns giving theirs up at the next message boundary. 'raymail schedule "
        "--priority' sets it.",
    )
    concurrency: int = Field(25, ge=1, le=2000, description="SMTP connections per server.")
    target_minutes: float | None = Field(
        None, gt=0, description="Size servers and concurrency to finish within this time."
    )
    max_delivery_servers: int | None = Field(
        None, ge=1, description="Upper bound when sizing for target_minutes."
    )
    source_addresses: list[str] = Field(
        default_factory=list,
        description="Local addresses to bind, one per delivery server (cycled). An entry may "
        "be a mapping {address, helo_name}: the HELO name for that address (match its PTR).",
    )
    source_helo_names: dict[str, str] = Field(
        default_factory=dict,
        description="HELO name per source address (filled from source_addresses entries that "
        "give one); others use smtp.helo_name.",
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
        default_factory=home_verp_secret,
        min_length=1,
        description="Key that signs VERP and unsubscribe tokens; default: one generated on "
        "first use and kept in $RAYMAIL_HOME/verp_secret (where the returns server finds it). "
        f"Make one with: {MAKE_SECRET}",
    )
    portion_size: int = Field(100, ge=1, le=10000, description="Recipients per portion.")
    batch_rows: int = Field(
        65_536,
        ge=1,
        description="Recipients read, validated and planned at a time: bounds the driver's "
        "memory whatever the size of the list.",
    )
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    dispatch: Literal["push", "pull"] = Field(
        "push",
        description="push: the driver hands each server portions up to its capacity; pull: "
        "servers ask for portions sized to their free connections (seed 002's alternative).",
    )
    in_doubt: InDoubtPolicy = Field(
        InDoubtPolicy.RESEND,
        description="Recipients whose message may have been delivered (the connection died "
        "after the body was sent, or a server died mid-transaction): send again (risking a "
        "duplicate) or skip (risking a miss). Either way the report lists them.",
    )
    on_failure: OnFailure = Field(
        default_factory=OnFailure,
        description="Per kind of failure (hard_bounce, expired, blocked, in_doubt), whether "
        "a recipient moves on to its next address in the 'alternates' column.",
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
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    shaping: ShapingSettings = Field(
        default_factory=ShapingSettings,
        description="Adaptive traffic shaping per MX host: rules for replies meaning "
        "'slow down' (built-in ones in raymail/shaping/rules.yaml) and AIMD otherwise.",
    )
    tracking: TrackingSettings = Field(
        default_factory=TrackingSettings,
        description="Open and click tracking in the HTML part (needs a web section).",
    )
    web: WebSettings | None = Field(
        None,
        description="The web service; with it, the one-click unsubscribe URL defaults to "
        "web.base_url/u/{token}.",
    )
    list_id: str | None = Field(
        None, description="The web list (a web.lists key) this campaign is sent to, if any."
    )
    returns: ReturnsSettings | None = Field(
        None,
        description="Returns processing: the suppression list this campaign skips, and the "
        "returns server's settings. Absent: no suppression list is consulted.",
    )
    archive: ArchiveSettings | None = Field(
        None,
        description="Archive of the tracking events and the ledger in object storage, with "
        "storage-class tiers; absent: nothing is archived.",
    )
    followups: list[FollowupRule] = Field(
        default_factory=list,
        description="Further campaigns to recipients the tracking events select "
        "('raymail followups run').",
    )
    attachments: AttachmentSettings | None = Field(
        None, description="Files attached to the messages (per campaign and per recipient)."
    )
    smime: SmimeSettings | None = Field(
        None, description="S/MIME signing and encryption; absent: plain messages."
    )
    status_webhook: str | None = Field(
        None,
        description="http(s) URL that gets a signed JSON POST at every status change of this "
        "campaign while it runs from the queue (raymail schedule); retried with backoff, "
        "never in the send path.",
    )
    status_webhook_secret: str | None = Field(
        None,
        min_length=16,
        description="Key of the webhook's HMAC-SHA256 signature (X-Raymail-Signature); "
        "required with status_webhook.",
    )

    @property
    def resends_in_doubt(self) -> bool:
        """In-doubt recipients are sent again to the same address (on_failure.in_doubt
        first, then in_doubt)."""
        choice = self.on_failure.in_doubt
        return self.in_doubt == InDoubtPolicy.RESEND if choice is None else choice == "resend"

    @model_validator(mode="after")
    def _in_doubt_agrees(self) -> CampaignSpec:
        choice = self.on_failure.in_doubt
        explicit = "in_doubt" in self.model_fields_set
        if choice in ("resend", "skip") and explicit and choice != self.in_doubt:
            raise ValueError(
                f"in_doubt is {self.in_doubt} but on_failure.in_doubt is {choice}: give one"
            )
        return self

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> CampaignSpec:
        if self.status_webhook is not None:
            if not self.status_webhook.startswith(("http://", "https://")):
                raise ValueError("status_webhook must be an http:// or https:// URL")
            if not self.status_webhook_secret:
                raise ValueError("status_webhook needs status_webhook_secret (the HMAC key)")
        return self

    dkim: list[DkimSettings] = Field(
        default_factory=list,
        description="DKIM signatures every message gets (e.g. one RSA and one Ed25519).",
    )

    @model_validator(mode="before")
    @classmethod
    def _source_entries(cls, data: Any) -> Any:
        """``source_addresses`` entries given as {address, helo_name} mappings."""
        if not isinstance(data, dict) or not isinstance(data.get("source_addresses"), list):
            return data
        addresses: list[Any] = []
        helo = dict(data.get("source_helo_names") or {})
        for entry in data["source_addresses"]:
            if isinstance(entry, dict):
                unknown = set(entry) - {"address", "helo_name"}
                if unknown or "address" not in entry:
                    raise ValueError(
                        "a source_addresses entry is an address or {address, helo_name}"
                        + (f"; unknown key {sorted(unknown)[0]!r}" if unknown else "")
                    )
                if entry.get("helo_name"):
                    helo[str(entry["address"])] = entry["helo_name"]
                entry = entry["address"]
            addresses.append(entry)
        return {**data, "source_addresses": addresses, "source_helo_names": helo}

    @field_validator("dkim")
    @classmethod
    def _distinct_signatures(cls, value: list[DkimSettings]) -> list[DkimSettings]:
        seen = [(d.domain, d.selector) for d in value]
        for key in seen:
            if seen.count(key) > 1:
                raise ValueError(f"two signatures with domain {key[0]} and selector {key[1]}")
        return value

    @field_validator("verp_secret")
    @classmethod
    def _not_public(cls, value: str) -> str:
        if value == _PUBLIC_SECRET:
            raise ValueError(
                f"{_PUBLIC_SECRET!r} is a public example, not a secret: anyone could forge "
                f"unsubscribe and bounce tokens. Make one with {MAKE_SECRET} (or leave "
                "verp_secret out to use the one raymail keeps in $RAYMAIL_HOME/verp_secret)"
            )
        return value

    @field_validator("recipients_encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, cp1252, latin-1)") from None
        return value

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

    @model_validator(mode="after")
    def _web_links(self) -> CampaignSpec:
        if (self.tracking.opens or self.tracking.clicks) and self.web is None:
            raise ValueError("tracking needs a 'web' section (web.base_url serves the links)")
        if self.list_id is not None and (self.web is None or self.list_id not in self.web.lists):
            raise ValueError(f"list_id {self.list_id!r} is not one of web.lists")
        return self

    @property
    def one_click_url(self) -> str | None:
        """The List-Unsubscribe URL template: the configured one, else the web service's."""
        if self.unsubscribe_url is not None:
            return self.unsubscribe_url
        return None if self.web is None else f"{self.web.base_url}/u/{{token}}"

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


def parse_spec(data: Any, source: str = "<spec>", base: Path | None = None) -> CampaignSpec:
    """Validate already-parsed YAML/JSON data; raise SpecError naming every bad key.

    ``base`` is the folder relative key files are read from (the spec file's folder).
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a campaign spec must be a mapping of keys to values")
    try:
        return CampaignSpec.model_validate(data, context={"base": base})
    except ValidationError as exc:
        raise SpecError("\n".join(error_lines(source, exc, CampaignSpec))) from None


def load_spec(path: str | Path) -> CampaignSpec:
    """Read a YAML spec file; relative recipient paths are taken from the spec's folder."""
    spec_path = Path(path)
    data = read_yaml(spec_path, "spec file", SpecError)
    spec = parse_spec(data, str(spec_path), spec_path.parent)
    # Relative local paths are taken from the spec's folder; URLs are left alone.
    updates: dict[str, Any] = {
        key: str((spec_path.parent / value).resolve())
        for key in ("recipients", "export")
        if (value := getattr(spec, key)) and "://" not in value and not Path(value).is_absolute()
    }
    if spec.followups:
        updates["followups"] = [_resolve_send(rule, spec_path.parent) for rule in spec.followups]
    updates.update(_resolve_files(spec, spec_path))
    spec = spec.model_copy(update=updates) if updates else spec
    if spec.attachments and spec.attachments.files:
        from raymail.compose.attachments import check_campaign_files  # compose needs spec

        check_campaign_files(spec.attachments, str(spec_path))
    return spec


def _resolve_files(spec: CampaignSpec, spec_path: Path) -> dict[str, Any]:
    """Attachment, certificate and key paths taken from the spec's folder."""

    def absolute(value: str) -> str:
        return value if Path(value).is_absolute() else str((spec_path.parent / value).resolve())

    updates: dict[str, Any] = {}
    if spec.attachments and spec.attachments.files:
        files = [absolute(f) for f in spec.attachments.files]
        updates["attachments"] = spec.attachments.model_copy(update={"files": files})
    if spec.smime:
        paths = {
            key: absolute(value)
            for key in ("certificate_dir", "signer_certificate", "signer_key")
            if (value := getattr(spec.smime, key))
        }
        updates["smime"] = spec.smime.model_copy(update=paths)
    return updates


def _resolve_send(rule: FollowupRule, folder: Path) -> FollowupRule:
    if Path(rule.send).is_absolute():
        return rule
    return rule.model_copy(update={"send": str((folder / rule.send).resolve())})
