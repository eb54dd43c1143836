"""POST /hooks/{source}: bounded body -> verify -> identify -> store (durable) -> ack.

This is the one path that runs for every webhook, so it is a plain ASGI handler: `Hooks` sits in
front of the Starlette router and takes `POST /hooks/{source}` straight to `Inbound`, which
reads the body from `receive`, answers with one `send` of prebuilt bytes, and writes its log
line without building a LogRecord. Everything else goes through the router as usual.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from bridge.config import Config
from bridge.core import codec, logs
from bridge.core.errors import (
    BadRequest,
    BridgeError,
    CallbackNotAllowed,
    MalformedSignature,
    PayloadTooLarge,
    ReplayedToken,
    SignatureError,
    StoreUnavailable,
    UnknownSource,
    UnsupportedMediaType,
    error_body,
)
from bridge.core.metrics import Metrics, SourceTally
from bridge.core.models import VerifiedEvent, new_id
from bridge.ingest import routing as outbox
from bridge.ingest.providers import InboundRequest, Provider
from bridge.ingest.status_links import StatusTokens, public_view, settled
from bridge.store.roles import Ingest
from bridge.web.asgi import (
    Answer,
    ASGIApp,
    Disconnected,
    Receive,
    Scope,
    Send,
    error_answer,
    json_answer,
    raw_answer,
    read_body,
    request_headers,
    send_answer,
    unstorable,
)
from bridge.web.guard import allowed, canonical_url, check_literal

log = logging.getLogger("bridge.inbound")
MAX_WAIT = 60.0
MAX_WAITERS = 256  # requests held open by ?wait= at once; past it, answered without waiting
# A batch's deliveries are rendered again when a concurrent batch sharing items landed first;
# past this many tries the sender gets a 503 and retries (their items keep changing under it).
RENDER_TRIES = 5
REJECTIONS_KEPT = 100  # requests refused at the door, remembered for the console

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


def kept_headers(headers: dict[str, str], drop: frozenset[str] = frozenset(),
                 secrets: frozenset[str] = frozenset()) -> dict[str, str]:
    """The headers stored with an event and forwarded in its envelope: none that carries a
    credential, by its name, by the source's configuration (`drop`), or by its value (equal to
    a configured secret, alone or after a scheme such as `Bearer `)."""
    return {name: value for name, value in headers.items()
            if _keep(name) and name not in drop and value not in secrets
            and value.rpartition(" ")[2] not in secrets}


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


MAX_ID = 200


def safe_id(value: str) -> str:
    """A provider's id as it may appear in a key (and so in an outbound header): itself when it
    is printable ASCII of reasonable length, else a hash of it."""
    if len(value) <= MAX_ID and value.isascii() and value.isprintable() and \
            value.strip() == value:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def storable(text: str) -> str:
    """Text from a body as every store can hold it, on both stores alike: a NUL (which
    PostgreSQL's text cannot hold) becomes U+FFFD, and a lone surrogate (which JSON's
    `\\ud800` gives and no UTF-8 can encode) a question mark."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return codec.without_nul(text)


def idempotency_key(source: str, provider_id: str | None, body: bytes) -> str:
    if provider_id:
        return f"{source}:{safe_id(provider_id)}"
    return f"{source}:sha256:{hashlib.sha256(body).hexdigest()}"


def fingerprint_key(source: str, event_type: str, signed: bytes) -> bytes:
    """Where a scheme signs no id, the source, the event type and the signed content name the
    event too: a request whose fingerprint was seen is a duplicate whatever its unsigned id
    says. (The type is part of it: Shopify sends one order body under several topics.) The
    first 128 bits of a SHA-256: small in the index, and no collision in any store's lifetime."""
    digest = hashlib.sha256(source.encode())
    digest.update(b"\0" + event_type.encode() + b"\n")
    digest.update(signed)
    return digest.digest()[:16]


def newline_hint(provider: Provider, request: InboundRequest, now: float,
                 error: SignatureError) -> SignatureError:
    """`error`, saying so when the body would verify with a trailing newline added or removed:
    the usual slip when a signed body is sent with `curl -d` or from an editor."""
    body = request.body
    other = body.rstrip(b"\r\n") if body.endswith(b"\n") else body + b"\n"
    try:
        provider.verify(InboundRequest(request.headers, other, request.url, request.method), now)
    except BridgeError:
        return error
    change = "without its trailing newline" if body.endswith(b"\n") else "with a trailing newline"
    return SignatureError(f"{error.message}; it would match the body {change}: send the body "
                          "byte for byte (curl --data-binary @file)")


