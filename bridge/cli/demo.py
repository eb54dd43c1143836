"""`bridge demo`: the whole path in one command.

Starts the platform emulator and a callback receiver in this process and a bridge (`bridge serve`)
beside them on free ports, with a throwaway config and store, then sends a signed GitHub event and
a signed Stripe event and prints each step as it happens: received -> forwarded -> executed ->
callback (with the callback's Standard Webhooks signature checked).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge import signing
from bridge.devtools.emulator import Emulator, EmulatorServer, Settings
from bridge.devtools.signers import github, stripe

CALLBACK_SECRET = "whsec_ZGVtby1jYWxsYmFjay1zaWduaW5nLWtleS0wMDA="
GITHUB_SECRET = "demo-github-secret"
STRIPE_SECRET = "whsec_demo_stripe_secret"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        app = Starlette(routes=[Route("/callbacks", self.receive, methods=["POST"])])
        self.port = _port()
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_config=None,
                                                    access_log=False, lifespan="off"))
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.01)

    async def receive(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)


def say(step: str, text: str) -> None:
    print(f"  {step:<10} {text}", flush=True)


def run() -> int:
    emulator = EmulatorServer(Emulator(Settings(trigger_key="demo-trigger-key",
                                                api_key="demo-api-key", execution_delay=0.5)))
    emulator.start()
    receiver = Receiver()
    port = _port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "demo.toml"
        config.write_text(f"""
[server]
port = {port}
log_format = "text"
[store]
path = "{Path(tmp) / 'demo.db'}"
[platform]
base_url = "{emulator.base_url}"
trigger_key = "demo-trigger-key"
api_key = "demo-api-key"
[tracking]
poll_initial = "200ms"
[callbacks]
signing_secret = "{CALLBACK_SECRET}"
[[sources]]
name = "github"
provider = "github"
secret = "{GITHUB_SECRET}"
[[sources]]
name = "stripe"
provider = "stripe"
secret = "{STRIPE_SECRET}"
[[routes]]
source = "github"
trigger = "triage-pull-request"
events = ["pull_request.*"]
callbacks = ["http://127.0.0.1:{receiver.port}/callbacks"]
[[routes]]
source = "stripe"
trigger = "record-payment"
callbacks = ["http://127.0.0.1:{receiver.port}/callbacks"]
""")
        log = open(Path(tmp) / "bridge.log", "wb")  # noqa: SIM115
        bridge = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--config",
                                   str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(f"{url}/healthz", bridge)
            print(f"bridge on {url}, platform emulator on {emulator.base_url}\n")
            github_body = json.dumps({"action": "opened", "number": 42, "pull_request": {
                "title": "Add retries", "user": {"login": "octocat"}}}).encode()
            headers = github(github_body, GITHUB_SECRET, int(time.time()), "")
            headers["X-GitHub-Event"] = "pull_request"
            _journey("GitHub pull_request.opened", url, "github", github_body, headers, receiver)
            stripe_body = json.dumps({"id": "evt_demo_1", "type": "payment_intent.succeeded",
                                      "data": {"object": {"amount": 4200,
                                                          "currency": "eur"}}}).encode()
            _journey("Stripe payment_intent.succeeded", url, "stripe", stripe_body,
                     stripe(stripe_body, STRIPE_SECRET, int(time.time()), ""), receiver)
            again = httpx.post(f"{url}/hooks/stripe", content=stripe_body, headers=stripe(
                stripe_body, STRIPE_SECRET, int(time.time()), ""))
            print(f"Stripe redelivers evt_demo_1: HTTP {again.status_code}, duplicate="
                  f"{again.json()['duplicate']}; executions at the platform: "
                  f"{len(emulator.emulator.executions_for('record-payment'))}")
        finally:
            bridge.terminate()
            bridge.wait(15)
            log.close()
            receiver.server.should_exit = True
            emulator.stop()
    return 0


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the bridge did not start")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit("the bridge did not start in time")


def _journey(title: str, url: str, source: str, body: bytes, headers: dict[str, str],
             receiver: Receiver) -> None:
    print(title)
    started = time.monotonic()
    ack = httpx.post(f"{url}/hooks/{source}", content=body, headers=headers).json()
    say("received", f"{_ms(started)}  202, event {ack['id']}, key {ack['idempotency_key']}")
    seen: set[str] = set()
    expected = len(receiver.received) + 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # Looked at before the view: a callback is sent only once its execution is stored as
        # finished, so a view read after it arrived shows that execution.
        arrived = len(receiver.received) >= expected
        view: dict[str, Any] = httpx.get(ack["status_url"]).json()
        delivery = view["deliveries"][0] if view["deliveries"] else None
        if delivery and delivery["status"] == "delivered" and "forwarded" not in seen:
            seen.add("forwarded")
            say("forwarded", f"{_ms(started)}  trigger {delivery['trigger']}, execution "
                             f"{delivery['execution_id']}")
        execution = delivery and delivery.get("execution")
        if execution and execution["status"] in ("completed", "failed") and "executed" not in seen:
            seen.add("executed")
            say("executed", f"{_ms(started)}  {execution['status']}, output "
                            f"{json.dumps(execution['output'])[:70]}...")
        if arrived:
            headers_in, payload = receiver.received[expected - 1]
            expect = signing.headers(signing.decode_secret(CALLBACK_SECRET), headers_in["webhook-id"],
                                       int(headers_in["webhook-timestamp"]), payload)
            valid = expect["webhook-signature"] == headers_in["webhook-signature"]
            say("callback", f"{_ms(started)}  {json.loads(payload)['type']}, webhook-id "
                            f"{headers_in['webhook-id']}, signature "
                            f"{'valid' if valid else 'INVALID'}")
            print()
            return
        time.sleep(0.05)
    say("timeout", "the journey did not finish in 20 s")


def _ms(started: float) -> str:
    return f"+{(time.monotonic() - started) * 1000:5.0f} ms"
