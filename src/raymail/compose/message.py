"""Mail merge and MIME: one campaign's templates, compiled once, rendered per recipient.

A delivery server (B server) builds one :class:`MessageTemplate` from the campaign spec and
renders every recipient of every portion with it. Everything that does not depend on the
recipient (the address headers, the encoded subject and bodies of templates without
variables, the List-Unsubscribe prefix, the campaign tag) is computed in ``__init__``; per
message there are only the template renders, three keyed hashes, a few joins and the body
encoding, then the DKIM signatures of the spec's ``dkim`` keys (:mod:`raymail.compose.dkim`)
over the final bytes: per message, or once per shared transaction.

Templates are jinja2 in a sandbox with strict undefined variables: a missing merge field or
a blocked attribute fails that one recipient with :class:`TemplateError`, never the run.
The context of a render holds the recipient's fields plus ``email`` and ``unsubscribe_url``
(the https one-click URL when the spec has one, else the mailto URL); ``campaign`` is a
global.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from email import policy
from email.headerregistry import Address
from email.utils import unquote
from typing import Any, Final

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape

from raymail.compose.attachments import Attachments
from raymail.compose.dkim import DkimSigner
from raymail.compose.links import HtmlTracker
from raymail.compose.mime import DateHeader, clean_header_text, encode_body, encode_subject, to_crlf
from raymail.compose.smime import SmimeProtector
from raymail.compose.verp import TokenKind, TokenSigner
from raymail.errors import TemplateError
from raymail.intake.address import MAX_LOCAL, check_address
from raymail.spec import CampaignSpec, sender_address

__all__ = ["CAMPAIGN_HEADER", "MessageTemplate"]

CAMPAIGN_HEADER: Final = "X-Raymail-Campaign"
SHARED_TO: Final = "undisclosed-recipients:;"
BOUNCE_LOCAL: Final = "bounces"
PROVIDED: Final = frozenset({"email", "unsubscribe_url"})  # set by render, not the table
# An address in a header or envelope must be plain ASCII with no way to break the line.
_UNSAFE_ADDRESS: Final = re.compile(r"[^!-~]|[<>(),;:\\\"\[\]]")


class _Part:
    """One compiled template; rendered once up front when it uses no variables."""

    __slots__ = ("_escape", "_globals", "_pieces", "name", "static", "template", "variables")

    def __init__(self, env: SandboxedEnvironment, name: str, source: str) -> None:
        self.name = name
        try:
            parsed = env.parse(source)
            self.variables = frozenset(meta.find_undeclared_variables(parsed) - set(env.globals))
            self.template = env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{name} template, line {exc.lineno}: {exc.message}") from None
        self._pieces = _plain_pieces(parsed)
        self._globals = dict(env.globals)
        self._escape = bool(env.autoescape)
        self.static: str | None = None
        if not self.variables:  # the same for everyone: render (and fail) once, now
            self.static = self.render({}, None)

    def render(self, context: Mapping[str, Any], email: str | None) -> str:
        if self.static is not None:
            return self.static
        if self._pieces is not None:
            return self._render_plain(self._pieces, context, email)
        try:
            return self.template.render(context)
        except UndefinedError as exc:
            missing = sorted(self.variables - context.keys())
            what = f"merge field {missing[0]!r} is missing" if missing else str(exc)
            raise TemplateError(f"{self._where(email)}: {what}") from None
        except SecurityError as exc:
            raise TemplateError(f"{self._where(email)}: blocked by the sandbox: {exc}") from None
        except Exception as exc:  # any failure inside a user's template fails one recipient
            raise TemplateError(f"{self._where(email)}: {type(exc).__name__}: {exc}") from None

    def _where(self, email: str | None) -> str:
        return f"{self.name} template" + ("" if email is None else f", recipient {email}")

    def _render_plain(
        self, pieces: list[str | _Name], context: Mapping[str, Any], email: str | None
    ) -> str:
        """A template of only text and ``{{ name }}`` outputs, without jinja's per-render
        context and generator (about half of a render's cost): the same text, values
        finalised and (for HTML) escaped as jinja's compiled code does."""
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            key = piece.name
            value = context.get(key, _MISSING)
            if value is _MISSING:
                value = self._globals.get(key, _MISSING)
                if value is _MISSING:
                    what = f"merge field {key!r} is missing"
                    raise TemplateError(f"{self._where(email)}: {what}")
            value = _crlf_value(value)
            out.append(escape(value) if self._escape else str(value))
        return "".join(out)


class _Name:
    """A ``{{ name }}`` output of a plain template (see ``_plain_pieces``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_MISSING: Final = object()


def _plain_pieces(parsed: nodes.Template) -> list[str | _Name] | None:
    """The text and variable names of a template made only of text and ``{{ name }}``
    outputs (no filters, tags or expressions), else None: jinja renders the others."""
    pieces: list[str | _Name] = []
    for node in parsed.body:
        if not isinstance(node, nodes.Output):
            return None
        for item in node.nodes:
            if isinstance(item, nodes.TemplateData):
                pieces.append(item.data)
            elif isinstance(item, nodes.Name) and item.ctx == "load":
                pieces.append(_Name(item.name))
            else:
                return None
    return pieces


class MessageTemplate:
    """A campaign's message, ready to render for any recipient (build one per server)."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.campaign = spec.campaign
        self._signer = TokenSigner(spec.campaign, spec.verp_secret)
        self._date = DateHeader()

        text_env = _environment(spec.campaign, autoescape=False)
        html_env = _environment(spec.campaign, autoescape=True)
        self._subject = _Part(text_env, "subject", spec.subject)
        self._text = _Part(text_env, "text", spec.text)
        self._html = None if spec.html is None else _Part(html_env, "html", spec.html)
        parts = [p for p in (self._subject, self._text, self._html) if p is not None]
        self.merge_fields: frozenset[str] = frozenset().union(*(p.variables for p in parts))
        # Attachments and S/MIME (seed 001) wrap the body entity, in that order, before DKIM.
        tag = self._signer.campaign_tag
        self._attachments = Attachments.for_spec(spec, f"=_rm_{tag}_mix")
        self._smime = SmimeProtector.for_spec(spec, f"=_rm_{tag}")
        row_columns = (
            self._attachments.column if self._attachments else None,
            self._smime.column if self._smime else None,
        )
        self.merge_fields |= {c for c in row_columns if c}
        self.uses_merge_fields: bool = bool(self.merge_fields)

        sender = _ascii_address(sender_address(spec.sender), "sender")
        self._sender_domain = sender.rpartition("@")[2]
        bounce = _ascii_address(f"{BOUNCE_LOCAL}@{spec.bounce_domain}", "return_domain")
        self._bounce_domain = bounce.rpartition("@")[2]
        unsub_local, unsub_domain = self._unsubscribe_mailbox(spec)
        self._unsub_mailto = (f"mailto:{unsub_local}+", f"@{unsub_domain}")
        self._unsub_url = _url_template(spec.one_click_url)
        tracker = HtmlTracker(spec, self._signer) if spec.web and self._html else None
        self._tracker = tracker if tracker is not None and tracker.active else None
        self._boundary = f"=_rm_{self._signer.campaign_tag}_alt"

        static = [_address_header("From", spec.sender, sender)]
        if spec.reply_to:
            reply = _ascii_address(sender_address(spec.reply_to), "reply_to")
            static.append(_address_header("Reply-To", spec.reply_to, reply))
        static += ["MIME-Version: 1.0\r\n", f"{CAMPAIGN_HEADER}: {spec.campaign}\r\n"]
        self._static_headers = "".join(static)
        # RFC 8058: one-click only with an https URL, which names the recipient.
        one_click = spec.one_click_url is not None and spec.one_click_url.startswith("https:")
        self._one_click = (
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" if one_click else ""
        )
        self._subject_line = (
            None if self._subject.static is None else self._subject_header(self._subject.static)
        )
        self._static_body = None
        static_html = self._html is None or (self._html.static is not None and not self._tracker)
        own_files = self._attachments is not None and self._attachments.per_recipient
        if self._text.static is not None and static_html and not own_files:
            self._static_body = self._body({})
        self._shared_prefix: bytes | None = None
        if not self.uses_merge_fields and self._tracker is None:
            self._shared_prefix = self._shared_headers()
        # Signing is the last step: it covers the final headers and body.
        self._dkim = DkimSigner(spec.dkim) if spec.dkim else None

    # --- per recipient ----------------------------------------------------------------------

    def render(self, email: str, fields: Mapping[str, str]) -> bytes:
        """The complete message for one recipient: CRLF lines, not dot-stuffed.

        Raises :class:`TemplateError` naming the recipient (and the missing field) when this
        recipient cannot get a message; the caller fails that recipient only.
        """
        _check_recipient(email)
        token = self._signer.token(TokenKind.UNSUBSCRIBE, email)
        mailto = token.join(self._unsub_mailto)
        url = mailto if self._unsub_url is None else token.join(self._unsub_url)
        context = {**fields, "email": email, "unsubscribe_url": url}
        subject = self._subject_line
        if subject is None:
            subject = self._subject_header(self._subject.render(context, email))
        body = self._static_body or self._body(context, email)
        if self._smime is not None:  # the entity, signed and/or encrypted, before any DKIM
            body = self._smime.protect(body, email, fields)
        unsubscribe = f"<{mailto}>" if self._unsub_url is None else f"<{mailto}>,\r\n <{url}>"
        head = (
            f"Date: {self._date()}\r\n{self._static_headers}To: {email}\r\n{subject}"
            f"Message-ID: {self.message_id(email)}\r\nList-Unsubscribe: {unsubscribe}\r\n"
            f"{self._one_click}"
        )
        message = head.encode("ascii") + body
        return message if self._dkim is None else self._dkim.sign(message)

    def message_id(self, email: str) -> str:
        """``<rcpt-tag.campaign-tag@sender-domain>``: the same for a recipient, always."""
        tag = self._signer.recipient_tag(email).hex()
        return f"<{tag}.{self._signer.campaign_tag}@{self._sender_domain}>"

    def envelope_sender(self, email: str | None) -> str:
        """The VERP return path; campaign-only for a shared transaction (``email`` None)."""
        if email is not None:
            _check_recipient(email)
        token = self._signer.token(TokenKind.BOUNCE, email)
        return f"{BOUNCE_LOCAL}+{token}@{self._bounce_domain}"

    def unsubscribe_token(self, email: str | None) -> str:
        """The token in this recipient's List-Unsubscribe mailto and one-click URL."""
        return self._signer.token(TokenKind.UNSUBSCRIBE, email)

    # --- shared content ---------------------------------------------------------------------

    def render_shared(self, recipients: Sequence[str]) -> bytes:
        """One message for many RCPT TO of one transaction (templates use no variables).

        The To header is ``undisclosed-recipients:;``; List-Unsubscribe carries only a
        campaign-only mailto, since no URL can name one recipient of many.
        """
        if self._shared_prefix is None:
            why = (
                "open/click tracking is on"
                if self._tracker is not None
                else f"the templates use merge fields ({', '.join(sorted(self.merge_fields))})"
            )
            raise TemplateError(f"campaign {self.campaign}: {why}; messages cannot be shared")
        head = f"Date: {self._date()}\r\nMessage-ID: {self.shared_message_id(recipients)}\r\n"
        message = head.encode("ascii") + self._shared_prefix
        return message if self._dkim is None else self._dkim.sign(message)

    def shared_message_id(self, recipients: Sequence[str]) -> str:
        """Deterministic per campaign and the transaction's (sorted) recipient list."""
        data = "\n".join(sorted(r.lower() for r in recipients)).encode("utf-8")
        tag = self._signer.digest(b"raymail-shared", data, 12).hex()
        return f"<s{tag}.{self._signer.campaign_tag}@{self._sender_domain}>"

    @property
    def shareable(self) -> bool:
        """True when one message can serve many recipients without losing anything.

        Not so when a one-click unsubscribe URL is configured: the URL must name the
        recipient (RFC 8058), so each recipient needs its own message; nor with open or
        click tracking, whose links name the recipient too.
        """
        return self._shared_prefix is not None and self._unsub_url is None and self._smime is None

    # --- building blocks --------------------------------------------------------------------

    def _subject_header(self, rendered: str) -> str:
        return f"Subject: {encode_subject(clean_header_text(rendered))}\r\n"

    def _body(self, context: Mapping[str, Any], email: str | None = None) -> bytes:
        """Content headers, blank line and encoded body (single part or alternative), as
        the first part of a multipart/mixed one when there are attachments."""
        entity = self._content(context, email)
        return entity if self._attachments is None else self._attachments.wrap(entity, context)

    def _content(self, context: Mapping[str, Any], email: str | None) -> bytes:
        text = _final_crlf(self._text.render(context, email))
        if self._html is None:
            payload, cte = encode_body(text)
            head = f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte}"
            return f"{head}\r\n\r\n".encode("ascii") + payload
        html = self._html.render(context, email)
        if self._tracker is not None and email is not None:
            html = self._tracker.apply(html, email)
        html = _final_crlf(html)
        boundary = self._boundary
        text_payload, text_cte = encode_body(text, boundary)
        html_payload, html_cte = encode_body(html, boundary)
        return b"".join(
            (
                f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
                f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: {text_cte}\r\n\r\n".encode("ascii"),
                text_payload,  # ends with CRLF; the next CRLF belongs to the delimiter
                f"\r\n--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: {html_cte}\r\n\r\n".encode("ascii"),
                html_payload,
                f"\r\n--{boundary}--\r\n".encode("ascii"),
            )
        )

    def _shared_headers(self) -> bytes:
        """Everything after Date and Message-ID of a shared message, built once."""
        mailto = self._signer.token(TokenKind.UNSUBSCRIBE, None).join(self._unsub_mailto)
        subject = self._subject_line or ""
        head = f"{self._static_headers}To: {SHARED_TO}\r\n{subject}List-Unsubscribe: <{mailto}>\r\n"
        return head.encode("ascii") + (self._static_body or b"")

    def _unsubscribe_mailbox(self, spec: CampaignSpec) -> tuple[str, str]:
        address = spec.unsubscribe_mailto or f"unsubscribe@{spec.bounce_domain}"
        local, _, domain = _ascii_address(address, "unsubscribe_mailto").rpartition("@")
        if len(local) + 1 + len(self._signer.token(TokenKind.UNSUBSCRIBE, None)) > MAX_LOCAL:
            raise TemplateError(
                f"unsubscribe_mailto {address!r}: local part too long to add a +token "
                f"(at most {MAX_LOCAL} characters in all)"
            )
        return local, domain


