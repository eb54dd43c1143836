"""The PostgreSQL store: the SQLite store's transactions, on PostgreSQL.

Every change the bridge makes is a job: a function run inside one transaction on one connection,
written once in `sqlite.py` against a small connection interface (`execute` returning a cursor
with `fetchone`, `fetchall` and `rowcount`). `PostgresStore` runs those same jobs on a psycopg 3
connection, so both stores share one implementation of every state change; only what is
PostgreSQL's own lives here:

- the connection: `{p}` placeholders become psycopg's, the few SQLite-only words become
  PostgreSQL's (`BEGIN IMMEDIATE`, `instr`, `group_concat`), and a commit PostgreSQL turned into
  a rollback raises instead of passing for success;
- the schema: the same migrations with PostgreSQL's types (`DOUBLE PRECISION` times, `BYTEA`
  bodies, identity keys), applied under an advisory lock, so replicas starting together
  migrate once;
- group commit: as on SQLite, one writer thread applies every change waiting for it in one
  transaction (`synchronous_commit` on: committed means on the primary's disk), so a burst of
  webhooks costs one round of commits, not one each;
- round trips: on PostgreSQL every statement is a round trip the writer waits out, and under
  load each wait also costs it the GIL back from the event loop, so a batch is written in as
  few statements as its changes allow. A batch's delivery outcomes, completions and callback
  outcomes are each written in one statement (`RECORDS`, `COMPLETIONS`, `CALLBACK_OUTCOMES`:
  arrays of their columns, the lease checks inside), its accepts as one run, and each claim in
  one statement (`CLAIM`...), where the shared jobs take several each. The statements whose
  answer nobody reads (`BEGIN`, savepoints, `NOTIFY`, a completion's callbacks) are held back
  and sent with the next one (see `HELD` and `Connection.defer`);
- wake-ups across replicas: a transaction that makes work due sends `NOTIFY bridge_work`; every
  replica listens, so the forwarders of all replicas wake whichever one accepted the event;
- outages: a connection that fails is replaced on the next transaction; until then callers get
  `StoreUnavailable` (503 with Retry-After).

Deliveries, executions and callbacks are claimed with `SELECT ... FOR UPDATE SKIP LOCKED` (each
replica skips the rows another is taking) and an `UPDATE` that re-checks each row's status as it
takes the lease, so no two replicas hold the same attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

from bridge.core.codec import without_nul
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
from bridge.store.base import CALLBACKS, DELIVERIES, EXECUTIONS, WORK
from bridge.store.core import SQLStore
from bridge.store.dialect import POSTGRES
from bridge.store.engine import (
    DEFAULT_DEADLINE,
    AcceptJob,
    CombinableJob,
    first_of_each_key,
    savepointed,
)
from bridge.store.faults import describe, outage
from bridge.store.migrate import migrate_postgres
from bridge.store.rows import CLAIMED_COLUMNS, claimed_callback, claimed_delivery, read_rows, stored_json
from bridge.store.writer import Writer

log = logging.getLogger("bridge.store")
NOTIFY = "bridge_work"
# Statements the writer sends that take no parameters and whose answer nobody reads: each is
# held back until the next statement and goes to the server with it, in one round trip. A
# batch's `BEGIN` and first `SAVEPOINT` go together with the first job's first statement;
# between two jobs, one's `RELEASE` and the next one's `SAVEPOINT` go with the next one's first
# statement; at the end the last `RELEASE`, the wake-up `NOTIFY` and `COMMIT` go as one query of
# several statements. Elsewhere they go in one psycopg pipeline with the next statement, since
# a query of several statements cannot carry parameters. A job then costs the round trips of
# its own statements and no more. (Without the pipeline the held ones went alone before a statement
# with parameters: a round trip more per job, a quarter of the writer's time with the database
# 0.5 ms away; see docs/scaling.md.) An error in one of them is raised by the statement they
# went with, as the batch's error: none of them fails but for an outage.
HELD = frozenset({"BEGIN", "SAVEPOINT job", "RELEASE job"})
ENDS = frozenset({"COMMIT", "ROLLBACK", "ROLLBACK TO job"})  # sent in one query with those held


def network_options(deadline: float) -> dict[str, Any]:
    """libpq's own bounds on a connection, from `[store] deadline`: connecting, and a peer
    that is gone (keepalives, unacknowledged data). A server that is up but stopped answering
    is cut by the store's deadline (`Connection.interrupt`)."""
    return {"connect_timeout": max(2, round(deadline)), "keepalives": 1,
            "keepalives_idle": max(1, round(deadline)), "keepalives_interval": 1,
            "keepalives_count": 3, "tcp_user_timeout": int(deadline * 1000)}


