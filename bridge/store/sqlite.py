"""The SQLite store.

`SQLiteStore` keeps one SQLite file in WAL mode with `synchronous=FULL` and two connections: a
reader (aiosqlite), and a writer owned by one thread (`writer.py`). Every change is a function
queued to that thread, which applies all the changes waiting for it in a single transaction (each
under its own savepoint, except plain webhook accepts, which are written together in a few
multi-row statements), commits once, and only then resolves every caller, with one hand-off to
the event loop per batch: group commit, so a burst of webhooks costs one fsync rather than one
each, and nothing is acknowledged before it is durable. The thread starts the next batch as soon
as one commits, without waiting for the event loop to pass it on.

Every sqlite3 error is translated here: a failure to write or commit becomes `StoreUnavailable`
(HTTP 503 with Retry-After); nothing else escapes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bridge.core import codec
from bridge.core.errors import BridgeError, InternalError, StoreUnavailable
from bridge.core.models import (
    IN_FLIGHT,
    Accepted,
    AgentCompletion,
    AgentReport,
    Attempt,
    CallbackStatus,
    CallbackTargets,
    ChannelItem,
    ChannelPull,
    ChannelReported,
    ClaimedCallback,
    ClaimedDelivery,
    Completion,
    Dead,
    Delivered,
    DeliveryStatus,
    EventState,
    ExecutionResult,
    ExecutionStatus,
    NewDelivery,
    Outcome,
    Pacing,
    Paused,
    RetryLater,
    RouteState,
    TrackedExecution,
    VerifiedEvent,
    agent_owner,
    new_id,
)
from bridge.store.base import CALLBACKS, DELIVERIES, EXECUTIONS, JOURNAL, WORK
from bridge.store.records import (
    AgentSeen,
    AttemptRecord,
    CallbackRecord,
    ChannelBacklog,
    DeadLetter,
    DeliveryRecord,
    EventRecord,
    EventSummary,
    ExecutionRecord,
    FilteredRoute,
    JournalEntry,
    Retried,
    RouteRecord,
    SourceCount,
    TrafficCount,
    decode_json,
)
from bridge.store.writer import Writer

log = logging.getLogger("bridge.store")
# Deliveries rendered once the duplicate items of a batch are known.
T = TypeVar("T")
# More events than this waiting for their commit at once: senders that each send again only once
# answered (a closed loop), not a trickle; their batch begins without gathering company.
BUSY_SENDERS = 8

MIGRATIONS: list[str] = [
    # 1: events, the outbox (deliveries), attempts, route state, metadata
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        provider TEXT NOT NULL,
        event_type TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        received_at REAL NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL,
        callback_url TEXT
    );
    CREATE UNIQUE INDEX events_key ON events(idempotency_key);
    CREATE INDEX events_received ON events(received_at);
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL,
        route TEXT NOT NULL,
        trigger TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        body BLOB NOT NULL,
        content_type TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        execution_id TEXT,
        last_error TEXT,
        replay_of TEXT
    );
    CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
    CREATE INDEX deliveries_event ON deliveries(event_id);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        delivery_id TEXT NOT NULL,
        started_at REAL NOT NULL,
        latency_ms REAL NOT NULL,
        outcome TEXT NOT NULL,
        status_code INTEGER,
        error TEXT,
        response_excerpt TEXT
    );
    CREATE INDEX attempts_delivery ON attempts(delivery_id);
    CREATE TABLE routes (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        reason TEXT,
        changed_at REAL NOT NULL,
        next_probe_at REAL
    );
    """,
    # 2: executions followed to their end, and the callbacks they produce
    """
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        delivery_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        route TEXT NOT NULL,
        trigger TEXT NOT NULL,
        status TEXT NOT NULL,
        output TEXT,
        node_results TEXT,
        error TEXT,
        started_at TEXT,
        completed_at TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        deadline_at REAL NOT NULL,
        next_check_at REAL NOT NULL,
        checks INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_until REAL
    );
    CREATE INDEX executions_due ON executions(status, next_check_at);
    CREATE INDEX executions_event ON executions(event_id);
    CREATE TABLE callbacks (
        id TEXT PRIMARY KEY,
        execution_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        url TEXT NOT NULL,
        sender_supplied INTEGER NOT NULL,
        body BLOB NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_error TEXT
    );
    CREATE INDEX callbacks_due ON callbacks(status, next_attempt_at);
    CREATE INDEX callbacks_execution ON callbacks(execution_id);
    """,
    # 3: per-item keys of batch requests, and single-use tokens
    """
    CREATE TABLE event_items (key TEXT PRIMARY KEY, event_id TEXT NOT NULL);
    CREATE INDEX event_items_event ON event_items(event_id);
    CREATE TABLE nonces (key TEXT PRIMARY KEY, event_id TEXT NOT NULL);
    CREATE INDEX nonces_event ON nonces(event_id);
    """,
    # 4: when a delivery may first have reached the platform (its answer lost, or a 5xx), so it
    # is never resent once the platform may have forgotten its Idempotency-Key; and the signed
    # content's key of events whose scheme signs no id, unique like the idempotency key
    """
    ALTER TABLE deliveries ADD COLUMN reached_at REAL;
    ALTER TABLE events ADD COLUMN fingerprint BLOB;
    CREATE UNIQUE INDEX events_fingerprint ON events(fingerprint) WHERE fingerprint IS NOT NULL;
    """,
    # 5: channels (an edge's deliveries carried by outbound-only agents), the agents seen on
    # them, executions an agent follows, and an agent's journal of outcomes for its edge
    """
    ALTER TABLE deliveries ADD COLUMN channel TEXT;
    CREATE INDEX deliveries_channel ON deliveries(channel, status, id) WHERE channel IS NOT NULL;
    ALTER TABLE executions ADD COLUMN channel TEXT;
    CREATE TABLE agents (
        channel TEXT NOT NULL,
        agent TEXT NOT NULL,
        address TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        cursor TEXT,
        acked INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (channel, agent)
    );
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        body TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 6: the routes whose filter did not take an event, and why
    """
    ALTER TABLE events ADD COLUMN filtered TEXT;
    """,
    # 7: pacing shared by every process sending to the platform: the rate limit's token bucket
    # and the hold a 429 (or a nearly spent X-RateLimit-Remaining) asked for
    """
    CREATE TABLE pacing (
        key TEXT PRIMARY KEY,
        tokens REAL,
        rate REAL,
        updated_at REAL NOT NULL,
        not_before REAL
    );
    """,
    # 8: traffic per minute (webhooks accepted, duplicate, rejected by source; deliveries
    # delivered, retried, dead by route), for the console's pictures: counted in memory and
    # added every few seconds, so it costs nothing per event
    """
    CREATE TABLE traffic (
        minute INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        outcome TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (minute, kind, name, outcome)
    );
    """,
    # 9: a hand-off keeps its agent (reports must answer that agent's lease) and a deadline for
    # its next report; those handed off before, with neither, go back to their channel at once
    # (the same Idempotency-Key: the platform runs each once)
    """
    UPDATE deliveries SET lease_until = 0
     WHERE status = 'handed_off' AND lease_owner IS NULL;
    """,
    # 10: console sessions, server side: the cookie holds only an opaque id (its digest is the
    # key here), so signing out ends the session and a stolen cookie tells nothing of a token
    """
    CREATE TABLE console_sessions (
        id TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
]


DEFAULT_DEADLINE = 5.0  # seconds any caller waits on the store before it answers 503


