"""Running one scenario against each store: SQLite, and PostgreSQL in a schema of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bridge.store import SQLiteStore, Store
from tests.support import pg

STORES = ("sqlite", "postgres")


def run(coro: Callable[[Store], Coroutine[Any, Any, None]], kind: str, tmp: Path,
        commit_delay: float = 0.0) -> None:
    async def main(store: Store) -> None:
        await store.open()
        try:
            await coro(store)
        finally:
            await store.close()

    if kind == "sqlite":
        asyncio.run(main(SQLiteStore(str(tmp / "store.db"), commit_delay=commit_delay)))
        return
    pg.require()
    from bridge.store.postgres import PostgresStore

    with pg.schema() as url:
        asyncio.run(main(PostgresStore(url, commit_delay=commit_delay)))
