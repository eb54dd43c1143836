"""Status URLs for senders: a signed, expiring token that names one event."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any, Protocol

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner
from itsdangerous.encoding import base64_encode, int_to_bytes
from starlette.requests import Request
from starlette.responses import JSONResponse

from bridge.core.errors import BridgeError, NotFound
from bridge.core.models import iso, with_iso_times
from bridge.signing import sign
from bridge.store.records import DeliveryRecord, EventRecord, ExecutionRecord, RouteRecord
from bridge.store.roles import Ingest, Routes


class StatusStore(Ingest, Routes, Protocol):
    """What the status view reads: the event, and whether its route is paused."""


class InvalidToken(BridgeError):
    status_code = 404
    code = "invalid_token"


class ExpiredToken(BridgeError):
    status_code = 410
    code = "expired_token"


class StatusTokens:
    """`{event id}.{timestamp}.{HMAC-SHA256}`: URL-safe, tamper-evident, expiring."""

    def __init__(self, secret_key: str, max_age: float) -> None:
        self.signer = TimestampSigner(secret_key, salt="bridge.status",
                                      digest_method=hashlib.sha256)
        self.max_age = max_age
        self._key = self.signer.derive_key()
        self._second = -1
        self._stamp = b""

    def make(self, event_id: str) -> str:
        """Exactly `self.signer.sign(event_id)`, with the derived key and the current second's
        timestamp computed once instead of for every event (this runs on every webhook)."""
        now = int(time.time())
        if now != self._second:
            self._second, self._stamp = now, b"." + base64_encode(int_to_bytes(now))
        value = event_id.encode("ascii") + self._stamp
        signature = base64_encode(sign(self._key, value))
        return (value + b"." + signature).decode("ascii")

    def read(self, token: str) -> str:
        try:
            value = self.signer.unsign(token, max_age=int(self.max_age))
        except SignatureExpired:
            raise ExpiredToken("this status link has expired") from None
        except BadSignature:
            raise InvalidToken("this status link is not valid") from None
        return value.decode("ascii", "replace")


def public_view(event: EventRecord, routes: Mapping[str, RouteRecord] | None = None
                ) -> dict[str, Any]:
    """What a sender may see: its event's states and outcomes (each delivery by the trigger it
    starts), and nothing else of the operator's configuration: no route or channel names, no
    filter reasons, no errors (a callback URL the sender supplied shows only whether it was
    delivered, so the link cannot be used to probe which ports or paths exist behind it).
    `routes` is `Routes.route_states()`."""
    executions = {x.delivery_id: x for x in event.executions}
    paused = {name for name, route in (routes or {}).items() if route.paused}
    view: dict[str, Any] = with_iso_times({
        "id": event.id,
        "source": event.source,
        "event_type": event.event_type,
        "idempotency_key": event.idempotency_key,
        "received_at": event.received_at,
        "state": event.state,
        "deliveries": [
            {"trigger": d.trigger, "status": d.status, "attempts": d.attempts,
             "execution_id": d.execution_id,
             "waiting": _public_waiting(d, d.route in paused),
             "next_attempt_at": d.next_attempt_at if d.status == "pending" else None,
             "execution": _execution(executions.get(d.id))}
            for d in event.deliveries
        ],
        "filtered": len(event.filtered),
        "callbacks": [{"status": c.status, "attempts": c.attempts} for c in event.callbacks],
    })
    return view


def _public_waiting(delivery: DeliveryRecord, paused: bool) -> str | None:
    kind = _wait(delivery, paused)
    return None if kind is None else _SENDER[kind].format(due=iso(delivery.next_attempt_at))


def _wait(delivery: DeliveryRecord, paused: bool) -> str | None:
    """Why a delivery on its way waits, as a key of `_SENDER` and `_OPERATOR` (the same reason,
    told to each); None once it is not waiting."""
    if delivery.status == "handed_off":
        return "handed_off"
    if delivery.status not in ("pending", "leased"):
        return None
    if delivery.channel:
        return f"channel_{delivery.status}"
    if paused:
        return "paused"
    if delivery.status == "leased":
        return "leased"
    return "retrying" if delivery.last_error else "queued"


# A sender is told the state alone; an operator also which channel, why, and what to check.
_SENDER = {"handed_off": "handed on; its outcome will be reported here",
           "channel_leased": "sent on, not yet acknowledged",
           "channel_pending": "waiting to be sent on",
           "paused": "paused by the receiving side; it will be sent once resumed",
           "leased": "being sent now",
           "retrying": "retrying at {due}",
           "queued": "queued, due {due}"}
_OPERATOR = {"handed_off": "held by an agent of its channel, which sends it on-premises and "
                           "reports the outcome here",
             "channel_leased": "sent to an agent of channel {channel}, not yet acknowledged",
             "channel_pending": "waiting for an agent of channel {channel} "
                                "(bridge channels list)",
             "leased": "being sent now",
             "retrying": "retrying at {due}: {error}",
             "queued": "queued, due {due}"}


# What to check when the platform refuses a route's calls (the route is then paused).
_HINTS = {"401": "check `[platform] trigger_key`",
          "403": "check `[platform] trigger_key` and the key's role",
          "404": "check the route's `trigger` name on the platform"}


def waiting(event: EventRecord, routes: Mapping[str, RouteRecord]) -> dict[str, str]:
    """Why each delivery still on its way waits, and until when, by delivery id: the route
    paused and why, with what to check; the retry and its last error, with the time of the
    next attempt. `routes` is `Routes.route_states()`."""
    reasons: dict[str, str] = {}
    for delivery in event.deliveries:
        reason = _waiting(delivery, routes.get(delivery.route))
        if reason is not None:
            reasons[delivery.id] = reason
    return reasons


def _waiting(delivery: DeliveryRecord, route: RouteRecord | None) -> str | None:
    kind = _wait(delivery, route is not None and route.paused)
    if kind == "paused" and route is not None:
        reason = route.reason or "paused"
        hint = _HINTS.get(reason[:3])
        text = f"route paused: platform answered {reason}" if hint else \
            f"route paused: {reason}"
        return text + (f" ({hint})" if hint else " (bridge routes resume, or deliveries retry)")
    return None if kind is None else _OPERATOR[kind].format(
        channel=delivery.channel, due=iso(delivery.next_attempt_at), error=delivery.last_error)


def _execution(execution: ExecutionRecord | None) -> dict[str, Any] | None:
    if execution is None:
        return None
    return {"id": execution.id, "status": execution.status, "output": execution.output,
            "node_results": execution.node_results, "error": execution.error,
            "started_at": execution.started_at, "completed_at": execution.completed_at}


def settled(event: EventRecord) -> bool:
    """Nothing more will happen to the event's deliveries and executions."""
    return (not any(d.status in ("pending", "leased", "handed_off") for d in event.deliveries)
            and not any(x.running for x in event.executions))


async def show(request: Request) -> JSONResponse:
    tokens: StatusTokens = request.app.state.tokens
    store: StatusStore = request.app.state.store
    event_id = tokens.read(request.path_params["token"])
    event = await store.get_event(event_id)
    if event is None:
        raise NotFound("this event is no longer stored")
    return JSONResponse(public_view(event, await store.route_states()))
