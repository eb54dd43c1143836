"""The forwarder: claim due deliveries from the outbox, trigger the platform, record the outcome.

The loop mechanics (run, run_once, stop) are `ClaimLoop`'s; this module decides what one attempt
is and what its outcome does. New deliveries wake it at once through the store's watch hook.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import httpx

from bridge.config import Config
from bridge.loop import ClaimLoop, owner_id
from bridge.metrics import Metrics, status_class
from bridge.models import Attempt, ClaimedDelivery, Dead, Delivered, Outcome, Paused, RetryLater
from bridge.platform import EXCERPT, PlatformClient, classify
from bridge.retry import next_delay
from bridge.store import Store

log = logging.getLogger("bridge.forwarder")


class Forwarder(ClaimLoop[ClaimedDelivery]):
    name = "forwarder"

    def __init__(self, config: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 track_deadline: float | None = None, metrics: Metrics | None = None) -> None:
        settings = config.forwarder
        super().__init__(concurrency=settings.concurrency, batch_size=settings.batch_size,
                         poll_interval=settings.poll_interval,
                         shutdown_grace=settings.shutdown_grace, clock=clock)
        self.config = config
        self.settings = settings
        self.store = store
        self.rng = rng or random.Random()
        self.transport = transport
        self.track_deadline = track_deadline  # follow executions for this long, if set
        self.metrics = metrics or Metrics()
        self.owner = owner_id("forwarder")
        self.client: PlatformClient | None = None
        store.watch(self.wake.set)

    def _client(self) -> PlatformClient:
        if self.client is None:
            self.client = PlatformClient(self.config, self.transport)
        return self.client

    async def claim(self, limit: int, now: float) -> list[ClaimedDelivery]:
        return await self.store.claim(self.owner, now, self.settings.lease, limit,
                                      self.settings.pause_probe)

    async def handle(self, item: ClaimedDelivery) -> None:
        await self.attempt(item)

    async def next_due(self) -> float | None:
        return await self.store.next_due()

    def holding(self) -> float:
        return self._client().pacer.holding()

    async def release(self) -> None:
        await self.store.release(self.owner)
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def attempt(self, delivery: ClaimedDelivery) -> None:
        client = self._client()
        started = self.clock()
        t0 = time.perf_counter()
        result: httpx.Response | Exception
        try:
            result = await client.trigger(delivery.trigger, delivery.body, delivery.content_type,
                                          delivery.idempotency_key,
                                          {"X-Bridge-Delivery-Id": delivery.id})
        except httpx.HTTPError as exc:
            result = exc
        latency = (time.perf_counter() - t0) * 1000
        now = self.clock()
        outcome = classify(result, now)
        outcome, next_at = self._schedule(delivery, outcome, now)
        status = result.status_code if isinstance(result, httpx.Response) else None
        excerpt = result.text[:EXCERPT] if isinstance(result, httpx.Response) else None
        attempt = Attempt(delivery.id, started, latency, type(outcome).__name__.lower(), status,
                          None if isinstance(outcome, Delivered) else _reason(outcome), excerpt)
        self._log(delivery, attempt, outcome)
        self.metrics.attempts.labels(status_class(status)).inc()
        if isinstance(outcome, RetryLater):
            self.metrics.retries.inc()
        elif isinstance(outcome, Dead):
            self.metrics.dead.inc()
        # If this fails (StoreUnavailable), the lease expires and the delivery is tried again;
        # the platform's idempotency key makes that second call harmless.
        track_until = now + self.track_deadline if self.track_deadline is not None else None
        await self.store.record(delivery, self.owner, attempt, outcome, next_at, now,
                                self.settings.pause_probe, track_until)

    def _schedule(self, delivery: ClaimedDelivery, outcome: Outcome,
                  now: float) -> tuple[Outcome, float | None]:
        if not isinstance(outcome, RetryLater):
            return outcome, None
        policy = self.settings.retry
        age = now - delivery.created_at
        if not outcome.counts_as_failure:
            wait = outcome.after if outcome.after is not None else policy.base
            if age + wait > policy.max_age:
                return Dead(f"retries exhausted: {outcome.reason}", outcome.status_code), None
            return outcome, now + wait
        delay = next_delay(delivery.failures + 1, policy, self.rng, outcome.after, age)
        if delay is None:
            return Dead(f"retries exhausted: {outcome.reason}", outcome.status_code), None
        return outcome, now + delay

    def _log(self, delivery: ClaimedDelivery, attempt: Attempt, outcome: Outcome) -> None:
        fields = {"delivery_id": delivery.id, "event_id": delivery.event_id,
                  "idempotency_key": delivery.idempotency_key, "trigger": delivery.trigger,
                  "status_code": attempt.status_code, "latency_ms": round(attempt.latency_ms, 1),
                  "outcome": attempt.outcome}
        if isinstance(outcome, Delivered):
            log.info("delivered", extra={**fields, "execution_id": outcome.execution_id})
        elif isinstance(outcome, Dead) and outcome.status_code == 409:
            log.error("dead: idempotency key reused with another body",
                      extra={**fields, "reason": outcome.reason})
        elif isinstance(outcome, Dead | Paused):
            log.warning(attempt.outcome, extra={**fields, "reason": outcome.reason})
        else:
            log.info("retry scheduled", extra={**fields, "reason": _reason(outcome)})


def _reason(outcome: Outcome) -> str | None:
    return getattr(outcome, "reason", None)
