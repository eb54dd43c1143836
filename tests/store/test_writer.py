"""The store's writer thread: when a batch begins (group commit), on a real SQLite connection.

Every delay here is long (seconds) where the rule says a batch must not wait, and short where it
must, so a pass or a failure is never a matter of the machine's speed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from bridge.store.writer import Writer


class Batches:
    """A real writer on a real SQLite file whose jobs are SQL inserts; records each batch."""

    def __init__(self, path: Path, delay: float) -> None:
        self.sizes: list[int] = []
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
        self.writer = Writer(self.conn, self.apply, self.finish, delay)

    def apply(self, conn: sqlite3.Connection, jobs: list[Any]) -> tuple[list[tuple[bool, Any]],
                                                                         frozenset[str]]:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t VALUES (?)", [(n,) for n in jobs])
        conn.execute("COMMIT")
        self.sizes.append(len(jobs))
        return [(True, n) for n in jobs], frozenset()

    def finish(self, batch: list[tuple[Any, asyncio.Future[Any]]],
               results: list[tuple[bool, Any]] | None, error: BaseException | None,
               seconds: float, new_work: frozenset[str]) -> None:
        for (_, future), (_, value) in zip(batch, results or [], strict=False):
            future.set_result(value)
        for _, future in batch:
            if not future.done():
                future.set_exception(error or RuntimeError("no result"))

    def submit(self, n: int, *, urgent: bool = False, answers: bool = False
               ) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self.writer.submit(n, future, urgent, answers)
        return future

    def rows(self) -> int:
        with sqlite3.connect(self.path) as reader:  # the writer's own is closed once stopped
            return reader.execute("SELECT COUNT(*) FROM t").fetchone()[0]


def test_changes_that_trickle_in_share_one_commit(tmp_path: Path) -> None:
    async def run() -> tuple[list[int], int]:
        batches = Batches(tmp_path / "w.db", delay=0.5)
        first = batches.submit(1)
        await asyncio.sleep(0.05)
        second = batches.submit(2)
        await asyncio.sleep(0.05)
        third = batches.submit(3, answers=True)  # the first acknowledgement: lone, so the
        # gathering batch begins now, with all three
        assert await asyncio.gather(first, second, third) == [1, 2, 3]
        await batches.writer.stop()
        return batches.sizes, batches.rows()

    sizes, rows = asyncio.run(run())
    assert sizes == [3] and rows == 3


def test_claims_and_outcomes_do_not_cut_the_wait_short(tmp_path: Path) -> None:
    """Several background changes at once (a commit just woke the loops) still wait for
    company: only acknowledgements are counted."""
    async def run() -> list[int]:
        batches = Batches(tmp_path / "w.db", delay=0.4)
        await batches.submit(10, answers=True)  # lone: committed at once
        await batches.submit(11, answers=True)  # right after it: not lone
        started = time.monotonic()
        futures = [batches.submit(n) for n in range(6)]
        await asyncio.sleep(0.1)
        futures.append(batches.submit(6))  # still within the first batch's wait
        await asyncio.gather(*futures)
        assert time.monotonic() - started >= 0.35
        await batches.writer.stop()
        return batches.sizes

    assert asyncio.run(run()) == [1, 1, 7]


def test_senders_in_a_closed_loop_do_not_wait_out_the_delay(tmp_path: Path) -> None:
    """Three senders, each sending again as soon as it is answered: each round's batch begins
    once all three are back, not after the (here 5 s) delay. (The first round's first
    acknowledgement is lone, so that round may be committed in two batches.)"""
    async def run() -> tuple[list[int], float]:
        batches = Batches(tmp_path / "w.db", delay=5.0)

        async def sender(first: int) -> None:
            for round_ in range(5):
                await batches.submit(first + round_ * 3, answers=True)

        started = time.monotonic()
        await asyncio.gather(*(sender(n) for n in range(3)))
        elapsed = time.monotonic() - started
        await batches.writer.stop()
        return batches.sizes, elapsed

    sizes, elapsed = asyncio.run(run())
    assert sizes[-4:] == [3] * 4 and sum(sizes) == 15 and elapsed < 2.5, (sizes, elapsed)


def test_an_urgent_change_begins_its_batch_at_once(tmp_path: Path) -> None:
    async def run() -> tuple[float, float]:
        batches = Batches(tmp_path / "w.db", delay=5.0)
        started = time.monotonic()
        await batches.submit(1)  # a background change alone: it waits the whole delay...
        alone = time.monotonic() - started
        started = time.monotonic()
        background = batches.submit(2)
        await asyncio.sleep(0.05)
        await asyncio.gather(background, batches.submit(3, urgent=True))  # ...unless urgent
        urgent = time.monotonic() - started
        await batches.writer.stop()
        assert batches.sizes == [1, 2]
        return alone, urgent

    alone, urgent = asyncio.run(run())
    assert alone >= 4.9 and urgent < 2.5, (alone, urgent)


def test_a_lone_acknowledgement_and_the_changes_after_it_do_not_wait(tmp_path: Path) -> None:
    """An acknowledgement long after the one before it (a webhook on a quiet evening) begins
    its batch at once, and so does each change after it (its claim, its outcome) until the
    next acknowledgement; one that comes right after another waits for company again."""
    async def run() -> tuple[float, float, float]:
        batches = Batches(tmp_path / "w.db", delay=0.5)  # lone: 4 x 0.5 s after the last
        started = time.monotonic()
        await batches.submit(1, answers=True)  # the first ever: lone
        await batches.submit(2)  # the claim it sets off
        lone = time.monotonic() - started
        started = time.monotonic()
        await batches.submit(3, answers=True)  # right after: waits (nobody else comes)
        crowded = time.monotonic() - started
        await asyncio.sleep(2.1)
        started = time.monotonic()
        await batches.submit(4, answers=True)  # after a quiet spell: lone again
        after_quiet = time.monotonic() - started
        await batches.writer.stop()
        assert batches.sizes == [1, 1, 1, 1], batches.sizes
        return lone, crowded, after_quiet

    lone, crowded, after_quiet = asyncio.run(run())
    assert lone < 0.25 and crowded >= 0.45 and after_quiet < 0.25, (lone, crowded, after_quiet)


def test_stop_commits_what_was_queued(tmp_path: Path) -> None:
    async def run() -> int:
        batches = Batches(tmp_path / "w.db", delay=5.0)
        futures = [batches.submit(n) for n in range(5)]
        await asyncio.sleep(0.05)
        await batches.writer.stop()
        await asyncio.gather(*futures)
        return batches.rows()

    assert asyncio.run(run()) == 5
