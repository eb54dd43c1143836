"""The harness: the real bridge as a subprocess on a free port (`Bridge`), its config, and
waiting on conditions. Nothing of the bridge is mocked."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.devtools.emulator import EmulatorServer
from tests.support import http

# BRIDGE_TEST_STORE=postgres runs every bridge the suite starts on PostgreSQL instead of SQLite.
ON_POSTGRES = os.environ.get("BRIDGE_TEST_STORE") == "postgres"


sqlite_only = pytest.mark.skipif(ON_POSTGRES, reason="injects its fault into the SQLite file")


GITHUB_SECRET = "gh-test-secret-8d1e"


STRIPE_SECRET = "whsec_test_stripe_secret_5c2a"


STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


TRIGGER_KEY = "tk-test-trigger-key-77f1"


API_KEY = "ak-test-api-key-19c3"


ADMIN_TOKEN = "adm-test-reads-5d2e"  # what tests read the bridge's state through


ALL_SECRETS = [GITHUB_SECRET, STRIPE_SECRET, STANDARD_SECRET, TRIGGER_KEY, API_KEY, ADMIN_TOKEN,
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
        self.args: list[str] = []  # more options for `bridge serve`

    def start(self, timeout: float = 120.0) -> Bridge:
        """Start the process and wait until it answers /healthz: on a loaded machine that can
        take a while, so the bound is generous; a process that exits fails at once."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--config", str(self.config_path),
             *self.args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if http.get(f"{self.url}/healthz", timeout=1).status_code == 200:
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
        return http.post(f"{self.url}{path}", content=body, headers=headers or {}, timeout=30,
                          **kwargs)

    # What the bridge holds, read as an operator reads it: through the admin API, whichever
    # store it runs on.

    def admin(self, path: str, **params: Any) -> Any:
        """GET an admin endpoint with the first admin token in the bridge's config."""
        tokens = tomllib.loads(self.config_path.read_text()).get("admin", {}).get("tokens")
        assert tokens, "this bridge has no [admin] tokens to read its state with"
        answer = http.get(f"{self.url}{path}", params=params, timeout=30,
                           headers={"authorization": f"Bearer {tokens[0]}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        """Every stored event (the list's lines), oldest first."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.admin("/admin/events", limit=500, **filters,
                              **({"cursor": cursor} if cursor else {}))
            out += page["events"]
            cursor = page["next_cursor"]
            if not cursor:
                return out[::-1]

    def event(self, event_id: str) -> dict[str, Any]:
        """One event with its deliveries (and their attempts), executions and callbacks."""
        return dict(self.admin(f"/admin/events/{event_id}"))

    def details(self) -> list[dict[str, Any]]:
        return [self.event(line["id"]) for line in self.events()]

    def deliveries(self) -> list[dict[str, Any]]:
        """Every delivery of every event, each with its `event_id`, oldest event first."""
        return [{**d, "event_id": e["id"]} for e in self.details() for d in e["deliveries"]]

    def statuses(self) -> list[str]:
        return [d["status"] for d in self.deliveries()]

    def attempts(self) -> list[dict[str, Any]]:
        return [a for d in self.deliveries() for a in d["attempt_log"]]

    def executions(self) -> list[dict[str, Any]]:
        return [x for e in self.details() for x in e["executions"]]

    def callbacks(self) -> list[dict[str, Any]]:
        return [c for e in self.details() for c in e["callbacks"]]

    def outbox(self) -> dict[str, int]:
        """Deliveries by status, from /metrics: one cheap request, for waits over many events."""
        from prometheus_client.parser import text_string_to_metric_families

        text = http.get(f"{self.url}/metrics", timeout=30).text
        return {sample.labels["status"]: int(sample.value)
                for family in text_string_to_metric_families(text)
                if family.name == "bridge_outbox_deliveries" for sample in family.samples}

    def routes(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.admin("/admin/routes")["routes"]}

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the bridge's real store directly: its SQLite file, or its PostgreSQL schema
        when the suite runs on PostgreSQL (BRIDGE_TEST_STORE=postgres). Only for what the
        admin API does not show (bytes as stored, internal columns). `sql` is a template, as
        the store's own statements are (`{p}` a placeholder)."""
        from bridge.store.dialect import POSTGRES, SQLITE

        if self.store_url:
            import psycopg

            with psycopg.connect(self.store_url, autocommit=True) as conn:
                rows = conn.execute(POSTGRES.render(sql, bool(params)),  # type: ignore[arg-type]
                                    list(params) or None).fetchall()
            return [tuple(row) for row in rows]
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return conn.execute(SQLITE.render(sql), params).fetchall()
        finally:
            conn.close()


SLOW = float(os.environ.get("BRIDGE_TEST_SLOW", "4"))


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it is truthy (returned) or `timeout` (times `SLOW`) passes."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


def barrier(bridge: Bridge, emulator: EmulatorServer) -> None:
    """Wait until the bridge has provably moved on, instead of sleeping and hoping: a fresh
    Stripe event, sent now, reaches the platform (trigger `stripe-events`). The forwarder takes
    due deliveries oldest first, across routes, so whatever was due before it has been taken.
    Tests that use it count calls of other triggers."""
    import json
    import secrets

    from tests.support.signatures import stripe_headers

    name = f"evt_barrier_{secrets.token_hex(4)}"
    body = json.dumps({"id": name, "type": "barrier.passed"}).encode()
    answer = bridge.post("/hooks/stripe", body, stripe_headers(body))
    assert answer.status_code == 202, answer.text
    wait_for(lambda: any(str(c["key"]).startswith(f"stripe:{name}")
                         for c in list(emulator.emulator.calls)))
