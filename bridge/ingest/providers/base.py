"""The provider interface and the helpers every scheme shares.

A provider verifies a request on its raw bytes (`verify`, raising `SignatureError` or
`MalformedSignature` and nothing else), then names it (`identify`: the provider's own stable id,
if any, and the event type). `handshake` lets a provider answer a URL-verification challenge
inline. Schemes never parse JSON to verify; `InboundRequest.json()` is for identification only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

from bridge.config import SOURCE_KEYS, SourceConfig, did_you_mean
from bridge.core import codec
from bridge.core.errors import ConfigError, MalformedSignature, SignatureError
from bridge.signing import any_match, sign

ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
MAX_JSON_DEPTH = 64


class InboundRequest:
    """What a verifier sees: lower-cased headers, the raw body, and the URL the sender called."""

    __slots__ = ("headers", "body", "url", "method", "_json", "_parsed")

    def __init__(self, headers: dict[str, str], body: bytes, url: str = "", method: str = "POST"):
        self.headers = headers
        self.body = body
        self.url = url
        self.method = method
        self._parsed = False
        self._json: Any = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON (or nests deeper than we allow)."""
        if not self._parsed:
            self._parsed = True
            self._json = parse_json(self.body)
        return self._json


def parse_json(body: bytes) -> Any:
    # Cheap early exit for form bodies and binary data; JSON scalars are not events.
    if body.lstrip()[:1] not in (b"{", b"["):
        return None
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        return None
    try:
        # As UTF-8 only: the envelope embeds these bytes verbatim.
        return codec.loads(body)
    except (ValueError, RecursionError):
        return None


def _depth_exceeds(body: bytes, limit: int) -> bool:
    # Upper bound on nesting without parsing: brackets inside strings only make it stricter.
    depth = 0
    for byte in body.translate(None, _NOT_BRACKETS):
        depth += 1 if byte in (0x5B, 0x7B) else -1
        if depth > limit:
            return True
    return False


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


@dataclass(frozen=True, slots=True)
class Identity:
    provider_id: str | None  # the provider's own stable delivery/event id, when it gives one
    event_type: str
    items: tuple[str, ...] = ()  # per-item ids of a batch (SendGrid, HubSpot)
    nonce: str | None = None  # a value that may be used once (Mailgun's token)


