"""Durable storage.

    roles.py        the role protocols (ingest, outbox, executions, ...) and `Store`, all of them
    records.py      what reads return
    dialect.py      what differs between SQLite and PostgreSQL, as named slots in each statement
    engine.py       group commit through one writer thread (`writer.py`), deadlines, answers
    ingest.py ...   each role's jobs, written once (`core.SQLStore` gathers them)
    sqlite.py       `SQLiteStore`: one SQLite file
    postgres*.py    `PostgresStore`: the same jobs on PostgreSQL, shared by replicas, with its
                    pipelined fast paths
    migrate.py      numbered `.sql` migrations per dialect (`migrations/`)
"""

from typing import Any

from bridge.store.faults import outage
from bridge.store.roles import Store
from bridge.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "open_store", "outage"]


def open_store(settings: Any) -> Store:
    """The store a config's `[store]` names: PostgreSQL when `url` is set, else the SQLite
    file at `path`."""
    if settings.url:
        from bridge.store.postgres import PostgresStore

        return PostgresStore(settings.url, statement_timeout=settings.statement_timeout,
                             pool_size=settings.pool_size,
                             commit_delay=settings.commit_delay, deadline=settings.deadline)
    return SQLiteStore(settings.path, busy_timeout=settings.busy_timeout,
                       max_size_bytes=settings.max_size_bytes,
                       commit_delay=settings.commit_delay, deadline=settings.deadline)
