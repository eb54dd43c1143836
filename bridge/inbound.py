"""POST /hooks/{source}: bounded body -> verify -> identify -> store (durable) -> ack."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import zlib
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bridge import outbox
from bridge.config import Config, is_http_url
from bridge.errors import (
    BadRequest,
    BridgeError,
    CallbackNotAllowed,
    MalformedSignature,
    PayloadTooLarge,
    SignatureError,
    UnknownSource,
    UnsupportedMediaType,
)
from bridge.metrics import Metrics
from bridge.models import NewDelivery, VerifiedEvent, new_id
from bridge.providers import InboundRequest, Provider
from bridge.relay import check_literal
from bridge.status import StatusTokens, public_view, settled
from bridge.store import Store

log = logging.getLogger("bridge.inbound")
MAX_WAIT = 60.0

# Never stored or forwarded: credentials, signatures, and hop-by-hop framing.
_DROP_EXACT = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "host", "connection",
    "content-length", "transfer-encoding", "keep-alive", "te", "upgrade", "expect",
    "content-encoding",  # the stored body is the decoded one
})
_DROP_WORDS = ("signature", "token", "secret", "hmac", "api-key", "apikey", "password")


@functools.lru_cache(maxsize=4096)
def _keep(name: str) -> bool:
    return name not in _DROP_EXACT and not any(word in name for word in _DROP_WORDS)


def kept_headers(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if _keep(name)}


def request_headers(request: Request) -> dict[str, str]:
    """Lower-cased headers; a repeated header's values are joined with ', ' (RFC 9110)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in request.scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body; past `limit` bytes stop reading and answer 413."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_body(body: bytes, encoding: str | None, allowed: bool, limit: int) -> bytes:
    """Undo `Content-Encoding: gzip` where the source allows it, never producing more than
    `limit` bytes (a zip bomb is refused with 413 as soon as it passes the limit)."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    if encoding.strip().lower() != "gzip" or not allowed:
        raise UnsupportedMediaType(f"Content-Encoding {encoding.strip()[:20]!r} is not accepted "
                                   "by this source")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise BadRequest("the body is not valid gzip") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body exceeds {limit} bytes")
    if not inflater.eof:
        raise BadRequest("the gzip body is truncated")
    return out


def idempotency_key(source: str, provider_id: str | None, body: bytes) -> str:
    if provider_id:
        return f"{source}:{provider_id}"
    return f"{source}:sha256:{hashlib.sha256(body).hexdigest()}"


class Runtime:
    """What a config reload (SIGHUP) swaps at once: the config and the verifiers built from it.
    `failures` remembers each source's last verification failure (reason only) for operators;
    it lives in memory, so an attacker's bad signatures never cost a write."""

    def __init__(self, config: Config, providers: dict[str, Provider]) -> None:
        self.config = config
        self.providers = providers
        self.failures: dict[str, dict[str, Any]] = {}


