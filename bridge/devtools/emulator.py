"""A stand-in for the workflow platform, faithful to its contract (see docs/platform.md).

Served by `bridge emulator --port N`, started beside the bridge by `[emulator] enabled = true`,
and run in a thread by the tests (`EmulatorServer`). Everything lives in memory.

    POST /api/v1/workflows/triggers/{name}     trigger key; Idempotency-Key required
    GET  /api/v1/executions/{id}               API key
    GET  /api/v1/executions/{id}/stream        API key; SSE, ends with execution_complete/failed
    GET  /api/v1/workflows/{name}/executions   API key; ?limit=N

Control (no auth; a test tool):

    POST /_emulator/settings   change any field of `Settings`
    POST /_emulator/faults     {"trigger": "*"|name, "count": N, "status": 500|503|429|401...,
                                "retry_after": s, "latency": s, "drop": "before"|"after"}
    GET  /_emulator/calls      every trigger call received (key, body sha256 and the body's
                               first 4 KiB as text for the last 1,000 calls, status)
    GET  /_emulator/reads      how many execution reads of each kind: get, stream, list
    GET  /_emulator/executions every execution
    POST /_emulator/finish     {"at": unix time}: every unfinished execution ends then
    POST /_emulator/reset      forget everything
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bridge.core.models import iso

TERMINAL = ("completed", "failed", "cancelled")
SHOWN_BODY = 4096  # bytes of each trigger call's body kept in the call log, as text
SHOWN_CALLS = 1000  # calls whose body is kept: a long run's log stays small


@dataclass
class Settings:
    trigger_key: str = "dev-trigger-key"
    api_key: str = "dev-api-key"
    known_triggers: list[str] | None = None  # None: every trigger name exists
    failing_triggers: list[str] = field(default_factory=list)
    hanging_triggers: list[str] = field(default_factory=list)  # executions that never end
    execution_delay: float = 0.5
    idempotency_ttl: float = 24 * 3600.0
    rate_limit: int = 100_000  # requests per minute
    dialect: str = "error"  # "error": {"error": {...}}; "detail": {"detail": "..."}
    id_field: str = "execution_id"  # or "id" / "executionId"
    latency: float = 0.0
    stream_mode: str = "normal"  # "drop": end after the first event; "unavailable": 503
    finish_at: float | None = None  # a Unix time: executions end then (all at once), if later
    # "summary": lists without output or error; "unavailable": 404; "error": 500
    list_mode: str = "full"


@dataclass
class Fault:
    trigger: str
    count: int
    status: int | None = None
    retry_after: float | None = None
    latency: float = 0.0
    stream_mode: str = "normal"  # "drop": end after the first event; "unavailable": 503
    finish_at: float | None = None  # a Unix time: executions end then (all at once), if later
    drop: str | None = None  # "before" executing, or "after" executing (a lost answer)


@dataclass
class Execution:
    id: str
    trigger: str
    input: Any
    created_at: float
    fate: str  # completed | failed | hanging
    delay: float

    @property
    def ends_at(self) -> float:
        return self.created_at + self.delay

    def view(self, now: float) -> dict[str, Any]:
        done = self.fate != "hanging" and now >= self.ends_at
        status = self.fate if done else ("running" if now > self.created_at else "pending")
        ended = self.ends_at if done else None
        output = {"echo": self.input} if status == "completed" else None
        return {
            "id": self.id, "workflow": self.trigger, "status": status, "output": output,
            "error": "workflow failed on purpose" if status == "failed" else None,
            "node_results": {"echo": {"status": status}} if done else {},
            "started_at": iso(self.created_at), "completed_at": iso(ended),
        }


class Emulator:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.executions: dict[str, Execution] = {}
        self.idempotency: dict[str, tuple[str, float, int, bytes]] = {}
        self.faults: list[Fault] = []
        self.calls: list[dict[str, Any]] = []
        self.reads = {"get": 0, "stream": 0, "list": 0}
        self.window = (0.0, 0)  # (when the current window opened, requests in it)

    # helpers used by tests

    def executions_for(self, trigger: str | None = None) -> list[Execution]:
        with self.lock:
            return [e for e in self.executions.values() if trigger in (None, e.trigger)]

    def add_fault(self, **spec: Any) -> None:
        with self.lock:
            self.faults.append(Fault(**spec))

    def end_now(self, trigger: str | None = None) -> None:
        """End every unfinished (not hanging) execution of `trigger` now, all at once: a test
        can hold executions running until the bridge has seen them all, whatever its speed."""
        now = time.time()
        with self.lock:
            for execution in self.executions.values():
                if trigger in (None, execution.trigger) and execution.ends_at > now:
                    execution.delay = max(0.0, now - execution.created_at)

    def configure(self, **changes: Any) -> None:
        names = {f.name for f in fields(Settings)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown setting {key}")
            setattr(self.settings, key, value)

    # HTTP

    def error(self, status: int, code: str, message: str,
              headers: dict[str, str] | None = None) -> Response:
        body: dict[str, Any]
        if self.settings.dialect == "detail":
            body = {"detail": message}
        else:
            details = {"request_id": uuid.uuid4().hex} if status >= 500 else {}
            body = {"error": {"code": code, "message": message, "details": details}}
        return JSONResponse(body, status, headers=headers)

    def rate_headers(self) -> tuple[dict[str, str], bool]:
        """A one-minute window that opens with the first request after the previous one
        closed (so a test never straddles a reset by accident)."""
        now = time.time()
        with self.lock:
            start, used = self.window
            if now >= start + 60:
                start, used = now, 0
            used += 1
            self.window = (start, used)
        limit = self.settings.rate_limit
        headers = {"X-RateLimit-Limit": str(limit),
                   "X-RateLimit-Remaining": str(max(0, limit - used)),
                   "X-RateLimit-Reset": str(int(start + 60))}
        return headers, used > limit

    def take_fault(self, trigger: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.trigger in ("*", trigger) and fault.count > 0:
                    fault.count -= 1
                    return fault
        return None

    async def trigger(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await request.body()
        key = request.headers.get("idempotency-key", "")
        digest = hashlib.sha256(body).hexdigest()
        call = {"trigger": name, "key": key, "sha256": digest, "at": time.time(),
                "content_type": request.headers.get("content-type"),
                "body": body[:SHOWN_BODY].decode("utf-8", "replace"), "bytes": len(body)}
        response = await self._trigger(request, name, body, key, digest)
        call["status"] = response.status_code
        with self.lock:
            self.calls.append(call)
            if len(self.calls) > SHOWN_CALLS:  # older calls keep their digest, not their body
                self.calls[-SHOWN_CALLS - 1].pop("body", None)
        return response

    async def _trigger(self, request: Request, name: str, body: bytes, key: str,
                       digest: str) -> Response:
        rate, limited = self.rate_headers()
        if self.settings.latency:
            await asyncio.sleep(self.settings.latency)
        if request.headers.get("authorization") != f"Bearer {self.settings.trigger_key}":
            return self.error(401, "unauthorized", "missing or invalid trigger key", rate)
        if limited:
            return self.error(429, "rate_limited", "too many requests",
                              {**rate, "Retry-After": "1"})
        fault = self.take_fault(name)
        if fault is not None:
            if fault.latency:
                await asyncio.sleep(fault.latency)
            if fault.drop == "before":
                return DroppedResponse()
            if fault.status is not None:
                headers = dict(rate)
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                return self.error(fault.status, "injected_fault", "fault injected", headers)
        if not key:
            return self.error(400, "idempotency_key_required", "Idempotency-Key is required",
                              rate)
        known = self.settings.known_triggers
        if known is not None and name not in known:
            return self.error(404, "trigger_not_found", f"no trigger named {name}", rate)
        response = self._execute_once(name, body, key, digest, rate)
        if fault is not None and fault.drop == "after":
            return DroppedResponse()  # executed, but the answer is lost
        return response

    def _execute_once(self, name: str, body: bytes, key: str, digest: str,
                      rate: dict[str, str]) -> Response:
        now = time.time()
        with self.lock:
            remembered = self.idempotency.get(key)
            if remembered and now - remembered[1] > self.settings.idempotency_ttl:
                remembered = None
            if remembered:
                if remembered[0] != digest:
                    return self.error(409, "idempotency_conflict",
                                      "idempotency key reused with a different body", rate)
                return Response(remembered[3], remembered[2], headers=rate,
                                media_type="application/json")
            try:
                data = json.loads(body) if body else None
            except ValueError:
                data = body.decode("utf-8", "replace")
            fate = ("failed" if name in self.settings.failing_triggers
                    else "hanging" if name in self.settings.hanging_triggers else "completed")
            delay = self.settings.execution_delay
            if self.settings.finish_at is not None:
                delay = max(delay, self.settings.finish_at - now)
            execution = Execution(f"exe_{secrets.token_hex(8)}", name, data, now, fate, delay)
            self.executions[execution.id] = execution
            content = json.dumps({self.settings.id_field: execution.id,
                                  "status": "pending"}).encode()
            self.idempotency[key] = (digest, now, 202, content)
        return Response(content, 202, headers=rate, media_type="application/json")

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.settings.api_key}"

    def _find(self, request: Request) -> Execution | Response:
        if not self._authorised(request):
            return self.error(401, "unauthorized", "missing or invalid API key")
        execution = self.executions.get(request.path_params["id"])
        if execution is None:
            return self.error(404, "execution_not_found", "no such execution")
        return execution

    async def get_execution(self, request: Request) -> Response:
        self.reads["get"] += 1
        found = self._find(request)
        if isinstance(found, Response):
            return found
        rate, _ = self.rate_headers()
        return JSONResponse(found.view(time.time()), headers=rate)

    async def stream(self, request: Request) -> Response:
        self.reads["stream"] += 1
        found = self._find(request)
        if isinstance(found, Response):
            return found
        mode = self.settings.stream_mode
        if mode == "unavailable":
            return self.error(503, "stream_unavailable", "streaming is unavailable")

        async def events(execution: Execution) -> AsyncIterator[bytes]:
            last = None
            while True:
                view = execution.view(time.time())
                if view["status"] != last:
                    last = view["status"]
                    kind = {"completed": "execution_complete", "failed": "execution_failed",
                            "cancelled": "execution_failed"}.get(last, "execution_" + last)
                    data = json.dumps({"type": kind, **view})
                    yield f"event: {kind}\ndata: {data}\n\n".encode()
                    if last in TERMINAL or mode == "drop":
                        return
                # Sleep until the execution's end (or re-check within 0.5 s), not in a busy loop.
                remaining = execution.ends_at - time.time()
                await asyncio.sleep(min(0.5, max(0.005, remaining)))

        return StreamingResponse(events(found), media_type="text/event-stream")

    async def list_executions(self, request: Request) -> Response:
        self.reads["list"] += 1
        if not self._authorised(request):
            return self.error(401, "unauthorized", "missing or invalid API key")
        if self.settings.list_mode == "unavailable":
            return self.error(404, "not_found", "listing executions is not available")
        if self.settings.list_mode == "error":
            return self.error(500, "internal", "listing executions failed")
        try:
            limit = max(0, int(request.query_params.get("limit", "20")))
        except ValueError:
            return self.error(400, "bad_limit", "limit must be an integer")
        now, name = time.time(), request.path_params["name"]
        items: list[dict[str, Any]] = []
        with self.lock:  # newest first, looking no further back than the limit needs
            for execution in reversed(self.executions.values()):
                if len(items) >= limit:
                    break
                if execution.trigger == name:
                    view = execution.view(now)
                    if self.settings.list_mode == "summary":
                        view = {k: view[k] for k in ("id", "workflow", "status", "started_at")}
                    items.append(view)
        rate, _ = self.rate_headers()
        return JSONResponse(items, headers=rate)

    # control

    async def control_settings(self, request: Request) -> Response:
        try:
            self.configure(**await request.json())
        except (ValueError, TypeError) as exc:
            return self.error(400, "bad_setting", str(exc))
        return JSONResponse(asdict(self.settings))

    async def control_faults(self, request: Request) -> Response:
        try:
            spec = await request.json()
            self.add_fault(trigger=spec.pop("trigger", "*"), count=spec.pop("count", 1), **spec)
        except (ValueError, TypeError) as exc:
            return self.error(400, "bad_fault", str(exc))
        return JSONResponse({"faults": [asdict(f) for f in self.faults]})

    async def control_calls(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse(list(self.calls))

    async def control_reads(self, request: Request) -> Response:
        return JSONResponse(dict(self.reads))

    async def control_executions(self, request: Request) -> Response:
        """Every execution, with the idempotency key its input carries (an envelope's), so a
        test can count executions per event whatever key the trigger call used."""
        now = time.time()
        return JSONResponse([{**e.view(now), "input_key": e.input.get("idempotency_key")
                              if isinstance(e.input, dict) else None}
                             for e in self.executions_for()])

    async def control_finish(self, request: Request) -> Response:
        """End every unfinished execution at `at` (a Unix time)."""
        at = float((await request.json())["at"])
        with self.lock:
            for execution in self.executions.values():
                if execution.ends_at > at:
                    execution.delay = at - execution.created_at
        return JSONResponse({"at": at})

    async def control_reset(self, request: Request) -> Response:
        with self.lock:
            self.reset()
        return JSONResponse({"reset": True})

    def app(self) -> Starlette:
        api = "/api/v1"
        return Starlette(routes=[
            Route(f"{api}/workflows/triggers/{{name}}", self.trigger, methods=["POST"]),
            Route(f"{api}/executions/{{id}}", self.get_execution, methods=["GET"]),
            Route(f"{api}/executions/{{id}}/stream", self.stream, methods=["GET"]),
            Route(f"{api}/workflows/{{name}}/executions", self.list_executions, methods=["GET"]),
            Route("/_emulator/settings", self.control_settings, methods=["POST"]),
            Route("/_emulator/faults", self.control_faults, methods=["POST"]),
            Route("/_emulator/calls", self.control_calls, methods=["GET"]),
            Route("/_emulator/reads", self.control_reads, methods=["GET"]),
            Route("/_emulator/executions", self.control_executions, methods=["GET"]),
            Route("/_emulator/reset", self.control_reset, methods=["POST"]),
            Route("/_emulator/finish", self.control_finish, methods=["POST"]),
        ])


class DroppedResponse(Response):
    """Starts an answer and never finishes it: the server then closes the connection, and the
    client sees the connection drop mid-response."""

    def __init__(self) -> None:
        super().__init__(b"", 200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"64"), (b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})



class EmulatorServer:
    """The emulator on a real socket, served from a background thread."""

    def __init__(self, emulator: Emulator | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.emulator = emulator or Emulator()
        config = uvicorn.Config(self.emulator.app(), host=host, port=port, log_config=None,
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="emulator", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def start(self) -> EmulatorServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
