"""Returns and ledgers synced into the dataset; DuckDB SQL over it; the campaign summary."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from tracking_data import recipients, write_ledger, write_returns, write_web_hits
from typer.testing import CliRunner

from raymail.cli import _register, app
from raymail.errors import QueryError, TrackingError
from raymail.tracking import query
from raymail.tracking.summary import campaign_summary
from raymail.tracking.sync import sync_ledger, sync_returns

C = "spring"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "events"
    write_ledger(tmp_path / "run", C, recipients(30), failed={7, 8})
    write_web_hits(root, C)
    write_returns(tmp_path / "home", C)
    assert sync_ledger(root, tmp_path / "run") == 30
    assert sync_returns(root, tmp_path / "home" / "returns") == 3
    return root


def test_sync_is_idempotent_and_follows_reclassification(dataset: Path, tmp_path: Path) -> None:
    before = query("SELECT kind, source, count(*) AS n FROM events GROUP BY ALL ORDER BY ALL",
                   root=dataset)  # fmt: skip
    sync_ledger(dataset, tmp_path / "run")
    sync_returns(dataset, tmp_path / "home" / "returns")
    again = query("SELECT kind, source, count(*) AS n FROM events GROUP BY ALL ORDER BY ALL",
                  root=dataset)  # fmt: skip
    assert before.equals(again)
    counts = {(k, s): n for k, s, n in again.iter_rows()}
    assert counts[("delivered", "ledger")] == 28
    assert counts[("bounce", "ledger")] == 2  # the importer's copy of 7's rejection not twice
    assert ("bounce", "returns") not in counts
    assert counts[("complaint", "returns")] == 1
    assert counts[("reply", "returns")] == 2
    auto = query(
        "SELECT bot, bot_reason FROM events WHERE kind='reply' AND recipient LIKE 'user4@%'",
        root=dataset,
    )
    assert auto.rows() == [(True, "auto_reply")]  # the latest classification wins


def test_any_sql_runs_and_bots_are_flagged(dataset: Path) -> None:
    bots = query(
        "SELECT bot_reason, count(*) AS n FROM events WHERE bot GROUP BY 1 ORDER BY 1",
        root=dataset,
    )
    assert dict(bots.rows()) == {"click_burst": 3, "auto_reply": 1, "google_image_proxy": 3}
    per_domain = query(
        "SELECT split_part(recipient, '@', 2) AS domain, count(DISTINCT recipient) AS openers "
        "FROM events WHERE kind = 'open' AND NOT bot GROUP BY 1 ORDER BY 1",
        root=dataset,
    )
    assert per_domain.to_dicts() == [
        {"domain": "a.test", "openers": 4},
        {"domain": "b.test", "openers": 3},
        {"domain": "c.test", "openers": 3},
    ]
    assert isinstance(per_domain, pl.DataFrame)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC * FROM events", "SQL error: Parser Error: syntax error"),
        ("SELECT nope FROM events", 'SQL error: Binder Error: Referenced column "nope"'),
        ("SELECT * FROM mails", "SQL error: Catalog Error: Table with name mails"),
        ("   ", "empty SQL"),
        (
            "SELECT max(at) FROM events",
            'SQL error: Parser Error: syntax error at or near ")" '
            '(the time column must be quoted: "at" is a DuckDB keyword)',
        ),
    ],
)
def test_sql_errors_are_one_clear_line(dataset: Path, sql: str, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        query(sql, root=dataset)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert query('SELECT max("at") AS last FROM events', root=dataset).height == 1


def test_summary_excludes_bots_by_default(dataset: Path) -> None:
    people = campaign_summary(C, root=dataset)
    assert people["delivered"] == 28
    assert people["opens"] == 11 and people["unique_opens"] == 10
    assert people["clicks"] == 5 and people["unique_clicks"] == 4
    assert people["unique_open_rate"] == round(10 / 28, 4)
    assert people["click_to_open"] == 0.4
    assert people["complaints"] == 1 and people["replies"] == 1
    assert people["bot_hits_excluded"] == 7
    assert people["links"][0] == {"link": "pricing", "clicks": 4, "unique_clicks": 4}
    hours = {h["hour"][:13]: (h["opens"], h["clicks"]) for h in people["by_hour"]}
    assert hours["2025-03-14T09"] == (2, 2)  # minutes 30, 50 and clicks 31, 51
    a = next(d for d in people["by_domain"] if d["domain"] == "a.test")
    assert a["delivered"] == 10 and a["unique_opens"] == 4
    rolled = campaign_summary(C, root=dataset, top=1)["by_domain"]
    assert [(d["domain"], d["delivered"]) for d in rolled] == [("a.test", 10), ("other @ mx", 18)]
    everyone = campaign_summary(C, root=dataset, include_bots=True)
    assert everyone["opens"] == 14 and everyone["clicks"] == 8
    with pytest.raises(TrackingError, match="no events"):
        campaign_summary("nothing", root=dataset)


def test_cli_query_summary_plot_and_errors(dataset: Path, tmp_path: Path) -> None:
    _register()
    runner = CliRunner()
    out = runner.invoke(
        app, ["events", "query", "SELECT count(*) AS n FROM events", "--root", str(dataset),
              "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == [{"n": 55}]
    bad = runner.invoke(app, ["events", "query", "SELECT FROM WHERE", "--root", str(dataset)])
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: SQL error: Parser Error") and "Traceback" not in bad.output
    png = tmp_path / "summary.png"
    out = runner.invoke(app, ["events", "summary", C, "--root", str(dataset), "--plot", str(png)])
    assert out.exit_code == 0, out.output
    assert "unique_open_rate" in out.stdout and "a.test" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = runner.invoke(app, ["events", "summary", C, "--root", str(dataset), "--json",
                              "--include-bots"])  # fmt: skip
    assert json.loads(out.stdout)["opens"] == 14


def test_cli_sync(tmp_path: Path) -> None:
    root = tmp_path / "events"
    write_ledger(tmp_path / "run", C, recipients(5), failed={1})
    write_returns(tmp_path / "home", C)
    _register()
    args = ["events", "sync", "--root", str(root), "--run-dir", str(tmp_path / "run"),
            "--returns-home", str(tmp_path / "home")]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "ledger" in out.stdout and ": 5 rows" in out.stdout and ": 3 rows" in out.stdout
    bad = CliRunner().invoke(app, ["events", "sync", "--root", str(root), "--no-returns",
                                   "--run-dir", str(tmp_path)])  # fmt: skip
    assert bad.exit_code == 2 and "not a run directory" in bad.stderr
