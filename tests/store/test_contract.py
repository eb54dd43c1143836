"""Store contract: what every store promises, whatever it runs on. Each test runs against
SQLite and against PostgreSQL (a schema of its own)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.models import (
    Attempt,
    CallbackTargets,
    Delivered,
    ExecutionResult,
    NewDelivery,
    VerifiedEvent,
    new_id,
)
from bridge.store import Store
from tests.store.test_leases import STORES, run


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
    from bridge.errors import InternalError

    def put(key: str, twice: bool = False, fail_after: bool = False) -> Any:
        def job(conn: Any) -> str:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))
            if twice:  # the primary key refuses it
                conn.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))
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
    """The shared statements are written with `?` placeholders; on PostgreSQL they become
    psycopg's `%s`, and a literal `%` must survive that whether or not the statement has
    parameters."""
    async def scenario(store: Store) -> None:
        read = store._all  # type: ignore[attr-defined]
        assert await read("SELECT '50%' AS v", ()) == [{"v": "50%"}]
        assert await read("SELECT ? AS v, '5%' AS w", ("x%",)) == [{"v": "x%", "w": "5%"}]

        def job(conn: Any) -> str:
            conn.execute("INSERT INTO meta (key, value) VALUES ('pct', '100%')")
            return str(conn.execute("SELECT value FROM meta WHERE key = ?", ("pct",)
                                    ).fetchone()[0])

        assert await store._write(job) == "100%"  # type: ignore[attr-defined]

    run(scenario, kind, tmp_path)
