"""The reply bank: what receiving servers answer, with the reason each answer means.

Each entry is a reply a receiving server gives (code, optional enhanced status, text), the
SMTP phase it is given in, and the label: the bounce reason it stands for under the
definitions Sisimai documents for its reason names (read from its public documentation,
not from its samples):

* ``userunknown``: the recipient's mailbox does not exist (rejected at RCPT);
* ``filtered``: rejected after DATA, or by the recipient's own filter / settings; a
  "user unknown" answered to DATA is ``filtered`` (the documentation's own example);
* ``rejected``: the sender's envelope address was refused (at MAIL FROM, or 5.1.8);
* ``blocked``: the sending IP / host / HELO name was refused (connection, HELO, RBLs);
* ``suspend``: the mailbox exists but is disabled; ``hasmoved``: the address moved;
* ``mailboxfull``, ``mesgtoobig``, ``exceedlimit``: size and quota;
* ``expired``: the queue lifetime ran out (connection failures, greylisting, deferrals);
* ``networkerror``: a DNS lookup failure or routing problem (loops, too many hops);
* ``hostunknown``: the recipient domain does not exist;
* ``norelaying``, ``spamdetected``, ``virusdetected``, ``policyviolation``,
  ``securityerror``, ``authfailure``, ``requireptr``, ``badreputation``, ``ratelimited``,
  ``speeding``, ``failedstarttls``, ``notcompliantrfc``, ``contenterror``,
  ``systemerror``, ``systemfull``, ``mailererror``, ``notaccept``, ``syntaxerror``.

Phrasings are written from the public wording of common servers and providers and in
several languages. ``HELD_OUT`` picks every fourth phrasing of each reason (by position)
for the held-out split: the classifier is never tuned on those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Reply:
    """One server reply and what it means."""

    key: str  # stable id: reason-index
    reason: str
    phase: str  # CONN, HELO, MAIL, RCPT, DATA
    code: int
    status: str  # enhanced status code in the reply, '' when the server gives none
    text: str

    @property
    def line(self) -> str:
        """The reply as one line (first line of a multi-line reply)."""
        return f"{self.code} {self.status + ' ' if self.status else ''}{self.text}"

    @property
    def temporary(self) -> bool:
        return self.code < 500

    @property
    def held_out(self) -> bool:
        return int(self.key.rsplit("-", 1)[1]) % 4 == 3


# (reason, phase, code, status, text)
_BANK: Final[tuple[tuple[str, str, int, str, str], ...]] = (
    # --- userunknown (RCPT)
    (
        "userunknown",
        "RCPT",
        550,
        "5.1.1",
        "<{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
    ),
    (
        "userunknown",
        "RCPT",
        550,
        "5.1.1",
        "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.",
    ),
    ("userunknown", "RCPT", 550, "5.5.0", "Requested action not taken: mailbox unavailable"),
    ("userunknown", "RCPT", 550, "", "No such user here"),
    ("userunknown", "RCPT", 550, "5.1.1", "<{rcpt}>... User unknown"),
    (
        "userunknown",
        "RCPT",
        554,
        "",
        "delivery error: dd This user doesn't have a example.net account ({rcpt}) [0] - mta1.mail.example",
    ),
    ("userunknown", "RCPT", 550, "5.1.1", "RESOLVER.ADR.RecipNotFound; not found"),
    ("userunknown", "RCPT", 550, "", "Unrouteable address"),
    ("userunknown", "RCPT", 550, "5.1.1", "Mailbox does not exist"),
    ("userunknown", "RCPT", 550, "", "Sorry, no mailbox here by that name. (#5.1.1)"),
    (
        "userunknown",
        "RCPT",
        550,
        "5.1.1",
        "Recipient not found. For more information, go to https://help.example/ndr",
    ),
    (
        "userunknown",
        "RCPT",
        550,
        "5.1.1",
        "<{rcpt}>: Recipient address rejected: User unknown in local recipient table",
    ),
    ("userunknown", "RCPT", 550, "5.1.1", "Benutzer unbekannt / user unknown"),
    ("userunknown", "RCPT", 550, "5.1.1", "Destinataire inconnu / Adresse introuvable"),
    ("userunknown", "RCPT", 550, "5.1.1", "El usuario no existe en este servidor"),
    ("userunknown", "RCPT", 550, "5.1.1", "Utente sconosciuto in questo dominio"),
    ("userunknown", "RCPT", 550, "", "Invalid recipient <{rcpt}>"),
    ("userunknown", "RCPT", 550, "5.1.1", "Address rejected {rcpt}"),
    ("userunknown", "RCPT", 553, "5.1.1", "sorry, that recipient is not in my list of valid users"),
    ("userunknown", "RCPT", 550, "", "{rcpt}: unknown user account"),
    ("userunknown", "RCPT", 550, "5.1.1", "User does not exist: {rcpt}"),
    (
        "userunknown",
        "RCPT",
        550,
        "5.1.1",
        "Adresse d'expedition inconnue: cet utilisateur n'existe pas",
    ),
    ("userunknown", "RCPT", 550, "5.1.1", "Empfänger existiert nicht"),
    ("userunknown", "RCPT", 550, "", "Mailbox not found"),
    ("userunknown", "RCPT", 550, "5.1.1", "Bad destination mailbox address"),
    ("userunknown", "RCPT", 511, "", "sorry, no mailbox here by that name (#5.1.1 - chkuser)"),
    ("userunknown", "RCPT", 550, "5.1.1", "This mailbox does not exist (user unknown)"),
    ("userunknown", "RCPT", 550, "", "Requested action not taken: no such user here"),
    # --- filtered (DATA, recipient's own filter)
    ("filtered", "DATA", 550, "", "Unknown user {rcpt}"),
    ("filtered", "DATA", 550, "5.2.1", "The user has set a filter that rejects your message"),
    (
        "filtered",
        "RCPT",
        550,
        "5.7.1",
        "Delivery not authorized, message refused due to recipient preferences",
    ),
    ("filtered", "DATA", 554, "5.7.1", "Message rejected by the recipient's mail filter"),
    ("filtered", "DATA", 550, "5.1.1", "User unknown"),
    ("filtered", "RCPT", 550, "", "Your address is not on the recipient's list of allowed senders"),
    (
        "filtered",
        "DATA",
        550,
        "",
        "This account is only accepting mail from specific email addresses",
    ),
    (
        "filtered",
        "DATA",
        554,
        "",
        "Delivery error: recipient has blocked messages from this sender",
    ),
    # --- rejected (sender address)
    ("rejected", "MAIL", 553, "5.1.8", "<{sender}>: Sender address rejected: Domain not found"),
    ("rejected", "MAIL", 550, "5.7.1", "<{sender}>... Access denied"),
    ("rejected", "MAIL", 550, "", "Sender address verification failed"),
    (
        "rejected",
        "MAIL",
        550,
        "5.1.0",
        "<{sender}>: Sender address rejected: undeliverable address",
    ),
    ("rejected", "MAIL", 553, "", "sorry, your envelope sender domain must exist (#5.7.1)"),
    ("rejected", "MAIL", 550, "5.7.1", "Sender is on the recipient's deny list"),
    ("rejected", "MAIL", 501, "5.1.7", "Bad sender address syntax"),
    ("rejected", "MAIL", 550, "", "Absender abgelehnt: Domain existiert nicht"),
    ("rejected", "MAIL", 553, "5.1.8", "Domain of sender address {sender} does not exist"),
    ("rejected", "MAIL", 550, "5.7.0", "Sender rejected: envelope from is not allowed"),
    # --- blocked (client IP / host / HELO)
    (
        "blocked",
        "RCPT",
        554,
        "5.7.1",
        "Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/127.0.0.1",
    ),
    (
        "blocked",
        "CONN",
        554,
        "",
        "mx.example.net ESMTP not accepting connections from 127.0.0.1: listed at bl.spamcop.net",
    ),
    (
        "blocked",
        "RCPT",
        550,
        "5.7.1",
        "Client host rejected: cannot accept mail from your IP address",
    ),
    (
        "blocked",
        "HELO",
        501,
        "5.5.2",
        "<localhost>: Helo command rejected: need fully-qualified hostname",
    ),
    (
        "blocked",
        "CONN",
        554,
        "5.7.1",
        "Your access to this mail system has been rejected due to the sending MTA's poor reputation. If you believe that this failure is in error, please contact the intended recipient via alternate means.",
    ),
    (
        "blocked",
        "RCPT",
        550,
        "",
        "Mail from 127.0.0.1 refused - see http://www.barracudacentral.org/rbl",
    ),
    ("blocked", "CONN", 521, "5.7.1", "Connection refused: your IP is on our blocklist"),
    ("blocked", "RCPT", 553, "5.7.1", "[127.0.0.1] is blacklisted at dnsbl.sorbs.net"),
    ("blocked", "CONN", 554, "5.7.1", "Blocked - see https://ipcheck.proofpoint.com/?ip=127.0.0.1"),
    (
        "blocked",
        "RCPT",
        550,
        "5.7.606",
        "Access denied, banned sending IP [127.0.0.1]. To request removal from this list please visit https://sender.office.example/",
    ),
    ("blocked", "HELO", 550, "", "Access denied - Invalid HELO name (See RFC2821 4.1.1.1)"),
    (
        "blocked",
        "CONN",
        554,
        "",
        "Dynamic IP addresses are not accepted here; please use your provider's relay",
    ),
    ("blocked", "RCPT", 554, "5.7.1", "Ihre IP-Adresse ist gesperrt (Blacklist)"),
    (
        "blocked",
        "CONN",
        421,
        "4.7.0",
        "[127.0.0.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily blocked.",
    ),
    # --- requireptr / badreputation / authfailure
    (
        "requireptr",
        "RCPT",
        450,
        "4.7.1",
        "Client host rejected: cannot find your reverse hostname, [127.0.0.1]",
    ),
    (
        "requireptr",
        "CONN",
        550,
        "5.7.25",
        "The IP address sending this message does not have a PTR record setup, or the corresponding forward DNS entry does not point to the sending IP.",
    ),
    ("requireptr", "CONN", 554, "", "No PTR record found for your IP address 127.0.0.1"),
    ("requireptr", "RCPT", 550, "", "Reverse DNS lookup failed for host 127.0.0.1"),
    (
        "badreputation",
        "DATA",
        421,
        "4.7.0",
        "This message is suspicious due to the very low reputation of the sending IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
    ),
    (
        "badreputation",
        "DATA",
        550,
        "5.7.1",
        "Our system has detected that this message is likely suspicious due to the very low reputation of the sending domain.",
    ),
    ("badreputation", "RCPT", 554, "", "Rejected due to low sender reputation score"),
    ("badreputation", "CONN", 550, "", "Poor IP reputation, message refused"),
    (
        "authfailure",
        "DATA",
        550,
        "5.7.26",
        "This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.",
    ),
    (
        "authfailure",
        "DATA",
        550,
        "5.7.1",
        "Unauthenticated email from example.com is not accepted due to domain's DMARC policy. Please contact the administrator of example.com domain if this was a legitimate mail.",
    ),
    (
        "authfailure",
        "RCPT",
        550,
        "5.7.23",
        "The message was rejected because of Sender Policy Framework violation",
    ),
    (
        "authfailure",
        "RCPT",
        550,
        "5.7.1",
        "SPF check failed: 127.0.0.1 is not allowed to send mail from example.com",
    ),
    ("authfailure", "DATA", 550, "5.7.20", "message does not pass DKIM signature verification"),
    ("authfailure", "DATA", 554, "5.7.5", "Permanent error evaluating DMARC policy"),
    (
        "authfailure",
        "DATA",
        550,
        "",
        "Message rejected: DKIM signature invalid (body hash did not verify)",
    ),
    (
        "authfailure",
        "RCPT",
        550,
        "5.7.509",
        "Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject.",
    ),
    # --- suspend / hasmoved
    ("suspend", "RCPT", 550, "5.2.1", "The email account that you tried to reach is disabled."),
    ("suspend", "RCPT", 550, "", "Mailbox disabled for this recipient"),
    (
        "suspend",
        "RCPT",
        554,
        "",
        "delivery error: dd Sorry your message to {rcpt} cannot be delivered. This mailbox is disabled (554.30). - mta4.mail.example",
    ),
    ("suspend", "RCPT", 550, "5.2.1", "Account inactive, mailbox is suspended"),
    ("suspend", "RCPT", 550, "", "This account has been suspended"),
    ("suspend", "RCPT", 550, "5.2.1", "User account is deactivated"),
    ("suspend", "RCPT", 550, "", "Das Postfach ist deaktiviert"),
    (
        "suspend",
        "RCPT",
        550,
        "5.2.1",
        "Mailbox temporarily disabled: due to extended inactivity new mail is not being accepted",
    ),
    ("hasmoved", "RCPT", 551, "5.1.6", "User not local; please try <new.address@example.org>"),
    ("hasmoved", "RCPT", 550, "5.1.6", "Recipient address has moved; new address unknown"),
    ("hasmoved", "RCPT", 551, "", "The recipient has moved to another address"),
    ("hasmoved", "RCPT", 550, "5.1.6", "Destination mailbox has moved, no forwarding address"),
    # --- mailboxfull
    (
        "mailboxfull",
        "RCPT",
        552,
        "5.2.2",
        "The email account that you tried to reach is over quota. Please direct the recipient to https://support.example/answer",
    ),
    ("mailboxfull", "RCPT", 452, "4.2.2", "<{rcpt}>: Mailbox full, try again later"),
    ("mailboxfull", "DATA", 552, "", "Requested mail action aborted: exceeded storage allocation"),
    ("mailboxfull", "RCPT", 550, "5.2.2", "Mailbox quota exceeded"),
    ("mailboxfull", "RCPT", 522, "", "The recipient has exceeded their mailbox limit"),
    ("mailboxfull", "DATA", 552, "5.2.2", "Quota exceeded (mailbox for user is full)"),
    ("mailboxfull", "RCPT", 452, "4.2.2", "Postfach voll / mailbox over quota"),
    ("mailboxfull", "RCPT", 552, "5.2.2", "Boîte aux lettres pleine"),
    ("mailboxfull", "RCPT", 550, "", "Sorry, the user's maildir has overdrawn his diskspace quota"),
    ("mailboxfull", "DATA", 552, "5.2.2", "user is over quota"),
    ("mailboxfull", "RCPT", 552, "", "Buzón lleno: el usuario ha excedido su cuota"),
    ("mailboxfull", "RCPT", 452, "", "Insufficient storage space in the recipient's mailbox"),
    # --- size
    ("mesgtoobig", "DATA", 552, "5.3.4", "Message size exceeds fixed limit"),
    (
        "mesgtoobig",
        "MAIL",
        552,
        "5.3.4",
        "Message size exceeds fixed maximum message size (10485760)",
    ),
    ("mesgtoobig", "DATA", 552, "", "Message too large"),
    ("mesgtoobig", "DATA", 554, "5.3.4", "Die Nachricht ist zu groß"),
    ("exceedlimit", "DATA", 552, "5.2.3", "Message length exceeds administrative limit"),
    ("exceedlimit", "DATA", 552, "5.2.3", "Message exceeds the recipient's size limit"),
    # --- relaying / policy / content
    ("norelaying", "RCPT", 554, "5.7.1", "<{rcpt}>: Relay access denied"),
    ("norelaying", "RCPT", 550, "", "Relaying denied"),
    (
        "norelaying",
        "RCPT",
        553,
        "",
        "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
    ),
    ("norelaying", "RCPT", 550, "5.7.1", "Unable to relay for {rcpt}"),
    ("norelaying", "RCPT", 550, "", "We do not relay non-local mail"),
    ("norelaying", "RCPT", 550, "5.7.64", "TenantAttribution; Relay Access Denied"),
    (
        "spamdetected",
        "DATA",
        550,
        "5.7.1",
        "Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.",
    ),
    ("spamdetected", "DATA", 554, "5.7.1", "Message rejected as spam by Content Filtering."),
    ("spamdetected", "DATA", 550, "", "High probability of spam"),
    ("spamdetected", "DATA", 554, "", "Transaction failed: spam message rejected"),
    ("spamdetected", "DATA", 550, "5.7.350", "Remote server returned message detected as spam"),
    ("spamdetected", "DATA", 554, "5.7.1", "Die Nachricht wurde als Spam eingestuft"),
    ("spamdetected", "DATA", 550, "", "Message scored too high on spam scale"),
    ("spamdetected", "DATA", 554, "5.7.0", "Reject, id=12345 - SPAM"),
    (
        "virusdetected",
        "DATA",
        554,
        "5.7.0",
        "Rejected: virus found in attachment (Eicar-Test-Signature)",
    ),
    ("virusdetected", "DATA", 550, "", "Message contains malware"),
    ("virusdetected", "DATA", 554, "5.7.1", "The message was rejected because it contains a virus"),
    ("virusdetected", "DATA", 552, "", "Infected message detected: Trojan.Agent"),
    ("policyviolation", "DATA", 550, "5.7.1", "Message rejected due to content policy violation"),
    (
        "policyviolation",
        "DATA",
        554,
        "5.7.1",
        "The message was rejected because it violates our acceptable use policy",
    ),
    (
        "policyviolation",
        "DATA",
        550,
        "",
        "Rejected by policy: executable attachments are not allowed",
    ),
    (
        "policyviolation",
        "DATA",
        552,
        "5.7.0",
        "This message was blocked because its content presents a potential security issue.",
    ),
    (
        "notcompliantrfc",
        "DATA",
        550,
        "5.7.1",
        "Messages missing a valid Message-ID header are not accepted",
    ),
    ("notcompliantrfc", "DATA", 554, "5.6.0", "Message is not RFC 5322 compliant"),
    ("notcompliantrfc", "DATA", 550, "", "Message contains multiple From headers"),
    (
        "notcompliantrfc",
        "DATA",
        550,
        "5.7.1",
        "This message is not RFC 5322 compliant. There are multiple Subject headers.",
    ),
    ("contenterror", "DATA", 554, "5.6.0", "Message content rejected: malformed MIME structure"),
    ("contenterror", "DATA", 550, "5.6.1", "Media not supported"),
    ("contenterror", "DATA", 554, "", "Invalid header found in message"),
    # --- security / TLS
    ("securityerror", "MAIL", 530, "5.7.0", "Authentication required"),
    ("securityerror", "RCPT", 535, "5.7.8", "Authentication credentials invalid"),
    ("securityerror", "MAIL", 550, "5.7.1", "Client was not authenticated to send anonymous mail"),
    ("failedstarttls", "MAIL", 530, "5.7.0", "Must issue a STARTTLS command first"),
    ("failedstarttls", "MAIL", 554, "5.7.10", "TLS is required for this domain; encryption needed"),
    (
        "failedstarttls",
        "MAIL",
        530,
        "",
        "Encryption required for requested authentication mechanism",
    ),
    ("failedstarttls", "CONN", 421, "4.7.0", "TLS negotiation failed, connection closed"),
    # --- rates
    (
        "ratelimited",
        "RCPT",
        421,
        "4.7.0",
        "Too many concurrent SMTP connections from this IP address; please try again later",
    ),
    ("ratelimited", "CONN", 421, "", "Too many connections, slow down"),
    ("ratelimited", "RCPT", 450, "4.7.1", "Rate limit exceeded, try again later"),
    (
        "ratelimited",
        "MAIL",
        451,
        "4.7.500",
        "Server busy. Please try again later from [127.0.0.1]. (AS843) Connection throttled",
    ),
    (
        "speeding",
        "RCPT",
        450,
        "4.2.1",
        "The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.",
    ),
    ("speeding", "RCPT", 452, "", "Too many messages for this recipient, please try again later"),
    ("ratelimited", "CONN", 421, "", "Too many SMTP sessions for this host"),
    ("ratelimited", "RCPT", 452, "4.5.3", "Too many recipients"),
    # --- system
    ("systemerror", "RCPT", 451, "4.3.0", "Internal server error, please try again later"),
    ("systemerror", "DATA", 451, "", "Local error in processing"),
    ("systemerror", "RCPT", 554, "5.3.0", "System error: temporary local problem"),
    ("systemerror", "DATA", 554, "5.3.5", "System configuration error"),
    ("systemfull", "DATA", 452, "4.3.1", "Insufficient system storage"),
    ("systemfull", "RCPT", 452, "", "Disk full, try again later"),
    ("mailererror", "DATA", 554, "5.3.0", "unknown mailer error 1"),
    ("mailererror", "DATA", 550, "", "Command died with status 2: procmail"),
    ("notaccept", "RCPT", 556, "5.1.10", "Recipient address has null MX"),
    ("notaccept", "CONN", 554, "", "This server does not accept mail"),
    ("syntaxerror", "RCPT", 501, "5.5.4", "Syntax error in parameters or arguments"),
    ("syntaxerror", "MAIL", 500, "5.5.1", "Command unrecognized"),
    # --- temporary answers that, when the queue lifetime runs out, mean expired
    (
        "expired",
        "RCPT",
        450,
        "4.7.1",
        "<{rcpt}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.net.html",
    ),
    ("expired", "RCPT", 451, "4.7.1", "Please try again later"),
    ("expired", "RCPT", 450, "", "Greylisting in action, please come back later"),
    ("expired", "DATA", 451, "4.4.0", "Temporary failure, try again later"),
    ("expired", "RCPT", 421, "4.4.2", "Timeout waiting for data, closing connection"),
    ("expired", "RCPT", 451, "", "Temporary local problem - please try later"),
    ("expired", "RCPT", 450, "4.2.0", "Mailbox temporarily unavailable"),
    ("expired", "CONN", 421, "4.3.2", "Service not available, closing transmission channel"),
)


def _build() -> tuple[Reply, ...]:
    counters: dict[str, int] = {}
    out = []
    for reason, phase, code, status, text in _BANK:
        index = counters.get(reason, 0)
        counters[reason] = index + 1
        out.append(Reply(f"{reason}-{index}", reason, phase, code, status, text))
    return tuple(out)


REPLIES: Final = _build()
BY_KEY: Final = {r.key: r for r in REPLIES}


def reply_lines(reply: Reply, rcpt: str, sender: str) -> list[str]:
    """The reply as an SMTP server writes it (long text wrapped as a multi-line reply)."""
    text = reply.text.format(rcpt=rcpt, sender=sender)
    status = f"{reply.status} " if reply.status else ""
    words = text.split()
    chunks: list[str] = []
    current = ""
    for word in words:
        if current and len(current) + len(word) > 70:
            chunks.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    chunks.append(current)
    return [
        f"{reply.code}{'-' if i < len(chunks) - 1 else ' '}{status}{chunk}"
        for i, chunk in enumerate(chunks)
    ]


def reply_text(reply: Reply, rcpt: str, sender: str) -> str:
    """The reply on one line, as most reports quote it."""
    status = f"{reply.status} " if reply.status else ""
    return f"{reply.code} {status}{reply.text.format(rcpt=rcpt, sender=sender)}"
