"""Probes: TCP round-trip time and hop count from a delivery server to mail exchangers.

The seed measures "network hops and/or the time delay" with ping and traceroute. Here:

- RTT is the time a TCP connect to the MX host's SMTP port takes (always possible, no
  privilege; ICMP ping needs raw sockets or a ping group and is often filtered anyway).
- Hops come from TCP SYNs with a growing IP TTL, as ``tcptraceroute`` does. Routers answer
  an expired SYN with ICMP time-exceeded; Linux hands that to an unprivileged socket with
  ``IP_RECVERR`` (the error queue names the router), so no root and no raw socket are
  needed. The TTL at which the connect succeeds (or is refused by the host) is the hop
  count, counted as traceroute does: a host behind one router is 2 hops away.

Every probe is bounded in time; one that cannot run (unreachable host, filtered path, a
platform without IP_RECVERR) yields a row that says why, never an exception. Probes run
from the delivery server's own source address, in its control concurrency group, off the
send path.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa

PROBE_SCHEMA = pa.schema(
    [
        pa.field("server", pa.string()),
        pa.field("source_address", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("mx_host", pa.string()),
        pa.field("address", pa.string()),
        pa.field("port", pa.int32()),
        pa.field("method", pa.string()),
        pa.field("rtt_ms", pa.float64()),
        pa.field("hops", pa.int32()),
        pa.field("path", pa.string()),  # routers, comma-separated; '*' for a silent hop
        pa.field("error", pa.string()),  # why RTT or hops are missing
        pa.field("at", pa.timestamp("us", tz="UTC")),
    ]
)

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_SOL_IP, _SOL_IPV6 = 0, 41
_TIME_EXCEEDED: dict[int, int] = {socket.AF_INET: 11, socket.AF_INET6: 3}
_SILENT_LIMIT = 3  # consecutive silent hops after which the path counts as filtered
_PARALLEL = 4  # hosts probed at once by one server


@dataclass(slots=True)
class HopTrace:
    """A TTL-limited trace: hops to the host (None when unknown), routers seen, and why
    the count is missing."""

    hops: int | None = None
    path: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    domain: str | None
    mx_host: str
    address: str
    port: int


def trace_hops(
    address: str,
    port: int,
    *,
    source: str | None = None,
    max_hops: int = 16,
    hop_timeout_s: float = 1.0,
    deadline_s: float = 8.0,
) -> HopTrace:
    """Send TCP SYNs with TTL 1, 2, ... to (address, port) until the host answers."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    trace = HopTrace()
    silent = 0
    end = time.monotonic() + deadline_s
    for ttl in range(1, max_hops + 1):
        remaining = end - time.monotonic()
        if remaining <= 0:
            trace.error = f"hops: no answer within {deadline_s:g} s (reached ttl {ttl - 1})"
            return trace
        try:
            kind, detail = _one_hop(
                family, address, port, source, ttl, min(hop_timeout_s, remaining)
            )
        except OSError as exc:
            trace.error = f"hops: cannot probe: {exc.strerror or exc}"
            return trace
        if kind == "reached":
            trace.hops = ttl
            return trace
        if kind == "unreachable":
            trace.error = f"hops: {detail}"
            return trace
        trace.path.append(detail or "*")
        silent = silent + 1 if detail is None else 0
        if silent >= _SILENT_LIMIT:
            trace.error = f"hops: no reply from {silent} hops in a row (filtered?)"
            return trace
    trace.error = f"hops: host not reached within {max_hops} hops"
    return trace


def _one_hop(
    family: int, address: str, port: int, source: str | None, ttl: int, timeout_s: float
) -> tuple[str, str | None]:
    """('reached', None), ('hop', router or None when silent) or ('unreachable', why)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        if source:
            sock.bind((source, 0))
        sock.setblocking(False)
        started = sock.connect_ex((address, port))
        if started not in (0, errno.EINPROGRESS):
            return _classify(sock, family, started)
        poller = select.poll()
        poller.register(sock, select.POLLOUT | select.POLLERR)
        if not poller.poll(max(1, int(timeout_s * 1000))):
            return "hop", None
        return _classify(sock, family, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    finally:
        sock.close()


def _classify(sock: socket.socket, family: int, err: int) -> tuple[str, str | None]:
    if err in (0, errno.ECONNREFUSED):  # SYN-ACK or RST: the host itself answered
        return "reached", None
    icmp = _read_error_queue(sock)
    if icmp is not None:
        icmp_type, code, offender = icmp
        if icmp_type == _TIME_EXCEEDED[family]:
            return "hop", offender or "?"
        return "unreachable", f"ICMP type {icmp_type} code {code} from {offender or '?'}"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable", errno.errorcode.get(err, str(err))
    return "unreachable", errno.errorcode.get(err, str(err))


def _read_error_queue(sock: socket.socket) -> tuple[int, int, str | None] | None:
    """(ICMP type, code, offender address) from the socket's error queue, if any."""
    try:
        _, ancillary, _, _ = sock.recvmsg(512, 1024, MSG_ERRQUEUE)
    except OSError:
        return None
    for level, kind, data in ancillary:
        if (level, kind) not in ((_SOL_IP, IP_RECVERR), (_SOL_IPV6, IPV6_RECVERR)):
            continue
        if len(data) < 16:
            continue
        _, _, icmp_type, code, _, _, _ = struct.unpack_from("=IBBBBII", data)
        return icmp_type, code, _offender(data[16:])
    return None


