"""HubSpot v3: `X-HubSpot-Signature-v3: <base64 HMAC-SHA256(client secret,
method + uri + body + timestamp)>`, `X-HubSpot-Request-Timestamp` in milliseconds, 5 minutes.

`uri` is the full URL HubSpot called: the bridge's `public_url` + path + query, or the source's
`url` option. HubSpot posts a batch: a JSON array of events, each with its own `eventId`; the
request is keyed on its body hash and each item on `{source}:{eventId}` (see docs on batches).
Event type: the first item's `subscriptionType`.
"""

from __future__ import annotations

from bridge.config import SourceConfig
from bridge.core.errors import SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider
from bridge.signing import any_match, decode_b64, sign


class HubSpot(Provider):
    name = "hubspot"
    options = frozenset({"url"})
    default_tolerance = 300.0

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.url = self.option("url")

    def verify(self, request: InboundRequest, now: float) -> None:
        provided = decode_b64(self.require(request, "x-hubspot-signature-v3"))
        stamp = self.require(request, "x-hubspot-request-timestamp")
        self.check_timestamp(str(int(stamp) // 1000) if stamp.isdigit() else stamp, now,
                             past_only=False)
        uri = str(self.url or request.url)
        message = (request.method + uri).encode() + request.body + stamp.encode()
        if not any_match([sign(key, message) for key in self.keys], [provided]):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        events = request.json()
        if not isinstance(events, list):
            events = [events] if isinstance(events, dict) else []
        keys = tuple(str(e["eventId"]) for e in events
                     if isinstance(e, dict) and isinstance(e.get("eventId"), int | str))
        first = events[0] if events and isinstance(events[0], dict) else {}
        kind = first.get("subscriptionType") if isinstance(first.get("subscriptionType"), str) \
            else "unknown"
        return Identity(None, str(kind), keys)
