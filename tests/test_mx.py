"""MXResolver against real DNS servers on loopback: dnsmasq, and a tiny failing server."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from helpers.dns_server import Dnsmasq, free_port
from helpers.system_packages import require_binary
from raymail.delivery.mx import MXPermanentError, MXResolver, MXTarget, MXTemporaryError
from raymail.errors import MXResolutionError, SpecError

T = TypeVar("T")

# One zone ("test", answered only from this config) holding a case per test.
DNSMASQ_CONF = """\
local=/test/
local-ttl=60
# preference order; mx-a also has an IPv6 address
mx-host=pref.test,mx-b.pref.test,20
mx-host=pref.test,mx-a.pref.test,10
mx-host=pref.test,mx-c.pref.test,30
host-record=mx-a.pref.test,127.0.0.11,::1
host-record=mx-b.pref.test,127.0.0.12
host-record=mx-c.pref.test,127.0.0.13
# three hosts of equal preference, one backup
mx-host=equal.test,e1.equal.test,10
mx-host=equal.test,e2.equal.test,10
mx-host=equal.test,e3.equal.test,10
mx-host=equal.test,e4.equal.test,20
host-record=e1.equal.test,127.0.0.21
host-record=e2.equal.test,127.0.0.22
host-record=e3.equal.test,127.0.0.23
host-record=e4.equal.test,127.0.0.24
# no MX: implicit MX is the domain's own address
host-record=implicit.test,127.0.0.31
# exists (TXT) but has neither MX nor address
txt-record=bare.test,"no mail here"
# null MX (RFC 7505)
mx-host=null.test,.,0
# the preferred host has no address and is skipped; then none has one
mx-host=partial.test,ghost.partial.test,5
mx-host=partial.test,real.partial.test,10
host-record=real.partial.test,127.0.0.41
mx-host=ghosts.test,ghost1.ghosts.test,10
mx-host=ghosts.test,ghost2.ghosts.test,20
# MX TTL 60 (local-ttl), its host's A record TTL 1
mx-host=ttl.test,mx.ttl.test,10
host-record=mx.ttl.test,127.0.0.51,1
# fresh names for cache tests
host-record=cached.test,127.0.0.61
host-record=stampede.test,127.0.0.62
host-record=lru1.test,127.0.0.63
host-record=lru2.test,127.0.0.64
host-record=lru3.test,127.0.0.65
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    binary = require_binary("dnsmasq", "dnsmasq-base")
    server = Dnsmasq(binary, tmp_path_factory.mktemp("dnsmasq"), DNSMASQ_CONF)
    yield server
    server.stop()


def resolver(server: Dnsmasq, **options: Any) -> MXResolver:
    options.setdefault("timeout", 1.0)
    options.setdefault("lifetime", 2.0)
    return MXResolver(server.nameservers, **options)


def hosts_and_addresses(targets: list[MXTarget]) -> list[tuple[str, str, int]]:
    return [(t.mx_host, t.address, t.preference) for t in targets]


class FailingDNS:
    """A loopback UDP DNS server that answers SERVFAIL, or never answers (a timeout)."""

    def __init__(self, rcode: dns.rcode.Rcode | None) -> None:
        self.rcode = rcode
        self.received = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.received += 1
            if self.rcode is not None:
                response = dns.message.make_response(dns.message.from_wire(data))
                response.set_rcode(self.rcode)
                self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def test_mx_hosts_come_in_preference_order_ipv4_first(dnsmasq: Dnsmasq) -> None:
    targets = run(resolver(dnsmasq).resolve("Pref.Test."))
    assert hosts_and_addresses(targets) == [
        ("mx-a.pref.test", "127.0.0.11", 10),
        ("mx-a.pref.test", "::1", 10),
        ("mx-b.pref.test", "127.0.0.12", 20),
        ("mx-c.pref.test", "127.0.0.13", 30),
    ]
    assert {t.port for t in targets} == {25}
    no_v6 = run(resolver(dnsmasq, ipv6=False, port=2525).resolve("pref.test"))
    assert [(t.address, t.port) for t in no_v6] == [
        ("127.0.0.11", 2525),
        ("127.0.0.12", 2525),
        ("127.0.0.13", 2525),
    ]


