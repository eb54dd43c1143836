"""Twitch EventSub: `Twitch-Eventsub-Message-Signature: sha256=<hex HMAC-SHA256(
message_id + message_timestamp + body)>`; the timestamp is RFC 3339 and must be within 10 minutes.

`webhook_callback_verification` is answered with the `challenge` as text/plain; `revocation`
messages are stored as events of type `revocation.{subscription type}`. Idempotency: the message
id (the same when Twitch resends). Event type: `Twitch-Eventsub-Subscription-Type`.
"""

from __future__ import annotations

from datetime import datetime

from bridge.core.errors import MalformedSignature, SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field, decode_hex
from bridge.signing import any_match, sign

PREFIX = "twitch-eventsub-message-"


class Twitch(Provider):
    name = "twitch"
    default_tolerance = 600.0

    def verify(self, request: InboundRequest, now: float) -> None:
        header = self.require(request, PREFIX + "signature")
        message_id = self.require(request, PREFIX + "id")
        stamp = self.require(request, PREFIX + "timestamp")
        if not header.startswith("sha256="):
            raise MalformedSignature("signature must start with 'sha256='")
        provided = decode_hex(header[7:])
        try:
            # Twitch sends nanoseconds; Python parses at most microseconds.
            head, _, frac = stamp.rstrip("Z").partition(".")
            when = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()
        except ValueError:
            raise MalformedSignature("timestamp is not RFC 3339") from None
        self.check_timestamp(str(int(when)), now)
        message = (message_id + stamp).encode() + request.body
        if not any_match([sign(key, message) for key in self.keys], [provided]):
            raise SignatureError("signature does not match")

    def handshake(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes] | None:
        if request.header(PREFIX + "type") == "webhook_callback_verification":
            challenge = body_field(request, "challenge") or ""
            return 200, {"content-type": "text/plain"}, challenge.encode()
        return None

    def identify(self, request: InboundRequest) -> Identity:
        kind = request.header("twitch-eventsub-subscription-type") or \
            body_field(request, "subscription", "type") or "unknown"
        if request.header(PREFIX + "type") == "revocation":
            kind = f"revocation.{kind}"
        return Identity(request.header(PREFIX + "id"), kind)
