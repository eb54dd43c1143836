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

from bridge.core import codec
from bridge.core.models import Completion, iso

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
