"""Arrow schemas shared by the driver, the delivery servers and the run directory.

Everything that crosses a process boundary (portions, outcomes, rejects) is an Arrow table
with one of these schemas, so no per-recipient Python objects pile up in the driver.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

# Columns every normalised recipient table has; any other column is a merge field.
ROW: Final = "row"  # 1-based number of the data row in the input file
EMAIL: Final = "email"  # normalised address (domain lower-case, IDNA A-label)
DOMAIN: Final = "domain"  # the address's domain, as in EMAIL
RESERVED_COLUMNS: Final = (ROW, EMAIL, DOMAIN)

REJECTS_SCHEMA: Final = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),  # 1-based data row (the header is not counted)
        pa.field("field", pa.string()),
        pa.field("value", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

_TS = pa.timestamp("us", tz="UTC")

OUTCOME_SCHEMA: Final = pa.schema(
    [
        pa.field("campaign", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("email", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("status", pa.string()),
        pa.field("smtp_code", pa.int32()),
        pa.field("enhanced_status", pa.string()),
        pa.field("response", pa.string()),
        pa.field("server", pa.string()),
        pa.field("source_address", pa.string()),
        pa.field("mx_host", pa.string()),
        pa.field("attempt", pa.int32()),
        pa.field("portion", pa.int64()),
        pa.field("message_id", pa.string()),
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
        # Alternates (issue 14): 0 for the recipient's own address, N for its N-th
        # alternate; a hop keeps the recipient's ``row`` and names the address it stands
        # in for in ``alternate_of`` (null on hop 0).
        pa.field("hop", pa.int32()),
        pa.field("alternate_of", pa.string()),
    ]
)

# A hop's attempts are numbered HOP_STRIDE * hop + n (n = 1, 2, ...): the journal's
# (portion, attempt, row) lines then say which address a recovered attempt went to, and
# "latest attempt decides" picks a recipient's last hop.
HOP_STRIDE: Final = 1000
ALTERNATES: Final = "alternates"  # the recipient column: other addresses, in order

# One row per SMTP transaction: what routing learns from (issue: learned routing).
OBSERVATION_SCHEMA: Final = pa.schema(
    [
        pa.field("server", pa.string()),
        pa.field("source_address", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("mx_host", pa.string()),
        pa.field("connect_s", pa.float64()),  # TCP connect; null on a reused connection
        pa.field("banner_s", pa.float64()),  # connect to banner; null on a reused connection
        pa.field("transaction_s", pa.float64()),  # MAIL FROM to the reply to DATA end
        pa.field("recipients", pa.int32()),
        pa.field("response_class", pa.int8()),  # 2, 4, 5; 0 for a dropped connection
        pa.field("bytes", pa.int64()),
        pa.field("tls", pa.bool_()),  # the session was upgraded with STARTTLS
        pa.field("at", _TS),
    ]
)
