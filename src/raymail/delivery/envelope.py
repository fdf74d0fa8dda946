"""The names a receiver checks before it reads a message: HELO, and what the spec's sender
set-up looks like from here (FQDN with a dot, DKIM alignment).

Receivers compare the HELO name with the connecting address's PTR (forward-confirmed
reverse DNS) and score a dotless name (``localhost``, ``vm``) as a bad sign, so the
default is the machine's fully qualified name, looked up on the delivery server's own node,
and a source address may carry its own name (the one its PTR gives).
"""

from __future__ import annotations

import socket

from raymail.compose.dkim import alignment_warnings
from raymail.spec import CampaignSpec

__all__ = ["helo_name", "sender_setup_warnings"]


def helo_name(spec: CampaignSpec, source_address: str | None) -> str:
    """The EHLO name for connections from ``source_address``."""
    if source_address and (named := spec.source_helo_names.get(source_address)):
        return named
    return spec.smtp.helo_name or socket.getfqdn()


def sender_setup_warnings(spec: CampaignSpec) -> list[str]:
    """What a receiver would hold against this spec's envelope and signatures, as seen from
    this machine (a delivery node's FQDN may differ: the warning names the one found here)."""
    warnings = alignment_warnings(spec)
    addresses: list[str | None] = [*spec.source_addresses] or [None]
    names = {helo_name(spec, a): a for a in addresses}
    for name, address in names.items():
        if "." not in name.strip("."):
            where = f" for source address {address}" if address else ""
            warnings.append(
                f"helo_name {name!r}{where} has no dot: receivers expect a fully qualified "
                "name matching the sending address's PTR (set smtp.helo_name, or helo_name "
                "in a source_addresses entry)"
            )
    unknown = sorted(set(spec.source_helo_names) - set(spec.source_addresses))
    if unknown:
        warnings.append(f"source_helo_names for addresses not in source_addresses: {unknown}")
    return warnings
