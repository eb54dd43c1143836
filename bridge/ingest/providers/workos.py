"""WorkOS: `WorkOS-Signature: t=<ms>, v1=<hex>`, HMAC-SHA256 over `{t}.{body}` with the
endpoint's secret (its UTF-8 bytes), `t` in milliseconds. The window is WorkOS's own default,
180 s either way, from the signed `t`. Key: the body's `id`; type: the body's `event`."""

from __future__ import annotations

from bridge.core.errors import MalformedSignature, SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field, decode_hex
from bridge.signing import any_match, sign


class WorkOS(Provider):
    name = "workos"
    default_tolerance = 180.0

    def verify(self, request: InboundRequest, now: float) -> None:
        header = self.require(request, "workos-signature")
        fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
        stamp, given = fields.get("t", ""), fields.get("v1", "")
        if not stamp.isdigit() or not given:
            raise MalformedSignature("WorkOS-Signature: expected 't=<ms>, v1=<hex>'")
        self.check_timestamp(str(int(stamp) // 1000), now)
        expected = [sign(key, stamp.encode() + b"." + request.body) for key in self.keys]
        if not any_match(expected, [decode_hex(given)]):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "id"), body_field(request, "event") or "unknown")
