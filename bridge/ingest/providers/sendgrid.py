"""SendGrid Event Webhook: ECDSA P-256/SHA-256 over `timestamp + body`, signature (base64 DER) in
`X-Twilio-Email-Event-Webhook-Signature`, timestamp in `...-Timestamp`; the `secret` is the
verification key as SendGrid shows it (base64 DER SubjectPublicKeyInfo). The body must be exactly
as sent (SendGrid ends it with CRLF). No window by default.

A request is a batch: a JSON array of events, each with an `sg_event_id`. The request is keyed on
its body hash and each item on `{source}:{sg_event_id}` (see the batch rule in the docs). Event
type: the first item's `event`.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from bridge.config import SourceConfig
from bridge.core.errors import ConfigError, SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider
from bridge.signing import decode_b64

SIGNATURE = "x-twilio-email-event-webhook-signature"
TIMESTAMP = "x-twilio-email-event-webhook-timestamp"


class SendGrid(Provider):
    name = "sendgrid"

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.keys: list[ec.EllipticCurvePublicKey] = []
        for i, secret in enumerate(source.secrets):
            try:
                key = load_der_public_key(base64.b64decode(secret.reveal(), validate=True))
            except (ValueError, binascii.Error):
                key = None
            if not isinstance(key, ec.EllipticCurvePublicKey):
                where = "secret" if len(source.secrets) == 1 else f"secrets[{i}]"
                raise ConfigError(f"{self.where(where)}: expected SendGrid's verification key "
                                  "(base64 DER public key)")
            self.keys.append(key)

    def verify(self, request: InboundRequest, now: float) -> None:
        signature = decode_b64(self.require(request, SIGNATURE))
        stamp = self.require(request, TIMESTAMP)
        if self.tolerance is not None:
            self.check_timestamp(stamp, now)
        message = stamp.encode() + request.body
        for key in self.keys:
            try:
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
                return
            except InvalidSignature:
                continue
        raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        events = request.json()
        items = events if isinstance(events, list) else []
        keys = tuple(str(e["sg_event_id"]) for e in items
                     if isinstance(e, dict) and isinstance(e.get("sg_event_id"), str))
        first = items[0] if items and isinstance(items[0], dict) else {}
        kind = first.get("event") if isinstance(first.get("event"), str) else "unknown"
        return Identity(None, str(kind), keys)
