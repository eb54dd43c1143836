"""Schemes configured by the operator rather than defined by a provider.

* `hmac`: HMAC over a template of the request. Options: `header` (required), `algorithm`
  (sha1|sha256|sha512, default sha256), `encoding` (hex|base64, default hex), `prefix` (stripped
  from the header value, e.g. `sha256=`), `signed` (template over `{body}`, `{timestamp}`, `{id}`;
  default `{body}`), `timestamp_header` (required when the template uses `{timestamp}`; checked
  against `tolerance`, default 300 s both ways), `id_header` (idempotency id), `event_header`.
* `token`: a shared secret sent as-is in `header` (default `X-Webhook-Token`), optionally after a
  `prefix` such as `Bearer `; compared in constant time against every configured secret.
* `none`: no verification at all; only with `insecure = true`, and a warning at start.

All three take `id_header` and `event_header` to name the idempotency id and the event type.
"""

from __future__ import annotations

import re

from bridge.config import SourceConfig
from bridge.core.errors import ConfigError, MalformedSignature, SignatureError
from bridge.ingest.providers.base import ALGORITHMS, Identity, InboundRequest, Provider, decode_hex
from bridge.signing import any_match, decode_b64, sign

_TOKEN = re.compile(r"\{(body|timestamp|id)\}")
_NAMING = frozenset({"id_header", "event_header"})


class _Named(Provider):
    """Identity from operator-named headers."""

    def identify(self, request: InboundRequest) -> Identity:
        id_header = self.option("id_header")
        event_header = self.option("event_header")
        provider_id = request.header(id_header.lower()) if id_header else None
        event = request.header(event_header.lower()) if event_header else None
        return Identity(provider_id or None, event or "unknown")


class Hmac(_Named):
    name = "hmac"
    options = _NAMING | {"header", "algorithm", "encoding", "prefix", "signed", "timestamp_header"}
    default_tolerance = 300.0

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        header = self.option("header")
        if not header:
            raise ConfigError(f"{self.where('header')}: required for provider 'hmac'")
        self.header = str(header).lower()
        self.auth_headers = frozenset({self.header})
        self.algorithm = str(self.option("algorithm", "sha256"))
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"{self.where('algorithm')}: expected sha1, sha256 or sha512")
        self.encoding = str(self.option("encoding", "hex"))
        if self.encoding not in ("hex", "base64"):
            raise ConfigError(f"{self.where('encoding')}: expected hex or base64")
        self.prefix = str(self.option("prefix", ""))
        template = str(self.option("signed", "{body}"))
        self.parts = _TOKEN.split(template)  # literal, token, literal, token, ...
        tokens = set(self.parts[1::2])
        if "body" not in tokens:
            raise ConfigError(f"{self.where('signed')}: the template must include {{body}}")
        ts_header = self.option("timestamp_header")
        if "timestamp" in tokens and not ts_header:
            raise ConfigError(f"{self.where('timestamp_header')}: required by {{timestamp}}")
        if ts_header and "timestamp" not in tokens:  # an unsigned time proves nothing
            raise ConfigError(f"{self.where('signed')}: must include {{timestamp}} when "
                              "timestamp_header is set, or the replay window is unsigned")
        if "id" in tokens and not self.option("id_header"):
            raise ConfigError(f"{self.where('id_header')}: required by {{id}}")
        self.timestamp_header = str(ts_header).lower() if ts_header else None
        self.unsigned_id = bool(self.option("id_header")) and "id" not in tokens and not ts_header

    def verify(self, request: InboundRequest, now: float) -> None:
        value = self.require(request, self.header)
        if self.prefix:
            if not value.startswith(self.prefix):
                raise MalformedSignature(f"signature must start with {self.prefix!r}")
            value = value[len(self.prefix):]
        provided = decode_hex(value) if self.encoding == "hex" else decode_b64(value)
        fields = {"body": request.body}
        if self.timestamp_header:
            ts = self.check_timestamp(self.require(request, self.timestamp_header), now)
            fields["timestamp"] = str(ts).encode()
        id_header = self.option("id_header")
        if id_header:
            fields["id"] = (request.header(str(id_header).lower()) or "").encode()
        message = b"".join(
            fields[part] if i % 2 else part.encode() for i, part in enumerate(self.parts)
        )
        expected = [sign(key, message, self.algorithm) for key in self.keys]
        if not any_match(expected, [provided]):
            raise SignatureError("signature does not match")


class Token(_Named):
    name = "token"
    options = _NAMING | {"header", "prefix"}

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.header = str(self.option("header", "X-Webhook-Token")).lower()
        self.prefix = str(self.option("prefix", ""))
        self.auth_headers = frozenset({self.header})

    def verify(self, request: InboundRequest, now: float) -> None:
        value = self.require(request, self.header)
        if self.prefix and value.startswith(self.prefix):
            value = value[len(self.prefix):]
        elif self.prefix:
            raise SignatureError(f"token must start with {self.prefix!r}")
        if not any_match(self.keys, [value.encode("utf-8", "surrogateescape")]):
            raise SignatureError("token does not match")


class Unverified(_Named):
    name = "none"
    options = _NAMING

    def verify(self, request: InboundRequest, now: float) -> None:
        return None
