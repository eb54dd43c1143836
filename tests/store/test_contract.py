"""Store contract: what every store promises, whatever it runs on. Each test runs against
SQLite and against PostgreSQL (a schema of its own)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.core.errors import InternalError
from bridge.core.models import (
    Attempt,
    CallbackTargets,
    Delivered,
    ExecutionResult,
    NewDelivery,
    VerifiedEvent,
    new_id,
)
from bridge.store import Store
from tests.support.stores import STORES, run


def event(key: str, now: float, **extra: object) -> VerifiedEvent:
    return VerifiedEvent(new_id(), "s", "github", "push", key, now, {"x": "1"}, b'{"a":1}',
                         **extra)  # type: ignore[arg-type]


def delivery(key: str) -> list[NewDelivery]:
    return [NewDelivery("r", "t", f"{key}:t", b"{}", "application/json")]


@pytest.mark.parametrize("kind", STORES)
def test_dedupe_under_concurrency(kind: str, tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        now = time.time()
        # 20 copies of each of 10 keys, all at once: one event per key, the rest duplicates
        # of it, and one delivery per key.
        copies = [event(f"s:{i % 10}", now) for i in range(200)]
        results = await asyncio.gather(*(store.accept(e, delivery(e.idempotency_key))
                                         for e in copies))
        by_key: dict[str, set[str]] = {}
        for e, result in zip(copies, results, strict=True):
            by_key.setdefault(e.idempotency_key, set()).add(result.event_id)
        assert all(len(ids) == 1 for ids in by_key.values()) and len(by_key) == 10
        assert sum(not r.duplicate for r in results) == 10
        claimed = await store.claim("w", now, 60, 500, 30)
        assert len(claimed) == 10

    run(scenario, kind, tmp_path)


@pytest.mark.parametrize("kind", STORES)
def test_fingerprints_batch_items_and_single_use_tokens(kind: str, tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        now = time.time()
        first = await store.accept(event("s:a", now, fingerprint=b"\x01" * 16), delivery("s:a"))
        replay = await store.accept(event("s:b", now, fingerprint=b"\x01" * 16),
                                    delivery("s:b"))
        assert not first.duplicate and replay.duplicate and replay.event_id == first.event_id
        one = await store.accept(event("s:batch1", now, items=("i1", "i2")), delivery("b1"))
        # Rendered as if no item had been seen: the store says which were, and stores nothing.
        stale = await store.accept(event("s:batch2", now, items=("i2", "i3")), delivery("b2"))
        assert stale.seen_items == frozenset({"i2"}) and not stale.duplicate
        assert await store.list_events(key_contains="s:batch2") == []
        two = await store.accept(event("s:batch2", now, items=("i2", "i3")), delivery("b2"),
                                 frozenset({"i2"}))
        three = await store.accept(event("s:batch3", now, items=("i1", "i3")), delivery("b3"))
        assert not one.duplicate and one.seen_items is None
        assert not two.duplicate and two.seen_items is None
        assert three.duplicate  # every item seen before
        token = await store.accept(event("s:t1", now, nonce="n1"), delivery("s:t1"))
        again = await store.accept(event("s:t2", now, nonce="n1"), delivery("s:t2"))
        assert not token.replayed_token and again.replayed_token
        assert await store.get_event(again.event_id or "none") is None

    run(scenario, kind, tmp_path)


@pytest.mark.parametrize("kind", STORES)
def test_an_execution_completes_once_with_its_callbacks(kind: str, tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        now = time.time()
        accepted = await store.accept(event("s:x", now, callback_url="https://cb.example/x"),
                                      delivery("s:x"))
        [claimed] = await store.claim("w", now, 60, 10, 30)
        assert await store.record(claimed, "w", Attempt(claimed.id, now, 1.0, "delivered", 202),
                                  Delivered("exe-1", 202), None, now, 30, now + 3600)
        [tracked] = await store.claim_executions("t", now, 60, 10)
        assert tracked.id == "exe-1"
        result = ExecutionResult("completed", output={"ok": True})
        urls = CallbackTargets({"r": ("https://cb.example/route",)})
        outcomes = await asyncio.gather(*(store.complete_execution("exe-1", result, now, urls)
                                          for _ in range(5)))
        assert sorted(outcomes) == [False] * 4 + [True]
        callbacks = await store.claim_callbacks("r", now, 60, 10)
        assert sorted(c.url for c in callbacks) == ["https://cb.example/route",
                                                    "https://cb.example/x"]
        assert {c.sender_supplied for c in callbacks} == {True, False}
        # Each callback names the event and the execution's end, as stored.
        for callback in callbacks:
            done = callback.completion
            assert (done.event_id, done.source, done.trigger) == (accepted.event_id, "s", "t")
            assert done.result == ExecutionResult("completed", output={"ok": True})
            assert done.at == now
        shown = await store.get_event(accepted.event_id)
        assert shown is not None and shown.executions[0].output == {"ok": True}
        assert shown.callbacks[0].sender_supplied in (True, False)
        assert await store.event_settled(accepted.event_id)

    run(scenario, kind, tmp_path)


@pytest.mark.parametrize("kind", STORES)
def test_prune_forgets_only_what_is_finished_and_old(kind: str, tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        now = time.time()
        old_done = await store.accept(event("s:old", now - 1000), [])  # unrouted: finished
        old_busy = await store.accept(event("s:busy", now - 1000), delivery("s:busy"))
        young = await store.accept(event("s:young", now), [])
        assert await store.prune(now - 500) == 1
        assert await store.get_event(old_done.event_id) is None
        assert await store.get_event(old_busy.event_id) is not None
        assert await store.get_event(young.event_id) is not None
        # Forgotten, so its key may be used again.
        again = await store.accept(event("s:old", now), [])
        assert not again.duplicate

    run(scenario, kind, tmp_path)


@pytest.mark.parametrize("kind", STORES)
def test_a_failing_change_is_undone_alone_and_its_batch_commits(kind: str,
                                                                 tmp_path: Path) -> None:
    """Changes that go in one transaction stay each other's strangers: one that fails (a
    constraint the database enforces, or an error of its own after it wrote) is undone up to
    where it began and its caller gets the error; those before and after it commit. (On
    PostgreSQL a statement nobody reads the answer of travels with the next one: this is what
    keeps that from mixing changes up.)"""
    from bridge.core.errors import InternalError

    def put(key: str, twice: bool = False, fail_after: bool = False) -> Any:
        def job(conn: Any) -> str:
            conn.execute("INSERT INTO meta (key, value) VALUES ({p}, 'v')", (key,))
            if twice:  # the primary key refuses it
                conn.execute("INSERT INTO meta (key, value) VALUES ({p}, 'v')", (key,))
            if fail_after:
                raise LookupError(f"{key} changed its mind")
            return key
        return job

    async def scenario(store: Store) -> None:
        write = store._write  # type: ignore[attr-defined]
        batches: list[int] = []
        store.on_commit = lambda size, seconds: batches.append(size)  # type: ignore[attr-defined]
        for _ in range(3):  # the first batch begins a transaction, the others follow it
            results = await asyncio.gather(
                write(put(f"a-{_}")), write(put(f"dup-{_}", twice=True)),
                write(put(f"b-{_}")), write(put(f"own-{_}", fail_after=True)),
                write(put(f"c-{_}")), return_exceptions=True)
            assert results[0::2] == [f"a-{_}", f"b-{_}", f"c-{_}"]
            assert isinstance(results[1], InternalError)  # a database error: a bug, answered 500
            assert isinstance(results[3], LookupError)  # a job's own error passes through
        assert batches == [5, 5, 5]  # each round was one transaction
        keys = {row["key"] for row in await store._all(  # type: ignore[attr-defined]
            "SELECT key FROM meta WHERE key NOT IN ('instance_id')", ())}
        assert keys == {f"{k}-{i}" for k in "abc" for i in range(3)}

    run(scenario, kind, tmp_path, commit_delay=0.2)  # long enough that each round is one batch


@pytest.mark.parametrize("kind", STORES)
def test_a_percent_sign_reaches_the_database_as_written(kind: str, tmp_path: Path) -> None:
    """The shared statements are templates (`{p}` a placeholder); on PostgreSQL the dialect
    escapes a literal `%` for psycopg when the statement has parameters, and only then."""
    async def scenario(store: Store) -> None:
        read = store._all  # type: ignore[attr-defined]
        assert await read("SELECT '50%' AS v", ()) == [{"v": "50%"}]
        assert await read("SELECT {p} AS v, '5%' AS w", ("x%",)) == [{"v": "x%", "w": "5%"}]

        def job(conn: Any) -> str:
            conn.execute("INSERT INTO meta (key, value) VALUES ('pct', '100%')")
            return str(conn.execute("SELECT value FROM meta WHERE key = {p}", ("pct",)
                                    ).fetchone()[0])

        assert await store._write(job) == "100%"  # type: ignore[attr-defined]

    run(scenario, kind, tmp_path)


NOW = 1_900_000_000.0  # the same in every run, so that runs compare row for row


def outcomes_batch_scenario(snapshots: list[dict[str, Any]], grouping: bool,
                            pipelining: bool = True) -> Any:
    """Batches as the forwarder, the tracker and the relay make them under load: many
    delivery outcomes, completions and callback outcomes, with claims among them, each batch one
    transaction, with every case their writes have (tracked or not, retried, dead, a route
    resumed, two deliveries of one event, a lost lease, a push and a poll of one execution, one
    change that fails)."""
    from bridge.core.errors import InternalError
    from bridge.core.models import Dead, RetryLater, RouteState

    async def scenario(store: Store) -> None:
        # PostgreSQL: each group's statement made (kind, changes) and, once its answer was
        # read, (kind, changes, True); and each run of statements sent in one pipeline.
        calls: list[tuple[Any, ...]] = []
        if hasattr(store, "grouping"):
            from bridge.store import postgres, postgres_connection

            store.grouping = grouping  # type: ignore[attr-defined]
            store.pipelining = pipelining  # type: ignore[attr-defined]

            def spy(kind: str, make: Any, read: Any) -> tuple[Any, Any]:
                def made(jobs: list[Any]) -> Any:
                    calls.append((kind, len(jobs)))
                    return make(jobs)

                def answered(conn: Any, jobs: list[Any], answer: Any) -> Any:
                    values = read(conn, jobs, answer)
                    calls.append((kind, len(jobs), True))
                    return values
                return made, answered

            for kind, name in (("record", "_records"), ("complete", "_completions"),
                               ("callback", "_callback_outcomes")):
                made, answered = spy(kind, getattr(store, name), getattr(store, name + "_read"))
                setattr(store, name, made)
                setattr(store, name + "_read", answered)
            sent = postgres.Connection.answers

            def answers(self: Any, statements: Any) -> Any:
                calls.append(("pipeline", len(statements)))
                return sent(self, statements)

            executed = postgres.Connection.execute

            def execute(self: Any, sql: str, params: Any = ()) -> Any:
                if sql == "COMMIT" and self.deferred():  # rows held for the commit's round trip
                    calls.append(("commit", sum(len(held.rows) for held in self.held
                                                if isinstance(held, postgres_connection.DeferredRows))))
                return executed(self, sql, params)

            patch = pytest.MonkeyPatch()
            patch.setattr(postgres.Connection, "answers", answers)
            patch.setattr(postgres.Connection, "execute", execute)
        try:
            await batches(store, calls)
        finally:
            if hasattr(store, "grouping"):
                patch.undo()

    async def batches(store: Store, calls: list[tuple[Any, ...]]) -> None:
        routes = {"k1": ["r1"], "k2": ["r1", "r2"], "k3": ["r1", "r2"], "k4": ["r2"],
                  "k5": ["r1"], "k6": ["r2"], "k7": ["r1"], "k8": ["r1"], "k9": ["r3"]}
        stored: dict[str, str | None] = {}
        for key, names in routes.items():
            stored[key] = (await store.accept(
                event(key, NOW, callback_url="https://cb.example/sender" if key == "k1" else None,
                      fingerprint=b"\x02" * 16 if key == "k9" else None),
                [NewDelivery(r, "t", f"{key}:{r}", b"{}", "application/json") for r in names]
            )).event_id
        claimed = {c.idempotency_key: c for c in await store.claim("w", NOW, 60, 100, 30)}
        assert len(claimed) == 11
        for route in ("r2", "r3"):
            await store.set_route_state(route, RouteState.PAUSED, "failing", NOW, 30)

        def record(key: str, outcome: Any, owner: str = "w", next_at: float | None = None,
                   track: bool = True, started: Any = NOW) -> Any:
            c = claimed[key]
            attempt = Attempt(c.id, started, 2.5, "delivered" if isinstance(outcome, Delivered)
                              else "failed", getattr(outcome, "status_code", None),
                              None if isinstance(outcome, Delivered) else "no", "excerpt")
            return store.record(c, owner, attempt, outcome, next_at, NOW, 30,
                                NOW + 3600 if track else None,
                                NOW if isinstance(outcome, RetryLater) else None)

        first = await asyncio.gather(
            record("k1:r1", Delivered("exe-k1", 202)),
            record("k2:r1", Delivered("exe-k2", 202)),
            record("k2:r2", RetryLater("busy", 503), next_at=NOW + 30),
            record("k3:r1", Delivered(None, 200), track=False),
            record("k3:r2", Dead("refused", 400)),
            record("k4:r2", RetryLater("slow down", 429, counts_as_failure=False),
                   next_at=NOW + 5),
            record("k5:r1", Delivered("exe-k5", 202), owner="someone else"),  # lease lost
            record("k6:r2", Delivered("exe-k6", 202)),  # resumes the paused route
            record("k9:r3", RetryLater("busy", 503), next_at=NOW + 30),  # does not
            # Claims in the same batch, after the outcomes: they see what those wrote.
            store.claim_executions("t", NOW + 3600, 60, 3),
            store.claim_callbacks("c0", NOW, 60, 10),
            # Acknowledgements in the same batch: new, stored before, twice in the batch, and
            # the signed content of one stored before under a new id.
            store.accept(event("k10", NOW), delivery("k10")),
            store.accept(event("k1", NOW), delivery("k1")),
            store.accept(event("k11", NOW), delivery("k11")),
            store.accept(event("k11", NOW), delivery("k11")),
            store.accept(event("k12", NOW, fingerprint=b"\x02" * 16), delivery("k12")))
        assert first[:9] == [True] * 6 + [False, True, True]
        tracked, no_callbacks = first[9:11]
        assert sorted(x.id for x in tracked) == ["exe-k1", "exe-k2", "exe-k6"]
        assert no_callbacks == []
        new, again, once, twice, replay = first[11:]
        assert not new.duplicate and not once.duplicate
        assert (again.duplicate, again.event_id) == (True, stored["k1"])
        assert (twice.duplicate, twice.event_id) == (True, once.event_id)
        assert (replay.duplicate, replay.event_id) == (True, stored["k9"])
        # A change the database refuses (an attempt without its time) is undone alone.
        # With a claim in its batch, whose run of statements the refusal sends back to one at
        # a time too.
        second = await asyncio.gather(record("k7:r1", Delivered("exe-k7", 202), started=None),
                                      record("k8:r1", Delivered("exe-k8", 202)),
                                      store.claim_executions("u", NOW + 3600, 60, 10),
                                      return_exceptions=True)
        assert isinstance(second[0], InternalError) and second[1] is True
        assert [x.id for x in second[2]] == ["exe-k8"]  # the others are leased

        targets = CallbackTargets({"r1": ("https://cb.example/r1",),
                                   "r2": ("https://cb.example/r2",)})
        ended = await asyncio.gather(*(
            store.complete_execution(execution, ExecutionResult(*result), NOW, targets)
            for execution, result in (
                ("exe-k1", ("completed", {"n": 1})), ("exe-k2", ("failed", None, None, "boom")),
                ("exe-k2", ("failed", None, None, "boom")),  # a push and a poll of one end
                ("exe-k6", ("completed", [1, 2])), ("exe-k8", ("cancelled",)),
                ("exe-missing", ("completed",)))))
        assert ended == [True, True, False, True, True, False]

        callbacks = sorted(await store.claim_callbacks("c", NOW, 60, 10),
                           key=lambda c: (c.execution_id, c.url))
        assert [(c.execution_id, c.url) for c in callbacks] == [
            ("exe-k1", "https://cb.example/r1"), ("exe-k1", "https://cb.example/sender"),
            ("exe-k2", "https://cb.example/r1"), ("exe-k6", "https://cb.example/r2"),
            ("exe-k8", "https://cb.example/r1")]
        plans = [(True, None, None, "c"), (False, NOW + 60, "503", "c"),
                 (False, None, "gone", "c"), (True, None, None, "x"), (True, None, None, "c")]
        sent = await asyncio.gather(*(
            store.record_callback(cb, owner, Attempt(cb.id, NOW, 1.0, "sent", 200), ok, at,
                                  why, NOW) for cb, (ok, at, why, owner) in zip(
                callbacks, plans, strict=True)))
        assert sent == [True, True, True, False, True]

        async def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(row.values())
                    for row in await store._all(sql, ())]  # type: ignore[attr-defined]

        snapshot = {
            "events": await rows("SELECT idempotency_key, state FROM events"
                                 " ORDER BY idempotency_key"),
            "deliveries": await rows(
                "SELECT idempotency_key, status, attempts, failures, next_attempt_at,"
                " execution_id, last_error, reached_at, lease_owner, updated_at"
                " FROM deliveries ORDER BY idempotency_key"),
            "attempts": await rows(
                "SELECT COALESCE(d.idempotency_key, c.url || ' ' || c.execution_id), a.outcome,"
                " a.started_at, a.latency_ms, a.status_code, a.error, a.response_excerpt"
                " FROM attempts a LEFT JOIN deliveries d ON d.id = a.delivery_id"
                " LEFT JOIN callbacks c ON c.id = a.delivery_id ORDER BY 1"),
            "executions": await rows(
                "SELECT id, delivery_id IS NOT NULL, route, trigger, status, output,"
                " node_results, error, deadline_at, lease_owner FROM executions ORDER BY id"),
            "callbacks": await rows(
                "SELECT execution_id, url, sender_supplied, status, attempts, failures,"
                " next_attempt_at, last_error, lease_owner FROM callbacks"
                " ORDER BY execution_id, url"),
            "routes": await rows("SELECT name, state, reason FROM routes ORDER BY name"),
            "groups": calls}
        # New acknowledgements wait to be claimed: one delivery each, none for a duplicate.
        assert [row[:3] for row in snapshot["deliveries"] if row[0] in ("k10:t", "k11:t")] == [
            ("k10:t", "pending", 0), ("k11:t", "pending", 0)]
        assert len(snapshot["deliveries"]) == 11 + 2
        snapshots.append(snapshot)
        assert dict(snapshot["events"]) == {
            "k1": "delivered", "k2": "queued", "k3": "dead", "k4": "queued", "k5": "queued",
            "k6": "delivered", "k7": "queued", "k8": "delivered", "k9": "queued", "k10": "queued",
            "k11": "queued"}
        assert snapshot["routes"] == [("r2", "active", None), ("r3", "paused", "failing")]
        assert [(x[0], x[4]) for x in snapshot["executions"]] == [
            ("exe-k1", "completed"), ("exe-k2", "failed"), ("exe-k6", "completed"),
            ("exe-k8", "cancelled")]
        assert len(snapshot["attempts"]) == 9 + 4  # the lost leases and the refused wrote none
        by_key = {row[0]: row[1:] for row in snapshot["deliveries"]}
        assert by_key["k2:r2"][:4] == ("pending", 1, 1, NOW + 30)
        assert by_key["k4:r2"][:4] == ("pending", 1, 0, NOW + 5)
        assert by_key["k5:r1"][0] == by_key["k7:r1"][0] == "leased"
        assert [row[3:6] for row in snapshot["callbacks"]] == [
            ("delivered", 1, 0), ("pending", 1, 1), ("dead", 1, 1), ("leased", 0, 0),
            ("delivered", 1, 0)]

    return scenario


@pytest.mark.parametrize("kind", STORES)
def test_a_batchs_outcomes_are_written_as_one_by_one(kind: str, tmp_path: Path) -> None:
    """On PostgreSQL a batch's delivery outcomes, completions and callback outcomes are each
    written in one statement: the rows they leave are the same, column for column, as those
    of the same changes written one at a time (and as SQLite's), and a change the database
    refuses sends its group back to one at a time, where it alone fails."""
    snapshots: list[dict[str, Any]] = []
    run(outcomes_batch_scenario(snapshots, True), kind, tmp_path, commit_delay=0.2)
    if kind == "sqlite":
        assert snapshots[0]["groups"] == []
        return
    run(outcomes_batch_scenario(snapshots, True, pipelining=False), kind, tmp_path,
        commit_delay=0.2)
    run(outcomes_batch_scenario(snapshots, False), kind, tmp_path, commit_delay=0.2)
    pipelined, grouped, alone = snapshots
    # The first batch's acknowledgements, outcomes and the two claims: one round trip. The refused
    # change sends its run back to one at a time, where its group fails again, and then its
    # changes go one by one. A change alone of its kind is a group of one. The completions'
    # five callbacks go with the commit of their batch, not in a round trip of their own.
    assert pipelined["groups"] == [
        ("record", 9), ("pipeline", 4), ("record", 9, True),
        ("record", 2), ("pipeline", 2), ("record", 2),
        ("complete", 6), ("complete", 6, True), ("commit", 5),
        ("callback", 5), ("callback", 5, True)]
    assert grouped["groups"] == [
        ("record", 9), ("record", 9, True), ("record", 2),
        ("complete", 6), ("complete", 6, True), ("commit", 5),
        ("callback", 5), ("callback", 5, True)]
    assert alone["groups"] == []
    for other in grouped, alone:
        assert {k: v for k, v in pipelined.items() if k != "groups"} == \
            {k: v for k, v in other.items() if k != "groups"}


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("bad", ["push\ud800", "push\x00"], ids=["lone-surrogate", "nul"])
def test_one_accept_the_store_refuses_fails_alone(kind: str, bad: str, tmp_path: Path) -> None:
    """One group commit holds 40 ordinary accepts and 5 whose text the store cannot hold as it
    is: the 40 are stored, each bad one fails (or is made storable) on its own."""
    async def scenario(store: Store) -> None:
        now = time.time()
        good = [event(f"s:good-{i}", now) for i in range(40)]
        hostile = [VerifiedEvent(new_id(), "s", "github", bad, f"s:bad-{i}", now, {}, b"{}")
                   for i in range(5)]
        mixed = good[:20] + hostile + good[20:]
        results = await asyncio.gather(*(store.accept(e, delivery(e.idempotency_key))
                                         for e in mixed), return_exceptions=True)
        by_id = dict(zip((e.id for e in mixed), results, strict=True))
        assert all(not isinstance(by_id[e.id], BaseException) for e in good), results
        assert all(isinstance(by_id[e.id], InternalError) or not isinstance(
            by_id[e.id], BaseException) for e in hostile), results
        claimed = await store.claim("w", now, 60, 500, 30)
        assert {c.event_id for c in claimed} >= {e.id for e in good}

    run(scenario, kind, tmp_path, commit_delay=0.05)