class SQLiteStore:
    def __init__(self, path: str, *, busy_timeout: float = 2.0,
                 max_size_bytes: int | None = None, commit_delay: float = 0.0,
                 deadline: float = DEFAULT_DEADLINE) -> None:
        self.path = path
        self.deadline = deadline  # `[store] deadline`: see `_within` and `_expire`
        # Changes waiting for their commit, oldest first, each with when it expires (the event
        # loop's clock), and the one timer that expires them (`_expire`).
        self._pending: collections.deque[tuple[float, asyncio.Future[Any]]] = (
            collections.deque())
        self._expiry: asyncio.TimerHandle | None = None
        self.commit_delay = commit_delay
        self.busy_timeout = busy_timeout
        self.max_size_bytes = max_size_bytes
        self._writer: Writer | None = None
        self._reader: aiosqlite.Connection | None = None
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

    # lifecycle

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(self._open_writer)
        self._writer = Writer(conn, self._apply, self._finish, self.commit_delay)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader._execute(self._configure, self._reader._conn)

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._configure(conn)
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if self.max_size_bytes:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(16, self.max_size_bytes // page)}")

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("store migrated", extra={"schema_version": number})

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._writer is not None:
            await self._writer.stop()  # every queued change is applied and its caller answered
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    def watch(self, callback: Callable[[], None], kinds: frozenset[str] = WORK) -> None:
        """Call `callback` after every commit that made work of one of `kinds` due: each loop
        is woken by its own work only, not by every commit."""
        self._watchers.append((kinds, callback))

    # the writer

    async def _write(self, fn: Callable[[sqlite3.Connection], T], savepoint: bool = True,
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
        bare = not (savepoint or isinstance(fn, _Accept) or self.savepoints_always)
        self._writer.submit(_Bare(fn) if bare else fn, future, urgent, answers)
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
        task.add_done_callback(_retrieve)  # it may be answered after its caller gave up
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

    def _interrupt_writer(self, writer: Writer) -> None:
        writer.conn.interrupt()

    def _finish(self, batch: list[tuple[Any, asyncio.Future[Any]]],
                results: list[tuple[bool, Any]] | None, error: BaseException | None,
                seconds: float, new_work: frozenset[str]) -> None:
        """On the event loop, once per batch: answer every caller."""
        if error is not None:  # the whole transaction is lost: nobody gets a 2xx
            failure: BridgeError
            if outage(error):
                log.error("store commit failed", extra={"error": _describe(error),
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

    def _apply(self, conn: sqlite3.Connection, jobs: list[Callable[[sqlite3.Connection], Any]]
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
        except _Isolate as refused:
            log.warning("accepts failed together; applying them one at a time",
                        extra={"error": refused.error})
            self._isolating = True
            try:
                return self._apply_once(conn, jobs)
            finally:
                self._isolating = False

    def _apply_once(self, conn: sqlite3.Connection,
                    jobs: list[Callable[[sqlite3.Connection], Any]]
                    ) -> tuple[list[tuple[bool, Any]], frozenset[str]]:
        out: list[tuple[bool, Any]] = []
        self._new_work = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            run: list[_Accept] = []
            for job in jobs:
                if isinstance(job, _Accept):  # consecutive plain accepts go in together
                    run.append(job)
                    continue
                if run:
                    out.extend(self._accept_run(conn, run))
                    run = []
                if isinstance(job, _Bare):  # it raises, if at all, before writing anything
                    try:
                        out.append((True, job.fn(conn)))
                    except Exception as exc:
                        if outage(exc):
                            raise
                        out.append((False, _job_error(exc)))
                    continue
                out.append(_savepointed(conn, job))
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

    def _accept_run(self, conn: sqlite3.Connection,
                    jobs: list[_Accept]) -> list[tuple[bool, Any]]:
        """`_accept_all`, or, once a run was refused (`_apply`), each accept in a savepoint."""
        if self._isolating:
            return [_savepointed(conn, functools.partial(self._accept_one, job)) for job in jobs]
        try:
            return list(self._accept_all(conn, jobs))
        except Exception as exc:
            if outage(exc):
                raise
            raise _Isolate(_describe(exc)) from None

    def _accept_one(self, job: _Accept, conn: sqlite3.Connection) -> Accepted:
        return self._accept_all(conn, [job])[0][1]

    def _accept_all(self, conn: sqlite3.Connection,
                    jobs: list[_Accept]) -> list[tuple[bool, Accepted]]:
        """Plain accepts (no batch items, no single-use token) in a handful of statements,
        whatever their number: one multi-row insert of the events that skips keys (and
        fingerprints) already stored, lookups only when it skipped any, and one insert of the
        new events' deliveries.
        The writer thread gives the GIL back on every statement and waits to get it back, so
        statements per batch, not rows, are what cost. A key seen twice in the batch is stored
        once; the later ones are duplicates of the first."""
        first, fresh = _first_of_each_key(jobs)
        # Both unique keys at once: the idempotency key, and the fingerprint of a scheme whose
        # id is unsigned (a replay under a new id is skipped here too).
        inserted = _insert_rows(conn, "events (id, source, provider, event_type, idempotency_key,"
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
            _insert_rows(conn, "deliveries (id, event_id, route, trigger, idempotency_key, body,"
                         " content_type, status, next_attempt_at, created_at, updated_at,"
                         " channel)", deliveries)
            self._new_work.add(DELIVERIES)
        out: list[tuple[bool, Accepted]] = []
        for job in jobs:
            kept = first[job.event.idempotency_key]
            out.append((True, Accepted(kept, duplicate=kept != job.event.id)))
        return out

    @staticmethod
    def _lookup(conn: sqlite3.Connection, column: str, values: list[Any]
                ) -> list[tuple[Any, str]]:
        """(value, event id) of the events whose `column` is one of `values`."""
        out: list[tuple[Any, str]] = []
        for start in range(0, len(values), _MAX_PARAMS):
            chunk = values[start:start + _MAX_PARAMS]
            out += conn.execute(f"SELECT {column}, id FROM events WHERE {column} IN"
                                f" ({','.join('?' * len(chunk))})", chunk).fetchall()
        return out

    # events

    async def accept(self, event: VerifiedEvent, deliveries: Sequence[NewDelivery],
                     seen_items: frozenset[str] = frozenset()) -> Accepted:
        """Store the event and its deliveries atomically, or name the event already stored
        under the same idempotency key. Returns only once the transaction is durable.

        For a batch (`event.items`), a request whose items were all seen before is a duplicate
        of the event that first carried one of them. Its deliveries were rendered for
        `seen_items` already seen (their bodies say which items are duplicates); when the store
        finds others, it stores nothing and answers `seen_items` with the ones it found, for
        the caller to render again. A `nonce` seen before with another event stores nothing and
        answers `replayed_token` (the caller refuses the request: an HTTP concern, not the
        store's)."""
        headers = codec.dumps(event.headers).decode()
        # Many senders waiting at once (each sends again only once answered): their batch
        # begins at once rather than gathering company (see `writer.Writer`).
        self._accepting += 1
        urgent = self._accepting > BUSY_SENDERS
        try:
            if not (event.items or event.nonce):
                return await self._write(_Accept(event, headers, deliveries), False,
                                         urgent=urgent, answers=True)
            return await self._accept_checked(event, headers, deliveries, seen_items, urgent)
        finally:
            self._accepting -= 1

    async def _accept_checked(self, event: VerifiedEvent, headers: str,
                              deliveries: Sequence[NewDelivery], seen_items: frozenset[str],
                              urgent: bool) -> Accepted:
        """An event with batch items or a single-use token: checks before anything is
        written."""
        source_key = f"{event.source}:"

        def job(conn: sqlite3.Connection) -> Accepted:
            if event.items or event.nonce:  # checks first: nothing is written before them
                row = conn.execute("SELECT id FROM events WHERE idempotency_key = ?",
                                   (event.idempotency_key,)).fetchone()
                if row is not None:
                    return Accepted(row[0], duplicate=True)
                if event.fingerprint and (row := conn.execute(
                        "SELECT id FROM events WHERE fingerprint = ?",
                        (event.fingerprint,)).fetchone()):
                    return Accepted(row[0], duplicate=True)
                if event.nonce and conn.execute("SELECT 1 FROM nonces WHERE key = ?",
                                                (source_key + event.nonce,)).fetchone():
                    return Accepted("", duplicate=False, replayed_token=True)
                if event.items:
                    marks = ",".join("?" * len(event.items))
                    found = conn.execute(f"SELECT key, event_id FROM event_items WHERE key IN"
                                         f" ({marks})", event.items).fetchall()
                    seen = frozenset(key for key, _ in found)
                    if len(seen) == len(set(event.items)):
                        return Accepted(found[0][1], duplicate=True)
                    if seen != seen_items:
                        return Accepted("", duplicate=False, seen_items=seen)
            rendered = deliveries
            state = EventState.QUEUED if rendered else EventState.UNROUTED
            cur = conn.execute(
                "INSERT INTO events (id, source, provider, event_type, idempotency_key,"
                " received_at, headers, body, state, callback_url, fingerprint, filtered)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (event.id, event.source, event.provider, event.event_type,
                 event.idempotency_key, event.received_at, headers, event.body, state,
                 event.callback_url, event.fingerprint, _filtered(event)),
            )
            if cur.rowcount == 0:
                row = conn.execute("SELECT id FROM events WHERE idempotency_key = ? OR"
                                   " fingerprint = ?", (event.idempotency_key,
                                                        event.fingerprint)).fetchone()
                return Accepted(row[0], duplicate=True)
            if event.items:
                conn.executemany("INSERT INTO event_items (key, event_id) VALUES (?,?)"
                                 " ON CONFLICT DO NOTHING",
                                 [(key, event.id) for key in event.items])
            if event.nonce:
                conn.execute("INSERT INTO nonces (key, event_id) VALUES (?,?)",
                             (source_key + event.nonce, event.id))
            if rendered:
                conn.executemany(
                    "INSERT INTO deliveries (id, event_id, route, trigger, idempotency_key, body,"
                    " content_type, status, next_attempt_at, created_at, updated_at, channel)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(new_id(), event.id, d.route, d.trigger, d.idempotency_key, d.body,
                      d.content_type, DeliveryStatus.PENDING, event.received_at,
                      event.received_at, event.received_at, d.channel) for d in rendered],
                )
                self._new_work.add(DELIVERIES)
            return Accepted(event.id, duplicate=False)

        return await self._write(job, savepoint=False, urgent=urgent, answers=True)

    async def get_event(self, event_id: str) -> EventRecord | None:
        event = await self._one(
            "SELECT id, source, provider, event_type, idempotency_key, received_at, state,"
            " headers, body, callback_url, filtered FROM events WHERE id = ?", (event_id,))
        if event is None:
            return None
        deliveries = await self._all(
            "SELECT id, route, trigger, idempotency_key, status, attempts, failures,"
            " next_attempt_at, execution_id, last_error, replay_of, created_at, updated_at,"
            " channel, reached_at FROM deliveries WHERE event_id = ? ORDER BY created_at, id",
            (event_id,))
        executions = await self._all(
            "SELECT id, delivery_id, route, trigger, status, output, node_results, error,"
            " started_at, completed_at, checks FROM executions WHERE event_id = ?"
            " ORDER BY created_at", (event_id,))
        callbacks = await self._all(
            "SELECT id, execution_id, url, sender_supplied, status, attempts, last_error,"
            " created_at, updated_at FROM callbacks WHERE event_id = ? ORDER BY created_at, id",
            (event_id,))
        attempts: dict[str, list[AttemptRecord]] = {}  # of deliveries and of callbacks
        if owners := [row["id"] for row in deliveries + callbacks]:
            marks = ",".join("?" * len(owners))
            for row in await self._all(
                    "SELECT delivery_id, started_at, latency_ms, outcome, status_code, error,"
                    f" response_excerpt FROM attempts WHERE delivery_id IN ({marks})"
                    " ORDER BY id", owners):
                attempts.setdefault(row.pop("delivery_id"), []).append(AttemptRecord(**row))
        return EventRecord(
            id=event["id"], source=event["source"], provider=event["provider"],
            event_type=event["event_type"], idempotency_key=event["idempotency_key"],
            received_at=event["received_at"], state=event["state"],
            headers=json.loads(event["headers"]), body=bytes(event["body"]),
            callback_url=event["callback_url"],
            filtered=tuple(FilteredRoute(route, reason) for route, reason in
                           json.loads(event["filtered"] or "[]")),
            deliveries=tuple(DeliveryRecord(**d, attempt_log=tuple(attempts.get(d["id"], ())))
                             for d in deliveries),
            executions=tuple(_execution(x) for x in executions),
            callbacks=tuple(CallbackRecord(**{**c, "sender_supplied": bool(c["sender_supplied"])},
                                           attempt_log=tuple(attempts.get(c["id"], ())))
                            for c in callbacks))

    async def changed(self, timeout: float) -> None:
        """Return after this process's next commit, or after `timeout` seconds (which covers
        commits by other processes sharing the store)."""
        waiter = asyncio.get_running_loop().create_future()
        self._change_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass

    async def event_settled(self, event_id: str) -> bool:
        """Nothing more will happen to the event's deliveries and executions (one small query,
        not the event)."""
        row = await self._one(
            "SELECT EXISTS(SELECT 1 FROM deliveries WHERE event_id = ?"
            "  AND status IN ('pending', 'leased', 'handed_off'))"
            " OR EXISTS(SELECT 1 FROM executions WHERE event_id = ?"
            "  AND status IN ('pending', 'running')) AS busy", (event_id, event_id))
        return row is not None and not row["busy"]

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        row = await self._one(
            "SELECT id, delivery_id, route, trigger, status, output, node_results, error,"
            " started_at, completed_at, checks FROM executions WHERE id = ?", (execution_id,))
        return None if row is None else _execution(row)

    # the outbox

    async def claim(self, owner: str, now: float, lease: float, limit: int,
                    probe_every: float, pacing: Pacing | None = None,
                    urgent: bool = False) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries of active routes, plus one probe per paused route
        whose probe is due. An expired lease (a crashed worker's) is due again. Nothing while
        the platform asked every sender to hold (`hold`); with `pacing`, no more than the
        shared bucket's tokens, which the claim spends."""

        def job(conn: sqlite3.Connection) -> list[ClaimedDelivery]:
            if pacing is not None:  # one bucket: replicas claiming at once take turns on it
                conn.execute("INSERT INTO pacing (key, tokens, rate, updated_at)"
                             " VALUES ('platform', ?, ?, ?) ON CONFLICT(key) DO NOTHING",
                             (pacing.capacity, pacing.rate, now))
            row = conn.execute("SELECT tokens, updated_at, not_before FROM pacing"
                               " WHERE key = 'platform'" + (FOR_UPDATE if pacing else "")
                               ).fetchone()
            if row is not None and row[2] is not None and row[2] > now:
                return []  # the platform asked us all to wait
            tokens: float | None = None
            if pacing is not None:
                tokens = pacing.capacity if row is None or row[0] is None else min(
                    pacing.capacity, row[0] + max(0.0, now - row[1]) * pacing.rate)
                claimed = self._claim(conn, owner, now, lease, min(limit, int(tokens)),
                                      probe_every) if tokens >= 1 else []
                conn.execute(
                    "INSERT INTO pacing (key, tokens, rate, updated_at) VALUES ('platform',?,?,?)"
                    " ON CONFLICT(key) DO UPDATE SET tokens = excluded.tokens,"
                    " rate = excluded.rate, updated_at = excluded.updated_at",
                    (tokens - len(claimed), pacing.rate, now))
                return claimed
            return self._claim(conn, owner, now, lease, limit, probe_every)

        return await self._write(job, urgent=urgent)

    async def hold(self, until: float, now: float) -> None:
        """Every sender waits until `until` (a 429's Retry-After, or the window's reset)."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO pacing (key, updated_at, not_before) VALUES ('platform', ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET not_before = CASE WHEN pacing.not_before IS NULL"
                " OR pacing.not_before < excluded.not_before THEN excluded.not_before"
                " ELSE pacing.not_before END", (now, until))

        await self._write(job)

    def _claim(self, conn: sqlite3.Connection, owner: str, now: float, lease: float,
               limit: int, probe_every: float) -> list[ClaimedDelivery]:
        paused = [r[0] for r in conn.execute(
            "SELECT name FROM routes WHERE state = ?", (RouteState.PAUSED,))]
        skip = f" AND route NOT IN ({','.join('?' * len(paused))})" if paused else ""
        # Each half walks an index in due order and stops at the limit: no sort of the
        # whole backlog per claim.
        due = [r[0] for r in conn.execute(
            f"SELECT id FROM deliveries WHERE status = ? AND next_attempt_at <= ?"
            f"{skip} AND channel IS NULL ORDER BY next_attempt_at"
            f" LIMIT ?{SKIP_LOCKED}",
            (DeliveryStatus.PENDING, now, *paused, limit))]
        if len(due) < limit:
            due += [r[0] for r in conn.execute(
                f"SELECT id FROM deliveries WHERE status = ? AND lease_until <= ?"
                f"{skip} AND channel IS NULL ORDER BY lease_until"
                f" LIMIT ?{SKIP_LOCKED}",
                (DeliveryStatus.LEASED, now, *paused, limit - len(due)))]
        marks = ",".join("?" * len(due))
        # Status checked again as the lease is taken: only what is still claimable.
        rows = conn.execute(
            f"UPDATE deliveries SET status = ?, lease_owner = ?, lease_until = ?"
            f" WHERE id IN ({marks}) AND (status = ? OR (status = ? AND lease_until <= ?))"
            f" RETURNING {_CLAIMED}",
            (DeliveryStatus.LEASED, owner, now + lease, *due, DeliveryStatus.PENDING,
             DeliveryStatus.LEASED, now),
        ).fetchall() if due else []
        claimed = [_claimed(row) for row in rows]
        for route in paused if limit > 0 else ():
            claimed.extend(self._probe(conn, route, owner, now, lease, probe_every))
        return claimed

    @staticmethod
    def _probe(conn: sqlite3.Connection, route: str, owner: str, now: float, lease: float,
               probe_every: float) -> list[ClaimedDelivery]:
        due = conn.execute(
            "UPDATE routes SET next_probe_at = ? WHERE name = ? AND next_probe_at <= ?",
            (now + probe_every, route, now)).rowcount
        if not due:
            return []
        rows = conn.execute(
            "UPDATE deliveries SET status = ?, lease_owner = ?, lease_until = ?"
            " WHERE id = (SELECT id FROM deliveries WHERE route = ? AND channel IS NULL AND"
            "  ((status = ? AND next_attempt_at <= ?) OR (status = ? AND lease_until <= ?))"
            f"  ORDER BY next_attempt_at LIMIT 1) RETURNING {_CLAIMED}",
            (DeliveryStatus.LEASED, owner, now + lease, route, DeliveryStatus.PENDING, now,
             DeliveryStatus.LEASED, now)).fetchall()
        return [_claimed(row, probe=True) for row in rows]

    async def record(self, delivery: ClaimedDelivery, owner: str, attempt: Attempt,
                     outcome: Outcome, next_at: float | None, now: float,
                     probe_every: float, track_until: float | None = None,
                     reached_at: float | None = None) -> bool:
        """Record one attempt and apply its outcome, in one transaction. A delivery that
        started an execution also starts following it when `track_until` is given; one that
        may have reached the platform remembers when (`reached_at`, kept once set).

        Only while `owner` still holds the lease: when it was lost (it expired and another
        worker claimed the delivery, or an operator acted on it), nothing is written, not even
        the attempt, and the answer is False. The other holder's outcome is the one that
        counts."""
        if isinstance(outcome, Delivered):
            status, failures, error = DeliveryStatus.DELIVERED, 0, None
        elif isinstance(outcome, RetryLater) and next_at is not None:
            status, failures, error = (DeliveryStatus.PENDING, int(outcome.counts_as_failure),
                                       outcome.reason)
        elif isinstance(outcome, Paused):
            status, failures, error = DeliveryStatus.PENDING, 0, outcome.reason
        else:
            status, failures = DeliveryStatus.DEAD, 0
            error = outcome.reason if isinstance(outcome, Dead | RetryLater) else "dead"

        def job(conn: sqlite3.Connection) -> bool:
            held = conn.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1,"
                " failures = failures + ?, next_attempt_at = COALESCE(?, next_attempt_at),"
                " execution_id = COALESCE(?, execution_id), last_error = ?,"
                " reached_at = COALESCE(reached_at, ?), lease_owner = NULL, lease_until = NULL,"
                " updated_at = ? WHERE id = ? AND status = 'leased' AND lease_owner = ?"
                " RETURNING replay_of",
                (status, failures, next_at if status == DeliveryStatus.PENDING else None,
                 getattr(outcome, "execution_id", None), error, reached_at, now, delivery.id,
                 owner)).fetchone()
            if held is None:
                return False
            if held[0] is not None and status == DeliveryStatus.DELIVERED:
                _supersede(conn, delivery.id, now)
            conn.execute(
                "INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome, status_code,"
                " error, response_excerpt) VALUES (?,?,?,?,?,?,?)",
                (attempt.delivery_id, attempt.started_at, attempt.latency_ms, attempt.outcome,
                 attempt.status_code, attempt.error, attempt.response_excerpt))
            if isinstance(outcome, Delivered):
                _set_route(conn, delivery.route, RouteState.ACTIVE, None, now, None)
                if outcome.execution_id and track_until is not None:
                    conn.execute(
                        "INSERT INTO executions (id, delivery_id, event_id, route, trigger, status,"
                        " created_at, updated_at, deadline_at, next_check_at)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO NOTHING",
                        (outcome.execution_id, delivery.id, delivery.event_id, delivery.route,
                         delivery.trigger, ExecutionStatus.PENDING, now, now, track_until, now))
                    self._new_work.add(EXECUTIONS)
            elif isinstance(outcome, Paused):
                _set_route(conn, delivery.route, RouteState.PAUSED, outcome.reason, now,
                           now + probe_every)
            _refresh_event(conn, delivery.event_id)
            if self.journaling:  # an agent: tell the edge
                state = ("delivered" if status == DeliveryStatus.DELIVERED else
                         "waiting" if status == DeliveryStatus.PENDING else "dead")
                self._journal(conn, delivery.event_id, now, {
                    "kind": "attempt", "state": state,
                    "execution_id": getattr(outcome, "execution_id", None),
                    "tracked": bool(track_until and getattr(outcome, "execution_id", None)),
                    "attempt": {"started_at": attempt.started_at,
                                "latency_ms": attempt.latency_ms, "outcome": attempt.outcome,
                                "status_code": attempt.status_code, "error": attempt.error,
                                "response_excerpt": attempt.response_excerpt}})
            return True

        if isinstance(outcome, Paused) or self.journaling:  # rare, and more than one row each
            return await self._write(job)
        track = track_until if isinstance(outcome, Delivered) and outcome.execution_id else None
        return await self._write(_Grouped(job, "record", (
            delivery, owner, attempt, status, failures,
            next_at if status == DeliveryStatus.PENDING else None,
            getattr(outcome, "execution_id", None), error, reached_at, now, track)))

    async def release(self, owner: str) -> int:
        """Give back every lease `owner` still holds (clean shutdown)."""

        def job(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE deliveries SET status = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE status = ? AND lease_owner = ?",
                (DeliveryStatus.PENDING, DeliveryStatus.LEASED, owner)).rowcount

        return await self._write(job)

    async def next_due(self) -> float | None:
        """When the forwarder next has something to claim: the earliest due delivery of an
        active route, or the next probe of a paused route that has deliveries waiting. (A
        paused route's deliveries are not claimable: counting them woke the loop at once,
        again and again, while the route stayed paused.)"""
        row = await self._one(
            "SELECT MIN(t) AS t FROM ("
            " SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE status = 'pending'"
            "  AND route NOT IN (SELECT name FROM routes WHERE state = 'paused')"
            "  AND channel IS NULL"
            " UNION ALL SELECT MIN(lease_until) FROM deliveries WHERE status = 'leased'"
            "  AND route NOT IN (SELECT name FROM routes WHERE state = 'paused')"
            "  AND channel IS NULL"
            " UNION ALL SELECT MIN(r.next_probe_at) FROM routes r WHERE r.state = 'paused'"
            "  AND EXISTS (SELECT 1 FROM deliveries d WHERE d.route = r.name"
            "   AND d.status IN ('pending', 'leased') AND d.channel IS NULL)) AS due", ())
        due = None if row is None else row["t"]
        pacing = await self._one("SELECT tokens, rate, updated_at, not_before FROM pacing"
                                 " WHERE key = 'platform'", ())
        if due is None or pacing is None:
            return due
        if pacing["not_before"] is not None:  # held: nothing goes before then
            due = max(due, pacing["not_before"])
        if pacing["rate"] and pacing["tokens"] is not None and pacing["tokens"] < 1:
            due = max(due, pacing["updated_at"] + (1 - pacing["tokens"]) / pacing["rate"])
        return float(due)

    async def route_states(self) -> dict[str, RouteRecord]:
        rows = await self._all(
            "SELECT name, state, reason, changed_at, next_probe_at FROM routes", ())
        return {row["name"]: RouteRecord(**row) for row in rows}

    async def set_route_state(self, route: str, state: RouteState, reason: str | None,
                              now: float, probe_every: float) -> None:
        def job(conn: sqlite3.Connection) -> None:
            next_probe = now + probe_every if state == RouteState.PAUSED else None
            _set_route(conn, route, state, reason, now, next_probe)
            if state == RouteState.ACTIVE:
                self._new_work.add(DELIVERIES)

        await self._write(job)

    # executions

    async def claim_executions(self, owner: str, now: float, lease: float,
                               limit: int, urgent: bool = False) -> list[TrackedExecution]:
        """Lease unfinished executions whose next check is due (or whose lease expired)."""

        def job(conn: sqlite3.Connection) -> list[TrackedExecution]:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM executions WHERE status IN ('pending', 'running')"
                " AND next_check_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
                " AND channel IS NULL"
                " ORDER BY next_check_at LIMIT ?" + SKIP_LOCKED, (now, now, limit))]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                f"UPDATE executions SET lease_owner = ?, lease_until = ? WHERE id IN ({marks})"
                f" AND status IN ('pending', 'running')"
                f" AND (lease_until IS NULL OR lease_until <= ?)"  # still claimable
                f" RETURNING id, delivery_id, event_id, route, trigger, status, deadline_at, checks",
                (owner, now + lease, *ids, now)).fetchall()
            return [TrackedExecution(*row) for row in rows]

        return await self._write(job, urgent=urgent)

    async def reschedule_execution(self, execution_id: str, owner: str, status: str | None,
                                   next_check_at: float, now: float) -> bool:
        """Not finished yet: note its status, free the lease, check again at `next_check_at`.
        False, with nothing written, when `owner` no longer holds the lease."""

        def job(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(
                "UPDATE executions SET status = COALESCE(?, status), next_check_at = ?,"
                " checks = checks + 1, lease_owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND lease_owner = ? AND status IN ('pending', 'running')",
                (status, next_check_at, now, execution_id, owner)).rowcount)

        return await self._write(job)

    async def complete_execution(self, execution_id: str, result: ExecutionResult, now: float,
                                 targets: CallbackTargets) -> bool:
        """Apply a terminal state once; in the same transaction, create one callback per URL of
        the execution's route (and the sender's own, if it gave one). False if it was already
        finished (a push and a poll for the same execution produce one completion)."""

        def job(conn: sqlite3.Connection) -> bool:
            return self._complete(conn, execution_id, result, now, targets)

        if self.journaling:
            return await self._write(job)
        return await self._write(_Grouped(job, "complete", (execution_id, result, now, targets)))

    def _complete(self, conn: sqlite3.Connection, execution_id: str, result: ExecutionResult,
                  now: float, targets: CallbackTargets) -> bool:
        changed = conn.execute(
            "UPDATE executions SET status = ?, output = ?, node_results = ?, error = ?,"
            " started_at = COALESCE(?, started_at), completed_at = ?, lease_owner = NULL,"
            " lease_until = NULL, updated_at = ? WHERE id = ?"
            " AND status IN ('pending', 'running') RETURNING event_id, route, trigger",
            (result.status, _json(result.output), _json(result.node_results), result.error,
             result.started_at, result.completed_at, now, execution_id)).fetchone()
        if changed is None:
            return False
        event_id, route, _ = changed
        sender_url = conn.execute("SELECT callback_url FROM events WHERE id = ?",
                                  (event_id,)).fetchone()[0]
        urls = [(url, 0) for url in targets.for_route(route)]
        if sender_url:
            urls.append((sender_url, 1))
        if urls:  # their body is rendered from the event and execution rows, when sent
            conn.executemany(
                "INSERT INTO callbacks (id, execution_id, event_id, url, sender_supplied,"
                " body, status, next_attempt_at, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(new_id(), execution_id, event_id, url, supplied, b"",
                  CallbackStatus.PENDING, now, now, now) for url, supplied in urls])
            self._new_work.add(CALLBACKS)
        if self.journaling:
            self._journal(conn, event_id, now, {
                "kind": "execution", "execution_id": execution_id,
                "result": {"status": result.status, "output": result.output,
                           "node_results": result.node_results, "error": result.error,
                           "started_at": result.started_at,
                           "completed_at": result.completed_at}})
        return True

    async def next_execution_due(self) -> float | None:
        row = await self._one("SELECT MIN(next_check_at) AS t FROM executions"
                              " WHERE status IN ('pending', 'running') AND channel IS NULL", ())
        return None if row is None else row["t"]

    # callbacks

    async def claim_callbacks(self, owner: str, now: float, lease: float,
                              limit: int, urgent: bool = False) -> list[ClaimedCallback]:
        def job(conn: sqlite3.Connection) -> list[ClaimedCallback]:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM callbacks WHERE status = ? AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?" + SKIP_LOCKED,
                (CallbackStatus.PENDING, now, limit))]
            if len(ids) < limit:
                ids += [r[0] for r in conn.execute(
                    "SELECT id FROM callbacks WHERE status = ? AND lease_until <= ?"
                    " ORDER BY lease_until LIMIT ?" + SKIP_LOCKED,
                    (CallbackStatus.LEASED, now, limit - len(ids)))]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            leased = [r[0] for r in conn.execute(
                f"UPDATE callbacks SET status = ?, lease_owner = ?, lease_until = ?"
                f" WHERE id IN ({marks}) AND (status = ? OR (status = ? AND lease_until <= ?))"
                f" RETURNING id",
                (CallbackStatus.LEASED, owner, now + lease, *ids, CallbackStatus.PENDING,
                 CallbackStatus.LEASED, now)).fetchall()]
            if not leased:
                return []
            marks = ",".join("?" * len(leased))
            cursor = conn.execute(
                "SELECT c.id, c.execution_id, c.event_id, c.url, c.sender_supplied, c.attempts,"
                " c.failures, c.created_at, e.source, e.provider, e.event_type,"
                " e.idempotency_key, e.received_at, x.trigger, x.status, x.output,"
                " x.node_results, x.error, x.started_at, x.completed_at FROM callbacks c"
                " JOIN events e ON e.id = c.event_id JOIN executions x ON x.id = c.execution_id"
                f" WHERE c.id IN ({marks}) ORDER BY c.next_attempt_at", leased)
            return [_claimed_callback(row) for row in cursor.fetchall()]

        return await self._write(job, urgent=urgent)

    async def record_callback(self, callback: ClaimedCallback, owner: str, attempt: Attempt,
                              delivered: bool, next_at: float | None, reason: str | None,
                              now: float) -> bool:
        """Record one callback attempt; delivered, retried at `next_at`, or dead. False, with
        nothing written, when `owner` no longer holds the lease."""
        if delivered:
            status = CallbackStatus.DELIVERED
        else:
            status = CallbackStatus.PENDING if next_at is not None else CallbackStatus.DEAD

        def job(conn: sqlite3.Connection) -> bool:
            held = conn.execute(
                "UPDATE callbacks SET status = ?, attempts = attempts + 1, failures = failures + ?,"
                " next_attempt_at = COALESCE(?, next_attempt_at), last_error = ?,"
                " lease_owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND status = 'leased' AND lease_owner = ?",
                (status, 0 if delivered else 1, next_at, reason, now, callback.id,
                 owner)).rowcount
            if held:  # a lost lease writes nothing: the other holder's outcome counts
                conn.execute(
                    "INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome,"
                    " status_code, error, response_excerpt) VALUES (?,?,?,?,?,?,?)",
                    (attempt.delivery_id, attempt.started_at, attempt.latency_ms,
                     attempt.outcome, attempt.status_code, attempt.error,
                     attempt.response_excerpt))
            return bool(held)

        return await self._write(_Grouped(job, "callback", (
            callback, owner, attempt, status, 0 if delivered else 1, next_at, reason, now)))

    async def next_callback_due(self) -> float | None:
        row = await self._one("SELECT MIN(next_attempt_at) AS t FROM callbacks"
                              " WHERE status = 'pending'", ())
        return None if row is None else row["t"]

    async def release_leases(self, owner: str) -> None:
        """Free every execution and callback lease `owner` holds (clean shutdown)."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE executions SET lease_owner = NULL, lease_until = NULL"
                         " WHERE lease_owner = ?", (owner,))
            conn.execute("UPDATE callbacks SET status = 'pending', lease_owner = NULL,"
                         " lease_until = NULL WHERE status = 'leased' AND lease_owner = ?",
                         (owner,))

        await self._write(job)

    # channels: an edge's deliveries carried by outbound-only agents (see `bridge.channels.edge`)

    async def pull_channel(self, channel: str, agent: str, address: str | None,
                           acked: Sequence[tuple[str, float]], now: float, lease: float,
                           limit: int, max_bytes: int,
                           report_within: float = 3600.0) -> ChannelPull:
        """For one agent's pull, in one transaction: note the agent as seen; mark what it
        acknowledged (committed to its own store) as handed off, where the ack answers a lease
        this agent holds, of that generation (anything else is ignored and counted: a stolen
        token or a late ack may not hand off what the agent never held); lease it the next
        batch, in event order: first what is still leased to it (a restarted agent resumes
        where it stopped), then the oldest waiting, then leases other agents let expire and
        hand-offs whose agent reported nothing within `report_within`. At least one delivery,
        and no more than `max_bytes` of bodies beyond the first."""
        owner = agent_owner(channel, agent)

        def job(conn: sqlite3.Connection) -> ChannelPull:
            conn.execute(
                "INSERT INTO agents (channel, agent, address, first_seen, last_seen)"
                " VALUES (?,?,?,?,?) ON CONFLICT(channel, agent) DO UPDATE SET"
                " last_seen = excluded.last_seen, address = excluded.address",
                (channel, agent, address, now, now))
            done = 0
            for start in range(0, len(acked), 500):
                chunk = dict(acked[start:start + 500])
                held = [row[0] for row in conn.execute(
                    "SELECT id, created_at FROM deliveries WHERE channel = ? AND status = ?"
                    f" AND lease_owner = ? AND id IN ({','.join('?' * len(chunk))})",
                    (channel, DeliveryStatus.LEASED, owner, *chunk)).fetchall()
                    if row[1] == chunk[row[0]]]
                if held:
                    done += conn.execute(
                        "UPDATE deliveries SET status = ?, lease_until = ?,"
                        " attempts = attempts + 1, updated_at = ?"
                        f" WHERE id IN ({','.join('?' * len(held))})",
                        (DeliveryStatus.HANDED_OFF, now + report_within, now, *held)).rowcount
            if acked:
                conn.execute("UPDATE agents SET cursor = ?, acked = acked + ?"
                             " WHERE channel = ? AND agent = ?",
                             (max(a[0] for a in acked), done, channel, agent))
            ignored = len(acked) - done  # acks that answered no lease of this agent
            if limit <= 0:
                return ChannelPull([], ignored)
            found: list[tuple[str, int]] = []
            for sql, extra in (
                    ("status = 'leased' AND lease_owner = ?", (owner,)),
                    ("status = 'pending'", ()),
                    ("status IN ('leased', 'handed_off') AND lease_until <= ?", (now,))):
                if len(found) < limit:
                    found += conn.execute(
                        f"SELECT id, length(body) FROM deliveries WHERE channel = ? AND {sql}"
                        " ORDER BY id LIMIT ?" + SKIP_LOCKED,
                        (channel, *extra, limit - len(found))).fetchall()
            ids: list[str] = []
            size = 0
            for delivery_id, length in found:
                if delivery_id in ids:
                    continue
                if ids and size + length > max_bytes:
                    break
                ids.append(delivery_id)
                size += length
            if not ids:
                return ChannelPull([], ignored)
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                f"UPDATE deliveries SET status = ?, lease_owner = ?, lease_until = ?"
                f" WHERE id IN ({marks}) RETURNING id, event_id, route, trigger,"
                f" idempotency_key, body, content_type, created_at",
                (DeliveryStatus.LEASED, owner, now + lease, *ids)).fetchall()
            events = {r[0]: r[1:] for r in conn.execute(
                "SELECT id, source, provider, event_type, received_at FROM events WHERE id IN"
                f" ({','.join('?' * len(rows))})", [r[1] for r in rows])}
            items = [ChannelItem(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7],
                                 *events[r[1]]) for r in rows]
            return ChannelPull(sorted(items, key=lambda item: item.delivery_id), ignored)

        return await self._write(job)

    async def channel_report(self, channel: str, agent: str, reports: Sequence[AgentReport],
                             now: float, track_until: float, targets: CallbackTargets,
                             report_within: float = 3600.0) -> ChannelReported:
        """Apply what an agent reports, once: an attempt (its log line, and the delivery
        delivered, dead or still waiting, which gives the agent `report_within` more before
        the delivery goes back to the channel), or a finished execution (which makes the
        route's callbacks here). Only what answers this agent's own lease counts: a report for
        a delivery another agent holds, never pulled, or redriven since (another generation),
        or for an execution another agent started, is ignored and counted; one repeated after
        a lost answer changes nothing."""

        def job(conn: sqlite3.Connection) -> ChannelReported:
            applied = ignored = 0
            owner = agent_owner(channel, agent)
            for report in reports:
                if isinstance(report, AgentCompletion):
                    owned = conn.execute(
                        "SELECT 1 FROM executions x JOIN deliveries d ON d.id = x.delivery_id"
                        " WHERE x.id = ? AND x.channel = ? AND d.lease_owner = ?",
                        (report.execution_id, channel, owner)).fetchone()
                    if not owned:
                        ignored += 1
                    elif self._complete(conn, report.execution_id, report.result, now, targets):
                        applied += 1
                    continue
                row = conn.execute(
                    "SELECT event_id, route, trigger, status, created_at, lease_owner"
                    " FROM deliveries WHERE id = ? AND channel = ?",
                    (report.delivery_id, channel)).fetchone()
                if row is None or row[4] != report.generation or row[5] != owner:
                    ignored += 1
                    log.warning("agent report ignored", extra={
                        "channel": channel, "delivery_id": report.delivery_id,
                        "reason": "no such delivery on this channel" if row is None else
                        "the delivery was redriven since (another generation)"
                        if row[4] != report.generation else
                        "the delivery is not leased to this agent"})
                    continue
                event_id, route, trigger, status, _, _ = row
                a = report.attempt
                if conn.execute("SELECT 1 FROM attempts WHERE delivery_id = ? AND started_at = ?",
                                (report.delivery_id, a.started_at)).fetchone():
                    continue  # reported before; its answer was lost
                conn.execute(
                    "INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome,"
                    " status_code, error, response_excerpt) VALUES (?,?,?,?,?,?,?)",
                    (report.delivery_id, a.started_at, a.latency_ms, a.outcome, a.status_code,
                     a.error, a.response_excerpt))
                applied += 1
                if status not in IN_FLIGHT:
                    continue  # already delivered (by another agent) or given up on here
                if report.state == "delivered":  # the owner stays: its execution's reports
                    conn.execute("UPDATE deliveries SET status = ?, execution_id = ?,"
                                 " last_error = NULL, lease_until = NULL,"
                                 " updated_at = ? WHERE id = ?",
                                 (DeliveryStatus.DELIVERED, report.execution_id, now,
                                  report.delivery_id))
                    _supersede(conn, report.delivery_id, now)
                    if report.execution_id and report.tracked:
                        conn.execute(
                            "INSERT INTO executions (id, delivery_id, event_id, route, trigger,"
                            " status, created_at, updated_at, deadline_at, next_check_at,"
                            " channel) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO NOTHING",
                            (report.execution_id, report.delivery_id, event_id, route, trigger,
                             ExecutionStatus.PENDING, now, now, track_until, track_until,
                             channel))
                elif report.state == "dead":
                    conn.execute("UPDATE deliveries SET status = ?, last_error = ?,"
                                 " lease_until = NULL, updated_at = ?"
                                 " WHERE id = ?", (DeliveryStatus.DEAD,
                                                   f"on the agent: {a.error}", now,
                                                   report.delivery_id))
                else:  # still trying on-premises: the agent has that much longer again
                    conn.execute("UPDATE deliveries SET last_error = ?, updated_at = ?,"
                                 " lease_until = CASE WHEN status = ? THEN ? ELSE lease_until"
                                 " END WHERE id = ?",
                                 (a.error, now, DeliveryStatus.HANDED_OFF, now + report_within,
                                  report.delivery_id))
                _refresh_event(conn, event_id)
            return ChannelReported(applied, ignored)

        return await self._write(job)

    async def expire_channels(self, before: float, now: float) -> int:
        """Channel deliveries no agent took before `before` (the dedupe window) become dead
        letters: visible, and redrivable once an agent is back."""

        def job(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "UPDATE deliveries SET status = ?, last_error = ?, lease_owner = NULL,"
                " lease_until = NULL, updated_at = ? WHERE channel IS NOT NULL"
                " AND status IN (?, ?) AND created_at < ? RETURNING event_id",
                (DeliveryStatus.DEAD, "no agent took it within the dedupe window", now,
                 DeliveryStatus.PENDING, DeliveryStatus.LEASED, before)).fetchall()
            for event_id in {r[0] for r in rows}:
                _refresh_event(conn, event_id)
            return len(rows)

        return await self._write(job)

    async def channel_stats(self) -> tuple[dict[str, ChannelBacklog], list[AgentSeen]]:
        """Per channel: deliveries waiting for an agent (count, oldest) and held by agents;
        and every agent seen."""
        rows = await self._all(
            "SELECT channel, status, COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries"
            " WHERE channel IS NOT NULL AND status IN ('pending', 'leased', 'handed_off')"
            " GROUP BY channel, status", ())
        stats: dict[str, ChannelBacklog] = {}
        for row in rows:
            entry = stats.get(row["channel"], ChannelBacklog())
            if row["status"] == "handed_off":
                entry = dataclasses.replace(entry, handed_off=entry.handed_off + row["n"])
            else:
                oldest = row["oldest"] if entry.oldest is None else min(entry.oldest,
                                                                        row["oldest"])
                entry = ChannelBacklog(entry.waiting + row["n"], oldest, entry.handed_off)
            stats[row["channel"]] = entry
        agents = await self._all("SELECT channel, agent, address, first_seen, last_seen,"
                                 " cursor, acked FROM agents ORDER BY channel, agent", ())
        return stats, [AgentSeen(**a) for a in agents]

    # an agent's journal of outcomes, for its edge

    def _journal(self, conn: sqlite3.Connection, event_id: str, now: float,
                 body: dict[str, Any]) -> None:
        row = conn.execute("SELECT idempotency_key FROM events WHERE id = ?",
                           (event_id,)).fetchone()
        body["key"] = row[0] if row else None
        conn.execute("INSERT INTO journal (body, created_at) VALUES (?, ?)",
                     (json.dumps(body, ensure_ascii=False), now))
        self._new_work.add(JOURNAL)

    async def read_journal(self, limit: int) -> list[JournalEntry]:
        """The oldest entries. Ids are never reused (AUTOINCREMENT), so dropping what was read
        can never drop an entry written since."""
        rows = await self._all("SELECT id, body FROM journal ORDER BY id LIMIT ?", (limit,))
        return [JournalEntry(row["id"], json.loads(row["body"])) for row in rows]

    async def drop_journal(self, ids: Sequence[int]) -> None:
        def job(conn: sqlite3.Connection) -> None:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start:start + 500])
                conn.execute(f"DELETE FROM journal WHERE id IN ({','.join('?' * len(chunk))})",
                             chunk)

        await self._write(job)

    async def instance_id(self) -> str:
        """This store's own random name, made once and kept: an agent's identity at its edge,
        the same across restarts."""

        def job(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO meta (key, value) VALUES ('instance_id', ?)"
                         " ON CONFLICT(key) DO NOTHING", (secrets.token_hex(8),))
            return str(conn.execute(
                "SELECT value FROM meta WHERE key = 'instance_id'").fetchone()[0])

        return await self._write(job)

    # operations (admin API)

    async def list_events(self, *, source: str | None = None, event_type: str | None = None,
                          state: str | None = None, since: float | None = None,
                          until: float | None = None, key_contains: str | None = None,
                          before_id: str | None = None, after_id: str | None = None,
                          limit: int = 50) -> list[EventSummary]:
        """Newest first. `before_id` is the cursor: ids are time-ordered, so the page after one
        ending at X is everything with an id below X; `after_id` keeps only events newer than
        X (what arrived since a page was shown)."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("source", source), ("event_type", event_type), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("received_at >= ?")
            params.append(since)
        if until is not None:
            where.append("received_at < ?")
            params.append(until)
        if key_contains:
            where.append("instr(idempotency_key, ?) > 0")  # case-sensitive, unlike LIKE
            params.append(key_contains)
        if before_id:
            where.append("id < ?")
            params.append(before_id)
        if after_id:
            where.append("id > ?")
            params.append(after_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        # `workflows`: the executions' states, so a delivered event whose workflow failed
        # shows as such in a table.
        rows = await self._all(
            f"SELECT id, source, provider, event_type, idempotency_key, received_at, state,"
            f" (SELECT group_concat(status, ',') FROM executions x WHERE x.event_id = events.id)"
            f" AS workflows FROM events {clause} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [EventSummary(**{**row, "workflows": tuple((row["workflows"] or "").split(",")
                                                          if row["workflows"] else ())})
                for row in rows]

    async def event_body(self, event_id: str) -> bytes | None:
        row = await self._one("SELECT body FROM events WHERE id = ?", (event_id,))
        return None if row is None else bytes(row["body"])

    async def replay(self, event_id: str, deliveries: Sequence[NewDelivery], now: float) -> int:
        """New deliveries for an event, each recorded as a replay of it; returns how many."""

        def job(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO deliveries (id, event_id, route, trigger, idempotency_key, body,"
                " content_type, status, next_attempt_at, created_at, updated_at, replay_of,"
                " channel) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(new_id(), event_id, d.route, d.trigger, d.idempotency_key, d.body,
                  d.content_type, DeliveryStatus.PENDING, now, now, now, event_id, d.channel)
                 for d in deliveries])
            if deliveries:
                _refresh_event(conn, event_id)
                self._new_work.add(DELIVERIES)
            return len(deliveries)

        return await self._write(job)

    async def dead_letters(self, *, route: str | None = None, source: str | None = None,
                           after_id: str | None = None, limit: int = 50) -> list[DeadLetter]:
        where, params = ["d.status = 'dead'"], []
        if route:
            where.append("d.route = ?")
            params.append(route)
        if source:
            where.append("e.source = ?")
            params.append(source)
        if after_id:
            where.append("d.id > ?")
            params.append(after_id)
        rows = await self._all(
            "SELECT d.id, d.event_id, e.source, e.event_type, d.route, d.trigger,"
            " d.idempotency_key, d.attempts, d.last_error, d.updated_at FROM deliveries d"
            f" JOIN events e ON e.id = d.event_id WHERE {' AND '.join(where)}"
            " ORDER BY d.id LIMIT ?", (*params, limit))
        return [DeadLetter(**row) for row in rows]

    async def redrive(self, delivery_ids: Sequence[str], now: float,
                      unsafe_before: float | None = None) -> int:
        """Dead deliveries back to pending, due now, with their own idempotency key; their age
        (for the retry policy's max_age) starts again. A delivery that may have reached the
        platform before `unsafe_before` (its key may be forgotten there, so a resend could run
        the workflow twice) is left dead unless `unsafe_before` is None (an operator's --force);
        a forced one starts afresh (`reached_at` cleared)."""
        guard = "" if unsafe_before is None else " AND (reached_at IS NULL OR reached_at >= ?)"
        extra = () if unsafe_before is None else (unsafe_before,)
        # A superseded delivery (a replay of its route was delivered) goes only with force.
        statuses = "('dead')" if unsafe_before is not None else "('dead', 'superseded')"

        def job(conn: sqlite3.Connection) -> int:
            changed = 0
            for delivery_id in delivery_ids:
                row = conn.execute(
                    "UPDATE deliveries SET status = 'pending', failures = 0, next_attempt_at = ?,"
                    " created_at = ?, updated_at = ?,"
                    " reached_at = CASE WHEN ? THEN NULL ELSE reached_at END"
                    f" WHERE id = ? AND status IN {statuses}" + guard +
                    " RETURNING event_id",
                    (now, now, now, unsafe_before is None, delivery_id, *extra)).fetchone()
                if row is not None:
                    changed += 1
                    _refresh_event(conn, row[0])
            if changed:
                self._new_work.add(DELIVERIES)
            return changed

        return await self._write(job)

    async def retry_now(self, delivery_id: str, now: float) -> Retried | None:
        """A pending delivery due now instead of at its backoff's end; its route, if paused,
        resumed (an operator asking for it to be sent). None when no pending delivery has
        that id."""

        def job(conn: sqlite3.Connection) -> Retried | None:
            row = conn.execute(
                "UPDATE deliveries SET next_attempt_at = ?, updated_at = ? WHERE id = ?"
                " AND status IN ('pending', 'leased') RETURNING route",  # leased: being sent
                (now, now, delivery_id)).fetchone()
            if row is None:
                return None
            paused = conn.execute("SELECT reason FROM routes WHERE name = ? AND state = ?",
                                  (row[0], RouteState.PAUSED)).fetchone()
            if paused is not None:
                _set_route(conn, row[0], RouteState.ACTIVE, None, now, None)
            self._new_work.add(DELIVERIES)
            return Retried(delivery_id, row[0], resumed=paused is not None)

        return await self._write(job)

    async def dead_deliveries(self, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """The dead deliveries named by `ids`, each a delivery id or an event id (standing for
        its dead deliveries), superseded ones named by their own id too; and the ids that
        named none."""
        found: list[str] = []
        missing: list[str] = []
        for given in ids:
            rows = await self._all(
                "SELECT id FROM deliveries WHERE (status = 'dead' AND (id = ? OR event_id = ?))"
                " OR (status = 'superseded' AND id = ?) ORDER BY id", (given, given, given))
            found += [r["id"] for r in rows if r["id"] not in found]
            if not rows:
                missing.append(given)
        return found, missing

    async def count_superseded(self, delivery_ids: Sequence[str]) -> int:
        """How many of these deliveries a delivered replay of their route superseded."""
        return await self._count(delivery_ids, "status = 'superseded'", ())

    async def count_unsafe(self, delivery_ids: Sequence[str], unsafe_before: float) -> int:
        """How many of these dead deliveries may have reached the platform before then."""
        return await self._count(delivery_ids, "status = 'dead' AND reached_at < ?",
                                 (unsafe_before,))

    async def _count(self, delivery_ids: Sequence[str], condition: str,
                     params: Sequence[Any]) -> int:
        """How many of `delivery_ids` meet `condition`, asked 500 ids at a time."""
        total = 0
        for start in range(0, len(delivery_ids), 500):
            chunk = list(delivery_ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            row = await self._one(f"SELECT COUNT(*) AS n FROM deliveries WHERE id IN ({marks})"
                                  f" AND {condition}", (*chunk, *params))
            total += int(row["n"]) if row else 0
        return total

    async def discard(self, delivery_ids: Sequence[str], reason: str, now: float) -> int:
        def job(conn: sqlite3.Connection) -> int:
            changed = 0
            for delivery_id in delivery_ids:
                row = conn.execute(
                    "UPDATE deliveries SET status = 'discarded', last_error = ?, updated_at = ?"
                    " WHERE id = ? AND status = 'dead' RETURNING event_id",
                    (f"discarded: {reason}", now, delivery_id)).fetchone()
                if row is not None:
                    changed += 1
            return changed

        return await self._write(job)

    async def pending_by_route(self) -> dict[str, int]:
        rows = await self._all("SELECT route, COUNT(*) AS n FROM deliveries"
                               " WHERE status IN ('pending', 'leased', 'handed_off')"
                               " GROUP BY route", ())
        return {row["route"]: row["n"] for row in rows}

    async def source_counts(self) -> dict[str, SourceCount]:
        rows = await self._all("SELECT source, COUNT(*) AS events, MAX(received_at) AS last"
                               " FROM events GROUP BY source", ())
        return {row["source"]: SourceCount(row["events"], row["last"]) for row in rows}

    # housekeeping

    # console sessions

    async def start_session(self, session_id: str, token: str, csrf: str, now: float,
                            expires_at: float) -> None:
        """A signed-in console session: `session_id` is the digest of the cookie's id, `token`
        a keyed digest of the admin token that signed in (removing it ends its sessions)."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM console_sessions WHERE expires_at < ?", (now,))
            conn.execute("INSERT INTO console_sessions (id, token, csrf, created_at, expires_at)"
                         " VALUES (?,?,?,?,?)", (session_id, token, csrf, now, expires_at))

        await self._write(job)

    async def find_session(self, session_id: str, now: float) -> dict[str, Any] | None:
        return await self._one("SELECT token, csrf FROM console_sessions WHERE id = ?"
                               " AND expires_at > ?", (session_id, now))

    async def end_session(self, session_id: str) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM console_sessions WHERE id = ?", (session_id,))

        await self._write(job)

    async def prune(self, before: float, limit: int = 1000) -> int:
        """Forget events received before `before` that have nothing left to deliver."""

        def job(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM events e WHERE received_at < ? AND NOT EXISTS ("
                " SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
                " AND d.status IN ('pending', 'leased', 'handed_off')) AND NOT EXISTS ("
                " SELECT 1 FROM executions x WHERE x.event_id = e.id"
                " AND x.status IN ('pending', 'running')) AND NOT EXISTS ("
                " SELECT 1 FROM callbacks c WHERE c.event_id = e.id"
                " AND c.status IN ('pending', 'leased')) ORDER BY received_at LIMIT ?",
                (before, limit))]
            conn.execute("DELETE FROM traffic WHERE minute < ?", (int(before // 60),))
            if not ids:
                return 0
            marks = ",".join("?" * len(ids))
            conn.execute(f"DELETE FROM attempts WHERE delivery_id IN"
                         f" (SELECT id FROM deliveries WHERE event_id IN ({marks}))", ids)
            conn.execute(f"DELETE FROM attempts WHERE delivery_id IN"
                         f" (SELECT id FROM callbacks WHERE event_id IN ({marks}))", ids)
            conn.execute(f"DELETE FROM callbacks WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM executions WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM event_items WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM nonces WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
            return len(ids)

        return await self._write(job)

    async def check_writable(self) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('ready_probe', ?)"
                         " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         (str(time.time()),))

        await self._write(job)

    async def secret_key(self) -> str:
        """The key that signs status tokens when the config sets none: made once, kept."""

        def job(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO meta (key, value) VALUES ('secret_key', ?)"
                         " ON CONFLICT(key) DO NOTHING",
                         (secrets.token_urlsafe(32),))
            return str(conn.execute(
                "SELECT value FROM meta WHERE key = 'secret_key'").fetchone()[0])

        return await self._write(job)

    async def add_traffic(self, counts: Sequence[TrafficCount]) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO traffic (minute, kind, name, outcome, n) VALUES (?,?,?,?,?)"
                " ON CONFLICT (minute, kind, name, outcome) DO UPDATE SET n = traffic.n + excluded.n",
                [(c.minute, c.kind, c.name, c.outcome, c.n) for c in counts])

        if counts:
            await self._write(job)

    async def traffic(self, since_minute: int) -> list[TrafficCount]:
        rows = await self._all("SELECT minute, kind, name, outcome, n FROM traffic"
                               " WHERE minute >= ? ORDER BY minute", (since_minute,))
        return [TrafficCount(**row) for row in rows]

    async def counts(self) -> dict[str, dict[str, int]]:
        events = await self._all("SELECT state, COUNT(*) AS n FROM events GROUP BY state", ())
        deliveries = await self._all(
            "SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status", ())
        return {"events": {r["state"]: r["n"] for r in events},
                "deliveries": {r["status"]: r["n"] for r in deliveries}}

    # reads

    async def _all(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        if self._reader is None:
            raise StoreUnavailable("the store is closed")
        try:
            names, rows = await self._within(
                self._reader._execute(_query, self._reader._conn, sql, params))
        except StoreUnavailable:
            raise
        except Exception as exc:
            if outage(exc):
                log.error("store read failed", extra={"error": _describe(exc)})
                raise StoreUnavailable("the store cannot be read") from None
            raise _job_error(exc) from None
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def _one(self, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None


def _query(conn: sqlite3.Connection, sql: str, params: Sequence[Any]
           ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """One read, run to its end in one step on the reader's thread. (Executing and fetching as
    two steps let another read start in between; the connection's read transaction then stayed
    open across both, and a later read could see a snapshot older than a commit it had already
    been told about.)"""
    cursor = conn.execute(sql, params)
    try:
        return [d[0] for d in cursor.description], cursor.fetchall()
    finally:
        cursor.close()


_MAX_PARAMS = 30000  # below SQLite's default limit of 32,766 bound parameters per statement


def _insert_rows(conn: sqlite3.Connection, target: str, rows: list[tuple[Any, ...]],
                 tail: str = "") -> int:
    """`INSERT INTO {target} VALUES (...), (...), ...{tail}`: one statement per up to
    _MAX_PARAMS values instead of one per row. With a `RETURNING` tail, how many rows it
    returned (those inserted); otherwise 0."""
    if not rows:
        return 0
    width = len(rows[0])
    per = max(1, _MAX_PARAMS // width)
    one = "(" + ",".join("?" * width) + ")"
    returned = 0
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        cursor = conn.execute(f"INSERT INTO {target} VALUES " + ",".join([one] * len(chunk))
                              + tail, [value for row in chunk for value in row])
        if "RETURNING" in tail:
            returned += len(cursor.fetchall())
    return returned


class _Accept:
    """A plain accept job: applied by `SQLiteStore._accept_all` with its neighbours."""

    __slots__ = ("event", "headers", "deliveries")

    def __init__(self, event: VerifiedEvent, headers: str,
                 deliveries: Sequence[NewDelivery]) -> None:
        self.event = event
        self.headers = headers
        self.deliveries = deliveries

    def __call__(self, conn: sqlite3.Connection) -> Accepted:
        raise AssertionError("plain accepts are applied together by SQLiteStore._accept_all")

    def event_row(self) -> tuple[Any, ...]:
        """Its event as the events table takes it: (id, source, provider, event_type,
        idempotency_key, received_at, headers, body, state, callback_url, fingerprint,
        filtered)."""
        e = self.event
        return (e.id, e.source, e.provider, e.event_type, e.idempotency_key, e.received_at,
                self.headers, e.body,
                str(EventState.QUEUED if self.deliveries else EventState.UNROUTED),
                e.callback_url, e.fingerprint, _filtered(e))


def _first_of_each_key(jobs: Sequence[_Accept]) -> tuple[dict[str, str], list[_Accept]]:
    """Plain accepts by idempotency key: the id stored (or to be) under each key, and the
    accepts that are the first of their key in the batch (a later one is a duplicate)."""
    first: dict[str, str] = {}
    fresh = [job for job in jobs
             if first.setdefault(job.event.idempotency_key, job.event.id) == job.event.id]
    return first, fresh


class _Grouped:
    """A change of a common kind (a delivery's outcome, an execution's end, a callback's
    outcome), with what it writes as data. SQLite runs `fn`, as any job; PostgreSQL writes the
    batch's changes of one kind in one statement (`PostgresStore._apply`), where each of them
    alone would be several round trips."""

    __slots__ = ("fn", "kind", "args")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], kind: str,
                 args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.kind = kind
        self.args = args

    def __call__(self, conn: sqlite3.Connection) -> Any:
        return self.fn(conn)


class _Bare:
    """A job applied without its own savepoint."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn


# Claims select what they will lease with this marker: a comment to SQLite (one writer at a
# time), `FOR UPDATE SKIP LOCKED` on PostgreSQL, where replicas claiming at once each skip the
# rows another is taking instead of waiting for them.
SKIP_LOCKED = " /*SKIP LOCKED*/"
FOR_UPDATE = " /*FOR UPDATE*/"  # likewise: a row lock on PostgreSQL

_CLAIMED = ("id, event_id, route, trigger, idempotency_key, body, content_type, attempts,"
            " failures, created_at, reached_at")


def _claimed(row: sqlite3.Row | tuple[Any, ...], probe: bool = False) -> ClaimedDelivery:
    """A claimed delivery from a row of the `_CLAIMED` columns, in that order."""
    (id_, event_id, route, trigger, key, body, content_type, attempts, failures, created_at,
     reached_at) = row
    return ClaimedDelivery(id_, event_id, route, trigger, key, bytes(body), content_type,
                           attempts, failures, created_at, probe, reached_at)


def _set_route(conn: sqlite3.Connection, route: str, state: RouteState, reason: str | None,
               now: float, next_probe: float | None) -> None:
    current = conn.execute("SELECT state FROM routes WHERE name = ?", (route,)).fetchone()
    if current is None and state == RouteState.ACTIVE:
        return  # routes are active unless a row says otherwise
    if current is not None and current[0] == state and state == RouteState.ACTIVE:
        return
    conn.execute(
        "INSERT INTO routes (name, state, reason, changed_at, next_probe_at) VALUES (?,?,?,?,?)"
        " ON CONFLICT(name) DO UPDATE SET state = excluded.state, reason = excluded.reason,"
        " changed_at = excluded.changed_at, next_probe_at = excluded.next_probe_at",
        (route, state, reason, now, next_probe))
    if state == RouteState.ACTIVE:
        log.info("route resumed", extra={"route": route})
    else:
        log.warning("route paused", extra={"route": route, "reason": reason})


def _supersede(conn: sqlite3.Connection, delivered_id: str, now: float) -> None:
    """A replay delivered: the dead deliveries of its route made before it are superseded (out
    of the dead letters; a redrive needs force). PostgreSQL's `RECORDS` does the same."""
    conn.execute(
        "UPDATE deliveries SET status = ?, updated_at = ? WHERE status = 'dead' AND id IN"
        " (SELECT d.id FROM deliveries d JOIN deliveries r ON r.id = ?"
        "  WHERE r.replay_of IS NOT NULL AND d.event_id = r.event_id AND d.route = r.route"
        "  AND d.created_at <= r.created_at AND d.id <> r.id)",
        (DeliveryStatus.SUPERSEDED, now, delivered_id))


def _refresh_event(conn: sqlite3.Connection, event_id: str) -> None:
    conn.execute(
        "UPDATE events SET state = CASE"
        " WHEN EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?"
        "   AND status IN ('pending', 'leased', 'handed_off')) THEN 'queued'"
        " WHEN EXISTS (SELECT 1 FROM deliveries WHERE event_id = ? AND status IN ('dead', 'discarded'))"
        "   THEN 'dead'"
        " ELSE 'delivered' END WHERE id = ?", (event_id, event_id, event_id))


def _filtered(event: VerifiedEvent) -> str | None:
    return json.dumps(event.filtered, ensure_ascii=False) if event.filtered else None


def _json(value: Any) -> str | None:
    """An execution's output or node results as stored: `codec.dumps_document` (orjson, a 1.2 KB
    output in ~1 µs against ~15 µs, with json for what orjson refuses)."""
    return None if value is None else codec.dumps_document(value).decode()


def _claimed_callback(row: tuple[Any, ...]) -> ClaimedCallback:
    (id_, execution_id, event_id, url, supplied, attempts, failures, created_at, source,
     provider, event_type, key, received_at, trigger, status, output, node_results, error,
     started_at, completed_at) = row
    result = ExecutionResult(status, decode_json(output), decode_json(node_results), error,
                             started_at, completed_at)
    completion = Completion(event_id, source, provider, event_type, key, received_at, trigger,
                            execution_id, result, at=created_at)
    return ClaimedCallback(id_, execution_id, event_id, url, bool(supplied), completion,
                           attempts, failures, created_at)


def _execution(row: dict[str, Any]) -> ExecutionRecord:
    return ExecutionRecord(**{**row, "output": decode_json(row["output"]),
                              "node_results": decode_json(row["node_results"])})


# SQLite's primary result codes that mean the store cannot be used right now (busy, locked, out of
# memory, read-only, I/O, corrupt, full, cannot open, lock protocol, not a database). Anything
# else (a constraint, a bad parameter, bad SQL) is a bug: retrying later will not help.
_OUTAGE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


class _Isolate(BaseException):
    """A run of accepts the store refused: the batch is rolled back and applied again with each
    accept alone. A BaseException, so that no job's own error handling takes it for its own."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Marks an outcome as seen, so one nobody waits for any more is not logged as lost."""
    if not task.cancelled():
        task.exception()


def _savepointed(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], Any]
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
        answer = (False, _job_error(exc))
    conn.execute("RELEASE job")
    return answer


def outage(exc: BaseException) -> bool:
    """Is `exc` the store being unavailable (503, retry later), rather than a bug?"""
    if isinstance(exc, StoreUnavailable | OSError | MemoryError):
        return True
    if type(exc).__module__.startswith("psycopg"):  # the PostgreSQL store runs these jobs too
        import psycopg

        # Connection lost, server shutting down, statement timeout, serialization: retry later.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.Error) and code is not None:
        return (code & 0xFF) in _OUTAGE_CODES
    return isinstance(exc, sqlite3.OperationalError)  # no code: assume the worst


def _job_error(exc: Exception) -> Exception:
    """A job's own failure: domain errors pass through; a database error is a bug, logged here
    with its traceback and answered as an internal error."""
    if isinstance(exc, sqlite3.Error | ValueError | TypeError) or \
            type(exc).__module__.startswith("psycopg"):
        log.error("store job failed", exc_info=(type(exc), exc, exc.__traceback__))
        return InternalError("internal error")
    return exc


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"



