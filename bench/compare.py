"""Ingest against peers, in one run: webhook-bridge, a bare Starlette app, adnanh/webhook.

    python bench/compare.py [--count 4000] [--concurrency 32]

The same load for all three, from bench/loadgen.py: signed GitHub push events of ~1.2 KB and
~25 KB over 32 keep-alive connections. adnanh/webhook (Debian package `webhook`) verifies the same
HMAC-SHA256 signature and runs /bin/true; it stores nothing, so webhook-bridge (which verifies,
dedupes and fsyncs every event before answering) matching it is the point of the comparison.
Prints events/s, p50/p99/p99.9, CPU seconds per 1,000 events, RSS, and ratios to the bare app.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402
import loadgen  # noqa: E402

SECRET = ingest.SECRET


def webhook_hooks(directory: Path) -> Path:
    path = directory / "hooks.json"
    path.write_text(json.dumps([{
        "id": "github",
        "execute-command": "/bin/true",
        "response-message": "accepted",
        "trigger-rule-mismatch-http-response-code": 401,  # by default a mismatch answers 200
        "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": SECRET,
                                   "parameter": {"source": "header",
                                                 "name": "X-Hub-Signature-256"}}},
    }]))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(f"machine: {loadgen.machine()}")
    webhook = shutil.which("webhook")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ports = {name: loadgen.free_port() for name in ("bare", "bridge", "webhook")}
        procs = {
            "bare": loadgen.spawn([loadgen.python(), "-m", "uvicorn", "bare_app:app", "--port",
                                   str(ports["bare"]), "--log-level", "warning",
                                   "--no-access-log", "--app-dir", str(Path(__file__).parent)]),
            "bridge": loadgen.spawn([loadgen.python(), "-m", "bridge", "serve", "--config",
                                     str(ingest.bridge_config(directory, ports["bridge"]))]),
        }
        if webhook:
            procs["webhook"] = loadgen.spawn([webhook, "-hooks", str(webhook_hooks(directory)),
                                              "-ip", "127.0.0.1", "-port",
                                              str(ports["webhook"])])
        else:
            print("adnanh/webhook is not installed (apt-get install webhook): its rows are "
                  "left out")
        try:
            loadgen.wait_healthy(f"http://127.0.0.1:{ports['bare']}/", procs["bare"])
            loadgen.wait_healthy(f"http://127.0.0.1:{ports['bridge']}/healthz", procs["bridge"])
            if webhook:
                loadgen.wait_healthy(f"http://127.0.0.1:{ports['webhook']}/", procs["webhook"])
            names = [("bare starlette (202)", "bare"), ("webhook-bridge (durable)", "bridge"),
                     ("adnanh/webhook 2.8", "webhook")]
            for size in (1200, 25_000):
                print(f"\n~{size / 1000:g} KB events, {args.count} per target, "
                      f"{args.concurrency} connections")
                print(loadgen.HEADER + f" {'cpu s/1k':>9} {'rss MB':>7}")
                baseline = None
                for label, key in names:
                    if key not in procs:
                        continue
                    result, cpu, rss = asyncio.run(ingest.measure(
                        f"{label}", ports[key], procs[key].pid, args.count, size,
                        args.concurrency, prefix=f"{key}{size}"))
                    baseline = baseline or result
                    print(result.row(baseline) + f"  cpu/1k={cpu:.3f}s rss={rss:.0f}MB")
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(15)


if __name__ == "__main__":
    main()
