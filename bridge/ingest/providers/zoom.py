"""Zoom: `x-zm-signature: v0=<hex HMAC-SHA256(secret token, "v0:{ts}:{body}")>`,
`x-zm-request-timestamp`; window 300 s (Zoom names none).

`endpoint.url_validation` is answered inline with `{"plainToken", "encryptedToken"}`, the
encrypted token being hex HMAC-SHA256(secret token, plainToken). Zoom documents no delivery id,
so the key is the body hash (a retry repeats the body). Event type: the body's `event`.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from bridge.ingest.providers.base import (
    Identity,
    InboundRequest,
    Provider,
    body_field,
)


class Zoom(Provider):
    name = "zoom"
    default_tolerance = 300.0

    def verify(self, request: InboundRequest, now: float) -> None:
        self.verify_v0(request, now, "x-zm-signature", "x-zm-request-timestamp")

    def handshake(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes] | None:
        if body_field(request, "event") != "endpoint.url_validation":
            return None
        plain = body_field(request, "payload", "plainToken") or ""
        encrypted = hmac.new(self.keys[0], plain.encode(), hashlib.sha256).hexdigest()
        body = json.dumps({"plainToken": plain, "encryptedToken": encrypted}).encode()
        return 200, {"content-type": "application/json"}, body

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(None, body_field(request, "event") or "unknown")
