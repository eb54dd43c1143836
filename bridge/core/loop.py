"""The shape shared by the forwarder, the tracker and the relay: claim leased work, handle it.

A subclass provides `claim(limit, now)`, `handle(item)`, `poisoned(item, exc)` and `release()`;
optionally `next_due()` (when the next item falls due, so an idle loop sleeps just long enough)
and `holding()` (seconds to claim nothing, e.g. while rate limited).

The poison path is owned here, once: an item whose handling raises something unexpected is a bug
or a hostile value, not an outage. It is logged with its traceback and handed to `poisoned()`,
which records it as a failed attempt, so it backs off and ends dead instead of holding its lease
and failing again every lease period. Only `StoreUnavailable` (the store cannot write) leaves the
lease to expire, since nothing can be recorded then.

An item's slot is held while its request is out, not while its outcome is written: `settle()`
records it in the background (the writer commits it with others), so the next item's request can
start at once. Without this a slot spends a commit (and the group-commit wait) per item, and the
loop's concurrency, not the CPU, caps its throughput.

`run_once(now)` claims one batch and handles all of it, outcomes recorded: tests call it
directly. `run()` keeps up to `concurrency` items in flight and claims again once a quarter of
the slots are free, so a stream of completions costs one claim per several items. `stop()` stops
claiming, waits a bounded grace for in-flight items and the outcomes being recorded, cancels the
rest and gives their leases back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from bridge.core.errors import StoreUnavailable

T = TypeVar("T")
log = logging.getLogger("bridge.loop")


def owner_id(role: str) -> str:
    """Who holds a lease: host, process and a random part, so replicas never collide."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}:{role}"


class ClaimLoop(Generic[T]):
    name = "loop"

    def __init__(self, *, concurrency: int, batch_size: int, poll_interval: float,
                 shutdown_grace: float, clock: Callable[[], float] = time.time) -> None:
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.clock = clock
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.settling: set[asyncio.Task[None]] = set()  # outcomes being recorded
        # Whether a finished item should wake the loop: when the last claim filled every free
        # slot (more may be due), or when an item scheduled work for later (`recheck`), so the
        # loop asks again when the next item falls due. Otherwise new work wakes it through the
        # store's watch hook, and a finished item costs no claim of nothing.
        self.saturated = False
        self.rescan = False
        # Whether the last claim took all it asked for: work is waiting, so the next claim is
        # urgent (the store begins its batch at once instead of gathering company for it).
        self.backlog = False
        # When the next item falls due, as the store last said. Asked again only when it may
        # have changed: an item of ours was scheduled for later, the time has come, or the
        # loop woke from its poll interval (another process may have scheduled something);
        # new work from a commit is due at once, and is claimed.
        self.due: float | None = None
        self.due_known = False

    # to implement

    async def claim(self, limit: int, now: float) -> list[T]:
        raise NotImplementedError

    async def handle(self, item: T) -> None:
        raise NotImplementedError

    async def poisoned(self, item: T, exc: Exception) -> None:
        """Record `item` as a failed attempt after `handle` raised `exc`."""
        raise NotImplementedError

    async def release(self) -> None:
        """Give back the leases this loop still holds."""

    async def next_due(self) -> float | None:
        return None

    def holding(self) -> float:
        return 0.0

    # the loop

    async def run_once(self, now: float | None = None) -> int:
        items = await self.claim(self.batch_size, self.clock() if now is None else now)
        await asyncio.gather(*(self._guarded(item) for item in items))
        await self.drain()
        return len(items)

    def settle(self, record: Coroutine[Any, Any, None], later: bool = False) -> None:
        """Record an item's outcome without holding its slot. `later`: the item falls due again
        (a retry): once it is written, the loop asks the store when the next item is due."""
        task = asyncio.create_task(self._settled(record))
        self.settling.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self.settling.discard(task)
            if later:
                self.recheck()
                self.wake.set()

        task.add_done_callback(done)

    async def _settled(self, record: Coroutine[Any, Any, None]) -> None:
        try:
            await record
        except StoreUnavailable:
            log.error("could not record the outcome: store unavailable; the lease will expire",
                      extra={"loop": self.name})
        except Exception:
            log.exception("could not record the outcome; the lease will expire",
                          extra={"loop": self.name})

    async def drain(self) -> None:
        """Wait for the outcomes being recorded."""
        while self.settling:
            await asyncio.gather(*self.settling, return_exceptions=True)

    async def run(self) -> None:
        refill = max(1, self.concurrency // 4)
        while not self.stopping.is_set():
            held = self.holding()
            if held > 0:  # claim nothing, so no lease ages while we wait
                await self._sleep(held)
                continue
            self.wake.clear()
            free = self.concurrency - len(self.in_flight)
            items: list[T] = []
            claiming = free >= refill or not self.in_flight
            self.saturated = not claiming
            if claiming:
                try:
                    items = await self.claim(min(free, self.batch_size), self.clock())
                except StoreUnavailable:
                    log.warning("claim failed: store unavailable", extra={"loop": self.name})
                    self.saturated = True  # try again as items finish
                self.backlog = len(items) >= min(free, self.batch_size)
                self.saturated = self.saturated or self.backlog
            for item in items:
                task = asyncio.create_task(self._guarded(item))
                self.in_flight.add(task)
                task.add_done_callback(self._done)
            if items and len(items) == free:
                continue  # there may be more due right now
            # Slots full: only a finished item (which sets `wake`) can let us claim again, so
            # there is no point asking the store when the next item falls due.
            await self._idle(ask_store=claiming)

    async def _guarded(self, item: T) -> None:
        try:
            await self.handle(item)
        except StoreUnavailable:
            log.error("could not record the outcome: store unavailable; the lease will expire",
                      extra={"loop": self.name})
        except Exception as exc:
            log.exception("unexpected error: counted as a failed attempt",
                          extra={"loop": self.name})
            try:
                await self.poisoned(item, exc)
            except Exception:
                log.exception("could not record the failed attempt; the lease will expire",
                              extra={"loop": self.name})

    def recheck(self) -> None:
        """An item was scheduled for later (a retry, a poll): once it is handled, ask the
        store again when the next item falls due."""
        self.rescan = True
        self.due_known = False

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if self.saturated or self.rescan or self.stopping.is_set():
            self.rescan = False
            self.wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _idle(self, ask_store: bool = True) -> None:
        if self.stopping.is_set():  # `wake` may have been cleared after `stop()` set it
            return
        timeout = self.poll_interval
        now = self.clock()
        due: float | None = None
        if ask_store:
            if not self.due_known or (self.due is not None and self.due <= now):
                try:
                    self.due, self.due_known = await self.next_due(), True
                except StoreUnavailable:
                    self.due, self.due_known = None, False
            due = self.due
        if due is not None:
            timeout = max(0.0, min(timeout, due - now))
        # One wait on `wake`, which `stop()` sets too, and a timer: cheaper than racing two
        # waits under asyncio.wait, and an idle loop comes here once per item at a trickle.
        timer = asyncio.get_running_loop().call_later(timeout, self._poll_due)
        try:
            await self.wake.wait()
        finally:
            timer.cancel()

    def _poll_due(self) -> None:
        """The poll interval passed: look again at when the next item falls due."""
        self.due_known = False
        self.wake.set()

    async def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.in_flight:
            _, pending = await asyncio.wait(set(self.in_flight), timeout=self.shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.settling:  # outcomes first: giving the leases back before would lose them
            _, pending = await asyncio.wait(set(self.settling), timeout=self.shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(StoreUnavailable):
            await self.release()