class _TextDumper(StrDumperUnknown):
    """PostgreSQL's text cannot hold NUL, and psycopg refuses such a value with a `DataError`
    that fails the whole statement, with every change grouped into it. Text reaches the store
    from receivers and platforms too (excerpts, errors), so it is made storable here, at the
    one place every value passes: a NUL becomes U+FFFD, as the ingest path does on both stores.
    """

    def dump(self, obj: str) -> Any:
        return super().dump(without_nul(obj))


class _BinaryTextDumper(StrBinaryDumper):
    def dump(self, obj: str) -> Any:
        return super().dump(without_nul(obj))


class DeferredRows(NamedTuple):
    """A statement sent once per row whose answer nobody reads (`Connection.defer`)."""

    sql: str
    rows: list[list[Any]]


class Connection:
    """A psycopg connection that speaks to the shared jobs as sqlite3 does."""

    hold = True  # hold statements as `HELD` says (bench/pg_round_trips.py compares without)
    pipelined = True  # send those held with a statement that has parameters in one pipeline
    deferring = True  # hold rows nobody reads the answer of too (`defer`), when pipelined

    def __init__(self, url: str, statement_timeout: float, application: str,
                 deadline: float = DEFAULT_DEADLINE) -> None:
        self.url = url
        self.options = {"autocommit": True, "application_name": application,
                        **network_options(deadline)}
        self.settings = (f"SET statement_timeout = {int(statement_timeout * 1000)}",
                         "SET synchronous_commit = on")
        self.raw: Any = None  # a psycopg.Connection, made (again) when a transaction begins
        self.held: list[str | DeferredRows] = []  # statements nobody reads the answer of, not sent yet
        self.pid = 0  # the server process serving it: its own NOTIFYs come from this pid

    def connect(self) -> Any:
        if self.raw is None or self.raw.closed or self.raw.broken:
            if self.raw is not None:
                with contextlib.suppress(Exception):
                    self.raw.close()
            connect: Any = psycopg.connect
            raw = connect(self.url, **self.options)
            raw.adapters.register_dumper(str, _TextDumper)
            raw.adapters.register_dumper(str, _BinaryTextDumper)
            for setting in self.settings:  # set here, so the URL's own `options` still apply
                raw.execute(setting)
            self.raw = raw
            self.pid = raw.info.backend_pid
        return self.raw

    def execute(self, template: str, params: Sequence[Any] = ()) -> Any:
        """Runs `template` (rendered here); a statement whose answer nobody reads (see
        `HELD`) is held back and sent with the next one."""
        sql = POSTGRES.render(template, bool(params))
        if sql.startswith("BEGIN"):
            self.connect()
            self.held = []  # anything held from a batch that failed is void
        raw = self.raw
        if raw is None:
            raise psycopg.OperationalError("not connected")
        if self.hold and (sql in HELD or sql.startswith("NOTIFY ")):
            self.held.append(sql)
            return None
        if sql == "ROLLBACK":  # rows deferred in this transaction are undone with it
            self.held = [statement for statement in self.held if isinstance(statement, str)]
        if self.held and sql in ENDS and not self.deferred():  # one query: one round trip
            cursor = raw.execute("; ".join([*self.script(), sql]))
            while cursor.nextset():  # to the answer of `sql`, the last
                pass
        elif self.held and self.pipelined:  # the held ones and `sql`: one round trip
            cursor = self._pipeline([(template, params)])[0]
        else:
            if self.held:
                raw.execute("; ".join(self.script()))
            cursor = raw.execute(sql, list(params)) if params else raw.execute(sql)
        if sql == "COMMIT" and cursor.statusmessage != "COMMIT":
            raise psycopg.OperationalError("the transaction was rolled back at commit")
        return cursor

    def interrupt(self) -> None:
        """Cut the connection from another thread (a server that stopped answering never
        lets a blocked read return): the blocked call fails as an outage, and the next
        transaction connects again."""
        raw = self.raw
        if raw is None or raw.closed:
            return
        with contextlib.suppress(OSError, ValueError, psycopg.Error):
            cut = socket.socket(fileno=os.dup(raw.pgconn.socket))
            try:
                cut.shutdown(socket.SHUT_RDWR)
            finally:
                cut.close()

    def release(self) -> list[str | DeferredRows]:
        held, self.held = self.held, []
        return held

    def script(self) -> list[str]:
        """The held statements as one query's, when no rows are held (`defer` holds rows
        only when they will go in a pipeline)."""
        held = self.release()
        statements = [statement for statement in held if isinstance(statement, str)]
        if len(statements) != len(held):
            raise AssertionError("rows held for a query that cannot carry them")
        return statements

    def deferred(self) -> bool:
        return any(isinstance(statement, DeferredRows) for statement in self.held)

    def defer(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """`executemany` for rows whose answer nobody reads: held, in order with the held
        statements, and sent in the pipeline of the next statement, at the latest the COMMIT.
        Only for rows that cannot be refused but by an outage (new ids, parents written in the
        same transaction): an error would surface with a later change, or fail the commit."""
        if self.hold and self.pipelined and self.deferring:
            self.held.append(DeferredRows(sql, [list(row) for row in rows]))
        else:
            self.executemany(sql, rows)

    def answers(self, statements: Sequence[tuple[str, Sequence[Any]]]
                ) -> list[list[tuple[Any, ...]]]:
        """Runs `statements` (with those held before them) in one pipeline, one round trip,
        and returns each one's rows. An error in any is raised once all are sent; the
        statements after it were not run."""
        if self.raw is None:
            raise psycopg.OperationalError("not connected")
        return [cursor.fetchall() for cursor in self._pipeline(statements)]

    def _pipeline(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Those held, then `statements`, in one pipeline; each statement's cursor, read once
        the pipeline has synced."""
        raw = self.raw
        with raw.pipeline():
            self._send(self.release())
            cursors = [raw.execute(POSTGRES.render(sql), list(params)) if params else
                       raw.execute(POSTGRES.render(sql, False)) for sql, params in statements]
        return cursors

    def _send(self, held: list[str | DeferredRows]) -> None:
        """The held statements, into the pipeline that is open."""
        for statement in held:
            if isinstance(statement, str):
                self.raw.execute(statement)
            else:
                self.raw.cursor().executemany(POSTGRES.render(statement.sql), statement.rows)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.raw is None:
            raise psycopg.OperationalError("not connected")
        with self.raw.cursor() as cursor:
            if self.held and self.pipelined:
                with self.raw.pipeline():
                    self._send(self.release())
                    cursor.executemany(POSTGRES.render(sql), [list(row) for row in rows])
                return
            if self.held:
                self.raw.execute("; ".join(self.script()))
            cursor.executemany(POSTGRES.render(sql), [list(row) for row in rows])

    @property
    def in_transaction(self) -> bool:
        """Held statements count: a batch that fails after `BEGIN` was held is rolled back
        (sending it first), so nothing held outlives its batch."""
        return bool(self.held) or (
            self.raw is not None and not self.raw.closed
            and self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)

    def close(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(Exception):
                self.raw.close()


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
            try:
                conn: Any = psycopg.connect(self.url, autocommit=True,
                                            **network_options(self.deadline))
                conn.execute(f"LISTEN {NOTIFY}")
                while self._listening:
                    for notice in conn.notifies(timeout=1.0):
                        if notice.pid != self._writer_conn.pid:
                            kinds = frozenset(notice.payload.split(",")) & WORK or WORK
                            loop.call_soon_threadsafe(self._woken, kinds)
                conn.close()
            except psycopg.Error:
                threading.Event().wait(1.0)  # the database is away: try again shortly
            except RuntimeError:  # the event loop is closed
                return

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

        Moving a change up to its kind's first is safe because nothing in one batch waits for
        another change of the same batch: every caller hears of its change only once the batch
        has committed, so the changes of a batch were all made without knowing of each other,
        and any order among them is one in which they could have arrived."""
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
            plan, answers = _runs(plan, answers)
        results, new_work = super()._apply(notifying, plan)
        out: list[tuple[bool, Any]] = [(False, None)] * len(jobs)
        for job, positions, result in zip(plan, answers, results, strict=True):
            if isinstance(job, PipelinedRun):
                ok, value = result
                for part, where, part_result in zip(
                        job.jobs, positions, value if ok else [result] * len(job.jobs),
                        strict=True):
                    _answer(out, part, where, part_result)
            else:
                _answer(out, job, positions, result)
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
        columns = _arrays(rows)
        if len(set(columns[0])) < len(jobs):
            raise WriteEachAlone  # one delivery twice: each outcome must see the one before it
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
        return COMPLETIONS, _arrays(list(rows.values()))

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
        columns = _arrays(rows)
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
            await asyncio.to_thread(self._listener.join, 3.0)

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
            readers.put(conn)


INSERT_EVENT = (
    "INSERT INTO events (id, source, provider, event_type, idempotency_key, received_at,"
    " headers, body, state, callback_url, fingerprint, filtered)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id")
# A delivery of an event this batch inserted: ids are fresh, so an event with its id exists only
# when the insert above stored it (not when its key was a duplicate).
INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, event_id, route, trigger, idempotency_key, body, content_type,"
    " status, next_attempt_at, created_at, updated_at, channel)"
    " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
    " WHERE EXISTS (SELECT 1 FROM events WHERE id = %s)")


# The statements that write a batch's changes of one kind at once. Each takes one array per
# column (`unnest`), so its text is the same whatever the batch's size: parsed and planned once.
# All the parts of a statement see the tables as they were before it, so each part reads what an
# earlier part changed from that part's own answer (`held`), not from the table.
RECORDS = """
WITH v AS (
  SELECT * FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::bigint[], {p}::double precision[],
    {p}::text[], {p}::text[], {p}::double precision[], {p}::double precision[], {p}::text[], {p}::text[],
    {p}::text[], {p}::double precision[], {p}::double precision[], {p}::double precision[], {p}::text[],
    {p}::bigint[], {p}::text[], {p}::text[]) WITH ORDINALITY
  AS v(id, owner, status, failures, next_at, execution_id, error, reached_at, now, event_id,
       route, trigger, track_until, started_at, latency_ms, outcome, status_code, attempt_error,
       excerpt, n)),
held AS (
  UPDATE deliveries d SET status = v.status, attempts = d.attempts + 1,
    failures = d.failures + v.failures, next_attempt_at = COALESCE(v.next_at, d.next_attempt_at),
    execution_id = COALESCE(v.execution_id, d.execution_id), last_error = v.error,
    reached_at = COALESCE(d.reached_at, v.reached_at), lease_owner = NULL, lease_until = NULL,
    updated_at = v.now
  FROM v WHERE d.id = v.id AND d.status = 'leased' AND d.lease_owner = v.owner
  RETURNING d.id, d.event_id, d.status, d.route, d.replay_of, d.created_at),
superseded AS (
  UPDATE deliveries d SET status = 'superseded', updated_at = v.now
  FROM held JOIN v ON v.id = held.id
  WHERE held.status = 'delivered' AND held.replay_of IS NOT NULL AND d.status = 'dead'
    AND d.event_id = held.event_id AND d.route = held.route AND d.created_at <= held.created_at
  RETURNING d.id),
tried AS (
  INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome, status_code, error,
    response_excerpt)
  SELECT v.id, v.started_at, v.latency_ms, v.outcome, v.status_code, v.attempt_error, v.excerpt
  FROM v JOIN held ON held.id = v.id ORDER BY v.n),
followed AS (
  INSERT INTO executions (id, delivery_id, event_id, route, trigger, status, created_at,
    updated_at, deadline_at, next_check_at)
  SELECT v.execution_id, v.id, v.event_id, v.route, v.trigger, 'pending', v.now, v.now,
    v.track_until, v.now
  FROM v JOIN held ON held.id = v.id WHERE v.track_until IS NOT NULL ORDER BY v.n
  ON CONFLICT (id) DO NOTHING),
resumed AS (
  UPDATE routes r SET state = 'active', reason = NULL, changed_at = v.now, next_probe_at = NULL
  FROM v JOIN held ON held.id = v.id
  WHERE r.name = v.route AND held.status = 'delivered' AND r.state <> 'active'
  RETURNING r.name),
refreshed AS (
  UPDATE events e SET state = CASE
    WHEN EXISTS (SELECT 1 FROM held h WHERE h.event_id = e.id
                 AND h.status IN ('pending', 'leased', 'handed_off'))
      OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id
                 AND d.status IN ('pending', 'leased', 'handed_off')
                 AND NOT EXISTS (SELECT 1 FROM held h WHERE h.id = d.id)) THEN 'queued'
    WHEN EXISTS (SELECT 1 FROM held h WHERE h.event_id = e.id
                 AND h.status IN ('dead', 'discarded'))
      OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id
                 AND d.status IN ('dead', 'discarded')
                 AND NOT EXISTS (SELECT 1 FROM held h WHERE h.id = d.id)
                 AND NOT EXISTS (SELECT 1 FROM superseded s WHERE s.id = d.id)) THEN 'dead'
    ELSE 'delivered' END
  WHERE e.id IN (SELECT event_id FROM held))
SELECT 'held', id FROM held UNION ALL SELECT DISTINCT 'resumed', name FROM resumed
"""
COMPLETIONS = """
UPDATE executions x SET status = v.status, output = v.output, node_results = v.node_results,
  error = v.error, started_at = COALESCE(v.started_at, x.started_at),
  completed_at = v.completed_at, lease_owner = NULL, lease_until = NULL, updated_at = v.now
FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[],
  {p}::double precision[]) AS v(id, status, output, node_results, error, started_at, completed_at,
  now)
WHERE x.id = v.id AND x.status IN ('pending', 'running')
RETURNING x.id, x.event_id, x.route, (SELECT callback_url FROM events e WHERE e.id = x.event_id)
"""
INSERT_CALLBACK = (
    "INSERT INTO callbacks (id, execution_id, event_id, url, sender_supplied, body, status,"
    " next_attempt_at, created_at, updated_at) VALUES ({p},{p},{p},{p},{p},{p},{p},{p},{p},{p})")
CALLBACK_OUTCOMES = """
WITH v AS (
  SELECT * FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::bigint[], {p}::double precision[],
    {p}::text[], {p}::double precision[], {p}::text[], {p}::double precision[], {p}::double precision[],
    {p}::text[], {p}::bigint[], {p}::text[], {p}::text[]) WITH ORDINALITY
  AS v(id, owner, status, failures, next_at, error, now, delivery_id, started_at, latency_ms,
       outcome, status_code, attempt_error, excerpt, n)),
held AS (
  UPDATE callbacks c SET status = v.status, attempts = c.attempts + 1,
    failures = c.failures + v.failures, next_attempt_at = COALESCE(v.next_at, c.next_attempt_at),
    last_error = v.error, lease_owner = NULL, lease_until = NULL, updated_at = v.now
  FROM v WHERE c.id = v.id AND c.status = 'leased' AND c.lease_owner = v.owner
  RETURNING c.id),
tried AS (
  INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome, status_code, error,
    response_excerpt)
  SELECT v.delivery_id, v.started_at, v.latency_ms, v.outcome, v.status_code, v.attempt_error,
    v.excerpt
  FROM v JOIN held ON held.id = v.id ORDER BY v.n)
SELECT id FROM held
"""


# The shared claims' statements, one after the other in one: the due (and the expired leases,
# up to the limit), skipping rows another replica is taking, leased where still claimable.
# Nothing while the platform asked every sender to hold. The paused routes come back too, as
# rows of their own, to be probed; their deliveries are not claimed.
CLAIM = f"""
WITH hold AS (SELECT 1 FROM pacing WHERE key = 'platform' AND not_before > {{p}}),
paused AS (SELECT name FROM routes WHERE state = 'paused'),
due AS (
  SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= {{p}} AND channel IS NULL
    AND route NOT IN (SELECT name FROM paused) AND NOT EXISTS (SELECT 1 FROM hold)
  ORDER BY next_attempt_at LIMIT {{p}} FOR UPDATE SKIP LOCKED),
expired AS (
  SELECT id FROM deliveries WHERE status = 'leased' AND lease_until <= {{p}} AND channel IS NULL
    AND route NOT IN (SELECT name FROM paused) AND NOT EXISTS (SELECT 1 FROM hold)
  ORDER BY lease_until LIMIT GREATEST({{p}}::bigint - (SELECT count(*) FROM due), 0)
  FOR UPDATE SKIP LOCKED),
leased AS (
  UPDATE deliveries SET status = 'leased', lease_owner = {{p}}, lease_until = {{p}}
  WHERE id IN (SELECT id FROM due UNION ALL SELECT id FROM expired)
    AND (status = 'pending' OR (status = 'leased' AND lease_until <= {{p}}))
  RETURNING {CLAIMED_COLUMNS})
SELECT 'leased', * FROM leased
UNION ALL
SELECT 'paused', NULL, NULL, name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM paused
WHERE NOT EXISTS (SELECT 1 FROM hold)
"""
CLAIM_EXECUTIONS = """
WITH due AS (
  SELECT id FROM executions WHERE status IN ('pending', 'running') AND next_check_at <= {p}
    AND (lease_until IS NULL OR lease_until <= {p}) AND channel IS NULL
  ORDER BY next_check_at LIMIT {p} FOR UPDATE SKIP LOCKED)
UPDATE executions SET lease_owner = {p}, lease_until = {p}
WHERE id IN (SELECT id FROM due) AND status IN ('pending', 'running')
  AND (lease_until IS NULL OR lease_until <= {p})
RETURNING id, delivery_id, event_id, route, trigger, status, deadline_at, checks
"""
CLAIM_CALLBACKS = """
WITH due AS (
  SELECT id FROM callbacks WHERE status = 'pending' AND next_attempt_at <= {p}
  ORDER BY next_attempt_at LIMIT {p} FOR UPDATE SKIP LOCKED),
expired AS (
  SELECT id FROM callbacks WHERE status = 'leased' AND lease_until <= {p}
  ORDER BY lease_until LIMIT GREATEST({p}::bigint - (SELECT count(*) FROM due), 0)
  FOR UPDATE SKIP LOCKED),
leased AS (
  UPDATE callbacks SET status = 'leased', lease_owner = {p}, lease_until = {p}
  WHERE id IN (SELECT id FROM due UNION ALL SELECT id FROM expired)
    AND (status = 'pending' OR (status = 'leased' AND lease_until <= {p}))
  RETURNING id)
SELECT c.id, c.execution_id, c.event_id, c.url, c.sender_supplied, c.attempts, c.failures,
  c.created_at, e.source, e.provider, e.event_type, e.idempotency_key, e.received_at, x.trigger,
  x.status, x.output, x.node_results, x.error, x.started_at, x.completed_at
FROM leased JOIN callbacks c ON c.id = leased.id JOIN events e ON e.id = c.event_id
  JOIN executions x ON x.id = c.execution_id
ORDER BY c.next_attempt_at
"""


# A mixed batch's new events and the deliveries of those stored (of those not skipped as stored
# before): ids are fresh, so a delivery's event is in `stored` only when this insert stored it.
ACCEPTS = """
WITH stored AS (
  INSERT INTO events (id, source, provider, event_type, idempotency_key, received_at, headers,
    body, state, callback_url, fingerprint, filtered)
  SELECT * FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[],
    {p}::double precision[], {p}::text[], {p}::bytea[], {p}::text[], {p}::text[], {p}::bytea[], {p}::text[])
  ON CONFLICT DO NOTHING RETURNING id),
queued AS (
  INSERT INTO deliveries (id, event_id, route, trigger, idempotency_key, body, content_type,
    status, next_attempt_at, created_at, updated_at, channel)
  SELECT d.id, d.event_id, d.route, d.trigger, d.idempotency_key, d.body, d.content_type,
    'pending', d.at, d.at, d.at, d.channel
  FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::bytea[], {p}::text[],
    {p}::double precision[], {p}::text[]) WITH ORDINALITY
    AS d(id, event_id, route, trigger, idempotency_key, body, content_type, at, channel, n)
  WHERE d.event_id IN (SELECT id FROM stored) ORDER BY d.n)
SELECT id FROM stored
"""


def _arrays(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column: the arrays a grouped statement takes."""
    return [list(column) for column in zip(*rows, strict=True)]


def _runs(plan: list[Any], answers: list[Any]) -> tuple[list[Any], list[Any]]:
    """`plan` with each run of two or more consecutive one-statement jobs made one `PipelinedRun`
    job, whose answers are the positions of each of its jobs."""
    out_plan: list[Any] = []
    out_answers: list[Any] = []
    run: list[tuple[Any, Any]] = []

    def close() -> None:
        if len(run) > 1:
            out_plan.append(PipelinedRun([job for job, _ in run]))
            out_answers.append([where for _, where in run])
        else:
            out_plan.extend(job for job, _ in run)
            out_answers.extend(where for _, where in run)
        run.clear()

    for job, where in zip(plan, answers, strict=True):
        if isinstance(job, OneStatement | CombinedChanges | AcceptsInOneStatement):
            run.append((job, where))
            continue
        close()
        out_plan.append(job)
        out_answers.append(where)
    close()
    return out_plan, out_answers


def _answer(out: list[tuple[bool, Any]], job: Any, positions: list[int],
            result: tuple[bool, Any]) -> None:
    """Puts a job's result at its place in the batch: a group's, one per change."""
    ok, value = result
    if not isinstance(job, CombinedChanges | AcceptsInOneStatement):
        out[positions[0]] = result
        return
    for i, answer in zip(positions, value if ok else [result] * len(positions), strict=True):
        out[i] = answer


class WriteEachAlone(Exception):
    """These changes cannot be written as one statement: each is applied on its own."""


class CombinedChanges:
    """A batch's changes of one kind (`CombinableJob`), applied by one of the store's methods for
    that kind inside the savepoint the batch gives every job. Should that fail other than by an
    outage, the group is undone and its changes are applied one at a time, each in a savepoint
    of its own, so the one that failed is undone alone and the others are written, as if they
    had never been grouped."""

    __slots__ = ("store", "jobs")

    def __init__(self, store: PostgresStore, jobs: list[CombinableJob]) -> None:
        self.store = store
        self.jobs = jobs

    def statement(self) -> tuple[str, Sequence[Any]]:
        """The one statement; raises `WriteEachAlone` when these changes cannot be one."""
        store = self.store
        return {"record": store._records, "complete": store._completions,
                "callback": store._callback_outcomes}[self.jobs[0].kind](self.jobs)

    def read(self, conn: Any, answer: list[tuple[Any, ...]]) -> list[tuple[bool, Any]]:
        store = self.store
        read = {"record": store._records_read, "complete": store._completions_read,
                "callback": store._callback_outcomes_read}[self.jobs[0].kind]
        return [(True, value) for value in read(conn, self.jobs, answer)]

    def __call__(self, conn: Any) -> list[tuple[bool, Any]]:
        try:
            sql, params = self.statement()
            return self.read(conn, conn.execute(sql, params).fetchall())
        except Exception as exc:
            if outage(exc):
                raise
            if not isinstance(exc, WriteEachAlone):
                log.warning("grouped changes failed; applying them one at a time",
                            extra={"kind": self.jobs[0].kind, "changes": len(self.jobs),
                                   "error": describe(exc)})
            conn.execute("ROLLBACK TO job")  # the batch's savepoint for this job: still there
        return [savepointed(conn, job) for job in self.jobs]


class AcceptsInOneStatement:
    """A batch's plain accepts among other changes, in one statement (`ACCEPTS`) when they go in
    a run of one pipeline: the events that are new, and the deliveries of those it stored. The
    same outcome as the shared `_accept_all`'s two inserts (which it runs when applied alone): a
    key stored before (or twice in the batch) is a duplicate of the event stored under it, and
    its deliveries are not stored again."""

    __slots__ = ("store", "jobs", "first")

    def __init__(self, store: PostgresStore, jobs: list[AcceptJob]) -> None:
        self.store = store
        self.jobs = jobs
        self.first: dict[str, str] = {}  # idempotency key -> the id stored (or to be) under it

    def statement(self) -> tuple[str, Sequence[Any]]:
        self.first, fresh = first_of_each_key(self.jobs)
        events = _arrays([job.event_row() for job in fresh])
        deliveries = _arrays([(new_id(), e.id, d.route, d.trigger, d.idempotency_key, d.body,
                               d.content_type, e.received_at, d.channel)
                              for job in fresh for e in (job.event,) for d in job.deliveries])
        return ACCEPTS, (*(events or [[]] * 12), *(deliveries or [[]] * 9))

    def read(self, conn: Any, answer: list[tuple[Any, ...]]) -> list[tuple[bool, Any]]:
        store, first = self.store, self.first
        fresh = [job for job in self.jobs if first[job.event.idempotency_key] == job.event.id]
        inserted = {row[0] for row in answer}
        if any(job.deliveries and job.event.id in inserted for job in fresh):
            store._new_work.add(DELIVERIES)
        if len(inserted) < len(fresh):  # some were stored before: find by what
            stored = dict(store._lookup(conn, "idempotency_key", list(first)))
            first.update(stored)
            prints = [job.event.fingerprint for job in fresh
                      if job.event.idempotency_key not in stored and job.event.fingerprint]
            by_print = dict(store._lookup(conn, "fingerprint", prints)) if prints else {}
            for job in fresh:
                key, event = job.event.idempotency_key, job.event
                if event.id in inserted or key in stored:
                    continue
                kept = by_print.get(event.fingerprint or b"")
                if kept is None:  # never answer "stored" for what was not: the sender retries
                    raise psycopg.OperationalError("an event skipped as stored was not found")
                first[key] = kept
        return [(True, Accepted(first[job.event.idempotency_key],
                                duplicate=first[job.event.idempotency_key] != job.event.id))
                for job in self.jobs]

    def __call__(self, conn: Any) -> list[tuple[bool, Any]]:
        return self.store._accept_run(conn, self.jobs)


class OneStatement:
    """A job that is one statement and what is made of its answer (a claim): so a run of them
    can be sent in one pipeline (`PipelinedRun`). `read` may run statements of its own."""

    __slots__ = ("sql", "params", "read")

    def __init__(self, sql: str, params: Sequence[Any],
                 read: Callable[[Any, list[tuple[Any, ...]]], Any]) -> None:
        self.sql = sql
        self.params = params
        self.read = read

    def statement(self) -> tuple[str, Sequence[Any]]:
        return self.sql, self.params

    def __call__(self, conn: Any) -> Any:
        return self.read(conn, conn.execute(self.sql, self.params).fetchall())


class PipelinedRun:
    """Consecutive jobs of a batch that are one statement each (claims, `OneStatement`) or one
    statement and what follows from its answer (a group of changes, `CombinedChanges`), sent in one
    pipeline: one round trip for all, where each waited for its own. The server runs them in the
    batch's order, each seeing what those before it wrote, as before; only reading the answers
    waits until all are sent. What a job does with its answer (a completion's callbacks, a
    claim's probes of paused routes) then comes after the run's last statement rather than
    before the next one, which is an order the batch's changes could have come in, for the
    reason `PostgresStore._apply` gives. Should a statement fail other than by an outage, the
    run is undone and its jobs are applied one at a time, as without the pipeline."""

    __slots__ = ("jobs",)

    def __init__(self, jobs: list[OneStatement | CombinedChanges | AcceptsInOneStatement]) -> None:
        self.jobs = jobs

    def __call__(self, conn: Any) -> list[tuple[bool, Any]]:
        try:
            statements = [job.statement() for job in self.jobs]
        except WriteEachAlone:  # a group that cannot be one statement: as without the pipeline
            return [savepointed(conn, job) for job in self.jobs]
        try:
            answers = conn.answers(statements)
            return [(True, job.read(conn, answer))
                    for job, answer in zip(self.jobs, answers, strict=True)]
        except Exception as exc:
            if outage(exc):
                raise
            log.warning("pipelined changes failed; applying them one at a time",
                        extra={"changes": len(self.jobs), "error": describe(exc)})
            conn.execute("ROLLBACK TO job")  # the batch's savepoint for this run: still there
        return [savepointed(conn, job) for job in self.jobs]


class NotifyingSession:
    """The writer's connection for one batch: at commit, tells the other replicas when the
    batch made work due."""

    def __init__(self, conn: Connection, store: PostgresStore) -> None:
        self.conn = conn
        self.store = store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if sql == "COMMIT" and self.store._new_work:  # which kinds: each replica wakes only those
            self.conn.execute(f"NOTIFY {NOTIFY}, '{','.join(sorted(self.store._new_work))}'")
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def defer(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.defer(sql, rows)

    def answers(self, statements: Sequence[tuple[str, Sequence[Any]]]
                ) -> list[list[tuple[Any, ...]]]:
        return self.conn.answers(statements)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction
