"""The platform's answers about an execution, in any of its shapes (the trigger's answer, GET,
the execution list, SSE, a push): its id and its result. Unknown fields are ignored.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.core.models import ExecutionResult


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
