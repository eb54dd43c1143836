"""Store contract: what every store promises, whatever it runs on. Each test runs against
SQLite and against PostgreSQL (a schema of its own)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

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
