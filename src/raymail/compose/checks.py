"""Per-recipient checks of what composition will need, run at intake before anything is sent.

A recipient whose attachment is missing or too big, or who has no usable S/MIME
certificate while encryption is required (policy ``skip``), is rejected with the reason:
the row goes to ``rejects.parquet`` and is never sent. With the S/MIME policy ``fail`` the
first such recipient stops the campaign (before anything is sent); with ``plain`` the row
stays and is sent unencrypted.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from raymail.compose import attachments, smime
from raymail.errors import RecipientError, SmimeError
from raymail.spec import CampaignSpec

# (position in the batch, field, value, reason) of each row to reject
Problem = tuple[int, str, str, str]
RowCheck = Callable[[pa.Table], list[Problem]]


def recipient_checks(spec: CampaignSpec) -> RowCheck | None:
    """The check for this spec's per-recipient needs (None: nothing to check)."""
    files = spec.attachments
    secure = spec.smime if spec.smime and spec.smime.mode != "sign" else None
    if not (files and files.column) and secure is None:
        return None
    folder = attachments.list_folder(spec)

    def check(batch: pa.Table) -> list[Problem]:
        emails = batch.column("email").to_pylist()
        found: list[Problem] = []
        if files and files.column:
            values = _column(batch, files.column, "attachments.column")
            for i, value in enumerate(values):
                reason = attachments.check_row(files, value, folder)
                if reason:
                    found.append((i, files.column, value or "", reason))
        if secure is not None and secure.on_missing_certificate != "plain":
            column = secure.certificate_column
            certs = _column(batch, column, "smime.certificate_column") if column else []
            rejected = {p[0] for p in found}
            for i, email in enumerate(emails):
                if i in rejected:
                    continue
                value = certs[i] if certs else None
                reason = smime.check_row(secure, email, value, folder)
                if reason is None:
                    continue
                if secure.on_missing_certificate == "fail":
                    raise SmimeError(
                        f"{spec.recipients}: recipient {email}: {reason} "
                        "(smime.on_missing_certificate is 'fail': nothing was sent)"
                    )
                found.append((i, column or "email", value or email, f"S/MIME: {reason}"))
        return found

    return check


def _column(batch: pa.Table, name: str, key: str) -> list[str | None]:
    if name not in batch.column_names:
        raise RecipientError(f"recipient list has no column {name!r} (the spec's {key})")
    values: list[str | None] = batch.column(name).to_pylist()
    return values
