"""Command line: `bridge serve | agent | check-config | emulator`, `bridge --version`.

Exit codes: 0 success, 1 runtime failure (e.g. the port is taken, said in one line, or the
store cannot open), 2 usage or configuration error (nothing has been bound). uvicorn's own 3
(a port taken between the check and the bind) is turned into 1 as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from bridge import __version__
from bridge.cli import admin_client as ops
from bridge.cli import trigger as tryout

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("bridge.cli")


def parser() -> argparse.ArgumentParser:
    from bridge.config import LOG_LEVELS

    root = argparse.ArgumentParser(prog="bridge", description="webhook-bridge")
    root.add_argument("--version", action="version", version=f"webhook-bridge {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the bridge")
    serve.add_argument("--config", help="TOML config file (default: $BRIDGE_CONFIG)")
    serve.add_argument("--log-format", choices=("json", "text"), help="overrides the config")
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="overrides the config")
    serve.add_argument("--host", help="address to listen on; overrides [server] host")
    serve.add_argument("--port", type=_port, help="port to listen on; overrides [server] port "
                                                  "(two replicas on one machine, one config)")

    check = commands.add_parser("check-config", help="validate a config: problems, warnings, "
                                                     "and a one-line summary")
    check.add_argument("--config", help="TOML config file (default: $BRIDGE_CONFIG)")
    check.add_argument("--print", action="store_true",
                       help="also print the effective config, secrets masked")

    agent = commands.add_parser("agent", help="run an outbound-only agent: pull a channel's "
                                              "events from an edge and deliver them here")
    agent.add_argument("--config", help="TOML config with an [edge] table "
                                        "(default: $BRIDGE_CONFIG)")
    agent.add_argument("--log-format", choices=("json", "text"), help="overrides the config")
    agent.add_argument("--log-level", choices=LOG_LEVELS, help="overrides the config")

    store = commands.add_parser("store", help="move a store's history to another store",
                                description="Store: copy.")
    st = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    copy = st.add_parser("copy", help="copy everything from a SQLite store to PostgreSQL "
                                      "(events, dedupe keys, deliveries, executions, callbacks); "
                                      "run it again after an interruption: nothing is doubled")
    copy.add_argument("--from", dest="source", required=True, metavar="PATH",
                      help="the SQLite file ([store] path)")
    copy.add_argument("--to", dest="target", required=True, metavar="URL",
                      help="postgresql://user@host:5432/db")

    migrate = commands.add_parser("migrate", help="bring the store's schema up to date, then "
                                                  "exit (serve does it too, once, at start)")
    migrate.add_argument("--config", help="TOML config file (default: $BRIDGE_CONFIG)")

    emulator = commands.add_parser("emulator", help="run the platform emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8090)
    emulator.add_argument("--trigger-key", default=os.environ.get("EMULATOR_TRIGGER_KEY",
                                                                  "dev-trigger-key"))
    emulator.add_argument("--api-key", default=os.environ.get("EMULATOR_API_KEY", "dev-api-key"))
    emulator.add_argument("--execution-delay", type=float, default=0.5, metavar="SECONDS")

    secret = commands.add_parser(
        "secret", help="print a new random secret: a token (admin, agent, `token` sources) or, "
                       "with --whsec, a Standard Webhooks signing secret (callbacks, channels)")
    secret.add_argument("--whsec", action="store_true",
                        help="a `whsec_` signing secret: 32 random bytes, base64")

    commands.add_parser("demo", help="run a bridge, the emulator and a callback receiver, and "
                                     "show a GitHub and a Stripe event travel end to end")
    ops.add_commands(commands)
    tryout.add_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except BrokenPipeError:  # `bridge ... | head`: the reader left; that is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit's flush does not fail again
        return EXIT_OK


def run(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    if args.command == "emulator":
        return run_emulator(args)
    if args.command == "secret":
        print(new_secret(args.whsec))
        return EXIT_OK
    if args.command == "demo":
        from bridge.cli.demo import run as run_demo

        return run_demo()
    if args.command == "store":
        return store_copy(args)
    if args.command not in ("serve", "check-config", "agent", "migrate"):
        return ops.run(args, tryout.HANDLERS)
    from bridge.config import load
    from bridge.core.errors import ConfigError

    path = args.config or os.environ.get("BRIDGE_CONFIG") or None
    try:
        config = load(path)
        if args.command == "check-config":
            return check_config(config, args.print)
        if args.command == "agent":
            return run_agent(config, args.log_format, args.log_level)
        if args.command == "migrate":
            return migrate(config)
        if args.host or args.port is not None:
            config = dataclasses.replace(config, server=dataclasses.replace(
                config.server, host=args.host or config.server.host,
                port=config.server.port if args.port is None else args.port))
        return serve(config, args.log_format, args.log_level)
    except ConfigError as exc:
        print(f"bridge: invalid configuration ({path or 'built-in defaults'}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG


def new_secret(whsec: bool = False) -> str:
    """32 bytes from the OS's CSPRNG: as a `whsec_` Standard Webhooks secret (base64, the
    form `[callbacks] signing_secret` and `[[channels]] signing_secret` take), or as a token
    (URL-safe text, for `[admin] tokens`, a channel's `tokens` and `token` sources)."""
    import base64
    import secrets

    raw = secrets.token_bytes(32)
    if whsec:
        return "whsec_" + base64.b64encode(raw).decode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), not {text!r}")
    return int(text)


