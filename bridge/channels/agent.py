"""The agent: delivers a channel's events inside a private network that accepts no connection.

`bridge agent --config agent.toml` opens only outbound connections, to the edge named in
`[edge]` (through `HTTPS_PROXY` / `HTTP_PROXY` when set), and listens only on loopback, for
`/healthz`, `/readyz` and `/metrics`. Two loops talk to the edge:

- `Puller` asks for the next batch (a long poll), checks the edge's signature over the exact
  bytes and every field of every item as the edge checks its own config (`check_item`: trigger
  names, sizes, no more items than asked), commits every event to the agent's own store, and
  only then acknowledges the batch, with its next pull, naming each delivery's generation. An
  agent killed in between gets the same batch again (the edge re-offers what is still leased
  to it first) and its store drops what it already holds. The local event's
  idempotency key names the edge's delivery and its generation (a redrive at the edge starts a
  new one), so a redriven delivery is sent again.
- `Reporter` sends the store's journal (every attempt, and every finished execution, written in
  the same transaction that recorded it) to the edge, oldest first, and drops what the edge took.

Every request to the edge is signed with the channel's secret (Standard Webhooks headers over the
exact body), as the edge signs its batches: a proxy that sees the bearer token cannot write.

From the store on, it is the bridge: the forwarder sends each delivery to the on-premises
platform with the edge's own Idempotency-Key, the tracker follows the execution and the relay
sends the agent's own `[callbacks] urls`. A second agent on the same channel, with its own store,
shares the work through the edge's leases.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import __version__, signing
from bridge.callbacks.relay import Relay
from bridge.config import SOURCE_NAME, TRIGGER_NAME, Config, SourceConfig, mask_url
from bridge.core.errors import BridgeError, SignatureError, StoreUnavailable
from bridge.core.metrics import CONTENT_TYPE, Metrics
from bridge.core.models import DELIVERY_ID, NewDelivery, VerifiedEvent, finite_number, new_id
from bridge.core.retry import backoff
from bridge.core.supervisor import Supervisor
from bridge.delivery.forwarder import Forwarder
from bridge.ingest.providers import InboundRequest
from bridge.ingest.providers.standard import Standard
from bridge.store import Store, open_store
from bridge.store.kinds import JOURNAL
from bridge.tracking.tracker import Tracker
from bridge.web.client import Client, HttpError, Reply

log = logging.getLogger("bridge.agent")
MAX_BATCH_ANSWER = 64 * 1024 * 1024  # a batch's JSON: 4 MiB of bodies (base64), or one big one
REPORT_BATCH = 500
BACKOFF_MAX = 30.0


class BatchRefused(Exception):
    """A batch that did not come from the edge as sent: nothing of it is stored."""


def local_key(channel: str, delivery_id: str, generation: float) -> str:
    return f"edge/{channel}/{delivery_id}/{generation!r}"


def parse_local_key(key: str) -> tuple[str, float] | None:
    """(edge delivery id, generation) from a local event's key; None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "edge":
        return None
    try:
        return parts[2], float(parts[3])
    except ValueError:
        return None


# What one item of a batch may hold: each field as the edge's config and store make it.
_FIELDS = {"delivery_id": DELIVERY_ID,
           "event_id": DELIVERY_ID,  # the same shape: both are `new_id()`s
           "trigger": TRIGGER_NAME,
           "route": re.compile(r"^[^\x00-\x1f\x7f]{1,200}$"),
           "idempotency_key": re.compile(r"^[\x21-\x7e]{1,512}$"),
           "content_type": re.compile(r"^[\x20-\x7e]{1,200}$"),
           "source": SOURCE_NAME,
           "provider": re.compile(r"^[a-z0-9_-]{1,64}$"),
           "event_type": re.compile(r"^[^\x00]{0,500}$")}


