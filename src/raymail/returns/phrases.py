"""What reply and bounce text says about the cause: the phrase tables, compiled once.

Ordered: the first reason whose pattern matches wins, so narrow, telling phrases come
before broad ones. Each reason's phrases follow the meaning Sisimai documents for that
reason name (see reasons.py); the comments say which signal wins where two could apply.
This module is long because it is a table.
"""

from __future__ import annotations

import re
from typing import Final

# ---------------------------------------------------------------------------------------------
# Reply text. Ordered: the first reason whose pattern matches wins, so the narrow, telling
# phrases come before the broad ones ("blocked using spamhaus" is an IP block, not spam).


# Pseudo-reasons: causes that depend on whether the message was retried (see decide).
CONNECTION: Final = "_connection"
TEMPORARY: Final = "_temporary"


def _rx(*parts: str) -> re.Pattern[str]:
    """One alternation; matched against lower-cased text (case-folding regexes are slow)."""
    return re.compile("|".join(f"(?:{p})" for p in parts))


_STRONG_TEXT: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    # Greylisting is a deferral by design, whatever else the reply says ("recipient address
    # rejected: greylisted"): returned, it means the queue lifetime ran out.
    ("expired", _rx(r"gr[ae]y-?list", r"postgrey")),
    # An authoritative "no such domain" outranks every other DNS wording: hostunknown is
    # the recipient's domain part not existing (NXDOMAIN, MX records naming no host).
    (
        "hostunknown",
        _rx(
            r"\bnxdomain\b",
            r"mx records? .{0,40}point(?:s)? to .{0,30}(?:non-?existent|(?:do|does) not exist)",
            r"no (?:a or mx|mx or a|mx or aaaa) records?",
            r"non-?existent (?:domain|mail domain)",
        ),
    ),
    # A DNS lookup that failed temporarily is Sisimai's networkerror, not hostunknown: the
    # domain may well exist ("host not found, try again" is the resolver's TRY_AGAIN).
    # Routing failures below the queue (no route, unreachable network) are network problems
    # whether or not the message was retried: networkerror, not expired.
    (
        "networkerror",
        _rx(
            r"\bservfail\b",
            r"dns .{0,40}(?:timed out|timeout|temporar)",
            r"temporary dns",
            r"resolver (?:timeout|timed out|failure|error)",
            r"no route to host",
            r"network (?:is )?unreachable",
            r"suspected (?:mail )?loop|possible (?:mail )?loop|\bloop detected",
            r"too many .{0,3}received.{0,3} header",
            r"host not found, try again",
            r"temporary failure in name resolution",
            r"unable to look up host",
            r"dns (?:lookup )?(?:failure|timeout|timed out|servfail)",
            r"(?:name server|dns server) (?:timeout|failure|not responding)",
            r"temporary (?:lookup|dns|name service) failure",
            r"malformed or unexpected name server reply",
        ),
    ),
    # The recipient's own filter or settings refuse us (Sisimai: filtered). Before
    # "blocked": "the recipient has blocked messages from this sender" is the recipient's
    # choice, not a block of our IP.
    (
        "filtered",
        _rx(
            r"list of allowed senders",
            r"only (?:accepting|accepts|accept) (?:mail|messages|e-?mail) from",
            r"(?:user|recipient) has (?:set|created) a (?:mail )?filter",
            r"(?:recipient|user|addressee) has blocked",
            # Refusing mail *from this sender* is the recipient's choice (filtered); a host
            # that takes no mail at all is notaccept.
            r"(?:does not|doesn't|will not|won't|do not) accept (?:e-?mails?|mails?|messages?) "
            r"from (?:this|the|your|you)",
            r"recipient'?s? (?:mailbox |mail )?rules?",
            r"受信拒否",
            r"(?:refused|rejected) due to (?:the )?recipient(?:'s)? preferences?",
            r"(?:recipient|user)'s (?:mail )?filter",
            r"user reject",
        ),
    ),
    # The sender's own address refused (Sisimai: rejected), before "blocked": "sender is on
    # the deny list" is about our envelope address, not our IP.
    (
        "rejected",
        _rx(
            r"sender address rejected",
            r"sender (?:is )?(?:on|in) (?:the |a |our )?(?:[\w']+ )?(?:deny|block|black) ?list",
            r"sender (?:verify|verification|address verification) (?:failed|failure)",
            r"\bsender rejected",
            r"envelope (?:sender|from) .{0,30}(?:not allowed|rejected|invalid|denied)",
            # Our envelope address named as the thing refused (not our IP or host: those
            # are blocked, below; "sender ip" and "sender reputation" are excluded here).
            r"\bsender(?=[ ']|$)(?! ?(?:ip|host|server|mta|network|reputation|score|policy))"
            r"(?:'s)?(?: e-?mail)?(?: address| domain)?\b.{0,40}"
            r"(?:not accepted|not allowed|refused|rejected|denied|black ?list|block ?list"
            r"|deny ?list|is unknown|unknown|invalid|not valid)",
            r"mail from address .{0,80}(?:black|block|deny) ?list",
            r"(?:envelope|return)[ -]path .{0,60}(?:rejected|refused|invalid|not accepted)",
            r"absender(?:adresse|domain)?\b.{0,40}(?:unbekannt|abgelehnt|unzul[äa]ssig|ung[üu]ltig"
            r"|gesperrt|existiert nicht)",
            r"exp[ée]diteur.{0,30}(?:refus|rejet|inconnu|invalide|interdit)",
            r"remitente.{0,30}(?:rechazad|desconocid|inv[áa]lid|no v[áa]lid|no permitid)",
            r"remetente.{0,30}(?:rejeitad|recusad|desconhecid|inv[áa]lid)",
            r"отправител[ья].{0,30}(?:отклон|запрещ|неизвест|не существ)",
        ),
    ),
    # Narrow phrases that would otherwise be taken for a broader class below.
    ("userunknown", _rx(r"5\.4\.1 .{0,60}recipient address rejected: access denied")),
    ("filtered", _rx(r"recipient address rejected: access denied")),
    ("norelaying", _rx(r"allowed rcpthosts", r"not in my list of (?:allowed )?rcpthosts")),
    (
        "virusdetected",
        _rx(
            r"\bvirus(?:es)?\b",
            r"\bmalware\b",
            r"\binfected\b",
            r"\btrojan\b",
            r"\bworm\b.{0,20}\bdetected",
            r"\bmalicious (?:content|attachment|payload)",
        ),
    ),
    (
        "requireptr",
        _rx(
            r"reverse (?:dns|lookup|hostname|name|mapping)",
            r"\bptr\b.{0,20}record",
            r"\bno ptr\b",
            r"\bptr (?:lookup|check|record)",
            r"\brdns\b",
            r"cannot find your (?:reverse )?hostname",
            r"client host .{0,40}(?:has no|without|missing) .{0,10}(?:ptr|reverse)",
            r"does not have a (?:valid )?(?:reverse|ptr)",
            r"ip (?:address )?(?:has )?no (?:ptr|reverse|hostname)",
            r"unresolvable (?:client )?(?:host|ip)",
            r"(?:not|cannot|unable to) resolve your (?:ip|address|host)",
        ),
    ),
    (
        "badreputation",
        _rx(
            r"\breputation\b",
            r"sender ?score",
        ),
    ),
    (
        "authfailure",
        _rx(
            r"\bspf\b",
            r"\bdkim\b",
            r"\bdmarc\b",
            r"sender policy framework",
            r"not (?:authorized|permitted|allowed) to send (?:email|mail|messages?)? ?on behalf",
            r"unauthenticated (?:email|mail|sender)",
            r"\bauthentication (?:check|checks) (?:failed|fail)",
            r"\bdomain ?keys\b",
        ),
    ),
    # Credentials and send-as permissions (Sisimai: securityerror), before the broad user
    # and block words ("invalid user name or password" is not an unknown user).
    (
        "securityerror",
        _rx(
            r"(?:permission|permissions|not permitted|not allowed|not authori[sz]ed) to send as",
            r"send ?as (?:denied|permission)",
            r"authentication (?:unsuccessful|failed|failure|required|is required)",
            r"authentication credentials",
            r"invalid (?:user ?name|login|credentials)(?: or password)?",
            r"client (?:was |is )?not authenticated",
            r"must (?:authenticate|be authenticated)",
        ),
    ),
    # A policy the *message* breaks (its attachments, content, the receiver's mail or
    # security policy) is policyviolation, before the block words it often carries
    # ("attachments ... are blocked by company policy"). A policy about the connecting
    # client ("connection ... refused by policy") is a block of our host: next group.
    (
        "policyviolation",
        _rx(
            r"(?:attachment|file (?:type|extension)|file|extension)s?\b.{0,50}"
            r"(?:not (?:allowed|permitted)|forbidden|prohibited|blocked|banned|polic)",
            r"(?:forbidden|prohibited|banned|blocked|dangerous|illegal|disallowed) "
            r"(?:file|attachment|extension|content)",
            r"(?:security|content|mail|e-?mail|company|corporate|organi[sz]ation'?s?|"
            r"data loss prevention|dlp|acceptable use|usage) (?:e-?mail |mail )?polic(?:y|ies)",
            r"polic(?:y|ies) violation",
            r"violat(?:es|ed|ion of|ing) .{0,40}(?:polic|richtlinie|politique|pol[íi]tica)",
            r"content .{0,30}not (?:permitted|allowed)",
            r"verst[öo](?:ß|ss)t gegen|richtlinie",
            r"enfreint|politique de s[ée]curit[ée]",
        ),
    ),
    (
        "blocked",
        _rx(
            r"connection (?:from|of) .{0,40}(?:rejected|refused|denied|blocked|not accepted)",
            r"(?:client|sending|your) (?:ip|host|server)(?: address)? .{0,40}"
            r"(?:on|in) (?:our|the|a) .{0,20}(?:deny|block|black) ?list",
            r"liste noire|sperrliste|lista negra|lista nera|черн(?:ый|ом) списк",
            r"ip-adresse .{0,30}(?:abgelehnt|gesperrt|blockiert)",
            r"adresse ip .{0,30}(?:bloqu|refus|rejet)",
            r"ip-адрес .{0,30}(?:заблокирован|отклон)",
            r"spamhaus",
            r"spamcop",
            r"barracuda(?:central)?",
            r"sorbs\b",
            r"\bsurbl\b",
            r"\buceprotect",
            r"\bdnsbl\b",
            r"\brbl\b",
            r"\bblack ?list(?:ed)?\b",
            r"\bblock ?list(?:ed)?\b",
            r"\bdeny ?list(?:ed)?\b",
            r"blocked using\b",
            r"(?<!not )listed (?:at|in|on|by) \S",
            r"client host .{0,60}(?:rejected|blocked|refused|denied)",
            r"(?:your|sending|client|sender)(?:'s)? (?:ip|host|server|mta|network|mail server)\b"
            r".{0,60}(?:blocked|banned|rejected|refused|denied|not allowed|blacklisted|listed)",
            r"(?:ip|host|connection)(?: address)? .{0,40}(?:has been |is |was )?"
            r"(?:blocked|banned|blacklisted)",
            r"access denied.{0,20}(?:banned|ip|sending)",
            r"(?:dynamic|dial[ -]?up|residential|generic) (?:ip|address|host|pool|range|client)",
            r"(?:ip|host) .{0,20}(?:dynamic|dial[ -]?up|residential)",
            r"helo command rejected",
            r"invalid (?:helo|ehlo)",
            r"(?:helo|ehlo) .{0,40}(?:rejected|invalid|not allowed|denied|refused)",
            r"connections? (?:not accepted|refused|rejected) from",
            r"too many (?:bad|invalid|unknown) recipients",
            r"\b5\.7\.(?:60[6-9]|6[1-4]\d)\b",
            r"banned sending ip",
            r"not (?:allowed|permitted|authorized) to (?:connect|send mail from)",
        ),
    ),
    (
        "rejected",
        _rx(
            r"sender address rejected",
            r"sender (?:verify|verification|address verification) (?:failed|failure)",
            r"domain of sender address .{0,80}(?:does not exist|not resolve|not found)",
            r"sender (?:domain )?(?:is )?(?:not|un)(?:known|resolvable|valid)",
            r"(?:invalid|bad|unknown|unverified|unroutable) sender",
            r"sender (?:domain )?(?:must|does not) (?:resolve|exist)",
            r"mail from .{0,60}(?:rejected|refused|denied)",
            r"(?:envelope|return)[ -]path .{0,40}(?:rejected|invalid|not)",
            r"sender .{0,30}(?:rejected|refused|denied|blacklisted|blocked by)",
            r"your (?:email )?address .{0,40}(?:has been|is) (?:blocked|blacklisted|banned)",
            r"sender is on user's blacklist",
            r"\bsender denied\b",
            r"address .{0,40} is not allowed to send",
        ),
    ),
    (
        "failedstarttls",
        _rx(
            r"starttls",
            r"\btls (?:is )?(?:required|needed|mandatory|negotiation|handshake)",
            r"(?:must|should) (?:use|issue) .{0,10}tls",
            r"encryption (?:is )?(?:required|needed)",
            r"requiretls",
        ),
    ),
    (
        "norelaying",
        _rx(
            r"relay(?:ing)? (?:access )?(?:denied|not (?:allowed|permitted)|prohibited|refused)",
            r"(?:unable|not allowed|not permitted|cannot) (?:to )?relay",
            r"(?:we|i) do not relay",
            r"no relay(?:ing)?\b",
            r"relay(?:ing)? (?:is )?(?:not|denied)",
            r"not (?:a )?(?:gateway|local domain)",
            r"\brelaying\b",
        ),
    ),
    (
        "notcompliantrfc",
        _rx(
            # Message-format RFCs only: "see RFC 2821" is about the SMTP dialogue (HELO).
            r"rfc ?(?:5322|2822|822)\b",
            r"not (?:rfc|standards?)[- ]?compliant",
            r"(?:multiple|duplicate|more than one) (?:from|to|subject|date|message-id|sender)"
            r"(?: header)?",
            r"header (?:is )?(?:missing|required)",
            r"missing (?:the |a )?(?:mandatory |required |valid )*[\w-]+ header",
            r"(?:duplicate|multiple|repeated) [\w-]+ header",
            r"missing (?:required )?(?:header|date|from|message-id)",
            r"missing (?:a )?(?:valid )?(?:required )?(?:message-id|date|from|header)",
            r"bare (?:lf|line ?feed|cr)",
        ),
    ),
    # An explicit policy violation outranks the spam words a policy reply often carries.
    (
        "policyviolation",
        _rx(
            r"polic(?:y|ies) violation",
            r"violat(?:es|ed|ion of|ing) .{0,40}polic",
            r"rejected by (?:local |content |site )?policy",
            r"acceptable use policy",
        ),
    ),
    (
        "spamdetected",
        _rx(
            r"\bspam\b",
            r"\bspam(?:my|ish|assassin|score)?\b",
            r"\bjunk ?mail\b",
            r"\bunsolicited\b",
            r"\buce\b",
            r"bulk (?:e-?mail|mail|message)",
            r"message (?:looks|seems|considered) (?:like |as )?(?:spam|suspicious)",
            r"identified as (?:spam|junk|suspicious)",
            r"classified as (?:spam|junk|bulk)",
            r"suspicious (?:message|content|email|url|link)",
            r"content (?:filter|scan(?:ner)?) .{0,20}(?:rejected|refused|blocked)",
            r"message (?:rejected|refused|blocked) (?:by|due to) (?:content|filter)",
            r"high (?:probability|score)",
            r"phish",
        ),
    ),
    (
        "policyviolation",
        _rx(
            r"polic(?:y|ies) (?:violation|reason|restriction)",
            r"violat(?:es|ed|ion of|ing) .{0,40}polic",
            r"(?:local|site|security|content|acceptable use|usage) policy",
            r"content restriction",
            r"prohibited (?:by|due to|attachment|content|file)",
            r"(?:attachment|file (?:type|extension)|extension) .{0,50}"
            r"(?:not allowed|forbidden|prohibited|blocked|banned|rejected)",
            r"(?:forbidden|prohibited|banned|blocked|dangerous) (?:attachment|file|extension)",
        ),
    ),
    (
        "mesgtoobig",
        _rx(
            r"(?:message|mail|email|e-mail)(?: file)?(?: size)? (?:is |was )?"
            r"(?:too (?:big|large|long)|size (?:exceeds|limit))",
            r"(?:message|mail|email|e-mail)(?: file)? (?:size )?exceeds .{0,40}"
            r"(?:size|limit|maximum)",
            r"exceed(?:s|ed)? (?:the )?(?:fixed |maximum |max )?(?:allowed )?"
            r"(?:incoming |inbound )?(?:message|mail) size",
            r"maximum .{0,25}(?:message|mail) size",
            r"(?:message|mail) size .{0,25}(?:exceed|limit|too)",
            r"size (?:of (?:the |this |your )?(?:message|mail) )exceeds",
            r"message length exceeds",
            r"too (?:big|large) (?:message|for (?:this|the) (?:system|server))",
            r"message (?:is )?larger than",
        ),
    ),
    (
        "mailboxfull",
        _rx(
            r"(?:mail ?box|mailfolder|inbox|account|maildir|mail ?drop|storage|folder)"
            r"(?: is| has)? (?:full|over ?quota|quota exceeded|exceeded)",
            r"\bover ?quota\b",
            r"(?:reached|exceeded|over|exceeds) (?:the |its |their |his |her )?"
            r"(?:disk |mailbox |storage |diskspace |disk space )?quota",
            r"(?<!sending )(?<!daily )(?<!hourly )(?<!rate )(?<!message )\bquota\b",
            r"quota (?:exceeded|exceed|full|violation|limit)",
            r"exceed(?:s|ed|ing)? .{0,30}quota",
            r"(?:mailbox|mail box|storage) (?:size )?(?:limit|allocation) (?:exceeded|reached)",
            r"exceeded storage allocation",
            r"(?:user|recipient|mailbox)(?:'s)? .{0,20}(?:is )?(?:full|over (?:the )?quota)",
            r"insufficient (?:space|storage) .{0,20}(?:mailbox|user|account)",
            r"not enough (?:storage|space) .{0,20}(?:mailbox|user|account)",
            r"too much mail data",
            r"exceeded (?:their|his|her|its|the) (?:mailbox|storage|mail) ?(?:limit|size|quota)",
            r"mailbox (?:size )?limit",
            r"would exceed .{0,20}(?:mailbox|quota|storage)",
            r"mailbox .{0,20}(?:exceeded|exceeds) .{0,20}(?:size|limit)",
            r"(?:no|not enough|insufficient|out of) (?:storage |disk |free )?(?:space|storage)\b"
            r".{0,40}(?:mailbox|inbox|user|account|recipient)",
            r"(?:mailbox|inbox)\b.{0,40}(?:full|exceeded|over ?quota|allotted space|size limit"
            r"|storage limit|out of (?:storage|space)|saturated)",
            r"(?:reached|exceeded|over) (?:its|the|their|his|her) (?:size|storage) "
            r"(?:limit|allocation)",
            r"storage allocation exceeded",
            r"ящик.{0,30}(?:полон|переполнен)",
            r"(?:邮箱|信箱).{0,6}(?:已满|满了|空间不足|容量不足)",
            r"メールボックス.{0,10}(?:いっぱい|容量|満杯)|容量を超え|容量オーバー",
            r"casilla.{0,40}llena",
            r"(?:bo[iî]te|messagerie).{0,40}satur[ée]e?",
            r"postfach (?:ist )?voll",
            r"bo[iî]te (?:aux lettres|de r[ée]ception|mail).{0,40}pleine",
            r"buz[oó]n.{0,40}(?:lleno|excede)",
            r"casella.{0,40}piena",
            r"caixa (?:postal|de correio).{0,40}(?:lotada|cheia)",
            r"(?:postfach|mailbox).{0,30}(?:voll|[üu]berschritten)",
            r"容量.{0,10}(?:超過|オーバー|超え)|(?:メールボックス|メールボックス).{0,10}(?:いっぱい|満杯)",
            r"speicherplatz.{0,30}(?:voll|[üu]berschritten)",
            r"mailbox (?:is )?vol\b",
        ),
    ),
    (
        "suspend",
        _rx(
            r"(?:account|mailbox|user|address|recipient)(?: has been| is| was)? "
            r"(?:disabled|suspended|deactivated|inactive|locked|frozen|blocked by (?:the )?admin)",
            r"(?:disabled|suspended|deactivated|inactive|expired|closed|locked) "
            r"(?:e-?mail |mail ?box |user )?(?:account|mailbox|user)",
            r"account (?:has )?expired",
            r"is not (?:an )?active",
            r"(?:account|mailbox|address) .{0,40}(?:is|has been|was) "
            r"(?:disabled|suspended|deactivated|inactive)",
            r"(?:postfach|konto|benutzerkonto) .{0,20}(?:deaktiviert|gesperrt|stillgelegt)",
            r"(?:compte|bo[iî]te) .{0,20}(?:d[ée]sactiv[ée]e?|suspendu)",
            r"(?:cuenta|buz[oó]n) .{0,20}(?:desactivad[ao]|suspendid[ao]|inactiv[ao])",
            r"no longer (?:active|in use|available)",
            r"(?:account|mailbox|user|address) .{0,20}temporarily "
            r"(?:disabled|deactivated|suspended)",
        ),
    ),
    (
        "hasmoved",
        _rx(
            r"(?:user|recipient|address|mailbox) (?:has )?moved",
            r"has moved (?:to|on)",
            r"(?:changed|new) (?:e-?mail )?address (?:is|to)",
            r"mailbox owner has changed",
        ),
    ),
    (
        "hostunknown",
        _rx(
            r"host (?:or domain name )?(?:unknown|not found)",
            r"unknown (?:host|domain|mail domain)",
            r"(?:domain|host)(?: name)? (?:does not|doesn't|did not) exist",
            r"(?:domain|host)(?: name)? (?:not found|lookup failed|is unknown|unknown)",
            r"no such (?:domain|host)",
            r"name service error",
            r"unrout(?:e)?able (?:mail )?domain",
            r"\bdomain\b(?! part)[^,;.]{0,60}(?:does not|doesn't|did not) exist",
            r"domain .{0,60}(?:could not|couldn't|cannot) be found",
            r"domaine .{0,60}(?:n'existe pas|inexistant|introuvable)",
            r"dominio .{0,60}(?:no existe|inexistente)|dom[íi]nio .{0,60}n[ãa]o existe",
            r"domain .{0,60}existiert nicht|домен .{0,40}не существует",
            r"no (?:valid )?mx (?:record|host|or a)",
            r"mx .{0,30}(?:non-?existent|does not exist|not found)",
            r"(?:invalid|bad|unknown) (?:recipient )?domain",
            r"domain .{0,30}(?:is not|isn't|not) (?:valid|registered|configured|hosted)",
            r"nxdomain",
            r"dns (?:error|failure|lookup failed).{0,40}(?:domain|host)",
            r"no route to (?:the )?(?:domain|destination)",
            r"(?:could not|couldn't|unable to|cannot) (?:be )?(?:resolve|find|found).{0,30}"
            r"(?:domain|mail exchanger|mx)",
            r"recipient domain .{0,20}(?:not|no)",
            r"(?:could not|couldn't|can't|cannot) find any host",
            r"no (?:such|valid) (?:host|domain|mx)",
            r"no mail hosts? for (?:the )?domain",
            r"unable to route\b",
        ),
    ),
    (
        "userunknown",
        _rx(
            r"(?:user|recipient|addressee|mailbox|account|address|local[ -]part)"
            r"(?: name)? (?:unknown|not found|not exist|does not exist|doesn't exist|"
            r"not known|not listed|invalid|is unknown|not valid|unavailable|"
            r"rejected: (?:user|unknown|undeliverable|no such)|nonexistent|non-existent)",
            r"unknown (?:or illegal )?(?:user|recipient|addressee|mailbox|account|"
            r"e-?mail address|address|local[ -]?part|alias)",
            r"no such (?:user|recipient|mailbox|account|address|person|local user|e-?mail)",
            r"(?:invalid|bad|unknown|illegal|inexistent|nonexistent|non-existent) "
            r"(?:recipient|mailbox|user|address(?:ee)?|account|e-?mail address|destination)",
            r"no mailbox (?:here )?(?:by that name|for)",
            r"(?:does not|doesn't) have (?:a|an) .{0,40}account",
            r"(?:mailbox|address|account|recipient|user) (?:does not|doesn't|did not) exist",
            r"not (?:a )?(?:valid|known|existing) (?:user|recipient|mailbox|address|account)",
            r"(?:user|recipient|address) .{0,50}(?:not listed|not found) in",
            r"in (?:local|virtual|relay) (?:recipient|mailbox|alias) table",
            r"recipient ?not ?found",
            r"\bexrecipnotfound\b",
            r"address (?:not found|unknown|lookup failed|rejected)",
            r"couldn't be found",
            r"(?:account|address|mailbox) (?:that )?you tried to reach does not exist",
            r"(?:email|e-mail) address .{0,40}(?:doesn't|does not|couldn't|could not|wasn't)"
            r" (?:exist|be found)",
            r"(?:mailbox|user) unavailable",
            r"undeliverable address",
            r"(?:is not|isn't) a (?:known|valid) (?:user|recipient|mailbox)",
            r"\bunrout(?:e)?able address",
            r"no mailbox by that name",
            r"(?:адресат|пользовател[ья]|получател[ья]) .{0,20}(?:не существует|не найден|нет)",
            r"такого (?:пользователя|адресата|ящика) нет",
            r"destinat[aá]rio (?:inv[aá]lido|inexistente)",
            r"endere[çc]o .{0,40}n[ãa]o (?:existe|encontrado|foi encontrado)",
            r"dirección .{0,60}no (?:existe|está registrada)",
            r"indirizzo .{0,60}(?:inesistente|non esiste)",
            r"ist hier nicht bekannt|nicht bekannt",
            r"n'est pas attribu[ée]e",
            r"用户不存在|帐号不存在|账号不存在|收件人不存在|ユーザーが存在しません|アドレスは存在しません",
            r"addressee unknown",
            r"unbekannt(?:er)? (?:empf[aä]nger|benutzer|user)",
            r"(?:empf[aä]nger|benutzer|adresse).{0,30}(?:unbekannt|existiert nicht)",
            r"(?:utilisateur|destinataire|adresse) (?:inconnu|introuvable|inexistant|non)",
            r"(?:usuario|destinatario) (?:desconocido|inexistente|no existe)",
            r"(?:utente|destinatario) (?:sconosciuto|inesistente)",
            r"(?:usu[aá]rio|destinat[aá]rio) (?:desconhecido|inexistente)",
            r"onbekende (?:gebruiker|ontvanger)",
            r"not (?:our|a local) (?:customer|user)",
            r"mailbox (?:name )?not allowed",
            r"no longer accepts mail",
            r"invalid (?:final )?(?:delivery )?user ?id",
            r"adresse.{0,60}nicht gefunden|nicht gefunden.{0,30}(?:empf[aä]nger|adresse)",
            r"\bintrouvable\b|n'existe pas|inexistante?\b|no existe\b|non esiste",
            r"n[ãa]o existe|bestaat niet",
            r"宛先不明|存在しない|存在しません|見つかりません|ユーザー?が(?:い|見つかり)ません",
        ),
    ),
    (
        "filtered",
        _rx(
            r"(?:rejected|refused|blocked|denied|filtered) by (?:the )?"
            r"(?:recipient|user|addressee)",
            r"recipient(?:'s)? .{0,30}(?:setting|filter|preference|refuses|rejects)",
            r"user (?:refuses|reject|rejects|refused)",
            r"(?:message|mail) (?:was )?filtered",
            r"due to (?:the )?(?:recipient|user)'?s? (?:setting|filter|preference)",
            r"not (?:accepting|receiving) (?:mail|messages|e-?mail) from",
        ),
    ),
    (
        "systemfull",
        _rx(
            r"insufficient (?:system )?(?:storage|disk|space)",
            r"(?:disk|file ?system|spool|queue|system)(?: directory)? (?:is )?full",
            r"no space left",
            r"out of (?:disk|storage|space)",
            r"(?:server|system|disk) storage",
            r"storage (?:is )?exhausted|disk space",
            r"(?:server|file system|disk) .{0,20}out of space",
        ),
    ),
    (
        "speeding",
        _rx(
            r"receiving mail at a rate",
            r"(?:sending|sent) (?:too (?:fast|quickly|many))",
            r"too many (?:messages|mails|emails)",
            r"unusual rate",
        ),
    ),
    (
        "ratelimited",
        _rx(
            r"too many (?:connections|concurrent|simultaneous|sessions|smtp sessions)",
            r"connection (?:rate )?limit",
            r"rate ?limit(?:ed|ing)?",
            r"(?:rate|frequency) (?:exceeded|too high)",
            r"throttl",
            r"(?:too many|excessive) (?:recipients|rcpt)",
            r"try (?:again )?later.{0,20}(?:rate|limit)",
            r"maximum (?:number of )?connections",
            r"(?:unexpected|excessive|unusual|high) volume",
        ),
    ),
    (
        "expired",
        _rx(
            r"(?:delivery|retry) time(?:out)? (?:has )?(?:expired|exceeded|reached)",
            r"retry timeout exceeded",
            r"(?:gave|giving|given) up after|[-;] giving up\b",
            r"(?:retry|retries|queue) (?:period|time|lifetime) (?:exceeded|expired|reached)",
            r"not (?:deliverable|delivered) within \d",
            r"failing for a long time|long failure period|retry time not reached",
            r"after (?:multiple|several|many|repeated) (?:retries|attempts|failures)",
            r"(?:message|mail) (?:has )?(?:expired|timed out)",
            r"(?:queue|queued|in queue) (?:for )?too long",
            r"(?:could not|couldn't|was not|wasn't|has not been|cannot) (?:be )?delivered "
            r"(?:with)?in \d",
            r"undeliver(?:able|ed) (?:for|after) (?:more than )?\d",
            r"(?:after|for|over) (?:more than )?\d+ (?:hours|days|seconds|minutes)",
            r"time(?:d)? ?out .{0,30}(?:deliver|queue)",
            r"maximum (?:time|delivery time|retry)",
            r"\bexpired\b",
        ),
    ),
    # Routing problems are networkerror whether or not the message was retried.
    (
        "networkerror",
        _rx(
            r"routing loop",
            r"too many hops",
            r"hop count exceeded",
            r"mail (?:forwarding )?loop",
            r"\blooping\b",
            r"loops back to myself",
            r"too many \"?received\"? headers",
        ),
    ),
    # Could not reach the server. Returned after retries this is Sisimai's expired (the
    # delivery time ran out because of a connection failure); otherwise networkerror.
    (
        CONNECTION,
        _rx(
            r"connection (?:timed out|timeout|refused|reset|closed|lost|dropped|died)",
            r"delivery temporarily suspended",
            r"(?:lost|dropped|broken) connection",
            r"no route to host",
            r"network (?:is )?unreachable",
            r"host (?:is )?unreachable",
            r"(?:conversation|connect(?:ion)?) .{0,40}timed out",
            r"timed out while",
            r"could not connect",
            r"unable to connect",
            r"no answer from",
        ),
    ),
    (
        "mailererror",
        _rx(
            r"mailer error",
            r"x-unix",
            r"command (?:died|failed|output)",
            r"exit (?:status|code) \d",
            r"procmail",
            r"pipe to \|",
            r"\bdelivery to (?:a )?(?:program|pipe|file)",
            r"mailbox command failed",
            r"unknown mailer",
        ),
    ),
    (
        "securityerror",
        _rx(
            r"authentication (?:required|failed|failure|is required)",
            r"(?:not|un)authori[sz]ed",
            r"must (?:authenticate|be authenticated)",
            r"\bnot authenticated\b",
            r"auth(?:entication)? (?:needed|credentials)",
            r"security (?:check|violation|error|failure)",
            r"certificate",
        ),
    ),
    (
        "syntaxerror",
        _rx(
            r"syntax error",
            r"command (?:unrecognized|not recognized|not implemented)",
            r"bad sequence of commands",
            r"(?:line|command) too long",
            r"invalid (?:command|parameter|argument)",
            r"protocol (?:error|violation)",
        ),
    ),
    (
        "contenterror",
        _rx(
            r"(?:invalid|malformed|bad|broken|illegal) (?:mime|header|content|message|encoding|"
            r"character|structure|8bit|format)",
            r"(?:header|content|mime) (?:error|invalid|malformed|syntax)",
            r"8-?bit (?:data|characters?|content) .{0,20}not",
            r"smtputf8",
            r"message (?:content|body) (?:rejected|not accepted)",
        ),
    ),
    (
        "systemerror",
        _rx(
            r"system (?:error|failure|problem)",
            r"internal (?:server )?error",
            r"local error",
            r"server (?:error|failure)",
            r"internal (?:\w+ )?error",
            r"(?:configuration|config) (?:error|problem)",
            r"\bi/o error\b",
            r"mail transport unavailable",
        ),
    ),
    (
        "notaccept",
        _rx(
            r"(?:does not|doesn't|will not|won't|do not) accept (?:any )?(?:e-?mail|mail|messages)",
            r"not accepting (?:any )?(?:e-?mail|mail|messages)",
            r"null mx",
            r"no mail (?:is )?accepted",
            r"accepts no mail",
        ),
    ),
    # "Try again later" names no cause: a deferral, which returned means expired.
    (
        TEMPORARY,
        _rx(
            r"temporar(?:y|ily) (?:failure|unavailable|error|problem|deferred|rejected|local)",
            r"resources? (?:temporarily )?unavailable",
            r"(?:service|system) (?:is )?(?:currently )?(?:not )?(?:available|unavailable)",
            r"(?:please )?try (?:again )?later",
            r"(?:server|system) (?:is )?(?:too )?busy",
            r"closing (?:transmission )?channel",
        ),
    ),
)

