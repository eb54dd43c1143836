"""The PostgreSQL store's writer against the database's distance: the same batches of changes,
written the ways `--ways` names (see `WAYS`): each change with its own statements, and each
statement its own round trip (`unheld`); with the statements nobody reads the answer of held and
sent with the next one (`alone`); held, with a batch's changes of one kind in one statement
(`grouped`); as grouped with those held sent in one pipeline with the next statement
(`undeferred`); and as the store runs, as undeferred with a completion's callbacks held for the
commit too (`pipelined`). On a nearby server and on one a few hundred microseconds away.

    python bench/pg_round_trips.py [--url postgresql://postgres@127.0.0.1:5432/test]
                                   [--delays direct,0,0.25,1] [--ways alone,pipelined]
                                   [--events 20] [--rounds 30]

Each round does, through the store's own API, what a steady stream of `--events` events writes
after its acknowledgements: every delivery's outcome (delivered, its execution to follow) in one
batch, every execution's completion (one callback each) in one batch, and every callback's
outcome in one batch. Printed per setting: the writer's time for those three batches per event
(median over the rounds; wall time, round trips included), the bench process's CPU per event,
and the ratio of each way's better run to the first way's.

The distance is a proxy in a process of its own that holds every chunk `delay` ms before
passing it on, each way (a round trip gains 2 × delay); at 0 it still costs a hop through it,
the same for every way of sending.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bridge.core.models import (  # noqa: E402
    Attempt,
    CallbackTargets,
    Delivered,
    ExecutionResult,
    NewDelivery,
    VerifiedEvent,
    new_id,
)
from bridge.store import postgres  # noqa: E402

# Ways the writer can send a batch: (hold the statements nobody reads, send those held in one
# pipeline with the next statement, write each kind of change in one statement, send runs of
# one-statement jobs in one pipeline, hold a completion's callbacks for the next statement).
WAYS = {
    "unheld": (False, False, False, False, False),  # every statement a round trip of its own
    "alone": (True, False, False, False, False),  # held, and each change its own statements
    "grouped": (True, False, True, False, False),  # held, a batch's changes of one kind in one
    # statement
    "undeferred": (True, True, True, True, False),  # as grouped, and those held go with the
    # next statement even when it has parameters (this bench's batches are one kind each, so
    # they hold no run of statements for one pipeline)
    "pipelined": (True, True, True, True, True),  # as the store runs: as undeferred, and a
    # completion's callbacks go with the commit
}


class DelayProxy:
    """TCP to `target`, every chunk held `delay` seconds each way."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client), daemon=True).start()

    def pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def serve_proxy(target: tuple[str, int], delay: float, ports: multiprocessing.Queue) -> None:
    ports.put(DelayProxy(target, delay).port)
    threading.Event().wait()


def start_proxy(target: tuple[str, int], delay: float
                ) -> tuple[multiprocessing.Process, int]:
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    proc = multiprocessing.Process(target=serve_proxy, args=(target, delay, ports), daemon=True)
    proc.start()
    return proc, ports.get(timeout=10)


def through(url: str, address: tuple[str, int], schema: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username + '@' if parts.username else ''}{address[0]}:{address[1]}"
    query = f"options={quote(f'-csearch_path={schema}')}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


async def measure(url: str, events: int, rounds: int) -> tuple[float, float]:
    """(writer ms per event, median over rounds; process CPU ms per event)."""
    store = postgres.PostgresStore(url, commit_delay=0.05)
    await store.open()
    batches: list[tuple[int, float]] = []
    store.on_commit = lambda size, seconds: batches.append((size, seconds))
    targets = CallbackTargets({"r": ("https://cb.example/done",)})
    per_round: list[float] = []
    cpu = 0.0
    try:
        for _ in range(rounds + 3):  # the first three warm up
            now = time.time()
            for _i in range(events):
                key = f"s:{new_id()}"
                await store.accept(
                    VerifiedEvent(new_id(), "s", "github", "push", key, now, {}, b"{}"),
                    [NewDelivery("r", "t", f"{key}:t", b"{}", "application/json")])
            claimed = await store.claim("w", now, 60, events, 30)
            assert len(claimed) == events
            batches.clear()
            started = os.times()
            await asyncio.gather(*(
                store.record(c, "w", Attempt(c.id, now, 1.0, "delivered", 202),
                             Delivered(f"exe-{c.id}", 202), None, now, 30, now + 3600)
                for c in claimed))
            await asyncio.gather(*(
                store.complete_execution(f"exe-{c.id}", ExecutionResult("completed"), now,
                                         targets) for c in claimed))
            callbacks = await store.claim_callbacks("r", now, 60, events)
            await asyncio.gather(*(
                store.record_callback(cb, "r", Attempt(cb.id, now, 1.0, "delivered", 200),
                                      True, None, None, now) for cb in callbacks))
            ended = os.times()
            if _ >= 3:
                measured = [s for n, s in batches if n == events]
                per_round.append(sum(measured) * 1000 / events)
                cpu += (ended.user + ended.system - started.user - started.system)
    finally:
        await store.close()
    return statistics.median(per_round), cpu * 1000 / (events * rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get(
        "BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--delays", default="direct,0,0.25,1",
                        help="ms each way through the proxy; `direct`: no proxy")
    parser.add_argument("--ways", default="alone,pipelined",
                        help="ways of sending, the first the baseline: " + ", ".join(WAYS))
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    parts = urlsplit(args.url)
    target = (parts.hostname or "127.0.0.1", parts.port or 5432)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, psycopg"
          f" {psycopg.__version__}; {args.events} events per batch, {args.rounds} rounds")
    for setting in args.delays.split(","):
        proxy: multiprocessing.Process | None = None
        address = target
        if setting != "direct":
            proxy, port = start_proxy(target, float(setting) / 1000)
            address = ("127.0.0.1", port)
        ways = args.ways.split(",")
        figures: dict[str, list[tuple[float, float]]] = {}
        for way in ways + ways:  # alternating, against the machine's drift
            schema = f"rt_{secrets.token_hex(4)}"
            with psycopg.connect(args.url, autocommit=True) as admin:
                admin.execute(f"CREATE SCHEMA {schema}")
            (postgres.Connection.hold, postgres.Connection.pipelined,
             postgres.PostgresStore.grouping, postgres.PostgresStore.pipelining,
             postgres.Connection.deferring) = WAYS[way]
            try:
                figures.setdefault(way, []).append(asyncio.run(
                    measure(through(args.url, address, schema), args.events, args.rounds)))
            finally:
                with psycopg.connect(args.url, autocommit=True) as admin:
                    admin.execute(f"DROP SCHEMA {schema} CASCADE")
        if proxy is not None:
            proxy.kill()
        line = [f"{setting} ms each way:" if proxy else "direct (no proxy):"]
        for way in ways:
            writer = " / ".join(f"{w:.2f}" for w, _ in figures[way])
            cpu = " / ".join(f"{c:.2f}" for _, c in figures[way])
            line.append(f"{way}: writer {writer} ms/event, CPU {cpu} ms/event;")
        best = {way: min(w for w, _ in runs) for way, runs in figures.items()}
        line.append(", ".join(f"{way} / {ways[0]} {best[way] / best[ways[0]]:.2f}"
                              for way in ways[1:]))
        print(" ".join(line), flush=True)


if __name__ == "__main__":
    main()
