"""The two stores, held to each other: the same random sequence of operations, run against
SQLite and against PostgreSQL, must leave the same observable state and give the same answers.

PostgreSQL writes a batch's changes of one kind in one statement, claims in one statement each
and pipelines runs of them (`bridge.store.postgres_batches`), where SQLite runs the shared jobs
one by one: this is the check that the two agree. Several outcomes are recorded at once
(`record_together`), so that PostgreSQL groups them into one statement, as it does under load.

Delivery and callback ids are made by each store, so deliveries are compared by what names
them for the bridge (event, route, idempotency key) and callbacks by (execution, URL).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bridge.core.models import (
    Attempt,
    CallbackTargets,
    ClaimedCallback,
    ClaimedDelivery,
    Dead,
    Delivered,
    ExecutionResult,
    NewDelivery,
    Paused,
    RetryLater,
    RouteState,
    TrackedExecution,
    VerifiedEvent,
)
from bridge.store import SQLiteStore, Store
from tests.store.fixtures.write_store import view
from tests.support import pg

START = 1_900_000_000.0
ROUTES = ("r1", "r2")
TARGETS = CallbackTargets({"r1": ("https://cb.example/r1",)}, ("https://cb.example/all",))
KEYS = [f"s:{i}" for i in range(8)]  # a small pool: duplicates are frequent
OUTCOMES = st.sampled_from(["delivered", "tracked", "retry", "pacing", "dead", "paused"])


def attempt_for(outcome: str, delivery_id: str, now: float) -> Attempt:
    status = {"delivered": 202, "tracked": 202, "retry": 503, "pacing": 429, "dead": 400,
              "paused": 401}[outcome]
    return Attempt(delivery_id, now, 1.5, outcome, status, None if status < 300 else "e",
                   f"answer {status}")


def outcome_for(kind: str, execution_id: str) -> Any:
    return {"delivered": Delivered(None, 202), "tracked": Delivered(execution_id, 202),
            "retry": RetryLater("busy", 503), "pacing": RetryLater("slow down", 429, 5.0, False),
            "dead": Dead("refused", 400), "paused": Paused("bad key", 401)}[kind]


def by_id(x: TrackedExecution) -> str:
    return x.id


def tracked_view(x: TrackedExecution) -> tuple[Any, ...]:
    """Without the delivery's id, which each store makes for itself."""
    return dataclasses.astuple(dataclasses.replace(x, delivery_id=""))


def delivery_key(d: ClaimedDelivery) -> tuple[str, str, str]:
    return (d.event_id, d.route, d.idempotency_key)


def claim_view(d: ClaimedDelivery) -> tuple[Any, ...]:
    return (*delivery_key(d), d.attempts, d.failures, d.created_at, d.probe, d.reached_at,
            d.body, d.trigger)


def callback_view(c: ClaimedCallback) -> tuple[Any, ...]:
    return (c.execution_id, c.url, c.sender_supplied, c.attempts, c.failures, c.completion)


