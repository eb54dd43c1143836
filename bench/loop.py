"""The whole loop, as users run it: ack -> trigger call -> execution followed -> signed callback.

    python bench/loop.py [--rates 300,800] [--seconds 20] [--burst 3000] [--store sqlite|postgres]
                         [--extra 'TOML merged into the config'] [--no-bare]
                         [--db-delay MS]

One bridge (one worker, default settings, pinned to the last core) with a route whose callback
goes to a receiver; the platform emulator in its own process; the load generator and the
receiver in this process. The emulator and this process share core 0, so the bridge's core is
its own.

The baseline, from the same run: `bench/bare_loop.py` on the same core, which makes the same
three HTTP exchanges per event through the same libraries (uvicorn and Starlette in, aiohttp
out) and nothing else. Each rate runs against it and then against the bridge, back to back; the
ratio of their CPU per event is what the bridge's own work costs on top of the libraries'.

- **Steady:** signed 1.2 KB GitHub pushes at each of `--rates` events/s for `--seconds`, each on
  a new connection; every event's ack time (at the sender) and its callback's arrival (at the
  receiver) give ack -> callback p50/p99; the target's CPU over the run, divided by the events,
  gives CPU ms per event. For the bridge, also its store's commits per event, changes per
  commit, and how long its writer was busy applying and committing them, per event (wall time,
  round trips to PostgreSQL included; from its metrics).
- **Saturation:** `--burst` events sent as fast as 32 connections allow; end-to-end events/s is
  the burst over the time from its first send to its last callback, and CPU ms per event again,
  with the share of its core the target used meanwhile. On two cores the sender, receiver and
  emulator share core 0 and run out of it first: past that point the bridge waits on them, and
  `1000 / CPU ms per event` is the rate its own core would carry.

`--db-delay MS` puts the store on PostgreSQL reached through a proxy (`pg_round_trips.py`'s)
that holds every chunk MS each way: a database on another host. The proxy runs on core 0.

Printed: events/s end to end, CPU ms per event, ack -> callback p50/p99, RSS at the end, the
bridge / bare ratios. Every callback's signature is checked (Standard Webhooks, as the relay
signs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

SECRET = "bench-secret"
TRIGGER_KEY = "bench-trigger-key"
API_KEY = "bench-api-key"
SIGNING = "whsec_" + base64.b64encode(b"bench-callback-signing-key-32byt").decode()
arrivals: dict[str, float] = {}
answers: dict[str, float] = {}  # seconds from each push's send to its 2xx, by idempotency key
bad_signatures = 0


async def receive(request: Request) -> Response:
    global bad_signatures
    body = await request.body()
    msg_id = request.headers["webhook-id"]
    stamp = request.headers["webhook-timestamp"]
    key = base64.b64decode(SIGNING.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body,
                                         hashlib.sha256).digest()).decode()
    if f"v1,{expected}" not in request.headers["webhook-signature"].split():
        bad_signatures += 1
    event = json.loads(body)["data"]["event"]["idempotency_key"]
    arrivals.setdefault(event, time.time())
    return Response(status_code=204)


def start_receiver(port: int) -> None:
    app = Starlette(routes=[Route("/done", receive, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, access_log=False,
                                           lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)


async def send(port: int, count: int, rate: float | None, prefix: str) -> dict[str, float]:
    """`count` signed pushes, at `rate` per second or (None) as fast as 32 connections go;
    the ack time of each accepted one, by its idempotency key."""
    acks: dict[str, float] = {}
    requests = loadgen.github_requests(count, 1200, SECRET, "/hooks/github", port, prefix)
    gate = asyncio.Semaphore(32 if rate is None else 10_000)

    async def one(i: int, request: bytes) -> None:
        async with gate:
            try:
                sent = time.time()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                if await loadgen._read_response(reader) == 202:
                    now = acks[f"github:{prefix}-{i}"] = time.time()
                    answers[f"github:{prefix}-{i}"] = now - sent
                writer.close()
            except (OSError, asyncio.IncompleteReadError):
                pass  # not acknowledged: counted as sent but not acked

    tasks = []
    start = time.perf_counter()
    for i, request in enumerate(requests):
        if rate is not None:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, request)))
    await asyncio.gather(*tasks)
    return acks


def wait_for_callbacks(keys: set[str], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if keys <= arrivals.keys():
            return True
        time.sleep(0.2)
    return False


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@contextlib.contextmanager
def distant_postgres(delay_ms: float) -> Iterator[tuple[str, int]]:
    """An address that reaches the PostgreSQL server through a proxy holding every chunk
    `delay_ms` each way, so a round trip gains 2 x delay: a database on another host, as
    replicas run it. The proxy is `pg_round_trips.py`'s, in a process of its own on core 0 with
    the load."""
    import pg_round_trips

    parts = urlsplit(postgres_url())
    proc, port = pg_round_trips.start_proxy((parts.hostname or "127.0.0.1", parts.port or 5432),
                                            delay_ms / 1000)
    try:
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.join(10)


def postgres_url() -> str:
    return os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def config(directory: Path, port: int, platform_port: int, receiver_port: int,
           store: str, extra: str, via: tuple[str, int] | None = None) -> Path:
    """The bridge's config; `via`: the address its store reaches PostgreSQL at (a proxy)."""
    if store == "postgres":
        import psycopg

        url = postgres_url()
        schema = f"loop_{secrets.token_hex(4)}"
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        if via is not None:
            import pg_round_trips

            line = f'url = "{pg_round_trips.through(url, via, schema)}"'
        else:
            line = f'url = "{url}?options=-csearch_path%3D{schema}"'
    else:
        line = f'path = "{directory / "loop.db"}"'
    path = directory / "loop.toml"
    path.write_text(merged(f"""
[server]
port = {port}
[store]
{line}
[platform]
base_url = "http://127.0.0.1:{platform_port}/api/v1"
trigger_key = "{TRIGGER_KEY}"
api_key = "{API_KEY}"
[callbacks]
signing_secret = "{SIGNING}"
allow_private = true
[[sources]]
name = "github"
provider = "github"
secret = "{SECRET}"
[[routes]]
source = "github"
trigger = "bench"
callbacks = ["http://127.0.0.1:{receiver_port}/done"]
""", extra))
    return path


