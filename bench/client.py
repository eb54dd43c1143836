"""Outbound HTTP client cost: CPU per request on the client side, against a bare app.

    python bench/client.py [--requests 20000] [--old-transport PATH/bridge/transport.py]
                           [--paced 300]

A Starlette app that answers 202 with a small JSON body runs under uvicorn in its own process,
pinned to one core; the client runs here, pinned to the other, and sends 1.2 KB POSTs with 32 in
flight. Printed per client: requests/s and the client process's CPU per request (user + system),
which is what each outbound call costs the bridge. `--old-transport` loads a hand-written
transport module by path (e.g. from a checkout of an older build) to compare it in the same run.

`--paced RATE` then sends through the bridge's client at a steady RATE per second: one request
at a time as each falls due, and the same rate in groups of 2, 3 and 6 sent together. It prints
each one's CPU per request beside the 32-in-flight figure: what a request costs when it comes
alone (every request its own wake-ups) rather than in company, which is most of why the whole
loop costs more per event at a steady few hundred per second than at saturation. The figure
includes the pacing timer, one wake-up per group, as each arriving event wakes the bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import loadgen  # noqa: E402

from bridge.web.client import Client  # noqa: E402

BODY = b'{"payload":"' + b"x" * 1180 + b'"}'
HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "bench-key-1",
           "Authorization": "Bearer bench"}
APP = """
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def trigger(request):
    await request.body()
    return Response(b'{"execution_id":"exe_1","status":"pending"}', 202,
                    media_type="application/json")

app = Starlette(routes=[Route("/t", trigger, methods=["POST"])])
"""

Send = Callable[[], Awaitable[int]]


async def drive(send: Send, total: int, concurrency: int = 32) -> tuple[float, float]:
    """(requests/s, CPU µs per request) for `total` requests."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await send()
            assert status == 202, status

    for _ in range(200):  # warm the pool
        await send()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return total / wall, cpu / total * 1e6


async def aiohttp_raw(url: str, total: int) -> tuple[float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        async def send() -> int:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                return response.status
        return await drive(send, total)


async def bridge_client(url: str, total: int) -> tuple[float, float]:
    client = Client(32, timeout=30.0)
    try:
        async def send() -> int:
            return (await client.request("POST", url, body=BODY, headers=HEADERS)).status
        return await drive(send, total)
    finally:
        await client.aclose()


async def httpx_default(url: str, total: int) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(limits=limits) as client:
        async def send() -> int:
            return (await client.post(url, content=BODY, headers=HEADERS)).status_code
        return await drive(send, total)


async def paced(url: str, rate: float, seconds: float, group: int) -> float:
    """CPU µs per request through the bridge's client at a steady `rate`, `group` at a time."""
    client = Client(32, timeout=30.0)
    try:
        async def send() -> None:
            assert (await client.request("POST", url, body=BODY, headers=HEADERS)).status == 202

        for _ in range(200):
            await send()
        rounds = int(rate * seconds / group)
        tasks = []
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(rounds):
            delay = t0 + i * group / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.extend(asyncio.create_task(send()) for _ in range(group))
        await asyncio.gather(*tasks)
        return (time.process_time() - cpu0) / (rounds * group) * 1e6
    finally:
        await client.aclose()


def old_transport(path: str) -> Callable[[str, int], Awaitable[tuple[float, float]]]:
    spec = importlib.util.spec_from_file_location("old_transport", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def run(url: str, total: int) -> tuple[float, float]:
        async with module.client(32) as client:
            async def send() -> int:
                return int((await client.post(url, content=BODY, headers=HEADERS)).status_code)
            return await drive(send, total)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--old-transport", help="path to a transport.py to compare")
    parser.add_argument("--paced", type=float, help="also a steady rate per second, alone and"
                        " in groups")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    port = loadgen.free_port()
    app_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-client-{os.getpid()}"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "bare_app.py").write_text(APP)
    server = loadgen.spawn(["taskset", "-c", "1", loadgen.python(), "-m", "uvicorn",
                            "--app-dir", str(app_dir), "bare_app:app", "--port", str(port),
                            "--log-level", "warning", "--no-access-log"])
    url = f"http://127.0.0.1:{port}/t"
    try:
        loadgen.wait_healthy(f"http://127.0.0.1:{port}/", server)
        print(f"machine: {loadgen.machine()}; {args.requests} POSTs of {len(BODY)} B, "
              "32 in flight, client on core 0, server on core 1")
        clients: dict[str, Callable[[str, int], Awaitable[tuple[float, float]]]] = {
            "aiohttp ClientSession": aiohttp_raw, "bridge.web.client.Client (aiohttp)": bridge_client,
            "httpx default transport": httpx_default}
        if args.old_transport:
            clients["old hand-written transport under httpx"] = old_transport(args.old_transport)
        results = {}
        for name, run in clients.items():
            total = args.requests if "default" not in name else args.requests // 4
            rate, cpu = asyncio.run(run(url, total))
            results[name] = cpu
            print(f"{name:42s} {rate:8,.0f} req/s  {cpu:7.0f} µs CPU per request")
        base = results["bridge.web.client.Client (aiohttp)"]
        for name, cpu in results.items():
            print(f"  {name:40s} {cpu / base:5.2f}x the bridge client's CPU")
        if args.paced:
            for group in (1, 2, 3, 6):
                cpu = asyncio.run(paced(url, args.paced, 10.0, group))
                print(f"bridge client at {args.paced:.0f}/s, {group} at a time:"
                      f" {cpu:7.0f} µs CPU per request ({cpu / base:.2f}x at 32 in flight)")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
