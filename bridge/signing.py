"""HMAC for every scheme (`sign`, keyed state cached; `any_match`, constant time), and Standard
Webhooks once: the key from a `whsec_` secret, the headers that sign a body, and
the check of a signature header against the keys (https://www.standardwebhooks.com/).

Used by the `standard`/`svix` sources and GitLab's signing tokens (verify), the relay's
callbacks and the agent's requests to its edge (sign), the edge (verify), and the signers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable
from typing import Any

from bridge.core.errors import MalformedSignature, SignatureError

PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """`whsec_<base64>` -> key bytes; padding may be missing. Raises ValueError."""
    raw = secret.removeprefix(PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if not key:
        raise ValueError("empty key")
    return key


def mac(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    """HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    return sign(key, f"{msg_id}.{timestamp}.".encode() + body)


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers that sign `body` as message `msg_id` sent at `timestamp`."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac(key, msg_id, timestamp, body)).decode()}


def signatures(header: str) -> list[bytes]:
    """The `v1` signatures in a `webhook-signature` header (space-separated `v1,<base64>`;
    other versions are ignored). Raises MalformedSignature for an entry of another shape."""
    provided: list[bytes] = []
    for entry in header.split():
        version, sep, value = entry.partition(",")
        if not sep:
            raise MalformedSignature("webhook-signature entries must be 'v1,<base64>'")
        if version == "v1":
            provided.append(decode_b64(value))
    return provided


def decode_b64(value: str) -> bytes:
    """A base64 signature's bytes; MalformedSignature (400) when it is not base64."""
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedSignature("signature is not base64") from None


def check(keys: list[bytes], msg_id: str, timestamp: int, provided: list[bytes], body: bytes) -> None:
    """Raise SignatureError unless one of `provided` is the MAC of the message under one of
    `keys` (every pair compared in constant time)."""
    if not provided:
        raise SignatureError("no v1 signature")
    if not any_match([mac(key, msg_id, timestamp, body) for key in keys], provided):
        raise SignatureError("signature does not match")


def any_match(expected: list[bytes], provided: list[bytes]) -> bool:
    """Constant-time: every pair is compared, whatever matched earlier."""
    found = False
    for exp in expected:
        for got in provided:
            found |= hmac.compare_digest(exp, got)
    return found


def sign(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    """HMAC of `message`. The keyed state (the hashed inner and outer pads) is computed once per
    key and copied for each message, which halves the cost of a short message's HMAC."""
    keyed = _KEYED.get((key, algorithm))
    if keyed is None:
        if len(_KEYED) >= 256:  # keys come from config; a bound all the same
            _KEYED.clear()
        keyed = _KEYED[(key, algorithm)] = _keyed_hmac(key, digestmod=algorithm)
    mac = keyed.copy()
    mac.update(message)
    digest: bytes = mac.digest()
    return digest


_keyed_hmac: Callable[..., Any]
try:  # the C object that hmac.HMAC wraps: copying it directly skips a Python-level layer
    from _hashlib import hmac_new as _keyed_hmac
except ImportError:  # pragma: no cover - Python built without OpenSSL
    _keyed_hmac = hmac.new
_KEYED: dict[tuple[bytes, str], Any] = {}