@pytest.mark.skipif(bool(pg.unavailable()), reason=pg.unavailable() or "")
class TwoStores(RuleBasedStateMachine):
    """SQLite (`a`) and PostgreSQL (`b`), fed the same operations at the same times."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(self.loop.run_until_complete(asyncio.to_thread(_tempdir)))
        self.schema = pg.schema()
        url = self.schema.__enter__()
        from bridge.store.postgres import PostgresStore

        self.a: Store = SQLiteStore(str(self.tmp / "a.db"))
        self.b: Store = PostgresStore(url)
        self.both(lambda s: s.open())
        self.now = START
        self.events: set[str] = set()
        self.held: list[tuple[ClaimedDelivery, ClaimedDelivery]] = []
        self.tracked: list[tuple[TrackedExecution, TrackedExecution]] = []
        self.callbacks: list[tuple[ClaimedCallback, ClaimedCallback]] = []
        self.executions = (f"exe-{n}" for n in itertools.count())
        self.replays = itertools.count()
        self.serial = itertools.count()
        self.owners: dict[tuple[str, str, str], str] = {}

    def both(self, call: Callable[[Store], Awaitable[Any]]) -> tuple[Any, Any]:
        """The same call on each store; each answer, or the error it raised."""
        async def each(store: Store) -> Any:
            try:
                return await call(store)
            except Exception as exc:  # noqa: BLE001 - compared, not hidden: see `same`
                return ("raised", type(exc).__name__)

        async def main() -> tuple[Any, Any]:  # one after the other: see docs/scaling.md
            return await each(self.a), await each(self.b)

        return self.loop.run_until_complete(main())

    def same(self, call: Callable[[Store], Awaitable[Any]],
             view: Callable[[Any], Any] = lambda x: x) -> tuple[Any, Any]:
        a, b = self.both(call)
        assert view(a) == view(b), (view(a), view(b))
        return a, b

    def teardown(self) -> None:
        try:
            self.both(lambda s: s.close())
        finally:
            self.loop.close()
            self.schema.__exit__(None, None, None)

    # operations

    @initialize(events=st.lists(st.tuples(st.sampled_from(KEYS), st.sets(st.sampled_from(ROUTES)),
                                          st.booleans(), st.booleans()), min_size=3, max_size=8))
    def start(self, events: list[tuple[str, set[str], bool, bool]]) -> None:
        for key, routes, sender_callback, items in events:
            self.accept_one(key, routes, sender_callback, items)

    @rule(events=st.lists(st.tuples(st.sampled_from(KEYS), st.sets(st.sampled_from(ROUTES)),
                                    st.booleans(), st.booleans()), min_size=1, max_size=3))
    def accept(self, events: list[tuple[str, set[str], bool, bool]]) -> None:
        for key, routes, sender_callback, items in events:
            self.accept_one(key, routes, sender_callback, items)

    def accept_one(self, key: str, routes: set[str], sender_callback: bool, items: bool) -> None:
        event = VerifiedEvent(
            f"ev-{next(self.serial):03d}-{key}", "s", "github", "push", key, self.now,
            {"x-n": "1"}, b'{"a":1}',
            callback_url="https://cb.example/sender" if sender_callback else None,
            items=(f"{key}:i1", f"{key}:i2") if items else ())
        deliveries = [NewDelivery(r, f"t-{r}", f"{key}:{r}", b"{}", "application/json")
                      for r in sorted(routes)]
        a, _ = self.same(lambda s: s.accept(event, deliveries))
        if isinstance(a, tuple):
            return
        if a.event_id:
            self.events.add(a.event_id)

    @rule(seconds=st.sampled_from([0.5, 3.0, 40.0, 400.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(owner=st.sampled_from(["w1", "w2"]), limit=st.integers(1, 4))
    def claim(self, owner: str, limit: int) -> None:
        a, b = self.same(lambda s: s.claim(owner, self.now, 30.0, limit, 20.0),
                         lambda got: got if isinstance(got, tuple) else
                         sorted(claim_view(d) for d in got))
        if isinstance(a, list):
            pairs = dict(zip(sorted(a, key=delivery_key), sorted(b, key=delivery_key),
                             strict=True))
            self.held = [(x, y) for x, y in self.held if delivery_key(x) not in
                         {delivery_key(d) for d in a}] + list(pairs.items())
            for d in a:
                self.owners[delivery_key(d)] = owner

    def record_one(self, pair: tuple[ClaimedDelivery, ClaimedDelivery], kind: str,
                   store: Store, which: int) -> Awaitable[bool]:
        delivery = pair[which]
        execution = f"exe-{delivery.event_id}-{delivery.route}-{delivery.attempts}"
        outcome = outcome_for(kind, execution)
        next_at = self.now + 15.0 if isinstance(outcome, RetryLater) else None
        owner = self.owners.get(delivery_key(delivery), "w1")
        return store.record(delivery, owner, attempt_for(kind, delivery.id, self.now), outcome,
                            next_at, self.now, 20.0,
                            track_until=self.now + 600 if kind == "tracked" else None,
                            reached_at=self.now if kind == "retry" else None)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), kind=OUTCOMES)
    def record(self, data: st.DataObject, kind: str) -> None:
        pair = data.draw(st.sampled_from(self.held))
        self.held.remove(pair)
        self.same(lambda s: self.record_one(pair, kind, s, 0 if s is self.a else 1))

    @precondition(lambda self: len(self.held) >= 2)
    @rule(data=st.data())
    def record_together(self, data: st.DataObject) -> None:
        """Several outcomes in one batch: PostgreSQL writes them in one statement."""
        pairs = data.draw(st.lists(st.sampled_from(self.held), min_size=2, max_size=4,
                                   unique_by=lambda p: delivery_key(p[0])))
        kinds = data.draw(st.lists(OUTCOMES, min_size=len(pairs), max_size=len(pairs)))
        for pair in pairs:
            self.held.remove(pair)

        async def together(store: Store) -> list[Any]:
            which = 0 if store is self.a else 1
            return list(await asyncio.gather(*(
                self.record_one(pair, kind, store, which)
                for pair, kind in zip(pairs, kinds, strict=True)), return_exceptions=True))

        self.same(together, lambda got: [x if isinstance(x, bool) else type(x).__name__
                                         for x in got])

    @rule(owner=st.sampled_from(["w1", "w2"]), limit=st.integers(1, 6),
          kinds=st.lists(OUTCOMES, min_size=6, max_size=6))
    def forwarder_cycle(self, owner: str, limit: int, kinds: list[str]) -> None:
        """What a forwarder does: claim, then record every outcome at once (one batch)."""
        self.claim(owner, limit)
        pairs = self.held[-limit:]
        for pair in pairs:
            self.held.remove(pair)

        async def together(store: Store) -> list[Any]:
            which = 0 if store is self.a else 1
            return list(await asyncio.gather(*(
                self.record_one(pair, kind, store, which)
                for pair, kind in zip(pairs, kinds, strict=False)), return_exceptions=True))

        self.same(together, lambda got: [x if isinstance(x, bool) else type(x).__name__
                                         for x in got])

    @rule(limit=st.integers(1, 4), status=st.sampled_from(["completed", "failed", "running"]))
    def tracker_cycle(self, limit: int, status: str) -> None:
        a, _ = self.same(lambda s: s.claim_executions("t0", self.now, 30.0, limit),
                         lambda got: got if isinstance(got, tuple) else sorted(map(tracked_view, got)))
        if not isinstance(a, list):
            return
        result = ExecutionResult(status, output=[1, "x"], started_at="t0", completed_at="t1")

        async def finish(store: Store) -> list[bool]:
            if status == "running":
                return list(await asyncio.gather(*(store.reschedule_execution(
                    x.id, "t0", "running", self.now + 10, self.now) for x in a)))
            return list(await asyncio.gather(*(
                store.complete_execution(x.id, result, self.now, TARGETS) for x in a)))

        self.same(finish)

    @rule(limit=st.integers(1, 6), delivered=st.booleans())
    def relay_cycle(self, limit: int, delivered: bool) -> None:
        before = len(self.callbacks)
        self.claim_callbacks(limit)
        pairs = self.callbacks[before:]
        self.callbacks = self.callbacks[:before]

        async def record_all(s: Store) -> list[bool]:
            which = 0 if s is self.a else 1
            return list(await asyncio.gather(*(
                s.record_callback(pair[which], "c", Attempt(pair[which].id, self.now, 2.0, "x",
                                                            200 if delivered else 503),
                                  delivered, None if delivered else self.now + 5,
                                  None if delivered else "503", self.now) for pair in pairs)))

        self.same(record_all)

    @rule(owner=st.sampled_from(["t1", "t2"]), limit=st.integers(1, 4))
    def claim_executions(self, owner: str, limit: int) -> None:
        a, b = self.same(lambda s: s.claim_executions(owner, self.now, 30.0, limit),
                         lambda got: got if isinstance(got, tuple) else sorted(map(tracked_view, got)))
        if isinstance(a, list):
            self.tracked += [(x, y, owner) for x, y in  # type: ignore[misc]
                             zip(sorted(a, key=by_id), sorted(b, key=by_id), strict=True)]

    @precondition(lambda self: self.tracked)
    @rule(data=st.data(), status=st.sampled_from(["completed", "failed", "running"]))
    def finish_execution(self, data: st.DataObject, status: str) -> None:
        x, _, owner = data.draw(st.sampled_from(self.tracked))  # type: ignore[misc]
        self.tracked = [t for t in self.tracked if t[0].id != x.id]
        if status == "running":
            self.same(lambda s: s.reschedule_execution(x.id, owner, "running",
                                                       self.now + 10, self.now))
            return
        result = ExecutionResult(status, output={"n": 1}, error="boom" if status == "failed"
                                 else None, started_at="t0", completed_at="t1")

        async def twice(store: Store) -> list[bool]:  # a push and a poll of the same end
            return list(await asyncio.gather(
                store.complete_execution(x.id, result, self.now, TARGETS),
                store.complete_execution(x.id, result, self.now, TARGETS)))

        self.same(twice)

    @rule(limit=st.integers(1, 4))
    def claim_callbacks(self, limit: int) -> None:
        a, b = self.same(lambda s: s.claim_callbacks("c", self.now, 30.0, limit),
                         lambda got: got if isinstance(got, tuple) else
                         sorted(callback_view(c) for c in got))
        if isinstance(a, list):
            by = {(c.execution_id, c.url): c for c in b}
            self.callbacks += [(c, by[(c.execution_id, c.url)]) for c in a]

    @precondition(lambda self: self.callbacks)
    @rule(data=st.data(), delivered=st.booleans(), dead=st.booleans())
    def record_callback(self, data: st.DataObject, delivered: bool, dead: bool) -> None:
        pair = data.draw(st.sampled_from(self.callbacks))
        self.callbacks.remove(pair)
        next_at = None if delivered or dead else self.now + 10

        def call(s: Store) -> Awaitable[bool]:
            c = pair[0] if s is self.a else pair[1]
            return s.record_callback(c, "c", Attempt(c.id, self.now, 2.0, "x", 500), delivered,
                                     next_at, None if delivered else "500", self.now)

        self.same(call)

    @rule(route=st.sampled_from(ROUTES), pause=st.booleans())
    def operator_sets_route(self, route: str, pause: bool) -> None:
        state = RouteState.PAUSED if pause else RouteState.ACTIVE
        self.same(lambda s: s.set_route_state(route, state, "operator" if pause else None,
                                              self.now, 20.0))

    @rule(force=st.booleans())
    def operator_redrives_the_dead(self, force: bool) -> None:
        async def redrive(s: Store) -> int:
            dead = await s.dead_letters(limit=100)
            ids = [d.id for d in sorted(dead, key=lambda d: (d.event_id, d.route))]
            return await s.redrive(ids, self.now, None if force else self.now - 3600)

        self.same(redrive)

    @rule()
    def operator_discards_the_dead(self) -> None:
        async def discard(s: Store) -> int:
            dead = await s.dead_letters(limit=100)
            return await s.discard([d.id for d in dead], "not needed", self.now)

        self.same(discard)

    @precondition(lambda self: self.events)
    @rule(data=st.data(), route=st.sampled_from(ROUTES))
    def operator_replays(self, data: st.DataObject, route: str) -> None:
        event_id = data.draw(st.sampled_from(sorted(self.events)))
        n = next(self.replays)
        new = [NewDelivery(route, f"t-{route}", f"replay-{n}", b"{}", "application/json")]
        self.same(lambda s: s.replay(event_id, new, self.now))

    @rule(owner=st.sampled_from(["w1", "w2"]))
    def a_worker_shuts_down(self, owner: str) -> None:
        self.same(lambda s: s.release(owner))
        self.held = [p for p in self.held if self.owners.get(delivery_key(p[0])) != owner]

    @rule()
    def prune(self) -> None:
        self.same(lambda s: s.prune(self.now - 3000))

    # what both must agree on after every step

    @invariant()
    def same_state(self) -> None:
        async def state(s: Store) -> Any:  # reads only: side by side
            ids = sorted(self.events)
            records, dead, *rest = await asyncio.gather(
                asyncio.gather(*(s.get_event(event_id) for event_id in ids)),
                s.dead_letters(limit=1000), s.counts(), s.pending_by_route(),
                s.route_states(), s.next_due(), s.next_execution_due(), s.next_callback_due())
            counts, pending, routes, *due = rest
            return ({event_id: view(record) for event_id, record in zip(ids, records, strict=True)},
                    sorted((d.event_id, d.route, d.attempts, d.last_error) for d in dead),
                    counts, pending, {k: dataclasses.astuple(v) for k, v in routes.items()},
                    *due)

        self.same(state)


def _tempdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="bridge-diff-")


TwoStores.TestCase.settings = settings(
    max_examples=20, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# A difference found is shrunk to its shortest sequence, which takes minutes: room for it.
test_the_stores_agree = pytest.mark.timeout(900)(TwoStores.TestCase)
