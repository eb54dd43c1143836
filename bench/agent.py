"""The outbound-only agent: ack -> on-prem trigger latency, and catching up on a backlog.

1. Latency. An edge and an agent on loopback, the agent connected (long poll), events sent at a
   steady rate: the time from the edge's 202 to the trigger call reaching the on-prem platform
   (the emulator records when each call arrived). Baseline, same run: the same edge with the
   route sent by its own forwarder, no agent in between.
2. Catch-up. The agent offline while `--backlog` events arrive; then it starts. Measured: how
   fast the backlog lands in the agent's store (its outbox; `bridge_agent_events_received`), how
   long until the platform has been called for every event, and the agent's RSS while draining.

The edge is pinned to core 0 and the agent to the last core with `taskset` where there is one;
the emulator and the load generator share the machine (see docs/performance.md).

    python bench/agent.py [--backlog 100000] [--count 1000] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forward  # noqa: E402
import loadgen  # noqa: E402

SECRET = "bench-github-secret"
TRIGGER_KEY = "bench-trigger-key"
TOKEN = "bench-agent-token-0123456789"
CHANNEL_SECRET = "whsec_" + base64.b64encode(b"bench-channel-signing-key").decode()


def edge_config(directory: Path, port: int, platform_port: int, channel: bool) -> Path:
    route = 'channel = "plant"' if channel else ""
    path = directory / "edge.toml"
    path.write_text(f"""
[server]
port = {port}
[store]
path = "{directory / 'edge.db'}"
[platform]
base_url = "http://127.0.0.1:{platform_port}/api/v1"
trigger_key = "{TRIGGER_KEY}"
[forwarder]
poll_interval = "50ms"
[[sources]]
name = "github"
provider = "github"
secret = "{SECRET}"
[[channels]]
name = "plant"
tokens = ["{TOKEN}"]
signing_secret = "{CHANNEL_SECRET}"
[[routes]]
source = "github"
trigger = "bench"
{route}
""")
    return path


def agent_config(directory: Path, port: int, edge_port: int, platform_port: int) -> Path:
    path = directory / "agent.toml"
    path.write_text(f"""
