"""psycopg 3 against asyncpg on the PostgreSQL store's two hot paths, same server, same run.

- ingest: batches of 64 events of 1.2 KB, one multi-row `INSERT ... ON CONFLICT DO NOTHING
  RETURNING id` and a commit per batch (what the store's writer does with a burst of webhooks);
- claim: `SELECT ... FOR UPDATE SKIP LOCKED LIMIT 64` then `UPDATE ... RETURNING` of those rows,
  in one transaction, until nothing is left (what a forwarder's claim does).

psycopg runs as the store runs it: a synchronous connection on a thread of its own, the event
loop awaiting it. asyncpg runs on the event loop. Prints rows/s and the client's CPU per 1,000
rows. Needs asyncpg, which the bridge does not depend on: `pip install asyncpg`.

    python bench/pg_drivers.py [--url postgresql://postgres@127.0.0.1:5432/test] [--rows 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from typing import Any

import psycopg

BATCH = 64
BODY = b"x" * 1200
DDL = """
CREATE TABLE {s}.events (id TEXT PRIMARY KEY, idempotency_key TEXT NOT NULL UNIQUE,
    received_at DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL, status TEXT NOT NULL,
    lease_owner TEXT, lease_until DOUBLE PRECISION)
"""


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def psycopg_ingest(url: str, schema: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, rows, BATCH):
            values = [(f"p{i}", f"k-p{i}", time.time(), BODY, "pending")
                      for i in range(start, min(rows, start + BATCH))]
            marks = ",".join(["(%s,%s,%s,%s,%s)"] * len(values))
            with conn.transaction():
                conn.execute(f"INSERT INTO {schema}.events (id, idempotency_key, received_at,"
                             f" body, status) VALUES {marks} ON CONFLICT DO NOTHING RETURNING id",
                             [v for row in values for v in row]).fetchall()


def psycopg_claim(url: str, schema: str) -> int:
    claimed = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            with conn.transaction():
                ids = [r[0] for r in conn.execute(
                    f"SELECT id FROM {schema}.events WHERE status = 'pending' ORDER BY received_at"
                    f" LIMIT {BATCH} FOR UPDATE SKIP LOCKED").fetchall()]
                if not ids:
                    return claimed
                rows = conn.execute(
                    f"UPDATE {schema}.events SET status = 'leased', lease_owner = 'w',"
                    f" lease_until = %s WHERE id = ANY(%s) RETURNING id, body",
                    (time.time() + 60, ids)).fetchall()
                claimed += len(rows)


async def asyncpg_ingest(url: str, schema: str, rows: int) -> None:
    import asyncpg

    conn: Any = await asyncpg.connect(url)
    try:
        for start in range(0, rows, BATCH):
            values = [(f"a{i}", f"k-a{i}", time.time(), BODY, "pending")
                      for i in range(start, min(rows, start + BATCH))]
            marks = ",".join(f"(${n * 5 + 1},${n * 5 + 2},${n * 5 + 3},${n * 5 + 4},${n * 5 + 5})"
                             for n in range(len(values)))
            async with conn.transaction():
                await conn.fetch(f"INSERT INTO {schema}.events (id, idempotency_key, received_at,"
                                 f" body, status) VALUES {marks} ON CONFLICT DO NOTHING"
                                 f" RETURNING id", *[v for row in values for v in row])
    finally:
        await conn.close()


async def asyncpg_claim(url: str, schema: str) -> int:
    import asyncpg

    conn: Any = await asyncpg.connect(url)
    claimed = 0
    try:
        while True:
            async with conn.transaction():
                ids = [r[0] for r in await conn.fetch(
                    f"SELECT id FROM {schema}.events WHERE status = 'pending' ORDER BY received_at"
                    f" LIMIT {BATCH} FOR UPDATE SKIP LOCKED")]
                if not ids:
                    return claimed
                rows = await conn.fetch(
                    f"UPDATE {schema}.events SET status = 'leased', lease_owner = 'w',"
                    f" lease_until = $1 WHERE id = ANY($2) RETURNING id, body",
                    time.time() + 60, ids)
                claimed += len(rows)
    finally:
        await conn.close()


def measure(label: str, rows: int, fn: Any) -> None:
    c0, t0 = cpu(), time.perf_counter()
    result = fn()
    elapsed, used = time.perf_counter() - t0, cpu() - c0
    count = result if isinstance(result, int) else rows
    print(f"{label:<22} {count / elapsed:9.0f} rows/s   {used / count * 1e6:7.1f} µs CPU per row")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        admin.execute(DDL.format(s=schema))
    try:
        for _ in range(2):  # alternate, twice
            measure("psycopg ingest", args.rows,
                    lambda: asyncio.run(asyncio.to_thread(psycopg_ingest, args.url, schema,
                                                          args.rows)))
            measure("asyncpg ingest", args.rows,
                    lambda: asyncio.run(asyncpg_ingest(args.url, schema, args.rows)))
            measure("psycopg claim", args.rows,
                    lambda: asyncio.run(asyncio.to_thread(psycopg_claim, args.url, schema)))
            with psycopg.connect(args.url, autocommit=True) as conn:
                conn.execute(f"UPDATE {schema}.events SET status = 'pending'")
            measure("asyncpg claim", args.rows,
                    lambda: asyncio.run(asyncpg_claim(args.url, schema)))
            with psycopg.connect(args.url, autocommit=True) as conn:
                conn.execute(f"TRUNCATE {schema}.events")
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
