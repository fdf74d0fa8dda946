"""Fault decisions: which rule governs a recipient, and what the sink answers.

:meth:`RuleBook.pick` is the one place that maps (client source address, domain, address) to
a rule; the routing work will key a topology on the client address there, so nothing else in
the sink needs to change. Draws come from one seeded ``random.Random``: a run whose SMTP
traffic arrives in the same order gets the same faults.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from raymail.sink.config import Behaviour, Rule, SinkConfig


@dataclass(frozen=True, slots=True)
class Pick:
    """The rule for one recipient, and its forced behaviour when the config names it."""

    rule: Rule
    forced: Behaviour | None = None


def _inherit(default: Rule, rule: Rule) -> Rule:
    """A domain rule with every key it did not set taken from the default rule."""
    return default.model_copy(update={k: getattr(rule, k) for k in rule.model_fields_set})


def split_address(address: str) -> tuple[str, str]:
    """(lower-cased address, lower-cased domain); domain is '' for a bare local part."""
    lowered = address.lower()
    return lowered, lowered.rpartition("@")[2] if "@" in lowered else ""


class RuleBook:
    """Resolves rules once at start, then answers per recipient in O(1)."""

    def __init__(self, config: SinkConfig) -> None:
        self._default = config.default
        self._domains = {d: _inherit(config.default, r) for d, r in config.domains.items()}
        self._addresses = dict(config.addresses)
        self._clients = config.clients
        self._rng = random.Random(config.seed)

    def pick(self, peer_ip: str, domain: str, address: str) -> Pick:
        """The seam for topology: the rule for this (client address, domain, recipient).

        ``domain`` and ``address`` are lower-case. A rule for ``peer_ip`` (the sending
        client) overrides the keys it sets.
        """
        rule = self._domains.get(domain, self._default)
        client = self._clients.get(peer_ip)
        if client is not None:
            rule = _inherit(rule, client)
        return Pick(rule, self._addresses.get(address))

    def at_rcpt(self, peer_ip: str, address: str) -> tuple[Pick, Behaviour]:
        """Decide one RCPT TO: ACCEPT, TEMPFAIL or PERMFAIL (a forced DROP accepts here)."""
        lowered, domain = split_address(address)
        pick = self.pick(peer_ip, domain, lowered)
        if pick.forced is not None:
            forced = pick.forced
            accepts = forced in (Behaviour.DROP, Behaviour.HANG)
            return pick, (Behaviour.ACCEPT if accepts else forced)
        rule = pick.rule
        if rule.tempfail_rate or rule.permfail_rate:
            draw = self._rng.random()
            if draw < rule.tempfail_rate:
                return pick, Behaviour.TEMPFAIL
            if draw < rule.tempfail_rate + rule.permfail_rate:
                return pick, Behaviour.PERMFAIL
        return pick, Behaviour.ACCEPT

    def hangs(self, picks: Sequence[Pick]) -> bool:
        """Whether the end of DATA goes unanswered for this transaction."""
        return any(pick.rule.hang or pick.forced is Behaviour.HANG for pick in picks)

    def at_data(self, picks: Sequence[Pick]) -> tuple[float, bool]:
        """(latency in seconds, drop?) for a transaction whose accepted recipients are picks.

        The latency is the largest of the recipients' rules. The connection drops when any
        recipient is forced to DROP; otherwise one draw against the largest drop_rate of
        the recipients that are not forced.
        """
        latency_ms = 0.0
        drop_rate = 0.0
        forced_drop = False
        for pick in picks:
            latency_ms = max(latency_ms, pick.rule.latency_ms)
            if pick.forced is Behaviour.DROP:
                forced_drop = True
            elif pick.forced is None:
                drop_rate = max(drop_rate, pick.rule.drop_rate)
        drop = forced_drop or (drop_rate > 0.0 and self._rng.random() < drop_rate)
        return latency_ms / 1000.0, drop
