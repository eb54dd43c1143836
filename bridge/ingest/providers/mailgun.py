"""Mailgun: the signature travels in the body, not a header: `signature.{timestamp, token,
signature}` (JSON webhooks) or the `timestamp`, `token`, `signature` form fields (legacy), where
`signature` is hex HMAC-SHA256(webhook signing key, timestamp + token). The body itself is not
signed, so a token is accepted once: a second event with an already used token is refused (401);
the same event delivered again is a duplicate. Window 300 s. Idempotency: `event-data.id`.
Event type: `event-data.event` (or the form's `event`).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from bridge.core.errors import MalformedSignature, SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field, decode_hex
from bridge.signing import any_match, sign


class Mailgun(Provider):
    name = "mailgun"
    default_tolerance = 300.0

    def fields(self, request: InboundRequest) -> dict[str, str]:
        if request.json() is not None:
            return {k: body_field(request, "signature", k) or ""
                    for k in ("timestamp", "token", "signature")}
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        return {k: form.get(k, "") for k in ("timestamp", "token", "signature", "event")}

    def verify(self, request: InboundRequest, now: float) -> None:
        fields = self.fields(request)
        if not (fields["timestamp"] and fields["token"] and fields["signature"]):
            raise SignatureError("missing signature fields")
        ts = self.check_timestamp(fields["timestamp"], now)
        provided = decode_hex(fields["signature"])
        if len(fields["token"]) > 256:
            raise MalformedSignature("token too long")
        message = f"{ts}{fields['token']}".encode()
        if not any_match([sign(key, message) for key in self.keys], [provided]):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        fields = self.fields(request)
        kind = body_field(request, "event-data", "event") or fields.get("event") or "unknown"
        return Identity(body_field(request, "event-data", "id"), kind,
                        nonce=fields["token"] or None)
