"""The web console under /console: every event's journey, and the operator's actions, in a
browser.

Server-rendered pages (Jinja2 templates in `templates/`, a stylesheet and one small script in
`static/`, beside this module), served by the bridge itself: no build step, no other service.
It is on when the admin API is (`[admin] tokens`), and an admin token signs in.

Security, because a console is a target:
- the session cookie is an opaque random id (`HttpOnly`, `SameSite=Strict`, `Secure` behind
  HTTPS or when `public_url` is https, scoped to /console); the session lives in the store,
  keyed by the id's digest, with a keyed digest of the token that signed in, so signing out ends
  it, removing a token from the config (and reloading) ends its sessions, and a stolen cookie
  tells nothing about a token;
- failed sign-ins are limited per client (`bridge.web.throttle`: 429 with Retry-After) and logged;
- every action is a POST carrying the session's CSRF token, compared in constant time, with an
  Origin, when sent, that is the console's own or `public_url`'s;
- every page sends a strict Content-Security-Policy (no inline script, nothing from elsewhere),
  `frame-ancestors 'none'`, `no-store`, and no referrer beyond the console itself;
- nothing secret is shown: stored headers never held signatures or credentials, the resend
  command reads the signing secret from the operator's environment, and tokens never appear.

The actions are the admin API's own (`Admin`): the console is another face of it.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from bridge.core.errors import BadRequest, BridgeError, NotFound, TooManyAttempts
from bridge.core.models import iso
from bridge.ingest import filters as glue
from bridge.ingest.status_links import waiting
from bridge.operate.admin import Admin
from bridge.operate.console import chart
from bridge.operate.console.event_page import resend_command, show_body, timeline
from bridge.store.records import EventRecord
from bridge.store.roles import Operator
from bridge.web.asgi import read_body

HERE = Path(__file__).parent
COOKIE = "bridge_console"
SESSION_AGE = 8 * 3600
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "Cache-Control": "no-store"}
STATIC = {"console.css": "text/css", "console.js": "text/javascript",
          "favicon.svg": "image/svg+xml"}
RANGES = {"1h": (3600, 60), "6h": (6 * 3600, 300), "24h": (86400, 900)}  # span, bucket seconds


class SignIn(BridgeError):
    """Not signed in (or the session ended): pages send the browser to the sign-in page."""

    status_code = 401
    code = "sign_in"


class Forbidden(BridgeError):
    status_code = 403
    code = "forbidden"


class Console:
    def __init__(self, admin: Admin, key: Callable[[], str]) -> None:
        self.admin = admin
        self.key = key  # the server's secret key, known once the store is open
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["iso"] = iso
        self.templates.env.filters["ms"] = lambda v: "" if v is None else f"{v:.0f} ms"

    @property
    def store(self) -> Operator:
        return self.admin.store

    @property
    def config(self) -> Any:
        return self.admin.config

    def routes(self) -> list[Route]:
        def page(handler: Callable[[Request, dict[str, Any]], Any], post: bool = False
                 ) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Response:
                try:
                    session = await self.session(request)
                    if post:
                        await self.check_csrf(request, session)
                    response: Response = await handler(request, session)
                except SignIn:
                    response = RedirectResponse("/console/login", 303)
                except BridgeError as exc:
                    if not self.config.admin.tokens:
                        raise  # the console, like the admin API, is off: a plain 404
                    response = self.render(request, "error.html", {}, status=exc.status_code,
                                           extra={"code": exc.code, "message": exc.message})
                response.headers.update(HEADERS)
                return response
            return endpoint

        gets = [
            ("/console", self.home), ("/console/events", self.events),
            ("/console/events/feed", self.feed), ("/console/events/{id}", self.event),
            ("/console/events/{id}/body", self.body), ("/console/sources", self.sources),
            ("/console/routes", self.route_list), ("/console/dead-letters", self.dead),
            ("/console/activity", self.activity),
        ]
        posts = [
            ("/console/events/{id}/replay", self.replay),
            ("/console/deliveries/redrive", self.redrive),
            ("/console/deliveries/discard", self.discard),
            ("/console/routes/{name}/pause", self.pause),
            ("/console/routes/{name}/resume", self.resume),
            ("/console/logout", self.logout),
        ]
        return [Route("/console/login", self.login_page, methods=["GET"]),
                Route("/console/login", self.login, methods=["POST"]),
                Route("/console/static/{name}", self.static, methods=["GET"]),
                Route("/favicon.ico", self.favicon, methods=["GET"]),
                *(Route(path, page(fn), methods=["GET"]) for path, fn in gets),
                *(Route(path, page(fn, post=True), methods=["POST"]) for path, fn in posts)]

    # signing in

    def token_digests(self) -> list[str]:
        if not self.config.admin.tokens:
            raise NotFound("the console is disabled: set [admin] tokens")
        return [self.digest(t.reveal()) for t in self.config.admin.tokens]

    def digest(self, token: str) -> str:
        """A token as the store keeps it for a session: keyed with the server's secret key, so
        the store's rows do not let a token be guessed offline either."""
        return hmac.new(self.key().encode(), b"bridge.console:" + token.encode("utf-8", "replace"),
                        hashlib.sha256).hexdigest()

    async def session(self, request: Request) -> dict[str, Any]:
        digests = self.token_digests()
        raw = request.cookies.get(COOKIE, "")
        if not 20 <= len(raw) <= 100:
            raise SignIn("sign in")
        found = await self.store.find_session(_session_key(raw), time.time())
        if found is None or found["token"] not in digests:
            raise SignIn("sign in")  # signed out, expired, or its token was removed
        return {"c": found["csrf"], "id": _session_key(raw)}

    def same_origin(self, request: Request, origin: str) -> bool:
        own = f"{request.url.scheme}://{request.url.netloc}"
        public = urlsplit(self.config.public_url or "")
        return origin in (own, f"{public.scheme}://{public.netloc}" if public.netloc else own)

    async def check_csrf(self, request: Request, session: dict[str, Any]) -> None:
        data = await form(request)
        given = str(data.get("csrf") or "")
        if not hmac.compare_digest(given.encode(), str(session.get("c", "")).encode()):
            raise Forbidden("this form is out of date or was not sent by the console: "
                            "reload the page and try again")
        origin = request.headers.get("origin")
        if origin and not self.same_origin(request, origin):
            raise Forbidden("this request came from another site")

    async def login_page(self, request: Request) -> Response:
        self.token_digests()
        response = self.render(request, "login.html", {})
        response.headers.update(HEADERS)
        return response

    async def login(self, request: Request) -> Response:
        digests = self.token_digests()
        throttle = self.admin.throttle
        try:
            throttle.check(request)
        except TooManyAttempts as exc:
            response = self.render(request, "login.html", {}, status=429,
                                   extra={"failed": True, "message": exc.message})
            response.headers.update({**HEADERS, **exc.headers()})
            return response
        data = await form(request)
        given = str(data.get("token") or "").strip()
        found = False
        for digest in digests:  # every digest compared, whatever matched
            found |= hmac.compare_digest(digest, self.digest(given))
        if not given or not found:
            throttle.failed(request, "console sign-in")
            response = self.render(request, "login.html", {}, status=401,
                                   extra={"failed": True})
            response.headers.update(HEADERS)
            return response
        throttle.succeeded(request)
        session_id, now = secrets.token_urlsafe(32), time.time()
        await self.store.start_session(_session_key(session_id), self.digest(given),
                                       secrets.token_urlsafe(24), now, now + SESSION_AGE)
        response = RedirectResponse("/console/events", 303)
        response.set_cookie(COOKIE, session_id, max_age=SESSION_AGE, path="/console",
                            httponly=True, samesite="strict", secure=self.secure(request))
        response.headers.update(HEADERS)
        return response

    def secure(self, request: Request) -> bool:
        """`Secure` cookies behind HTTPS: as the request came (a trusted proxy's forwarded
        scheme counts), or as `public_url` says the console is reached."""
        return request.url.scheme == "https" or (self.config.public_url or "").startswith(
            "https://")

    async def logout(self, request: Request, session: dict[str, Any]) -> Response:
        await self.store.end_session(session["id"])  # the cookie is void from now on
        response = RedirectResponse("/console/login", 303)
        response.delete_cookie(COOKIE, path="/console")
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise NotFound("no such file")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name],
                            headers={"Cache-Control": "max-age=300",
                                     "X-Content-Type-Options": "nosniff"})

    async def favicon(self, request: Request) -> Response:
        """Browsers ask for /favicon.ico whatever the page says: the console's icon."""
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "max-age=86400"})

    def render(self, request: Request, template: str, session: dict[str, Any],
               status: int = 200, extra: dict[str, Any] | None = None) -> Response:
        context = {"csrf": session.get("c", ""), "signed_in": bool(session), **(extra or {})}
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    # pages

    async def home(self, request: Request, session: dict[str, Any]) -> Response:
        return RedirectResponse("/console/events", 303)

    def filters(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        out: dict[str, Any] = {}
        for name in ("source", "event_type", "state", "key", "workflow", "route"):
            value = (q.get(name) or "").strip()[:200]
            if value:
                out[name] = value
        for name in ("since", "until"):
            value = (q.get(name) or "").strip()
            if value:
                try:
                    out[name] = datetime.datetime.fromisoformat(value).replace(
                        tzinfo=datetime.UTC).timestamp() if "T" in value or "-" in value \
                        else float(value)
                except ValueError:
                    raise BadRequest(f"{name}: expected a time like 2026-01-31T13:45") from None
        return out

    async def _page(self, request: Request, filters: dict[str, Any], limit: int,
                    **cursor: str | None) -> list[Any]:
        return list(await self.store.list_events(
            source=filters.get("source"), event_type=filters.get("event_type"),
            state=filters.get("state"), since=filters.get("since"),
            until=filters.get("until"), key_contains=filters.get("key"), limit=limit,
            workflow=filters.get("workflow"), route=filters.get("route"),
            **cursor))

    async def events(self, request: Request, session: dict[str, Any]) -> Response:
        filters = self.filters(request)
        cursor = request.query_params.get("cursor") or None
        rows = await self._page(request, filters, 50, before_id=cursor)
        shown = {k: request.query_params.get(k, "") for k in
                 ("source", "event_type", "state", "workflow", "route", "key", "since",
                  "until")}
        next_link = ("/console/events?" + urlencode({**{k: v for k, v in shown.items() if v},
                                                     "cursor": rows[-1].id})
                     if len(rows) == 50 else None)
        return self.render(request, "events.html", session, extra={
            "rows": rows, "filters": shown, "next_link": next_link, "live": cursor is None,
            "sources": [s.name for s in self.config.sources],
            "states": ["queued", "unrouted", "delivered", "dead"],
            "workflows": ["failed", "timed_out", "cancelled", "completed", "running"]})

    async def feed(self, request: Request, session: dict[str, Any]) -> Response:
        """Events newer than `after`, for the list's live updates (JSON; the page builds the
        rows with text nodes, never HTML)."""
        after = (request.query_params.get("after") or "")[:64] or None
        rows = await self._page(request, self.filters(request), 100, after_id=after)
        return JSONResponse({"events": [
            {"id": r.id, "received_at": iso(r.received_at), "source": r.source,
             "event_type": r.event_type, "idempotency_key": r.idempotency_key, "state": r.state,
             "workflows": ",".join(r.workflows)} for r in rows]})

    async def _event(self, request: Request) -> EventRecord:
        event: EventRecord | None = await self.store.get_event(request.path_params["id"][:64])
        if event is None:
            raise NotFound("no such event: it may have been pruned after the dedupe window")
        return event

    async def event(self, request: Request, session: dict[str, Any]) -> Response:
        event = await self._event(request)
        reasons = waiting(event, await self.store.route_states())
        base = f"{request.url.scheme}://{request.url.netloc}"
        return self.render(request, "event.html", session, extra={
            "event": event, "timeline": timeline(event, reasons), "waiting": reasons,
            "body": show_body(event), "resend": resend_command(event, self.config, base),
            "dead": [d.id for d in event.deliveries if d.status == "dead"],
            "nulls": self.null_inputs(event),
            "notice": request.query_params.get("notice", "")[:200]})

    def null_inputs(self, event: EventRecord) -> dict[str, list[str]]:
        """Per delivery, the `input` fields that its route's mapping (today's) gives as null for
        this event: the check `routes test` makes, shown where the operator looks."""
        routes = {r.name: r.input for r in self.admin.runtime.config.routes if r.input}
        doc = glue.document(event.source, event.event_type, event.headers, event.body, {})
        found = {d.id: glue.null_fields_of(routes[d.route], doc)
                 for d in event.deliveries if d.route in routes}
        return {key: fields for key, fields in found.items() if fields}

    async def body(self, request: Request, session: dict[str, Any]) -> Response:
        event = await self._event(request)
        return Response(event.body, media_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="event-{event.id}.body"'})

    async def sources(self, request: Request, session: dict[str, Any]) -> Response:
        return self.render(request, "sources.html", session, extra={
            "sources": await self.admin.source_view(),
            "rejections": list(reversed(self.admin.runtime.rejections))[:50]})

    async def route_list(self, request: Request, session: dict[str, Any]) -> Response:
        channels = await self.admin.edge.overview(self.admin.clock()) \
            if self.admin.edge is not None and self.config.channels else []
        routes = await self.admin.route_view()
        for route in routes:  # each route's latest events, linked; its mapping line by line
            route["recent"] = await self.store.list_events(route=route["name"], limit=3)
            route["input_lines"] = _lines(route["input"] or {})
        return self.render(request, "routes.html", session, extra={
            "routes": routes, "channels": channels,
            "notice": request.query_params.get("notice", "")[:200]})

    async def dead(self, request: Request, session: dict[str, Any]) -> Response:
        q = request.query_params
        route = (q.get("route") or "").strip() or None
        source = (q.get("source") or "").strip() or None
        if route is not None:
            route = self.admin.route_name(route)
        rows = await self.store.dead_letters(route=route, source=source,
                                             after_id=q.get("cursor") or None, limit=100)
        return self.render(request, "dead.html", session, extra={
            "rows": rows, "route": route or "", "source": source or "",
            "routes": [r.name for r in self.config.routes],
            "sources": [s.name for s in self.config.sources],
            "next_cursor": rows[-1].id if len(rows) == 100 else None,
            "notice": q.get("notice", "")[:200]})

    async def activity(self, request: Request, session: dict[str, Any]) -> Response:
        span_name = request.query_params.get("range", "1h")
        if span_name not in RANGES:  # the last hour first: a new bridge's traffic fills it
            span_name = "1h"
        span, step = RANGES[span_name]
        now = self.admin.clock()
        start = (now - span) // step * step + step
        counts = await self.store.traffic(int(start // 60))
        n = int(span // step)
        charts = []
        webhooks: dict[str, list[dict[str, int]]] = {}
        deliveries: list[dict[str, int]] = [{} for _ in range(n)]
        for count in counts:
            i = int((count.minute * 60 - start) // step)
            if not 0 <= i < n:
                continue
            if count.kind == "webhook":
                buckets = webhooks.setdefault(count.name, [{} for _ in range(n)])
                buckets[i][count.outcome] = buckets[i].get(count.outcome, 0) + count.n
            elif count.kind == "delivery":
                deliveries[i][count.outcome] = deliveries[i].get(count.outcome, 0) + count.n
        names = [s.name for s in self.config.sources]
        for name in names + sorted(set(webhooks) - set(names)):
            series = ("accepted", "duplicate", "rejected")
            c = chart.Chart(f"Webhooks from {name}", series, start, step,
                            webhooks.get(name) or [{} for _ in range(n)])
            charts.append({"title": c.title, "svg": chart.svg(c), "legend": chart.legend(series),
                           "total": sum(sum(b.values()) for b in c.buckets)})
        outcomes = ("delivered", "retried", "dead", "paused")
        c = chart.Chart("Deliveries to the platform", outcomes, start, step, deliveries)
        charts.append({"title": c.title, "svg": chart.svg(c), "legend": chart.legend(outcomes),
                       "total": sum(sum(b.values()) for b in c.buckets)})
        return self.render(request, "activity.html", session, extra={
            "charts": charts, "range": span_name, "ranges": list(RANGES),
            "step": "minute" if step == 60 else f"{step // 60} minutes"})

    # actions

    async def replay(self, request: Request, session: dict[str, Any]) -> Response:
        event = await self._event(request)
        count = await self.admin.replay(event)
        return RedirectResponse(f"/console/events/{event.id}?" + urlencode(
            {"notice": f"replayed to {count} route(s) with new keys"}), 303)

    async def _ids(self, request: Request) -> list[str]:
        data = await form(request)
        if data.get("all") == "1":
            body: dict[str, Any] = {"all": True}
            for name in ("route", "source"):
                if data.get(name):
                    body[name] = str(data.get(name))
            return await self.admin.selected(body)
        ids = [str(v)[:64] for v in data.getlist("ids")][:1000]
        if not ids:
            raise BadRequest("select at least one dead delivery")
        return await self.admin.selected({"ids": ids})

    def _back(self, request: Request, notice: str) -> Response:
        back = "/console/dead-letters"
        referer = request.headers.get("referer", "")
        if "/console/events/" in referer:
            back = "/console/events/" + referer.rsplit("/console/events/", 1)[1].split("?")[0]
        return RedirectResponse(back + "?" + urlencode({"notice": notice}), 303)

    async def redrive(self, request: Request, session: dict[str, Any]) -> Response:
        data = await form(request)
        ids = await self._ids(request)
        answer = await self.admin.redrive_ids(ids, force=data.get("force") == "1")
        notice = f"redriven: {answer['redriven']}"
        if answer.get("warning"):
            notice += f" ({answer['warning']})"
        return self._back(request, notice)

    async def discard(self, request: Request, session: dict[str, Any]) -> Response:
        data = await form(request)
        reason = str(data.get("reason") or "").strip()[:500]
        if not reason:
            raise BadRequest("give a reason for discarding")
        ids = await self._ids(request)
        discarded = await self.store.discard(ids, reason, self.admin.clock())
        return self._back(request, f"discarded: {discarded}")

    async def pause(self, request: Request, session: dict[str, Any]) -> Response:
        name = self.admin.route_name(str(request.path_params["name"]))
        data = await form(request)
        reason = await self.admin.pause(name, str(data.get("reason") or "").strip()[:500] or None)
        return RedirectResponse("/console/routes?" + urlencode(
            {"notice": f"{name} paused: {reason}"}), 303)

    async def resume(self, request: Request, session: dict[str, Any]) -> Response:
        name = self.admin.route_name(str(request.path_params["name"]))
        await self.admin.resume(name)
        return RedirectResponse("/console/routes?" + urlencode({"notice": f"{name} resumed"}),
                                303)


MAX_FORM = 64 * 1024


async def form(request: Request) -> FormData:
    """The console's own forms: URL-encoded, at most 64 KiB, read once per request (the CSRF
    check and the action both look at it)."""
    cached = getattr(request.state, "form", None)
    if isinstance(cached, FormData):
        return cached
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = b""
    if kind == "application/x-www-form-urlencoded":
        raw = await read_body(request.receive, request.headers.get("content-length"), MAX_FORM)
    elif kind:
        raise BadRequest("forms are sent URL-encoded")
    try:
        fields = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("this form could not be read") from None
    request.state.form = parsed = FormData([(k, v) for k, v in fields])
    return parsed


def _session_key(session_id: str) -> str:
    """A session's key in the store: the digest of the cookie's id, so the store's rows cannot
    be replayed as cookies."""
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


def _lines(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """An `input` mapping as `key = expression` lines, nested keys joined with dots."""
    out: list[tuple[str, str]] = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            out += _lines(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", str(value)))
    return out
