"""How the store's failures are told apart: an outage (503, retry later) or a bug (500), for SQLite's
result codes and psycopg's classes alike, translated here and nowhere else."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from bridge.core.errors import InternalError, StoreUnavailable

log = logging.getLogger("bridge.store")


# SQLite's primary result codes that mean the store cannot be used right now (busy, locked, out of
# memory, read-only, I/O, corrupt, full, cannot open, lock protocol, not a database). Anything
# else (a constraint, a bad parameter, bad SQL) is a bug: retrying later will not help.
_OUTAGE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})

class RefusedRun(BaseException):
    """A run of accepts the store refused: the batch is rolled back and applied again with each
    accept alone. A BaseException, so that no job's own error handling takes it for its own."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error

def retrieve(task: asyncio.Future[Any]) -> None:
    """Marks an outcome as seen, so one nobody waits for any more is not logged as lost."""
    if not task.cancelled():
        task.exception()

def outage(exc: BaseException) -> bool:
    """Is `exc` the store being unavailable (503, retry later), rather than a bug?"""
    if isinstance(exc, StoreUnavailable | OSError | MemoryError):
        return True
    if type(exc).__module__.startswith("psycopg"):  # the PostgreSQL store runs these jobs too
        import psycopg

        # Connection lost, server shutting down, statement timeout, serialization: retry later.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.Error) and code is not None:
        return (code & 0xFF) in _OUTAGE_CODES
    return isinstance(exc, sqlite3.OperationalError)  # no code: assume the worst

def job_error(exc: Exception) -> Exception:
    """A job's own failure: domain errors pass through; a database error is a bug, logged here
    with its traceback and answered as an internal error."""
    if isinstance(exc, sqlite3.Error | ValueError | TypeError) or \
            type(exc).__module__.startswith("psycopg"):
        log.error("store job failed", exc_info=(type(exc), exc, exc.__traceback__))
        return InternalError("internal error")
    return exc

def describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"
