"""Topologies: the network between delivery servers and receivers, for one machine.

A topology gives, per (client source address, recipient domain), the latency, jitter,
per-connection rate, session limit and 4xx / 5xx / drop rates the sink applies. Binding each
delivery server to its own 127.0.0.x address then makes one sink stand in for receivers that
are near some delivery servers and far from others (seed 002's servers "in different
networks and regions"). A file looks like::

    seed: 7                      # informational: the generator's seed
    links:
      127.0.0.2:
        d00.example: {latency_ms: 30, jitter_ms: 3}
        d01.example: {latency_ms: 160, jitter_ms: 16, tempfail_rate: 0.02}
      127.0.0.3:
        d00.example: {latency_ms: 150, max_sessions: 4, rate_per_connection: 5}

:func:`random_topology` makes one from a seed number, with a fast and a slow delivery
server for every domain; :meth:`RandomTopology.seconds_per_transaction` is the truth an
oracle may use.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from raymail._io import read_yaml
from raymail._strict import StrictModel, error_lines
from raymail.errors import SinkConfigError
from raymail.sink.config import Rule, SinkConfig


class Topology(StrictModel):
    """A topology file: rules by client address, then by domain."""

    seed: int | None = Field(None, description="Seed it was generated from, if any.")
    links: dict[str, dict[str, Rule]] = Field(default_factory=dict)

    def apply(self, config: SinkConfig | None = None) -> SinkConfig:
        """``config`` with these links merged into its ``topology`` (links win)."""
        base = config or SinkConfig()
        merged = {ip: dict(rules) for ip, rules in base.topology.items()}
        for ip, rules in self.links.items():
            merged.setdefault(ip, {}).update({d.lower(): r for d, r in rules.items()})
        return base.model_copy(update={"topology": merged})


def load_topology(path: str | Path) -> Topology:
    """Read a topology YAML (or JSON) file; errors name the file and the key."""
    source = Path(path)
    data = read_yaml(source, "topology file", SinkConfigError)
    try:
        return Topology.model_validate(data or {})
    except ValidationError as exc:
        raise SinkConfigError("\n".join(error_lines(str(source), exc, Topology))) from None


@dataclass(frozen=True)
class RandomTopology:
    """A generated topology and the truth behind it."""

    seed: int
    clients: tuple[str, ...]
    domains: tuple[str, ...]
    links: dict[str, dict[str, Rule]]
    providers: dict[str, int]  # domain -> the provider (mail exchanger) it is hosted on

    def mx_host(self, domain: str) -> str:
        """The MX host name of a domain: one per provider, under ``.localhost`` so it
        resolves to loopback without DNS (RFC 6761)."""
        return f"mx.p{self.providers[domain.lower()]}.localhost"

    def mx_override(self, port: int) -> dict[str, str]:
        """A spec's ``mx_override``: each domain to its provider's MX host on the sink."""
        return {d: f"{self.mx_host(d)}:{port}" for d in self.domains}

    def topology(self) -> Topology:
        return Topology(seed=self.seed, links=self.links)

    def to_config(self, base: SinkConfig | None = None) -> SinkConfig:
        return self.topology().apply(base)

    def write(self, path: Path) -> Path:
        """Write as a topology YAML file (what ``raymail sink --topology`` reads)."""
        data = {
            "seed": self.seed,
            "links": {
                ip: {d: r.model_dump(exclude_unset=True) for d, r in rules.items()}
                for ip, rules in self.links.items()
            },
        }
        path.write_text(yaml.safe_dump(data, sort_keys=True), encoding="utf-8")
        return path

    def seconds_per_transaction(self, client: str, domain: str) -> float:
        """Expected time one transaction takes on one connection (latency or pacing)."""
        rule = self.links[client][domain]
        paced = 1.0 / rule.rate_per_connection if rule.rate_per_connection else 0.0
        return max(rule.latency_ms / 1000.0, paced)

    def fastest(self, domain: str) -> str:
        return min(self.clients, key=lambda c: self.seconds_per_transaction(c, domain))

    def slowest(self, domain: str) -> str:
        return max(self.clients, key=lambda c: self.seconds_per_transaction(c, domain))


def random_topology(
    seed: int,
    clients: Sequence[str],
    domains: Sequence[str],
    *,
    fast_ms: tuple[float, float] = (25.0, 40.0),
    slow_factor: tuple[float, float] = (4.0, 6.0),
    jitter: float = 0.1,
    providers: int | None = None,
    extra: dict[str, Any] | None = None,
) -> RandomTopology:
    """Each domain gets one fast client, one slow client (``slow_factor`` times slower)
    and the others in between; ``jitter`` is a share of the latency. With ``providers``,
    domains are dealt to that many providers, each with one MX host and one profile
    (domains on common mail exchangers behave alike, as hosted domains do); without, every
    domain is its own provider. ``extra`` keys (e.g. ``max_sessions``) go on every link.
    """
    if len(clients) < 2:
        raise ValueError("a topology needs at least two clients (a fast and a slow one)")
    rng = random.Random(seed)
    groups = providers or len(domains)
    profiles: list[dict[str, float]] = []
    for _ in range(groups):
        order = list(clients)
        rng.shuffle(order)
        fast = rng.uniform(*fast_ms)
        slow = fast * rng.uniform(*slow_factor)
        profile = {order[0]: fast, order[-1]: slow}
        for client in order[1:-1]:
            profile[client] = rng.uniform(1.5 * fast, 0.8 * slow)
        profiles.append(profile)
    links: dict[str, dict[str, Rule]] = {c: {} for c in clients}
    hosted: dict[str, int] = {}
    for i, domain in enumerate(domains):
        group = i % groups if providers else i
        hosted[domain.lower()] = group
        profile = profiles[group]
        for client in clients:
            latency = round(profile[client], 1)
            rule = {"latency_ms": latency, "jitter_ms": round(latency * jitter, 1)}
            links[client][domain.lower()] = Rule.model_validate({**rule, **(extra or {})})
    names = tuple(d.lower() for d in domains)
    return RandomTopology(seed, tuple(clients), names, links, hosted)
