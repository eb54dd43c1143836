"""Standard Webhooks, and Svix (the same scheme under `svix-*` header names).

Signed string `{id}.{timestamp}.{body}`, HMAC-SHA256 keyed with base64-decode(secret minus
`whsec_`), sent as a space-separated list of `v1,<base64>` (several during a rotation; other
versions are ignored). Timestamp window ±300 s by default, both directions. Idempotency: the
message id (`webhook-id` / `svix-id`), stable across retries. Event type: the body's `type`.
"""

from __future__ import annotations

from bridge import signing
from bridge.config import SourceConfig
from bridge.core.errors import ConfigError, SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field

PREFIXES = ("svix", "webhook")  # svix-* wins when both are present, as in Svix's library


class Standard(Provider):
    name = "standard"
    default_tolerance = 300.0

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.keys: list[bytes] = []
        for i, secret in enumerate(source.secrets):
            try:
                self.keys.append(signing.decode_secret(secret.reveal()))
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
        provided = signing.signatures(header)
        ts = self.check_timestamp(timestamp, now)
        signing.check(self.keys, msg_id, ts, provided, request.body)

    def identify(self, request: InboundRequest) -> Identity:
        msg_id = request.header("svix-id") if "svix-signature" in request.headers else None
        msg_id = msg_id or request.header("webhook-id")
        return Identity(msg_id, body_field(request, "type") or "unknown")


class Clerk(Standard):
    """Clerk signs its webhooks through Svix: `svix-id`, `svix-timestamp`, `svix-signature`
    over `{id}.{timestamp}.{body}` with the endpoint's `whsec_` secret."""

    name = "clerk"


class Resend(Standard):
    """Resend signs its webhooks through Svix, as Clerk does."""

    name = "resend"
