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
