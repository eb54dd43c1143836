"""Relay benchmark: 1,000 executions finishing at once -> signed callbacks.

    python bench/relay.py [--count 1000] [--rounds 2]

The emulator (own process) is told to end every execution at one moment, a few seconds after the
last webhook is sent, so all of them finish at once. The bridge follows them as it would by default
at that rate: the newest 500 on its execution lists (`[tracking] list_limit`), the rest with SSE
streams (max_streams = count); it relays each completion to a receiver in this process. Prints
completions relayed per second, the delay from each execution's end (the emulator's
completed_at) to the callback's arrival (p50/p99), and the bridge's RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
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
arrivals: dict[str, float] = {}


async def receive(request: Request) -> Response:
    body = await request.body()
    execution = json.loads(body)["data"]["execution"]["id"]
    arrivals.setdefault(execution, time.time())
    return Response(status_code=204)


def start_receiver(port: int) -> uvicorn.Server:
    app = Starlette(routes=[Route("/done", receive, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, access_log=False,
                                           lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {loadgen.machine()}")
    receiver_port, platform_port, port = (loadgen.free_port() for _ in range(3))
    receiver = start_receiver(receiver_port)
    emulator = loadgen.spawn([loadgen.python(), "-m", "bridge", "emulator", "--port",
                              str(platform_port), "--trigger-key", TRIGGER_KEY, "--api-key",
                              API_KEY, "--execution-delay", "0.1"])
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "relay.toml"
        config.write_text(f"""
[server]
port = {port}
[store]
path = "{Path(tmp) / 'relay.db'}"
[platform]
base_url = "http://127.0.0.1:{platform_port}/api/v1"
trigger_key = "{TRIGGER_KEY}"
api_key = "{API_KEY}"
[tracking]
max_streams = {args.count}
concurrency = {args.count + 50}
batch_size = 256
[callbacks]
signing_secret = "whsec_YmVuY2gtY2FsbGJhY2stc2lnbmluZy1rZXk="
concurrency = 64
[[sources]]
name = "github"
provider = "github"
secret = "{SECRET}"
[[routes]]
source = "github"
trigger = "bench"
callbacks = ["http://127.0.0.1:{receiver_port}/done"]
""")
        bridge = loadgen.spawn([loadgen.python(), "-m", "bridge", "serve", "--config",
                                str(config)])
        try:
            loadgen.wait_healthy(f"http://127.0.0.1:{platform_port}/_emulator/calls", emulator)
            loadgen.wait_healthy(f"http://127.0.0.1:{port}/healthz", bridge)
            rss = [loadgen.rss_mb(bridge.pid)]
            results = []
            for round_ in range(args.rounds):
                arrivals.clear()
                control = f"http://127.0.0.1:{platform_port}/_emulator"
                httpx.post(f"{control}/reset")
                finish_at = time.time() + 3600
                httpx.post(f"{control}/settings", json={"finish_at": finish_at})
                requests = loadgen.github_requests(args.count, 1200, SECRET, "/hooks/github",
                                                   port, prefix=f"r{round_}")
                sent = time.time()
                asyncio.run(loadgen.drive("send", port, requests))
                wait_started = time.time()
                while time.time() - wait_started < 60:  # until every execution is being tracked
                    executions = httpx.get(f"{control}/executions", timeout=30).json()
                    if len(executions) == args.count:
                        break
                    time.sleep(0.2)
                finish_at = time.time() + 3
                httpx.post(f"{control}/settings", json={"finish_at": finish_at})
                # Executions created before this moment still carry the old end: end them now.
                httpx.post(f"{control}/finish", json={"at": finish_at})
                print(f"round {round_ + 1}: sent {args.count} webhooks in "
                      f"{wait_started - sent:.2f} s; every execution ends at once")
                deadline = time.time() + 120
                while len(arrivals) < args.count and time.time() < deadline:
                    time.sleep(0.05)
                executions = httpx.get(f"{control}/executions", timeout=30).json()
                results.append(summarise(dict(arrivals), executions))
                rss.append(loadgen.rss_mb(bridge.pid))
        finally:
            bridge.terminate()
            emulator.terminate()
            bridge.wait(15)
            emulator.wait(15)
            receiver.should_exit = True
    for i, line in enumerate(results):
        print(f"round {i + 1}: {line}")
    print("bridge RSS (MB): before " + ", after round ".join(
        [f"{rss[0]:.0f}"] + [f"{i + 1}: {r:.0f}" for i, r in enumerate(rss[1:])]))


def summarise(received: dict[str, float], executions: list[dict[str, object]]) -> str:
    ended = {str(e["id"]): datetime.fromisoformat(str(e["completed_at"]).replace("Z", "+00:00"))
             .timestamp() for e in executions if e["completed_at"]}
    delays = sorted(received[i] - ended[i] for i in received if i in ended)
    if not delays:
        return "no callbacks"
    span = max(received.values()) - min(ended.values())
    pct = lambda p: delays[min(len(delays) - 1, int(len(delays) * p))] * 1000  # noqa: E731
    return (f"{len(received)} callbacks for {len(ended)} ended executions; "
            f"{len(received) / span:.0f} completions relayed/s; end -> callback p50 "
            f"{pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, max {delays[-1] * 1000:.0f} ms")

if __name__ == "__main__":
    main()
