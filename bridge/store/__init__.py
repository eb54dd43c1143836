"""Durable storage.

    base.py     the `Store` protocol: everything the rest of the bridge may ask of a store
    sqlite.py   `SQLiteStore`: one SQLite file, group commit through one writer thread
    postgres.py `PostgresStore`: the same transactions on PostgreSQL, shared by replicas
    writer.py   that writer thread
"""

from typing import Any

from bridge.store.base import Store
from bridge.store.sqlite import MIGRATIONS, SQLiteStore, outage

__all__ = ["MIGRATIONS", "SQLiteStore", "Store", "open_store", "outage"]


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
