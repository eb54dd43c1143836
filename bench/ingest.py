"""Ingest benchmark: webhook-bridge (durable ack) against a bare Starlette app, same client.

    python bench/ingest.py [--count 4000] [--size 1200] [--concurrency 32]

Both run as one uvicorn worker in their own process; the load comes from bench/loadgen.py.
Prints events/s, p50/p99 latency, CPU seconds per 1,000 events, RSS, and the ratio to the bare
app; then checks that every acknowledged event is in the bridge's SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

SECRET = "bench-secret"


def bridge_config(directory: Path, port: int) -> Path:
    path = directory / "bench.toml"
    path.write_text(f"""
[server]
port = {port}
log_format = "json"
[store]
path = "{directory / 'bench.db'}"
[[sources]]
name = "github"
provider = "github"
secret = "{SECRET}"
""")
    return path


async def measure(name: str, port: int, pid: int, count: int, size: int,
                  concurrency: int, prefix: str = "") -> tuple[loadgen.Result, float, float]:
    tag = prefix or name
    warm = loadgen.github_requests(200, size, SECRET, "/hooks/github", port, prefix=f"w{tag}")
    await loadgen.drive(name, port, warm, concurrency)
    requests = loadgen.github_requests(count, size, SECRET, "/hooks/github", port,
                                       prefix=f"m{tag}")
    cpu0 = loadgen.cpu_seconds(pid)
    result = await loadgen.drive(name, port, requests, concurrency)
    cpu = (loadgen.cpu_seconds(pid) - cpu0) / count * 1000
    return result, cpu, loadgen.rss_mb(pid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(f"machine: {loadgen.machine()}")
    print(f"load: {args.count} signed GitHub push events of ~{args.size} B, "
          f"{args.concurrency} connections, keep-alive")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        bare_port, bridge_port = loadgen.free_port(), loadgen.free_port()
        bare = loadgen.spawn([loadgen.python(), "-m", "uvicorn", "bare_app:app", "--port",
                              str(bare_port), "--log-level", "warning", "--no-access-log",
                              "--app-dir", str(Path(__file__).parent)])
        bridge = loadgen.spawn([loadgen.python(), "-m", "bridge", "serve", "--config",
                                str(bridge_config(directory, bridge_port))])
        try:
            loadgen.wait_healthy(f"http://127.0.0.1:{bare_port}/", bare)
            loadgen.wait_healthy(f"http://127.0.0.1:{bridge_port}/healthz", bridge)
            rows = []
            for name, port, proc in [("bare starlette (202)", bare_port, bare),
                                     ("webhook-bridge (durable)", bridge_port, bridge)]:
                rows.append((*asyncio.run(measure(name, port, proc.pid, args.count, args.size,
                                                  args.concurrency)),))
        finally:
            for proc in (bare, bridge):
                proc.terminate()
                proc.wait(15)
        print(loadgen.HEADER + f" {'cpu s/1k':>9} {'rss MB':>7}")
        baseline = rows[0][0]
        for result, cpu, rss in rows:
            print(result.row(baseline) + f"  cpu/1k={cpu:.3f}s rss={rss:.0f}MB")
        conn = sqlite3.connect(directory / "bench.db")
        stored = conn.execute("SELECT COUNT(*) FROM events WHERE idempotency_key LIKE"
                              " 'github:m%'").fetchone()[0]
        conn.close()
        acked = rows[1][0].statuses.get(202, 0)
        print(f"durability: {acked} acknowledged with 202, {stored} found in the SQLite file")
        if stored != acked:
            print("WARNING: acknowledged and stored counts differ")


if __name__ == "__main__":
    main()
