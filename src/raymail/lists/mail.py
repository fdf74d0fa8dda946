"""Single messages of the list service (subscribe and unsubscribe confirmations).

They go through the campaign's own delivery path: MX resolution with the spec's
``mx_override`` and nameservers, and raymail's SMTP client with the spec's ``smtp``
settings (EHLO name, STARTTLS, timeouts), so a test sink or a real MX sees them exactly as
it sees campaign mail. The VERP return path is the campaign's, so bounces of
confirmations reach the returns server too.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from raymail.compose.verp import TokenKind, TokenSigner
from raymail.delivery.envelope import helo_name
from raymail.delivery.mx import MXResolver
from raymail.delivery.smtp_client import SmtpConnection
from raymail.errors import DeliveryError, RaymailError, TemplateError
from raymail.hostport import split_host_port
from raymail.spec import CampaignSpec

__all__ = ["ListMailer"]

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def render_text(source: str, context: Mapping[str, str], what: str) -> str:
    """A list message's subject or text; a bad template is one clear TemplateError."""
    try:
        return _ENV.from_string(source).render(context)
    except Exception as exc:
        raise TemplateError(f"{what}: {type(exc).__name__}: {exc}") from None


class ListMailer:
    """Sends one message at a time; built once per applier from the campaign spec."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.spec = spec
        nameservers = [split_host_port(ns) for ns in spec.nameservers] or None
        self._resolver = MXResolver(
            nameservers=nameservers, overrides=spec.mx_override, port=spec.smtp.port
        )
        self._signer = TokenSigner(spec.campaign, spec.verp_secret)

    def build(self, to: str, subject: str, text: str) -> bytes:
        message = EmailMessage()
        message["From"] = self.spec.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = make_msgid(domain=self.spec.sender_domain)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
        message.set_content(text)
        return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))

    async def send(self, to: str, subject: str, text: str) -> str:
        """Deliver to the first mail exchanger that accepts; the final reply's text.

        Raises DeliveryError (MX lookup failed, every exchanger refused or was unreachable).
        """
        domain = to.rpartition("@")[2]
        mail_from = (
            f"bounces+{self._signer.token(TokenKind.BOUNCE, None)}@{self.spec.bounce_domain}"
        )
        data = self.build(to, subject, text)
        smtp = self.spec.smtp
        errors: list[str] = []
        try:
            targets = await self._resolver.resolve(domain)
        except RaymailError as exc:
            raise DeliveryError(f"{to}: {exc}") from None
        for target in targets:
            try:
                conn = await SmtpConnection.open(
                    target.address,
                    target.port,
                    helo_name=helo_name(self.spec, None),
                    starttls=smtp.starttls,
                    verify_certificates=smtp.verify_certificates,
                    connect_timeout=smtp.connect_timeout_s,
                    command_timeout=smtp.command_timeout_s,
                    data_timeout=smtp.data_timeout_s,
                )
            except (RaymailError, OSError) as exc:
                errors.append(f"{target.mx_host}: {exc}")
                continue
            try:
                tx = await conn.send(mail_from, [to], data)
                await conn.quit()
            except (RaymailError, OSError) as exc:
                conn.close()
                errors.append(f"{target.mx_host}: {exc}")
                continue
            final = tx.data if tx.data is not None else (tx.rcpts[0] if tx.rcpts else tx.mail)
            if final.code == 250:
                return f"{final.code} {final.text}"
            errors.append(f"{target.mx_host}: {final.code} {final.text}")
            if final.klass == 5:
                break
        raise DeliveryError(f"{to}: not delivered ({'; '.join(errors) or 'no exchanger'})")
