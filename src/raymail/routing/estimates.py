"""Per-(server, domain) estimates for the policy: numpy arrays updated as portions finish.

Two layers of sums: ``base`` (the routing table, decayed, read once per run) and ``run``
(this run's evidence). A pair's expected connection-seconds per recipient is its own
evidence shrunk toward a prior from the most specific group that has evidence: domains on
the same MX host, then on the same network, then everything the server did, then all
servers. So a domain never mailed before, on a provider's MX that was, starts from what
the provider's other domains showed (the seed's "common network"). Probed RTTs tilt the
prior of pairs without evidence of their own.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

RCPT, BUSY, TX, OK, BAD = range(5)
_FIELDS = 5
PRIOR_RECIPIENTS = 2.0  # weight of the prior, in recipients
# A pair without enough evidence gets trial pieces of this many recipients (policy.py);
# one piece, decayed a little by the table's half-life, is enough to plan with.
TRIAL_RECIPIENTS = 4
ONE_PIECE = TRIAL_RECIPIENTS - 0.5
MIN_GROUP_RECIPIENTS = ONE_PIECE
DEFAULT_TAU_S = 0.05  # seconds per recipient when nothing at all is known
CONFIDENT_TRANSACTIONS = 3.0
BATCHED_RECIPIENTS_PER_TX = 2.0  # transactions this full count as batched sends
CONFIDENT_RECIPIENTS = ONE_PIECE
# A server that delivered this many recipients to an MX host knows every domain on it
# (hosted domains share the path and the receiver): the seed's "common network".
CONFIDENT_MX_RECIPIENTS = ONE_PIECE
POOL_MIN = 3  # known domains a group needs before unknown pairs draw from them
EXCESS_BAD = 0.3  # deferral + failure rate above the domain's best: excluded
MIN_FATES = 5.0
RTT_FLOOR_MS = 5.0
SOURCES = ("own", "mx", "network", "server", "all", "default")

Floats = NDArray[np.float64]


class PairStats:
    """Growable (server key x domain) arrays of evidence sums, groups and RTTs.

    ``table`` rows (the routing table, decayed) fill a domain's ``base`` sums the first
    time the domain is asked for, so only the run's domains take memory; their MX host and
    network group sums are taken over the whole table at once.
    """

    def __init__(self, table: pl.DataFrame | None = None) -> None:
        self.keys: list[str] = []
        self.domains: list[str] = []
        self._key_index: dict[str, int] = {}
        self._domain_index: dict[str, int] = {}
        self.base = np.zeros((_FIELDS, 4, 16))
        self.run = np.zeros((_FIELDS, 4, 16))
        self.rtt = np.full((4, 16), np.nan)
        self.mx_group = np.full(16, -1, dtype=np.int64)
        self.net_group = np.full(16, -1, dtype=np.int64)
        self._groups: dict[tuple[str, str], int] = {}
        self.group_base = np.zeros((2, 4, 16))  # RCPT, BUSY of the table per (key, group)
        self._table_rows: dict[str, list[tuple[Any, ...]]] = {}
        if table is not None and not table.is_empty():
            self._index_table(table)

    def _index_table(self, table: pl.DataFrame) -> None:
        columns = ("server", "domain", "mx_host", "network", "recipients", "busy_s",
                   "transactions", "accepted", "deferred", "failed", "rtt_ms")  # fmt: skip
        for row in table.select(columns).iter_rows():
            server, domain, mx, network, rcpt, busy, *_ = row
            self._table_rows.setdefault(str(domain), []).append(row)
            k = self.key(str(server))
            for kind, name in (("mx", mx), ("net", network)):
                if name:
                    g = self._group(kind, str(name))
                    self.group_base[0, k, g] += float(rcpt or 0.0)
                    self.group_base[1, k, g] += float(busy or 0.0)

    def key(self, key: str) -> int:
        index = self._key_index.get(key)
        if index is None:
            index = self._key_index[key] = len(self.keys)
            self.keys.append(key)
            self._grow()
        return index

    def domain(self, domain: str) -> int:
        index = self._domain_index.get(domain)
        if index is None:
            index = self._domain_index[domain] = len(self.domains)
            self.domains.append(domain)
            self._grow()
            self._load_domain(domain, index)
        return index

    def _load_domain(self, domain: str, d: int) -> None:
        for row in self._table_rows.pop(domain, []):
            server, _, mx, network, rcpt, busy, tx, ok, deferred, failed, rtt = row
            k = self.key(str(server))
            values = (rcpt, busy, tx, ok, (deferred or 0.0) + (failed or 0.0))
            for field, value in enumerate(values):
                self.base[field, k, d] += float(value or 0.0)
            self.set_groups(d, str(mx or ""), str(network or ""))
            if rtt is not None:
                self.rtt[k, d] = float(rtt)

    def set_groups(self, d: int, mx_host: str, network: str) -> None:
        """Which MX host and network domain ``d`` is on (the latest seen wins)."""
        if mx_host:
            self.mx_group[d] = self._group("mx", mx_host)
        if network:
            self.net_group[d] = self._group("net", network)

    def _group(self, kind: str, name: str) -> int:
        index = self._groups.setdefault((kind, name), len(self._groups))
        self._grow()
        return index

    def _grow(self) -> None:
        keys, domains, groups = len(self.keys), len(self.domains), len(self._groups)
        k_cap, d_cap, g_cap = self.base.shape[1], self.base.shape[2], self.group_base.shape[2]
        if keys > k_cap or domains > d_cap:
            k_new, d_new = max(k_cap, 2 * keys), max(d_cap, 2 * domains)
            self.base = _grown(self.base, (_FIELDS, k_new, d_new), 0.0)
            self.run = _grown(self.run, (_FIELDS, k_new, d_new), 0.0)
            self.rtt = _grown(self.rtt, (k_new, d_new), np.nan)
            self.mx_group = _grown(self.mx_group, (d_new,), -1)
            self.net_group = _grown(self.net_group, (d_new,), -1)
        k_cap = self.base.shape[1]
        if k_cap > self.group_base.shape[1] or groups > g_cap:
            shape = (2, k_cap, max(g_cap, 2 * groups))
            self.group_base = _grown(self.group_base, shape, 0.0)


def _grown(old: NDArray[Any], shape: tuple[int, ...], fill: float) -> NDArray[Any]:
    new = np.full(shape, fill, dtype=old.dtype)
    new[tuple(slice(0, n) for n in old.shape)] = old
    return new


@dataclass(frozen=True, slots=True)
class Estimates:
    """Posterior estimates for the (keys x domains) sub-matrix the policy asked about."""

    tau: Floats  # expected connection-seconds per recipient
    transactions: Floats
    recipients: Floats
    bad_rate: Floats  # deferred + failed share of recipient fates
    fates: Floats
    source: NDArray[np.int64]  # index into SOURCES: where the estimate mostly comes from
    confident: NDArray[np.bool_]
    excluded: NDArray[np.bool_]  # far more deferrals and failures than the domain's best
    busy: Floats  # own connection-seconds
    pools: dict[tuple[int, int], Floats]  # known values of the group, for unknown pairs

    def effective(self, tau: Floats | None = None) -> Floats:
        """Time per delivered recipient: deferrals and failures cost a retry elsewhere."""
        base = self.tau if tau is None else tau
        return base / (1.0 - np.minimum(self.bad_rate, 0.9))


def estimate(stats: PairStats, ks: NDArray[np.int64], ds: NDArray[np.int64]) -> Estimates:
    """Estimates for servers ``ks`` x domains ``ds`` (indices into ``stats``)."""
    total = stats.base + stats.run
    prior, source, mx_recipients = _prior(stats, total, ks, ds)
    sub = total[:, ks][:, :, ds]
    rcpt, busy, tx = sub[RCPT], sub[BUSY], sub[TX]
    tau = (busy + PRIOR_RECIPIENTS * prior) / (rcpt + PRIOR_RECIPIENTS)
    fates = sub[OK] + sub[BAD]
    bad_rate = sub[BAD] / (fates + 1.0)
    own = rcpt >= MIN_GROUP_RECIPIENTS
    source = np.where(own, 0, source)
    confident = _enough(tx, rcpt)
    confident |= (source == 1) & (mx_recipients >= CONFIDENT_MX_RECIPIENTS)
    judged = fates >= MIN_FATES
    best_bad = np.min(np.where(judged, bad_rate, np.inf), axis=0, initial=np.inf)
    excluded = judged & (bad_rate - best_bad[None, :] >= EXCESS_BAD)
    pools = _pools(stats, total, ks, ds, confident)
    return Estimates(tau, tx, rcpt, bad_rate, fates, source, confident, excluded, busy, pools)


def _enough(tx: Floats, rcpt: Floats) -> NDArray[np.bool_]:
    """Evidence enough to plan with: a trial piece's recipients, in a few transactions, or
    in fewer when they carry several recipients each (shared content goes to many RCPT
    per transaction, so a piece may be one transaction)."""
    batched = rcpt >= BATCHED_RECIPIENTS_PER_TX * tx
    return np.asarray((rcpt >= CONFIDENT_RECIPIENTS) & ((tx >= CONFIDENT_TRANSACTIONS) | batched))


def _pools(
    stats: PairStats,
    total: NDArray[np.float64],
    ks: NDArray[np.int64],
    ds: NDArray[np.int64],
    confident: NDArray[np.bool_],
) -> dict[tuple[int, int], Floats]:
    """For each unknown pair, the known per-domain values of its most specific group that
    has at least ``POOL_MIN`` of them (same server: MX host, network, everything; then
    every server)."""
    unknown = np.argwhere(~confident)
    if not len(unknown):
        return {}
    n_keys, n_domains = len(stats.keys), len(stats.domains)
    rcpt = total[RCPT, :n_keys, :n_domains]
    known = _enough(total[TX, :n_keys, :n_domains], rcpt)
    values = total[BUSY, :n_keys, :n_domains] / np.maximum(rcpt, 1e-12)
    groups: dict[tuple[int, str, int], list[float]] = {}
    for k, d in np.argwhere(known):
        value = float(values[k, d])
        for level, gid in (("mx", stats.mx_group[d]), ("net", stats.net_group[d])):
            if gid >= 0:
                groups.setdefault((int(k), level, int(gid)), []).append(value)
        groups.setdefault((int(k), "server", 0), []).append(value)
        groups.setdefault((-1, "all", 0), []).append(value)
    pools: dict[tuple[int, int], Floats] = {}
    for i, j in unknown:
        k, d = int(ks[i]), int(ds[j])
        for name in (
            (k, "mx", int(stats.mx_group[d])),
            (k, "net", int(stats.net_group[d])),
            (k, "server", 0),
            (-1, "all", 0),
        ):
            found = groups.get(name)
            if found is not None and len(found) >= POOL_MIN:
                pools[(int(i), int(j))] = np.array(found)
                break
    return pools


def _prior(
    stats: PairStats, total: NDArray[np.float64], ks: NDArray[np.int64], ds: NDArray[np.int64]
) -> tuple[Floats, NDArray[np.int64], Floats]:
    """The prior tau of each pair, which level it came from, and the recipients the
    server has delivered to the domain's MX host (0 when the MX host is unknown)."""
    n_keys, n_domains = len(stats.keys), len(stats.domains)
    rcpt = total[RCPT, :n_keys, :n_domains]
    busy = total[BUSY, :n_keys, :n_domains]
    run_r = stats.run[RCPT, :n_keys, :n_domains]
    run_b = stats.run[BUSY, :n_keys, :n_domains]
    prior = np.full((len(ks), len(ds)), np.nan)
    source = np.full((len(ks), len(ds)), len(SOURCES) - 1, dtype=np.int64)
    mx_recipients = np.zeros((len(ks), len(ds)))
    for level, groups in ((1, stats.mx_group), (2, stats.net_group)):
        ids = groups[:n_domains]
        known = ids >= 0
        want = ids[ds]
        has = want >= 0
        if not has.any():
            continue
        g_rcpt = stats.group_base[0, :n_keys].copy()
        g_busy = stats.group_base[1, :n_keys].copy()
        np.add.at(g_rcpt.T, ids[known], run_r[:, known].T)
        np.add.at(g_busy.T, ids[known], run_b[:, known].T)
        sub_r = np.where(has[None, :], g_rcpt[ks][:, np.maximum(want, 0)], 0.0)
        sub_b = np.where(has[None, :], g_busy[ks][:, np.maximum(want, 0)], 0.0)
        fill = np.isnan(prior) & (sub_r >= MIN_GROUP_RECIPIENTS)
        prior = np.where(fill, sub_b / np.maximum(sub_r, 1e-12), prior)
        source = np.where(fill, level, source)
        if level == 1:
            mx_recipients = sub_r
    server_r = rcpt.sum(axis=1)[ks]
    server_b = busy.sum(axis=1)[ks]
    fill = np.isnan(prior) & (server_r >= MIN_GROUP_RECIPIENTS)[:, None]
    prior = np.where(fill, (server_b / np.maximum(server_r, 1e-12))[:, None], prior)
    source = np.where(fill, 3, source)
    all_r, all_b = float(rcpt.sum()), float(busy.sum())
    if all_r >= MIN_GROUP_RECIPIENTS:
        fill = np.isnan(prior)
        prior = np.where(fill, all_b / all_r, prior)
        source = np.where(fill, 4, source)
    prior = np.where(np.isnan(prior), DEFAULT_TAU_S, prior)
    return prior * _rtt_tilt(stats, ks, ds, rcpt), source, mx_recipients


def _rtt_tilt(
    stats: PairStats, ks: NDArray[np.int64], ds: NDArray[np.int64], rcpt: Floats
) -> Floats:
    """Pairs without evidence of their own whose probe RTT is above (below) the domain's
    median get a prior up to twice (half) as slow."""
    rtt = stats.rtt[ks][:, ds]
    if np.isnan(rtt).all():
        return np.ones_like(rtt)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a domain no server probed
        median = np.nanmedian(rtt, axis=0)
        tilt = (rtt + RTT_FLOOR_MS) / (median[None, :] + RTT_FLOOR_MS)
    tilt = np.clip(np.where(np.isnan(tilt), 1.0, tilt), 0.5, 2.0)
    own = rcpt[ks][:, ds] >= MIN_GROUP_RECIPIENTS
    return np.where(own, 1.0, tilt)
