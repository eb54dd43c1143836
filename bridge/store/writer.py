"""The store's writer thread: one SQLite connection, one transaction per batch of changes.

Callers on the event loop queue `(job, future)` pairs; the thread takes everything waiting (up to
MAX_BATCH), hands the jobs to `apply` (which runs them in one transaction and commits), and gives
the results back to the event loop in one call. It then takes the next batch at once, without
waiting for the event loop to pass it on.

Group commit when changes trickle in: a batch begins once as many changes are queued as made up
the last batch, or `delay` (`[store] commit_delay`, 10 ms) after its first, whichever comes
first. Changes that come on their own (a steady 300 events/s: each event's acknowledgement, claims,
outcomes and callbacks) then share a transaction instead of taking one each, so commits, fsyncs
and thread wake-ups all fall. Callers that wait on each other's commits (32 senders each waiting
for its 2xx before sending again) come back together: the batch begins as soon as they have, and
nobody waits out the delay. Under load the queue is never empty and nothing waits at all. The
measurements behind this are in docs/performance.md ("The whole loop").

Why a thread of its own rather than an executor or aiosqlite's worker: the `sqlite3` module
releases the GIL around every statement and must win it back from a busy event loop each time,
so the fewer hand-offs between a batch's arrival and its commit, the shorter each commit (see
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

MAX_BATCH = 512  # changes per transaction at most

Job = tuple[Any, "asyncio.Future[Any]"]  # a change for `apply`, and who waits for it


class Writer:
    """A failed commit fails only its own batch (its callers get the exception); the thread
    carries on with the next. `stop()` applies what was queued before it, then closes the
    connection."""

    def __init__(self, conn: sqlite3.Connection,
                 apply: Callable[[sqlite3.Connection, list[Any]],
                                 tuple[list[tuple[bool, Any]], frozenset[str]]],
                 finish: Callable[..., None], delay: float = 0.0) -> None:
        self.conn = conn
        self.delay = delay
        self.apply = apply  # -> (each job's outcome, the kinds of work that fell due)
        self.finish = finish
        self.loop = asyncio.get_running_loop()
        self.open = True
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # Group commit: a batch begins once `expected` changes are queued (the last batch's
        # size) or `delay` after its first; `gathering` says a batch is waiting to begin.
        self.expected = MAX_BATCH
        self.gathering = False
        self.urgent = False  # an urgent change is queued: no waiting
        self.enough = threading.Event()
        self.stopped: asyncio.Future[None] = self.loop.create_future()
        self.thread = threading.Thread(target=self.run, name="store-writer", daemon=True)
        self.thread.start()

    def submit(self, job: Any, future: asyncio.Future[Any], urgent: bool = False) -> None:
        """`urgent`: begin the batch now (someone is idle until it commits: a claim with a
        backlog behind it, or one of many senders waiting for their 2xx)."""
        if urgent:
            self.urgent = True
        self.jobs.put((job, future))
        if self.gathering and (urgent or self.jobs.qsize() + 1 >= self.expected):
            self.enough.set()

    async def stop(self) -> None:
        self.open = False
        self.jobs.put(None)
        await asyncio.shield(self.stopped)

    def run(self) -> None:
        stopping = False
        try:
            while not stopping:
                item = self.jobs.get()
                if self.delay and item is not None:
                    self.gather()
                batch: list[Job] = []
                while True:
                    if item is None:
                        stopping = True  # finish what was queued before the stop
                    else:
                        batch.append(item)
                    if len(batch) >= MAX_BATCH:
                        break
                    try:
                        item = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self.expected = max(2, len(batch))
                    self.commit(batch)
        finally:
            self.conn.close()
            self.hand_back(self.stopped.set_result, None)

    def gather(self) -> None:
        """Wait (up to `delay`) until as many changes are queued as the last batch held."""
        self.enough.clear()
        self.gathering = True
        if not self.urgent and self.jobs.qsize() + 1 < self.expected:
            self.enough.wait(self.delay)
        self.gathering = False
        self.urgent = False

    def commit(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        try:
            results, new_work = self.apply(self.conn, [job for job, _ in batch])
        except Exception as exc:  # handed to the callers as a 503
            self.hand_back(self.finish, batch, None, exc, 0.0, frozenset())
        else:
            self.hand_back(self.finish, batch, results, None, time.perf_counter() - started,
                           new_work)

    def hand_back(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is already closed: nobody is waiting
            pass
