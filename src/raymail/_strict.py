"""The one base of raymail's pydantic models: frozen, and unknown keys are an error.

A typo in a spec, sink or returns config then fails with the key's name instead of being
silently ignored, and a validated settings object cannot be changed behind a reader's back.
:func:`error_lines` is the one wording of a validation error for every config file: the
key's dotted path, and for an unknown key the nearest known one ("did you mean").
"""

from __future__ import annotations

import difflib
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails


class StrictModel(BaseModel):
    """Frozen, ``extra="forbid"``: subclass this for every settings or report model."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def error_lines(source: str, exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per error of ``model``'s validation, each naming ``source`` and the key."""
    return [_error_line(source, err, model) for err in exc.errors()]


def _error_line(source: str, err: ErrorDetails, model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        hint = difflib.get_close_matches(key, known_keys(model, err["loc"][:-1]), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{source}: unknown key '{loc}'{suggestion}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{loc}'"
    return f"{source}: key '{loc}': {err['msg']} (got {err.get('input')!r})"


def known_keys(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The keys valid at ``path`` below ``model``: through sections, optional sections
    (``X | None``), lists of sections and dicts of sections (``dict[str, X]``)."""
    current: Any = model
    for part in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            if isinstance(part, int):
                continue  # an index into a list of these sections
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = _inside(field.annotation)
        elif get_origin(current) is dict:
            current = _inside(get_args(current)[1])
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inside(annotation: Any) -> Any:
    """The one section type inside ``X | None`` or ``list[X]``; else ``annotation``."""
    if get_origin(annotation) is dict:
        return annotation
    models = [a for a in get_args(annotation) if isinstance(a, type) and a is not type(None)]
    return models[0] if len(models) == 1 else annotation
