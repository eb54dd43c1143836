"""The store's engine, shared by both databases: one writer thread applying every change waiting
for it in one transaction (group commit), a deadline on every wait, and the batch's answers."""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bridge.core.errors import BridgeError, InternalError, StoreUnavailable
from bridge.core.models import (
    Accepted,
    DeliveryStatus,
    EventState,
    NewDelivery,
    VerifiedEvent,
    new_id,
)
from bridge.store.dialect import Dialect, Session, placeholders
from bridge.store.faults import RefusedRun, describe, job_error, outage, retrieve
from bridge.store.kinds import DELIVERIES, JOURNAL, WORK
from bridge.store.rows import MAX_PARAMS, filtered_column, insert_rows
from bridge.store.writer import Writer

log = logging.getLogger("bridge.store")


BUSY_SENDERS = 8
T = TypeVar("T")


DEFAULT_DEADLINE = 5.0  # seconds any caller waits on the store before it answers 503


class AcceptJob:
    """A plain accept job: applied by `Engine._accept_all` with its neighbours."""

    __slots__ = ("event", "headers", "deliveries")

    def __init__(self, event: VerifiedEvent, headers: str,
                 deliveries: Sequence[NewDelivery]) -> None:
        self.event = event
        self.headers = headers
        self.deliveries = deliveries

    def __call__(self, conn: Session) -> Accepted:
        raise AssertionError("plain accepts are applied together by Engine._accept_all")

    def event_row(self) -> tuple[Any, ...]:
        """Its event as the events table takes it: (id, source, provider, event_type,
        idempotency_key, received_at, headers, body, state, callback_url, fingerprint,
        filtered)."""
        e = self.event
        return (e.id, e.source, e.provider, e.event_type, e.idempotency_key, e.received_at,
                self.headers, e.body,
                str(EventState.QUEUED if self.deliveries else EventState.UNROUTED),
                e.callback_url, e.fingerprint, filtered_column(e))

def first_of_each_key(jobs: Sequence[AcceptJob]) -> tuple[dict[str, str], list[AcceptJob]]:
    """Plain accepts by idempotency key: the id stored (or to be) under each key, and the
    accepts that are the first of their key in the batch (a later one is a duplicate)."""
    first: dict[str, str] = {}
    fresh = [job for job in jobs
             if first.setdefault(job.event.idempotency_key, job.event.id) == job.event.id]
    return first, fresh

