"""Rows to records and back: the columns a claim reads, how an execution's output is stored,
multi-row inserts within the dialects' parameter limits."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from bridge.core import codec
from bridge.core.models import (
    ClaimedCallback,
    ClaimedDelivery,
    Completion,
    ExecutionResult,
    VerifiedEvent,
)
from bridge.store.dialect import Session, placeholders
from bridge.store.records import (
    ExecutionRecord,
    decode_json,
)

log = logging.getLogger("bridge.store")


def read_rows(conn: Session, sql: str, params: Sequence[Any]
           ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """One read, run to its end in one step on the reader's thread. (Executing and fetching as
    two steps let another read start in between; the connection's read transaction then stayed
    open across both, and a later read could see a snapshot older than a commit it had already
    been told about.)"""
    cursor = conn.execute(sql, params)
    try:
        return [d[0] for d in cursor.description], cursor.fetchall()
    finally:
        cursor.close()

MAX_PARAMS = 30000  # below SQLite's default limit of 32,766 bound parameters per statement

def insert_rows(conn: Session, target: str, rows: list[tuple[Any, ...]],
                 tail: str = "") -> int:
    """`INSERT INTO {target} VALUES (...), (...), ...{tail}`: one statement per up to
    MAX_PARAMS values instead of one per row. With a `RETURNING` tail, how many rows it
    returned (those inserted); otherwise 0."""
    if not rows:
        return 0
    width = len(rows[0])
    per = max(1, MAX_PARAMS // width)
    one = "(" + placeholders(width) + ")"
    returned = 0
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        cursor = conn.execute(f"INSERT INTO {target} VALUES " + ",".join([one] * len(chunk))
                              + tail, [value for row in chunk for value in row])
        if "RETURNING" in tail:
            returned += len(cursor.fetchall())
    return returned

# Claims select what they will lease with this marker: a comment to SQLite (one writer at a
# time), `FOR UPDATE SKIP LOCKED` on PostgreSQL, where replicas claiming at once each skip the
# rows another is taking instead of waiting for them.
SKIP_LOCKED = "{skip_locked}"

FOR_UPDATE = "{for_update}"  # likewise: a row lock on PostgreSQL

CLAIMED_COLUMNS = ("id, event_id, route, trigger, idempotency_key, body, content_type, attempts,"
            " failures, created_at, reached_at")

def claimed_delivery(row: tuple[Any, ...], probe: bool = False) -> ClaimedDelivery:
    """A claimed delivery from a row of the `CLAIMED_COLUMNS` columns, in that order."""
    (id_, event_id, route, trigger, key, body, content_type, attempts, failures, created_at,
     reached_at) = row
    return ClaimedDelivery(id_, event_id, route, trigger, key, bytes(body), content_type,
                           attempts, failures, created_at, probe, reached_at)

def claimed_callback(row: tuple[Any, ...]) -> ClaimedCallback:
    (id_, execution_id, event_id, url, supplied, attempts, failures, created_at, source,
     provider, event_type, key, received_at, trigger, status, output, node_results, error,
     started_at, completed_at) = row
    result = ExecutionResult(status, decode_json(output), decode_json(node_results), error,
                             started_at, completed_at)
    completion = Completion(event_id, source, provider, event_type, key, received_at, trigger,
                            execution_id, result, at=created_at)
    return ClaimedCallback(id_, execution_id, event_id, url, bool(supplied), completion,
                           attempts, failures, created_at)

def execution_record(row: dict[str, Any]) -> ExecutionRecord:
    return ExecutionRecord(**{**row, "output": decode_json(row["output"]),
                              "node_results": decode_json(row["node_results"])})

def stored_json(value: Any) -> str | None:
    """An execution's output or node results as stored: `codec.dumps_document` (orjson, a 1.2 KB
    output in ~1 µs against ~15 µs, with json for what orjson refuses)."""
    return None if value is None else codec.dumps_document(value).decode()

def filtered_column(event: VerifiedEvent) -> str | None:
    return json.dumps(event.filtered, ensure_ascii=False) if event.filtered else None
