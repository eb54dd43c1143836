"""Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...][,v0=...]`.

The signed string is `{t}.{body}`, HMAC-SHA256 keyed with the endpoint secret's UTF-8 bytes
(`whsec_` included, not base64-decoded). Only `v1` counts; during a secret roll Stripe sends one
`v1` per secret. Tolerance defaults to 300 s and, like Stripe's own libraries, only rejects
timestamps in the past. Idempotency: the event `id` in the body; event type: `type`.
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


class Stripe(Provider):
    name = "stripe"
    default_tolerance = 300.0

    def verify(self, request: InboundRequest, now: float) -> None:
        header = self.require(request, "stripe-signature")
        timestamp, signatures = timestamped_signatures(header, ",", "t", "v1")
        ts = self.check_timestamp(timestamp, now, past_only=True)
        if not signatures:
            raise SignatureError("no v1 signature")
        message = f"{ts}.".encode() + request.body
        if not any_match([sign(key, message) for key in self.keys], signatures):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "id"), body_field(request, "type") or "unknown")
