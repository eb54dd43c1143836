"""Schema migrations: numbered `.sql` files per dialect (`migrations/{sqlite,postgres}/NNNN_*.sql`),
each applied whole, in one transaction with the version it reaches, and never edited once
released (a change is a new file, in both dialects, with the same number).

SQLite keeps the version in `PRAGMA user_version`; PostgreSQL in `bridge_schema`, under an
advisory lock, so replicas starting together migrate once and the others find it done.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from importlib import resources
from typing import Any

log = logging.getLogger("bridge.store")
LOCK_KEY = 0x62726964676531  # "bridge1": the advisory lock held while migrating
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@functools.cache
def scripts(dialect: str) -> tuple[tuple[int, str, str], ...]:
    """(number, file name, SQL) of every migration of `dialect`, in order; numbers run 1..n
    with no gap (a gap is a packaging mistake, refused here rather than skipped)."""
    folder = resources.files("bridge.store") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    if [number for number, _, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations/{dialect}: numbers must run 1..n without a gap")
    return tuple(found)


def latest() -> int:
    """The schema version this build writes (both dialects have the same migrations)."""
    return len(scripts("sqlite"))


def migrate_sqlite(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, name, sql in scripts("sqlite")[version:]:
        try:
            # One script, one transaction: `executescript` runs the file as SQLite parses it.
            conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\n;PRAGMA user_version={number};\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("store migrated", extra={"schema_version": number, "migration": name})


def migrate_postgres(raw: Any) -> None:
    """`raw`: a psycopg connection in autocommit mode."""
    with raw.transaction():
        raw.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        raw.execute("CREATE TABLE IF NOT EXISTS bridge_schema (version INTEGER NOT NULL)")
        row = raw.execute("SELECT version FROM bridge_schema").fetchone()
        version = row[0] if row else 0
        if row is None:
            raw.execute("INSERT INTO bridge_schema (version) VALUES (0)")
        for number, name, sql in scripts("postgres")[version:]:
            raw.execute(sql)  # no parameters: the whole file in one query
            raw.execute("UPDATE bridge_schema SET version = %s", (number,))
            log.info("store migrated", extra={"schema_version": number, "migration": name})
