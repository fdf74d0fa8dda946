"""Console progress: plain lines for `ray job logs`, a rate over a recent window, the ETA."""

from __future__ import annotations

import re

import pytest

from raymail.driver.progress import ProgressReporter, Tally


def test_plain_line_has_every_field_and_no_escape_codes(capsys: pytest.CaptureFixture[str]) -> None:
    progress = ProgressReporter(1000, live=False, every_s=3600)
    progress.update(Tally(accepted=90, deferred=2, failed=7, in_doubt=1, retrying=3), force=True)
    progress.update(Tally(accepted=95), force=False)  # within every_s: no second line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err
    assert re.fullmatch(
        r"raymail: sent 100/1000 \(10\.0%\) \| accepted 90 deferred 2 failed 7 in doubt 1 "
        r"retrying 3 \| [\d,]+ msg/s \| ETA (\d+:\d\d:\d\d|\?)\n",
        err,
    ), err


def test_eta_follows_the_recent_rate_not_the_average() -> None:
    progress = ProgressReporter(1000, live=False)
    t0 = progress.started
    assert "ETA 0:01:30" in progress.line(Tally(accepted=100), t0 + 10)  # 10/s, 900 left
    progress.line(Tally(accepted=400), t0 + 40)  # still 10/s
    # The tail slows to 2/s: 540 left take 4.5 min (the whole-run average would say 82 s).
    line = progress.line(Tally(accepted=460), t0 + 70)
    assert "| 2 msg/s | ETA 0:04:30" in line, line


def test_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYMAIL_PROGRESS_INTERVAL_S", "0.5")
    assert ProgressReporter(10, live=False).every_s == 0.5
    monkeypatch.setenv("RAYMAIL_PROGRESS_INTERVAL_S", "soon")
    assert ProgressReporter(10, live=False).every_s == 5.0
