"""Async MX resolution for delivery servers (RFC 5321 §5.1, RFC 7505 null MX).

A delivery server asks :meth:`MXResolver.resolve` for the ordered list of addresses to try
for a recipient domain. Answers are cached by their DNS TTL, and concurrent lookups of one
name share a single query, because a bulk run resolves the same few thousand domains for
millions of recipients. Failures say whether they are permanent (fail the recipients) or
temporary (defer them and retry later).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from raymail.errors import (
    DeliveryError,
    MXPermanentError,
    MXResolutionError,
    MXTemporaryError,
    SpecError,
)
from raymail.hostport import split_host_port

__all__ = [
    "MXPermanentError",
    "MXResolver",
    "MXTarget",
    "MXTemporaryError",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class MXTarget:
    """One address to connect to for a domain, in the order it should be tried."""

    mx_host: str
    address: str
    port: int
    preference: int


@dataclass(frozen=True, slots=True)
class _Failure:
    """A cached or shared failure; every waiter raises its own fresh exception from it."""

    permanent: bool
    message: str

    def error(self) -> MXResolutionError:
        cls = MXPermanentError if self.permanent else MXTemporaryError
        return cls(self.message)


@dataclass(slots=True)
class _Entry(Generic[_T]):
    value: _T | _Failure
    expires: float


class _TTLCache:
    """LRU map with per-entry expiry plus in-flight sharing, so one name is queried once."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry[object]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[tuple[object, float]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    async def get(
        self,
        key: tuple[str, str],
        fetch: Callable[[], Awaitable[tuple[_T | _Failure, float]]],
    ) -> _T | _Failure:
        """Cached value for key, else the shared result of one ``fetch()`` (value, ttl)."""
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires > self._clock():
                self._entries.move_to_end(key)
                return entry.value  # type: ignore[return-value]
            del self._entries[key]
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._fill(key, fetch))
            self._inflight[key] = future
        # shield: a cancelled waiter must not cancel the lookup other waiters share.
        value, _ttl = await asyncio.shield(future)
        return value  # type: ignore[return-value]

    async def _fill(
        self,
        key: tuple[str, str],
        fetch: Callable[[], Awaitable[tuple[_T | _Failure, float]]],
    ) -> tuple[object, float]:
        try:
            value, ttl = await fetch()
            if ttl > 0:
                self._entries[key] = _Entry(value, self._clock() + ttl)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            return value, ttl
        finally:
            del self._inflight[key]


# Cached forms: a domain maps to its MX hosts by preference; a host to its addresses.
_MXHosts = tuple[tuple[int, str], ...]
_Addresses = tuple[str, ...]


