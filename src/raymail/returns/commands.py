"""Which SMTP command a failure answered: the phase decides what some replies mean.

Sisimai's reason definitions depend on the phase: a "user unknown" answered to DATA is
``filtered`` (rejected after DATA), a refusal answered to MAIL FROM is ``rejected`` (the
sender's address), one answered to the greeting or HELO is ``blocked`` (our host). MTAs
say the phase in their own words; this module reads them. When a text names several
commands (a Sendmail transcript), the last one is the one that failed.
"""

from __future__ import annotations

import re
from typing import Final

CONN: Final = "CONN"
HELO: Final = "HELO"
MAIL: Final = "MAIL"
RCPT: Final = "RCPT"
DATA: Final = "DATA"

_PHASES: Final[tuple[tuple[str, str], ...]] = (
    (
        DATA,
        r"in reply to end of data command|after end of data|after (?:pipelined )?data\b"
        r"|>>> data\b|in reply to data command|failed after i sent the message|\[body\]"
        r"|after (?:the )?end of (?:the )?message",
    ),
    (
        RCPT,
        r"in reply to rcpt to command|after rcpt to|(?:>>>|<<<|sent:?) ?rcpt to"
        r"|does not like recipient|\[rcpt_to\]",
    ),
    (
        MAIL,
        r"in reply to mail from command|after mail from|>>> mail from|sender was rejected"
        r"|\[mail_from\]",
    ),
    (
        HELO,
        r"in reply to (?:ehlo|helo) command|after (?:ehlo|helo)\b|my name was rejected"
        r"|>>> (?:ehlo|helo)\b",
    ),
    (
        CONN,
        r"refused to talk to me|after initial connection|initial (?:server )?greeting"
        r"|greeting failed",
    ),
)
_PHASE_RE: Final = re.compile("|".join(f"(?P<{name}>{rx})" for name, rx in _PHASES))


def smtp_command(text: str) -> str | None:
    """The command the failing reply answered (CONN/HELO/MAIL/RCPT/DATA), or None."""
    if not text:
        return None
    last: str | None = None
    for match in _PHASE_RE.finditer(text.lower()):
        last = match.lastgroup
    return last
