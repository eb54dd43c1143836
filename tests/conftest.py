"""Test harness: the real bridge as a subprocess on a free port, the emulator as a real server.

Nothing of the bridge is mocked. `Bridge` runs `python -m bridge serve --config FILE` so that
tests can SIGTERM or `kill -9` it; `EmulatorServer` is the platform stand-in on a real socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.emulator import Emulator, EmulatorServer, Settings
from tests import pg

# BRIDGE_TEST_STORE=postgres runs every bridge the suite starts on PostgreSQL instead of SQLite.
ON_POSTGRES = os.environ.get("BRIDGE_TEST_STORE") == "postgres"
# For the few tests that inject their fault into the SQLite file itself (a lock, a full disk, a
# corrupt value, a dropped table); the PostgreSQL store's faults have tests of their own
# (tests/test_postgres.py).
sqlite_only = pytest.mark.skipif(ON_POSTGRES, reason="injects its fault into the SQLite file")

GITHUB_SECRET = "gh-test-secret-8d1e"
STRIPE_SECRET = "whsec_test_stripe_secret_5c2a"
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TRIGGER_KEY = "tk-test-trigger-key-77f1"
API_KEY = "ak-test-api-key-19c3"
ALL_SECRETS = [GITHUB_SECRET, STRIPE_SECRET, STANDARD_SECRET, TRIGGER_KEY, API_KEY,
               "adm-token-5f0e9c1b2a7d", "whsec_cGxhdGZvcm0tY2FsbGJhY2stc2VjcmV0LTAx"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def github_headers(body: bytes, secret: str = GITHUB_SECRET, delivery: str = "d-1",
                   event: str = "push") -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery, "Content-Type": "application/json"}


BASE_CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
log_format = "json"
shutdown_timeout = "3s"

[store]
path = "{db}"
busy_timeout = "300ms"

[platform]
base_url = "{platform}"
trigger_key = "{trigger_key}"
api_key = "{api_key}"

[forwarder]
lease = "2s"
poll_interval = "100ms"
pause_probe = "300ms"
shutdown_grace = "1s"

[forwarder.retry]
base = "100ms"
cap = "1s"
max_age = "1h"

[[sources]]
name = "github"
provider = "github"
secret = "{github}"

[[sources]]
name = "stripe"
provider = "stripe"
secret = "{stripe}"

[[sources]]
name = "standard"
provider = "standard"
secret = "{standard}"

[[routes]]
source = "github"
trigger = "github-push"
events = ["push", "pull_request.*"]

[[routes]]
source = "stripe"
trigger = "stripe-events"
"""


class Bridge:
    """A `bridge serve` process and its log file."""

    def __init__(self, config_path: Path, port: int, db: Path, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.port = port
        self.db = db
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"
        self.store_url: str | None = None  # set when the bridge runs on PostgreSQL

    def start(self, timeout: float = 20.0) -> Bridge:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"bridge did not start:\n{self.logs()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None,
             **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", content=body, headers=headers or {}, timeout=30,
                          **kwargs)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the bridge's real store directly: its SQLite file, or its PostgreSQL schema
        when the suite runs on PostgreSQL (BRIDGE_TEST_STORE=postgres)."""
        if self.store_url:
            import psycopg

            from bridge.store.postgres import translate

            with psycopg.connect(self.store_url, autocommit=True) as conn:
                rows = conn.execute(translate(sql), list(params) or None).fetchall()
            return [tuple(row) for row in rows]
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(Emulator(Settings(trigger_key=TRIGGER_KEY, api_key=API_KEY,
                                              execution_delay=0.2))).start()
    yield server
    server.stop()


@pytest.fixture
def make_bridge(tmp_path: Path, emulator: EmulatorServer) -> Iterator[Callable[..., Bridge]]:
    """Build a bridge from BASE_CONFIG plus extra TOML; started unless start=False. With
    BRIDGE_TEST_STORE=postgres, its store is a PostgreSQL schema of its own instead."""
    bridges: list[Bridge] = []
    stack = contextlib.ExitStack()

    def make(extra: str = "", *, start: bool = True, base: str = BASE_CONFIG,
             env: dict[str, str] | None = None, name: str = "bridge") -> Bridge:
        port = free_port()
        db = tmp_path / f"{name}.db"
        text = base.format(port=port, db=db, platform=emulator.base_url, trigger_key=TRIGGER_KEY,
                           api_key=API_KEY, github=GITHUB_SECRET, stripe=STRIPE_SECRET,
                           standard=STANDARD_SECRET) + extra
        store_url = None
        if ON_POSTGRES and f'path = "{db}"' in text:  # the whole suite, on PostgreSQL
            store_url = stack.enter_context(pg.schema())
            text = text.replace(f'path = "{db}"', f'url = "{store_url}"')
        config = tmp_path / f"{name}.toml"
        config.write_text(text)
        bridge = Bridge(config, port, db, tmp_path / f"{name}.log", env)
        bridge.store_url = store_url
        bridges.append(bridge)
        return bridge.start() if start else bridge

    yield make
    for bridge in bridges:
        if bridge.proc and bridge.proc.poll() is None:
            bridge.proc.kill()
            bridge.proc.wait(10)
    stack.close()  # the PostgreSQL schemas, once no bridge uses them
    for bridge in bridges:
        logs = bridge.logs()
        for secret in ALL_SECRETS:  # no configured secret may ever reach a log line
            assert secret not in logs, "a secret appeared in the bridge's logs"


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
