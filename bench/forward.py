"""Forwarder benchmark: outbox -> platform throughput, and webhook ack -> trigger call latency.

    python bench/forward.py [--count 3000]

The emulator runs in its own process (`bridge emulator`), so the bridge's one worker is measured,
not the stand-in. Throughput: events are stored with the forwarder off, then the bridge restarts
with it on and the drain is timed. Latency: events are sent at a steady pace with the forwarder on,
and each event's ack time is matched with the time the emulator received its trigger call.
Then throughput again with the platform answering in 1 ms, 50 ms and 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

SECRET = "bench-secret"
TRIGGER_KEY = "bench-trigger-key"


def config(directory: Path, port: int, platform_port: int, forward: bool) -> Path:
    path = directory / f"forward-{forward}.toml"
    path.write_text(f"""
[server]
port = {port}
[store]
path = "{directory / 'forward.db'}"
[platform]
base_url = "http://127.0.0.1:{platform_port}/api/v1"
trigger_key = "{TRIGGER_KEY}"
[forwarder]
enabled = {str(forward).lower()}
concurrency = 32
poll_interval = "200ms"
[[sources]]
name = "github"
provider = "github"
secret = "{SECRET}"
[[routes]]
source = "github"
trigger = "bench"
""")
    return path


def delivered(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'"
                                ).fetchone()[0])
    finally:
        conn.close()


def start_bridge(path: Path, port: int):  # type: ignore[no-untyped-def]
    proc = loadgen.spawn([loadgen.python(), "-m", "bridge", "serve", "--config", str(path)])
    loadgen.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def drain(directory: Path, platform_port: int, count: int, prefix: str) -> tuple[float, float]:
    """Store `count` events with the forwarder off, then time the drain. (deliveries/s, cpu)"""
    db = directory / "forward.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    port = loadgen.free_port()
    proc = start_bridge(config(directory, port, platform_port, False), port)
    requests = loadgen.github_requests(count, 1200, SECRET, "/hooks/github", port, prefix)
    asyncio.run(loadgen.drive("fill", port, requests))
    proc.terminate()
    proc.wait(15)
    proc = start_bridge(config(directory, port, platform_port, True), port)
    # Timed from the moment the bridge answers its health check; what it delivered while
    # starting is left out of both the count and the time.
    started = time.perf_counter()
    before = delivered(db)
    cpu0 = loadgen.cpu_seconds(proc.pid)
    while delivered(db) < count:
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    cpu = loadgen.cpu_seconds(proc.pid) - cpu0
    proc.terminate()
    proc.wait(15)
    return (count - before) / elapsed, cpu / (count - before) * 1000


async def paced(port: int, count: int, rate: float, secret: str = SECRET) -> dict[str, float]:
    """Send at a steady `rate`; return ack wall time per idempotency key (the `bench` route's
    delivery key). `bench/agent.py` uses it too."""
    acks: dict[str, float] = {}
    requests = loadgen.github_requests(count, 1200, secret, "/hooks/github", port, "lat")

    async def one(i: int, request: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        status = await loadgen._read_response(reader)
        if status == 202:
            acks[f"github:lat-{i}:bench"] = time.time()
        writer.close()

    tasks = []
    start = time.perf_counter()
    for i, request in enumerate(requests):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, request)))
    await asyncio.gather(*tasks)
    return acks


def latency(directory: Path, platform_port: int, count: int, rate: float) -> list[float]:
    db = directory / "forward.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    httpx.post(f"http://127.0.0.1:{platform_port}/_emulator/reset")
    port = loadgen.free_port()
    proc = start_bridge(config(directory, port, platform_port, True), port)
    acks = asyncio.run(paced(port, count, rate))
    while delivered(db) < count:
        time.sleep(0.05)
    proc.terminate()
    proc.wait(15)
    calls = httpx.get(f"http://127.0.0.1:{platform_port}/_emulator/calls").json()
    first_call = {}
    for call in calls:
        first_call.setdefault(call["key"], call["at"])
    return sorted(first_call[k] - t for k, t in acks.items() if k in first_call)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s in the latency run")
    args = parser.parse_args()
    print(f"machine: {loadgen.machine()}")
    platform_port = loadgen.free_port()
    emulator = loadgen.spawn([loadgen.python(), "-m", "bridge", "emulator", "--port",
                              str(platform_port), "--trigger-key", TRIGGER_KEY,
                              "--execution-delay", "0.1"])
    try:
        loadgen.wait_healthy(f"http://127.0.0.1:{platform_port}/_emulator/calls", emulator)
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            rate, cpu = drain(directory, platform_port, args.count, "drain")
            print(f"outbox drain, platform on loopback: {args.count} deliveries, "
                  f"{rate:.0f} deliveries/s, {cpu:.3f} CPU s per 1,000 "
                  f"(one core's worth: {1000 / cpu:.0f} deliveries/s)")
            lat = latency(directory, platform_port, min(args.count, 1000), args.rate)
            pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] * 1000  # noqa: E731
            print(f"ack -> trigger call at {args.rate:.0f} events/s: {len(lat)} events, "
                  f"p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms")
            print(f"{'platform latency':>18} {'deliveries/s':>13}")
            for delay, count in ((0.001, 1000), (0.05, 1000), (0.5, 320)):
                httpx.post(f"http://127.0.0.1:{platform_port}/_emulator/settings",
                           json={"latency": delay})
                rate, _ = drain(directory, platform_port, count, f"l{delay}")
                print(f"{delay * 1000:>15.0f} ms {rate:>13.0f}")
    finally:
        emulator.terminate()
        emulator.wait(15)


if __name__ == "__main__":
    main()
