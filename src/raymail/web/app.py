"""The web service as one Ray Serve application: a FastAPI ingress and the applier.

Endpoints (the D servers of seed 002 and the tracking of seed 000):

=============================  ==========================================================
``POST /u/{token}``            RFC 8058 one-click unsubscribe (``List-Unsubscribe=One-Click``)
``GET  /u/{token}``            a page with one button (a GET never unsubscribes)
``POST /subscribe``            double opt-in request (form or JSON): a confirmation is mailed
``GET|POST /confirm/{token}``  confirms: the address joins the list
``GET  /o/{token}.gif``        open pixel
``GET  /c/{token}``            click redirect (target from the link table or the token)
``POST /events``               feedback ingest (:mod:`raymail.web.ingest`)
``GET  /healthz``              liveness
=============================  ==========================================================

A request is answered 2xx only after its change record is synced to this replica's
change-log segment (group commit, :mod:`raymail.lists.changelog`); a bad or forged token,
an oversized body or a wrong content type is refused with one clear line and nothing is
recorded. The :class:`ApplierDeployment` (one replica) applies the log in bulk every
``web.apply_interval_s``, or sooner when a replica has taken ``web.apply_batch`` changes.
"""

# No "from __future__ import annotations": FastAPI reads these annotations at run time.

import asyncio
import itertools
import logging
import secrets
import threading
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from pydantic import ValidationError
from ray import serve

from raymail.compose.verp import TokenKind
from raymail.intake.address import check_address
from raymail.lists.changelog import SegmentWriter, changes_dir
from raymail.web.bodies import BadRequest, content_type, parse_form, parse_json, read_body
from raymail.web.campaigns import CampaignBook
from raymail.web.config import WebConfig
from raymail.web.confirm import ConfirmationError, read_confirmation
from raymail.web.ingest import IngestBatch, describe_errors
from raymail.web.pages import landing_page, message_page

__all__ = ["ApplierDeployment", "WebIngress", "api"]

log = logging.getLogger(__name__)

# A 1x1 transparent GIF (GIF89a, one colour, one transparent pixel).
PIXEL: Final = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
NO_STORE: Final = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}
MAX_FIELDS: Final = 30
MAX_FIELD_CHARS: Final = 500

api = FastAPI(title="raymail web", docs_url=None, redoc_url=None, openapi_url=None)


def _refusal(exc: BadRequest, html: bool = False) -> Response:
    if html:
        page = message_page("Request refused", exc.reason)
        return HTMLResponse(page, status_code=exc.status, headers=NO_STORE)
    return PlainTextResponse(exc.reason + "\n", status_code=exc.status, headers=NO_STORE)


def _client(request: Request) -> tuple[str | None, str | None]:
    """(user agent, client address): the first X-Forwarded-For hop behind a load balancer."""
    forwarded = request.headers.get("x-forwarded-for")
    ip = forwarded.split(",", 1)[0].strip() if forwarded else None
    if not ip and request.client is not None:
        ip = request.client.host
    return request.headers.get("user-agent"), ip or None


# A change's id: this process's random prefix and a counter, unique across replicas and
# restarts like a uuid4, without a getrandom() call per request (4.8% of a replica's time
# under load, py-spy).
_ID_PREFIX: Final = secrets.token_hex(8)
_ID_COUNTER: Final = itertools.count()


