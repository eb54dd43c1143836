"""A PostgreSQL database for tests: a schema of its own per test, created and dropped here, so
runs never collide (tests only).

The server is `$BRIDGE_TEST_POSTGRES` (default: the machine's, on 127.0.0.1:5432, trust auth,
database `test`). Where none is reachable the tests that need it skip with the reason, unless
`BRIDGE_REQUIRE_POSTGRES=1` (set by CI), where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

SERVER = os.environ.get("BRIDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def unavailable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        psycopg.connect(SERVER, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at {SERVER} ({exc.__class__.__name__})"
    return None


def require() -> None:
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("BRIDGE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL tests are required here but cannot run: {reason}")
    pytest.skip(reason)


@contextmanager
def schema() -> Iterator[str]:
    """A fresh schema; yields a URL whose connections use it."""
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    separator = "&" if "?" in SERVER else "?"
    try:
        yield f"{SERVER}{separator}options={quote(f'-csearch_path={name}')}"
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


class OwnServer:
    """A PostgreSQL server of the test's own, in a temporary directory on a free port, so a test
    can stop it (as a crash would) and start it again. Runs as the `postgres` user (PostgreSQL
    refuses root)."""

    def __init__(self, directory: str, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    @staticmethod
    def unavailable() -> str | None:
        import shutil

        if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
            return "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            return "running PostgreSQL from root needs runuser"
        return None

    def _run(self, *args: str) -> None:
        import subprocess

        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> OwnServer:
        import shutil

        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", f"{self.directory}/data", "-U", "postgres",
                  "--auth=trust", "-E", "UTF8")
        return self.start()

    def start(self) -> OwnServer:
        self._run("pg_ctl", "-D", f"{self.directory}/data", "-w", "-l",
                  f"{self.directory}/server.log", "-o",
                  f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1", "start")
        return self

    def crash(self) -> None:
        """Stop at once, as a power cut would: no checkpoint, clients cut off."""
        self._run("pg_ctl", "-D", f"{self.directory}/data", "-m", "immediate", "stop")

    def stop(self) -> None:
        import contextlib
        import subprocess

        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", f"{self.directory}/data", "-m", "fast", "stop")
