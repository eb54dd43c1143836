"""A real HTTP server that receives callbacks and remembers them (tests only)."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class Receiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer before accepting
        app = Starlette(routes=[Route("/{path:path}", self.receive, methods=["POST"])])
        config = uvicorn.Config(app, host=host, port=0, log_config=None,
                                access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def receive(self, request: Request) -> JSONResponse:
        body = await request.body()
        with self.lock:
            status = self.fail_next.pop(0) if self.fail_next else 200
            self.received.append({"path": request.url.path, "headers": dict(request.headers),
                                  "body": body, "status": status, "at": time.time()})
        return JSONResponse({"ok": status == 200}, status)

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.received if r["status"] == 200]

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received)

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def start(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("receiver did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
