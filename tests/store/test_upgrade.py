"""A store written by the build before migrations were `.sql` files (schema version 10), with
something in every state, opened by this build: it migrates, and every event, delivery,
execution, callback and attempt is found as that build left it, and the store goes on working.

The fixtures (`fixtures/schema10-*`) were written by that build through its own API
(`fixtures/write_store.py`), with what an operator read of them (`schema10-expected.json`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from bridge.core.models import Attempt, Delivered, NewDelivery, VerifiedEvent
from bridge.store import SQLiteStore, Store
from bridge.store.migrate import latest
from tests.store.fixtures.write_store import T, view
from tests.support import pg

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "schema10-expected.json").read_text())


async def check(store: Store) -> None:
    await store.open()
    try:
        for event_id, seen in EXPECTED["events"].items():
            assert view(await store.get_event(event_id)) == seen, event_id
        assert await store.counts() == EXPECTED["counts"]
        assert sorted(await store.route_states()) == EXPECTED["routes"]
        # Work goes on where it stopped: the retries are claimed, the lease that was held has
        # expired, the paused route is probed with its delivery, an agent's hand-off stays.
        claimed = await store.claim("after", T + 10_000, 60, 10, 30)
        assert sorted((d.idempotency_key, d.probe) for d in claimed) == [
            ("s:11:r1", False), ("s:2:r2", False), ("s:7:r3", True), ("s:9:r1", False)]
        for d in claimed:
            assert await store.record(d, "after", Attempt(d.id, T + 10_001, 1.0, "delivered",
                                                          202), Delivered(None, 202), None,
                                      T + 10_001, 30)
        # New events, under keys the old ones hold (duplicates) and new ones.
        again = await store.accept(VerifiedEvent("new-1", "github", "github", "push", "s:1",
                                                 T + 10_002, {}, b"{}"), [])
        assert again.duplicate and again.event_id == "ev-01"
        fresh = await store.accept(VerifiedEvent("new-2", "github", "github", "push", "s:99",
                                                 T + 10_002, {}, b"{}"),
                                   [NewDelivery("r1", "t-r1", "s:99:r1", b"{}", "application/json")])
        assert not fresh.duplicate
        assert (await store.get_event("ev-02")).state == "delivered"  # type: ignore[union-attr]
        assert (await store.route_states())["r3"].state == "active"  # the probe went through
        assert await store.find_session("sess-digest", T + 60) is not None
    finally:
        await store.close()


def test_a_sqlite_store_written_at_schema_10_upgrades(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "schema10-sqlite.sql").read_text())
    asyncio.run(check(SQLiteStore(str(path))))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest() > 10


def test_a_postgresql_store_written_at_schema_10_upgrades() -> None:
    pg.require()
    import psycopg

    from bridge.store.postgres import PostgresStore

    name = f"t_{secrets.token_hex(6)}"
    dump = (FIXTURES / "schema10-postgres.sql").read_text().replace("__SCHEMA__", name)
    with psycopg.connect(pg.SERVER, autocommit=True) as admin:
        admin.execute(dump)  # type: ignore[arg-type]  # a script of its own, no parameters
    separator = "&" if "?" in pg.SERVER else "?"
    url = f"{pg.SERVER}{separator}options={quote(f'-csearch_path={name}')}"
    try:
        asyncio.run(check(PostgresStore(url)))
        with psycopg.connect(url) as conn:
            row: Any = conn.execute("SELECT version FROM bridge_schema").fetchone()
            assert row[0] == latest()
    finally:
        with psycopg.connect(pg.SERVER, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {name} CASCADE")  # type: ignore[arg-type]


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_both_dialects_have_the_same_migrations(dialect: str) -> None:
    from bridge.store.migrate import scripts

    numbers = [(n, name) for n, name, _ in scripts(dialect)]
    assert numbers == [(n, name) for n, name, _ in scripts("sqlite")]
