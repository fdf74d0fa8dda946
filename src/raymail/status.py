"""The words raymail's data is written in: outcome statuses, in-doubt policies, return categories.

Each is a ``StrEnum`` whose values are the strings stored in Parquet and JSON, so a member
compares equal to, and serialises as, the plain string (``Status.ACCEPTED == "accepted"``).
When building a polars column from Python values, give the column type (``pl.String``): a
list of enum members alone would become a polars ``Enum`` column.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Status(StrEnum):
    """A recipient's outcome for one attempt (the ledger's ``status`` column)."""

    ACCEPTED = "accepted"  # the receiving server answered 250 to the end of DATA
    DEFERRED = "deferred"  # 4xx or a dropped connection: retried later in the run
    FAILED = "failed"  # 5xx, or a permanent local reason (template, no MX)
    IN_DOUBT = "in_doubt"  # the body was sent but no reply came: maybe delivered
    SUPPRESSED = "suppressed"  # on the suppression list: never sent
    EXPIRED = "expired"  # only temporary failures until retry.max_age since its first attempt


# Short names for expressions such as ``pl.col("status") == ACCEPTED``.
ACCEPTED: Final = Status.ACCEPTED
DEFERRED: Final = Status.DEFERRED
FAILED: Final = Status.FAILED
IN_DOUBT: Final = Status.IN_DOUBT
SUPPRESSED: Final = Status.SUPPRESSED
EXPIRED: Final = Status.EXPIRED
STATUSES: Final = tuple(Status)


class InDoubtPolicy(StrEnum):
    """What a run does with recipients whose message may have been delivered."""

    RESEND = "resend"  # send again, risking a duplicate
    SKIP = "skip"  # leave them, risking a miss


class Category(StrEnum):
    """What a returned message means for the address (what raymail acts on)."""

    HARD_BOUNCE_ADDRESS = "hard_bounce_address"
    HARD_BOUNCE_DOMAIN = "hard_bounce_domain"
    MAILBOX_FULL = "mailbox_full"
    TRANSIENT = "transient"
    BLOCKED = "blocked"
    CONTENT_REJECTED = "content_rejected"
    AUTO_REPLY = "auto_reply"
    CHALLENGE_RESPONSE = "challenge_response"
    COMPLAINT = "complaint"
    REMOVE_REQUEST = "remove_request"
    HUMAN_REPLY = "human_reply"
    UNKNOWN = "unknown"
