"""Every method of every role (`bridge.store.roles`), on both stores: what each answers, in one
scenario per store, and a check that the scenario called them all (a method added to a role
without a contract here fails it). The harder paths have tests of their own beside this one:
leases (`test_leases.py`), batches and refusals (`test_contract.py`), and the two stores held
to each other on random sequences (`test_differential.py`)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest

from bridge.core.models import (
    AgentAttempt,
    AgentCompletion,
    Attempt,
    CallbackTargets,
    Dead,
    Delivered,
    ExecutionResult,
    NewDelivery,
    RetryLater,
    RouteState,
    VerifiedEvent,
)
from bridge.store import Store, roles
from bridge.store.kinds import DELIVERIES, JOURNAL
from bridge.store.records import TrafficCount
from tests.support.stores import STORES, run

T = 1_900_000_000.0
TARGETS = CallbackTargets({"r1": ("https://cb.example/r1",)})


def role_methods() -> set[str]:
    """Every method of every role the `Store` protocol gathers."""
    return {name for name, _ in inspect.getmembers(roles.Store, inspect.isfunction)
            if not name.startswith("_")}


class Recorded:
    """The store, noting which of its methods were called."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.called: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.store, name)
        if callable(value):
            self.called.add(name)
        return value


def event(n: int, *routes: str, source: str = "s", **extra: Any) -> tuple[VerifiedEvent,
                                                                           list[NewDelivery]]:
    return (VerifiedEvent(f"ev-{n}", source, "github", "push", f"{source}:{n}", T + n, {"h": "v"},
                          b'{"n":%d}' % n, **extra),
            [NewDelivery(r, f"t-{r}", f"{source}:{n}:{r}", b"{}", "application/json",
                         channel="plant" if r == "edge" else None) for r in routes])


