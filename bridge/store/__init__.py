"""Durable storage.

    base.py     the `Store` protocol: everything the rest of the bridge may ask of a store
    sqlite.py   `SQLiteStore`: one SQLite file, group commit through one writer thread
    writer.py   that writer thread
"""

from bridge.store.base import Render, Store
from bridge.store.sqlite import MIGRATIONS, SQLiteStore, open_store, outage

__all__ = ["MIGRATIONS", "Render", "SQLiteStore", "Store", "open_store", "outage"]
