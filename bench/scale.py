"""Ingest as the store grows, and with two worker processes.

    python bench/scale.py [--sizes 0,1000000,5000000] [--count 4000]

The store is prefilled with stored GitHub events straight through sqlite3 (setup, not measured),
then the bridge is started on it and driven like bench/ingest.py. Dedupe is a unique-index
lookup, so throughput and p99 should stay flat as the store grows. Writes
docs/img/scale.png when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402
import loadgen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def prefill(db: Path, start: int, stop: int) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # setup only
    headers = json.dumps({"x-github-event": "push", "content-type": "application/json"})
    body = b'{"ref":"refs/heads/main","prefill":true,' + b'"pad":"' + b"p" * 200 + b'"}'
    base_ms = int(time.time() * 1000) - 86_400_000
    chunk = 50_000
    for first in range(start, stop, chunk):
        rows = []
        for i in range(first, min(stop, first + chunk)):
            ms = base_ms + i // 100
            rows.append((f"{ms:012x}"[:8] + f"-{ms:012x}"[8:] + f"-7000-8000-{i:012x}",
                         "github", "github", "push", f"github:prefill-{i}", ms / 1000, headers,
                         body, "unrouted"))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events (id, source, provider, event_type, idempotency_key,"
                         " received_at, headers, body, state) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def run_bridge(directory: Path, db: Path, workers: int, count: int,
               tag: str) -> loadgen.Result:
    port = loadgen.free_port()
    config = directory / f"scale-{tag}.toml"
    config.write_text(f"""
[server]
port = {port}
workers = {workers}
[store]
path = "{db}"
[[sources]]
name = "github"
provider = "github"
secret = "{ingest.SECRET}"
""")
    proc = loadgen.spawn([loadgen.python(), "-m", "bridge", "serve", "--config", str(config)])
    try:
        loadgen.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        time.sleep(0.5 * workers)
        result, _, _ = asyncio.run(ingest.measure(tag, port, proc.pid, count, 1200, 32,
                                                  prefix=tag))
        return result
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0,1000000,5000000")
    parser.add_argument("--count", type=int, default=4000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {loadgen.machine()}")
    print(f"{'stored events':>14} {'workers':>7} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'db MB':>7}")
    points = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        directory = Path(tmp)
        db = directory / "scale.db"
        warm = run_bridge(directory, db, 1, 10, "schema")  # creates the schema
        del warm
        filled = 0
        for size in sizes:
            started = time.time()
            prefill(db, filled, size)
            if size > filled:
                print(f"  (prefilled {size - filled:,} events in {time.time() - started:.0f} s)")
            filled = max(filled, size)
            for workers in ((1, 2) if size == sizes[-1] else (1,)):
                result = run_bridge(directory, db, workers, args.count, f"s{size}w{workers}")
                mb = db.stat().st_size / 1e6
                print(f"{size:>14,} {workers:>7} {result.rate:>9.0f} {result.pct(0.5):>8.2f}"
                      f" {result.pct(0.99):>8.2f} {mb:>7.0f}", flush=True)
                points.append((size, workers, result.rate, result.pct(0.99)))
    plot(points)


def plot(points: list[tuple[int, int, float, float]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    one = [p for p in points if p[1] == 1]
    fig, left = plt.subplots(figsize=(7, 4))
    xs = [p[0] / 1e6 for p in one]
    left.plot(xs, [p[2] for p in one], "o-", color="tab:blue", label="events/s (1 worker)")
    left.set_xlabel("events already stored (millions)")
    left.set_ylabel("events/s", color="tab:blue")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(xs, [p[3] for p in one], "s--", color="tab:red", label="p99 ms")
    right.set_ylabel("p99 latency (ms)", color="tab:red")
    right.set_ylim(bottom=0)
    left.set_title("Durable ingest as the store grows (1.2 KB events, 32 connections)")
    fig.tight_layout()
    out = ROOT / "docs" / "img" / "scale.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"plot: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
