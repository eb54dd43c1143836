"""Schemes that sign a timestamp with the body, each in a header of its own.

    calendly  Calendly-Webhook-Signature: t=<s>,v1=<hex>   HMAC-SHA256 of `{t}.{body}`,
              window 180 s (Calendly's advice)             no id (body hash), type body event
    mux       Mux-Signature: t=<s>,v1=<hex>                HMAC-SHA256 of `{t}.{body}`,
              window 300 s (Mux's SDK default)             key body id, type body type
    zendesk   X-Zendesk-Webhook-Signature: <base64>        HMAC-SHA256 of timestamp + body (no
              X-Zendesk-Webhook-Signature-Timestamp (ISO)  separator), window 300 s;
                                                           key body id, type body type

    webflow   x-webflow-signature: <hex>                  HMAC-SHA256 of `{timestamp}:{body}`,
              x-webflow-timestamp (ms)                     window 300 s; no id (body hash),
                                                           type body triggerType

The window is always read from the signed timestamp, both directions; every configured
secret is tried (rotation).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from bridge.core.errors import MalformedSignature, SignatureError
from bridge.ingest.providers.base import (
    Identity,
    InboundRequest,
    Provider,
    body_field,
    decode_hex,
    timestamped_signatures,
)
from bridge.signing import any_match, decode_b64, sign


class _TimestampDotBody(Provider):
    header: ClassVar[str] = ""

    def verify(self, request: InboundRequest, now: float) -> None:
        stamp, provided = timestamped_signatures(self.require(request, self.header), ",",
                                                 "t", "v1")
        self.check_timestamp(stamp, now)
        expected = [sign(key, stamp.encode() + b"." + request.body) for key in self.keys]
        if not any_match(expected, provided):
            raise SignatureError("signature does not match")


class Calendly(_TimestampDotBody):
    name = "calendly"
    header = "calendly-webhook-signature"
    default_tolerance = 180.0

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(None, body_field(request, "event") or "unknown")


class Mux(_TimestampDotBody):
    name = "mux"
    header = "mux-signature"
    default_tolerance = 300.0

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "id"), body_field(request, "type") or "unknown")


class Zendesk(Provider):
    name = "zendesk"
    default_tolerance = 300.0

    def verify(self, request: InboundRequest, now: float) -> None:
        given = self.require(request, "x-zendesk-webhook-signature")
        stamp = self.require(request, "x-zendesk-webhook-signature-timestamp")
        try:
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise MalformedSignature("the signature timestamp is not an ISO 8601 time") from None
        self.check_timestamp(str(int(when)), now)
        expected = [sign(key, stamp.encode() + request.body) for key in self.keys]
        if not any_match(expected, [decode_b64(given)]):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "id"), body_field(request, "type") or "unknown")


class Webflow(Provider):
    name = "webflow"
    default_tolerance = 300.0

    def verify(self, request: InboundRequest, now: float) -> None:
        given = self.require(request, "x-webflow-signature")
        stamp = self.require(request, "x-webflow-timestamp")
        if not stamp.isdigit():
            raise MalformedSignature("x-webflow-timestamp is not milliseconds")
        self.check_timestamp(str(int(stamp) // 1000), now)
        expected = [sign(key, stamp.encode() + b":" + request.body) for key in self.keys]
        if not any_match(expected, [decode_hex(given)]):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(None, body_field(request, "triggerType") or "unknown")
