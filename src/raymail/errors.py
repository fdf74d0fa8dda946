"""One exception tree for raymail.

Every error raymail raises on purpose derives from :class:`RaymailError`, and also from the
builtin that fits, so callers may catch either::

    RaymailError
    ├── SpecError(ValueError)            a campaign spec file is invalid (names file and key)
    ├── RecipientError(ValueError)       the recipient list cannot be read at all
    ├── TemplateError(ValueError)        a template does not compile, or misses a merge field
    ├── DkimError(ValueError)            a DKIM key is unreadable or does not fit its algorithm
    ├── DeliveryError(RuntimeError)      delivery could not proceed (no server, no route)
    │   └── MXResolutionError(LookupError)  a domain has no usable mail exchanger
    │       ├── MXPermanentError         it cannot receive mail (NXDOMAIN, null MX): fail
    │       └── MXTemporaryError         DNS did not answer usefully: defer, retry later
    ├── SmtpProtocolError(ConnectionError)  an SMTP peer broke the protocol or the connection
    ├── RunDirError(RuntimeError)        a run directory is unusable (missing, foreign)
    │   └── RunLockedError               another driver holds the run directory's lock
    ├── ReturnsError(ValueError)         a returned message cannot be stored or processed
    ├── RoutingError(ValueError)         routing input is unusable (names the field or path)
    ├── StorageError(OSError)            object storage (s3://) or an export folder failed
    ├── SinkConfigError(ValueError)      the embedded sink's config is invalid (names the key)
    ├── QueueError(RuntimeError)         the campaign queue is unusable, or an entry cannot change
    ├── AttachmentError(ValueError)      an attachment is missing, unreadable or above the cap
    ├── SmimeError(ValueError)           an S/MIME certificate or key is unusable (names which)
    ├── TrackingError(ValueError)        tracking data, a query, archive or follow-up is unusable
    │   ├── EventRowError                an event row is invalid (names the row and the key)
    │   └── QueryError                   SQL over the events failed (DuckDB's message, one line)
    ├── ListStoreError(ValueError)       a subscriber list or the change log is unusable
    ├── WebError(ValueError)             the web service cannot start (names the setting)
    └── SinkError(RuntimeError)          the embedded sink cannot start, stop or report

Errors about a single bad row, recipient or message never stop a run: they are recorded
(rejects file, ledger) with the reason and the run goes on. These exceptions are for what
cannot go on.
"""

from __future__ import annotations


class RaymailError(Exception):
    """Base of every error raymail raises on purpose."""


class SpecError(RaymailError, ValueError):
    """A campaign spec is invalid; the message names the file and the key."""


class RecipientError(RaymailError, ValueError):
    """The recipient list cannot be read at all (missing file, no ``email`` column)."""


class TemplateError(RaymailError, ValueError):
    """A template does not compile, or rendering it for one recipient failed."""


class DkimError(RaymailError, ValueError):
    """A DKIM key cannot be read, or does not fit the algorithm it is given for."""


class DeliveryError(RaymailError, RuntimeError):
    """Delivery cannot proceed (no delivery server, no route to a domain)."""


class MXResolutionError(DeliveryError, LookupError):
    """A recipient domain has no usable mail exchanger (NXDOMAIN, null MX, no address)."""

    permanent: bool = True  # fail the recipients (True) or defer them for a retry (False)


class MXPermanentError(MXResolutionError):
    """The domain cannot receive mail (NXDOMAIN, null MX, no usable host): fail recipients."""

    permanent = True


class MXTemporaryError(MXResolutionError):
    """DNS did not answer usefully (timeout, SERVFAIL): defer recipients and retry later."""

    permanent = False


class SmtpProtocolError(RaymailError, ConnectionError):
    """An SMTP peer broke the protocol or dropped the connection."""


class RunDirError(RaymailError, RuntimeError):
    """A run directory is missing, unreadable or belongs to another campaign."""


class RunLockedError(RunDirError):
    """Another live driver holds the run directory's lock."""


class ReturnsError(RaymailError, ValueError):
    """A returned message cannot be stored or processed."""


class StorageError(RaymailError, OSError):
    """Object storage or an export destination cannot be read or written."""


class SinkConfigError(RaymailError, ValueError):
    """The embedded sink's config (file, mapping or option) is invalid; names the key."""


class SinkError(RaymailError, RuntimeError):
    """The embedded sink could not start, stop, or be asked for its counters."""


class RoutingError(RaymailError, ValueError):
    """A routing command got unusable input (names the field, run directory or table)."""


class TrackingError(RaymailError, ValueError):
    """Tracking data is unusable: a bad event, query, archive or follow-up request."""


class EventRowError(TrackingError):
    """An event row is invalid (names the row and the key); nothing of its batch is kept."""


class QueryError(TrackingError):
    """A query over the events failed (the SQL is wrong); DuckDB's message in one line."""


class QueueError(RaymailError, RuntimeError):
    """The campaign queue cannot be opened, or an entry cannot make the change asked for."""


class AttachmentError(RaymailError, ValueError):
    """An attachment is missing, unreadable or larger than the cap (names the file)."""


class SmimeError(RaymailError, ValueError):
    """An S/MIME certificate or key is unusable: missing, expired, not for the address."""


class ListStoreError(RaymailError, ValueError):
    """A subscriber list, its version or the change log is unusable (names which)."""


class WebError(RaymailError, ValueError):
    """The web service cannot start with this configuration (names the setting)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name if it has none).

    Library errors (pyarrow, botocore) often span many lines; raymail's messages are one.
    """
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