class Provider:
    """Base class: subclasses set `name` and implement `verify` and `identify`."""

    name: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()
    default_tolerance: ClassVar[float | None] = None
    # The scheme signs neither its delivery id nor a timestamp: a captured request replays with
    # any id the replayer likes, so the event is keyed on what is signed (`fingerprint`).
    unsigned_id: bool = False
    # Headers that carry this source's credentials under names of the operator's choosing:
    # never stored nor forwarded (the usual names are dropped anyway, see inbound.kept_headers).
    auth_headers: frozenset[str] = frozenset()

    def __init__(self, source: SourceConfig) -> None:
        self.source = source
        self.tolerance = source.tolerance if source.tolerance is not None else self.default_tolerance
        unknown = sorted(set(source.options) - self.options)
        if unknown:
            known = (*self.options, *SOURCE_KEYS)
            raise ConfigError([f"{self.where(k)}: unknown key{did_you_mean(k, known)}"
                               for k in unknown])
        # HMAC keys: each secret's UTF-8 bytes. Schemes with other key formats replace these.
        self.keys: list[Any] = self.secret_bytes()

    def where(self, key: str) -> str:
        return f"sources[{self.source.index}].{key}"

    def option(self, key: str, default: Any = None) -> Any:
        value = self.source.options.get(key, default)
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ConfigError(f"{self.where(key)}: expected a string")
        return value

    def secret_bytes(self) -> list[bytes]:
        return [s.reveal().encode("utf-8") for s in self.source.secrets]

    def verify(self, request: InboundRequest, now: float) -> None:
        raise NotImplementedError

    def identify(self, request: InboundRequest) -> Identity:
        raise NotImplementedError

    def fingerprint(self, request: InboundRequest) -> bytes:
        """The signed content that identifies an event when its id is not signed."""
        return request.body

    def handshake(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes] | None:
        """A challenge answered inline (status, headers, body), or None for a normal event."""
        return None

    # A provider that hands over its signing secret in a handshake (Asana): `ingest.hooks`
    # keeps it in the store and verifies with it (`offered_secret`, `verify_learned`).
    learns_secret: ClassVar[bool] = False
    accepts_handshake: bool = False

    def offered_secret(self, request: InboundRequest) -> str | None:
        return None

    def verify_learned(self, request: InboundRequest, learned: list[bytes]) -> None:
        raise NotImplementedError

    # The providers whose URL check is a GET (Meta, Dropbox, Okta) answer it here; for every
    # other provider a GET or HEAD on its hook URL stays 405. A challenge never stores an event.
    answers_get: ClassVar[bool] = False

    def challenge(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes]:
        """The answer to a GET (or HEAD) URL check, or raise SignatureError when the check's
        own credentials are wrong. Only called when `answers_get`."""
        raise NotImplementedError

    def query(self, request: InboundRequest) -> dict[str, str]:
        """The query string of the URL the sender called, as a form (first value wins)."""
        from urllib.parse import parse_qsl, urlsplit

        return dict(reversed(parse_qsl(urlsplit(request.url).query, keep_blank_values=True)))

    # helpers shared by the schemes

    def require(self, request: InboundRequest, header: str) -> str:
        value = request.header(header)
        if value is None or value == "":
            raise SignatureError(f"missing {header} header")
        return value

    def verify_v0(self, request: InboundRequest, now: float, signature_header: str,
                  timestamp_header: str) -> None:
        """`v0=<hex HMAC-SHA256("v0:{timestamp}:{body}")>`, as Slack and Zoom sign."""
        header = self.require(request, signature_header)
        ts = self.check_timestamp(self.require(request, timestamp_header), now)
        if not header.startswith("v0="):
            raise MalformedSignature(f"{signature_header} must start with 'v0='")
        message = f"v0:{ts}:".encode() + request.body
        if not any_match([sign(key, message) for key in self.keys], [decode_hex(header[3:])]):
            raise SignatureError("signature does not match")

    def check_timestamp(self, raw: str, now: float, past_only: bool = False) -> int:
        try:
            ts = int(raw.strip())
        except ValueError:
            raise MalformedSignature("timestamp is not an integer") from None
        if self.tolerance is not None:
            too_old = ts < now - self.tolerance
            too_new = not past_only and ts > now + self.tolerance
            if too_old or too_new:
                raise SignatureError("timestamp outside the tolerance window")
        return ts


def timestamped_signatures(header: str, separator: str, ts_key: str,
                           sig_key: str) -> tuple[str, list[bytes]]:
    """Split a `ts=...<sep>sig=...<sep>sig=...` header (Stripe, Paddle) into its timestamp and
    hex signatures; other keys are ignored. Raises MalformedSignature."""
    timestamp: str | None = None
    signatures: list[bytes] = []
    for item in header.split(separator):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise MalformedSignature("signature header items must be key=value")
        if key == ts_key:
            if timestamp is not None:
                raise MalformedSignature("signature header has more than one timestamp")
            timestamp = value
        elif key == sig_key:
            signatures.append(decode_hex(value))
    if timestamp is None:
        raise MalformedSignature("signature header has no timestamp")
    return timestamp, signatures


def decode_hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value.strip())
    except ValueError:
        raise MalformedSignature("signature is not hex") from None


def body_field(request: InboundRequest, *path: str) -> str | None:
    """A string (or integer) at `path` in the JSON body, else None."""
    node = request.json()
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    if isinstance(node, bool):
        return None
    if isinstance(node, str | int):
        return str(node)
    return None
