"""The libraries' floor for the whole loop: what its three HTTP exchanges cost with nothing else.

    python bench/bare_loop.py --port P --platform URL --callback URL --trigger-key K --signing S

`bench/loop.py` starts this on the bridge's core, in the same run, as its baseline. Per webhook
it does only what no gateway built on these libraries can skip: read the request and answer 202
(uvicorn with httptools and Starlette, as the bridge), send the trigger call to the platform and
read its answer (aiohttp, as the bridge, pooled connections), wait out the platform's execution
time, and post a Standard-Webhooks-signed callback (aiohttp again). It verifies no signature,
stores nothing, follows no execution and retries nothing, so `bridge CPU / bare CPU` is what the
bridge's own work (verification, durability, tracking, retries, logs, metrics) multiplies the
libraries' cost by.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class BareLoop:
    def __init__(self, platform: str, callback: str, trigger_key: str, signing: str,
                 execution_delay: float) -> None:
        self.trigger_url = f"{platform}/workflows/triggers/bench"
        self.callback = callback
        self.trigger_key = trigger_key
        self.key = base64.b64decode(signing.removeprefix("whsec_"))
        self.execution_delay = execution_delay
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def hook(self, request: Request) -> JSONResponse:
        body = await request.body()
        key = "github:" + request.headers["x-github-delivery"]
        task = asyncio.create_task(self.forward(key, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return JSONResponse({"idempotency_key": key}, 202)

    async def forward(self, key: str, body: bytes) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        envelope = b'{"idempotency_key":' + json.dumps(key).encode() + b',"body":' + body + b"}"
        async with self.session.post(self.trigger_url, data=envelope, headers={
                "Authorization": f"Bearer {self.trigger_key}", "Idempotency-Key": key,
                "Content-Type": "application/json"}) as answer:
            execution = (await answer.json())["execution_id"]
        await asyncio.sleep(self.execution_delay)
        payload = json.dumps({"type": "execution.completed", "data": {
            "event": {"idempotency_key": key}, "execution_id": execution}}).encode()
        msg_id, stamp = f"msg_{execution}", str(int(time.time()))
        signature = base64.b64encode(hmac.new(
            self.key, f"{msg_id}.{stamp}.".encode() + payload, hashlib.sha256).digest()).decode()
        async with self.session.post(self.callback, data=payload, headers={
                "Content-Type": "application/json", "webhook-id": msg_id,
                "webhook-timestamp": stamp, "webhook-signature": f"v1,{signature}"}) as answer:
            await answer.read()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--platform", required=True)
    parser.add_argument("--callback", required=True)
    parser.add_argument("--trigger-key", required=True)
    parser.add_argument("--signing", required=True)
    parser.add_argument("--execution-delay", type=float, default=0.05)
    args = parser.parse_args()
    bare = BareLoop(args.platform, args.callback, args.trigger_key, args.signing,
                    args.execution_delay)
    app = Starlette(routes=[Route("/hooks/{source}", bare.hook, methods=["POST"]),
                            Route("/healthz", lambda _: JSONResponse({"ok": True}))])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False,
                server_header=False)


if __name__ == "__main__":
    main()
