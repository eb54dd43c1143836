"""A small, fast HTTP/1.1 load generator: keep-alive connections, pre-rendered requests.

Used the same way against every target so that ratios compare servers, not clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    name: str
    count: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000

    def row(self, baseline: Result | None = None) -> str:
        ratio = f"{self.rate / baseline.rate:6.2f}" if baseline else "     -"
        return (f"{self.name:<28} {self.rate:9.0f} {self.pct(0.5):8.2f} {self.pct(0.99):8.2f} "
                f"{self.pct(0.999):8.2f} {ratio}  {dict(sorted(self.statuses.items()))}")


HEADER = (f"{'target':<28} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} "
          f"{'ratio':>6}  statuses")


def github_body(i: int, size: int, delivery: str = "") -> bytes:
    # Each push names its own commit, as real ones do (the bridge treats a signed body seen
    # before as a replay, whatever its delivery id).
    commit = hashlib.sha1(f"{delivery}:{i}".encode()).hexdigest()
    event = {"ref": "refs/heads/main", "after": commit,
             "repository": {"id": 1296269, "full_name": "octocat/Hello-World"},
             "pusher": {"name": "octocat", "email": "octocat@example.com"}, "n": i}
    base = json.dumps(event)
    pad = max(0, size - len(base) - 12)
    event["padding"] = "x" * pad
    return json.dumps(event).encode()


def github_requests(count: int, size: int, secret: str, path: str, port: int,
                    prefix: str = "bench") -> list[bytes]:
    out = []
    for i in range(count):
        body = github_body(i, size, prefix)
        sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nX-GitHub-Event: push\r\n"
                f"X-GitHub-Delivery: {prefix}-{i}\r\nX-Hub-Signature-256: sha256={sig}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        out.append(head.encode() + body)
    return out


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def drive(name: str, port: int, requests: list[bytes], concurrency: int = 32) -> Result:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while queue:
                request = queue.pop()
                t0 = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, len(requests), time.perf_counter() - started, latencies, statuses)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def spawn(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a process; its output goes to $BENCH_LOG_DIR/<pid>.log when that is set."""
    out: object = subprocess.DEVNULL
    log_dir = os.environ.get("BENCH_LOG_DIR")
    if log_dir:
        out = open(Path(log_dir) / f"{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,  # type: ignore[call-overload]
                            cwd=ROOT, env={**os.environ}, **kwargs)


def python() -> str:
    return sys.executable


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}"


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0