def test_equal_preferences_are_shuffled_reproducibly_with_a_seed(dnsmasq: Dnsmasq) -> None:
    async def orders(mx: MXResolver) -> list[tuple[str, ...]]:
        return [tuple(t.mx_host for t in await mx.resolve("equal.test")) for _ in range(30)]

    first = run(orders(resolver(dnsmasq, seed=7)))
    assert first == run(orders(resolver(dnsmasq, seed=7)))
    assert len(set(first)) > 1, "equal-preference hosts were never reordered"
    assert all(order[3] == "e4.equal.test" for order in first)
    primaries = {"e1.equal.test", "e2.equal.test", "e3.equal.test"}
    assert all(set(order[:3]) == primaries for order in first)
    fixed = run(resolver(dnsmasq, shuffle=False).resolve("equal.test"))
    assert [t.mx_host for t in fixed] == [f"e{i}.equal.test" for i in (1, 2, 3, 4)]


def test_no_mx_falls_back_to_the_domains_address(dnsmasq: Dnsmasq) -> None:
    targets = run(resolver(dnsmasq).resolve("implicit.test"))
    assert hosts_and_addresses(targets) == [("implicit.test", "127.0.0.31", 0)]


def test_no_mx_and_no_address_is_permanent(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(MXPermanentError, match="no MX records and no address") as caught:
        run(resolver(dnsmasq).resolve("bare.test"))
    assert caught.value.permanent is True


def test_nxdomain_is_permanent_and_cached(dnsmasq: Dnsmasq) -> None:
    mx = resolver(dnsmasq)
    for _ in range(2):
        with pytest.raises(MXResolutionError, match="does not exist") as caught:
            run(mx.resolve("nx1.test"))
        assert isinstance(caught.value, MXPermanentError)
        assert caught.value.permanent is True
    assert dnsmasq.queries("nx1.test", "MX") == 1


def test_null_mx_accepts_no_mail(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(MXPermanentError, match="accepts no mail") as caught:
        run(resolver(dnsmasq).resolve("null.test"))
    assert caught.value.permanent is True


def test_mx_host_without_address_is_skipped(dnsmasq: Dnsmasq) -> None:
    targets = run(resolver(dnsmasq).resolve("partial.test"))
    assert hosts_and_addresses(targets) == [("real.partial.test", "127.0.0.41", 10)]
    with pytest.raises(MXPermanentError, match="no usable mail exchanger"):
        run(resolver(dnsmasq).resolve("ghosts.test"))


def test_answers_are_cached_and_concurrent_lookups_share_one_query(dnsmasq: Dnsmasq) -> None:
    mx = resolver(dnsmasq)
    first = run(mx.resolve("cached.test"))
    assert run(mx.resolve("cached.test")) == first
    assert dnsmasq.queries("cached.test", "MX") == 1
    assert dnsmasq.queries("cached.test", "A") == 1

    async def many() -> list[list[MXTarget]]:
        return await asyncio.gather(*(mx.resolve("stampede.test") for _ in range(20)))

    results = run(many())
    assert all(r == results[0] for r in results)
    assert dnsmasq.queries("stampede.test", "MX") == 1
    assert dnsmasq.queries("stampede.test", "A") == 1


def test_each_record_expires_after_its_own_ttl(dnsmasq: Dnsmasq) -> None:
    now = [1000.0]  # the cache's clock, moved by hand: expiry without sleeping
    mx = resolver(dnsmasq, min_ttl=0.0, clock=lambda: now[0])  # A record TTL 1 s, MX 60 s
    expected = [("mx.ttl.test", "127.0.0.51", 10)]
    assert hosts_and_addresses(run(mx.resolve("ttl.test"))) == expected
    now[0] += 0.9
    assert hosts_and_addresses(run(mx.resolve("ttl.test"))) == expected
    assert dnsmasq.queries("mx.ttl.test", "A") == 1  # still within the A record's TTL
    now[0] += 0.2
    assert hosts_and_addresses(run(mx.resolve("ttl.test"))) == expected
    assert dnsmasq.queries("mx.ttl.test", "A") == 2  # expired: asked again
    assert dnsmasq.queries("ttl.test", "MX") == 1  # the MX answer lives 60 s
    now[0] += 60
    run(mx.resolve("ttl.test"))
    assert dnsmasq.queries("ttl.test", "MX") == 2


def test_cache_is_bounded(dnsmasq: Dnsmasq) -> None:
    mx = resolver(dnsmasq, max_entries=2)  # one domain = its MX entry + its address entry
    run(mx.resolve("lru1.test"))
    run(mx.resolve("lru2.test"))
    assert mx.cache_size == 2
    run(mx.resolve("lru1.test"))
    assert dnsmasq.queries("lru1.test", "MX") == 2
    assert dnsmasq.queries("lru2.test", "MX") == 1


def test_overrides_bypass_dns_and_exact_domain_beats_star(dnsmasq: Dnsmasq) -> None:
    mx = resolver(
        dnsmasq,
        overrides={
            "*": "mx-b.pref.test:2525",
            "Special.Example": "127.0.0.7:2526",
            "v6.example": "[::1]:2527",
            "local.example": "localhost:2528",
        },
    )
    assert run(mx.resolve("special.example")) == [MXTarget("127.0.0.7", "127.0.0.7", 2526, 0)]
    assert run(mx.resolve("V6.example.")) == [MXTarget("::1", "::1", 2527, 0)]
    assert [t.address for t in run(mx.resolve("local.example"))] == ["127.0.0.1", "::1"]
    # "*" catches any other domain, even one that does not exist: no MX query is made.
    assert run(mx.resolve("nx2.test")) == [MXTarget("mx-b.pref.test", "127.0.0.12", 2525, 0)]
    assert dnsmasq.queries("nx2.test", "MX") == 0
    with pytest.raises(SpecError, match="mx_override"):
        MXResolver(dnsmasq.nameservers, overrides={"*": "no-port"})


def test_address_literals_and_invalid_domains(dnsmasq: Dnsmasq) -> None:
    mx = resolver(dnsmasq)
    assert run(mx.resolve("[127.0.0.9]")) == [MXTarget("127.0.0.9", "127.0.0.9", 25, 0)]
    assert run(mx.resolve("[IPv6:::1]")) == [MXTarget("::1", "::1", 25, 0)]
    for bad in ("", "a..b", "x" * 64 + ".test"):
        with pytest.raises(MXPermanentError, match="not a valid domain"):
            run(mx.resolve(bad))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, None], ids=["servfail", "timeout"])
def test_server_failure_is_temporary_and_not_cached(rcode: dns.rcode.Rcode | None) -> None:
    server = FailingDNS(rcode)
    try:
        mx = MXResolver([("127.0.0.1", server.port)], timeout=0.2, lifetime=0.4)
        for _ in range(2):  # a hang would end at the test's timeout
            with pytest.raises(MXTemporaryError) as caught:
                run(mx.resolve("example.test"))
            assert caught.value.permanent is False
        assert server.received >= 2  # the failure was not cached
    finally:
        server.close()


def test_refused_and_dead_server_are_temporary(dnsmasq: Dnsmasq) -> None:
    # dnsmasq REFUSES names outside its zone (no upstream servers).
    with pytest.raises(MXTemporaryError, match="SERVFAIL/REFUSED"):
        run(resolver(dnsmasq).resolve("outside.example"))
    dead = MXResolver([("127.0.0.1", free_port())], timeout=0.2, lifetime=0.4)
    with pytest.raises(MXTemporaryError):
        run(dead.resolve("pref.test"))