def check_config(config: object, dump: bool = False) -> int:
    from bridge.config import Config, masked, warnings
    from bridge.ingest.providers import build_all

    assert isinstance(config, Config)
    build_all(config)
    if dump:
        print(json.dumps(masked(config), indent=2))
    found = warnings(config)
    for warning in found:
        print(f"warning: {warning}", file=sys.stderr)
    plural = lambda n, word: f"{n} {word}{'' if n == 1 else 's'}"  # noqa: E731
    if config.edge is not None:  # an agent's config: what it pulls, and where it delivers
        from bridge.config import mask_url

        callbacks = len(config.callbacks.urls)
        print(f"ok: agent for channel {config.edge.channel!r} of {mask_url(config.edge.url)},"
              f" delivering to {mask_url(config.platform.base_url)},"
              f" {plural(callbacks, 'callback URL')}, {plural(len(found), 'warning')}")
        return EXIT_OK
    print(f"ok: {plural(len(config.sources), 'source')}, {plural(len(config.routes), 'route')},"
          f" {plural(len(found), 'warning')}")
    return EXIT_OK


def proxy_options(config: Any) -> dict[str, Any]:
    """uvicorn believes X-Forwarded-For/-Proto only from `[server] forwarded_allow_ips`: behind
    a TLS proxy the console then sees https (Secure cookies, its Origin check) and the client's
    own address (the throttle's key); without it, nobody's forwarded headers are believed."""
    allowed = config.server.forwarded_allow_ips
    if not allowed:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(allowed)}


def serve(config: object, log_format: str | None, log_level: str | None = None) -> int:
    from bridge.config import Config
    from bridge.core import logs

    assert isinstance(config, Config)
    logs.configure(log_format or config.server.log_format, config.secrets(),
                   log_level or config.server.log_level)
    taken = taken_port(config)
    if taken:
        print(f"bridge: {taken}", file=sys.stderr)
        return EXIT_FAILURE
    if config.server.workers > 1:
        return serve_workers(config, log_format, log_level)
    server, emulator = build_server(config)
    # uvicorn restores the previous handlers after its graceful shutdown and re-raises the
    # signal it caught; a no-op handler here turns that into a clean exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        server.run()
    except SystemExit:  # uvicorn's bind failure (it logged why)
        return EXIT_FAILURE
    finally:
        if emulator is not None:
            emulator.stop()
    return EXIT_OK if server.started else EXIT_FAILURE


def build_server(config: Any) -> tuple[Any, Any]:
    """What `serve` runs, built and not yet started: the app under uvicorn with the server's
    bounds (`uvicorn.Server`), and the platform emulator, started, when `[emulator]` asks for
    one (else None). The test suite runs bridges in-process through this same function."""
    import uvicorn

    from bridge.app import create_app
    from bridge.devtools.emulator import Emulator, EmulatorServer, Settings
    from bridge.web.server import BoundedHttpTools

    app = create_app(config, config_path=config.origin if config.origin.endswith(".toml")
                     or os.path.isfile(config.origin) else None)
    log.info("config loaded", extra={"config": config.origin, "host": config.server.host,
                                     "port": config.server.port})
    emulator = None
    if config.emulator.enabled:
        settings = Settings(execution_delay=config.emulator.execution_delay)
        if config.platform.trigger_key:
            settings.trigger_key = config.platform.trigger_key.reveal()
        if config.platform.api_key:
            settings.api_key = config.platform.api_key.reveal()
        emulator = EmulatorServer(Emulator(settings), config.emulator.host, config.emulator.port)
        emulator.start()
        log.info("platform emulator started", extra={"url": emulator.base_url})
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.server.host, port=config.server.port, log_config=None,
        http=BoundedHttpTools.bounded(config.server.max_header_bytes, config.server.max_headers),
        limit_concurrency=config.server.max_connections,
        access_log=False, lifespan="on", server_header=False, **proxy_options(config),
        timeout_graceful_shutdown=int(config.server.shutdown_timeout),
        timeout_keep_alive=5,
    ))
    return server, emulator