@pytest.mark.parametrize("kind", STORES)
def test_every_role_method_keeps_its_contract(kind: str, tmp_path: Path) -> None:
    async def scenario(raw: Store) -> None:
        s: Any = Recorded(raw)
        woken: list[str] = []
        s.watch(lambda: woken.append("deliveries"), frozenset({DELIVERIES}))
        s.watch(lambda: woken.append("journal"), frozenset({JOURNAL}))
        # Lifecycle: a probe write, and keys made once and kept.
        await s.check_writable()
        key = await s.secret_key()
        assert len(key) >= 32 and await s.secret_key() == key
        name = await s.instance_id()
        assert name and await s.instance_id() == name

        # Ingest: stored, read back, woken, settled only when nothing is left to do.
        waiting = asyncio.ensure_future(s.changed(5.0))
        for n, routes in ((1, ("r1",)), (2, ("r1", "r2")), (3, ("edge",)), (4, ())):
            accepted = await s.accept(*event(n, *routes))
            assert not accepted.duplicate and accepted.event_id == f"ev-{n}"
        await waiting  # woken by a commit, well before its timeout
        assert "deliveries" in woken
        assert (await s.get_event("ev-2")).deliveries[1].route == "r2"
        assert await s.get_event("missing") is None
        assert not await s.event_settled("ev-1") and await s.event_settled("ev-4")
        assert await s.event_body("ev-1") == b'{"n":1}' and await s.event_body("no") is None
        # A secret learned in a handshake: kept per source, replaced by the next one.
        assert await s.learned_secret("asana") is None
        await s.learn_secret("asana", "first-secret", T)
        await s.learn_secret("other", "other-secret", T)
        assert await s.learned_secret("asana") == "first-secret"
        await s.learn_secret("asana", "second-secret", T + 1)
        assert await s.learned_secret("asana") == "second-secret"
        assert await s.learned_secret("other") == "other-secret"

        # Outbox: a hold stops every claim until it ends; claims in due order.
        await s.hold(T + 50, T + 10)
        assert await s.claim("w", T + 20, 60, 10, 30) == []
        assert await s.next_due() == T + 50  # due since T + 1, but held until T + 50
        claimed = {d.idempotency_key: d for d in await s.claim("w", T + 60, 60, 10, 30)}
        assert sorted(claimed) == ["s:1:r1", "s:2:r1", "s:2:r2"]  # not the channel's

        def attempt(key: str, status: int) -> Attempt:
            return Attempt(claimed[key].id, T + 61, 1.0, "x", status)

        assert await s.record(claimed["s:1:r1"], "w", attempt("s:1:r1", 202),
                              Delivered("exe-1", 202), None, T + 61, 30, T + 3600)
        assert await s.record(claimed["s:2:r1"], "w", attempt("s:2:r1", 503),
                              RetryLater("busy", 503), T + 500, T + 61, 30, reached_at=T + 61)
        assert await s.record(claimed["s:2:r2"], "w", attempt("s:2:r2", 400),
                              Dead("refused", 400), None, T + 61, 30)
        assert await s.release("w") == 0  # nothing left leased by w
        # Operations on what the outbox left: retry now, the dead ones, counts.
        retried = await s.retry_now(claimed["s:2:r1"].id, T + 62)
        assert retried is not None and retried.route == "r1" and not retried.resumed
        assert await s.retry_now("no-such-delivery", T + 62) is None
        dead_id = claimed["s:2:r2"].id
        assert await s.dead_deliveries([dead_id, claimed["s:1:r1"].id, "nope"]) == (
            [dead_id], [claimed["s:1:r1"].id, "nope"])
        assert [d.id for d in await s.dead_letters(route="r2")] == [dead_id]
        assert await s.count_unsafe([dead_id], T + 100) == 0  # it never reached the platform
        assert await s.count_superseded([dead_id]) == 0
        assert await s.pending_by_route() == {"r1": 1, "edge": 1}  # the channel's waits too
        assert await s.counts() == {
            "events": {"delivered": 1, "queued": 2, "unrouted": 1},
            "deliveries": {"dead": 1, "delivered": 1, "pending": 2}}
        assert (await s.source_counts())["s"].events == 4
        listed = await s.list_events(state="queued")
        assert [e.id for e in listed] == ["ev-3", "ev-2"]  # newest first
        assert [e.id for e in await s.list_events(key_contains=":1")] == ["ev-1"]
        assert await s.replay("ev-1", [NewDelivery("r1", "t-r1", "again", b"{}", "x/y")],
                              T + 63) == 1
        assert await s.redrive([dead_id], T + 64) == 1
        assert await s.discard([dead_id], "no longer wanted", T + 65) == 0  # pending, not dead
        # Routes: paused and resumed, read back.
        await s.set_route_state("r2", RouteState.PAUSED, "operator", T + 66, 30)
        assert (await s.route_states())["r2"].state == RouteState.PAUSED
        await s.set_route_state("r2", RouteState.ACTIVE, None, T + 67, 30)
        assert "r2" not in await s.route_states() or \
            (await s.route_states())["r2"].state == RouteState.ACTIVE

        # Executions: claimed, rescheduled, read, completed once, with its callbacks.
        assert await s.next_execution_due() == T + 61
        [tracked] = await s.claim_executions("t", T + 70, 60, 10)
        assert tracked.id == "exe-1"
        assert await s.reschedule_execution("exe-1", "t", "running", T + 80, T + 71)
        assert (await s.get_execution("exe-1")).status == "running"
        assert await s.get_execution("nope") is None
        [tracked] = await s.claim_executions("t", T + 80, 60, 10)
        await s.release_leases("t")  # a tracker shutting down gives its leases back
        [tracked] = await s.claim_executions("t2", T + 81, 60, 10)
        assert await s.complete_execution("exe-1", ExecutionResult("completed", {"ok": 1}),
                                          T + 82, TARGETS)
        # Callbacks: claimed, one attempt recorded, nothing more due.
        assert await s.next_callback_due() == T + 82
        [callback] = await s.claim_callbacks("c", T + 83, 60, 10)
        assert callback.url == "https://cb.example/r1"
        assert await s.record_callback(callback, "c", Attempt(callback.id, T + 84, 2.0, "ok", 200),
                                       True, None, None, T + 84)
        assert await s.next_callback_due() is None

        # Channels: an agent pulls the edge's delivery, acknowledges it, reports on it.
        pull = await s.pull_channel("plant", "agent-1", "10.0.0.9", [], T + 90, 60, 10, 1 << 20)
        [item] = pull.items
        assert item.idempotency_key == "s:3:edge"
        again = await s.pull_channel("plant", "agent-1", None,
                                     [(item.delivery_id, item.generation)], T + 91, 60, 10, 1 << 20)
        assert again.items == [] and again.ignored == 0
        backlog, agents = await s.channel_stats()
        assert [(a.agent, a.acked) for a in agents] == [("agent-1", 1)]
        assert (backlog["plant"].waiting, backlog["plant"].handed_off) == (0, 1)
        reported = await s.channel_report("plant", "agent-1", [AgentAttempt(
            item.delivery_id, item.generation, "delivered",
            Attempt(item.delivery_id, T + 92, 3.0, "delivered", 202), "exe-3", True)],
            T + 92, T + 3600, TARGETS)
        assert reported.applied == 1 and reported.ignored == 0
        done = await s.channel_report("plant", "agent-1", [AgentCompletion(
            "exe-3", ExecutionResult("completed"))], T + 93, T + 3600, TARGETS)
        assert done.applied == 1
        assert await s.expire_channels(T + 10_000, T + 10_000) == 0  # nothing left handed off
        # An agent's journal: its outcomes, read and dropped once sent to its edge.
        raw.journaling = True
        await s.accept(*event(5, "r9"))
        [mine] = [d for d in await s.claim("agent", T + 95, 60, 10, 30) if d.route == "r9"]
        assert await s.record(mine, "agent", Attempt(mine.id, T + 96, 1.0, "x", 202),
                              Delivered(None, 202), None, T + 96, 30)
        journal = await s.read_journal(10)
        assert [entry.body["kind"] for entry in journal] == ["attempt"] and "journal" in woken
        await s.drop_journal([entry.id for entry in journal])
        assert await s.read_journal(10) == []

        # Console sessions and traffic.
        await s.start_session("sid", "tok", "csrf", T + 100, T + 200)
        assert await s.find_session("sid", T + 150) == {"token": "tok", "csrf": "csrf"}
        assert await s.find_session("sid", T + 250) is None  # expired
        await s.end_session("sid")
        assert await s.find_session("sid", T + 150) is None
        counts = [TrafficCount(100, "source", "s", "accepted", 3)]
        await s.add_traffic(counts)
        await s.add_traffic(counts)
        assert await s.traffic(99) == [TrafficCount(100, "source", "s", "accepted", 6)]

        # Housekeeping: what is finished and old is forgotten.
        # ev-3 (its agent delivered it), ev-4 (unrouted), ev-5 (delivered); ev-1 and ev-2 are busy.
        assert await s.prune(T + 10) == 3
        assert await s.get_event("ev-4") is None and await s.get_event("ev-2") is not None
        await s.close()
        await s.open()  # closed and opened again: the same store
        assert await s.instance_id() == name

        missing = role_methods() - s.called
        assert not missing, f"role methods without a contract here: {sorted(missing)}"

    run(scenario, kind, tmp_path)
