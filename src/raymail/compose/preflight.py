"""Before anything is sent: can the campaign's templates render at all?

A template with a syntax error, an unknown filter, a sandbox violation or a merge field the
list does not have fails for every recipient. Found only at send time, that would fail the
whole list one by one and call the run complete; rendered here against the first valid
rows, it stops the run with one error naming the template and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pyarrow.parquet as pq

from raymail.compose.message import MessageTemplate
from raymail.errors import TemplateError
from raymail.schema import EMAIL
from raymail.spec import CampaignSpec

TRIED_ROWS: Final = 20  # a failure of these rows alone may be one odd row; of all: the template


def check_templates(spec: CampaignSpec, recipients: Path) -> None:
    """Raise :class:`TemplateError` unless one of the first valid recipients renders.

    ``recipients`` is the validated list (``recipients.parquet``). An empty list has nobody
    to render for: only the compilation is checked.
    """
    template = MessageTemplate(spec)  # a syntax error or unknown filter raises here
    file = pq.ParquetFile(recipients)
    columns = [c for c in file.schema_arrow.names if c in template.merge_fields or c == EMAIL]
    batch = next(file.iter_batches(batch_size=TRIED_ROWS, columns=columns), None)
    if batch is None or batch.num_rows == 0:
        return
    first: TemplateError | None = None
    for row in batch.to_pylist():
        email = str(row.pop(EMAIL))
        try:
            template.render(email, row)
            return
        except TemplateError as exc:
            first = first or exc
    raise TemplateError(
        f"{first}; it fails for each of the first {batch.num_rows} recipients, so it can "
        "never render: fix the template (nothing was sent)"
    )