def _environment(campaign: str, *, autoescape: bool) -> SandboxedEnvironment:
    """A sandbox whose output already has CRLF line ends.

    The templates' own text is normalised once, when compiled (``newline_sequence``); only
    inserted values are normalised per render (``finalize``), which is much cheaper than
    rewriting the whole rendered body.
    """
    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        newline_sequence="\r\n",
        finalize=_crlf_value,
    )
    env.globals["campaign"] = campaign
    return env


def _crlf_value(value: Any) -> Any:
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        return to_crlf(value)  # str methods of markupsafe.Markup keep it Markup
    return value


def _ascii_address(address: str, what: str) -> str:
    """Normalise a configured address (IDNA domain); refuse one unusable in headers."""
    checked = check_address(address)
    if checked.email is None:
        raise TemplateError(f"{what} address {address!r}: {checked.reason}")
    return checked.email


def _address_header(name: str, configured: str, address: str) -> str:
    """``Name: Display <addr>``, with the display name quoted or RFC 2047 encoded."""
    display = configured[: configured.rfind("<")].strip() if "<" in configured else ""
    value = str(Address(display_name=unquote(display), addr_spec=address))
    return str(policy.SMTP.header_factory(name, value).fold(policy=policy.SMTP))


def _url_template(url: str | None) -> tuple[str, str] | None:
    """Split the one-click URL at ``{token}``; refuse one that cannot go in a header."""
    if url is None:
        return None
    if not url.startswith(("https://", "http://")):
        raise TemplateError(f"unsubscribe_url {url!r}: must be an https:// URL")
    if url.count("{token}") != 1:
        raise TemplateError(f"unsubscribe_url {url!r}: must contain '{{token}}' exactly once")
    if not url.isascii() or re.search(r"[\s<>\"\x00-\x1f\x7f]", url):
        raise TemplateError(f"unsubscribe_url {url!r}: percent-encode spaces, quotes and <>")
    before, _, after = url.partition("{token}")
    return before, after


def _check_recipient(email: str) -> None:
    if _UNSAFE_ADDRESS.search(email) or email.count("@") != 1:
        raise TemplateError(f"recipient {email!r}: not a plain address, refused in headers")


def _final_crlf(text: str) -> str:
    return text if text.endswith("\r\n") else text + "\r\n"