def _offender(raw: bytes) -> str | None:
    if len(raw) < 8:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


async def connect_rtt(
    address: str, port: int, *, source: str | None, timeout_s: float, attempts: int = 3
) -> tuple[float | None, str | None]:
    """(best TCP connect time in ms, None) or (None, 'unreachable: why')."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    best: float | None = None
    error: str | None = None
    for _ in range(attempts):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if source:
                sock.bind((source, 0))
            started = time.perf_counter()
            async with asyncio.timeout(timeout_s):
                await loop.sock_connect(sock, (address, port))
            elapsed = (time.perf_counter() - started) * 1000.0
            best = elapsed if best is None else min(best, elapsed)
        except TimeoutError:
            error = f"unreachable: no answer within {timeout_s:g} s"
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            error = f"unreachable: {why}"
            break  # refused or no route: asking again will not change it
        finally:
            sock.close()
    return (best, None) if best is not None else (None, error)


class Resolver(Protocol):
    async def resolve(self, domain: str) -> Sequence[Any]: ...


async def probe_domains(
    domains: Sequence[str],
    resolver: Resolver,
    *,
    server: str,
    source_address: str | None,
    timeout_s: float = 10.0,
    max_hosts: int = 20,
    hops: bool = True,
) -> pa.Table:
    """Probe the preferred MX host of each domain (each host once); one row per domain."""
    targets: list[Target] = []
    failed: list[dict[str, Any]] = []
    for domain in domains:
        try:
            async with asyncio.timeout(timeout_s):
                found = await resolver.resolve(domain)
        except Exception as exc:  # a lookup that fails is recorded, never raised
            failed.append(
                _row(server, source_address, Target(domain, "", "", 0), error=f"mx: {exc}")
            )
            continue
        if found:
            first = found[0]
            targets.append(Target(domain, first.mx_host, first.address, first.port))
    table = await probe_targets(
        targets,
        server=server,
        source_address=source_address,
        timeout_s=timeout_s,
        max_hosts=max_hosts,
        hops=hops,
    )
    if failed:
        table = pa.concat_tables([table, pa.Table.from_pylist(failed, schema=PROBE_SCHEMA)])
    return table


async def probe_targets(
    targets: Sequence[Target],
    *,
    server: str,
    source_address: str | None,
    timeout_s: float = 10.0,
    max_hosts: int = 20,
    hops: bool = True,
    max_hops: int = 16,
) -> pa.Table:
    """RTT and hops for each distinct (address, port), at most ``max_hosts`` of them,
    ``_PARALLEL`` at a time, the whole round within ``timeout_s``."""
    hosts = list(dict.fromkeys((t.address, t.port) for t in targets))[:max_hosts]
    results: dict[tuple[str, int], tuple[float | None, HopTrace | None, str | None]] = {}
    gate = asyncio.Semaphore(_PARALLEL)
    end = time.monotonic() + timeout_s

    async def one(address: str, port: int) -> None:
        async with gate:
            left = max(end - time.monotonic(), 0.1)
            rtt, error = await connect_rtt(
                address, port, source=source_address, timeout_s=min(2.0, left)
            )
            trace = None
            if hops:
                left = max(end - time.monotonic(), 0.1)
                trace = await asyncio.to_thread(
                    trace_hops, address, port, source=source_address,
                    max_hops=max_hops, hop_timeout_s=min(1.0, left), deadline_s=left,
                )  # fmt: skip
            results[(address, port)] = (rtt, trace, error)

    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(one(a, p) for a, p in hosts))
    except TimeoutError:
        pass  # hosts without a result are recorded as timed out below
    rows = []
    for target in targets:
        key = (target.address, target.port)
        if key not in results:
            why = "skipped: max_hosts reached" if key not in hosts else "probe round timed out"
            rows.append(_row(server, source_address, target, error=f"{why} ({timeout_s:g} s)"))
            continue
        rtt, trace, error = results[key]
        errors = [e for e in (error, trace.error if trace else None) if e]
        rows.append(
            _row(
                server, source_address, target, rtt_ms=rtt,
                hops=trace.hops if trace else None,
                path=",".join(trace.path) if trace else None,
                error="; ".join(errors) or None,
            )
        )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=PROBE_SCHEMA)


def _row(
    server: str,
    source_address: str | None,
    target: Target,
    *,
    rtt_ms: float | None = None,
    hops: int | None = None,
    path: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "server": server,
        "source_address": source_address,
        "domain": target.domain,
        "mx_host": target.mx_host or None,
        "address": target.address or None,
        "port": target.port or None,
        "method": "tcp",
        "rtt_ms": rtt_ms,
        "hops": hops,
        "path": path,
        "error": error,
        "at": datetime.now(UTC),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m raymail.routing.probes HOST PORT``: one probe, printed as JSON."""
    parser = argparse.ArgumentParser(prog="python -m raymail.routing.probes")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--source", help="source address to probe from")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    target = Target(None, args.host, args.host, args.port)
    table = asyncio.run(
        probe_targets([target], server="cli", source_address=args.source, timeout_s=args.timeout)
    )
    row = table.to_pylist()[0]
    row["at"] = row["at"].isoformat()
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
