"""A run directory as the driver leaves it before sending: enough for the returns server."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from conftest import write_csv
from raymail.compose.verp import TokenKind, TokenSigner
from raymail.intake.recipients import load_recipients
from raymail.run.rundir import RECIPIENTS, RunDir
from raymail.spec import parse_spec

SECRET = "server-secret"
PEOPLE = ["ann@a.test", "bob@b.test", "cy@c.test"]


def make_run(root: Path, campaign: str = "spring") -> Path:
    """Spec and validated recipient list of a campaign under ROOT/runs/CAMPAIGN."""
    csv = write_csv(root / f"{campaign}.csv", "email", PEOPLE)
    spec = parse_spec(
        {
            "campaign": campaign,
            "sender": "Shop <news@shop.test>",
            "subject": "News",
            "text": "Hello",
            "recipients": str(csv),
            "return_domain": "bounce.test",
            "verp_secret": SECRET,
        }
    )
    run = RunDir(root / "runs" / campaign)
    run.create(spec)
    pq.write_table(load_recipients(csv).table, run.path / RECIPIENTS)
    return run.path


def verp(email: str | None, kind: TokenKind = TokenKind.BOUNCE, campaign: str = "spring") -> str:
    """The return address a message of ``campaign`` to ``email`` carries."""
    token = TokenSigner(campaign, SECRET).token(kind, email)
    local = "bounces" if kind is TokenKind.BOUNCE else "unsubscribe"
    return f"{local}+{token}@bounce.test"
