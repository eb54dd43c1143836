"""Standard Webhooks, and Svix (the same scheme under `svix-*` header names).

Signed string `{id}.{timestamp}.{body}`, HMAC-SHA256 keyed with base64-decode(secret minus
`whsec_`), sent as a space-separated list of `v1,<base64>` (several during a rotation; other
versions are ignored). Timestamp window ±300 s by default, both directions. Idempotency: the
message id (`webhook-id` / `svix-id`), stable across retries. Event type: the body's `type`.
"""

from __future__ import annotations

import base64
import binascii

from bridge.config import SourceConfig
from bridge.core.errors import ConfigError, MalformedSignature, SignatureError
from bridge.ingest.providers.base import (
    Identity,
    InboundRequest,
    Provider,
    any_match,
    body_field,
    decode_b64,
    sign,
)

PREFIXES = ("svix", "webhook")  # svix-* wins when both are present, as in Svix's library


def decode_secret(secret: str) -> bytes:
    """`whsec_<base64>` -> key bytes; padding may be missing. Raises ValueError."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if not key:
        raise ValueError("empty key")
    return key


class Standard(Provider):
    name = "standard"
    default_tolerance = 300.0

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.keys = []
        for i, secret in enumerate(source.secrets):
            try:
                self.keys.append(decode_secret(secret.reveal()))
            except ValueError:
                key = "secret" if len(source.secrets) == 1 else f"secrets[{i}]"
                raise ConfigError(
                    f"{self.where(key)}: expected 'whsec_' followed by base64"
                ) from None

    def headers(self, request: InboundRequest) -> tuple[str, str, str]:
        for prefix in PREFIXES:
            if f"{prefix}-signature" in request.headers:
                return (
                    self.require(request, f"{prefix}-id"),
                    self.require(request, f"{prefix}-timestamp"),
                    self.require(request, f"{prefix}-signature"),
                )
        raise SignatureError("missing webhook-signature header")

    def verify(self, request: InboundRequest, now: float) -> None:
        msg_id, timestamp, header = self.headers(request)
        provided: list[bytes] = []
        entries = header.split()
        for entry in entries:
            version, sep, value = entry.partition(",")
            if not sep:
                raise MalformedSignature("webhook-signature entries must be 'v1,<base64>'")
            if version == "v1":
                provided.append(decode_b64(value))
        ts = self.check_timestamp(timestamp, now)
        if not provided:
            raise SignatureError("no v1 signature")
        message = f"{msg_id}.{ts}.".encode() + request.body
        if not any_match([sign(key, message) for key in self.keys], provided):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        msg_id = request.header("svix-id") if "svix-signature" in request.headers else None
        msg_id = msg_id or request.header("webhook-id")
        return Identity(msg_id, body_field(request, "type") or "unknown")
