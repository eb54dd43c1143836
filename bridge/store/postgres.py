"""The PostgreSQL store: the shared jobs (`core.SQLStore`) on PostgreSQL, for replicas.

What is PostgreSQL's own: a pool of read connections, migrations under an advisory lock,
`NOTIFY bridge_work` so every replica's loops wake for work another accepted, cutting a
connection that stopped answering, and fast paths that write a batch's changes of one kind in
one statement (`postgres_batches`; the rationale in docs/scaling.md). Claims take rows with
`FOR UPDATE SKIP LOCKED` and re-check each row's status as they lease it, so no two replicas
hold the same attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from bridge.core.errors import InternalError, StoreUnavailable
from bridge.core.models import (
    Accepted,
    CallbackStatus,
    ClaimedCallback,
    ClaimedDelivery,
    DeliveryStatus,
    Pacing,
    TrackedExecution,
    new_id,
)
from bridge.store.core import SQLStore
from bridge.store.dialect import POSTGRES
from bridge.store.engine import (
    DEFAULT_DEADLINE,
    AcceptJob,
    CombinableJob,
    first_of_each_key,
)
from bridge.store.faults import describe, outage
from bridge.store.kinds import CALLBACKS, DELIVERIES, EXECUTIONS, WORK
from bridge.store.migrate import migrate_postgres
from bridge.store.postgres_batches import (
    CALLBACK_OUTCOMES,
    CLAIM,
    CLAIM_CALLBACKS,
    CLAIM_EXECUTIONS,
    COMPLETIONS,
    INSERT_CALLBACK,
    INSERT_DELIVERY,
    INSERT_EVENT,
    RECORDS,
    AcceptsInOneStatement,
    CombinedChanges,
    NotifyingSession,
    OneStatement,
    PipelinedRun,
    WriteEachAlone,
    answer_positions,
    column_arrays,
    pipeline_runs,
)
from bridge.store.postgres_connection import NOTIFY, Connection, network_options
from bridge.store.rows import claimed_callback, claimed_delivery, read_rows, stored_json
from bridge.store.writer import Writer

log = logging.getLogger("bridge.store")


class PostgresStore(SQLStore):
    grouping = True  # write a batch's changes of one kind together (the bench compares without)
    pipelining = True  # send runs of one-statement jobs in one pipeline (`PipelinedRun`)

    def __init__(self, url: str, *, statement_timeout: float = 10.0, pool_size: int = 4,
                 commit_delay: float = 0.0, deadline: float = DEFAULT_DEADLINE) -> None:
        super().__init__(POSTGRES, commit_delay=commit_delay, deadline=deadline)
        self._reading: dict[Connection, float] = {}  # read connections in use: since when
        self.savepoints_always = True
        self.url = url
        self.statement_timeout = statement_timeout
        self.pool_size = pool_size  # read connections; writes go through the one writer
        self._readers: queue.Queue[Connection] | None = None
        self._listener: threading.Thread | None = None
        self._writer_conn = self._connection("writer")  # replaced by the opened one
        self._listening = False

    def _connection(self, role: str) -> Connection:
        return Connection(self.url, self.statement_timeout, f"webhook-bridge {role}",
                          self.deadline)

    def _interrupt_writer(self, writer: Writer) -> None:
        self._writer_conn.interrupt()

    def _stalled(self) -> None:
        super()._stalled()
        now = time.monotonic()
        for conn, since in list(self._reading.items()):
            if now - since >= self.deadline:
                conn.interrupt()

    async def open(self) -> None:
        conn = self._connection("writer")
        try:
            await asyncio.to_thread(self._prepare, conn)
        except psycopg.Error as exc:
            conn.close()
            log.error("store cannot open", extra={"error": describe(exc)})
            raise StoreUnavailable("the store cannot be reached") from None
        writer_conn: Any = conn
        self._writer = Writer(writer_conn, self._apply, self._finish, self.commit_delay)
        self._writer_conn = conn
        self._readers = queue.Queue()
        for _ in range(self.pool_size):  # connected on first use, and again after a failure
            self._readers.put(self._connection("reader"))
        self._listening = True
        loop = asyncio.get_running_loop()
        self._listener = threading.Thread(target=self._listen, args=(loop,), daemon=True,
                                          name="store-listener")
        self._listener.start()

    def _prepare(self, conn: Connection) -> None:
        """Connect and migrate, under an advisory lock: replicas starting together migrate
        once, and the others wait and find it done."""
        migrate_postgres(conn.connect())

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Other replicas' commits that made work due wake this one's loops. (This replica's
        own commits wake them as they are answered: its own NOTIFYs are skipped.)"""
        while self._listening:
            conn: Any = None
            try:
                conn = psycopg.connect(self.url, autocommit=True,
                                       **network_options(self.deadline))
                conn.execute(f"LISTEN {NOTIFY}")
                while self._listening:
                    for notice in conn.notifies(timeout=1.0):
                        if not self._listening:  # `close()` sent it to end the wait
                            break
                        if notice.pid != self._writer_conn.pid:
                            kinds = frozenset(notice.payload.split(",")) & WORK or WORK
                            loop.call_soon_threadsafe(self._woken, kinds)
            except psycopg.Error:
                threading.Event().wait(1.0)  # the database is away: try again shortly
            except RuntimeError:  # the event loop is closed
                return
            finally:
                if conn is not None:
                    conn.close()

    def _woken(self, kinds: frozenset[str]) -> None:
        waiters, self._change_waiters = self._change_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        for watching, callback in self._watchers:
            if watching & kinds:
                callback()

    def _apply(self, conn: Any, jobs: list[Callable[[Any], Any]]
               ) -> tuple[list[tuple[bool, Any]], frozenset[str]]:
        """A batch of accepts alone goes in one round trip (`_ingest`). Any other batch runs
        the shared jobs (`Engine._apply`), except that its changes of one kind are written
        together: its accepts as one run, and its delivery outcomes, completions and callback
        outcomes each in one statement (`CombinedChanges`), in the place of the first of their kind.
        Consecutive jobs that are one statement each (those groups, the claims, and the
        accepts as one statement, `AcceptsInOneStatement`, put first) then go in one pipeline
        (`PipelinedRun`): under load a batch's acknowledgements, outcomes and claims are one
        round trip, where each was one of its own.

        A change joins the first of its kind only across changes of other kinds that are grouped
        too (which touch other rows: outcomes, completions and callback outcomes name different
        tables), never across any other change, so the batch ends as it would applied in turn;
        `tests/store/test_differential.py` holds the two to that. Accepts alone go first: they
        only add rows, and a claim in the batch then already sees their deliveries."""
        notifying: Any = NotifyingSession(conn, self)
        accepts = [job for job in jobs if isinstance(job, AcceptJob)]
        if len(accepts) == len(jobs):
            try:
                return self._ingest(conn, accepts), frozenset(self._new_work)
            except Exception as exc:
                if outage(exc):
                    raise
                # One accept the server refused must fail alone, never its neighbours: the
                # batch again through the shared path, which isolates a run it cannot write.
                log.warning("accepts in one round trip failed; applying them by the shared path",
                            extra={"changes": len(jobs), "error": describe(exc)})
                return super()._apply(notifying, jobs)
        if not self.grouping:
            return super()._apply(notifying, jobs)
        slots: list[list[int]] = []  # positions in `jobs`, by kind, in order of first arrival
        first: dict[str, int] = {}
        for i, job in enumerate(jobs):
            kind = "accept" if isinstance(job, AcceptJob) else \
                job.kind if isinstance(job, CombinableJob) else None
            if kind is None:
                slots.append([i])
                # Any other change may touch what a later one of a kind does (a claim takes a
                # delivery a later outcome names, a pause a later delivery resumes): the
                # changes after it start groups of their own after it, as if applied in turn.
                first = {k: v for k, v in first.items() if k == "accept"}
            elif kind in first:
                slots[first[kind]].append(i)
            else:
                first[kind] = len(slots)
                slots.append([i])
        plan: list[Any] = []
        if self.pipelining and "accept" in first:
            # The accepts first, so that they do not split the run of statements after them
            # (and a claim in the batch already sees their deliveries).
            slots.insert(0, slots.pop(first["accept"]))
        # For each job of the plan, the positions it answers (for a `PipelinedRun` one, a list
        # of those of each of its jobs).
        answers: list[Any] = []
        for positions in slots:
            # A change alone of its kind is a group too when groups go in a pipeline: one
            # statement in the run, where the shared job would be several round trips.
            if isinstance(jobs[positions[0]], CombinableJob) and (
                    len(positions) > 1 or self.pipelining):
                plan.append(CombinedChanges(self, [job for i in positions
                                                 if isinstance(job := jobs[i], CombinableJob)]))
                answers.append(positions)
            elif isinstance(jobs[positions[0]], AcceptJob) and self.pipelining:
                plan.append(AcceptsInOneStatement(self, [job for i in positions
                                            if isinstance(job := jobs[i], AcceptJob)]))
                answers.append(positions)
            else:
                plan.extend(jobs[i] for i in positions)
                answers.extend([i] for i in positions)
        if self.pipelining:  # runs of one-statement jobs: one round trip each run
            plan, answers = pipeline_runs(plan, answers)
        results, new_work = super()._apply(notifying, plan)
        out: list[tuple[bool, Any]] = [(False, None)] * len(jobs)
        for job, positions, result in zip(plan, answers, results, strict=True):
            if isinstance(job, PipelinedRun):
                ok, value = result
                for part, where, part_result in zip(
                        job.jobs, positions, value if ok else [result] * len(job.jobs),
                        strict=True):
                    answer_positions(out, part, where, part_result)
            else:
                answer_positions(out, job, positions, result)
        return out, new_work

    # Claims: each in one statement (`CLAIM`, `CLAIM_EXECUTIONS`, `CLAIM_CALLBACKS`), where the
    # shared job takes three to five, one after another. A batch under load holds one claim of
    # each kind, and every statement the writer waits for costs it the event loop's GIL again.

    async def claim(self, owner: str, now: float, lease: float, limit: int,
                    probe_every: float, pacing: Pacing | None = None,
                    urgent: bool = False) -> list[ClaimedDelivery]:
        """As `OutboxJobs.claim`. With `pacing` (a bucket to read and spend) it is that
        claim; without, one statement leases the due deliveries and names the paused routes,
        which are then probed as the shared claim probes them."""
        if pacing is not None or not self.grouping:
            return await super().claim(owner, now, lease, limit, probe_every, pacing, urgent)

        def read(conn: Any, rows: list[tuple[Any, ...]]) -> list[ClaimedDelivery]:
            claimed = [claimed_delivery(row[1:]) for row in rows if row[0] == "leased"]
            for row in rows if limit > 0 else ():
                if row[0] == "paused":
                    claimed.extend(self._probe(conn, row[3], owner, now, lease, probe_every))
            return claimed

        return await self._write(OneStatement(
            CLAIM, (now, now, limit, now, limit, owner, now + lease, now), read), urgent=urgent)

    async def claim_executions(self, owner: str, now: float, lease: float,
                               limit: int, urgent: bool = False) -> list[TrackedExecution]:
        if not self.grouping:
            return await super().claim_executions(owner, now, lease, limit, urgent)

        def read(conn: Any, rows: list[tuple[Any, ...]]) -> list[TrackedExecution]:
            return [TrackedExecution(*row) for row in rows]

        return await self._write(OneStatement(
            CLAIM_EXECUTIONS, (now, now, limit, owner, now + lease, now), read), urgent=urgent)

    async def claim_callbacks(self, owner: str, now: float, lease: float,
                              limit: int, urgent: bool = False) -> list[ClaimedCallback]:
        if not self.grouping:
            return await super().claim_callbacks(owner, now, lease, limit, urgent)

        def read(conn: Any, rows: list[tuple[Any, ...]]) -> list[ClaimedCallback]:
            return [claimed_callback(row) for row in rows]

        return await self._write(OneStatement(
            CLAIM_CALLBACKS, (now, limit, now, limit, owner, now + lease, now), read),
            urgent=urgent)

    def _records(self, jobs: list[CombinableJob]) -> tuple[str, list[list[Any]]]:
        """Every delivery outcome of the batch in one statement (`RECORDS`): the same writes
        as `OutboxJobs.record`'s job for each. Its answer is read by `_records_read`."""
        rows = []
        for job in jobs:
            (delivery, owner, attempt, status, failures, next_at, execution_id, error,
             reached_at, now, track_until) = job.args
            rows.append((delivery.id, owner, str(status), failures, next_at, execution_id, error,
                         reached_at, now, delivery.event_id, delivery.route, delivery.trigger,
                         track_until, attempt.started_at, attempt.latency_ms, attempt.outcome,
                         attempt.status_code, attempt.error, attempt.response_excerpt))
        columns = column_arrays(rows)
        # One delivery twice, or two of one event's route (a replay delivered supersedes the
        # dead ones before it, one of which may die in this batch): each outcome must see the
        # one before it.
        if len({(job.args[0].event_id, job.args[0].route) for job in jobs}) < len(jobs):
            raise WriteEachAlone
        return RECORDS, columns

    def _records_read(self, conn: Any, jobs: list[CombinableJob], answer: list[tuple[Any, ...]]
                      ) -> list[bool]:
        held: set[str] = set()
        for what, name in answer:
            if what == "held":
                held.add(name)
            else:
                log.info("route resumed", extra={"route": name})
        if any(job.args[10] is not None and job.args[0].id in held for job in jobs):
            self._new_work.add(EXECUTIONS)
        return [job.args[0].id in held for job in jobs]

    def _completions(self, jobs: list[CombinableJob]) -> tuple[str, list[list[Any]]]:
        """Every execution's end in the batch in one statement (`COMPLETIONS`) and their
        callbacks in one more (`_completions_read`): the same writes as
        `ExecutionJobs._complete` for each. A push and a poll of the same execution in one batch:
        the first completes it, the second finds it complete, as one after the other would."""
        rows: dict[str, tuple[Any, ...]] = {}
        for job in jobs:
            execution_id, result, now, _ = job.args
            rows.setdefault(execution_id, (
                execution_id, str(result.status), stored_json(result.output),
                stored_json(result.node_results), result.error, result.started_at,
                result.completed_at, now))
        return COMPLETIONS, column_arrays(list(rows.values()))

    def _completions_read(self, conn: Any, jobs: list[CombinableJob],
                          answer: list[tuple[Any, ...]]) -> list[bool]:
        ended = {row[0]: row[1:] for row in answer}
        callbacks: list[tuple[Any, ...]] = []
        out: list[bool] = []
        for job in jobs:
            execution_id, _, now, targets = job.args
            row = ended.pop(execution_id, None)
            out.append(row is not None)
            if row is None:
                continue
            event_id, route, sender_url = row
            urls = [(url, 0) for url in targets.for_route(route)]
            if sender_url:
                urls.append((sender_url, 1))
            callbacks.extend((new_id(), execution_id, event_id, url, supplied, b"",
                              CallbackStatus.PENDING, now, now, now) for url, supplied in urls)
        if callbacks:  # with the next statement: the commit, most often
            conn.defer(INSERT_CALLBACK, callbacks)
            self._new_work.add(CALLBACKS)
        return out

    def _callback_outcomes(self, jobs: list[CombinableJob]) -> tuple[str, list[list[Any]]]:
        """Every callback outcome of the batch in one statement (`CALLBACK_OUTCOMES`): the
        same writes as `CallbackJobs.record_callback`'s job for each."""
        rows = []
        for job in jobs:
            callback, owner, attempt, status, failures, next_at, reason, now = job.args
            rows.append((callback.id, owner, str(status), failures, next_at, reason, now,
                         attempt.delivery_id, attempt.started_at, attempt.latency_ms,
                         attempt.outcome, attempt.status_code, attempt.error,
                         attempt.response_excerpt))
        columns = column_arrays(rows)
        if len(set(columns[0])) < len(jobs):
            raise WriteEachAlone
        return CALLBACK_OUTCOMES, columns

    def _callback_outcomes_read(self, conn: Any, jobs: list[CombinableJob],
                                answer: list[tuple[Any, ...]]) -> list[bool]:
        held = {row[0] for row in answer}
        return [job.args[0].id in held for job in jobs]

    def _ingest(self, conn: Connection, jobs: list[AcceptJob]) -> list[tuple[bool, Any]]:
        """A batch of plain accepts (the ingest path) in one round trip: BEGIN, one statement
        that inserts the new events, then the deliveries of those it inserted and a NOTIFY when
        there are any, and COMMIT, sent as a pipeline. The same outcome as `_accept_all`'s
        three statements and their round trips: a key stored before (or twice in the batch) is
        a duplicate of the event stored under it, looked up once the batch is committed."""
        self._new_work = set()
        first, fresh = first_of_each_key(jobs)
        events = [job.event_row() for job in fresh]
        deliveries = [(new_id(), e.id, d.route, d.trigger, d.idempotency_key, d.body,
                       d.content_type, DeliveryStatus.PENDING, e.received_at, e.received_at,
                       e.received_at, d.channel) for job in fresh for e in (job.event,)
                      for d in job.deliveries]
        # One statement text per table, sent once per row in the pipeline: psycopg parses each
        # text once and PostgreSQL plans it once, whatever the batch's size (a multi-row VALUES
        # list is a new text per size, parsed again in Python every time).
        raw = conn.connect()
        try:
            with raw.pipeline() as pipeline:
                raw.execute("BEGIN")
                cursor = raw.cursor()
                cursor.executemany(INSERT_EVENT, events, returning=True)
                if deliveries:
                    raw.cursor().executemany(INSERT_DELIVERY, [(*d, d[1]) for d in deliveries])
                    raw.execute(f"NOTIFY {NOTIFY}, '{DELIVERIES}'")
                    self._new_work.add(DELIVERIES)
                done = raw.execute("COMMIT")
                pipeline.sync()
            if done.statusmessage != "COMMIT":
                raise psycopg.OperationalError("the transaction was rolled back at commit")
            inserted: set[str] = set()
            while True:
                inserted.update(row[0] for row in cursor.fetchall())
                if not cursor.nextset():
                    break
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
            raise
        skipped = [job for job in fresh if job.event.id not in inserted]
        if skipped:  # stored before: by its key, or by the fingerprint of its signed content
            keys = [job.event.idempotency_key for job in skipped]
            found = dict(raw.execute("SELECT idempotency_key, id FROM events"
                                     " WHERE idempotency_key = ANY(%s)", (keys,)).fetchall())
            prints = [job.event.fingerprint for job in skipped
                      if job.event.idempotency_key not in found and job.event.fingerprint]
            by_print = dict(raw.execute("SELECT fingerprint, id FROM events"
                                        " WHERE fingerprint = ANY(%s)", (prints,)).fetchall()
                            ) if prints else {}
            for job in skipped:
                key, event = job.event.idempotency_key, job.event
                kept = found.get(key) or by_print.get(event.fingerprint or b"")
                if kept is None:  # never answer "stored" for what was not: the sender retries
                    raise psycopg.OperationalError("an event skipped as stored was not found")
                first[key] = kept
        return [(True, Accepted(first[job.event.idempotency_key],
                                duplicate=first[job.event.idempotency_key] != job.event.id))
                for job in jobs]

    async def close(self) -> None:
        self._listening = False
        await super().close()
        readers, self._readers = self._readers, None
        while readers is not None and not readers.empty():
            readers.get_nowait().close()
        if self._listener is not None:
            await asyncio.to_thread(self._stop_listener, self._listener)

    def _stop_listener(self, listener: threading.Thread) -> None:
        """The listener waits up to a second at a time for a notification: one sent now ends
        its wait, so a shutdown does not wait it out. (Other replicas take it as a spurious
        wake-up, once.)"""
        if listener.is_alive():
            with contextlib.suppress(psycopg.Error), psycopg.connect(
                    self.url, autocommit=True, **network_options(self.deadline)) as conn:
                conn.execute(f"NOTIFY {NOTIFY}")
        listener.join(3.0)

    async def _all(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        if self._readers is None:
            raise StoreUnavailable("the store is closed")
        try:
            names, rows = await self._within(asyncio.to_thread(self._read, sql, params))
        except psycopg.OperationalError as exc:
            log.error("store read failed", extra={"error": describe(exc)})
            raise StoreUnavailable("the store cannot be read") from None
        except psycopg.Error as exc:
            log.error("store read failed", exc_info=(type(exc), exc, exc.__traceback__))
            raise InternalError("internal error") from None
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _read(self, sql: str, params: Sequence[Any]) -> tuple[list[str], list[Any]]:
        readers = self._readers
        if readers is None:
            raise psycopg.OperationalError("the store is closed")
        try:  # waits while every read connection is busy
            conn: Any = readers.get(timeout=self.deadline)
        except queue.Empty:
            raise psycopg.OperationalError("no read connection came free") from None
        self._reading[conn] = time.monotonic()
        try:
            conn.connect()
            return read_rows(conn, sql, params)
        finally:
            self._reading.pop(conn, None)
            if self._readers is readers:
                readers.put(conn)
            else:  # the store closed while this read ran: nobody will take it again
                conn.close()
