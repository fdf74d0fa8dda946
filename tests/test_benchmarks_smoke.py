"""The throughput benchmark runs end to end on a small count (behaviour only, not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.system_packages import require_binary

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "throughput.py"
MESSAGES = 1000
SMIME_MESSAGES = 200

KEYS = {
    "messages",
    "message_bytes",
    "connections",
    "smtp_source_msg_s",
    "aiosmtplib_loop_msg_s",
    "raymail_msg_s",
    "raymail_wall_msg_s",
    "raymail_vs_loop",
    "raymail_vs_limit",
    "raymail_accepted",
    "raymail_missing",
    "aiosmtplib_loop_accepted",
    "raymail_dkim_msg_s",
    "dkim_vs_unsigned",
    "raymail_dkim_accepted",
    "dkim_ed25519_vs_unsigned",
    "dkim_vs_unsigned_bound",
    "dkim_ed25519_vs_unsigned_bound",
    "raymail_tracking_msg_s",
    "tracking_vs_unsigned",
    "raymail_tracking_accepted",
    "target_tracking_vs_unsigned",
    "meets_tracking_target",
    "raymail_html_msg_s",
    "html_vs_unsigned",
    "tracking_vs_html",
    "raymail_smime_msg_s",
    "smime_vs_plain",
    "raymail_smime_accepted",
    "rounds",
    "cpu_count",
    "versions",
}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_throughput_benchmark_small_run(tmp_path: Path) -> None:
    """Behaviour only, in the session's Ray (--ray-address: a Ray start less)."""
    import ray

    require_binary("smtp-sink", "postfix")
    require_binary("smtp-source", "postfix")
    out = tmp_path / "throughput.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    address = str(ray.get_runtime_context().gcs_address)
    done = subprocess.run(
        [
            sys.executable, str(BENCHMARK), "--messages", str(MESSAGES), "--no-warmup",
            "--json-out", str(out), "--servers", "1", "--smime-messages", str(SMIME_MESSAGES),
            "--ray-address", address,
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    printed = json.loads(done.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    missing = KEYS - printed.keys()
    assert not missing, f"keys missing from the JSON: {sorted(missing)}"
    assert printed["messages"] == MESSAGES
    assert printed["raymail_accepted"] == MESSAGES
    assert printed["raymail_missing"] == 0
    assert printed["aiosmtplib_loop_accepted"] == MESSAGES
    assert printed["raymail_dkim_accepted"] == MESSAGES
    assert printed["dkim_vs_unsigned"] == pytest.approx(
        printed["raymail_dkim_msg_s"] / printed["raymail_msg_s"], rel=0.05
    )
    assert printed["raymail_tracking_accepted"] == MESSAGES
    assert printed["raymail_html_accepted"] == MESSAGES
    assert printed["target_tracking_vs_unsigned"] == 0.8
    assert printed["tracking_vs_unsigned"] == pytest.approx(
        printed["raymail_tracking_msg_s"] / printed["raymail_msg_s"], rel=0.05
    )
    assert printed["meets_tracking_target"] == (printed["tracking_vs_unsigned"] >= 0.8)
    # redirects and the pixel make the tracked HTML longer than the same HTML untracked
    assert printed["tracking_message_bytes"] > printed["html_message_bytes"]
    assert 1500 <= printed["message_bytes"] <= 2600
    smime_accepted = (printed["raymail_smime_accepted"], printed["raymail_smime_plain_accepted"])
    assert smime_accepted == (SMIME_MESSAGES, SMIME_MESSAGES)
    assert printed["smime_message_bytes"] > printed["message_bytes"]  # enveloped, base64
    assert printed["smime_vs_plain"] == pytest.approx(
        printed["raymail_smime_msg_s"] / printed["raymail_smime_plain_msg_s"], rel=0.05
    )
    for key in ("smtp_source_msg_s", "aiosmtplib_loop_msg_s", "raymail_msg_s"):
        assert printed[key] > 0, key
    assert printed["raymail_vs_loop"] == pytest.approx(
        printed["raymail_msg_s"] / printed["aiosmtplib_loop_msg_s"], rel=0.01
    )
    assert printed["raymail_vs_limit"] == pytest.approx(
        printed["raymail_msg_s"] / printed["smtp_source_msg_s"], rel=0.01
    )
    (one_server,) = printed["by_servers"]
    assert one_server["servers"] == 1
    assert one_server["connections_per_server"] == printed["connections"]
    assert one_server["accepted"] == MESSAGES
    assert one_server["raymail_msg_s"] > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resume_benchmark_small_run(tmp_path: Path) -> None:
    """One round on a small list: the resume sends exactly the rest (its time is not judged
    here: the 15 s figure comes from the full benchmark, not a timed test)."""
    out = tmp_path / "resume.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "resume.py"), "--recipients", "2000",
            "--repeat", "1", "--latency-ms", "5", "--json-out", str(out),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert out.exists(), done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    assert printed["rounds"] == 1
    (round_,) = printed["per_round"]
    assert round_["status"] == "complete"
    assert 0 < round_["remaining_before_resume"] < 2000 * 0.2  # killed at about 90 %
    assert round_["resent"] == round_["remaining_before_resume"]
    assert round_["accepted_before_and_resent"] == 0
    assert round_["resent_also_before_not_in_doubt"] == 0
    assert round_["missed"] == 0
    assert printed["sent_only_the_rest"] is True
    assert round_["seconds_to_first_send"] is not None


def test_smime_render_benchmark_small_run() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "smime_render.py"), "--number", "20",
         "--repeat", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for mode in ("sign", "encrypt", "sign_and_encrypt"):
        assert result[f"{mode}_best_us"] > 0 and result[f"{mode}_vs_plain"] > 0
    assert result["message_bytes"]["sign_and_encrypt"] > result["message_bytes"]["plain"]


@pytest.mark.usefixtures("ray_session")
def test_shaping_benchmark_small_run(tmp_path: Path) -> None:
    """The shaping benchmark runs end to end on a small list: nobody fails, it reports the
    convergence and the side-by-side ratio (its value is the full benchmark's to judge).
    It joins the session's Ray (RAY_ADDRESS, as ensure_ray reads it) rather than starting
    one: a Ray start less, and its actors end with its driver."""
    import ray

    out = tmp_path / "shaping.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env["RAY_ADDRESS"] = str(ray.get_runtime_context().gcs_address)
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "shaping.py"), "--recipients", "600",
            "--latency-ms", "5", "--postfix-recipients", "300", "--json-out", str(out),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.exists(), done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert printed["failed"] == 0
    assert printed["shaped"]["accepted"] == printed["hand_tuned"]["accepted"] == 600
    assert printed["shaped"]["refusals"] > 0  # it started above the receiver's limit
    assert printed["hand_tuned"]["refusals"] == 0
    assert printed["vs_hand_tuned"] > 0 and printed["converge_s"] >= 0
    postfix = printed["postfix"]  # the same two runs against a real Postfix (root here)
    assert postfix["failed"] == 0 and postfix["shaped"]["accepted"] == 300
    assert postfix["shaped"]["refusals"] > 0 and postfix["hand_tuned"]["refusals"] == 0


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.usefixtures("ray_session")
def test_priority_benchmark_small_run(tmp_path: Path) -> None:
    """The priority benchmark runs end to end on a small bulk list: every bulk and priority
    message captured once, latencies taken from the sink's capture, the side-by-side ratio
    computed from the rounds it ran (its values are the full benchmark's to judge). It
    joins the session's Ray (RAY_ADDRESS) rather than starting one."""
    import ray

    out = tmp_path / "priority.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env["RAY_ADDRESS"] = str(ray.get_runtime_context().gcs_address)
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "priority.py"), "--recipients", "3000",
            "--priority-messages", "10", "--priority-campaigns", "2", "--spacing-s", "0.1",
            "--pairs", "1", "--warmup-recipients", "200", "--json-out", str(out),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360, check=False,
    )  # fmt: skip
    assert out.exists(), done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    assert done.returncode == 0, done.stderr[-3000:]
    assert printed["complete"] is True and printed["duplicates"] == 0
    assert printed["priority_captured"] == 10
    assert set(printed["rounds"]) == {"alone-0", "mixed-0"}
    assert all(r["bulk_accepted"] == 3000 for r in printed["rounds"].values())
    assert printed["rounds"]["mixed-0"]["priority_captured"] == 10
    assert 0 < printed["priority_p50_s"] <= printed["priority_p99_s"] <= printed["priority_max_s"]
    rates = {name: r["bulk_msg_s"] for name, r in printed["rounds"].items()}
    assert printed["bulk_vs_alone"] == pytest.approx(rates["mixed-0"] / rates["alone-0"], rel=0.01)
