"""The sink's config: how it answers, per domain and per address, validated by pydantic.

Every model forbids unknown keys, so a typo in a sink YAML file is an error naming the key
rather than a fault that silently never fires. Example::

    seed: 42
    default: {latency_ms: 5}
    domains:
      slow.example: {latency_ms: 250, tempfail_rate: 0.05}   # other keys from default
      gone.example: {permfail_rate: 1.0, permfail_reply: "550 5.1.2 No such domain"}
      flaky.example: {drop_rate: 0.02}
    topology:                    # per (client address, domain): see sink/topology.py
      127.0.0.2: {far.example: {latency_ms: 120, jitter_ms: 10, max_sessions: 4}}
    addresses:
      bounce-me@example.com: permfail
      later@example.com: tempfail
      cut-off@example.com: drop
      gone@example.com: bounce_hard         # 250, then a DSN to the envelope sender
    returns_server: 127.0.0.1:2526           # where generated returns are sent
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import Field, ValidationError, field_validator, model_validator

from raymail._io import read_yaml
from raymail._strict import StrictModel, error_lines
from raymail.errors import SinkConfigError
from raymail.hostport import HostPort

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class Behaviour(StrEnum):
    """A forced answer for one recipient address."""

    ACCEPT = "accept"  # 250 at RCPT and at the end of DATA
    TEMPFAIL = "tempfail"  # the rule's 4xx reply at RCPT
    PERMFAIL = "permfail"  # the rule's 5xx reply at RCPT
    DROP = "drop"  # 250 at RCPT, then the connection closes before the reply to DATA end
    HANG = "hang"  # 250 at RCPT, then the end of DATA is never answered
    # 250 to the message, then a return to its envelope sender (see sink/returns.py):
    BOUNCE_HARD = "bounce_hard"  # an RFC 3464 DSN, failed, 5.1.1 user unknown
    BOUNCE_SOFT = "bounce_soft"  # an RFC 3464 DSN, failed after retries, 4.2.2 mailbox full
    AUTO_REPLY = "auto_reply"  # an RFC 3834 out-of-office reply
    HUMAN_REPLY = "human_reply"  # a reply written by a person


RETURNS: Final = frozenset(
    {Behaviour.BOUNCE_HARD, Behaviour.BOUNCE_SOFT, Behaviour.AUTO_REPLY, Behaviour.HUMAN_REPLY}
)


class Rule(StrictModel):
    """How the sink treats recipients a rule applies to; rates are probabilities in [0, 1]."""

    latency_ms: float = Field(
        0.0, ge=0.0, le=600_000.0, description="Added before the reply to the end of DATA."
    )
    jitter_ms: float = Field(
        0.0,
        ge=0.0,
        le=600_000.0,
        description="Latency varies uniformly by up to this much either way (never below 0).",
    )
    rate_per_connection: float | None = Field(
        None,
        gt=0.0,
        description="Most transactions per second one connection may complete (a receiver "
        "that throttles); unset: no limit.",
    )
    max_sessions: int | None = Field(
        None,
        ge=1,
        description="Most transactions one client address may have open at once for a "
        "domain; beyond it RCPT TO gets a 4xx (a receiver's per-IP session limit).",
    )
    tempfail_rate: Rate = Field(0.0, description="Share of RCPT TO answered with 4xx.")
    permfail_rate: Rate = Field(0.0, description="Share of RCPT TO answered with 5xx.")
    drop_rate: Rate = Field(
        0.0, description="Share of transactions whose connection closes without a DATA reply."
    )
    hang: bool = Field(
        False,
        description="Never answer the end of DATA (the client's data timeout decides): a "
        "receiver that stalls mid-transaction.",
    )
    tempfail_reply: str = Field(
        "451 4.3.0 Temporary failure, try again later (raymail sink)",
        pattern=r"^4\d\d [^\r\n]+$",
        description="Reply line for a tempfailed recipient.",
    )
    permfail_reply: str = Field(
        "550 5.1.1 Mailbox unavailable (raymail sink)",
        pattern=r"^5\d\d [^\r\n]+$",
        description="Reply line for a permfailed recipient.",
    )
    returns: Behaviour | None = Field(
        None,
        description="Accept, then send a return to the envelope sender for every recipient "
        "this rule applies to: bounce_hard, bounce_soft, auto_reply or human_reply "
        "(needs returns_server).",
    )
    bounce_hard_reply: str = Field(
        "550 5.1.1 Recipient address rejected: User unknown in local recipient table",
        pattern=r"^5\d\d [^\r\n]+$",
        description="The remote reply a bounce_hard DSN reports (its Diagnostic-Code).",
    )
    bounce_soft_reply: str = Field(
        "452 4.2.2 Mailbox full, quota exceeded",
        pattern=r"^[45]\d\d [^\r\n]+$",
        description="The remote reply a bounce_soft DSN reports (its Diagnostic-Code).",
    )

    @field_validator("returns")
    @classmethod
    def _is_return(cls, value: Behaviour | None) -> Behaviour | None:
        if value is not None and value not in RETURNS:
            raise ValueError(f"must be one of {', '.join(sorted(RETURNS))}")
        return value

    @model_validator(mode="after")
    def _rates_fit(self) -> Rule:
        if self.tempfail_rate + self.permfail_rate > 1.0:
            raise ValueError("tempfail_rate + permfail_rate must not exceed 1")
        return self


class SinkConfig(StrictModel):
    """The whole sink config; domain rules inherit every key they leave out from ``default``."""

    seed: int = Field(0, description="Seed of the random.Random that draws faults.")
    hostname: str = Field(
        "sink.raymail.localhost",
        pattern=r"^[A-Za-z0-9.-]+$",
        description="Name in the banner and EHLO reply.",
    )
    max_message_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="SIZE advertised and enforced."
    )
    idle_timeout_s: float = Field(300.0, gt=0, description="Close a connection idle this long.")
    max_connections_per_client: int | None = Field(
        None,
        ge=1,
        description="Most connections one client address may hold open; beyond it the "
        "banner is too_many_connections_reply and the connection closes (a receiver's "
        "connection limit, like Postfix's smtpd_client_connection_count_limit).",
    )
    too_many_connections_reply: str = Field(
        "421 4.7.0 Too many connections from your address (raymail sink)",
        pattern=r"^4\d\d [^\r\n]+$",
        description="The banner sent to a connection over max_connections_per_client.",
    )
    default: Rule = Field(default_factory=Rule)
    domains: dict[str, Rule] = Field(
        default_factory=dict, description="Rules by recipient domain (exact, case-insensitive)."
    )
    clients: dict[str, Rule] = Field(
        default_factory=dict,
        description="Rules by client (sending) IP address; keys they set override the "
        "domain's rule, so one delivery server can be made to fail or hang alone.",
    )
    topology: dict[str, dict[str, Rule]] = Field(
        default_factory=dict,
        description="Rules by client (sending) IP address, then by recipient domain: the "
        "network between each delivery server and each receiver (see sink/topology.py). "
        "Keys they set override the domain's and the client's rule.",
    )
    addresses: dict[str, Behaviour] = Field(
        default_factory=dict,
        description="Forced behaviour by exact recipient address (case-insensitive).",
    )
    tempfail_first: dict[str, int] = Field(
        default_factory=dict,
        description="Addresses answered tempfail_reply at their first N RCPT TOs, then by "
        "their rule: a receiver that defers a recipient for a while (greylisting, a full "
        "mailbox emptied later).",
    )
    returns_server: HostPort | None = Field(
        None,
        description="host:port that generated returns (bounce_hard, bounce_soft, "
        "auto_reply, human_reply) are sent to by SMTP: the returns server of the sender.",
    )
    returns_delay_ms: float = Field(
        0.0, ge=0.0, le=600_000.0, description="Wait after the 250 before sending a return."
    )

    @field_validator("domains")
    @classmethod
    def _lower_domains(cls, value: dict[str, Rule]) -> dict[str, Rule]:
        return {k.lower(): v for k, v in value.items()}

    @field_validator("topology")
    @classmethod
    def _lower_topology(cls, value: dict[str, dict[str, Rule]]) -> dict[str, dict[str, Rule]]:
        return {ip: {d.lower(): r for d, r in rules.items()} for ip, rules in value.items()}

    @field_validator("tempfail_first")
    @classmethod
    def _lower_counts(cls, value: dict[str, int]) -> dict[str, int]:
        for address, times in value.items():
            if times < 0:
                raise ValueError(f"tempfail_first[{address!r}]: {times} is below 0")
        return {k.lower(): v for k, v in value.items()}

    @field_validator("addresses")
    @classmethod
    def _lower_addresses(cls, value: dict[str, Behaviour]) -> dict[str, Behaviour]:
        return {k.lower(): v for k, v in value.items()}


def parse_config(data: Any, source: str = "<sink config>") -> SinkConfig:
    """Validate already-parsed YAML/JSON data; raise SinkConfigError naming every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SinkConfigError(f"{source}: a sink config must be a mapping of keys to values")
    try:
        return SinkConfig.model_validate(data)
    except ValidationError as exc:
        raise SinkConfigError("\n".join(error_lines(source, exc, SinkConfig))) from None


def load_config(path: str | Path) -> SinkConfig:
    """Read a sink YAML (or JSON) file."""
    config_path = Path(path)
    data = read_yaml(config_path, "sink config file", SinkConfigError)
    return parse_config(data, str(config_path))
