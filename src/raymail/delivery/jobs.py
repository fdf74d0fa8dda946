"""Rendering a portion's rows into SMTP jobs: one job per transaction to make.

A personalised message is one job per recipient; identical content (no merge fields, no
per-recipient unsubscribe URL) shares one job of up to ``max_rcpt_per_transaction``
recipients. A template failure fails only its recipient, never the portion.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from raymail.compose.message import MessageTemplate
from raymail.delivery.records import OutcomeBuilder, now
from raymail.driver.plan import PortionTask
from raymail.errors import TemplateError
from raymail.spec import CampaignSpec


@dataclass(slots=True)
class Job:
    """One SMTP transaction to make: the recipients share this exact message."""

    recipients: list[tuple[int, str]]
    message: bytes
    message_id: str
    mail_from: str
    started_at: datetime
    in_flight: bool = False  # the journal says "in flight": its fate must follow


class JobRendering:
    """The delivery server's rendering part (a mixin of :class:`DeliveryServer`)."""

    spec: CampaignSpec
    template: MessageTemplate

    def _jobs(self, task: PortionTask, table: pa.Table, out: OutcomeBuilder) -> list[Job]:
        """Render the portion's messages; a template failure fails only that recipient."""
        rows = table.column("row").to_pylist()
        emails = table.column("email").to_pylist()
        started = now()
        template = self.template
        if template.shareable:  # no merge fields and no per-recipient unsubscribe URL
            return self._shared_jobs(rows, emails, started)
        fields = [c for c in table.column_names if c in template.merge_fields]
        columns = [table.column(c).to_pylist() for c in fields]
        jobs: list[Job] = []
        for i, (row, email) in enumerate(zip(rows, emails, strict=True)):
            values = {name: col[i] for name, col in zip(fields, columns, strict=True)}
            try:
                message = template.render(email, values)
            except TemplateError as exc:
                out.add_failed(row, email, f"template: {exc}", started)
                continue
            jobs.append(
                Job(
                    [(row, email)],
                    message,
                    template.message_id(email),
                    template.envelope_sender(email),
                    started,
                )
            )
        return jobs

    def _shared_jobs(self, rows: list[int], emails: list[str], started: datetime) -> list[Job]:
        """Identical content: one transaction carries up to max_rcpt recipients."""
        step = self.spec.smtp.max_rcpt_per_transaction
        jobs = []
        for i in range(0, len(rows), step):
            recipients = list(zip(rows[i : i + step], emails[i : i + step], strict=True))
            addresses = [e for _, e in recipients]
            message = self.template.render_shared(addresses)
            jobs.append(
                Job(
                    recipients,
                    message,
                    self.template.shared_message_id(addresses),
                    self.template.envelope_sender(None),
                    started,
                )
            )
        return jobs
