"""The PostgreSQL store's connection: psycopg speaking to the shared jobs as sqlite3 does, with
statements nobody reads the answer of held back and sent with the next one (one round trip)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

from bridge.core.codec import without_nul
from bridge.store.dialect import POSTGRES
from bridge.store.engine import (
    DEFAULT_DEADLINE,
)

NOTIFY = "bridge_work"  # the channel replicas listen on for work another made due

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