class MXResolver:
    """Resolves recipient domains to ordered SMTP targets, honouring ``mx_override``.

    ``nameservers`` is a list of (ip, port) to query instead of the system resolver (tests
    run a DNS server on loopback). ``overrides`` maps a lower-case domain, or ``"*"`` for any
    domain, to ``"host:port"``; an exact domain beats ``"*"`` and no DNS MX lookup is made.
    ``seed`` makes the shuffle of equal-preference MX hosts reproducible; ``shuffle=False``
    orders them by name instead. Positive answers live for the smallest TTL involved,
    clamped to [``min_ttl``, ``max_ttl``]; negative ones for the SOA negative TTL (or
    ``default_negative_ttl``), clamped to [``min_ttl``, ``max_negative_ttl``]. Temporary
    failures are not cached. ``clock`` (monotonic seconds) times the cache: tests inject
    one to expire entries without waiting.
    """

    def __init__(
        self,
        nameservers: list[tuple[str, int]] | None = None,
        overrides: dict[str, str] | None = None,
        *,
        port: int = 25,
        timeout: float = 5.0,
        lifetime: float = 15.0,
        ipv6: bool = True,
        seed: int | None = None,
        shuffle: bool = True,
        min_ttl: float = 5.0,
        max_ttl: float = 3600.0,
        default_negative_ttl: float = 60.0,
        max_negative_ttl: float = 900.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if nameservers is None:
            try:
                self._dns = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:  # e.g. no /etc/resolv.conf
                raise DeliveryError(f"cannot configure the system DNS resolver: {exc}") from exc
        else:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(ip, p) for ip, p in nameservers]
        self._dns.timeout = timeout
        self._dns.lifetime = lifetime
        self._dns.cache = None  # our own cache below knows about negative answers and in-flight
        self._port = port
        self._ipv6 = ipv6
        self._rng = random.Random(seed)
        self._shuffle = shuffle
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._default_negative_ttl = default_negative_ttl
        self._max_negative_ttl = max_negative_ttl
        self._cache = _TTLCache(max_entries, clock)
        self._overrides = {
            _normalize(domain) if domain != "*" else "*": _parse_host_port(domain, value)
            for domain, value in (overrides or {}).items()
        }

    def clear_cache(self) -> None:
        """Forget every cached answer (in-flight lookups still complete)."""
        self._cache.clear()

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    async def resolve(self, domain: str) -> list[MXTarget]:
        """Ordered targets for ``domain``; raises MXPermanentError or MXTemporaryError."""
        name = _normalize(domain)
        override = self._overrides.get(name) or self._overrides.get("*")
        if override is not None:
            host, port = override
            return await self._targets([(0, host)], port, implicit=False, domain=name)
        literal = _address_literal(name)
        if literal is not None:
            return [MXTarget(mx_host=literal, address=literal, port=self._port, preference=0)]
        if not name or _to_dns_name(name) is None:
            raise MXPermanentError(f"{domain!r} is not a valid domain name")

        hosts = await self._cache.get(("mx", name), lambda: self._lookup_mx(name))
        if isinstance(hosts, _Failure):
            raise hosts.error()
        implicit = hosts == ((0, name),)
        return await self._targets(self._order(hosts), self._port, implicit=implicit, domain=name)

    def _order(self, hosts: _MXHosts) -> list[tuple[int, str]]:
        """By preference; equal preferences shuffled per call to spread load (RFC 5321)."""
        ordered = sorted(hosts)
        if self._shuffle:
            keys = {host: self._rng.random() for _, host in ordered}
            ordered.sort(key=lambda ph: (ph[0], keys[ph[1]]))
        return ordered

    async def _targets(
        self, hosts: list[tuple[int, str]], port: int, *, implicit: bool, domain: str
    ) -> list[MXTarget]:
        results = await asyncio.gather(*(self._host_addresses(host) for _, host in hosts))
        targets: list[MXTarget] = []
        failures: list[tuple[str, _Failure]] = []
        for (preference, host), addresses in zip(hosts, results, strict=True):
            if isinstance(addresses, _Failure):
                failures.append((host, addresses))
                continue
            targets.extend(MXTarget(host, address, port, preference) for address in addresses)
        if targets:
            return targets
        temporary = [f for _, f in failures if not f.permanent]
        if temporary:
            raise MXTemporaryError(f"{domain}: {temporary[0].message}")
        if implicit:
            raise MXPermanentError(f"{domain} has no MX records and no address records")
        names = ", ".join(host for _, host in hosts)
        raise MXPermanentError(f"{domain} has no usable mail exchanger (no address for {names})")

    async def _host_addresses(self, host: str) -> _Addresses | _Failure:
        literal = _ip_or_none(host)
        if literal is not None:
            return (literal,)
        if host == "localhost" or host.endswith(".localhost"):
            return ("127.0.0.1", "::1") if self._ipv6 else ("127.0.0.1",)  # RFC 6761 §6.3
        return await self._cache.get(("addr", host), lambda: self._lookup_addresses(host))

    async def _lookup_mx(self, domain: str) -> tuple[_MXHosts | _Failure, float]:
        try:
            answer = await self._query(domain, dns.rdatatype.MX)
        except dns.resolver.NXDOMAIN as exc:
            ttl = self._negative_ttl(_nx_responses(exc))
            return _Failure(True, f"domain {domain} does not exist (NXDOMAIN)"), ttl
        except _TemporaryDNS as exc:
            return _Failure(False, f"MX lookup for {domain} failed: {exc}"), 0.0
        if answer.rrset is None:  # NODATA: implicit MX, the domain itself (RFC 5321 §5.1)
            return ((0, domain),), self._negative_ttl([answer.response])
        ttl = self._positive_ttl(answer.chaining_result.minimum_ttl)
        # "." as exchange is a null MX (RFC 7505); next to real MX records it is a
        # misconfiguration that cannot be delivered to, so it is dropped.
        hosts = sorted((int(rd.preference), _host_text(rd.exchange)) for rd in answer.rrset)
        hosts = [(preference, host) for preference, host in hosts if host]
        if not hosts:
            return _Failure(True, f"{domain} accepts no mail (null MX, RFC 7505)"), ttl
        return tuple(hosts), ttl

    async def _lookup_addresses(self, host: str) -> tuple[_Addresses | _Failure, float]:
        kinds = [dns.rdatatype.A, dns.rdatatype.AAAA] if self._ipv6 else [dns.rdatatype.A]
        answers = await asyncio.gather(
            *(self._query(host, kind) for kind in kinds), return_exceptions=True
        )
        addresses: list[str] = []
        ttls: list[float] = []
        negative: list[dns.message.Message] = []
        temporary: BaseException | None = None
        for answer in answers:
            if isinstance(answer, dns.resolver.NXDOMAIN):
                negative.extend(_nx_responses(answer))
            elif isinstance(answer, _TemporaryDNS):
                temporary = answer
            elif isinstance(answer, BaseException):
                raise answer
            elif answer.rrset is None:
                negative.append(answer.response)
            else:
                addresses.extend(rd.address for rd in answer.rrset)
                ttls.append(answer.chaining_result.minimum_ttl)
        if addresses:
            return tuple(addresses), self._positive_ttl(min(ttls))
        if temporary is not None:
            return _Failure(False, f"address lookup for {host} failed: {temporary}"), 0.0
        return _Failure(True, f"{host} has no address"), self._negative_ttl(negative)

    async def _query(self, name: str, kind: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        try:
            return await self._dns.resolve(
                name, kind, raise_on_no_answer=False, search=False, tcp=False
            )
        except dns.resolver.NXDOMAIN:
            raise
        except (dns.exception.DNSException, OSError) as exc:
            raise _TemporaryDNS(_describe(exc)) from exc

    def _positive_ttl(self, ttl: float) -> float:
        return min(max(ttl, self._min_ttl), self._max_ttl)

    def _negative_ttl(self, responses: Iterable[dns.message.Message]) -> float:
        """RFC 2308: min(SOA TTL, SOA MINIMUM) from the authority section, else a default."""
        ttl = self._default_negative_ttl
        for response in responses:
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
                    ttl = min(rrset.ttl, next(iter(rrset)).minimum)
        return min(max(ttl, self._min_ttl), self._max_negative_ttl)


class _TemporaryDNS(Exception):
    """Internal: the DNS query failed in a way worth retrying later."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "DNS timeout"
    if isinstance(exc, dns.resolver.NoNameservers):
        return f"no name server answered (SERVFAIL/REFUSED): {exc}"
    return f"{type(exc).__name__}: {exc}"


def _nx_responses(exc: dns.resolver.NXDOMAIN) -> list[dns.message.Message]:
    """The NXDOMAIN responses, for their SOA (``responses()`` is untyped in dnspython)."""
    responses = exc.kwargs.get("responses") or {}
    return [r for r in responses.values() if isinstance(r, dns.message.Message)]


def _normalize(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def _to_dns_name(domain: str) -> dns.name.Name | None:
    try:
        return dns.name.from_text(domain)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None


def _host_text(name: dns.name.Name) -> str:
    """MX exchange as lower-case text without the final dot; "" for the root (null MX)."""
    return str(name.to_text(omit_final_dot=True)).lower() if name != dns.name.root else ""


def _ip_or_none(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _address_literal(domain: str) -> str | None:
    """``[192.0.2.1]`` or ``[ipv6:2001:db8::1]`` recipient domains (RFC 5321 §4.1.3)."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.startswith("ipv6:"):
        inner = inner[5:]
    return _ip_or_none(inner)


def _parse_host_port(domain: str, value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` from mx_override into (host, port), host normalized."""
    try:
        host, port = split_host_port(value)
    except ValueError as exc:
        raise SpecError(f"mx_override[{domain!r}]: {exc}") from None
    return host.rstrip(".").lower(), port
