"""Store contract: exclusive claims and lost leases. Written against the `Store` protocol and
run against every implementation: SQLite, and PostgreSQL in a schema of its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bridge.core.models import Attempt, Delivered, NewDelivery, RetryLater, VerifiedEvent, new_id
from bridge.store import Store
from tests.support.stores import STORES, run


async def _accept(store: Store, n: int, now: float) -> None:
    for i in range(n):
        event = VerifiedEvent(new_id(), "s", "github", "push", f"s:{i}", now, {}, b"{}")
        await store.accept(event, [NewDelivery("r", "t", f"s:{i}:t", b"{}", "application/json")])


def _attempt(delivery_id: str, now: float) -> Attempt:
    return Attempt(delivery_id, now, 1.0, "delivered", 202)


@pytest.mark.parametrize("kind", STORES)
def test_a_lost_lease_writes_nothing(kind: str, tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        now = time.time()
        await _accept(store, 1, now)
        [mine] = await store.claim("a", now, 1.0, 10, 30.0)
        # The lease expires; another worker claims the same delivery.
        [theirs] = await store.claim("b", now + 2, 60.0, 10, 30.0)
        assert theirs.id == mine.id
        assert not await store.record(mine, "a", _attempt(mine.id, now), Delivered("x-a", 202),
                                      None, now + 3, 30.0)
        event = await store.get_event(mine.event_id)
        assert event is not None and event.deliveries[0].attempt_log == ()
        assert event.deliveries[0].status == "leased"
        assert await store.record(theirs, "b", _attempt(theirs.id, now), Delivered("x-b", 202),
                                  None, now + 3, 30.0)
        event = await store.get_event(mine.event_id)
        assert event is not None
        [delivery] = event.deliveries
        assert delivery.execution_id == "x-b" and len(delivery.attempt_log) == 1
        # Recording again on a settled delivery changes nothing either.
        assert not await store.record(theirs, "b", _attempt(theirs.id, now),
                                      RetryLater("late"), now + 10, now + 4, 30.0)

    run(scenario, kind, tmp_path)


@pytest.mark.parametrize("kind", STORES)
def test_concurrent_claims_are_exclusive(kind: str, tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        now = time.time()
        await _accept(store, 200, now)
        batches = await asyncio.gather(*(store.claim(f"w{i}", now, 60.0, 17, 30.0)
                                         for i in range(16)))
        ids = [d.id for batch in batches for d in batch]
        assert len(ids) == 200 and len(set(ids)) == 200

    run(scenario, kind, tmp_path)


@pytest.mark.parametrize("kind", STORES)
def test_a_claim_waits_out_a_hold_skips_paused_routes_and_probes_them(kind: str,
                                                                     tmp_path: Path) -> None:
    """What one claim weighs (on PostgreSQL, in one statement): the platform's hold, paused
    routes (their deliveries wait, one is probed when its probe is due), the limit, and
    expired leases, which are due again."""
    from bridge.core.models import RouteState

    async def scenario(store: Store) -> None:
        now = time.time()
        for i, route in enumerate("rrrrrpp"):
            event = VerifiedEvent(new_id(), "s", "github", "push", f"s:{i}", now, {}, b"{}")
            await store.accept(event, [NewDelivery(route, "t", f"s:{i}:t", b"{}",
                                                   "application/json")])
        await store.set_route_state("p", RouteState.PAUSED, "401", now, 30.0)
        await store.hold(now + 10, now)
        assert await store.claim("a", now + 5, 60.0, 10, 30.0) == []  # the platform said wait
        first = await store.claim("a", now + 11, 60.0, 3, 30.0)
        assert [(d.route, d.probe) for d in first] == [("r", False)] * 3
        rest = await store.claim("a", now + 11, 60.0, 10, 30.0)
        assert [(d.route, d.probe) for d in rest] == [("r", False)] * 2  # p waits, no probe yet
        [probe] = await store.claim("a", now + 31, 60.0, 10, 30.0)  # its probe is due
        assert (probe.route, probe.probe) == ("p", True)
        for i in (7, 8):  # two more, due
            event = VerifiedEvent(new_id(), "s", "github", "push", f"s:{i}", now, {}, b"{}")
            await store.accept(event, [NewDelivery("r", "t", f"s:{i}:t", b"{}",
                                                   "application/json")])
        # Every lease has expired: due again after the due ones, up to the limit, plus the
        # paused route's probe.
        again = await store.claim("b", now + 100, 60.0, 4, 30.0)
        assert sorted((d.route, d.probe) for d in again) == [("p", True)] + [("r", False)] * 4
        assert len({d.id for d in again} & {d.id for d in first + rest}) == 2

    run(scenario, kind, tmp_path)