# Broad words that only tilt the decision when nothing better is known.
_WEAK_TEXT: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("blocked", _rx(r"\bblocked\b", r"\bbanned\b", r"\bblacklist")),
    ("securityerror", _rx(r"access denied", r"\bnot authorized\b", r"permission denied")),
    ("userunknown", _rx(r"\bdoes not exist\b", r"\bnot exist\b", r"\binvalid\b.{0,20}@")),
    ("rejected", _rx(r"\brejected\b", r"\brefused\b", r"\bdenied\b")),
)


# Boilerplate around a reply that names hosts and commands, not causes.
_NOISE_RE: Final = re.compile(
    r"(?:remote )?host \S+(?: \[[^\]]*\]|\[[^\]]*\])? (?:said:|refused to talk to me:)"
    r"|but (?:sender|my name) was rejected|does not like recipient|greeting failed"
    r"|failed after i sent the message|smtp error from remote mail server after [^:\n]{0,80}:"
    r"|\[(?:rcpt_to|mail_from|body|data)\]"
    r"|\((?:in reply to|after) [^)]{0,60}\)"
    r"|(?:while talking to|connected to) \S+"
    r"|\b(?:remote|reporting|generating)[- ]mta\b[^\n]*",
    re.IGNORECASE,
)


def clean_diagnostic(text: str) -> str:
    """Drop host names and command echoes so they cannot pass for causes."""
    return _NOISE_RE.sub(" ", text)


def text_reason(text: str, *, strong_only: bool = False) -> tuple[str | None, bool]:
    """Reason named by reply or bounce text, and whether the evidence is strong."""
    if not text:
        return None, False
    text = clean_diagnostic(text[:8000]).lower()
    for reason, pattern in _STRONG_TEXT:
        if pattern.search(text):
            return reason, True
    if strong_only:
        return None, False
    for reason, pattern in _WEAK_TEXT:
        if pattern.search(text):
            return reason, False
    return None, False
