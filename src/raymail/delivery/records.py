"""Column-wise builders for the outcome and observation tables a portion produces.

A delivery server appends plain values per recipient and per transaction and turns them
into one Arrow table per portion, so the driver only ever handles Arrow batches.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from raymail.schema import OBSERVATION_SCHEMA, OUTCOME_SCHEMA


class _ColumnBuilder:
    schema: pa.Schema

    def __init__(self) -> None:
        self._columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}

    def __len__(self) -> int:
        return len(next(iter(self._columns.values())))

    def _append(self, values: dict[str, Any]) -> None:
        for name, column in self._columns.items():
            column.append(values[name])

    def table(self) -> pa.Table:
        return pa.table(self._columns, schema=self.schema)


class OutcomeBuilder(_ColumnBuilder):
    """One row per recipient attempt."""

    schema = OUTCOME_SCHEMA

    def __init__(
        self, campaign: str, server: str, source_address: str | None, portion: int, attempt: int
    ) -> None:
        super().__init__()
        self._fixed = {
            "campaign": campaign,
            "server": server,
            "source_address": source_address,
            "portion": portion,
            "attempt": attempt,
        }

    def add(
        self,
        *,
        row: int,
        email: str,
        domain: str,
        status: str,
        smtp_code: int | None,
        enhanced_status: str | None,
        response: str,
        mx_host: str | None,
        message_id: str | None,
        started_at: datetime,
        finished_at: datetime | None = None,
    ) -> None:
        self._append(
            {
                **self._fixed,
                "row": row,
                "email": email,
                "domain": domain,
                "status": status,
                "smtp_code": smtp_code or None,
                "enhanced_status": enhanced_status,
                "response": response[:500],
                "mx_host": mx_host,
                "message_id": message_id,
                "started_at": started_at,
                "finished_at": finished_at or now(),
            }
        )


class ObservationBuilder(_ColumnBuilder):
    """One row per SMTP transaction: what routing learns from."""

    schema = OBSERVATION_SCHEMA

    def __init__(self, server: str, source_address: str | None, domain: str) -> None:
        super().__init__()
        self._fixed = {"server": server, "source_address": source_address, "domain": domain}

    def add(
        self,
        *,
        mx_host: str,
        connect_s: float | None,
        banner_s: float | None,
        transaction_s: float,
        recipients: int,
        response_class: int,
        size: int,
        tls: bool,
    ) -> None:
        self._append(
            {
                **self._fixed,
                "mx_host": mx_host,
                "connect_s": connect_s,
                "banner_s": banner_s,
                "transaction_s": transaction_s,
                "recipients": recipients,
                "response_class": response_class,
                "bytes": size,
                "tls": tls,
                "at": now(),
            }
        )


def now() -> datetime:
    return datetime.now(UTC)
