"""Benchmark: microseconds to render one ~2 KB personalised message, ready for DATA.

Three ways, alternated in one run because the machine is shared and noisy:

``raymail``
    ``MessageTemplate.render`` (jinja2 sandbox, headers, VERP and unsubscribe tokens,
    7bit/quoted-printable choice), a new address each call so no cache helps.
``jinja_only``
    Just the jinja2 render of the same body: the floor of any mail merge in Python.
``stdlib_email``
    The same message built with ``email.message.EmailMessage`` and ``as_bytes()``.

Reports the best and median of ``--repeat`` rounds of ``--number`` renders each, and the
ratios raymail / jinja_only and stdlib_email / raymail. Target: raymail < 40 us.

    python benchmarks/message_render.py [--number 5000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import jinja2
import jinja2.sandbox

from raymail.compose.message import MessageTemplate
from raymail.spec import parse_spec

_PARAGRAPH = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n"
TEXT = "Hello {{ first_name }},\n\n" + _PARAGRAPH * 24 + "\nSee you in {{ city }}.\n"
FIELDS = {"first_name": "Johanna", "city": "Paris"}


def spec() -> Any:
    return parse_spec(
        {
            "campaign": "bench",
            "sender": "Raymail Bench <news@sender.example>",
            "subject": "Spring news",
            "text": TEXT,
            "recipients": "unused.csv",
            "unsubscribe_url": "https://sender.example/unsubscribe/{token}",
            "verp_secret": "bench-secret",
        }
    )


def per_call_us(fn: Callable[[str], object], number: int, repeat: int) -> list[float]:
    addresses = itertools.cycle([f"user{i}@example{i % 97}.com" for i in range(number)])
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn(next(addresses))
        rounds.append((time.perf_counter() - start) / number * 1e6)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    template = MessageTemplate(spec())
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    body = env.from_string(TEXT)
    size = len(template.render("user@example.com", FIELDS))

    def raymail(address: str) -> bytes:
        return template.render(address, FIELDS)

    def jinja_only(address: str) -> str:
        return body.render(FIELDS, email=address)

    def stdlib_email(address: str) -> bytes:
        message = EmailMessage()
        message["From"] = "Raymail Bench <news@sender.example>"
        message["To"] = address
        message["Subject"] = "Spring news"
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = make_msgid(domain="sender.example")
        message.set_content(body.render(FIELDS, email=address))
        return message.as_bytes()

    results: dict[str, list[float]] = {"raymail": [], "jinja_only": [], "stdlib_email": []}
    for _ in range(args.repeat):  # alternate, so load changes hit all three alike
        for name, fn in (("raymail", raymail), ("jinja_only", jinja_only)):
            results[name] += per_call_us(fn, args.number, 1)
        results["stdlib_email"] += per_call_us(stdlib_email, max(args.number // 10, 100), 1)
    best = {name: min(values) for name, values in results.items()}
    out = {
        "benchmark": "message_render",
        "message_bytes": size,
        "renders_per_round": args.number,
        "rounds": args.repeat,
        **{f"{name}_best_us": round(value, 2) for name, value in best.items()},
        **{
            f"{name}_median_us": round(statistics.median(values), 2)
            for name, values in results.items()
        },
        "raymail_over_jinja_ratio": round(best["raymail"] / best["jinja_only"], 2),
        "stdlib_over_raymail_ratio": round(best["stdlib_email"] / best["raymail"], 1),
        "target_us": 40,
        "python": platform.python_version(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
