"""The embedded default: generated recipients, a local sink, local Ray, one campaign.

`raymail demo` (README's first command) runs this, so a newcomer sees raymail send real SMTP
on loopback and can check that every recipient arrived exactly once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymail.driver.campaign import run_campaign
from raymail.run.report import RunReport, SinkSummary
from raymail.sink import SinkConfig, SinkProcess, read_capture
from raymail.spec import CampaignSpec, SmtpSettings

FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia")
CITIES = ("Lisbon", "Kyoto", "Lagos", "Quito", "Oslo", "Perth", "Pune", "Tartu", "Leeds")


def generate_recipients(path: Path, count: int, *, domains: int = 20, seed: int = 7) -> Path:
    """Write ``count`` unique recipients over ``domains`` domains (Zipf-like sizes)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, domains + 1)
    domain_ids = rng.choice(domains, size=count, p=weights / weights.sum())
    table = pa.table(
        {
            "email": [f"user{i}@demo{d}.example" for i, d in enumerate(domain_ids.tolist())],
            "first_name": [FIRST_NAMES[i % len(FIRST_NAMES)] for i in range(count)],
            "city": [CITIES[(i * 7) % len(CITIES)] for i in range(count)],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def demo_spec(
    recipients: Path, sink_port: int, *, servers: int = 2, concurrency: int = 25
) -> CampaignSpec:
    return CampaignSpec(
        campaign="demo",
        sender="raymail demo <news@sender.example>",
        subject="Hello {{ first_name }}, news for {{ city }}",
        text=(
            "Hi {{ first_name }},\n\nthis message was sent by raymail's demo to {{ city }}.\n"
            "Every recipient gets exactly one copy.\n\n-- raymail\n"
        ),
        html=(
            "<p>Hi {{ first_name }},</p><p>this message was sent by raymail's demo to "
            "<b>{{ city }}</b>.</p>"
        ),
        recipients=str(recipients),
        mx_override={"*": f"127.0.0.1:{sink_port}"},
        delivery_servers=servers,
        concurrency=concurrency,
        unsubscribe_url="https://sender.example/unsubscribe/{token}",
        verp_secret="demo-secret",
        smtp=SmtpSettings(helo_name="demo.raymail.localhost"),  # loopback: no PTR to match
    )


def run_demo(count: int, out: Path, *, live_progress: bool | None = None) -> RunReport:
    """Generate, sink, send; return the report plus what the sink captured."""
    out = out.resolve()
    run_dir = out / "run"
    recipients = generate_recipients(out / "recipients.parquet", count)
    capture = out / "capture"
    with SinkProcess(SinkConfig(), capture_dir=capture) as sink:
        spec = demo_spec(recipients, sink.port)
        report = run_campaign(spec, run_dir, live_progress=live_progress)
    captured = read_capture(capture)
    per_recipient = captured.group_by("rcpt_to").len()
    sink_summary = SinkSummary(
        captured_deliveries=captured.height,
        distinct_recipients=per_recipient.height,
        recipients_more_than_once=int((per_recipient["len"] > 1).sum()),
    )
    return report.model_copy(update={"sink": sink_summary})
