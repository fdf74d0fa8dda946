"""Real hops: network namespaces joined by veth pairs, with 1 and 3 router namespaces
between a client and an SMTP server; the probe must count them. Root only.

Everything lives in namespaces this test creates (addresses 10.250.x.y exist only there)
and removes, so no traffic leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]
SMTP_PORT = 2525


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def _netns_usable() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    probe = f"rmprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Chain:
    """client -- r1 -- ... -- rN -- server, one /24 per link (10.250.<link>.0/24)."""

    def __init__(self, routers: int) -> None:
        tag = f"{os.getpid() % 10000}{routers}"
        self.names = [f"rmc{tag}", *[f"rmr{tag}x{i}" for i in range(routers)], f"rms{tag}"]
        self.routers = routers
        self.base = 250
        self.smtp: subprocess.Popen[bytes] | None = None

    def address(self, link: int, side: int) -> str:
        """Address of the left (side 1) or right (side 2) end of a link."""
        return f"10.{self.base}.{link}.{side}"

    @property
    def client_address(self) -> str:
        return self.address(0, 1)

    @property
    def server_address(self) -> str:
        return self.address(len(self.names) - 2, 2)

    def exec(self, ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=60
        )

    def create(self) -> None:
        for ns in self.names:  # left over by a killed run with the same pid: start clean
            _ip("netns", "del", ns, check=False)
        for ns in self.names:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        links = len(self.names) - 1
        for link in range(links):
            left, right = self.names[link], self.names[link + 1]
            tag = f"rmv{os.getpid() % 10000}{self.routers}"
            a, b = f"{tag}a{link}", f"{tag}b{link}"
            _ip("link", "add", a, "netns", left, "type", "veth", "peer", "name", b, "netns", right)
            _ip("-n", left, "addr", "add", f"{self.address(link, 1)}/24", "dev", a)
            _ip("-n", right, "addr", "add", f"{self.address(link, 2)}/24", "dev", b)
            _ip("-n", left, "link", "set", a, "up")
            _ip("-n", right, "link", "set", b, "up")
        _ip("-n", self.names[0], "route", "add", "default", "via", self.address(0, 2))
        _ip("-n", self.names[-1], "route", "add", "default", "via", self.address(links - 1, 1))
        for i in range(1, links):  # router i sits between link i-1 (left) and link i (right)
            ns = self.names[i]
            self.exec(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            for link in range(links):
                if link < i - 1:
                    _ip("-n", ns, "route", "add", f"10.{self.base}.{link}.0/24", "via",
                        self.address(i - 1, 1))  # fmt: skip
                elif link > i:
                    _ip("-n", ns, "route", "add", f"10.{self.base}.{link}.0/24", "via",
                        self.address(i, 2))  # fmt: skip

    def start_smtp(self) -> None:
        """aiosmtpd, a real SMTP server, inside the server namespace."""
        self.smtp = subprocess.Popen(
            ["ip", "netns", "exec", self.names[-1], sys.executable, "-m", "aiosmtpd", "-n",
             "-l", f"{self.server_address}:{SMTP_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(100):  # up to ~10 s for it to listen
            listening = self.exec(self.names[-1], "ss", "-ltnH", f"sport = :{SMTP_PORT}")
            if listening.stdout.strip():
                return
            time.sleep(0.1)
        raise RuntimeError("aiosmtpd did not start in the server namespace")

    def probe(self) -> dict[str, object]:
        env_cmd = [
            sys.executable, "-m", "raymail.routing.probes", self.server_address, str(SMTP_PORT),
            "--source", self.client_address, "--timeout", "20",
        ]  # fmt: skip
        done = self.exec(self.names[0], *env_cmd)
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout)
        return result

    def remove(self) -> None:
        if self.smtp is not None:
            self.smtp.terminate()
            try:
                self.smtp.wait(10)
            except subprocess.TimeoutExpired:
                self.smtp.kill()
                self.smtp.wait(10)
        for ns in self.names:
            _ip("netns", "del", ns, check=False)  # its veth ends go with it


@pytest.fixture(params=[1, 3], ids=["1-router", "3-routers"])
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    reason = _netns_usable()
    if reason is not None:
        pytest.skip(reason)
    made = Chain(request.param)
    try:
        made.create()
        made.start_smtp()
        yield made
    finally:
        made.remove()
    left = _ip("netns", "list").stdout
    assert not any(name in left for name in made.names), left


def test_probe_counts_the_routers_between_client_and_smtp_server(chain: Chain) -> None:
    result = chain.probe()
    assert result["error"] is None, result
    assert result["rtt_ms"] is not None and float(result["rtt_ms"]) > 0  # type: ignore[arg-type]
    # traceroute's count: the host answers at TTL routers + 1; each router is named
    assert result["hops"] == chain.routers + 1, result
    routers = [chain.address(i, 2) for i in range(chain.routers)]
    assert str(result["path"]).split(",") == routers, result
