"""``host:port`` text: one parser, one validated field type.

Spec keys (``mx_override``, ``nameservers``, ``returns.listen``, the sink's
``returns_server``) and command-line options all name a peer as ``host:port``, with an
IPv6 address in brackets (``[::1]:25``). Each place used to split the text its own way;
this module is the one that says what is valid and how it splits, so a bad port gives the
same clear message everywhere instead of a ``ValueError`` from ``int()`` deep in a server.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["HostPort", "ListenAddress", "split_host_port"]

_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_IPV6_RE = re.compile(r"^[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?$")


def split_host_port(value: str, *, listen: bool = False) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``, the brackets removed.

    Raises :class:`ValueError` saying what is wrong (no port, a port that is not a number
    or not in 1..65535, an empty host, an IPv6 address without brackets). With ``listen``
    port 0 is valid too: an address to listen on, where 0 asks for a free port.
    """
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected host:port, got {value!r} (no port)")
    if not port_text.isdigit():
        raise ValueError(f"expected host:port, got {value!r} (port {port_text!r} is not a number)")
    port = int(port_text)
    low = 0 if listen else 1
    if not low <= port < 65536:
        raise ValueError(f"expected host:port, got {value!r} (port {port} not in {low}..65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _IPV6_RE.match(host) or ":" not in host:
            raise ValueError(f"expected [IPv6]:port, got {value!r}")
        return host, port
    if ":" in host:
        raise ValueError(f"expected host:port, got {value!r} (put an IPv6 address in brackets)")
    if not host or not _HOST_RE.match(host):
        raise ValueError(f"expected host:port, got {value!r} (bad host {host!r})")
    return host, port


def _peer(value: str) -> str:
    split_host_port(value)
    return value.strip()


def _listen(value: str) -> str:
    split_host_port(value, listen=True)
    return value.strip()


HostPort = Annotated[str, AfterValidator(_peer)]
"""A pydantic field holding a peer's ``host:port``; split it with :func:`split_host_port`."""

ListenAddress = Annotated[str, AfterValidator(_listen)]
"""A ``host:port`` to listen on (port 0: any free port)."""
