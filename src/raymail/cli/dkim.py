"""``raymail dkim``: make a DKIM key pair and print the DNS record that publishes it."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from raymail.cli.output import clean_errors, print_json

dkim_app = typer.Typer(name="dkim", help="DKIM keys for signing campaigns.", no_args_is_help=True)


class Algorithm(StrEnum):
    rsa = "rsa-sha256"
    ed25519 = "ed25519-sha256"


def register(app: typer.Typer) -> None:
    """Add the ``dkim`` sub-app to the top-level app."""
    app.add_typer(dkim_app, name="dkim")


@dkim_app.command("keygen")
@clean_errors
def keygen(
    domain: Annotated[str, typer.Option("--domain", help="The signing domain (d=).")],
    selector: Annotated[str, typer.Option("--selector", help="The selector (s=).")],
    algorithm: Annotated[
        Algorithm, typer.Option("--algorithm", help="rsa-sha256 or ed25519-sha256.")
    ] = Algorithm.rsa,
    bits: Annotated[int, typer.Option("--bits", help="RSA key size.")] = 2048,
    out: Annotated[Path, typer.Option("--out", help="Folder for SELECTOR.DOMAIN.pem/.txt.")] = (
        Path(".")
    ),
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write a new private key (mode 0600) and print the TXT record to publish."""
    import re

    from raymail.compose.dkim_keys import generate_key, record_name, write_key_pair, zone_line
    from raymail.compose.settings import DKIM_SELECTOR_PATTERN, DOMAIN_RE

    domain, selector = domain.lower().rstrip("."), selector.lower()
    if not DOMAIN_RE.match(domain):
        raise typer.BadParameter(f"not a domain name: {domain!r}", param_hint="--domain")
    if not re.match(DKIM_SELECTOR_PATTERN, selector):
        raise typer.BadParameter(
            f"a selector is letters, digits, '-' and dots: {selector!r}", param_hint="--selector"
        )
    generated = generate_key(algorithm.value, bits)
    key_file = write_key_pair(out, selector, domain, generated)
    name = record_name(selector, domain)
    if json_output:
        print_json(
            {"key_file": str(key_file), "algorithm": algorithm.value, "name": name,
             "type": "TXT", "value": generated.record}
        )  # fmt: skip
        return
    print(f"private key: {key_file} (keep it secret; the spec's dkim key_file)")
    print(f"publish this TXT record at {name}:")
    print(f"  {generated.record}")
    print("as a zone-file line (split into strings of at most 255 characters):")
    print(f"  {zone_line(selector, domain, generated.record)}")
    print("spec:")
    print(f"  dkim:\n    - {{domain: {domain}, selector: {selector}, "
          f"key_file: {key_file}, algorithm: {algorithm.value}}}")  # fmt: skip
