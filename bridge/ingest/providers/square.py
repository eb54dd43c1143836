"""Square: `x-square-hmacsha256-signature: <base64 HMAC-SHA256(key, notification_url + body)>`.

`notification_url` must be exactly the URL configured in Square: by default the bridge's
`public_url` + `/hooks/{source}`, or the source's `notification_url` option. No timestamp.
Idempotency: the body's `event_id`. Event type: `type`.
"""

from __future__ import annotations

from bridge.config import SourceConfig
from bridge.core.errors import SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field
from bridge.signing import any_match, decode_b64, sign


class Square(Provider):
    name = "square"
    options = frozenset({"notification_url"})

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.url = self.option("notification_url")

    def verify(self, request: InboundRequest, now: float) -> None:
        provided = decode_b64(self.require(request, "x-square-hmacsha256-signature"))
        url = str(self.url or request.url.split("?", 1)[0])
        message = url.encode() + request.body
        if not any_match([sign(key, message) for key in self.keys], [provided]):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "event_id"), body_field(request, "type") or "unknown")
