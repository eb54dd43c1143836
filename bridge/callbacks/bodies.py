"""What a finished execution produces: the callback body, rendered from what the store keeps
of it, the same bytes on every attempt.

    {"type": "execution.completed" | "execution.failed" | "execution.cancelled"
             | "execution.timed_out",
     "timestamp": "<when the execution ended, as seen by the bridge>",
     "data": {"event": {id, source, provider, event_type, idempotency_key, received_at},
              "trigger": "<trigger name>",
              "execution": {id, status, output, node_results, started_at, completed_at}}}
"""

from __future__ import annotations

import json
from typing import Any

from bridge.core import codec
from bridge.core.models import Completion, ExecutionResult, iso

TYPES = {"completed": "execution.completed", "failed": "execution.failed",
         "cancelled": "execution.cancelled", "timed_out": "execution.timed_out"}


def callback_body(done: Completion) -> bytes:
    result = done.result
    document = {
        "type": TYPES.get(result.status, f"execution.{result.status}"),
        "timestamp": iso(done.at),
        "data": {
            "event": {
                "id": done.event_id, "source": done.source, "provider": done.provider,
                "event_type": done.event_type, "idempotency_key": done.idempotency_key,
                "received_at": iso(done.received_at),
            },
            "trigger": done.trigger,
            "execution": {
                "id": done.execution_id, "status": result.status, "output": result.output,
                "node_results": result.node_results, "error": result.error,
                "started_at": result.started_at, "completed_at": result.completed_at,
            },
        },
    }
    return codec.dumps_document(document)


def parse_result(data: Any) -> ExecutionResult | None:
    """An ExecutionResult from any of the platform's shapes (GET, SSE event, push); None when
    the document carries no status. Unknown fields are ignored."""
    if not isinstance(data, dict):
        return None
    status = data.get("status")
    kind = data.get("type")
    if kind == "execution_complete" and not status:
        status = "completed"
    elif kind == "execution_failed" and not status:
        status = "failed"
    if not isinstance(status, str) or not status:
        return None
    if status in ("complete", "succeeded", "success"):
        status = "completed"
    elif status in ("canceled",):
        status = "cancelled"
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)
    return ExecutionResult(
        status=status, output=data.get("output"), node_results=data.get("node_results"),
        error=str(error) if error is not None else None,
        started_at=_text(data.get("started_at")), completed_at=_text(data.get("completed_at")),
    )


def execution_id_of(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    for key in ("execution_id", "id", "executionId"):
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
