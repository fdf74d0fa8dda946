"""The one base of raymail's pydantic models: frozen, and unknown keys are an error.

A typo in a spec, sink or returns config then fails with the key's name instead of being
silently ignored, and a validated settings object cannot be changed behind a reader's back.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Frozen, ``extra="forbid"``: subclass this for every settings or report model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
