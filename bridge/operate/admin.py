"""The admin API under /admin/ (JSON, bearer tokens) and /metrics.

Enabled only when `[admin] tokens` lists at least one token; otherwise every /admin/ path answers
404. Tokens are compared in constant time against each configured one. /metrics is public unless
`[admin] protect_metrics = true`.

    GET  /admin/events                 filters: source, event_type, state, since, until, key;
                                       cursor pagination (cursor, limit)
    GET  /admin/events/{id}            headers, body, deliveries with attempts, executions,
                                       callbacks
    GET  /admin/events/{id}/body       the body, byte for byte (to resend it signed)
    POST /admin/events/{id}/replay     new deliveries to the event's routes, new keys
    POST /admin/events/replay          the same for every event matching a filter (JSON body)
    GET  /admin/dead-letters           filters: route, source; cursor pagination
    POST /admin/deliveries/{id}/retry  send a pending delivery now (resuming its route if paused)
    POST /admin/dead-letters/redrive   {"ids": [...]} or {"all": true, "route"?, "source"?}
    POST /admin/dead-letters/discard   the same, plus "reason"
    GET  /admin/routes                 state (active/paused, why) and pending counts
    POST /admin/routes/{name}/pause    {"reason"?}
    POST /admin/routes/{name}/resume
    GET  /admin/sources                counts and the last verification failure (reason only)
    GET  /admin/channels               agents of each channel, and the lag of what waits for them
    POST /admin/prune                  {"limit"?}: forget events older than the dedupe window
    GET  /admin/openapi.json           the contract of all of the above (`bridge/operate/openapi.py`)
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSON
from starlette.responses import Response
from starlette.routing import Route

from bridge.channels.edge import Edge
from bridge.core.errors import BadRequest, BridgeError, NotFound
from bridge.core.metrics import CONTENT_TYPE, Metrics
from bridge.core.models import RouteState, VerifiedEvent, with_iso_times
from bridge.delivery.platform import resend_deadline
from bridge.ingest import routing as outbox
from bridge.ingest.status_links import waiting
from bridge.operate.openapi import (
    DEAD_FILTERS,
    DEFAULT_PAGE,
    DOCUMENT,
    EVENT_FILTERS,
    MAX_BULK,
    MAX_PAGE,
    check_body,
    check_query,
)
from bridge.store.records import EventRecord, SourceCount, plain
from bridge.store.roles import Operator
from bridge.web.asgi import read_body, request_headers
from bridge.web.throttle import Throttle


class Unauthorized(BridgeError):
    status_code = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}



class JSONResponse(StarletteJSON):
    """Every admin answer: times as ISO 8601 text with a zone (`with_iso_times`), never Unix
    floats, as the CLI, the logs and the console show them."""

    def render(self, content: Any) -> bytes:
        return super().render(with_iso_times(content))

class Admin:
    def __init__(self, runtime: Any, store: Operator, metrics: Metrics,
                 clock: Callable[[], float] = time.time, edge: Edge | None = None,
                 throttle: Throttle | None = None) -> None:
        self.runtime = runtime  # has .config (swapped on reload) and .failures
        self.store = store
        self.edge = edge
        self.throttle = throttle or Throttle()
        self.metrics = metrics
        self.clock = clock

    @property
    def config(self) -> Any:
        return self.runtime.config

    def authorise(self, request: Request, required: bool = True) -> None:
        tokens = [t.reveal().encode() for t in self.config.admin.tokens]
        if not tokens:
            raise NotFound("the admin API is disabled: set [admin] tokens")
        self.throttle.check(request)
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        found = False
        for token in tokens:  # every token compared, whatever matched
            found |= hmac.compare_digest(token, given.strip().encode("utf-8", "replace"))
        if scheme.lower() != "bearer" or not found:
            self.throttle.failed(request, "admin token")
            raise Unauthorized("a valid admin bearer token is required")
        self.throttle.succeeded(request)

    def routes(self) -> list[Route]:
        def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Response:
                self.authorise(request)
                response: Response = await handler(request)
                return response
            return endpoint

        table = [
            ("/admin/events", self.list_events, "GET"),
            ("/admin/events/replay", self.replay_matching, "POST"),
            ("/admin/events/{id}", self.show_event, "GET"),
            ("/admin/events/{id}/body", self.event_body, "GET"),
            ("/admin/events/{id}/replay", self.replay_event, "POST"),
            ("/admin/deliveries/{id}/retry", self.retry_delivery, "POST"),
            ("/admin/dead-letters", self.list_dead, "GET"),
            ("/admin/dead-letters/redrive", self.redrive, "POST"),
            ("/admin/dead-letters/discard", self.discard, "POST"),
            ("/admin/routes", self.list_routes, "GET"),
            ("/admin/routes/{name}/pause", self.pause_route, "POST"),
            ("/admin/routes/{name}/resume", self.resume_route, "POST"),
            ("/admin/sources", self.list_sources, "GET"),
            ("/admin/channels", self.list_channels, "GET"),
            ("/admin/prune", self.prune, "POST"),
            ("/admin/openapi.json", self.openapi, "GET"),
        ]
        return [Route(path, guarded(fn), methods=[method]) for path, fn, method in table] + [
            Route("/metrics", self.scrape, methods=["GET"])]

    # events

    async def list_events(self, request: Request) -> Response:
        q = check_query(request.query_params, EVENT_FILTERS)
        limit = q.get("limit", DEFAULT_PAGE)
        rows = await self.store.list_events(
            source=q.get("source"), event_type=q.get("event_type"), state=q.get("state"),
            since=q.get("since"), until=q.get("until"), workflow=q.get("workflow"),
            route=q.get("route"),
            key_contains=q.get("key"), before_id=q.get("cursor"), limit=limit)
        cursor = rows[-1].id if len(rows) == limit else None
        return JSONResponse({"events": [{**plain(row), "workflows": ",".join(row.workflows)
                                         or None} for row in rows], "next_cursor": cursor})

    async def show_event(self, request: Request) -> Response:
        event = await self.store.get_event(request.path_params["id"])
        if event is None:
            raise NotFound("no such event")
        reasons = waiting(event, await self.store.route_states())
        view = plain(event)
        for delivery in view["deliveries"]:
            delivery["waiting"] = reasons.get(delivery["id"])
        try:
            view["body"], view["body_encoding"] = event.body.decode("utf-8"), "text"
        except UnicodeDecodeError:
            view["body"] = base64.b64encode(event.body).decode()
            view["body_encoding"] = "base64"
        return JSONResponse(view)

    async def event_body(self, request: Request) -> Response:
        body = await self.store.event_body(request.path_params["id"])
        if body is None:
            raise NotFound("no such event")
        return Response(body, media_type="application/octet-stream",
                        headers={"Content-Disposition": "attachment",
                                 "X-Content-Type-Options": "nosniff"})

    async def replay_event(self, request: Request) -> Response:
        event = await self.store.get_event(request.path_params["id"])
        if event is None:
            raise NotFound("no such event")
        return JSONResponse({"event_id": event.id, "replayed": await self._replay(event)})

    async def replay_matching(self, request: Request) -> Response:
        filters = check_body("replay", await _json(request))
        limit = int(filters.get("limit", MAX_BULK))
        events = deliveries = 0
        cursor = None
        while events < limit:
            page = await self.store.list_events(
                source=filters.get("source"), event_type=filters.get("event_type"),
                state=filters.get("state"), since=filters.get("since"),
                until=filters.get("until"), key_contains=filters.get("key"),
                before_id=cursor, limit=min(MAX_PAGE, limit - events))
            if not page:
                break
            for row in page:
                event = await self.store.get_event(row.id)
                if event is not None:
                    deliveries += await self._replay(event)
                    events += 1
            cursor = page[-1].id
        return JSONResponse({"events": events, "replayed": deliveries})

    async def replay(self, event: EventRecord) -> int:
        """New deliveries of `event` to today's routes, each with a new key; how many."""
        return await self._replay(event)

    async def _replay(self, event: EventRecord) -> int:
        verified = VerifiedEvent(event.id, event.source, event.provider, event.event_type,
                                 event.idempotency_key, event.received_at, dict(event.headers),
                                 event.body)
        routes = outbox.matching(self.config.routes, event.source, event.event_type)
        suffix = f":replay-{secrets.token_hex(4)}"
        limit = self.config.platform.idempotency_key_max_length
        rendered = []
        taken, _ = outbox.decide(verified, routes, {})  # today's filters and mappings
        for route, built in taken:
            delivery = outbox.render(verified, route, limit, built=built)
            key = outbox.delivery_key(event.idempotency_key, route.trigger + suffix, limit)
            rendered.append(dataclasses.replace(delivery, idempotency_key=key))
        return await self.store.replay(event.id, rendered, self.clock())

    async def retry_delivery(self, request: Request) -> Response:
        found = await self.store.retry_now(request.path_params["id"], self.clock())
        if found is None:
            raise NotFound("no pending delivery has this id (a dead one is redriven instead)")
        return JSONResponse({**plain(found), "retrying": True})

    # dead letters

    async def list_dead(self, request: Request) -> Response:
        q = check_query(request.query_params, DEAD_FILTERS)
        limit = q.get("limit", DEFAULT_PAGE)
        route = self.route_name(q["route"]) if "route" in q else None
        rows = await self.store.dead_letters(route=route, source=q.get("source"),
                                             after_id=q.get("cursor"), limit=limit)
        return JSONResponse({"dead_letters": [plain(row) for row in rows],
                             "next_cursor": rows[-1].id if len(rows) == limit else None})

    async def selected(self, body: dict[str, Any]) -> list[str]:
        return await self._selected(body)

    async def _selected(self, body: dict[str, Any]) -> list[str]:
        """Dead delivery ids: those named (a delivery id, or an event id for all of that event's
        dead deliveries), or every one matching the filters. Naming nothing dead is a 404, so
        a command that would do nothing says so."""
        if "ids" in body:
            given = [str(i) for i in body["ids"]]
            found, missing = await self.store.dead_deliveries(given)
            if missing:
                raise NotFound(f"no dead delivery has the id, or belongs to the event, "
                               f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
            return found
        if body.get("all") is True:
            ids: list[str] = []
            cursor = None
            route = self.route_name(body["route"]) if "route" in body else None
            while len(ids) < MAX_BULK:
                rows = await self.store.dead_letters(route=route,
                                                     source=body.get("source"),
                                                     after_id=cursor, limit=MAX_PAGE)
                if not rows:
                    break
                ids += [r.id for r in rows]
                cursor = rows[-1].id
            return ids
        raise BadRequest('give "ids": [...] or "all": true')

    async def redrive(self, request: Request) -> Response:
        body = check_body("redrive", await _json(request))
        ids = await self._selected(body)
        return JSONResponse(await self.redrive_ids(ids, bool(body.get("force", False))))

    async def redrive_ids(self, ids: list[str], force: bool) -> dict[str, Any]:
        """Dead deliveries back to pending; those that may already have run where the platform
        has forgotten their key are held unless `force` (the answer says how many, and why)."""
        now = self.clock()
        lifetime = self.runtime.config.platform.idempotency_key_lifetime
        # A delivery that may have reached the platform longer ago than it remembers keys
        # would run again if resent: only an explicit force sends it.
        unsafe_before = None if force else now - resend_deadline(0.0, lifetime)
        redriven = await self.store.redrive(ids, now, unsafe_before)
        answer: dict[str, Any] = {"redriven": redriven}
        if force or redriven == len(ids):
            return answer
        forgotten = await self.store.count_unsafe(ids, unsafe_before or 0.0)
        superseded = await self.store.count_superseded(ids)
        warnings = []
        if forgotten:
            warnings.append(f"{forgotten} delivery(ies) may already have run on the platform, "
                            "which no longer remembers their Idempotency-Key: resending could "
                            "run the workflow twice.")
        if superseded:
            warnings.append(f"{superseded} delivery(ies) were superseded by a replay that was "
                            "delivered: the workflow already ran for them, and a redrive would "
                            "run it again.")
        if warnings:
            answer["held"] = forgotten + superseded
            answer["warning"] = " ".join(warnings) + " Redrive with force to send them anyway."
        return answer

    async def discard(self, request: Request) -> Response:
        body = check_body("discard", await _json(request))
        reason = str(body["reason"]).strip()
        ids = await self._selected(body)
        return JSONResponse({"discarded": await self.store.discard(ids, reason, self.clock())})

    # routes and sources

    async def list_routes(self, request: Request) -> Response:
        return JSONResponse({"routes": await self.route_view()})

    async def route_view(self) -> list[dict[str, Any]]:
        """Every configured route with its shared state and backlog."""
        states = await self.store.route_states()
        pending = await self.store.pending_by_route()
        out = []
        for route in self.config.routes:
            state = states.get(route.name)
            out.append({"name": route.name, "source": route.source, "trigger": route.trigger,
                        "events": list(route.events),
                        "state": state.state if state else RouteState.ACTIVE.value,
                        "reason": state.reason if state else None,
                        "changed_at": state.changed_at if state else None,
                        "pending": pending.get(route.name, 0),
                        "filter": route.filter.text if route.filter else None,
                        "input": _texts(route.input) if route.input else None,
                        "channel": route.channel, "envelope": route.envelope})
        return out

    async def _route(self, request: Request) -> str:
        return self.route_name(str(request.path_params["name"]))

    def route_name(self, given: str) -> str:
        """A route named by its name, or by its trigger (or declared name), which is safe to
        type in a shell where `github->github-push` is not. NotFound suggests the close ones."""
        routes = self.config.routes
        if any(r.name == given for r in routes):
            return given
        by_trigger: list[str] = [r.name for r in routes if r.trigger == given]
        if len(by_trigger) == 1:
            return by_trigger[0]
        if by_trigger:
            raise NotFound(f"{len(by_trigger)} routes call trigger {given!r}: name one of "
                           f"{', '.join(by_trigger)} (or give each a `name` in the config)")
        names = [r.name for r in routes] + [r.trigger for r in routes]
        close = difflib.get_close_matches(given, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(r.trigger for r in routes) or "none"
        raise NotFound(f"no route named {given!r}{hint} (routes by trigger: {known})")

    async def pause_route(self, request: Request) -> Response:
        name = await self._route(request)
        body = check_body("pause", await _json(request, optional=True))
        reason = await self.pause(name, body.get("reason"))
        return JSONResponse({"name": name, "state": "paused", "reason": reason})

    async def pause(self, name: str, reason: str | None) -> str:
        reason = str(reason or "paused by an operator")
        # An operator's pause is not probed: it lasts until resumed.
        await self.store.set_route_state(name, RouteState.PAUSED, reason, self.clock(),
                                         probe_every=10 * 365 * 86400.0)
        return reason

    async def resume_route(self, request: Request) -> Response:
        name = await self._route(request)
        await self.resume(name)
        return JSONResponse({"name": name, "state": "active"})

    async def resume(self, name: str) -> None:
        await self.store.set_route_state(name, RouteState.ACTIVE, None, self.clock(), 0.0)

    async def list_sources(self, request: Request) -> Response:
        return JSONResponse({"sources": await self.source_view()})

    async def source_view(self) -> list[dict[str, Any]]:
        """Every configured source: events stored, the last one's time, the last failure."""
        counts = await self.store.source_counts()
        failures = self.runtime.failures
        none = SourceCount(0, None)
        return [
            {"name": s.name, "provider": s.provider,
             "events": counts.get(s.name, none).events,
             "last_received_at": counts.get(s.name, none).last_received_at,
             "last_failure": failures.get(s.name)}
            for s in self.config.sources]

    async def list_channels(self, request: Request) -> Response:
        channels = await self.edge.overview(self.clock()) if self.edge is not None else []
        return JSONResponse({"channels": channels})

    async def prune(self, request: Request) -> Response:
        body = check_body("prune", await _json(request, optional=True))
        limit = int(body.get("limit", 1000))
        removed = await self.store.prune(self.clock() - self.config.store.dedupe_window, limit)
        return JSONResponse({"removed": removed, "more": removed == limit})

    async def openapi(self, request: Request) -> Response:
        return StarletteJSON(DOCUMENT)

    # metrics

    async def scrape(self, request: Request) -> Response:
        if self.config.admin.protect_metrics:
            self.authorise(request)
        counts = await self.store.counts()
        for status in ("pending", "leased", "delivered", "dead", "discarded"):
            self.metrics.outbox.labels(status).set(counts["deliveries"].get(status, 0))
        for name in ("queued", "unrouted", "delivered", "dead"):
            self.metrics.events.labels(name).set(counts["events"].get(name, 0))
        states = await self.store.route_states()
        for route in self.config.routes:
            state = states.get(route.name)
            paused = state is not None and state.paused
            self.metrics.paused.labels(route.name).set(1 if paused else 0)
        if self.edge is not None and self.config.channels:
            for channel in await self.edge.overview(self.clock()):
                name = channel["name"]
                self.metrics.channel_lag.labels(name).set(channel["lag"]["events"])
                self.metrics.channel_lag_seconds.labels(name).set(channel["lag"]["seconds"])
                self.metrics.channel_agents.labels(name).set(
                    sum(1 for agent in channel["agents"] if agent["connected"]))
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


MAX_ADMIN_BODY = 1024 * 1024


async def _json(request: Request, optional: bool = False) -> dict[str, Any]:
    headers = request_headers(request.scope)
    raw = await read_body(request.receive, headers.get("content-length"), MAX_ADMIN_BODY)
    if not raw and optional:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _texts(mapping: Any) -> Any:
    """An `input` mapping as the config wrote it: each expression's text."""
    return {k: _texts(v) if isinstance(v, dict) else v.text for k, v in mapping.items()}
