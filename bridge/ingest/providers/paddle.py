"""Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>...]`, HMAC-SHA256 of
`{ts}:{body}` with the notification destination's secret; window ±5 s as in Paddle's SDK.

Unknown keys in the header are ignored (Paddle's SDK rejects them, which would break on a future
scheme). Idempotency: the body's `event_id`, else `notification_id`. Event type: `event_type`.
"""

from __future__ import annotations

from bridge.core.errors import SignatureError
from bridge.ingest.providers.base import (
    Identity,
    InboundRequest,
    Provider,
    body_field,
    timestamped_signatures,
)
from bridge.signing import any_match, sign


class Paddle(Provider):
    name = "paddle"
    default_tolerance = 5.0

    def verify(self, request: InboundRequest, now: float) -> None:
        header = self.require(request, "paddle-signature")
        timestamp, signatures = timestamped_signatures(header, ";", "ts", "h1")
        ts = self.check_timestamp(timestamp, now)
        if not signatures:
            raise SignatureError("no h1 signature")
        message = f"{ts}:".encode() + request.body
        if not any_match([sign(key, message) for key in self.keys], signatures):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "event_id") or body_field(request, "notification_id"),
                        body_field(request, "event_type") or "unknown")
