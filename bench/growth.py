"""Ingest as the store grows: 0, 1 M and 5 M events already stored, on SQLite and PostgreSQL.

    python bench/growth.py [--sizes 0,1000000,5000000] [--seconds 10] [--stores sqlite,postgres]
                           [--url postgresql://postgres@127.0.0.1:5432/test]

Each store is filled with stored GitHub events (setup, not measured: SQLite through `sqlite3`,
PostgreSQL through `COPY`), written the way the bridge writes them: time-ordered ids, an
idempotency key per event, ~0.6 KB of headers and body, and a delivery for every event. Then the
bridge (one worker, forwarder off, pinned to the last core) is started on it and `wrk` (core 0,
one thread, 32 connections) replays pre-signed 1.2 KB pushes with distinct delivery ids for
`--seconds`. Printed per size: events/s, p50/p99 ack latency, the store's size, and the ratio to
the empty store of the same run. The target is >= 0.8 at 5 M on both stores.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glue  # noqa: E402
import loadgen  # noqa: E402

HEADERS = json.dumps({"x-github-event": "push", "content-type": "application/json",
                      "user-agent": "GitHub-Hookshot/abc", "x-github-hook-id": "1"})
BODY = b'{"ref":"refs/heads/main","prefill":true,"pad":"' + b"p" * 400 + b'"}'
CHUNK = 20_000


def rows(start: int, stop: int) -> Iterator[tuple[tuple[object, ...], tuple[object, ...]]]:
    """(event, delivery) rows for events `start`..`stop`: a day old, a millisecond apart per
    hundred, delivered."""
    base_ms = int(time.time() * 1000) - 86_400_000
    for i in range(start, stop):
        ms = base_ms + i // 100
        stamp = f"{ms:012x}"
        event_id = f"{stamp[:8]}-{stamp[8:]}-7000-8000-{i:012x}"
        delivery_id = f"{stamp[:8]}-{stamp[8:]}-7000-9000-{i:012x}"
        key = f"github:{secrets.token_hex(16)}"
        at = ms / 1000
        yield ((event_id, "github", "github", "push", key, at, HEADERS, BODY, "delivered"),
               (delivery_id, event_id, "deploy", "deploy", f"{key}:deploy", BODY,
                "application/json", "delivered", 1, at, at, at))


EVENT_COLUMNS = ("id, source, provider, event_type, idempotency_key, received_at, headers,"
                 " body, state")
DELIVERY_COLUMNS = ("id, event_id, route, trigger, idempotency_key, body, content_type, status,"
                    " attempts, next_attempt_at, created_at, updated_at")


def fill_sqlite(path: Path, start: int, stop: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # setup only
    for first in range(start, stop, CHUNK):
        batch = list(rows(first, min(stop, first + CHUNK)))
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                         [e for e, _ in batch])
        conn.executemany(f"INSERT INTO deliveries ({DELIVERY_COLUMNS})"
                         " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [d for _, d in batch])
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def fill_postgres(url: str, start: int, stop: int) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        for first in range(start, stop, CHUNK * 5):
            batch = list(rows(first, min(stop, first + CHUNK * 5)))
            with conn.cursor() as cur:
                with cur.copy(f"COPY events ({EVENT_COLUMNS}) FROM STDIN") as copy:
                    for event, _ in batch:
                        copy.write_row(event)
                with cur.copy(f"COPY deliveries ({DELIVERY_COLUMNS}) FROM STDIN") as copy:
                    for _, delivery in batch:
                        copy.write_row(delivery)
            conn.commit()
        conn.execute("VACUUM ANALYZE events")
        conn.execute("VACUUM ANALYZE deliveries")
        conn.commit()


def size_mb(store: str, path: Path, url: str) -> float:
    if store == "sqlite":
        return sum(Path(f"{path}{s}").stat().st_size for s in ("", "-wal")
                   if Path(f"{path}{s}").exists()) / 1e6
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c"
                           " JOIN pg_namespace n ON n.oid = c.relnamespace"
                           " WHERE n.nspname = current_schema() AND c.relkind = 'r'").fetchone()
    return float(row[0] or 0) / 1e6 if row else 0.0


def measure(directory: Path, store_line: str, seconds: int, tag: str) -> tuple[float, float,
                                                                               float]:
    port = loadgen.free_port()
    config = directory / f"{tag}.toml"
    config.write_text(f"""
[server]
port = {port}
[store]
{store_line}
[forwarder]
enabled = false
[[sources]]
name = "github"
provider = "github"
secret = "{glue.SECRET}"
[[routes]]
source = "github"
trigger = "deploy"
""")
    core = str((os.cpu_count() or 1) - 1)
    proc = loadgen.spawn(["taskset", "-c", core, loadgen.python(), "-m", "bridge", "serve",
                          "--config", str(config)])
    try:
        loadgen.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, timeout=120)
        return glue.wrk_run(directory, port, seconds, 6000 * seconds, tag)
    finally:
        proc.terminate()
        proc.wait(30)


def run_store(store: str, directory: Path, sizes: list[int], seconds: int, url: str) -> None:
    path = directory / "growth.db"
    schema = f"growth_{secrets.token_hex(4)}"
    scoped = f"{url}?options=-csearch_path%3D{schema}"
    if store == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
    line = f'path = "{path}"' if store == "sqlite" else f'url = "{scoped}"'
    try:
        measure(directory, line, 1, f"{store}-schema")  # creates the schema
        filled = measured = 0
        empty = None
        for size in sizes:
            started = time.time()
            # Fill up to `size` counting what earlier measurements stored, so each point has
            # the store's size it names.
            target = max(size - measured, filled)
            if target > filled:
                if store == "sqlite":
                    fill_sqlite(path, filled, target)
                else:
                    fill_postgres(scoped, filled, target)
                print(f"  ({store}: stored {target - filled:,} events in"
                      f" {time.time() - started:.0f} s)", flush=True)
                filled = target
            rate, p50, p99 = measure(directory, line, seconds, f"{store}{size}")
            measured += int(rate * seconds)
            empty = empty or rate
            print(f"{store:<9} {size:>11,} {rate:>9.0f} {p50:>8.2f} {p99:>8.2f}"
                  f" {size_mb(store, path, scoped):>9.0f} {rate / empty:>6.2f}", flush=True)
    finally:
        if store == "postgres":
            import psycopg

            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0,1000000,5000000")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset"):
        raise SystemExit("needs wrk and taskset (Debian: apt-get install wrk util-linux)")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(f"machine: {loadgen.machine()}")
    print(f"{'store':<9} {'stored':>11} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'store MB':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for store in args.stores.split(","):
            run_store(store, Path(tmp), sizes, args.seconds, args.url)


if __name__ == "__main__":
    main()