def merged(base: str, extra: str) -> str:
    """`base` with the tables of `extra` (TOML) merged in: keys of a table `base` already has go
    under its header; other tables are appended."""
    import tomllib

    for table, keys in tomllib.loads(extra).items():
        # JSON writes TOML's strings, numbers, booleans and arrays the same way.
        lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        header = f"[{table}]\n"
        if header in base:
            base = base.replace(header, header + lines, 1)
        else:
            base += "\n" + header + lines
    return base


def commits(port: int) -> tuple[float, float, float]:
    """(transactions committed, changes in them, seconds spent applying and committing them)
    so far, from the bridge's metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = {sample.name: sample.value for family in text_string_to_metric_families(text)
             if family.name in ("bridge_store_batch_size", "bridge_store_commit_seconds")
             for sample in family.samples}
    return (found.get("bridge_store_batch_size_count", 0.0),
            found.get("bridge_store_batch_size_sum", 0.0),
            found.get("bridge_store_commit_seconds_sum", 0.0))


def platform_reads(platform_port: int) -> dict[str, int]:
    """The emulator's count of reads so far by kind: `get` (a poll), `stream`, `list`."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{platform_port}/_emulator/reads",
                                timeout=10) as answer:
        return dict(json.loads(answer.read()))


def followed(before: dict[str, int], after: dict[str, int], events: int) -> str:
    """How the bridge followed the executions, per event: polls, streams and list requests."""
    per = {kind: (after.get(kind, 0) - before.get(kind, 0)) / max(1, events)
           for kind in ("get", "stream", "list")}
    return (f"; per event {per['list']:.3f} lists, {per['stream']:.3f} streams,"
            f" {per['get']:.3f} polls")


def steady(name: str, pid: int, port: int, rate: float, seconds: int,
           metrics: bool, platform_port: int) -> float:
    """One steady run against `name` (its process and port); prints and returns CPU ms per
    event. `metrics`: the target reports its store's commits and follows executions (the
    bridge does)."""
    count = int(rate * seconds)
    before = commits(port) if metrics else (0.0, 0.0, 0.0)
    reads = platform_reads(platform_port) if metrics else {}
    user0, system0 = cpu_split(pid)
    acks = asyncio.run(send(port, count, rate, f"{name}-steady{rate:.0f}"))
    done = wait_for_callbacks(set(acks), 120)
    user, system = (b - a for a, b in zip((user0, system0), cpu_split(pid), strict=True))
    delays = [arrivals[k] - t for k, t in acks.items() if k in arrivals]
    acked = [answers[k] for k in acks]
    per = 1000 / max(1, len(delays))
    store = ""
    if metrics:
        committed, changes, writing = (b - a for a, b in zip(before, commits(port),
                                                             strict=True))
        store = (f"; {committed * per / 1000:.1f} commits/event,"
                 f" {changes / max(1, committed):.1f} changes/commit,"
                 f" writer busy {writing * per:.2f} ms/event"
                 + followed(reads, platform_reads(platform_port), len(delays)))
    print(f"{name:<6} steady {rate:.0f}/s for {seconds} s: {len(acks)} acked,"
          f" {len(delays)} called back{'' if done else ' (timed out)'};"
          f" {(user + system) * per:.2f} CPU ms/event"
          f" ({user * per:.2f} user, {system * per:.2f} system);"
          f" ack -> callback p50 {pct(delays, 0.5) * 1000:.0f} ms,"
          f" p99 {pct(delays, 0.99) * 1000:.0f} ms;"
          f" send -> 2xx p50 {pct(acked, 0.5) * 1000:.1f} ms{store}", flush=True)
    return (user + system) * per