class CombinableJob:
    """A change of a common kind (a delivery's outcome, an execution's end, a callback's
    outcome), with what it writes as data. SQLite runs `fn`, as any job; PostgreSQL writes the
    batch's changes of one kind in one statement (`PostgresStore._apply`), where each of them
    alone would be several round trips."""

    __slots__ = ("fn", "kind", "args")

    def __init__(self, fn: Callable[[Session], Any], kind: str,
                 args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.kind = kind
        self.args = args

    def __call__(self, conn: Session) -> Any:
        return self.fn(conn)

class WithoutSavepoint:
    """A job applied without its own savepoint."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Session], Any]) -> None:
        self.fn = fn

def savepointed(conn: Session, job: Callable[[Session], Any]
                 ) -> tuple[bool, Any]:
    """Runs `job` in a savepoint of its own: its outcome, or its own error with what it wrote
    undone, while the batch goes on. An outage is raised: the batch cannot commit."""
    conn.execute("SAVEPOINT job")
    try:
        answer: tuple[bool, Any] = (True, job(conn))
    except Exception as exc:
        if outage(exc):
            raise  # disk full, locked, I/O: the batch cannot commit
        conn.execute("ROLLBACK TO job")  # this job alone is undone
        answer = (False, job_error(exc))
    conn.execute("RELEASE job")
    return answer


class Engine:
    """Group commit and deadlines over a `Session`; the jobs of each role are in their own modules."""

    def __init__(self, dialect: Dialect, *, commit_delay: float = 0.0,
                 deadline: float = DEFAULT_DEADLINE) -> None:
        self.dialect = dialect
        self.deadline = deadline  # `[store] deadline`: see `_within` and `_expire`
        # Changes waiting for their commit, oldest first, each with when it expires (the event
        # loop's clock), and the one timer that expires them (`_expire`).
        self._pending: collections.deque[tuple[float, asyncio.Future[Any]]] = (
            collections.deque())
        self._expiry: asyncio.TimerHandle | None = None
        self.commit_delay = commit_delay
        self._writer: Writer | None = None
        self._watchers: list[tuple[frozenset[str], Callable[[], None]]] = []
        # The kinds of work (`base.DELIVERIES`...) this batch made due: added to by jobs, on the
        # writer's thread; emptied per batch.
        self._new_work: set[str] = set()
        self._change_waiters: list[asyncio.Future[None]] = []  # woken by every commit
        self._accepting = 0  # events waiting for their commit
        self.on_commit: Callable[[int, float], None] | None = None  # (batch size, seconds)
        # An agent's store journals every outcome (attempts, finished executions) in the same
        # transaction that records it, for its edge (see `bridge.channels.agent`).
        self.journaling = False
        # On PostgreSQL a failed statement aborts the transaction, so every job needs its own
        # savepoint to fail alone (SQLite's jobs that cannot fail on their own skip it).
        self.savepoints_always = False
        self._isolating = False  # this batch applies each accept alone (see `_apply`)

    # what each database provides

    async def open(self) -> None:
        raise NotImplementedError

    async def _all(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Rows of one read, as dicts; `sql` is a template (`dialect.render`)."""
        raise NotImplementedError

    async def _one(self, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    def _interrupt_writer(self, writer: Writer) -> None:
        """Cut the writer's connection from another thread (see `_stalled`)."""
        raise NotImplementedError

    # lifecycle

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._writer is not None:
            await self._writer.stop()  # every queued change is applied and its caller answered
            self._writer = None

    def watch(self, callback: Callable[[], None], kinds: frozenset[str] = WORK) -> None:
        """Call `callback` after every commit that made work of one of `kinds` due: each loop
        is woken by its own work only, not by every commit."""
        self._watchers.append((kinds, callback))

    async def _write(self, fn: Callable[[Session], T], savepoint: bool = True,
                     urgent: bool = False, answers: bool = False) -> T:
        """Queue `fn` for the next transaction. `savepoint=False` is for jobs that cannot fail
        on their own (only with the whole batch), which saves two statements per job.
        `urgent`: the batch begins at once rather than gathering company (see
        `writer.Writer`): for a claim with a backlog behind it, or an accept among many.
        `answers`: a sender waits for this commit (an accept)."""
        if self._writer is None or not self._writer.open:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        bare = not (savepoint or isinstance(fn, AcceptJob) or self.savepoints_always)
        self._writer.submit(WithoutSavepoint(fn) if bare else fn, future, urgent, answers)
        self._pending.append((loop.time() + self.deadline, future))
        if self._expiry is None:
            self._expiry = loop.call_at(self._pending[0][0], self._expire)
        return await future

    def _expire(self) -> None:
        """Every change waits for its commit `deadline` at most: past it its caller gets
        `StoreUnavailable` (503 + Retry-After) and the stuck connection is cut (`_stalled`), so
        the store recovers on its own once the database answers again. A change that commits
        after its caller gave up is kept: an accept's sender retries and hears that it is a
        duplicate, so nothing is lost and nothing is stored twice. (One timer for all of them,
        at the oldest one's expiry: a `wait_for` per change cost ~10 µs each on the hot path.)"""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now, expired = loop.time(), False
        pending = self._pending
        while pending:
            at, future = pending[0]
            if not future.done() and at > now:
                break
            pending.popleft()
            if not future.done():
                future.set_exception(StoreUnavailable(
                    f"the store did not answer within {self.deadline:g}s"))
                expired = True
        if expired:
            self._stalled()
        if pending:
            self._expiry = loop.call_at(pending[0][0], self._expire)

    async def _within(self, awaitable: Awaitable[T]) -> T:
        """A read, ended by `deadline` as a change is (`_expire`)."""
        task = asyncio.ensure_future(awaitable)
        task.add_done_callback(retrieve)  # it may be answered after its caller gave up
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.deadline)
        except TimeoutError:
            self._stalled()
            raise StoreUnavailable(
                f"the store did not answer within {self.deadline:g}s") from None

    def _stalled(self) -> None:
        """A wait ran out: cut the writer's connection if its batch has taken that long."""
        writer = self._writer
        if writer is not None and writer.stuck(self.deadline):
            log.error("the store stopped answering; interrupting the writer",
                      extra={"deadline": self.deadline})
            self._interrupt_writer(writer)

    def _finish(self, batch: list[tuple[Any, asyncio.Future[Any]]],
                results: list[tuple[bool, Any]] | None, error: BaseException | None,
                seconds: float, new_work: frozenset[str]) -> None:
        """On the event loop, once per batch: answer every caller."""
        if error is not None:  # the whole transaction is lost: nobody gets a 2xx
            failure: BridgeError
            if outage(error):
                log.error("store commit failed", extra={"error": describe(error),
                                                        "batch": len(batch)})
                failure = StoreUnavailable("the store cannot commit")
            else:  # a bug, not an outage: say so, with where it happened
                log.error("store batch failed", extra={"batch": len(batch)},
                          exc_info=(type(error), error, error.__traceback__))
                failure = InternalError("internal error")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            return
        pending = self._pending  # answered changes leave the deadline's queue
        while pending and pending[0][1].done():
            pending.popleft()
        assert results is not None
        if self.on_commit is not None:
            self.on_commit(len(batch), seconds)
        waiters, self._change_waiters = self._change_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        for (_, future), (ok, value) in zip(batch, results, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if new_work:
            for kinds, callback in self._watchers:
                if kinds & new_work:
                    callback()

    def _apply(self, conn: Session, jobs: list[Callable[[Session], Any]]
               ) -> tuple[list[tuple[bool, Any]], frozenset[str]]:
        """Runs on the writer's thread: one transaction, one savepoint per job, except that
        consecutive plain accepts are written together (see `_accept_all`). Returns each job's
        outcome, and whether the batch made new work due (jobs set `_new_work`).

        Should the store refuse a run of accepts other than by an outage (a value it cannot
        hold), the batch is rolled back and applied again with each accept in a savepoint of its
        own, so that one fails alone and its neighbours are stored. Only then: a savepoint
        around every run would cost two statements per batch on the hot path."""
        try:
            return self._apply_once(conn, jobs)
        except RefusedRun as refused:
            log.warning("accepts failed together; applying them one at a time",
                        extra={"error": refused.error})
            self._isolating = True
            try:
                return self._apply_once(conn, jobs)
            finally:
                self._isolating = False

    def _apply_once(self, conn: Session,
                    jobs: list[Callable[[Session], Any]]
                    ) -> tuple[list[tuple[bool, Any]], frozenset[str]]:
        out: list[tuple[bool, Any]] = []
        self._new_work = set()
        conn.execute("{begin}")
        try:
            run: list[AcceptJob] = []
            for job in jobs:
                if isinstance(job, AcceptJob):  # consecutive plain accepts go in together
                    run.append(job)
                    continue
                if run:
                    out.extend(self._accept_run(conn, run))
                    run = []
                if isinstance(job, WithoutSavepoint):  # it raises, if at all, before writing anything
                    try:
                        out.append((True, job.fn(conn)))
                    except Exception as exc:
                        if outage(exc):
                            raise
                        out.append((False, job_error(exc)))
                    continue
                out.append(savepointed(conn, job))
            if run:
                out.extend(self._accept_run(conn, run))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return out, frozenset(self._new_work)

    def _accept_run(self, conn: Session,
                    jobs: list[AcceptJob]) -> list[tuple[bool, Any]]:
        """`_accept_all`, or, once a run was refused (`_apply`), each accept in a savepoint."""
        if self._isolating:
            return [savepointed(conn, functools.partial(self._accept_one, job)) for job in jobs]
        try:
            return list(self._accept_all(conn, jobs))
        except Exception as exc:
            if outage(exc):
                raise
            raise RefusedRun(describe(exc)) from None

    def _accept_one(self, job: AcceptJob, conn: Session) -> Accepted:
        return self._accept_all(conn, [job])[0][1]


    def _accept_all(self, conn: Session,
                    jobs: list[AcceptJob]) -> list[tuple[bool, Accepted]]:
        """Plain accepts (no batch items, no single-use token) in a handful of statements,
        whatever their number: one multi-row insert of the events that skips keys (and
        fingerprints) already stored, lookups only when it skipped any, and one insert of the
        new events' deliveries.
        The writer thread gives the GIL back on every statement and waits to get it back, so
        statements per batch, not rows, are what cost. A key seen twice in the batch is stored
        once; the later ones are duplicates of the first."""
        first, fresh = first_of_each_key(jobs)
        # Both unique keys at once: the idempotency key, and the fingerprint of a scheme whose
        # id is unsigned (a replay under a new id is skipped here too).
        inserted = insert_rows(conn, "events (id, source, provider, event_type, idempotency_key,"
                     " received_at, headers, body, state, callback_url, fingerprint, filtered)",
                     [job.event_row() for job in fresh],
                     " ON CONFLICT DO NOTHING RETURNING id")
        if inserted < len(fresh):  # some were stored before: find by what
            stored = dict(self._lookup(conn, "idempotency_key", list(first)))
            first.update(stored)
            replays: dict[bytes, list[str]] = {}  # fingerprint -> keys skipped for it
            for job in fresh:
                event = job.event
                if event.idempotency_key not in stored and event.fingerprint:
                    replays.setdefault(event.fingerprint, []).append(event.idempotency_key)
            for fingerprint, event_id in self._lookup(conn, "fingerprint", list(replays)):
                for key in replays[fingerprint]:
                    first[key] = event_id
        deliveries = [
            (new_id(), e.id, d.route, d.trigger, d.idempotency_key, d.body, d.content_type,
             DeliveryStatus.PENDING, e.received_at, e.received_at, e.received_at, d.channel)
            for job in fresh for e in (job.event,) if first[e.idempotency_key] == e.id
            for d in job.deliveries]
        if deliveries:
            insert_rows(conn, "deliveries (id, event_id, route, trigger, idempotency_key, body,"
                         " content_type, status, next_attempt_at, created_at, updated_at,"
                         " channel)", deliveries)
            self._new_work.add(DELIVERIES)
        out: list[tuple[bool, Accepted]] = []
        for job in jobs:
            kept = first[job.event.idempotency_key]
            out.append((True, Accepted(kept, duplicate=kept != job.event.id)))
        return out

    @staticmethod

    def _lookup(conn: Session, column: str, values: list[Any]
                ) -> list[tuple[Any, str]]:
        """(value, event id) of the events whose `column` is one of `values`."""
        out: list[tuple[Any, str]] = []
        for start in range(0, len(values), MAX_PARAMS):
            chunk = values[start:start + MAX_PARAMS]
            out += conn.execute(f"SELECT {column}, id FROM events WHERE {column} IN"
                                f" ({placeholders(len(chunk))})", chunk).fetchall()
        return out

    def _journal(self, conn: Session, event_id: str, now: float,
                 body: dict[str, Any]) -> None:
        row = conn.execute("SELECT idempotency_key FROM events WHERE id = {p}",
                           (event_id,)).fetchone()
        body["key"] = row[0] if row else None
        conn.execute("INSERT INTO journal (body, created_at) VALUES ({p}, {p})",
                     (json.dumps(body, ensure_ascii=False), now))
        self._new_work.add(JOURNAL)

    async def changed(self, timeout: float) -> None:
        """Return after this process's next commit, or after `timeout` seconds (which covers
        commits by other processes sharing the store)."""
        waiter = asyncio.get_running_loop().create_future()
        self._change_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
