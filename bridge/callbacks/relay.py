"""The relay: send each callback, signed with Standard Webhooks, until it is delivered or dead.

Every attempt carries `webhook-id` (the callback's id: the same on every retry, so a receiver can
dedupe), a fresh `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">` keyed with `[callbacks] signing_secret`). Any 2xx is delivered; every
other answer, a timeout or a connection error is retried by `[callbacks.retry]` (Retry-After is a
floor) until `max_age`, then the callback is dead. A URL that cannot be requested, or one the
SSRF guard refuses, is dead at once. Callback failures never change the event. A receiver's
answer is read up to 64 KiB, within one overall deadline per attempt (`[callbacks] timeout`).

Sender-supplied URLs (`?callback_url=`) go through a client whose resolver is the SSRF guard
(`bridge.web.guard`); operator-configured URLs are trusted as written and use a plain client.
`[callbacks] allow_private` turns the guard off.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from aiohttp.helpers import proxies_from_env

from bridge import __version__, signing
from bridge.callbacks.bodies import callback_body
from bridge.config import Config
from bridge.core import logs
from bridge.core.errors import CallbackNotAllowed
from bridge.core.loop import ClaimLoop, owner_id
from bridge.core.metrics import Metrics
from bridge.core.models import Attempt, ClaimedCallback, Dead, Delivered, Outcome, RetryLater
from bridge.core.retry import parse_retry_after, schedule
from bridge.store.kinds import CALLBACKS
from bridge.store.roles import Callbacks
from bridge.web.client import (
    CALLBACK_MAX_BODY,
    EXCERPT,
    Blocked,
    Client,
    ConnectFailed,
    HttpError,
    InvalidTarget,
    Reply,
)
from bridge.web.guard import Blocked as GuardBlocked
from bridge.web.guard import GuardedResolver, check_host, connect_host, is_ip_literal, url_port

log = logging.getLogger("bridge.relay")
lines = logs.EventLines("bridge.relay", trusted=("callback_id", "status_code"))


def proxy_hosts() -> frozenset[str]:
    """The proxies named in the environment: the operator's, so the guard trusts them."""
    return frozenset(info.proxy.host for info in proxies_from_env().values()
                     if info.proxy.host)


class Relay(ClaimLoop[ClaimedCallback]):
    name = "relay"

    def __init__(self, config: Config, store: Callbacks, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, metrics: Metrics | None = None) -> None:
        settings = config.callbacks
        self.metrics = metrics or Metrics()
        super().__init__(concurrency=settings.concurrency, batch_size=settings.batch_size,
                         poll_interval=settings.poll_interval, shutdown_grace=2.0, clock=clock)
        self.settings = settings
        self.store = store
        self.rng = rng or random.Random()
        secret = settings.signing_secret
        self.key = signing.decode_secret(secret.reveal()) if secret else None
        self.owner = owner_id("relay")
        self.clients: dict[bool, Client] = {}  # guarded? -> client
        self.resolver: GuardedResolver | None = None
        store.watch(self.wake.set, frozenset({CALLBACKS}))

    def guarded_resolver(self) -> GuardedResolver:
        if self.resolver is None:  # made on the event loop, where aiohttp's resolvers live
            self.resolver = GuardedResolver(proxy_hosts())
        return self.resolver

    def client(self, guarded: bool) -> Client:
        if guarded not in self.clients:
            self.clients[guarded] = Client(
                self.settings.concurrency, timeout=self.settings.timeout,
                max_body=CALLBACK_MAX_BODY, resolver=self.guarded_resolver() if guarded else None,
                headers={"User-Agent": f"webhook-bridge/{__version__}",
                         "Content-Type": "application/json"})
        return self.clients[guarded]

    async def claim(self, limit: int, now: float) -> list[ClaimedCallback]:
        return await self.store.claim_callbacks(self.owner, now, self.settings.lease, limit,
                                                self.backlog)

    async def next_due(self) -> float | None:
        return await self.store.next_callback_due()

    async def release(self) -> None:
        await self.store.release_leases(self.owner)
        for client in self.clients.values():
            await client.aclose()
        self.clients.clear()

    async def poisoned(self, item: ClaimedCallback, exc: Exception) -> None:
        await self._finish(item, RetryLater(f"internal error ({exc.__class__.__name__})"),
                           self.clock(), time.perf_counter(), None)

    async def handle(self, item: ClaimedCallback) -> None:
        started = self.clock()
        t0 = time.perf_counter()
        reply: Reply | None = None
        try:
            guarded = item.sender_supplied and not self.settings.allow_private
            if guarded:
                await self.check(item.url)
            body = callback_body(item.completion)
            headers = {}
            if self.key is not None:
                headers = signing.headers(self.key, item.id, int(time.time()), body)
            reply = await self.client(guarded).request("POST", item.url, body=body,
                                                       headers=headers)
            outcome = self.classify(reply)
        except (Blocked, InvalidTarget) as exc:
            outcome = Dead(str(exc))
            log.warning("callback refused", extra={"callback_id": item.id, "reason": str(exc)})
        except HttpError as exc:
            outcome = RetryLater(str(exc))
        await self._finish(item, outcome, started, t0, reply)

    async def check(self, url: str) -> None:
        """What the guarded resolver cannot see: IP literals (never resolved) and hosts a proxy
        resolves for us."""
        try:
            host = connect_host(url).strip("[]")
            if is_ip_literal(host) or self.client(True).proxy_for(url) is not None:
                await check_host(self.guarded_resolver(), host, url_port(url))
        except GuardBlocked as exc:
            raise Blocked(str(exc), url) from None
        except OSError as exc:
            raise ConnectFailed(f"cannot resolve {host} ({exc.__class__.__name__})", url) from None
        except (ValueError, CallbackNotAllowed) as exc:
            raise InvalidTarget(str(exc), url) from None

    def classify(self, reply: Reply) -> Outcome:
        if 200 <= reply.status < 300:
            return Delivered(None, reply.status)
        after = parse_retry_after(reply.headers.get("retry-after"), time.time())
        return RetryLater(f"receiver answered {reply.status}", reply.status, after)

    async def _finish(self, item: ClaimedCallback, outcome: Outcome, started: float, t0: float,
                      reply: Reply | None) -> None:
        now = self.clock()
        outcome, next_at = schedule(outcome, item.failures, now - item.created_at,
                                    self.settings.retry, self.rng, now)
        label = "retrylater" if isinstance(outcome, RetryLater) else type(outcome).__name__.lower()
        reason = getattr(outcome, "reason", None)
        status = reply.status if reply is not None else None
        excerpt = reply.text(EXCERPT) if reply is not None else None
        attempt = Attempt(item.id, started, (time.perf_counter() - t0) * 1000, label, status,
                          reason, excerpt)
        self.metrics.callbacks.labels(label).inc()
        self.settle(self._record(item, attempt, label, next_at, reason, status),
                    later=next_at is not None)

    async def _record(self, item: ClaimedCallback, attempt: Attempt, label: str,
                      next_at: float | None, reason: str | None, status: int | None) -> None:
        if not await self.store.record_callback(item, self.owner, attempt,
                                                label == "delivered", next_at, reason,
                                                self.clock()):
            log.warning("callback outcome not recorded: the lease was lost",
                        extra={"callback_id": item.id, "outcome": label})
            return
        if label == "delivered":
            lines.info("callback delivered", callback_id=item.id, status_code=status,
                       execution_id=item.execution_id)
        else:
            log.warning("callback failed", extra={"callback_id": item.id, "reason": reason,
                                                  "outcome": label})

