"""Discord interactions: Ed25519 over `X-Signature-Timestamp + body`, signature in
`X-Signature-Ed25519` (hex), verified with the application's public key (64 hex characters, the
`secret`). A PING (type 1) is answered inline with a PONG. No timestamp window by default (set
`tolerance` to add one). Idempotency: the interaction `id`. Event type: `interaction.{type}`.
"""

from __future__ import annotations

import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bridge.config import SourceConfig
from bridge.core.errors import ConfigError, MalformedSignature, SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field, decode_hex


class Discord(Provider):
    name = "discord"

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.keys = []
        for i, secret in enumerate(source.secrets):
            try:
                self.keys.append(Ed25519PublicKey.from_public_bytes(bytes.fromhex(secret.reveal())))
            except ValueError:
                where = "secret" if len(source.secrets) == 1 else f"secrets[{i}]"
                raise ConfigError(
                    f"{self.where(where)}: expected the application's public key (64 hex characters)"
                ) from None

    def verify(self, request: InboundRequest, now: float) -> None:
        signature = decode_hex(self.require(request, "x-signature-ed25519"))
        stamp = self.require(request, "x-signature-timestamp")
        if self.tolerance is not None:
            self.check_timestamp(stamp, now)
        if len(signature) != 64:
            raise MalformedSignature("an Ed25519 signature is 64 bytes")
        message = stamp.encode() + request.body
        for key in self.keys:
            try:
                key.verify(signature, message)
                return
            except InvalidSignature:
                continue
        raise SignatureError("signature does not match")

    def handshake(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes] | None:
        if body_field(request, "type") == "1":
            return 200, {"content-type": "application/json"}, json.dumps({"type": 1}).encode()
        return None

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "id"), f"interaction.{body_field(request, 'type')}")
