"""create_app(): routes, the one error handler, and the lifespan that runs the loops.

Shutdown order (uvicorn has already stopped accepting and drained in-flight requests):
  1. background loops stop claiming new work and finish in-flight attempts (bounded grace),
  2. leases still held are released,
  3. the store's writer is flushed and both connections closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.callbacks.relay import Relay
from bridge.channels.edge import Edge
from bridge.config import Config, load, mask_url
from bridge.core import logs
from bridge.core.errors import BridgeError, ConfigError, StoreUnavailable, error_body
from bridge.core.metrics import Metrics
from bridge.core.models import iso
from bridge.core.supervisor import Supervisor
from bridge.delivery.forwarder import Forwarder
from bridge.ingest import status_links as status
from bridge.ingest.hooks import Hooks, Inbound, Runtime
from bridge.ingest.providers import build_all
from bridge.ingest.status_links import StatusTokens
from bridge.operate.admin import Admin
from bridge.operate.console.views import Console
from bridge.operate.traffic import TrafficSampler
from bridge.store import Store, open_store
from bridge.tracking.tracker import PushReceiver, Tracker, callback_targets
from bridge.web.asgi import Disconnected
from bridge.web.throttle import Throttle

log = logging.getLogger("bridge.app")
READY_TIMEOUT = 3.0


async def bridge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BridgeError)
    return JSONResponse(error_body(exc.code, exc.message), exc.status_code, headers=exc.headers())


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)


async def disconnected(request: Request, exc: Exception) -> Response:
    return Response(status_code=400)  # the client left before its body arrived: nobody reads it


async def unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", extra={"path": request.url.path})
    return JSONResponse(error_body("internal", "internal error"), 500)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    store: Store = request.app.state.store
    try:
        await asyncio.wait_for(store.check_writable(), READY_TIMEOUT)
    except (StoreUnavailable, TimeoutError):
        return JSONResponse(error_body("not_ready", "the store is not writable"), 503,
                            headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready"})


def create_app(config: Config, *, store: Store | None = None,
               clock: Callable[[], float] = time.time, rng: random.Random | None = None,
               config_path: str | None = None) -> Hooks:
    """Build the application. Raises ConfigError for what the config parser cannot see
    (undecodable secrets, bad provider options) so it surfaces before the port is bound."""
    providers = build_all(config)
    for name, provider in providers.items():
        if provider.source.provider == "none":
            log.warning("source accepts unsigned requests", extra={"source": name})
    store = store or open_store(config.store)
    rng = rng or random.Random()
    metrics = Metrics()
    runtime = Runtime(config, providers)
    def on_commit(size: int, seconds: float) -> None:
        metrics.batch_size.observe(size)
        metrics.commit_seconds.observe(seconds)

    store.on_commit = on_commit
    tracking = config.tracking.enabled and config.platform.api_key is not None
    forwarder = Forwarder(config, store, clock=clock, rng=rng,
                          track_deadline=config.tracking.deadline if tracking else None,
                          metrics=metrics)
    tracker = Tracker(config, store, clock=clock, metrics=metrics)
    relay = Relay(config, store, clock=clock, rng=rng, metrics=metrics)
    throttle = Throttle()  # failed authentication, per client, for every credential
    edge = Edge(runtime, store, clock, lambda: tracker.targets, metrics, throttle)
    admin = Admin(runtime, store, metrics, clock, edge, throttle)
    keys: dict[str, str] = {}
    console = Console(admin, lambda: keys["server"])
    traffic = TrafficSampler(metrics, store, clock)
    push = PushReceiver(config, tracker)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        secret = config.server.secret_key
        key = secret.reveal() if secret else await store.secret_key()
        tokens = StatusTokens(key, max_age=config.store.dedupe_window)
        keys["server"] = key
        app.state.store = store
        app.state.tokens = tokens
        app.state.forwarder = forwarder
        hooks.inbound = Inbound(runtime, store, tokens, metrics, clock)
        for name, state in (await store.route_states()).items():
            if state.paused:  # from before this start: say so, and why
                log.warning("route still paused", extra={
                    "route": name, "reason": state.reason, "since": iso(state.changed_at)})
        if config_path is not None:
            _on_sighup(lambda: reload(runtime, tracker, config_path))
        supervisor = Supervisor()
        supervisor.spawn(_prune_loop(store, config, clock), "prune")
        supervisor.spawn(traffic.run(), "traffic")
        if any(route.channel is None for route in config.routes) and config.forwarder.enabled:
            supervisor.start(forwarder, "forwarder")
        if tracking:
            supervisor.start(tracker, "tracker")
        elif any(route.channel is None for route in config.routes):
            log.warning("executions are not followed: set [platform] api_key to track them")
        supervisor.start(relay, "relay")
        log.info("bridge started", extra={"config": config.origin,
                                          "store": mask_url(config.store.url or "")
                                          or config.store.path,
                                          "sources": len(config.sources),
                                          "routes": len(config.routes)})
        try:
            yield
        finally:
            await supervisor.stop()
            with contextlib.suppress(BridgeError):
                await traffic.flush()  # the last few seconds' counts
            await store.close()
            log.info("bridge stopped")

    async def not_ready(request: Request) -> Response:  # only before the lifespan has run
        raise StoreUnavailable("starting up")

    routes = [
        Route("/hooks/{source}", not_ready, methods=["POST"]),
        Route("/events/{token}", status.show, methods=["GET"]),
        Route("/platform/events", push.handle, methods=["POST"]),
        Route("/agent/v1/channels/{name}/pull", edge.pull, methods=["POST"]),
        Route("/agent/v1/channels/{name}/report", edge.report, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *admin.routes(),
        *console.routes(),
    ]
    hooks = Hooks(Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={BridgeError: bridge_error, HTTPException: http_error,
                            Disconnected: disconnected, Exception: unexpected},
    ))
    return hooks


def reload(runtime: Runtime, tracker: Tracker, path: str) -> bool:
    """Load `path` again and swap in its sources, routes, channels (agent tokens: how one is
    revoked) and secrets; on any error keep the
    running config and log why. Server, store and platform settings need a restart."""
    try:
        new = load(path)
        providers = build_all(new)
    except ConfigError as exc:
        log.error("reload refused: the new config is invalid; keeping the running one",
                  extra={"problems": exc.problems})
        return False
    old = runtime.config
    for section in ("server", "store", "platform", "forwarder", "emulator"):
        if getattr(old, section) != getattr(new, section):
            log.warning("reload: this section changes only on restart", extra={"section": section})
    logs.REDACTOR.set_secrets(set(logs.REDACTOR.secrets) | set(new.secrets()))
    runtime.swap(dataclasses.replace(old, sources=new.sources, routes=new.routes,
                                     admin=new.admin, channels=new.channels), providers)
    tracker.targets = callback_targets(dataclasses.replace(old, routes=new.routes))
    log.info("config reloaded", extra={"config": path, "sources": len(new.sources),
                                       "routes": len(new.routes)})
    return True


def _on_sighup(callback: Callable[[], object]) -> None:
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, callback)


def from_environment() -> Hooks:
    """The app for one of several uvicorn worker processes: config from $BRIDGE_CONFIG, and
    the log options the command line gave (`serve_workers`)."""
    path = os.environ.get("BRIDGE_CONFIG")
    config = load(path)
    logs.configure(os.environ.get("BRIDGE_LOG_FORMAT") or config.server.log_format,
                   config.secrets(),
                   os.environ.get("BRIDGE_LOG_LEVEL") or config.server.log_level)
    return create_app(config, config_path=path)


async def _prune_loop(store: Store, config: Config, clock: Callable[[], float]) -> None:
    while True:
        try:
            expired = await store.expire_channels(clock() - config.store.dedupe_window, clock())
            if expired:
                log.warning("channel deliveries no agent took are dead letters",
                            extra={"count": expired})
            removed = 1
            while removed:
                removed = await store.prune(clock() - config.store.dedupe_window)
                if removed:
                    log.info("pruned events", extra={"count": removed})
        except StoreUnavailable:
            log.warning("prune skipped: store unavailable")
        await asyncio.sleep(config.store.prune_interval)