def check_item(item: Any, index: int) -> dict[str, Any]:
    """One item of a signed batch, checked field by field before anything of it is stored or
    sent: a fake edge holding the secret still cannot name a trigger outside
    `/workflows/triggers/`, nor an oversized or malformed field. Raises `BatchRefused`."""
    where = f"items[{index}]"
    if not isinstance(item, dict):
        raise BatchRefused(f"{where}: expected an object")
    for name, rule in _FIELDS.items():
        value = item.get(name)
        if not isinstance(value, str) or not rule.match(value):
            raise BatchRefused(f"{where}.{name}: not a valid value")
    for name in ("generation", "received_at"):
        if not finite_number(item.get(name)):
            raise BatchRefused(f"{where}.{name}: expected a number")
    body = item.get("body")
    if not isinstance(body, str) or len(body) > MAX_BATCH_ANSWER:
        raise BatchRefused(f"{where}.body: expected base64")
    try:
        item["raw"] = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BatchRefused(f"{where}.body: expected base64") from None
    return item


class Link:
    """The agent's HTTP client to its edge, and what it last knew of the connection."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        edge = config.edge
        assert edge is not None
        self.edge = edge
        self.metrics = metrics
        context = None
        if edge.ca_file:
            context = ssl.create_default_context(cafile=edge.ca_file)
        self.client = Client(4, timeout=edge.wait + 30.0, max_body=MAX_BATCH_ANSWER,
                             base_url=edge.url, ssl_context=context, headers={
                                 "Authorization": f"Bearer {edge.token.reveal()}",
                                 "User-Agent": f"webhook-bridge-agent/{__version__}",
                                 "Content-Type": "application/json"})
        self.key = signing.decode_secret(edge.signing_secret.reveal())  # signs every request
        self.connected: bool | None = None  # unknown until the first answer

    def path(self, action: str) -> str:
        return f"/agent/v1/channels/{self.edge.channel}/{action}"

    async def post(self, action: str, payload: dict[str, Any]) -> Reply:
        body = json.dumps(payload).encode()
        return await self.client.request("POST", self.path(action), body=body,
                                         headers=signing.headers(self.key, new_id(),
                                                                   int(time.time()), body))

    def up(self) -> None:
        if self.connected is not True:
            log.info("connected to the edge", extra={"edge": self.edge.url,
                                                      "channel": self.edge.channel})
        self.connected = True
        self.metrics.agent_connected.set(1)

    def down(self, reason: str) -> None:
        if self.connected is not False:
            log.warning("not connected to the edge; retrying", extra={
                "edge": self.edge.url, "channel": self.edge.channel, "reason": reason})
        self.connected = False
        self.metrics.agent_connected.set(0)


def refusal(reply: Reply) -> str:
    try:
        error = reply.json().get("error", {})
        return f"{reply.status} {error.get('code')}: {error.get('message')}"
    except (ValueError, AttributeError):
        return f"{reply.status}: {reply.text(200)}"


class Loop:
    """Start/stop and backoff shared by the two loops."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.stopping = asyncio.Event()
        self.failures = 0  # in a row; any success sets it back to 0

    async def pause(self) -> None:
        """Wait before trying again: 0.5 s doubling to 30 s, with jitter."""
        self.failures += 1
        delay = backoff(self.failures, 0.5, 2.0, BACKOFF_MAX, "equal")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)

    async def stop(self) -> None:
        self.stopping.set()


