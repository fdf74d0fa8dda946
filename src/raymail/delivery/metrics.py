"""Ray metrics of the delivery servers, for Prometheus and the Ray dashboard.

Each delivery server records its own outcomes and SMTP latencies with ``ray.util.metrics``;
the node's Ray agent exports them on its metrics port with Ray's ``ray_`` prefix, so an
operator watches a campaign across every node without asking the driver::

    ray_raymail_accepted_total{campaign, server, domain}     counter
    ray_raymail_deferred_total{campaign, server, domain}     counter (4xx, dropped before DATA)
    ray_raymail_failed_total{campaign, server, domain}       counter (5xx, template, no MX)
    ray_raymail_in_doubt_total{campaign, server, domain}     counter (dropped after DATA)
    ray_raymail_smtp_seconds{campaign, server, domain}       histogram, one SMTP transaction
    ray_raymail_inflight_portions{campaign, server}          gauge, portions being sent
    ray_raymail_open_connections{campaign, server}           gauge, pooled SMTP connections

Domains beyond the first ``max_domains`` a server sees are labelled ``other``: a list over
a hundred thousand domains must not become a hundred thousand Prometheus series per server.

Transaction latencies are kept per domain and recorded together (``flush``: when a portion
ends, at shutdown, or at least every ``FLUSH_S`` while transactions go on): the same values,
so ``_count``, ``_sum`` and the buckets are exact, only up to half a second later, recorded
in a tight loop without ``Histogram.observe``'s per-call tag checks (Ray 2.60 has no
observe-with-count, so each value is still one record).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from raymail.status import ACCEPTED, DEFERRED, FAILED, IN_DOUBT

OTHER_DOMAIN = "other"
# Seconds: from a fast receiver on the same network to a tarpit that answers after a minute.
LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
FLUSH_S = 0.5  # latencies wait at most this long (while transactions go on) to be recorded
_COUNTED = {ACCEPTED: "accepted", DEFERRED: "deferred", FAILED: "failed", IN_DOUBT: "in_doubt"}


class DeliveryMetrics:
    """The metrics of one delivery server; every method is a no-op outside Ray."""

    def __init__(self, campaign: str, server: str, max_domains: int = 1000) -> None:
        self._base = {"campaign": campaign, "server": server}
        self._max_domains = max_domains
        self._domains: set[str] = set()
        self._tag_cache: dict[str, dict[str, str]] = {}
        self._pending: dict[str, list[float]] = {}  # domain -> latencies not yet recorded
        self._flushed_at = time.monotonic()
        self._enabled = ray.is_initialized()
        if not self._enabled:
            return
        from ray.util.metrics import Counter, Gauge, Histogram

        keys = ("campaign", "server", "domain")
        self._counters: dict[str, Any] = {
            status: Counter(
                f"raymail_{name}",
                description=f"Recipients whose attempt ended {name.replace('_', ' ')}.",
                tag_keys=keys,
            )
            for status, name in _COUNTED.items()
        }
        self._latency = Histogram(
            "raymail_smtp_seconds",
            description="Duration of one SMTP transaction (MAIL FROM to the reply to DATA).",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=keys,
        )
        # The Cython metric observe() wraps, after its checks of tags built here once per
        # domain; observe itself if a Ray version lacks it.
        cython = getattr(self._latency, "_metric", None)
        self._record = cython.record if cython is not None else self._latency.observe
        self._inflight = Gauge(
            "raymail_inflight_portions",
            description="Portions a delivery server is sending now.",
            tag_keys=("campaign", "server"),
        )
        self._connections = Gauge(
            "raymail_open_connections",
            description="SMTP connections a delivery server holds open.",
            tag_keys=("campaign", "server"),
        )

    def _tags(self, domain: str) -> dict[str, str]:
        """The tags of ``domain``'s series, built once per domain (this runs per message)."""
        tags = self._tag_cache.get(domain)
        if tags is None:
            label = domain
            if domain not in self._domains:
                if len(self._domains) >= self._max_domains:
                    label = OTHER_DOMAIN
                else:
                    self._domains.add(domain)
            tags = {**self._base, "domain": label}
            if len(self._tag_cache) < 2 * self._max_domains:
                self._tag_cache[domain] = tags
        return tags

    def outcomes(self, domain: str, statuses: pa.Array | pa.ChunkedArray) -> None:
        """Count one portion's outcomes (one call per portion, not per recipient)."""
        if not self._enabled or not len(statuses):
            return
        tags = self._tags(domain)
        for item in pc.value_counts(statuses).to_pylist():
            counter = self._counters.get(item["values"])
            if counter is not None:
                counter.inc(item["counts"], tags=tags)

    def transaction(self, domain: str, seconds: float) -> None:
        """One SMTP transaction's duration (recorded by the next ``flush``)."""
        if not self._enabled:
            return
        pending = self._pending.get(domain)
        if pending is None:
            pending = self._pending[domain] = []
        pending.append(seconds)
        if time.monotonic() - self._flushed_at >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Record the latencies kept since the last flush (each value once)."""
        self._flushed_at = time.monotonic()
        if not self._pending:
            return
        record = self._record
        for domain, values in self._pending.items():
            tags = self._tags(domain)
            for seconds in values:
                record(seconds, tags=tags)
        self._pending.clear()

    def load(self, inflight_portions: int, open_connections: int | None = None) -> None:
        """What the server holds now."""
        if not self._enabled:
            return
        self._inflight.set(inflight_portions, tags=self._base)
        if open_connections is not None:
            self._connections.set(open_connections, tags=self._base)