class Inbound:
    def __init__(self, runtime: Runtime, store: Store, tokens: StatusTokens,
                 metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.store = store
        self.tokens = tokens
        self.metrics = metrics
        self.clock = clock

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def __call__(self, request: Request) -> Response:
        name = request.path_params["source"]
        provider = self.runtime.providers.get(name)
        if provider is None:
            log.warning("rejected", extra={"source": name[:64], "outcome": "rejected",
                                           "reason": UnknownSource.code})
            raise UnknownSource(f"no source named {name!r}")
        started = time.perf_counter()
        self.metrics.received.labels(name).inc()
        try:
            response = await self.handle(request, name, provider)
        except BridgeError as exc:
            log.warning("rejected", extra={"source": name, "outcome": "rejected",
                                           "reason": exc.code})
            self.metrics.rejected.labels(name, exc.code).inc()
            if isinstance(exc, SignatureError | MalformedSignature):
                self.runtime.failures[name] = {"reason": f"{exc.code}: {exc.message}",
                                               "at": self.clock()}
            raise
        finally:
            self.metrics.request_seconds.labels(name).observe(time.perf_counter() - started)
        return response

    async def handle(self, request: Request, name: str, provider: Provider) -> Response:
        source = provider.source
        limit = source.max_body_bytes or self.config.server.max_body_bytes
        body = await read_body(request, limit)
        headers = request_headers(request)
        body = decode_body(body, headers.get("content-encoding"), source.gzip, limit)
        url = self.config.public_url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        inbound = InboundRequest(headers, body, url, request.method)
        now = self.clock()
        provider.verify(inbound, now)
        callback_url = self.callback_url(request, source)
        wait = self.wait_seconds(request)
        challenge = provider.handshake(inbound)
        if challenge is not None:
            status, extra, content = challenge
            return Response(content, status, headers=extra)
        identity = provider.identify(inbound)
        event = VerifiedEvent(
            id=new_id(), source=name, provider=source.provider,
            event_type=identity.event_type,
            idempotency_key=idempotency_key(name, identity.provider_id, body),
            received_at=now, headers=kept_headers(headers), body=body,
            callback_url=callback_url,
            items=tuple(f"{name}:{item}" for item in identity.items), nonce=identity.nonce,
        )
        routes = outbox.matching(self.config.routes, name, event.event_type)
        max_key = self.config.platform.idempotency_key_max_length

        def deliveries(seen: frozenset[str]) -> list[NewDelivery]:
            return [outbox.render(event, route, max_key, seen) for route in routes]

        accepted = await self.store.accept(event, deliveries if event.items else deliveries(
            frozenset()))
        counter = self.metrics.duplicates if accepted.duplicate else self.metrics.accepted
        counter.labels(name).inc()
        outcome = "duplicate" if accepted.duplicate else "accepted"
        log.info(outcome, extra={"source": name, "event_id": accepted.event_id,
                                 "idempotency_key": event.idempotency_key,
                                 "event_type": event.event_type, "outcome": outcome,
                                 "routes": len(routes)})
        payload: dict[str, Any] = {
            "id": accepted.event_id,
            "idempotency_key": event.idempotency_key,
            "duplicate": accepted.duplicate,
            "status_url": f"{self.config.public_url}/events/{self.tokens.make(accepted.event_id)}",
        }
        if wait:
            outcome_view = await self.wait_for(accepted.event_id, wait)
            if outcome_view is not None:
                return JSONResponse({**payload, **outcome_view}, 200)
        return JSONResponse(payload, 200 if accepted.duplicate else 202)

    def callback_url(self, request: Request, source: Any) -> str | None:
        url = request.query_params.get("callback_url")
        if url is None:
            return None
        if not source.allow_callback_urls:
            raise CallbackNotAllowed("this source does not accept callback_url")
        if not is_http_url(url) or not any(
                fnmatchcase(url, glob) for glob in source.allow_callback_urls):
            raise CallbackNotAllowed("callback_url is not allowed for this source")
        check_literal(url, self.config.callbacks.allow_private)
        return url

    @staticmethod
    def wait_seconds(request: Request) -> float:
        raw = request.query_params.get("wait")
        if raw is None:
            return 0.0
        try:
            seconds = float(raw)
        except ValueError:
            raise BadRequest("wait must be a number of seconds") from None
        if not 0 <= seconds <= MAX_WAIT:
            raise BadRequest(f"wait must be between 0 and {MAX_WAIT:.0f} seconds")
        return seconds

    async def wait_for(self, event_id: str, seconds: float) -> dict[str, Any] | None:
        """Hold the (already acknowledged-durable) request until the event's executions end;
        None on timeout. Polls the store, so it works whichever process does the work."""
        deadline = time.monotonic() + seconds
        pause = 0.05
        while True:
            event = await self.store.get_event(event_id)
            if event is not None and settled(event):
                view = public_view(event)
                return {"state": view["state"], "deliveries": view["deliveries"]}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(pause, remaining))
            pause = min(0.5, pause * 1.5)
