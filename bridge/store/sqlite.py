"""The SQLite store: one file in WAL mode with `synchronous=FULL`, a writer connection owned by
the engine's writer thread (group commit), and a reader (aiosqlite). What is SQLite's own is here:
the connection's settings, the reader, and cutting a stuck writer; the jobs are the shared ones.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from bridge.core.errors import StoreUnavailable
from bridge.store.core import SQLStore
from bridge.store.dialect import SQLITE
from bridge.store.engine import DEFAULT_DEADLINE
from bridge.store.faults import describe, job_error, outage
from bridge.store.migrate import migrate_sqlite
from bridge.store.rows import read_rows
from bridge.store.writer import Writer

log = logging.getLogger("bridge.store")


class SQLiteSession:
    """sqlite3's connection, taking the jobs' templates (`dialect.render`)."""

    __slots__ = ("raw",)

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.raw.execute(SQLITE.render(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> sqlite3.Cursor:
        return self.raw.executemany(SQLITE.render(sql), rows)

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def interrupt(self) -> None:
        self.raw.interrupt()

    def close(self) -> None:
        self.raw.close()


class SQLiteStore(SQLStore):
    def __init__(self, path: str, *, busy_timeout: float = 2.0,
                 max_size_bytes: int | None = None, commit_delay: float = 0.0,
                 deadline: float = DEFAULT_DEADLINE) -> None:
        super().__init__(SQLITE, commit_delay=commit_delay, deadline=deadline)
        self.path = path
        self.busy_timeout = busy_timeout
        self.max_size_bytes = max_size_bytes
        self._reader: aiosqlite.Connection | None = None

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(self._open_writer)
        self._writer = Writer(SQLiteSession(conn), self._apply, self._finish, self.commit_delay)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader._execute(self._configure, self._reader._conn)

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._configure(conn)
            migrate_sqlite(conn)
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

    async def close(self) -> None:
        await super().close()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    def _interrupt_writer(self, writer: Writer) -> None:
        writer.conn.interrupt()

    async def _all(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        if self._reader is None:
            raise StoreUnavailable("the store is closed")
        try:
            names, rows = await self._within(self._reader._execute(
                read_rows, self._reader._conn, SQLITE.render(sql), params))
        except StoreUnavailable:
            raise
        except Exception as exc:
            if outage(exc):
                log.error("store read failed", extra={"error": describe(exc)})
                raise StoreUnavailable("the store cannot be read") from None
            raise job_error(exc) from None
        return [dict(zip(names, row, strict=True)) for row in rows]
