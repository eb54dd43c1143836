"""Ingest on PostgreSQL with 1, 2 and 3 replicas, beside one process on SQLite, in one run.

Each bridge is one worker (forwarder off: the accept path only); a lone bridge (SQLite, or one
replica) is pinned to the last core, several replicas share both. One `wrk` per replica (one
thread, `--connections` each, 16 by default, on core 0) replays pre-signed 1.2 KB GitHub pushes
with distinct ids for `--seconds`. Printed per setup: events/s, p50/p99 ack latency (the worst
replica's), and CPU ms per event spent by the bridges and by PostgreSQL (every process of the
database's user), so the cost per event shows what more cores would carry when this machine
has too few to show it.

    python bench/replicas.py [--seconds 10] [--connections 16]
                             [--url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glue  # noqa: E402
import loadgen  # noqa: E402


def config(directory: Path, name: str, port: int, store: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f"""
[server]
port = {port}
[store]
{store}
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
    return path


def user_cpu(user: str) -> float:
    """CPU seconds of every process of `user` (PostgreSQL's server and its backends)."""
    uid = pwd.getpwnam(user).pw_uid
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    total += loadgen.cpu_seconds(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return total


def run(directory: Path, stores: list[str], seconds: int, label: str,
        connections: int = 16) -> None:
    ports = [loadgen.free_port() for _ in stores]
    # One bridge is pinned to the last core, as in the other benches, so SQLite and one
    # PostgreSQL replica are compared on the same footing; several replicas are left to the
    # scheduler, to use both cores between them.
    pin = ["taskset", "-c", str((os.cpu_count() or 1) - 1)] if len(stores) == 1 else []
    procs = [loadgen.spawn([*pin, loadgen.python(), "-m", "bridge", "serve", "--config",
                            str(config(directory, f"{label}{i}", port, store))])
             for i, (port, store) in enumerate(zip(ports, stores, strict=True))]
    try:
        for port, proc in zip(ports, procs, strict=True):
            loadgen.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        scripts = []
        for i, port in enumerate(ports):
            requests = loadgen.github_requests(4000 * seconds, 1200, glue.SECRET,
                                               "/hooks/github", port, f"{label}{i}")
            data = directory / f"{label}{i}.txt"
            data.write_bytes(b"".join(r + b"\n@@@@\n" for r in requests))
            scripts.append(data)
        lua = directory / "replay.lua"
        lua.write_text(glue.LUA)
        cpu0 = [loadgen.cpu_seconds(p.pid) for p in procs]
        pg0 = user_cpu("postgres")
        wrks = [subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                                  "--latency", "-s", str(lua), f"http://127.0.0.1:{port}/",
                                  "--", str(data)], stdout=subprocess.PIPE, text=True)
                for port, data in zip(ports, scripts, strict=True)]
        outs = [w.communicate()[0] for w in wrks]
        bridge_cpu = sum(loadgen.cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0,
                                                                        strict=True))
        pg_cpu = user_cpu("postgres") - pg0
        rates = [float(glue.re.search(r"Requests/sec:\s+([0-9.]+)", o).group(1))  # type: ignore[union-attr]
                 for o in outs]
        total = sum(rates)
        events = total * seconds
        p99 = max(_pct(o, "99") for o in outs)
        p50 = max(_pct(o, "50") for o in outs)
        print(f"{label:<22} {total:8.0f} events/s  p50 {p50:6.1f} ms  p99 {p99:7.1f} ms  "
              f"bridge {bridge_cpu / events * 1000:.3f} CPU ms/event  "
              f"postgres {pg_cpu / events * 1000:.3f} CPU ms/event")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)


def _pct(out: str, label: str) -> float:
    match = glue.re.search(rf"{label}%\s+([0-9.]+)(us|ms|s)", out)
    assert match, out
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "us" else value * 1000 \
        if match.group(2) == "s" else value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--connections", type=int, default=16, help="per replica")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk (Debian: apt-get install wrk)")
    print(f"machine: {loadgen.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        run(directory, [f'path = "{directory / "sqlite.db"}"'], args.seconds, "sqlite, 1 process",
            args.connections)
        for count in (1, 2, 3):
            schema = f"bench_{secrets.token_hex(4)}"
            with psycopg.connect(args.url, autocommit=True) as admin:
                admin.execute(f"CREATE SCHEMA {schema}")
            url = f"{args.url}?options=-csearch_path%3D{schema}"
            try:
                run(directory, [f'url = "{url}"'] * count, args.seconds,
                    f"postgres, {count} replica{'s' if count > 1 else ''}", args.connections)
            finally:
                with psycopg.connect(args.url, autocommit=True) as admin:
                    admin.execute(f"DROP SCHEMA {schema} CASCADE")



if __name__ == "__main__":
    main()
