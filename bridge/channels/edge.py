"""The edge's side of a channel: agents behind a firewall pull their events, and report back.

A route with `channel = "plant-a"` is not sent by this bridge's forwarder: its deliveries wait in
the outbox until an agent of that channel pulls them. Every call is made by the agent (it opens
only outbound connections); the edge never connects to it.

    POST /agent/v1/channels/{name}/pull    {"agent", "ack": [{...}], "refused": [{...}], "limit",
                                            "wait"}
    POST /agent/v1/channels/{name}/report  {"agent", "reports": [...]}

A pull first marks `ack` (`[{"delivery_id", "generation"}]`: what the agent has committed to its
own store) as handed off, then leases the next batch to the agent, in event order, waiting up to
`wait` seconds (a long poll) when nothing is due. A batch not acknowledged within the channel's
`lease` goes to any agent again: the agent drops what its store already holds, and the
platform's Idempotency-Key (the same key the edge would have sent) covers an agent that died
between forwarding and acknowledging.

Both directions are signed with the channel's secret (Standard Webhooks headers over the exact
body, timestamped): the edge's batches, so a TLS-intercepting proxy cannot alter one unnoticed,
and the agent's requests, so one that sees the bearer token still cannot write. Every ack and
report must answer a lease the agent holds (its id, and the delivery's generation): the rest is
ignored and counted (`bridge_channel_ignored`). A hand-off whose agent reports nothing within
the channel's `report_within` goes back to the channel. The rules are in docs/agent.md.

Agents authenticate with a bearer token of the channel. Tokens are kept only as SHA-256 digests,
compared in constant time against every digest, and swapped on reload, which is how one is
revoked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bridge import signing
from bridge.config import ChannelConfig, SourceConfig
from bridge.core.errors import BadRequest, BridgeError, NotFound
from bridge.core.metrics import Metrics
from bridge.core.models import (
    DELIVERY_ID,
    AgentAttempt,
    AgentCompletion,
    AgentReport,
    Attempt,
    CallbackTargets,
    finite_number,
    new_id,
)
from bridge.delivery.results import parse_result
from bridge.ingest.providers import InboundRequest
from bridge.ingest.providers.standard import Standard
from bridge.store.kinds import DELIVERIES
from bridge.store.records import ChannelBacklog
from bridge.store.roles import Channels
from bridge.web.asgi import read_body, request_headers
from bridge.web.throttle import Throttle

MAX_PULL_BODY = 1024 * 1024  # a pull is small: an agent id and acknowledged ids
MAX_REPORT_BODY = 16 * 1024 * 1024
MAX_REPORTS = 2000
MAX_BATCH = 5000
MAX_BATCH_BYTES = 4 * 1024 * 1024  # bodies per batch beyond the first
MAX_WAITING = 256  # long polls held open at once; beyond that, answered at once
MAX_WAIT = 60.0
CONNECTED_WITHIN = 10.0  # an agent that pulled within this many seconds is connected
_AGENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SIGNED_WITHIN = 300.0  # an agent's request signed longer ago (or ahead) than this is refused
log = logging.getLogger("bridge.edge")
_STATES = ("delivered", "waiting", "dead")


class AgentUnauthorized(BridgeError):
    status_code = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class Keys(NamedTuple):
    """A channel's credentials as the edge checks them."""

    tokens: list[bytes]  # SHA-256 digests of the agents' bearer tokens
    verifier: Standard  # the agents' request signatures

    @property
    def key(self) -> bytes:
        """The channel's signing key: the edge's batches and the agents' requests."""
        key: bytes = self.verifier.keys[0]
        return key


