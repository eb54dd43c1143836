"""The store's writer thread: one SQLite connection, one transaction per batch of changes.

Callers on the event loop queue `(job, future)` pairs; the thread takes everything waiting (up to
MAX_BATCH), hands the jobs to `apply` (which runs them in one transaction and commits), and gives
the results back to the event loop in one call. It then takes the next batch at once, without
waiting for the event loop to pass it on.

Group commit when changes trickle in: a batch begins `delay` (`[store] commit_delay`, 10 ms)
after its first change, or sooner when someone is idle until it commits:
- an urgent change: a claim with a backlog behind it, or an acknowledgement with more than a few
  others waiting for theirs;
- as many acknowledgements queued as the last batch that had any held (at least two): senders
  in a closed loop (each sends again only once answered) come back together, and their batch
  begins as soon as they have, so nobody waits out the delay. At a trickle the count adds up
  only about as fast as the delay runs out. (A round that comes back split, some senders well
  after the others, waits out the delay once; a lone sender in a closed loop waits it every
  time: `commit_delay = "0s"` serves it best.);
- MAX_BATCH changes queued;
- a lone acknowledgement, and everything after it until the next one: one that comes more than
  `LONE_GAP` delays after the acknowledgement before it. Nobody is expected to keep it company,
  so waiting would only add the delay to its 2xx, and again to each step after it (the claim,
  the outcome, the completion and its callback, each a change of its own). A webhook on a quiet
  evening is answered and forwarded as if there were no group commit.
Changes that come on their own (a steady 300 events/s: each event's acknowledgement, claims,
outcomes and callbacks) then share a transaction instead of taking one each, so commits, thread
wake-ups and the rounds of claims each commit sets off all fall. Under load the queue is never
empty and nothing waits at all. Only acknowledgements are counted: claims and outcomes come in
clusters right after each commit (it woke the loops that make them), so counting them too began
a batch for every second change at a trickle, at ~10 % more CPU per event. The measurements
behind this are in docs/performance.md ("The whole loop").

Why a thread of its own rather than an executor or aiosqlite's worker: the `sqlite3` module
releases the GIL around every statement and must win it back from a busy event loop each time,
so the fewer hand-offs between a batch's arrival and its commit, the shorter each commit (see
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

MAX_BATCH = 512  # changes per transaction at most
LONE_GAP = 4  # an acknowledgement this many delays after the one before it is lone: no waiting

Job = tuple[Any, "asyncio.Future[Any]"]  # a change for `apply`, and who waits for it
Queued = tuple[Any, "asyncio.Future[Any]", bool]  # ... and whether a sender waits for its answer


class Writer:
    """A failed commit fails only its own batch (its callers get the exception); the thread
    carries on with the next. `stop()` applies what was queued before it, then closes the
    connection."""

    def __init__(self, conn: Any,
                 apply: Callable[[Any, list[Any]],
                                 tuple[list[tuple[bool, Any]], frozenset[str]]],
                 finish: Callable[..., None], delay: float = 0.0) -> None:
        self.conn = conn
        self.delay = delay
        self.apply = apply  # -> (each job's outcome, the kinds of work that fell due)
        self.finish = finish
        self.loop = asyncio.get_running_loop()
        self.open = True
        self.jobs: queue.SimpleQueue[Queued | None] = queue.SimpleQueue()
        # Group commit (see above). `gathering` says a batch is waiting to begin; `expected`
        # is how many acknowledgements the last batch that had any held (at least 2).
        # Acknowledgements queued so far, counted on the event loop's thread (`asked`) and on
        # this one as batches take them (`taken`), so each counter has one writer.
        self.gathering = False
        self.expected = 2
        self.asked = 0
        self.taken = 0
        self.urgent = False  # an urgent change is queued: no waiting
        self.lone = False  # the last acknowledgement came alone: no waiting until the next one
        self.last_ask = -float("inf")  # when the last acknowledgement was queued (monotonic)
        self.enough = threading.Event()
        self.busy_since: float | None = None  # when the batch being applied began (monotonic)
        self.stopped: asyncio.Future[None] = self.loop.create_future()
        self.thread = threading.Thread(target=self.run, name="store-writer", daemon=True)
        self.thread.start()

    def submit(self, job: Any, future: asyncio.Future[Any], urgent: bool = False,
               answers: bool = False) -> None:
        """`urgent`: begin the batch now (someone is idle until it commits: a claim with a
        backlog behind it, or one of many senders waiting for their 2xx). `answers`: a sender
        waits for this commit to be answered (an acknowledgement)."""
        if urgent:
            self.urgent = True
        if answers:
            self.asked += 1
            now = time.monotonic()
            self.lone = now - self.last_ask > LONE_GAP * self.delay
            self.last_ask = now
        self.jobs.put((job, future, answers))
        if self.gathering and (urgent or self.lone or self.complete()):
            self.enough.set()

    def complete(self) -> bool:
        """The gathering batch need not wait: as many acknowledgements as last time, or full."""
        return (self.asked - self.taken >= self.expected
                or self.jobs.qsize() + 1 >= MAX_BATCH)

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
                answers = 0
                while True:
                    if item is None:
                        stopping = True  # finish what was queued before the stop
                    else:
                        batch.append(item[:2])
                        answers += item[2]
                    if len(batch) >= MAX_BATCH:
                        break
                    try:
                        item = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                if answers:
                    self.taken += answers
                    self.expected = max(2, answers)
                if batch:
                    self.commit(batch)
        finally:
            self.conn.close()
            self.hand_back(self.stopped.set_result, None)

    def gather(self) -> None:
        """Wait up to `delay` for company (see above)."""
        self.enough.clear()
        self.gathering = True
        if not (self.urgent or self.lone or self.complete()):
            self.enough.wait(self.delay)
        self.gathering = False
        self.urgent = False

    def stuck(self, seconds: float) -> bool:
        """Has the batch being applied taken `seconds` or more (the database stopped answering)?"""
        since = self.busy_since
        return since is not None and time.monotonic() - since >= seconds

    def commit(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        self.busy_since = time.monotonic()
        try:
            results, new_work = self.apply(self.conn, [job for job, _ in batch])
        except Exception as exc:  # handed to the callers as a 503
            self.hand_back(self.finish, batch, None, exc, 0.0, frozenset())
        else:
            self.hand_back(self.finish, batch, results, None, time.perf_counter() - started,
                           new_work)
        finally:
            self.busy_since = None

    def hand_back(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is already closed: nobody is waiting
            pass