def _change_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def _record(kind: str, request: Request, **fields: Any) -> dict[str, Any]:
    agent, ip = _client(request)
    return {
        "id": _change_id(),
        "kind": kind,
        "at": datetime.now(UTC).isoformat(),
        "ua": agent,
        "ip": ip,
        **fields,
    }


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=256,
    logging_config={"enable_access_log": False},
)
@serve.ingress(api)
class WebIngress:
    """The HTTP ingress; any number of replicas, each with its own change-log segment."""

    def __init__(self, config: WebConfig, applier: Any = None) -> None:
        self.config = config
        self.web = config.web
        self.book = CampaignBook(config)
        self.writer = SegmentWriter(changes_dir(config.home))
        self.applier = applier
        self._since_nudge = 0

    async def _append(self, record: dict[str, Any]) -> None:
        await self.writer.append(record)
        self._since_nudge += 1
        if self._since_nudge >= self.web.apply_batch and self.applier is not None:
            self._since_nudge = 0
            self.applier.nudge.remote()  # fire and forget: the log already holds the change

    # -- unsubscribe -------------------------------------------------------------------

    @api.get("/u/{token}")
    async def unsubscribe_page(self, token: str) -> Response:
        hit = self.book.verify(token, TokenKind.UNSUBSCRIBE)
        if hit is None:
            return _refusal(BadRequest(400, "This unsubscribe link is not valid."), html=True)
        return HTMLResponse(landing_page(hit.campaign), headers=NO_STORE)

    @api.post("/u/{token}")
    async def unsubscribe(self, token: str, request: Request) -> Response:
        try:
            hit = self.book.verify(token, TokenKind.UNSUBSCRIBE)
            if hit is None:
                raise BadRequest(400, "This unsubscribe link is not valid.")
            body = await read_body(request, self.web.max_body_bytes)
            form = parse_form(request, body)
            if form.get("List-Unsubscribe") != "One-Click":
                raise BadRequest(400, "body must be List-Unsubscribe=One-Click (RFC 8058)")
        except BadRequest as exc:
            return _refusal(exc, html=True)
        await self._append(
            _record("unsubscribe", request, campaign=hit.campaign, rtag=hit.rtag, via="one-click")
        )
        page = message_page(
            "Unsubscribed", f"You will not receive messages of {hit.campaign} any more."
        )
        return HTMLResponse(page, headers=NO_STORE)

    # -- tracking ----------------------------------------------------------------------

    @api.get("/o/{token}.gif")
    async def open_pixel(self, token: str, request: Request) -> Response:
        hit = self.book.verify(token, TokenKind.OPEN)
        if hit is None:
            return _refusal(BadRequest(400, "not a valid tracking token"))
        await self._append(_record("open", request, campaign=hit.campaign, rtag=hit.rtag))
        return Response(PIXEL, media_type="image/gif", headers=NO_STORE)

    @api.get("/c/{token}")
    async def click(self, token: str, request: Request) -> Response:
        hit = self.book.verify(token, TokenKind.CLICK)
        if hit is None or hit.url is None:
            return _refusal(BadRequest(400, "not a valid link"), html=True)
        link = hit.link.name if hit.link is not None else None
        await self._append(
            _record("click", request, campaign=hit.campaign, rtag=hit.rtag, link=link, url=hit.url)
        )
        return RedirectResponse(hit.url, status_code=302, headers=NO_STORE)

    # -- subscribe ---------------------------------------------------------------------

    @api.post("/subscribe")
    async def subscribe(self, request: Request) -> Response:
        wants_json = content_type(request) == "application/json"
        try:
            body = await read_body(request, self.web.max_body_bytes)
            data = parse_json(request, body) if wants_json else parse_form(request, body)
            list_id, email, fields = self._subscription(data)
        except BadRequest as exc:
            return _refusal(exc, html=not wants_json)
        await self._append(_record("subscribe", request, list=list_id, email=email, fields=fields))
        text = f"Almost done: we sent a confirmation link to {email}."
        if wants_json:
            return JSONResponse({"status": "confirmation sent", "email": email}, 202, NO_STORE)
        return HTMLResponse(message_page("Check your inbox", text), 202, NO_STORE)

    def _subscription(self, data: Any) -> tuple[str, str, dict[str, str]]:
        if not isinstance(data, dict):
            raise BadRequest(422, "body must be an object with 'list' and 'email'")
        list_id, email = data.get("list"), data.get("email")
        if not isinstance(list_id, str) or list_id not in self.web.lists:
            known = ", ".join(sorted(self.web.lists)) or "none"
            raise BadRequest(422, f"field 'list': unknown list {list_id!r} (lists: {known})")
        checked = check_address(email if isinstance(email, str) else None)
        if checked.email is None:
            raise BadRequest(422, f"field 'email': {checked.reason}")
        raw = data.get("fields", {k: v for k, v in data.items() if k not in {"list", "email"}})
        if not isinstance(raw, dict) or len(raw) > MAX_FIELDS:
            raise BadRequest(422, f"field 'fields': an object of at most {MAX_FIELDS} values")
        fields: dict[str, str] = {}
        for key, value in raw.items():
            if not isinstance(value, str | int | float) or len(str(value)) > MAX_FIELD_CHARS:
                raise BadRequest(422, f"field {key!r}: a string of at most {MAX_FIELD_CHARS}")
            if not str(key).isidentifier():
                raise BadRequest(422, f"field {key!r}: names are letters, digits and _")
            fields[str(key)] = str(value)
        return list_id, checked.email.lower(), fields

    @api.get("/confirm/{token}")
    async def confirm_get(self, token: str, request: Request) -> Response:
        return await self._confirm(token, request)

    @api.post("/confirm/{token}")
    async def confirm_post(self, token: str, request: Request) -> Response:
        return await self._confirm(token, request)

    async def _confirm(self, token: str, request: Request) -> Response:
        try:
            found = read_confirmation(self.config.secret, token)
        except ConfirmationError as exc:
            status = 410 if exc.expired else 400
            return _refusal(
                BadRequest(status, f"This confirmation link is not valid: {exc}."), True
            )
        if found.list_id not in self.web.lists:
            return _refusal(BadRequest(400, "This list no longer exists."), True)
        await self._append(
            _record("confirm", request, list=found.list_id, email=found.email, fields=found.fields)
        )
        text = f"{found.email} is subscribed to {found.list_id}."
        return HTMLResponse(message_page("Subscribed", text), headers=NO_STORE)

    # -- ingest ------------------------------------------------------------------------

    @api.post("/events")
    async def ingest(self, request: Request) -> Response:
        key = self.web.ingest_key
        if key is None:
            return _refusal(BadRequest(404, "event ingest is off (no web.ingest_key)"))
        if request.headers.get("authorization") != f"Bearer {key}":
            return _refusal(BadRequest(401, "missing or wrong 'Authorization: Bearer' key"))
        try:
            body = await read_body(request, self.web.max_body_bytes)
            data = parse_json(request, body)
            batch = IngestBatch.model_validate(data)
        except BadRequest as exc:
            return _refusal(exc)
        except ValidationError as exc:
            return _refusal(BadRequest(422, describe_errors(exc)))
        if len(batch.events) > self.web.max_events_per_request:
            limit = self.web.max_events_per_request
            return _refusal(BadRequest(422, f"field 'events': at most {limit} per request"))
        records = [
            _record("event", request, sender=batch.sender, event=e.model_dump(mode="json"))
            for e in batch.events
        ]
        await asyncio.gather(*(self._append(r) for r in records))
        return JSONResponse({"accepted": len(records)}, 202, NO_STORE)

    @api.get("/healthz")
    async def health(self) -> Response:
        return PlainTextResponse("ok\n")


@serve.deployment(
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},
)
class ApplierDeployment:
    """Applies the change log in bulk (one replica; Serve restarts it if it dies)."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        from raymail.web.serve import applier_for

        self.applier = applier_for(config)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.passes = 0
        self._thread = threading.Thread(target=self._run, name="raymail-applier", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.config.web.apply_interval_s
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                while self.applier.apply_once().changes >= self.applier.batch:
                    pass  # a full batch: more is probably waiting
                asyncio.run(self.applier.send_mail())
                self.passes += 1
            except Exception:  # keep applying: the log keeps what failed for the next pass
                log.exception("web applier: pass failed")

    async def nudge(self) -> None:
        """A replica has taken apply_batch changes: apply now."""
        self._wake.set()

    async def status(self) -> dict[str, Any]:
        state = self.applier.state()
        return {
            "passes": self.passes,
            "applied": state.get("applied", 0),
            "pending_bytes": self.applier.pending_bytes(),
            "mail": len(state.get("mail", [])),
        }

    def __del__(self) -> None:
        self._stop.set()
        self._wake.set()
