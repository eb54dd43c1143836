"""Ingest with a filter and an input mapping on every event, against the same route without
them, in one run (1.2 KB GitHub pushes).

The bridge runs as one worker pinned to the last core; `wrk` (one thread, 32 connections)
drives it from core 0, replaying pre-signed requests with distinct delivery ids and bodies (a
Lua script cycles through them), so the load generator is not the thing measured. The forwarder
is off: only the accept path, where glue runs, is measured. The two configurations alternate,
`--rounds` times each.

    python bench/glue.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

SECRET = "bench-secret"
GLUE = """
filter = "body.ref == 'refs/heads/main' && body.repository.full_name == 'octocat/Hello-World'"
input = { ref = "body.ref", repo = "body.repository.full_name", pusher = "body.pusher.name", \
commit = "body.after", n = "body.n" }
"""
LUA = """
local reqs = {}
local i = 0
init = function(args)
  local f = io.open(args[1], "rb")
  local data = f:read("*a")
  f:close()
  for r in string.gmatch(data, "(.-)\\n@@@@\\n") do table.insert(reqs, r) end
end
request = function()
  i = i + 1
  return reqs[(i - 1) % #reqs + 1]
end
"""


def config(directory: Path, port: int, glue: bool) -> Path:
    path = directory / "glue.toml"
    path.write_text(f"""
[server]
port = {port}
[store]
path = "{directory / 'glue.db'}"
[forwarder]
enabled = false
[[sources]]
name = "github"
provider = "github"
secret = "{SECRET}"
[[routes]]
source = "github"
trigger = "deploy"
events = ["push"]
{GLUE if glue else ""}
""")
    return path


def wrk_run(directory: Path, port: int, seconds: int, count: int, prefix: str
            ) -> tuple[float, float, float]:
    requests = loadgen.github_requests(count, 1200, SECRET, "/hooks/github", port, prefix)
    data = directory / f"{prefix}.txt"
    data.write_bytes(b"".join(r + b"\n@@@@\n" for r in requests))
    script = directory / "replay.lua"
    script.write_text(LUA)
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c32", f"-d{seconds}s",
                          "--latency", "-s", str(script), f"http://127.0.0.1:{port}/", "--",
                          str(data)], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        match = re.search(rf"{label}%\s+([0-9.]+)(us|ms|s)", out)
        assert match, out
        value = float(match.group(1))
        return value / 1000 if match.group(2) == "us" else value * 1000 \
            if match.group(2) == "s" else value

    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw non-2xx answers:\n{out}")
    return rate, pct("50"), pct("99")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset"):
        raise SystemExit("needs wrk and taskset (Debian: apt-get install wrk util-linux)")
    print(f"machine: {loadgen.machine()}")
    core = str((os.cpu_count() or 1) - 1)
    results: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for round_ in range(args.rounds):
            for glue in (False, True):
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{directory / 'glue.db'}{suffix}").unlink(missing_ok=True)
                port = loadgen.free_port()
                proc = loadgen.spawn(["taskset", "-c", core, loadgen.python(), "-m", "bridge",
                                      "serve", "--config", str(config(directory, port, glue))])
                try:
                    loadgen.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
                    # Enough distinct requests that none repeats within the run.
                    result = wrk_run(directory, port, args.seconds, 6000 * args.seconds,
                                     f"r{round_}{int(glue)}")
                finally:
                    proc.terminate()
                    proc.wait(15)
                results[glue].append(result)
                label = "filter + input" if glue else "no glue"
                print(f"round {round_ + 1} {label:<15} {result[0]:8.0f} events/s  "
                      f"p50 {result[1]:6.2f} ms  p99 {result[2]:6.2f} ms")
    plain = sorted(r[0] for r in results[False])
    glued = sorted(r[0] for r in results[True])
    ratios = [g / p for g, p in zip((r[0] for r in results[True]),
                                    (r[0] for r in results[False]), strict=True)]
    print(f"median: no glue {plain[len(plain) // 2]:.0f} events/s, filter + input "
          f"{glued[len(glued) // 2]:.0f} events/s; ratio per round "
          + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