class Edge:
    def __init__(self, runtime: Any, store: Channels, clock: Callable[[], float] = time.time,
                 targets: Callable[[], CallbackTargets] = CallbackTargets,
                 metrics: Metrics | None = None, throttle: Throttle | None = None) -> None:
        self.throttle = throttle or Throttle()
        self.runtime = runtime  # .config is swapped on reload
        self.store = store
        self.clock = clock
        self.targets = targets  # the tracker's, current after a reload
        self.metrics = metrics or Metrics()
        self.waiting = 0
        self.changed = asyncio.Event()
        self._keys: tuple[object, dict[str, Keys]] = (None, {})
        store.watch(self._signal, frozenset({DELIVERIES}))

    def _signal(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def channels(self) -> dict[str, Keys]:
        """name -> its `Keys`, rebuilt when the config is swapped."""
        config = self.runtime.config
        if self._keys[0] is not config:
            table = {}
            for c in config.channels:
                secrets = (c.signing_secret,) if c.signing_secret else ()
                verifier = Standard(SourceConfig(name=f"channel {c.name}", provider="standard",
                                                 secrets=secrets, tolerance=SIGNED_WITHIN))
                table[c.name] = Keys([digest(t.reveal()) for t in c.tokens], verifier)
            self._keys = (config, table)
        return self._keys[1]

    def channel(self, name: str) -> ChannelConfig:
        for channel in self.runtime.config.channels:
            if channel.name == name:
                found: ChannelConfig = channel
                return found
        raise NotFound(f"no channel named {name!r}")

    def authorise(self, request: Request, name: str) -> Keys:
        """The channel's keys, once the bearer token is one of the channel's."""
        self.throttle.check(request)
        entry = self.channels().get(name)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        found = False
        if entry is not None:
            wanted = digest(given.strip())
            for token in entry.tokens:  # every digest compared, whatever matched
                found |= hmac.compare_digest(token, wanted)
        if scheme.lower() != "bearer" or not found or entry is None:
            self.throttle.failed(request, "agent token")
            raise AgentUnauthorized("a valid agent token for this channel is required")
        return entry

    async def signed(self, request: Request, keys: Keys, limit: int) -> dict[str, Any]:
        """The request's JSON object, once its signature (the channel's secret, over the exact
        body, within `SIGNED_WITHIN`) holds: a token alone writes nothing."""
        headers = request_headers(request.scope)
        raw = await read_body(request.receive, headers.get("content-length"), limit)
        try:
            keys.verifier.verify(InboundRequest(headers, raw), time.time())
        except BridgeError:
            self.throttle.failed(request, "agent signature")
            raise
        self.throttle.succeeded(request)
        return _json(raw)

    def ignored(self, channel: str, kind: str, count: int, agent: str) -> None:
        if count:
            self.metrics.channel_ignored.labels(channel, kind).inc(count)
            log.warning("agent %s ignored: they answer no lease of this agent", kind,
                        extra={"channel": channel, "agent": agent, "count": count})

    async def pull(self, request: Request) -> Response:
        name = request.path_params["name"]
        keys = self.authorise(request, name)
        channel = self.channel(name)
        data = await self.signed(request, keys, MAX_PULL_BODY)
        agent = _agent(data)
        acked = parse_acks(data.get("ack", []))
        refused = parse_acks(data.get("refused", []), "refused")
        limit = data.get("limit", 100)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_BATCH:
            raise BadRequest(f"limit: expected an integer from 0 to {MAX_BATCH}")
        wait = data.get("wait", 0)
        if not isinstance(wait, int | float) or isinstance(wait, bool) or not (
                0 <= wait <= MAX_WAIT):
            raise BadRequest(f"wait: expected seconds from 0 to {MAX_WAIT:g}")
        address = request.client.host if request.client else None
        deadline = time.monotonic() + (wait if self.waiting < MAX_WAITING else 0)
        self.waiting += 1
        try:
            while True:
                changed = self.changed
                pulled = await self.store.pull_channel(
                    name, agent, address, acked, self.clock(), channel.lease, limit,
                    MAX_BATCH_BYTES, channel.report_within, refused)
                if refused:
                    log.warning("an agent refused its batch: it does not verify what this edge "
                                "signs; back to the channel", extra={
                                    "channel": name, "agent": agent, "count": len(refused)})
                refused = []
                self.ignored(name, "acks", pulled.ignored, agent)
                items = pulled.items
                acked = []
                left = deadline - time.monotonic()
                if items or left <= 0 or limit == 0:
                    break
                if await request.is_disconnected():  # nobody to answer: lease nothing more
                    break
                # Woken by a commit here; the timeout covers commits by other processes.
                try:
                    await asyncio.wait_for(changed.wait(), min(left, 1.0))
                except TimeoutError:
                    pass
        finally:
            self.waiting -= 1
        body = json.dumps({
            "channel": name,
            "items": [{
                "delivery_id": i.delivery_id, "event_id": i.event_id, "route": i.route,
                "trigger": i.trigger, "idempotency_key": i.idempotency_key,
                "content_type": i.content_type, "generation": i.generation,
                "source": i.source, "provider": i.provider, "event_type": i.event_type,
                "received_at": i.received_at,
                "body": base64.b64encode(i.body).decode("ascii"),
            } for i in items],
        }, separators=(",", ":")).encode()
        headers = signing.headers(keys.key, new_id(), int(time.time()), body)
        return Response(body, 200, headers=headers, media_type="application/json")

    async def report(self, request: Request) -> Response:
        name = request.path_params["name"]
        keys = self.authorise(request, name)
        channel = self.channel(name)
        data = await self.signed(request, keys, MAX_REPORT_BODY)
        agent = _agent(data)
        raw = data.get("reports")
        if not isinstance(raw, list) or len(raw) > MAX_REPORTS:
            raise BadRequest(f"reports: expected a list of at most {MAX_REPORTS}")
        reports = [parse_report(item, i) for i, item in enumerate(raw)]
        now = self.clock()
        done = await self.store.channel_report(
            name, agent, reports, now, now + self.runtime.config.tracking.deadline,
            self.targets(), channel.report_within)
        self.ignored(name, "reports", done.ignored, agent)
        return JSONResponse({"received": len(reports), "applied": done.applied,
                             "ignored": done.ignored})

    async def overview(self, now: float) -> list[dict[str, Any]]:
        """Every configured channel: agents seen, what waits for them (events and seconds)."""
        stats, agents = await self.store.channel_stats()
        out = []
        for channel in self.runtime.config.channels:
            entry = stats.get(channel.name, ChannelBacklog())
            oldest = entry.oldest
            out.append({
                "name": channel.name,
                "lag": {"events": entry.waiting,
                        "seconds": round(max(0.0, now - oldest), 3) if oldest else 0.0},
                "handed_off": entry.handed_off,
                "agents": [{
                    "agent": a.agent, "address": a.address,
                    "connected": now - a.last_seen <= CONNECTED_WITHIN,
                    "last_seen": a.last_seen, "cursor": a.cursor, "acked": a.acked,
                } for a in agents if a.channel == channel.name],
            })
        return out


def parse_acks(raw: Any, field: str = "ack") -> list[tuple[str, float]]:
    """`[{"delivery_id", "generation"}]`: what the agent committed (`ack`), or refused
    (`refused`), each naming the lease (the delivery's generation) it answers."""
    if not isinstance(raw, list) or len(raw) > MAX_BATCH:
        raise BadRequest(f"{field}: expected at most {MAX_BATCH} entries")
    acks = []
    for item in raw:
        delivery_id = item.get("delivery_id") if isinstance(item, dict) else None
        generation = item.get("generation") if isinstance(item, dict) else None
        if not (isinstance(delivery_id, str) and DELIVERY_ID.match(delivery_id)
                and finite_number(generation)):
            raise BadRequest(f"{field}: expected objects with a delivery_id and its generation")
        acks.append((delivery_id, float(generation)))
    return acks


def parse_report(item: Any, index: int) -> AgentReport:
    where = f"reports[{index}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where}: expected an object")
    kind = item.get("kind")
    if kind == "execution":
        execution_id = item.get("execution_id")
        result = parse_result(item.get("result"))
        if not isinstance(execution_id, str) or not execution_id or result is None:
            raise BadRequest(f"{where}: expected execution_id and a result with a status")
        if not result.terminal:
            raise BadRequest(f"{where}: only finished executions are reported")
        return AgentCompletion(execution_id[:200], result)
    if kind != "attempt":
        raise BadRequest(f"{where}.kind: expected 'attempt' or 'execution'")
    delivery_id, generation = item.get("delivery_id"), item.get("generation")
    state, attempt = item.get("state"), item.get("attempt")
    if not (isinstance(delivery_id, str) and finite_number(generation)
            and state in _STATES and isinstance(attempt, dict)):
        raise BadRequest(f"{where}: expected delivery_id, generation, state and attempt")
    started, latency = attempt.get("started_at"), attempt.get("latency_ms")
    if not isinstance(started, int | float) or not isinstance(latency, int | float):
        raise BadRequest(f"{where}.attempt: expected started_at and latency_ms")
    code = attempt.get("status_code")
    execution_id = item.get("execution_id")
    return AgentAttempt(
        delivery_id[:64], float(generation), state,
        Attempt(delivery_id[:64], float(started), float(latency),
                _text(attempt.get("outcome"), 32) or "unknown",
                code if isinstance(code, int) and not isinstance(code, bool) else None,
                _text(attempt.get("error"), 2000), _text(attempt.get("response_excerpt"), 512)),
        _text(execution_id, 200), bool(item.get("tracked")))


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _agent(data: dict[str, Any]) -> str:
    agent = data.get("agent")
    if not isinstance(agent, str) or not _AGENT_ID.match(agent):
        raise BadRequest("agent: expected the agent's id (letters, digits, '_.:-', at most 64)")
    return agent


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("expected a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("expected a JSON object")
    return data