class Puller(Loop):
    def __init__(self, config: Config, store: Store, link: Link, agent_id: str,
                 metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        edge = config.edge
        assert edge is not None
        self.edge = edge
        self.store = store
        self.link = link
        self.agent_id = agent_id
        self.metrics = metrics
        self.verifier = Standard(SourceConfig(name="edge", provider="standard",
                                              secrets=(edge.signing_secret,),
                                              tolerance=edge.tolerance))

    async def run(self) -> None:
        acked: list[dict[str, Any]] = []  # committed here; the edge learns it with the next pull
        while not self.stopping.is_set():
            request = {"agent": self.agent_id, "ack": acked, "limit": self.edge.batch_size,
                       "wait": self.edge.wait}
            try:
                reply = await self.link.post("pull", request)
            except HttpError as exc:
                self.link.down(str(exc))
                await self.pause()
                continue
            if reply.status != 200:
                reason = refusal(reply)
                if reply.status in (401, 403, 404):
                    log.error("the edge refused this agent", extra={"reason": reason})
                self.link.down(reason)
                await self.pause()
                continue
            try:
                items = self.verify(reply)
            except BatchRefused as exc:
                self.metrics.agent_batches.labels("refused").inc()
                log.error("batch refused: it is not what the edge signed; " + (
                    "check this machine's clock (the batch's time is outside [edge] tolerance)"
                    if "timestamp" in str(exc) else "check [edge] signing_secret against the "
                    "channel's signing_secret on the edge"), extra={"reason": str(exc)})
                acked = []  # the edge answered this pull, so it applied the acknowledgement
                await self.give_back(reply)
                await self.pause()
                continue
            self.link.up()
            acked = []  # the edge answered this pull, so it applied the acknowledgement
            if not items:
                self.failures = 0
                continue
            try:
                await self.commit(items)
            except (StoreUnavailable, BridgeError) as exc:
                log.error("could not store a batch; it will come again", extra={
                    "reason": str(exc), "events": len(items)})
                self.metrics.agent_batches.labels("store_failed").inc()
                await self.pause()
                continue
            self.failures = 0
            self.metrics.agent_batches.labels("stored").inc()
            acked = [{"delivery_id": item["delivery_id"], "generation": item["generation"]}
                     for item in items]

    async def give_back(self, reply: Reply) -> None:
        """Hand a refused batch's leases back at once (a pull that takes nothing), so another
        agent, one with the right secret, gets them now rather than when the lease runs out.
        The ids are read from the batch nobody verified: the edge releases only leases this
        agent holds, of the generation named, so a forged list can release nothing else."""
        try:
            items = json.loads(reply.body)["items"]
            refused = [{"delivery_id": i["delivery_id"], "generation": i["generation"]}
                       for i in items[:self.edge.batch_size]]
        except (ValueError, KeyError, TypeError):
            return
        with contextlib.suppress(HttpError):
            await self.link.post("pull", {"agent": self.agent_id, "ack": [],
                                          "refused": refused, "limit": 0, "wait": 0})

    def verify(self, reply: Reply) -> list[dict[str, Any]]:
        headers = {k.lower(): v for k, v in reply.headers.items()}
        try:
            self.verifier.verify(InboundRequest(headers, reply.body), time.time())
        except SignatureError as exc:
            raise BatchRefused(exc.message) from None
        if reply.truncated:
            raise BatchRefused("the batch was larger than an agent accepts")
        try:
            data = json.loads(reply.body)
            items = data["items"]
            if data.get("channel") != self.edge.channel or not isinstance(items, list):
                raise ValueError("another channel's batch")
        except (ValueError, KeyError, TypeError) as exc:
            raise BatchRefused(f"malformed batch ({exc.__class__.__name__})") from None
        if len(items) > self.edge.batch_size:
            raise BatchRefused(f"{len(items)} items where at most {self.edge.batch_size} "
                               "were asked for")
        return [check_item(item, i) for i, item in enumerate(items)]

    async def commit(self, items: list[dict[str, Any]]) -> None:
        """Every event of the batch durable in this agent's store (concurrent accepts are
        committed together by the store's writer)."""
        now = self.clock()
        channel = self.edge.channel
        results = await asyncio.gather(*(self.store.accept(
            VerifiedEvent(
                id=new_id(), source=str(item["source"]), provider=str(item["provider"]),
                event_type=str(item["event_type"]),
                idempotency_key=local_key(channel, item["delivery_id"],
                                          float(item["generation"])),
                received_at=now,
                headers={"x-edge-event-id": str(item["event_id"]),
                         "x-edge-delivery-id": str(item["delivery_id"])},
                body=item["raw"]),
            [NewDelivery(str(item["route"]), str(item["trigger"]),
                         str(item["idempotency_key"]), item["raw"],
                         str(item["content_type"]))]) for item in items))
        fresh = sum(1 for r in results if not r.duplicate)
        self.metrics.agent_events.labels("stored").inc(fresh)
        self.metrics.agent_events.labels("duplicate").inc(len(results) - fresh)


class Reporter(Loop):
    def __init__(self, store: Store, link: Link, agent_id: str, metrics: Metrics,
                 clock: Callable[[], float] = time.time, poll_interval: float = 1.0) -> None:
        super().__init__(clock)
        self.store = store
        self.link = link
        self.agent_id = agent_id
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.wake = asyncio.Event()
        store.watch(self.wake.set, frozenset({JOURNAL}))

    async def run(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()
            try:
                rows = await self.store.read_journal(REPORT_BATCH)
            except StoreUnavailable:
                await self.pause()
                continue
            if not rows:
                await self._idle()
                continue
            reports = [r for r in (translate(row.body) for row in rows) if r is not None]
            try:
                reply = await self.link.post("report", {"agent": self.agent_id,
                                                        "reports": reports})
            except HttpError as exc:
                self.link.down(str(exc))
                await self.pause()
                continue
            if reply.status == 400:  # a report the edge cannot use: a bug, not an outage
                log.error("the edge refused reports; dropped", extra={
                    "reason": refusal(reply), "reports": len(reports)})
            elif reply.status != 200:
                self.link.down(refusal(reply))
                await self.pause()
                continue
            try:
                await self.store.drop_journal([row.id for row in rows])
            except StoreUnavailable:
                await self.pause()
                continue
            self.failures = 0
            self.metrics.agent_reports.inc(len(reports))
            log.debug("reported", extra={"reports": len(reports), "answer": reply.text(200)})

    async def _idle(self) -> None:
        wake = asyncio.ensure_future(self.wake.wait())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({wake, stop}, timeout=self.poll_interval,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            stop.cancel()


def translate(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """A journal entry as the edge's report; None for events that did not come from it."""
    if body.get("kind") == "execution":
        return {"kind": "execution", "execution_id": body["execution_id"],
                "result": body["result"]}
    origin = parse_local_key(body.get("key") or "")
    if origin is None:
        return None
    return {"kind": "attempt", "delivery_id": origin[0], "generation": origin[1],
            "state": body["state"], "execution_id": body.get("execution_id"),
            "tracked": body.get("tracked", False), "attempt": body["attempt"]}


def create_agent(config: Config, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The agent as an ASGI app: its loops run in the lifespan; the routes are for operators
    on the same host."""
    assert config.edge is not None
    store = open_store(config.store)
    store.journaling = True
    metrics = Metrics()
    rng = random.Random()
    tracking = config.tracking.enabled and config.platform.api_key is not None
    forwarder = Forwarder(config, store, clock=clock, rng=rng, metrics=metrics,
                          track_deadline=config.tracking.deadline if tracking else None)
    tracker = Tracker(config, store, clock=clock, metrics=metrics)
    relay = Relay(config, store, clock=clock, rng=rng, metrics=metrics)
    link = Link(config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        agent_id = await store.instance_id()
        puller = Puller(config, store, link, agent_id, metrics, clock)
        reporter = Reporter(store, link, agent_id, metrics, clock)
        app.state.store = store
        app.state.link = link
        supervisor = Supervisor()
        for loop in (forwarder, relay, puller, reporter, *((tracker,) if tracking else ())):
            supervisor.start(loop)
        log.info("agent started", extra={"edge": config.edge.url if config.edge else None,
                                          "channel": config.edge.channel if config.edge else None,
                                          "agent": agent_id,
                                          "store": mask_url(config.store.url or "")
                                          or config.store.path})
        try:
            yield
        finally:
            await supervisor.stop()
            await link.client.aclose()
            await store.close()
            log.info("agent stopped")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "edge_connected": link.connected})

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.wait_for(store.check_writable(), 3.0)
        except (StoreUnavailable, TimeoutError):
            return JSONResponse({"status": "not_ready", "reason": "the store is not writable"},
                                503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "edge_connected": link.connected})

    async def scrape(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/metrics", scrape)], lifespan=lifespan)
