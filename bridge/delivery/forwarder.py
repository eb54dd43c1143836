"""The forwarder: claim due deliveries from the outbox, trigger the platform, record the outcome.

The loop mechanics (run, run_once, stop, the poison path) are `ClaimLoop`'s; this module decides
what one attempt is and what its outcome does. New deliveries wake it at once through the store's
watch hook.

Exactly once ends at the platform's memory: it keeps an Idempotency-Key for
`[platform] idempotency_key_lifetime` (24 h). A delivery whose attempt may have reached the
platform (its answer was lost, or a 5xx came back) is never sent again once that key may have
expired: past `resend_deadline` it goes dead with a reason that says so, and only an operator's
forced redrive sends it. A delivery that provably never reached the platform (connection refused,
DNS failure) keeps retrying under the retry policy.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from bridge.config import Config
from bridge.core import logs
from bridge.core.loop import ClaimLoop, owner_id
from bridge.core.metrics import Metrics, status_class
from bridge.core.models import (
    Attempt,
    ClaimedDelivery,
    Dead,
    Delivered,
    Outcome,
    Paused,
    RetryLater,
    iso,
)
from bridge.core.retry import schedule
from bridge.delivery.platform import PlatformClient, classify, pacing, resend_deadline
from bridge.store.kinds import DELIVERIES
from bridge.store.roles import Outbox
from bridge.web.client import EXCERPT, HttpError, Reply

OUTCOMES = {Delivered: "delivered", RetryLater: "retried", Dead: "dead", Paused: "paused"}
log = logging.getLogger("bridge.forwarder")
lines = logs.EventLines("bridge.forwarder", trusted=(  # names and ids of our own making
    "delivery_id", "event_id", "trigger", "route", "outcome"))


class Forwarder(ClaimLoop[ClaimedDelivery]):
    name = "forwarder"

    def __init__(self, config: Config, store: Outbox, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 track_deadline: float | None = None, metrics: Metrics | None = None) -> None:
        settings = config.forwarder
        super().__init__(concurrency=settings.concurrency, batch_size=settings.batch_size,
                         poll_interval=settings.poll_interval,
                         shutdown_grace=settings.shutdown_grace, clock=clock)
        self.config = config
        self.settings = settings
        self.store = store
        self.rng = rng or random.Random()
        self.key_lifetime = config.platform.idempotency_key_lifetime
        self.track_deadline = track_deadline  # follow executions for this long, if set
        self.metrics = metrics or Metrics()
        self.owner = owner_id("forwarder")
        self.client: PlatformClient | None = None
        self.pacing = pacing(config.platform.rate_limit)  # the store's bucket, shared
        self.published_hold = 0.0  # the last hold told to the store (the pacer's clock)
        store.watch(self.wake.set, frozenset({DELIVERIES}))

    def _client(self) -> PlatformClient:
        if self.client is None:
            self.client = PlatformClient(self.config)
        return self.client

    async def claim(self, limit: int, now: float) -> list[ClaimedDelivery]:
        return await self.store.claim(self.owner, now, self.settings.lease, limit,
                                      self.settings.pause_probe, self.pacing, self.backlog)

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

    async def poisoned(self, item: ClaimedDelivery, exc: Exception) -> None:
        """An attempt that raised: a failed attempt like any other, so it backs off and ends
        dead instead of holding its lease forever."""
        outcome = RetryLater(f"internal error ({exc.__class__.__name__})", reached=False)
        await self._finish(item, outcome, self.clock(), time.perf_counter(), None, None)

    async def attempt(self, delivery: ClaimedDelivery) -> None:
        started = self.clock()
        t0 = time.perf_counter()
        if self._expired(delivery.reached_at, started):
            await self._finish(delivery, self._unsafe(delivery.reached_at), started, t0, None,
                               None)
            return
        result: Reply | HttpError
        try:
            result = await self._client().trigger(
                delivery.trigger, delivery.body, delivery.content_type,
                delivery.idempotency_key, {"X-Bridge-Delivery-Id": delivery.id})
        except HttpError as exc:
            result = exc
        outcome = classify(result, self.clock())
        reply = result if isinstance(result, Reply) else None
        pacer = self._client().pacer
        if pacer.not_before > self.published_hold:  # the platform asked us to wait: all of us
            self.published_hold = pacer.not_before
            await self.store.hold(self.clock() + pacer.holding(), self.clock())
        await self._finish(delivery, outcome, started, t0, reply,
                           started if getattr(outcome, "reached", False) else None)

    async def _finish(self, delivery: ClaimedDelivery, outcome: Outcome, started: float,
                      t0: float, reply: Reply | None, reached_now: float | None) -> None:
        latency = (time.perf_counter() - t0) * 1000
        now = self.clock()
        reached_at = delivery.reached_at if delivery.reached_at is not None else reached_now
        outcome, next_at = schedule(outcome, delivery.failures, now - delivery.created_at,
                                    self.settings.retry, self.rng, now)
        if next_at is not None and reached_at is not None and self._expired(reached_at, next_at):
            outcome, next_at = self._unsafe(reached_at), None
        status = reply.status if reply is not None else None
        excerpt = reply.text(EXCERPT) if reply is not None else None
        attempt = Attempt(delivery.id, started, latency, type(outcome).__name__.lower(), status,
                          None if isinstance(outcome, Delivered) else _reason(outcome), excerpt)
        self._log(delivery, attempt, outcome)
        self.metrics.attempts.labels(status_class(status)).inc()
        self.metrics.deliveries[delivery.route, OUTCOMES.get(type(outcome), "other")] += 1
        if isinstance(outcome, RetryLater):
            self.metrics.retries.inc()
        elif isinstance(outcome, Dead):
            self.metrics.dead.inc()
        # If this fails (StoreUnavailable), the lease expires and the delivery is tried again;
        # the platform's idempotency key makes that second call harmless. A delivery due again
        # later (a retry, a paused route's probe) makes the loop ask when, once written.
        track_until = now + self.track_deadline if self.track_deadline is not None else None
        self.settle(self._record(delivery, attempt, outcome, next_at, now, track_until,
                                 reached_at),
                    later=next_at is not None or isinstance(outcome, Paused))

    async def _record(self, delivery: ClaimedDelivery, attempt: Attempt, outcome: Outcome,
                      next_at: float | None, now: float, track_until: float | None,
                      reached_at: float | None) -> None:
        if not await self.store.record(delivery, self.owner, attempt, outcome, next_at, now,
                                       self.settings.pause_probe, track_until, reached_at):
            log.warning("outcome not recorded: the lease was lost (another worker holds the "
                        "delivery, or an operator acted on it)",
                        extra={"delivery_id": delivery.id, "outcome": attempt.outcome})

    def _expired(self, reached_at: float | None, when: float) -> bool:
        return reached_at is not None and when > resend_deadline(reached_at, self.key_lifetime)

    def _unsafe(self, reached_at: float | None) -> Dead:
        at = iso(reached_at)
        return Dead(f"may already have run: an attempt at {at} may have reached the platform, "
                    "which no longer remembers its Idempotency-Key; resending could run the "
                    "workflow twice, so it needs an operator's decision (dead-letters redrive "
                    "--force)")

    def _log(self, delivery: ClaimedDelivery, attempt: Attempt, outcome: Outcome) -> None:
        fields = {"delivery_id": delivery.id, "event_id": delivery.event_id,
                  "idempotency_key": delivery.idempotency_key, "trigger": delivery.trigger,
                  "route": delivery.route, "status_code": attempt.status_code,
                  "latency_ms": round(attempt.latency_ms, 1), "outcome": attempt.outcome}
        if isinstance(outcome, Delivered):
            lines.info("delivered", **fields, execution_id=outcome.execution_id)
        elif isinstance(outcome, Dead) and outcome.status_code == 409:
            log.error("dead: idempotency key reused with another body",
                      extra={**fields, "reason": outcome.reason})
        elif isinstance(outcome, Dead | Paused):
            log.warning(attempt.outcome, extra={**fields, "reason": outcome.reason})
        else:
            log.warning("retry scheduled", extra={**fields, "reason": _reason(outcome)})


def _reason(outcome: Outcome) -> str | None:
    return getattr(outcome, "reason", None)