def secret_hint(source: Any, error: SignatureError) -> SignatureError:
    """A signature that does not match names what to check: this source's `secret` (the key
    path, never the value). A slip of the body's bytes was named already (`newline_hint`)."""
    if not error.message.endswith("does not match"):
        return error
    return SignatureError(f"{error.message}: check the secret of sources[{source.index}] (source "
                          f"{source.name!r}) against the signing secret the provider shows for "
                          "this webhook; while rotating, list both (secrets = [new, old])")


class Runtime:
    """What a config reload (SIGHUP) swaps at once: the config and the verifiers built from it.
    `failures` remembers each source's last verification failure (reason only) for operators,
    and `rejections` the last requests refused at the door, of any source; both live in memory,
    so an attacker's bad requests never cost a write (and only push older ones out)."""

    def __init__(self, config: Config, providers: dict[str, Provider]) -> None:
        self.failures: dict[str, dict[str, Any]] = {}
        self.rejections: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=REJECTIONS_KEPT)
        self.swap(config, providers)

    def swap(self, config: Config, providers: dict[str, Provider]) -> None:
        self.config = config
        self.providers = providers
        self.secrets = frozenset(config.secrets())  # header values never stored


class Inbound:
    def __init__(self, runtime: Runtime, store: Ingest, tokens: StatusTokens,
                 metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.store = store
        self.tokens = tokens
        self.metrics = metrics
        self.clock = clock
        self.waiting = 0
        self.secrets_learned: dict[str, str] = {}  # source -> the secret its handshake gave
        self.lines = logs.EventLines("bridge.inbound",  # names and ids of our own making
                                     trusted=("source", "event_id", "outcome"))

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        try:
            answer = await self.answer(path[path.rindex("/") + 1:], scope, receive)
        except Disconnected:
            return
        await send_answer(send, answer)

    async def learned(self, name: str, provider: Provider, inbound: InboundRequest,
                      now: float) -> Answer | None:
        """A provider that hands over its secret (Asana): its handshake, answered and its
        secret kept in the store, only while the source accepts one; or an event, verified
        with the secret learned (the replicas' cache is read again once when it does not
        verify: another replica may have learned a new one). None once verified."""
        offered = provider.offered_secret(inbound)
        if offered is not None:
            if not provider.accepts_handshake:
                raise SignatureError("a handshake may not replace this source's secret: set "
                                     "accept_handshake = true on it while registering the "
                                     "webhook, then remove it")
            await self.store.learn_secret(name, offered, now)
            self.remember_secret(name, offered)
            log.warning("secret learned in a handshake", extra={"source": name})
            return raw_answer(200, b"", {"x-hook-secret": offered})
        cached = self.secrets_learned.get(name)
        if cached is not None:
            try:
                provider.verify_learned(inbound, [*provider.keys, cached.encode()])
                return None
            except SignatureError:
                pass  # another replica may have learned a new one: read it once
        secret = await self.store.learned_secret(name)
        if secret is not None:
            self.remember_secret(name, secret)
        keys = [*provider.keys, *([secret.encode()] if secret else [])]
        if not keys:
            raise SignatureError("no secret yet: this source learns it in the provider's "
                                 "handshake (set accept_handshake = true, then register "
                                 "the webhook)")
        provider.verify_learned(inbound, keys)
        return None

    def remember_secret(self, name: str, secret: str) -> None:
        """A learned secret, cached for the next events and masked in every log line."""
        self.secrets_learned[name] = secret
        logs.REDACTOR.set_secrets({*logs.REDACTOR.secrets, secret})

    def answers_get(self, path: str) -> bool:
        provider = self.runtime.providers.get(path[path.rindex("/") + 1:])
        return provider is not None and provider.answers_get

    def challenge(self, scope: Scope) -> Answer:
        """A provider's URL check (GET, or HEAD without the body): answered from the request
        alone, with nothing stored. A check whose own credential is wrong (Meta's verify
        token) is refused and counted like a bad signature."""
        path: str = scope["path"]
        name = path[path.rindex("/") + 1:]
        provider = self.runtime.providers[name]
        url = self.config.public_url + path
        raw_query = scope.get("query_string", b"").decode("latin-1")
        if raw_query:
            url += "?" + raw_query
        try:
            status, extra, content = provider.challenge(
                InboundRequest(request_headers(scope), b"", url, scope["method"]))
        except BridgeError as exc:
            log.warning("rejected", extra={"source": name, "outcome": "rejected",
                                           "reason": exc.code})
            self.metrics.rejected.labels(name, exc.code).inc()
            self.runtime.failures[name] = {"reason": f"{exc.code}: {exc.message}",
                                           "at": self.clock()}
            return error_answer(exc)
        log.info("url check answered", extra={"source": name, "method": scope["method"]})
        if scope["method"] == "HEAD":
            status, _, out = raw_answer(status, content, extra)
            return status, b"", out
        return raw_answer(status, content, extra)

    async def answer(self, name: str, scope: Scope, receive: Receive) -> Answer:
        provider = self.runtime.providers.get(name)
        if provider is None:
            log.warning("rejected", extra={"source": name[:64], "outcome": "rejected",
                                           "reason": UnknownSource.code})
            return error_answer(UnknownSource(f"no source named {name!r}"))
        meters = self.metrics.inbound.source(name)
        started = time.perf_counter()
        meters.received += 1
        try:
            return await self.handle(scope, receive, name, provider, meters)
        except BridgeError as exc:
            log.warning("rejected", extra={"source": name, "outcome": "rejected",
                                           "reason": exc.code})
            self.metrics.rejected.labels(name, exc.code).inc()
            self.runtime.rejections.append({"at": self.clock(), "source": name,
                                            "status": exc.status_code,
                                            "reason": f"{exc.code}: {exc.message}"[:300]})
            if isinstance(exc, SignatureError | MalformedSignature):
                self.runtime.failures[name] = {"reason": f"{exc.code}: {exc.message}",
                                               "at": self.clock()}
            return error_answer(exc)
        except Disconnected:
            raise
        except Exception:
            log.exception("unexpected error", extra={"source": name})
            return json_answer(error_body("internal", "internal error"), 500)
        finally:
            meters.observe(time.perf_counter() - started)

    async def handle(self, scope: Scope, receive: Receive, name: str, provider: Provider,
                     meters: SourceTally) -> Answer:
        source = provider.source
        limit = source.max_body_bytes or self.config.server.max_body_bytes
        headers = request_headers(scope)
        body = await read_body(receive, headers.get("content-length"), limit)
        body = decode_body(body, headers.get("content-encoding"), source.gzip, limit)
        url = self.config.public_url + scope["path"]
        raw_query = scope.get("query_string", b"").decode("latin-1")
        query: dict[str, str] = {}
        if raw_query:
            url += "?" + raw_query
            query = dict(parse_qsl(raw_query, keep_blank_values=True))
        inbound = InboundRequest(headers, body, url, scope["method"])
        now = self.clock()
        try:
            if provider.learns_secret:
                learned = await self.learned(name, provider, inbound, now)
                if learned is not None:
                    return learned
            else:
                provider.verify(inbound, now)
        except SignatureError as exc:
            raise secret_hint(source, newline_hint(provider, inbound, now, exc)) from None
        callback_url = self.callback_url(query.get("callback_url"), source)
        wait = self.wait_seconds(query.get("wait"))
        challenge = provider.handshake(inbound)
        if challenge is not None:
            status, extra, content = challenge
            return raw_answer(status, content, extra)
        identity = provider.identify(inbound)
        event_type = storable(identity.event_type)  # as stored, and as the fingerprint holds it
        event = VerifiedEvent(
            id=new_id(), source=name, provider=source.provider, event_type=event_type,
            idempotency_key=idempotency_key(name, identity.provider_id, body),
            fingerprint=fingerprint_key(name, event_type, provider.fingerprint(inbound))
            if identity.provider_id and provider.unsigned_id and source.body_dedupe else None,
            received_at=now,
            headers=kept_headers(headers, provider.auth_headers, self.runtime.secrets), body=body,
            callback_url=callback_url,
            items=tuple(f"{name}:{safe_id(item)}" for item in identity.items),
            nonce=None if identity.nonce is None else safe_id(identity.nonce),
        )
        routes = outbox.matching(self.config.routes, name, event.event_type)
        max_key = self.config.platform.idempotency_key_max_length
        taken, filtered = outbox.decide(event, routes, query)
        if filtered:
            event = dataclasses.replace(event, filtered=filtered)

        seen: frozenset[str] = frozenset()
        for _ in range(RENDER_TRIES):
            rendered = [outbox.render(event, route, max_key, seen, built)
                        for route, built in taken]
            accepted = await self.store.accept(event, rendered, seen)
            if accepted.seen_items is None:
                break
            seen = accepted.seen_items  # a batch sharing items landed first: say which
        else:
            raise StoreUnavailable("the batch's items keep changing under concurrent requests")
        if accepted.replayed_token:
            raise ReplayedToken("this signature token was already used")
        if accepted.duplicate:
            meters.duplicates += 1
        else:
            meters.accepted += 1
        outcome = "duplicate" if accepted.duplicate else "accepted"
        self.lines.info(outcome, source=name, event_id=accepted.event_id,
                        idempotency_key=event.idempotency_key, event_type=event.event_type,
                        outcome=outcome, routes=len(taken))
        payload: dict[str, Any] = {
            "id": accepted.event_id,
            "idempotency_key": event.idempotency_key,
            "duplicate": accepted.duplicate,
            "status_url": f"{self.config.public_url}/events/{self.tokens.make(accepted.event_id)}",
        }
        if accepted.duplicate:
            payload.update(await self.why_duplicate(event, accepted.event_id))
        if wait:
            outcome_view = await self.wait_for(accepted.event_id, wait)
            if outcome_view is not None:
                return json_answer({**payload, **outcome_view}, 200)
        return json_answer(payload, 200 if accepted.duplicate else 202)

    async def why_duplicate(self, event: VerifiedEvent, stored_id: str) -> dict[str, Any]:
        """A duplicate's answer names the stored event's key and why this request matched it:
        the same key (the provider's delivery id, or the body's hash where it sends none); for a
        scheme that does not sign its ids, the same signed content sent under another id; for a
        batch, every item already seen.
        One read, for duplicates only."""
        stored = await self.store.get_event(stored_id)
        stored_key = stored.idempotency_key if stored is not None else event.idempotency_key
        if stored_key == event.idempotency_key:
            return {"duplicate_reason": "same_key"}
        return {"idempotency_key": stored_key, "request_key": event.idempotency_key,
                "duplicate_reason": "same_items" if event.items else "same_signed_body"}

    def callback_url(self, url: str | None, source: Any) -> str | None:
        if url is None:
            return None
        if not source.allow_callback_urls:
            raise CallbackNotAllowed("this source does not accept callback_url")
        # An http(s) URL with a host, in the form the client connects to: every check below sees
        # that host.
        url = canonical_url(url)
        if not allowed(url, source.allow_callback_urls):
            raise CallbackNotAllowed("callback_url is not allowed for this source")
        check_literal(url, self.config.callbacks.allow_private, self.config.callbacks.allowed_ports)
        return url

    @staticmethod
    def wait_seconds(raw: str | None) -> float:
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
        """Hold the (already durable) request until the event's executions end; None on
        timeout, or at once when `MAX_WAITERS` requests are already waiting. Each commit of this
        process wakes the waiters, which ask the store one small question; a waiter also asks
        once a second, for work done by another process."""
        if self.waiting >= MAX_WAITERS:
            return None
        self.waiting += 1
        try:
            deadline = time.monotonic() + seconds
            while not await self.store.event_settled(event_id):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                await self.store.changed(min(1.0, remaining))
            event = await self.store.get_event(event_id)
            if event is None or not settled(event):
                return None
            view = public_view(event)
            return {"state": view["state"], "deliveries": view["deliveries"]}
        finally:
            self.waiting -= 1


class Hooks:
    """In front of the router: `POST /hooks/{source}` goes straight to `Inbound`; everything
    else (including other methods on /hooks/, which get 405) to `app`. `inbound` is set by the
    lifespan once the store has given the status-token key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbound: Inbound | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif unstorable(scope):
            await send_answer(send, error_answer(BadRequest(
                "the path or query holds a NUL character, which no text can be stored with")))
        elif self.inbound is not None and scope["method"] == "POST" and is_hook_path(
                scope["path"]):
            await self.inbound(scope, receive, send)
        elif self.inbound is not None and scope["method"] in ("GET", "HEAD") and is_hook_path(
                scope["path"]) and self.inbound.answers_get(scope["path"]):
            await send_answer(send, self.inbound.challenge(scope))
        else:
            await self.app(scope, receive, send)


def is_hook_path(path: str) -> bool:
    """`/hooks/{source}`: one non-empty segment after the prefix, as the router would match."""
    return path.startswith("/hooks/") and len(path) > 7 and path.find("/", 7) == -1
