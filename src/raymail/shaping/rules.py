"""Shaping rules: which replies mean "slow down", and what raymail does about each.

Rules are data: ``rules.yaml`` beside this module holds the built-in ones (421 / 4.7.x too
many connections, rate limited, Yahoo TSS04, Outlook server busy, Gmail unusual rate, try
again later); a spec's ``shaping.rules`` adds rules (tried first) or replaces a built-in
one of the same name. Validated by pydantic like the rest of the spec, so a typo in a rule
is an error naming the key.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator

from raymail._strict import StrictModel

_BUILTIN = Path(__file__).with_name("rules.yaml")

Action = Literal["fewer_connections", "lower_rate", "suspend"]


def _regex(value: str) -> str:
    """A spec field that must be a regular expression: checked at load, named if bad."""
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


class ShapingRule(StrictModel):
    """One reply pattern and its action."""

    name: str = Field(
        ...,
        min_length=1,
        description="Rule name (a spec rule of the same name replaces the built-in one).",
    )
    codes: list[int] = Field(
        default_factory=list, description="SMTP reply codes it applies to; empty: any 4xx/5xx."
    )
    text: str = Field(
        ...,
        min_length=1,
        description="Regular expression searched in the reply text (case-insensitive).",
    )
    action: Action = Field(..., description="fewer_connections, lower_rate or suspend.")
    factor: float = Field(0.5, gt=0.0, lt=1.0, description="Multiplier of the limit or rate.")
    suspend_s: float = Field(60.0, gt=0.0, le=86_400.0, description="Pause for suspend.")
    recover_after_s: float = Field(
        30.0, gt=0.0, description="Quiet time after which limits grow back (the way back)."
    )

    @field_validator("text")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _regex(value)

    def matches(self, code: int, text: str) -> bool:
        if self.codes and code not in self.codes:
            return False
        if not self.codes and code < 400:
            return False
        return _compiled(self.text).search(text) is not None


class HostLimits(StrictModel):
    """Fixed limits for the MX hosts a pattern names (a provider's published limits):
    learned limits never go above them, and they hold for the whole fleet of a run."""

    mx: str = Field(
        ...,
        min_length=1,
        description="Regular expression matched against the MX host name (case-insensitive, "
        "whole name), e.g. '.*\\.google\\.com'.",
    )
    max_connections: int | None = Field(None, ge=1, description="Most connections at once.")
    max_rate_per_s: float | None = Field(
        None, gt=0.0, description="Most messages (SMTP transactions) per second."
    )
    messages_per_connection: int | None = Field(
        None, ge=1, description="Most transactions one connection carries."
    )

    @field_validator("mx")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _regex(value)


class ShapingSettings(StrictModel):
    """The spec's ``shaping`` key."""

    enabled: bool = Field(True, description="Learn per-MX limits from replies.")
    rules: list[ShapingRule] = Field(
        default_factory=list, description="Rules tried before (or replacing) the built-in ones."
    )
    builtin_rules: bool = Field(True, description="Use the rules shipped in rules.yaml.")
    min_connections: int = Field(1, ge=1, description="Never fewer connections per MX.")
    max_connections: int | None = Field(
        None, ge=1, description="Never more connections per MX (default: the fleet's total)."
    )
    increase_every: int = Field(
        50, ge=1, description="Successful transactions per MX before one more connection."
    )
    decrease: float = Field(
        0.7, gt=0.0, lt=1.0, description="Multiplicative decrease when no rule matches."
    )
    slow_factor: float = Field(
        5.0, gt=1.0, description="A reply this many times slower than usual is a tarpit."
    )
    max_errors_per_connection: int = Field(
        3, ge=1, description="5xx in a row after which a connection is closed and replaced."
    )
    hosts: list[HostLimits] = Field(
        default_factory=list,
        description="Fixed per-MX limits (first match wins), for the whole fleet of a run.",
    )
    state_actor: str | None = Field(
        None,
        description="Set by the driver, not by hand: the named Ray actor holding this run's "
        "per-MX state, shared by all its delivery servers (raymail/shaping/fleet.py).",
    )

    def limits_for(self, mx_host: str) -> HostLimits | None:
        """The first ``hosts`` entry naming this MX host."""
        for entry in self.hosts:
            if _compiled(entry.mx).fullmatch(mx_host):
                return entry
        return None


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@cache
def builtin_rules() -> tuple[ShapingRule, ...]:
    data = yaml.safe_load(_BUILTIN.read_text(encoding="utf-8"))
    return tuple(ShapingRule.model_validate(item) for item in data)


def rules_of(settings: ShapingSettings) -> list[ShapingRule]:
    """The spec's rules first, then the built-in ones it does not replace."""
    own = {rule.name for rule in settings.rules}
    builtin = builtin_rules() if settings.builtin_rules else ()
    return [*settings.rules, *(r for r in builtin if r.name not in own)]


def match_rule(rules: list[ShapingRule], code: int, text: str) -> ShapingRule | None:
    """The first rule for this reply (None: no rule; AIMD decides)."""
    for rule in rules:
        if rule.matches(code, text):
            return rule
    return None
