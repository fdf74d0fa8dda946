"""Fault decisions: which rule governs a recipient, and what the sink answers.

:meth:`RuleBook.pick` is the one place that maps (client source address, domain, address) to
a rule: domain rule, then the client's rule, then the topology link of (client, domain), each
overriding the keys it sets. That is how one machine stands in for delivery servers in
different networks. Draws come from one seeded ``random.Random``: a run whose SMTP traffic
arrives in the same order gets the same faults.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from raymail.sink.config import RETURNS, Behaviour, Rule, SinkConfig

_MAX_RESOLVED = 100_000


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
        self._tempfail_left = dict(config.tempfail_first)  # RCPTs still to defer, by address
        self._clients = config.clients
        self._topology = config.topology
        self._resolved: dict[tuple[str, str], Rule] = {}
        self._rng = random.Random(config.seed)

    def pick(self, peer_ip: str, domain: str, address: str) -> Pick:
        """The seam for topology: the rule for this (client address, domain, recipient).

        ``domain`` and ``address`` are lower-case. A rule for ``peer_ip`` (the sending
        client), then its topology link for ``domain``, override the keys they set.
        Resolved rules are cached per (client, domain): this runs once per recipient.
        """
        rule = self._resolved.get((peer_ip, domain))
        if rule is None:
            rule = self._resolve(peer_ip, domain)
        return Pick(rule, self._addresses.get(address))

    def _resolve(self, peer_ip: str, domain: str) -> Rule:
        rule = self._domains.get(domain, self._default)
        client = self._clients.get(peer_ip)
        if client is not None:
            rule = _inherit(rule, client)
        link = self._topology.get(peer_ip, {}).get(domain)
        if link is not None:
            rule = _inherit(rule, link)
        if len(self._resolved) >= _MAX_RESOLVED:  # bounded: many domains, few clients
            self._resolved.clear()
        self._resolved[(peer_ip, domain)] = rule
        return rule

    def at_rcpt(self, peer_ip: str, address: str) -> tuple[Pick, Behaviour]:
        """Decide one RCPT TO: ACCEPT, TEMPFAIL or PERMFAIL (a forced DROP accepts here)."""
        lowered, domain = split_address(address)
        pick = self.pick(peer_ip, domain, lowered)
        left = self._tempfail_left.get(lowered, 0)
        if left > 0:
            self._tempfail_left[lowered] = left - 1
            return pick, Behaviour.TEMPFAIL
        if pick.forced is not None:
            forced = pick.forced
            accepts = forced in (Behaviour.DROP, Behaviour.HANG) or forced in RETURNS
            return pick, (Behaviour.ACCEPT if accepts else forced)
        rule = pick.rule
        if rule.tempfail_rate or rule.permfail_rate:
            draw = self._rng.random()
            if draw < rule.tempfail_rate:
                return pick, Behaviour.TEMPFAIL
            if draw < rule.tempfail_rate + rule.permfail_rate:
                return pick, Behaviour.PERMFAIL
        return pick, Behaviour.ACCEPT

    def return_for(self, pick: Pick) -> Behaviour | None:
        """The return (bounce, reply) an accepted recipient gets after the 250, if any."""
        if pick.forced in RETURNS:
            return pick.forced
        return pick.rule.returns

    def hangs(self, picks: Sequence[Pick]) -> bool:
        """Whether the end of DATA goes unanswered for this transaction."""
        return any(pick.rule.hang or pick.forced is Behaviour.HANG for pick in picks)

    def at_data(self, picks: Sequence[Pick]) -> tuple[float, bool]:
        """(latency in seconds, drop?) for a transaction whose accepted recipients are picks.

        The latency is the largest of the recipients' rules, moved by a uniform draw within
        its jitter. The connection drops when any recipient is forced to DROP; otherwise
        one draw against the largest drop_rate of the recipients that are not forced.
        """
        latency_ms = 0.0
        jitter_ms = 0.0
        drop_rate = 0.0
        forced_drop = False
        for pick in picks:
            if pick.rule.latency_ms >= latency_ms:
                latency_ms, jitter_ms = pick.rule.latency_ms, pick.rule.jitter_ms
            if pick.forced is Behaviour.DROP:
                forced_drop = True
            elif pick.forced is None:
                drop_rate = max(drop_rate, pick.rule.drop_rate)
        if jitter_ms > 0.0:
            latency_ms = max(0.0, latency_ms + self._rng.uniform(-jitter_ms, jitter_ms))
        drop = forced_drop or (drop_rate > 0.0 and self._rng.random() < drop_rate)
        return latency_ms / 1000.0, drop

    @staticmethod
    def min_interval(picks: Sequence[Pick]) -> float:
        """Shortest time between two transactions on one connection (rate_per_connection)."""
        rates = [p.rule.rate_per_connection for p in picks if p.rule.rate_per_connection]
        return 1.0 / min(rates) if rates else 0.0
