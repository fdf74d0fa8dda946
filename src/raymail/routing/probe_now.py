"""``probe``: one probe round now (``raymail routing probe``), outside any campaign.

With Ray (the default), the spec's delivery servers are started as during a campaign (same
resource, same source addresses), so each measures from its own node and address; with
``local=True`` this process probes from each source address in turn (one machine, no
Ray). Results go into the routing table like a campaign's probes; a probe that cannot run
is a row that says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa

from raymail.errors import RoutingError
from raymail.hostport import split_host_port
from raymail.routing.model import Evidence
from raymail.routing.probes import PROBE_SCHEMA, probe_domains
from raymail.routing.table import RoutingTable, probes_by_route
from raymail.spec import CampaignSpec

log = logging.getLogger(__name__)
_CALL_GRACE_S = 30.0  # actor start-up on top of the probe round's own time limit


def probe(
    spec: CampaignSpec,
    domains: Sequence[str] | None = None,
    *,
    local: bool = False,
    save: bool = True,
) -> pl.DataFrame:
    """Probe the MX hosts of ``domains`` (default: the spec's recipient domains, most
    recipients first) from every delivery server; one row per (server, domain)."""
    wanted = _domains(spec, domains)
    settings = spec.routing
    if local:
        tables = [_probe_here(spec, i, wanted) for i in range(_servers(spec))]
    else:
        tables = _probe_with_ray(spec, wanted)
    table = pa.concat_tables(tables) if tables else PROBE_SCHEMA.empty_table()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if save:
        now = datetime.now(UTC)
        RoutingTable(settings.table).merge(
            Evidence().frame(now), probes_by_route(frame), settings.half_life_days * 86400.0, now
        )
    return frame


def _domains(spec: CampaignSpec, domains: Sequence[str] | None) -> list[str]:
    if domains:
        cleaned = [d.strip().lower() for d in domains if d.strip()]
        if not cleaned:
            raise RoutingError("domains: every value given was empty")
        return list(dict.fromkeys(cleaned))
    from raymail.intake.recipients import load_recipients

    loaded = load_recipients(spec.recipients, spec.s3, encoding=spec.recipients_encoding)
    counts = pl.from_arrow(loaded.table.select(["domain"]))
    assert isinstance(counts, pl.DataFrame)
    ranked = counts.group_by("domain").len().sort(["len", "domain"], descending=[True, False])
    return [str(d) for d in ranked["domain"].to_list()]


def _servers(spec: CampaignSpec) -> int:
    return spec.delivery_servers


def _source(spec: CampaignSpec, i: int) -> str | None:
    addresses = spec.source_addresses
    return addresses[i % len(addresses)] if addresses else None


def _probe_here(spec: CampaignSpec, i: int, domains: list[str]) -> pa.Table:
    from raymail.delivery.mx import MXResolver

    settings = spec.routing
    nameservers = [split_host_port(ns) for ns in spec.nameservers] or None

    async def run() -> pa.Table:
        resolver = MXResolver(
            nameservers=nameservers, overrides=spec.mx_override, port=spec.smtp.port
        )
        return await probe_domains(
            domains,
            resolver,
            server=f"ds{i}",
            source_address=_source(spec, i),
            timeout_s=settings.probe_timeout_s,
            max_hosts=settings.probe_max_hosts,
        )

    return asyncio.run(run())


def _probe_with_ray(spec: CampaignSpec, domains: list[str]) -> list[pa.Table]:
    import ray

    from raymail.delivery.records import from_ipc
    from raymail.delivery.server import DeliveryServerActor
    from raymail.routing.scheduler import failure_table
    from raymail.runtime import DELIVERY_RESOURCE, delivery_slots, ensure_ray

    ensure_ray()
    settings = spec.routing
    options: dict[str, Any] = {"num_cpus": 0}
    if delivery_slots() > 0:
        options["resources"] = {DELIVERY_RESOURCE: 1}
    nameservers = [split_host_port(ns) for ns in spec.nameservers] or None
    names = [f"ds{i}" for i in range(_servers(spec))]
    handles = [
        DeliveryServerActor.options(**options).remote(name, spec, _source(spec, i), nameservers)
        for i, name in enumerate(names)
    ]
    refs = [
        h.probe.remote(domains, settings.probe_timeout_s, settings.probe_max_hosts) for h in handles
    ]
    tables: list[pa.Table] = []
    try:
        ready, _ = ray.wait(
            refs, num_returns=len(refs), timeout=settings.probe_timeout_s + _CALL_GRACE_S
        )
        for name, ref in zip(names, refs, strict=True):
            if ref not in ready:
                tables.append(failure_table(name, "probe round did not answer in time"))
                continue
            try:
                tables.append(from_ipc(ray.get(ref)))
            except Exception as exc:  # a server that could not start or probe: recorded
                tables.append(failure_table(name, f"probe call failed: {type(exc).__name__}"))
    finally:
        for handle in handles:
            ray.kill(handle)
    return tables
