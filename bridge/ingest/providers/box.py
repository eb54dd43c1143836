"""Box: `box-signature-primary` and `box-signature-secondary`, each base64 HMAC-SHA256 over the
body followed by `box-delivery-timestamp`, keyed with the app's primary and secondary signature
keys (`secrets = [primary, secondary]`; either key may match either header, so a rotation in
any order holds). `box-signature-version` must be `1` and `box-signature-algorithm`
`HmacSHA256`. The delivery timestamp (RFC 3339) must be at most 10 minutes old and not in the
future, as Box's SDK checks. Box's SDK also accepts a signature over the body with non-ASCII
characters written as `\\uXXXX` escapes, so this does too. Key: `box-delivery-id`; type: the
body's `trigger` (`FILE.UPLOADED`)."""

from __future__ import annotations

import re
from datetime import datetime

from bridge.core.errors import MalformedSignature, SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field
from bridge.signing import any_match, decode_b64, sign

MAX_AGE = 600.0
_BACKSLASH = re.compile(r"\\(?!/)")
_SPECIAL = re.compile(r"[^\x20-\x7e]")


def _escape(char: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named:
        return named
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def escaped(body: bytes) -> bytes | None:
    """The body as Box's SDK escapes it before signing, or None when it is not UTF-8."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = _BACKSLASH.sub(r"\\\\", text)
    return _SPECIAL.sub(lambda m: _escape(m.group(0)), text).encode("ascii")


class Box(Provider):
    name = "box"
    default_tolerance = MAX_AGE

    def verify(self, request: InboundRequest, now: float) -> None:
        stamp = self.require(request, "box-delivery-timestamp")
        if request.header("box-signature-version") != "1" or request.header(
                "box-signature-algorithm") != "HmacSHA256":
            raise SignatureError("unsupported signature algorithm")
        try:
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise MalformedSignature("box-delivery-timestamp is not an RFC 3339 time") from None
        window = self.tolerance if self.tolerance is not None else MAX_AGE
        if when < now - window or when > now + 1.0:  # a second for clocks' rounding
            raise SignatureError("timestamp outside the tolerance window")
        provided = [decode_b64(value) for name in ("box-signature-primary",
                                                   "box-signature-secondary")
                    if (value := request.header(name))]
        if not provided:
            raise SignatureError("missing box-signature-primary header")
        bodies = [request.body]
        if (alt := escaped(request.body)) is not None and alt != request.body:
            bodies.append(alt)
        expected = [sign(key, body + stamp.encode()) for key in self.keys for body in bodies]
        if not any_match(expected, provided):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(request.header("box-delivery-id"),
                        body_field(request, "trigger") or "unknown")
