"""The tracker: follow each started execution to its end, then hand it to the relay.

How an execution is followed depends on the load. While few start (fewer than one per
`list_every`, 100 ms), each gets the platform's SSE stream (`GET /executions/{id}/stream`), the
quickest to tell, while fewer than `max_streams` are open, and otherwise polls
`GET /executions/{id}`. Above
that rate one list request per trigger every `list_every` follows them all (`bridge.tracking.listing`): a
stream each would cost a request, a connection and a parser per execution. A stream that is
unavailable, errors, or ends without a terminal event falls back to polling, which backs off from
`poll_initial` (1 s) by 1.5x per check to `poll_max` (30 s). A stream is held at most half a
lease and then reopened, so a crashed tracker's executions are picked up again within a lease.
Past `deadline` (24 h) an unfinished execution becomes `timed_out`.

Completions, from here or from a platform push (`POST /platform/events`), go through
`Executions.complete_execution`, which applies a terminal state once and creates the callbacks.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from bridge.config import Config, SourceConfig
from bridge.core import logs
from bridge.core.errors import BadRequest, NotFound
from bridge.core.loop import ClaimLoop, owner_id
from bridge.core.metrics import Metrics
from bridge.core.models import CallbackTargets, ExecutionResult, ExecutionStatus, TrackedExecution
from bridge.core.retry import backoff
from bridge.delivery.platform import base_url, platform_headers
from bridge.delivery.results import execution_id_of, parse_result
from bridge.ingest.providers import InboundRequest
from bridge.ingest.providers.standard import Standard
from bridge.store.kinds import EXECUTIONS
from bridge.store.roles import Executions
from bridge.tracking.listing import FETCH, UNSEEN, Listing
from bridge.web.asgi import read_body, request_headers
from bridge.web.client import Client, HttpError, lines

log = logging.getLogger("bridge.tracker")
MAX_PUSH_BYTES = 1024 * 1024
event_lines = logs.EventLines("bridge.tracker", trusted=("status",))


def callback_targets(config: Config) -> CallbackTargets:
    return CallbackTargets({route.name: route.callbacks for route in config.routes},
                           config.callbacks.urls)


class Tracker(ClaimLoop[TrackedExecution]):
    name = "tracker"

    def __init__(self, config: Config, store: Executions, *, clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None) -> None:
        settings = config.tracking
        self.metrics = metrics or Metrics()
        super().__init__(concurrency=settings.concurrency, batch_size=settings.batch_size,
                         poll_interval=settings.poll_interval, shutdown_grace=1.0, clock=clock)
        self.config = config
        self.settings = settings
        self.store = store
        self.owner = owner_id("tracker")
        self.open_streams = 0
        self.no_stream: set[str] = set()  # executions whose stream failed: poll them
        self.http: Client | None = None
        self.lister: Listing | None = None
        self.started: deque[float] = deque(maxlen=32)  # when new executions were first claimed
        self.targets = callback_targets(config)
        store.watch(self.wake.set, frozenset({EXECUTIONS}))

    def client(self) -> Client:
        """Streams and polls together may hold max_streams + the loop's concurrency
        connections."""
        if self.http is None:
            platform = self.config.platform
            headers = {**platform_headers(self.config), "Accept": "application/json"}
            if platform.api_key:
                headers["Authorization"] = f"Bearer {platform.api_key.reveal()}"
            self.http = Client(self.settings.max_streams + self.settings.concurrency,
                               base_url=base_url(self.config), headers=headers,
                               timeout=platform.timeout, max_body=platform.max_response_bytes)
        return self.http

    def listing(self) -> Listing:
        if self.lister is None:
            self.lister = Listing(self.client(), self.settings.list_every,
                                  self.settings.list_limit)
        return self.lister

    def start_rate(self) -> float:
        """New executions per second, over the last few (0 when they stopped coming)."""
        if len(self.started) < 2:
            return 0.0
        return len(self.started) / max(1e-3, time.monotonic() - self.started[0])

    def use_listing(self, item: TrackedExecution) -> bool:
        """List while executions start faster than one per `list_every` (then each list
        request stands in for at least one stream), or while this trigger's are being listed
        anyway; stream (or poll) otherwise."""
        every = self.settings.list_every
        if not every or not self.listing().can_list(item.trigger):
            return False
        return self.listing().listing(item.trigger) or self.start_rate() * every >= 1.0

    async def claim(self, limit: int, now: float) -> list[TrackedExecution]:
        return await self.store.claim_executions(self.owner, now, self.settings.lease, limit,
                                                 self.backlog)

    async def next_due(self) -> float | None:
        return await self.store.next_execution_due()

    async def release(self) -> None:
        await self.store.release_leases(self.owner)
        if self.lister is not None:
            await self.lister.close()
            self.lister = None
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    async def poisoned(self, item: TrackedExecution, exc: Exception) -> None:
        """A check that raised is checked again later, backing off; the tracking deadline ends
        it (timed_out) if it never succeeds."""
        await self._later(item, None)

    async def handle(self, item: TrackedExecution) -> None:
        now = self.clock()
        if now >= item.deadline_at:
            await self.finish(item.id, ExecutionResult(
                ExecutionStatus.TIMED_OUT, error="still unfinished at the tracking deadline"))
            return
        if item.checks == 0:
            self.started.append(time.monotonic())
        budget = min(self.settings.lease / 2, item.deadline_at - now)
        result: ExecutionResult | None
        if not self.use_listing(item):
            result = await self.follow_alone(item, budget)
        else:
            result = await self.listing().wait(item, budget)
            if result is None or result is FETCH:  # never shown in time, or ended without output
                result = await self.poll(item)
            elif result is UNSEEN:
                result = await self.follow_alone(item, budget - (self.clock() - now))
        if result is not None and result.terminal:
            await self.finish(item.id, result)
            return
        await self._later(item, result)

    async def follow_alone(self, item: TrackedExecution,
                           budget: float) -> ExecutionResult | None:
        """Its own stream while one may be opened (for up to `budget` seconds), then a poll if
        that did not tell its end."""
        result = None
        if (budget > 0 and item.id not in self.no_stream
                and self.open_streams < self.settings.max_streams):
            result = await self.follow_stream(item, budget)
        if result is None or not result.terminal:
            result = await self.poll(item) or result
        return result

    async def _later(self, item: TrackedExecution, result: ExecutionResult | None) -> None:
        delay = backoff(item.checks + 1, self.settings.poll_initial, 1.5, self.settings.poll_max)
        status = result.status if result is not None and result.status in (
            ExecutionStatus.PENDING, ExecutionStatus.RUNNING) else None
        now = self.clock()
        self.recheck()
        await self.store.reschedule_execution(item.id, self.owner, status,
                                              min(now + delay, item.deadline_at), now)

    async def finish(self, execution_id: str, result: ExecutionResult) -> bool:
        changed = await self.store.complete_execution(execution_id, result, self.clock(),
                                                      self.targets)
        self.no_stream.discard(execution_id)
        if changed:
            event_lines.info("execution finished", execution_id=execution_id, status=result.status)
        return changed

    async def follow_stream(self, item: TrackedExecution,
                            budget: float) -> ExecutionResult | None:
        """Read the SSE stream until a terminal event, an error, its end, or `budget` seconds."""
        self.open_streams += 1
        self.metrics.streams.set(self.open_streams)
        last: ExecutionResult | None = None
        deadline = time.monotonic() + budget
        try:
            async with self.client().stream("GET", f"/executions/{item.id}/stream",
                                            read_timeout=max(1.0, budget)) as response:
                if response.status != 200:
                    self.no_stream.add(item.id)
                    return None
                data: list[str] = []
                async for line in lines(response):
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        last = _event(data) or last
                        data = []
                        if last is not None and last.terminal:
                            return last
                    if time.monotonic() > deadline:
                        return last  # reopened on the next claim
            self.no_stream.add(item.id)  # ended without a terminal event: poll instead
        except HttpError as exc:
            log.info("stream dropped; polling", extra={"execution_id": item.id,
                                                        "error": str(exc)})
            self.no_stream.add(item.id)
        finally:
            self.open_streams -= 1
            self.metrics.streams.set(self.open_streams)
        return last

    async def poll(self, item: TrackedExecution) -> ExecutionResult | None:
        try:
            response = await self.client().request("GET", f"/executions/{item.id}")
        except HttpError as exc:
            log.info("poll failed", extra={"execution_id": item.id, "error": str(exc)})
            return None
        if response.status != 200:
            log.info("poll answered", extra={"execution_id": item.id,
                                             "status_code": response.status})
            return None
        try:
            return parse_result(response.json())
        except ValueError:
            return None


def _event(data: list[str]) -> ExecutionResult | None:
    try:
        return parse_result(json.loads("\n".join(data)))
    except ValueError:
        return None


class PushReceiver:
    """POST /platform/events: a Standard-Webhooks-signed execution state from the platform."""

    def __init__(self, config: Config, tracker: Tracker) -> None:
        self.tracker = tracker
        secret = config.platform.webhook_secret
        self.verifier = Standard(SourceConfig(name="platform", provider="standard",
                                              secrets=(secret,))) if secret else None

    async def handle(self, request: Request) -> JSONResponse:
        if self.verifier is None:
            raise NotFound("execution pushes are not enabled ([platform] webhook_secret)")
        headers = request_headers(request.scope)
        body = await read_body(request.receive, headers.get("content-length"), MAX_PUSH_BYTES)
        inbound = InboundRequest(headers, body)
        self.verifier.verify(inbound, self.tracker.clock())
        document = inbound.json()
        data = document.get("data", document) if isinstance(document, dict) else None
        execution_id = execution_id_of(data) or execution_id_of(document)
        result = parse_result(data) or parse_result(document)
        if execution_id is None or result is None:
            raise BadRequest("expected an execution id and status")
        if await self.tracker.store.get_execution(execution_id) is None:
            return JSONResponse({"execution_id": execution_id, "tracked": False})
        if not result.terminal:
            return JSONResponse({"execution_id": execution_id, "tracked": True,
                                 "completed": False})
        changed = await self.tracker.finish(execution_id, result)
        return JSONResponse({"execution_id": execution_id, "tracked": True,
                             "completed": True, "duplicate": not changed})