def store_copy(args: argparse.Namespace) -> int:
    import os.path

    import psycopg

    from bridge.cli.admin_client import Progress
    from bridge.config import mask_url
    from bridge.store.copy import copy

    if not os.path.isfile(args.source):
        print(f"bridge: no such SQLite file: {args.source}", file=sys.stderr)
        return EXIT_CONFIG
    bars: dict[str, Progress] = {}

    def progress(table: str, done: int, total: int) -> None:
        bar = bars.get(table)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[table] = Progress(f"{table:<12}", total)
        bar.advance(done - bar.done)

    try:
        gained = copy(args.source, args.target, progress)
    except (psycopg.Error, sqlite3.Error, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        print(f"bridge: copy failed: {message}; run it again once fixed: nothing is doubled",
              file=sys.stderr)
        return EXIT_FAILURE
    finally:
        for bar in bars.values():
            bar.close()
    print(f"ok: copied to {mask_url(args.target)}: " + ", ".join(
        f"{table} +{n}" for table, n in gained.items()))
    return EXIT_OK


def migrate(config: object) -> int:
    """Open the store (which applies every migration it lacks, under a lock when several
    replicas share it) and close it."""
    import asyncio

    from bridge.config import Config, mask_url
    from bridge.core import logs
    from bridge.core.errors import StoreUnavailable
    from bridge.store import open_store
    from bridge.store.migrate import latest

    assert isinstance(config, Config)
    logs.configure("text", config.secrets())
    store = open_store(config.store)

    async def run() -> None:
        await store.open()
        await store.close()

    try:
        asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"bridge: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    where = mask_url(config.store.url) if config.store.url else config.store.path
    print(f"ok: {where} is at schema version {latest()}")
    return EXIT_OK


def run_agent(config: object, log_format: str | None, log_level: str | None = None) -> int:
    import uvicorn

    from bridge.channels.agent import create_agent
    from bridge.config import Config
    from bridge.core import logs

    assert isinstance(config, Config)
    if config.edge is None:
        print("bridge: an agent's config needs an [edge] table (url, channel, token, "
              "signing_secret)", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(log_format or config.server.log_format, config.secrets(),
                   log_level or config.server.log_level)
    taken = taken_port(config)
    if taken:
        print(f"bridge: {taken}", file=sys.stderr)
        return EXIT_FAILURE
    server = uvicorn.Server(uvicorn.Config(
        create_agent(config), host=config.server.host, port=config.server.port,
        log_config=None, access_log=False, lifespan="on", server_header=False,
        proxy_headers=False, timeout_graceful_shutdown=int(config.server.shutdown_timeout)))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        server.run()
    except SystemExit:
        return EXIT_FAILURE
    return EXIT_OK if server.started else EXIT_FAILURE


def taken_port(config: object) -> str | None:
    """One line naming a port the bridge needs that something else holds, before anything
    starts; None when they are free."""
    from bridge.config import Config

    assert isinstance(config, Config)
    wanted = [(config.server.host, config.server.port, "[server] port", "the bridge")]
    if config.emulator.enabled and config.server.workers == 1:
        wanted.append((config.emulator.host, config.emulator.port, "[emulator] port",
                       "the platform emulator"))
    for host, port, key, what in wanted:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    return f"cannot listen on {host}:{port} for {what}: {exc.strerror}"
                return (f"port {port} on {host} is already in use, so {what} cannot start "
                        f"(another bridge still running? stop it, or set {key} to a free port)")
    return None


def serve_workers(config: object, log_format: str | None = None,
                  log_level: str | None = None) -> int:
    """Several worker processes on one port, each building the app from $BRIDGE_CONFIG (and
    the command line's log options from $BRIDGE_LOG_FORMAT and $BRIDGE_LOG_LEVEL). They
    share the SQLite file (one writer at a time, by SQLite's lock) and the outbox (by leases).
    The emulator, a development aid, is not started in this mode."""
    import uvicorn

    from bridge.config import Config
    from bridge.web.server import BoundedHttpTools

    assert isinstance(config, Config)
    os.environ["BRIDGE_CONFIG"] = config.origin
    for name, value in (("BRIDGE_LOG_FORMAT", log_format), ("BRIDGE_LOG_LEVEL", log_level)):
        if value:
            os.environ[name] = value
    log.info("config loaded", extra={"config": config.origin, "workers": config.server.workers})
    BoundedHttpTools.configure(config.server.max_header_bytes, config.server.max_headers)
    uvicorn.run("bridge.app:from_environment", factory=True, host=config.server.host,
                http=BoundedHttpTools, limit_concurrency=config.server.max_connections,
                port=config.server.port, workers=config.server.workers, log_config=None,
                access_log=False, server_header=False, **proxy_options(config),
                timeout_graceful_shutdown=int(config.server.shutdown_timeout))
    return EXIT_OK


def run_emulator(args: argparse.Namespace) -> int:
    import uvicorn

    from bridge.core import logs
    from bridge.devtools.emulator import Emulator, Settings

    logs.configure("text", [args.trigger_key, args.api_key])
    settings = Settings(trigger_key=args.trigger_key, api_key=args.api_key,
                        execution_delay=args.execution_delay)
    uvicorn.run(Emulator(settings).app(), host=args.host, port=args.port, log_config=None,
                access_log=False)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
