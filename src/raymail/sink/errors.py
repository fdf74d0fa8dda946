"""Errors of the SMTP sink, rooted in raymail's one exception tree."""

from __future__ import annotations

from raymail.errors import RaymailError


class SinkConfigError(RaymailError, ValueError):
    """A sink config (file, mapping or option) is invalid; the message names the key."""


class SinkError(RaymailError, RuntimeError):
    """The sink could not start, stop, or be asked for its counters."""
