"""`bridge store copy --from <sqlite path> --to <postgresql url>`: move a bridge's history across.

An operator who outgrows SQLite keeps what protects them from provider retries: every event and
its idempotency key, batch item keys, single-use tokens, deliveries with their attempts,
executions, callbacks, route pauses, the agents seen and the key that signs status links. Rows
are copied table by table, a thousand per transaction, each insert skipping what the target
already holds (`ON CONFLICT DO NOTHING`), so a copy that was interrupted and is run again
finishes with nothing doubled. Copy with the bridge stopped (or before the replicas first start,
so the status-link key they would make is not already set).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from bridge.store.dialect import POSTGRES, placeholders
from bridge.store.postgres import Connection, PostgresStore

# Parents before children; every table of the schema.
TABLES = ("meta", "routes", "events", "event_items", "nonces", "deliveries", "attempts",
          "executions", "callbacks", "agents", "journal", "learned_secrets")
CHUNK = 1000


def copy(source: str, target: str, progress: Callable[[str, int, int], None]) -> dict[str, int]:
    """Copy every table; `progress(table, done, total)` after each chunk. Returns the rows
    each table gained (0 on a rerun that finds everything there)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    store = PostgresStore(target)
    conn = Connection(target, 600.0, "webhook-bridge copy")
    try:
        version = src.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise ValueError(f"{source} is not a bridge store (no schema)")
        store._prepare(conn)  # the target's schema: created or brought up to date
        raw: Any = conn.connect()
        gained: dict[str, int] = {}
        for table in TABLES:
            columns = [row[1] for row in src.execute(f"PRAGMA table_info({table})")]
            if not columns:  # a table newer than the source's schema: nothing to copy
                continue
            total = src.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            sql = POSTGRES.render(f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
                                  f" ({placeholders(len(columns))}) ON CONFLICT DO NOTHING")
            done = added = 0
            cursor = src.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid")
            while rows := cursor.fetchmany(CHUNK):
                with raw.transaction(), raw.cursor() as out:
                    for row in rows:
                        out.execute(sql, list(row))
                        added += out.rowcount
                done += len(rows)
                progress(table, done, total)
            if total == 0:
                progress(table, 0, 0)
            gained[table] = added
        for table in ("attempts", "journal"):  # identities continue after the copied ids
            raw.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                        f" GREATEST((SELECT MAX(id) FROM {table}), 1))")
        return gained
    finally:
        src.close()
        conn.close()
