"""Held-out split 2: reply phrasings written fresh, never used for tuning.

Written after the first held-out split had been looked at, so that one split stays
unseen: none of these phrasings is in replies.py, and the classifier's rules must not be
changed to pass them (the baseline score is taken once, before any rule change). Labels
follow the reason definitions Sisimai documents (see replies.py for the list); where a
reply could be read two ways the comment says which definition decides:

* mailboxfull (the recipient's mailbox, X.2.2) against systemfull (the server's disk or
  spool, X.3.1): whose storage is out;
* policyviolation (the message breaks the receiver's policy: attachments, content rules)
  against securityerror (authentication or a security check of the client);
* userunknown (the local part) against hostunknown (the domain);
* networkerror (DNS or routing failed) against expired (the queue lifetime ran out: the
  report says so, or a connection failure was retried until it did);
* rejected (the envelope sender refused) against blocked (our IP / host / HELO refused);
* badreputation (the sending IP's reputation) against blocked (a list or a policy).

``hidden``: the label when the bounce's layout does not show the SMTP phase (a "user
unknown" answered to DATA reads as userunknown then); ``"skip"``: such a reply is only
rendered in layouts that show the phase, since without it nothing says what it means.
This module is long because it is a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class FreshReply:
    """One server reply (or local condition) and what it means."""

    key: str
    reason: str
    phase: str  # CONN, HELO, MAIL, RCPT, DATA, LOCAL
    code: int
    status: str
    text: str
    hidden: str = ""  # label when the phase is not visible ('' = same; 'skip' = never)

    @property
    def temporary(self) -> bool:
        return self.code < 500 if self.code else self.status.startswith("4.")

    def label(self, shows_phase: bool) -> str:
        if shows_phase or not self.hidden:
            return self.reason
        return self.hidden


# (reason, phase, code, status, text[, hidden])
_BANK: Final[tuple[tuple[str, ...], ...]] = (
    # --- userunknown: the local part does not exist
    ("userunknown", "RCPT", "550", "5.1.1", "<{rcpt}>: Recipient rejected: this user is not in the directory"),
    ("userunknown", "RCPT", "550", "5.1.1", "Sorry, I couldn't find a mailbox for {rcpt}"),
    ("userunknown", "RCPT", "550", "", "unknown or illegal alias: {rcpt}"),
    ("userunknown", "RCPT", "550", "5.1.1", "Mailbox \"{local}\" is unknown on this server"),
    ("userunknown", "RCPT", "550", "5.1.1", "Der Empfänger {rcpt} ist hier nicht bekannt"),
    ("userunknown", "RCPT", "550", "5.1.1", "L'adresse {rcpt} n'est pas attribuée"),
    ("userunknown", "RCPT", "550", "5.1.1", "La dirección de correo {rcpt} no está registrada"),
    ("userunknown", "RCPT", "550", "5.1.1", "O endereço {rcpt} não foi encontrado"),
    ("userunknown", "RCPT", "550", "5.1.1", "Такого пользователя нет"),
    ("userunknown", "RCPT", "550", "", "该用户不存在 {rcpt}"),
    ("userunknown", "RCPT", "550", "", "このメールアドレスは存在しません"),
    ("userunknown", "RCPT", "550", "", "Recipient unknown: {rcpt}"),
    ("userunknown", "RCPT", "550", "5.1.1", "Invalid mailbox: {rcpt}"),
    ("userunknown", "RCPT", "550", "5.1.1", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
    ("userunknown", "RCPT", "550", "", "Mailbox {local} does not exist here"),
    ("userunknown", "RCPT", "553", "5.1.1", "The recipient mailbox {rcpt} is not known to this system"),
    ("userunknown", "RCPT", "550", "5.1.1", "Indirizzo {rcpt} inesistente"),
    ("userunknown", "RCPT", "550", "5.1.1", "Nie ma takiego adresata: {rcpt}"),
    # --- hostunknown: the recipient's domain does not exist
    ("hostunknown", "LOCAL", "0", "5.1.2", "all relevant MX records point to non-existent hosts"),
    ("hostunknown", "LOCAL", "0", "5.1.2", "DNS Error: DNS type 'mx' lookup of {domain} responded with code NXDOMAIN"),
    ("hostunknown", "LOCAL", "0", "5.4.4", "mail domain {domain} has no MX or A record"),
    ("hostunknown", "RCPT", "550", "5.1.2", "Bad destination system address"),
    ("hostunknown", "LOCAL", "0", "5.1.2", "The domain {domain} could not be found in DNS"),
    ("hostunknown", "LOCAL", "0", "5.1.2", "Die Domain {domain} existiert nicht"),
    # --- mailboxfull: the recipient's own storage is used up
    ("mailboxfull", "RCPT", "552", "5.2.2", "<{rcpt}>: Recipient address rejected: mailbox is over its storage limit"),
    ("mailboxfull", "RCPT", "452", "4.2.2", "The recipient's inbox is out of storage space. Please direct the recipient to the help centre"),
    ("mailboxfull", "DATA", "552", "", "Mail quota exceeded for {rcpt}"),
    ("mailboxfull", "RCPT", "550", "5.2.2", "Die Mailbox des Empfängers ist voll"),
    ("mailboxfull", "RCPT", "552", "5.2.2", "La boîte de réception du destinataire est saturée"),
    ("mailboxfull", "RCPT", "552", "5.2.2", "Этот почтовый ящик переполнен"),
    ("mailboxfull", "RCPT", "552", "5.2.2", "用户邮箱已满"),
    ("mailboxfull", "RCPT", "550", "5.2.2", "受信者のメールボックスがいっぱいです"),
    ("mailboxfull", "RCPT", "552", "5.2.2", "A caixa de correio do destinatário está cheia"),
    # "Insufficient storage" with the mailbox named and X.2.2: the recipient's mailbox.
    ("mailboxfull", "RCPT", "452", "4.2.2", "Insufficient storage space for this mailbox"),
    ("mailboxfull", "DATA", "552", "5.2.2", "Storage allocation exceeded for this user"),
    ("mailboxfull", "RCPT", "452", "", "Mailbox {local} has reached its size limit"),
    # --- systemfull: the receiving server's disk or spool
    ("systemfull", "DATA", "452", "4.3.1", "Mail system full, try again later"),
    ("systemfull", "RCPT", "452", "4.3.1", "Insufficient system resources"),
    ("systemfull", "DATA", "431", "4.3.1", "The server's disk is full"),
    ("systemfull", "DATA", "452", "", "Requested action not taken: insufficient system storage"),
    ("systemfull", "RCPT", "452", "4.3.1", "Queue file write error: no space left on device"),
    # --- suspend: the mailbox exists but is disabled
    ("suspend", "RCPT", "550", "5.2.1", "<{rcpt}>: Account disabled"),
    ("suspend", "RCPT", "550", "5.2.1", "This mailbox has been deactivated due to inactivity"),
    ("suspend", "RCPT", "550", "", "The account {rcpt} is currently suspended"),
    ("suspend", "RCPT", "550", "5.2.1", "Das Benutzerkonto wurde gesperrt"),
    ("suspend", "RCPT", "550", "5.2.1", "Le compte de ce destinataire est désactivé"),
    ("suspend", "RCPT", "550", "5.2.1", "Mailbox inactive: this account is no longer in use"),
    # --- hasmoved
    ("hasmoved", "RCPT", "551", "5.1.6", "{rcpt} has changed address; the new address is contact@new.example"),
    ("hasmoved", "RCPT", "550", "5.1.6", "This recipient has moved and left no forwarding address"),
    # --- filtered: the recipient's own filter, or a refusal after DATA
    ("filtered", "DATA", "550", "5.1.1", "Recipient unknown", "userunknown"),
    ("filtered", "DATA", "550", "", "No such user ({rcpt})", "userunknown"),
    ("filtered", "RCPT", "550", "5.2.1", "The recipient does not accept mail from this sender"),
    ("filtered", "DATA", "554", "5.7.1", "Delivery refused: the recipient's mailbox rules reject this message"),
    ("filtered", "RCPT", "550", "", "受信拒否設定により配信できません"),
    ("filtered", "DATA", "550", "5.2.0", "Message refused by the recipient's mail settings"),
    # --- rejected: the envelope sender was refused
    ("rejected", "MAIL", "550", "5.7.1", "Your envelope sender address is not accepted here"),
    ("rejected", "MAIL", "553", "", "Sender domain {sdomain} is not allowed to send to this server"),
    ("rejected", "MAIL", "550", "", "Absenderadresse unbekannt"),
    ("rejected", "MAIL", "550", "5.7.1", "Expéditeur refusé"),
    ("rejected", "MAIL", "554", "5.7.1", "<{sender}>: Sender address rejected: Access denied"),
    # The sender's address on a list is about the address (rejected), not our IP (blocked).
    ("rejected", "MAIL", "550", "5.7.1", "The sender address {sender} is blacklisted"),
    ("rejected", "MAIL", "550", "5.7.1", "Not allowed", "skip"),
    ("rejected", "MAIL", "553", "", "Return path {sender} refused", ""),
    # --- blocked: our IP, host or HELO name
    ("blocked", "RCPT", "550", "5.7.1", "Your IP 192.0.2.10 is listed on bl.mailspike.net"),
    ("blocked", "CONN", "554", "5.7.1", "Connection from 192.0.2.10 rejected by local policy"),
    ("blocked", "CONN", "554", "", "Your host is not allowed to connect"),
    ("blocked", "RCPT", "550", "5.7.1", "Sending host 192.0.2.10 has been blacklisted"),
    ("blocked", "RCPT", "554", "5.7.1", "Das sendende System steht auf einer Sperrliste"),
    ("blocked", "RCPT", "550", "5.7.1", "Votre adresse IP est bloquée"),
    ("blocked", "CONN", "550", "5.7.1", "Ваш IP-адрес заблокирован"),
    ("blocked", "HELO", "501", "5.5.4", "Invalid HELO name: localhost"),
    ("blocked", "RCPT", "554", "5.7.1", "JunkMail rejected - mta.raymail.test [192.0.2.10]:25 is in an RBL"),
    ("blocked", "CONN", "554", "", "No SMTP service here for 192.0.2.10", "skip"),
    # --- badreputation: the sending IP's reputation
    ("badreputation", "RCPT", "550", "5.7.1", "[192.0.2.10] Message rejected due to the IP reputation of the sender"),
    ("badreputation", "CONN", "554", "5.7.1", "Sender IP has a poor reputation score"),
    ("badreputation", "DATA", "421", "4.7.0", "Mail from this IP is deferred: low IP reputation, please try again later"),
    # --- authfailure: SPF / DKIM / DMARC
    ("authfailure", "DATA", "550", "5.7.26", "Unauthenticated mail is prohibited; DMARC check failed"),
    ("authfailure", "RCPT", "550", "5.7.23", "Sender domain does not pass SPF for 192.0.2.10"),
    ("authfailure", "DATA", "550", "5.7.1", "Email rejected per DMARC policy for {sdomain}"),
    ("authfailure", "DATA", "550", "", "SPF-Prüfung fehlgeschlagen"),
    # --- requireptr
    ("requireptr", "RCPT", "450", "4.7.25", "Client host rejected: cannot find your hostname, [192.0.2.10]"),
    ("requireptr", "CONN", "550", "", "Please configure a reverse DNS entry for 192.0.2.10"),
    # --- securityerror: authentication or a security check of the client
    ("securityerror", "MAIL", "535", "5.7.3", "Authentication unsuccessful"),
    ("securityerror", "MAIL", "550", "5.7.60", "SMTP; Client does not have permissions to send as this sender"),
    ("securityerror", "MAIL", "530", "5.7.0", "Authentication is required to send mail from this domain"),
    # --- policyviolation: the message breaks the receiver's policy (content, attachments)
    ("policyviolation", "DATA", "554", "5.7.1", "Message rejected: attachment type .exe is not permitted"),
    ("policyviolation", "DATA", "550", "5.7.1", "Mail rejected under the organisation's email policy"),
    ("policyviolation", "DATA", "552", "5.7.0", "Our system detected an illegal attachment on your message"),
    # "security policy" of the receiver, broken by the message's content: policyviolation.
    ("policyviolation", "DATA", "550", "5.7.1", "Message blocked: the content violates the receiving domain's security policy"),
    ("policyviolation", "DATA", "554", "5.7.1", "Der Inhalt verstößt gegen die Richtlinien des Empfängers"),
    ("policyviolation", "DATA", "550", "5.7.1", "Le message enfreint la politique de sécurité du destinataire"),
    # --- spamdetected
    ("spamdetected", "DATA", "550", "5.7.1", "Rejected as bulk/unsolicited mail"),
    ("spamdetected", "DATA", "554", "5.7.1", "Your message was detected as spam (SpamAssassin score 9.8)"),
    ("spamdetected", "DATA", "550", "", "Mensaje rechazado por ser considerado spam"),
    ("spamdetected", "DATA", "554", "5.7.1", "Сообщение похоже на спам"),
    ("spamdetected", "DATA", "554", "5.7.1", "该邮件被判定为垃圾邮件"),
    # --- virusdetected
    ("virusdetected", "DATA", "554", "5.7.1", "Infected with Win32.Worm.Agent, message dropped"),
    ("virusdetected", "DATA", "550", "5.7.0", "Message rejected: Virus detected (HEUR:Trojan.Script)"),
    ("virusdetected", "DATA", "554", "5.7.1", "Die Nachricht enthält einen Virus"),
    # --- size
    ("mesgtoobig", "DATA", "552", "5.3.4", "Message size exceeds maximum permitted"),
    ("mesgtoobig", "DATA", "552", "5.3.4", "Error: message file too big"),
    ("mesgtoobig", "MAIL", "552", "", "Message exceeds maximum fixed size"),
    ("mesgtoobig", "DATA", "554", "5.3.4", "Le message est trop volumineux"),
    ("exceedlimit", "DATA", "552", "5.2.3", "Message exceeds local size limit for this recipient"),
    # --- norelaying
    ("norelaying", "RCPT", "550", "5.7.54", "SMTP; Unable to relay recipient in non-accepted domain"),
    ("norelaying", "RCPT", "553", "5.7.1", "Relaying not permitted"),
    ("norelaying", "RCPT", "550", "", "Relaying nicht erlaubt"),
    # --- rates
    ("ratelimited", "MAIL", "450", "4.7.1", "Message rate exceeded for this sender"),
    ("ratelimited", "CONN", "421", "4.7.0", "Try again later, closing connection. (Throttled)"),
    ("ratelimited", "CONN", "421", "", "Too many concurrent connections from 192.0.2.10"),
    # --- failedstarttls / notcompliantrfc / contenterror
    ("failedstarttls", "MAIL", "530", "5.7.0", "Must issue a STARTTLS command before sending mail"),
    ("failedstarttls", "LOCAL", "0", "4.7.4", "TLS is required, but was not offered by host {host}"),
    ("notcompliantrfc", "DATA", "550", "5.7.1", "Message has more than one From header field"),
    ("notcompliantrfc", "DATA", "554", "5.6.0", "Message is missing the mandatory Date header"),
    ("contenterror", "DATA", "554", "5.6.0", "Corrupt MIME structure: boundary not terminated"),
    # --- system / mailer
    ("systemerror", "DATA", "451", "4.3.0", "Internal processing error, message not accepted"),
    ("systemerror", "RCPT", "554", "5.3.5", "Server misconfigured: cannot deliver"),
    ("mailererror", "LOCAL", "0", "5.3.0", "local delivery failed: maildrop exited with status 75"),
    ("notaccept", "LOCAL", "0", "5.1.10", "Domain {domain} has a null MX and does not accept mail"),
    # --- expired: the queue lifetime ran out (said so, or connection failures retried)
    ("expired", "LOCAL", "0", "4.4.7", "retry time not reached for any host after a long failure period"),
    ("expired", "LOCAL", "0", "4.4.7", "Message could not be delivered for 5 days - giving up"),
    ("expired", "LOCAL", "0", "4.4.1", "delivery temporarily suspended: connect to {host}[192.0.2.25]:25: Connection refused"),
    ("expired", "LOCAL", "0", "4.4.7", "Unable to deliver message after multiple retries over 120 hours"),
    ("expired", "RCPT", "451", "4.3.0", "Temporary server error. Please try again later"),
    ("expired", "RCPT", "450", "4.7.1", "Greylisted for 300 seconds, please retry"),
    # --- networkerror: DNS lookups or routing failed
    ("networkerror", "LOCAL", "0", "4.4.3", "Temporary DNS error: SERVFAIL looking up MX for {domain}"),
    ("networkerror", "LOCAL", "0", "5.4.6", "Too many \"Received\" header lines in message - suspected loop"),
    ("networkerror", "LOCAL", "0", "4.4.3", "DNS lookup of {host} timed out"),
    ("networkerror", "LOCAL", "0", "4.4.1", "No route to host {host}: network is unreachable"),
)  # fmt: skip


def _build() -> tuple[FreshReply, ...]:
    counters: dict[str, int] = {}
    out = []
    for reason, phase, code, status, text, *rest in _BANK:
        index = counters.get(reason, 0)
        counters[reason] = index + 1
        hidden = rest[0] if rest else ""
        out.append(
            FreshReply(f"f2-{reason}-{index}", reason, phase, int(code), status, text, hidden)
        )
    return tuple(out)


FRESH_REPLIES: Final = _build()


def fresh_text(reply: FreshReply, rcpt: str, sender: str, host: str) -> str:
    """The reply on one line, as a report quotes it (a local condition: its text only)."""
    local, _, domain = rcpt.partition("@")
    text = reply.text.format(
        rcpt=rcpt,
        local=local,
        domain=domain,
        sender=sender,
        sdomain=sender.partition("@")[2],
        host=host,
    )
    if reply.phase == "LOCAL":
        return text
    status = f"{reply.status} " if reply.status else ""
    return f"{reply.code} {status}{text}"
