"""Evidence: what each (delivery server, domain, MX host) pair has shown, as plain sums.

Sums (transactions, recipients, busy seconds, outcomes) rather than averages, because sums
can be decayed by one factor, added across runs and pooled across domains that share an MX
host or a network (the seed's "common network") without losing weight information.
A server is known by its route key: its source address when it has one (the network
location that the evidence is about), else its actor name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
import pyarrow as pa

from raymail.status import ACCEPTED, DEFERRED, FAILED, IN_DOUBT

# Additive columns of the evidence, in storage order.
SUMS = (
    "transactions",  # SMTP transactions
    "recipients",  # recipients in those transactions
    "busy_s",  # connection time: transactions plus connect and banner of new connections
    "transaction_s",  # MAIL FROM to the reply to the end of DATA
    "connects",  # new connections
    "connect_s",  # their TCP connect time
    "banner_s",  # their connect-to-banner time
    "accepted",  # recipient outcomes
    "deferred",
    "failed",
    "bytes",
)
PAIR = ("server", "domain", "mx_host")
UNKNOWN_MX = ""  # the MX of outcomes settled before any connection (e.g. connect refused)


def route_key(name: str, source_address: str | None) -> str:
    """The identity evidence is kept under: the source address, else the actor name."""
    return source_address or name


def network_of(mx_host: str) -> str:
    """The network an MX host is in: its /24 (IPv4) or /48 (IPv6) when it is an address,
    else its parent domain (mx1.example.net -> example.net). Names rather than resolved
    addresses, so observations (which carry the name) and probes agree."""
    try:
        ip = ipaddress.ip_address(mx_host.strip("[]"))
    except ValueError:
        labels = [p for p in mx_host.lower().rstrip(".").split(".") if p]
        return ".".join(labels[-2:]) if labels else UNKNOWN_MX
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(slots=True)
class PortionEvidence:
    """What one finished portion showed, pair by pair, plus its transactions in order."""

    sums: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    bad_flags: list[bool] = field(default_factory=list)  # per transaction: 4xx, 5xx, dropped
    domain: str = ""


def portion_evidence(key: str, outcomes: pa.Table, observations: pa.Table) -> PortionEvidence:
    """Sum one portion's observation rows (timings) and outcome rows (fates) per MX host."""
    result = PortionEvidence()
    index = {name: i for i, name in enumerate(SUMS)}
    main_mx = UNKNOWN_MX
    if observations.num_rows:
        columns = {
            name: observations.column(name).to_pylist()
            for name in (
                "domain", "mx_host", "connect_s", "banner_s", "transaction_s", "recipients",
                "response_class", "bytes",
            )
        }  # fmt: skip
        result.domain = str(columns["domain"][0])
        for i in range(observations.num_rows):
            mx = str(columns["mx_host"][i] or UNKNOWN_MX)
            row = result.sums.setdefault((key, result.domain, mx), [0.0] * len(SUMS))
            connect = columns["connect_s"][i]
            banner = columns["banner_s"][i]
            tx_s = float(columns["transaction_s"][i] or 0.0)
            row[index["transactions"]] += 1
            row[index["recipients"]] += float(columns["recipients"][i] or 0)
            row[index["transaction_s"]] += tx_s
            row[index["busy_s"]] += tx_s + float(connect or 0.0) + float(banner or 0.0)
            if connect is not None:
                row[index["connects"]] += 1
                row[index["connect_s"]] += float(connect)
                row[index["banner_s"]] += float(banner or 0.0)
            row[index["bytes"]] += float(columns["bytes"][i] or 0)
            result.bad_flags.append(columns["response_class"][i] != 2)
            main_mx = mx
    _add_outcomes(result, key, outcomes, main_mx, index)
    return result


def _add_outcomes(
    result: PortionEvidence, key: str, outcomes: pa.Table, main_mx: str, index: dict[str, int]
) -> None:
    """Count fates per MX; a row without an MX host counts only when it was deferred (a
    connection that failed), since a failure without one is not the network's doing."""
    if not outcomes.num_rows:
        return
    domain = result.domain or str(outcomes.column("domain")[0].as_py())
    result.domain = domain
    statuses = outcomes.column("status").to_pylist()
    hosts = outcomes.column("mx_host").to_pylist()
    slot = {ACCEPTED: "accepted", DEFERRED: "deferred", IN_DOUBT: "deferred", FAILED: "failed"}
    for status, host in zip(statuses, hosts, strict=True):
        name = slot.get(status)
        if name is None or (host is None and name != "deferred"):
            continue
        mx = str(host) if host is not None else main_mx
        row = result.sums.setdefault((key, domain, mx), [0.0] * len(SUMS))
        row[index[name]] += 1


class Evidence:
    """Evidence sums per (server, domain, mx_host), added to as portions finish."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], list[float]] = {}

    def __bool__(self) -> bool:
        return bool(self._rows)

    def add(self, portion: PortionEvidence) -> None:
        for pair, values in portion.sums.items():
            row = self._rows.setdefault(pair, [0.0] * len(SUMS))
            for i, value in enumerate(values):
                row[i] += value

    def clear(self) -> None:
        self._rows.clear()

    def frame(self, at: datetime) -> pl.DataFrame:
        """The sums as a frame with ``updated_at``; empty with the schema when none."""
        data: dict[str, list[object]] = {name: [] for name in (*PAIR, *SUMS)}
        for pair, values in self._rows.items():
            for name, text in zip(PAIR, pair, strict=True):
                data[name].append(text)
            for name, value in zip(SUMS, values, strict=True):
                data[name].append(value)
        schema = {**dict.fromkeys(PAIR, pl.String), **dict.fromkeys(SUMS, pl.Float64)}
        frame = pl.DataFrame(data, schema=schema)
        return frame.with_columns(pl.lit(at).dt.cast_time_unit("us").alias("updated_at"))