[server]
port = {port}
[store]
path = "{directory / 'agent.db'}"
[platform]
base_url = "http://127.0.0.1:{platform_port}/api/v1"
trigger_key = "{TRIGGER_KEY}"
[forwarder]
poll_interval = "50ms"
[edge]
url = "http://127.0.0.1:{edge_port}"
channel = "plant"
token = "{TOKEN}"
signing_secret = "{CHANNEL_SECRET}"
batch_size = 500
""")
    return path


def pinned(core: int, args: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *args]
    return args


def start(args: list[str], health: str):  # type: ignore[no-untyped-def]
    proc = loadgen.spawn(args)
    loadgen.wait_healthy(health, proc)
    return proc


def wipe(directory: Path) -> None:
    for name in ("edge.db", "agent.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(directory / f"{name}{suffix}").unlink(missing_ok=True)


def stored(agent_port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{agent_port}/metrics", timeout=10).text
    match = re.search(r'bridge_agent_events_received_total\{outcome="stored"\} ([0-9.e+]+)', text)
    return int(float(match.group(1))) if match else 0


def calls(platform_port: int) -> list[dict[str, object]]:
    return httpx.get(f"http://127.0.0.1:{platform_port}/_emulator/calls", timeout=60).json()


def latency(directory: Path, platform_port: int, count: int, rate: float,
            channel: bool) -> list[float]:
    wipe(directory)
    httpx.post(f"http://127.0.0.1:{platform_port}/_emulator/reset")
    edge_port, agent_port = loadgen.free_port(), loadgen.free_port()
    cores = (os.cpu_count() or 1) - 1
    edge = start(pinned(0, [loadgen.python(), "-m", "bridge", "serve", "--config",
                            str(edge_config(directory, edge_port, platform_port, channel))]),
                 f"http://127.0.0.1:{edge_port}/healthz")
    agent = None
    if channel:
        agent = start(pinned(cores, [
            loadgen.python(), "-m", "bridge", "agent", "--config",
            str(agent_config(directory, agent_port, edge_port, platform_port))]),
            f"http://127.0.0.1:{agent_port}/healthz")
        time.sleep(1)  # connected: its long poll is open
    try:
        acks = asyncio.run(forward.paced(edge_port, count, rate, SECRET))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen = {c["key"] for c in calls(platform_port)}
            if all(k in seen for k in acks):
                break
            time.sleep(0.2)
        first: dict[str, float] = {}
        for call in calls(platform_port):
            first.setdefault(str(call["key"]), float(call["at"]))  # type: ignore[arg-type]
        return sorted(first[k] - t for k, t in acks.items() if k in first)
    finally:
        for proc in (agent, edge):
            if proc is not None:
                proc.terminate()
                proc.wait(15)


def catch_up(directory: Path, platform_port: int, backlog: int) -> None:
    wipe(directory)
    httpx.post(f"http://127.0.0.1:{platform_port}/_emulator/reset")
    edge_port, agent_port = loadgen.free_port(), loadgen.free_port()
    cores = (os.cpu_count() or 1) - 1
    edge = start(pinned(0, [loadgen.python(), "-m", "bridge", "serve", "--config",
                            str(edge_config(directory, edge_port, platform_port, True))]),
                 f"http://127.0.0.1:{edge_port}/healthz")
    try:
        t0 = time.perf_counter()
        for start_at in range(0, backlog, 20000):  # built a slice at a time: bounded memory
            n = min(20000, backlog - start_at)
            requests = loadgen.github_requests(n, 1200, SECRET, "/hooks/github", edge_port,
                                               f"bk{start_at}")
            result = asyncio.run(loadgen.drive("fill", edge_port, requests))
            assert result.statuses.get(202) == n, result.statuses
        print(f"backlog: {backlog} events stored at the edge in "
              f"{time.perf_counter() - t0:.0f} s, no agent connected")
        agent = start(pinned(cores, [
            loadgen.python(), "-m", "bridge", "agent", "--config",
            str(agent_config(directory, agent_port, edge_port, platform_port))]),
            f"http://127.0.0.1:{agent_port}/healthz")
        began = time.perf_counter()
        rss: list[float] = []
        marks: list[tuple[float, int]] = []
        try:
            while (n := stored(agent_port)) < backlog:
                rss.append(loadgen.rss_mb(agent.pid))
                marks.append((time.perf_counter() - began, n))
                if time.perf_counter() - began > 1800:
                    raise RuntimeError(f"not drained after 30 min: {n}")
                time.sleep(0.5)
            intake = time.perf_counter() - began
            rss.append(loadgen.rss_mb(agent.pid))
            while len(calls(platform_port)) < backlog:
                time.sleep(1)
            forwarded = time.perf_counter() - began
            quarter = [rss[len(rss) * q // 4] for q in range(4)] + [rss[-1]]
            print(f"catch-up: {backlog} events into the agent's store in {intake:.1f} s = "
                  f"{backlog / intake:.0f} events/s; every trigger call made after "
                  f"{forwarded:.1f} s = {backlog / forwarded:.0f} events/s")
            print("agent RSS (MB) at 0/25/50/75/100 % of the intake: "
                  + " / ".join(f"{m:.0f}" for m in quarter)
                  + f"; max {max(rss):.0f}")
        finally:
            agent.terminate()
            agent.wait(15)
    finally:
        edge.terminate()
        edge.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
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
            for label, channel in (("edge forwarder (baseline)", False),
                                   ("through the agent", True)):
                lat = latency(directory, platform_port, args.count, args.rate, channel)
                pct = lambda p, lat=lat: lat[min(len(lat) - 1, int(len(lat) * p))] * 1000  # noqa: E731
                print(f"ack -> trigger, {label}, {args.rate:.0f} events/s: {len(lat)} events, "
                      f"p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, "
                      f"max {lat[-1] * 1000:.1f} ms")
            catch_up(directory, platform_port, args.backlog)
    finally:
        emulator.terminate()
        emulator.wait(15)


if __name__ == "__main__":
    main()