def saturate(name: str, pid: int, port: int, burst: int, metrics: bool,
             platform_port: int) -> float:
    """`burst` events as fast as they go; prints and returns CPU ms per event."""
    reads = platform_reads(platform_port) if metrics else {}
    cpu0 = loadgen.cpu_seconds(pid)
    started = time.time()
    acks = asyncio.run(send(port, burst, None, f"{name}-burst"))
    done = wait_for_callbacks(set(acks), 300)
    last = max((arrivals[k] for k in acks if k in arrivals), default=time.time())
    cpu = loadgen.cpu_seconds(pid) - cpu0
    called = sum(1 for k in acks if k in arrivals)
    print(f"{name:<6} saturation: {burst} sent, {len(acks)} acked, {called} called back"
          f"{'' if done else ' (timed out)'} in {last - started:.1f} s:"
          f" {called / (last - started):.0f} events/s end to end;"
          f" {cpu / max(1, called) * 1000:.2f} CPU ms/event,"
          f" {cpu / (last - started) * 100:.0f} % of its core;"
          f" RSS {loadgen.rss_mb(pid):.0f} MB"
          f"{followed(reads, platform_reads(platform_port), called) if metrics else ''}",
          flush=True)
    return cpu / max(1, called) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="300,800", help="steady rates, events/s")
    parser.add_argument("--extra", default="", help="TOML merged into the bridge's config")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare baseline")
    parser.add_argument("--db-delay", type=float, default=None,
                        help="PostgreSQL this many ms away each way, through a delaying proxy"
                             " (implies --store postgres)")
    args = parser.parse_args()
    if args.db_delay is not None:
        args.store = "postgres"
    cores = os.cpu_count() or 1
    os.sched_setaffinity(0, {0})  # this process (load and receiver) and the emulator: core 0
    print(f"machine: {loadgen.machine()}; bridge and bare baseline on core {cores - 1},"
          f" store {args.store}")
    receiver_port, platform_port, port, bare_port = (loadgen.free_port() for _ in range(4))
    start_receiver(receiver_port)
    pin = ["taskset", "-c", str(cores - 1), loadgen.python()]
    emulator = loadgen.spawn(["taskset", "-c", "0", loadgen.python(), "-m", "bridge", "emulator",
                              "--port", str(platform_port), "--trigger-key", TRIGGER_KEY,
                              "--api-key", API_KEY, "--execution-delay", "0.05"])
    targets: list[tuple[str, subprocess.Popen[bytes], int, bool]] = []
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        via = None
        if args.db_delay is not None:
            via = stack.enter_context(distant_postgres(args.db_delay))
            print(f"database: PostgreSQL through a proxy, {args.db_delay} ms each way")
        try:
            if not args.no_bare:
                targets.append(("bare", loadgen.spawn(
                    [*pin, "bench/bare_loop.py", "--port", str(bare_port),
                     "--platform", f"http://127.0.0.1:{platform_port}/api/v1",
                     "--callback", f"http://127.0.0.1:{receiver_port}/done",
                     "--trigger-key", TRIGGER_KEY, "--signing", SIGNING]), bare_port, False))
            path = config(Path(tmp), port, platform_port, receiver_port, args.store, args.extra,
                          via)
            targets.append(("bridge", loadgen.spawn(
                [*pin, "-m", "bridge", "serve", "--config", str(path)]), port, True))
            loadgen.wait_healthy(f"http://127.0.0.1:{platform_port}/healthz", emulator)
            for name, proc, target_port, _ in targets:
                loadgen.wait_healthy(f"http://127.0.0.1:{target_port}/healthz", proc)
                # connections, caches, first streams
                asyncio.run(send(target_port, 200, 100.0, f"{name}-warm"))
                wait_for_callbacks({f"github:{name}-warm-{i}" for i in range(200)}, 60)
            # Each rate runs against the baseline and the bridge back to back, so both see the
            # same machine (its speed can change within minutes).
            for rate in (float(r) for r in args.rates.split(",") if r):
                cost = {name: steady(name, proc.pid, target_port, rate, args.seconds, metrics,
                                     platform_port)
                        for name, proc, target_port, metrics in targets}
                if "bare" in cost:
                    print(f"ratio  steady {rate:.0f}/s: bridge / bare CPU per event"
                          f" {cost['bridge'] / cost['bare']:.2f}", flush=True)
            cost = {name: saturate(name, proc.pid, target_port, args.burst, metrics,
                                   platform_port)
                    for name, proc, target_port, metrics in targets}
            if "bare" in cost:
                print(f"ratio  saturation: bridge / bare CPU per event"
                      f" {cost['bridge'] / cost['bare']:.2f}", flush=True)
            print(f"bad callback signatures: {bad_signatures}", flush=True)
        finally:
            for _, proc, _, _ in targets:
                proc.terminate()
                proc.wait(30)
            emulator.terminate()
            emulator.wait(10)


if __name__ == "__main__":
    main()
