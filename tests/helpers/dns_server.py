"""A real DNS server for tests: dnsmasq on loopback, answering from a given config."""

from __future__ import annotations

import itertools
import re
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query


def free_port() -> int:
    """A loopback port free for both UDP and TCP (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port")


class Dnsmasq:
    """A dnsmasq process on 127.0.0.1 whose query log tells how often a name was asked."""

    def __init__(self, binary: str, folder: Path, config: str) -> None:
        self.port = free_port()
        self.log = folder / "dnsmasq.log"
        conf = folder / "dnsmasq.conf"
        conf.write_text(config)
        self._log_handle = self.log.open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--conf-file={conf}",  # and not /etc/dnsmasq.conf
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                f"--port={self.port}",
                "--pid-file=",
                "--log-queries",
                "--log-facility=-",
            ],
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )
        self._sync = itertools.count()
        self._wait_ready()

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.port)]

    def _ask(self, name: str, timeout: float = 0.3) -> None:
        query = dns.message.make_query(name, "A")
        dns.query.udp(query, "127.0.0.1", port=self.port, timeout=timeout)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"dnsmasq exited: {self.log.read_text()}")
            try:
                self._ask("ready.test")
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dnsmasq did not answer within 10 s: {self.log.read_text()}")

    def queries(self, name: str, rdtype: str) -> int:
        """How often ``name``/``rdtype`` was asked, after every earlier query is logged."""
        marker = f"sync-{next(self._sync)}.test"
        self._ask(marker)
        deadline = time.monotonic() + 5
        while marker not in (text := self.log.read_text()):
            assert time.monotonic() < deadline, "dnsmasq did not log the marker query"
            time.sleep(0.01)
        return len(re.findall(rf"query\[{rdtype}\] {re.escape(name)} from", text))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._log_handle.close()
