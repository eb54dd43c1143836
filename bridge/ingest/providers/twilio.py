"""Twilio: `X-Twilio-Signature: <base64 HMAC-SHA1(auth token, url + sorted params)>`.

The URL is the one Twilio called: the bridge's `public_url` + path + query, or the source's `url`
option; like Twilio's SDK, it is accepted with and without an explicit default port. Form params
are sorted by name, each name's distinct values sorted, and appended as name+value. A JSON body is
signed through the URL instead: its `bodySHA256` query parameter must equal sha256(body), and
only the URL is signed. With `X-Twilio-Webhooks-Signature-Settings: algorithm=HMAC_SHA256` (shared
keys) the HMAC is SHA-256. Idempotency: `I-Twilio-Idempotency-Token` when sent, else the body
hash. Event type: `message.{MessageStatus}`, `call.{CallStatus}` or `twilio`.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

from bridge.config import SourceConfig
from bridge.core.errors import SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider
from bridge.signing import any_match, decode_b64, sign

DEFAULT_PORTS = {"https": 443, "http": 80}


def url_variants(url: str) -> list[str]:
    """The URL as given, with its default port added, and with it removed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    default = DEFAULT_PORTS.get(parts.scheme)
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    variants = [url]
    if default is not None and parts.port in (None, default):
        for netloc in (f"{prefix}{host}:{default}", f"{prefix}{host}"):
            variants.append(urlunsplit(parts._replace(netloc=netloc)))
    return list(dict.fromkeys(variants))


def signed_string(url: str, params: list[tuple[str, str]]) -> str:
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    return url + "".join(name + value for name in sorted(grouped)
                         for value in sorted(grouped[name]))


class Twilio(Provider):
    name = "twilio"
    unsigned_id = True
    options = frozenset({"url"})

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.url = self.option("url")

    def verify(self, request: InboundRequest, now: float) -> None:
        provided = decode_b64(self.require(request, "x-twilio-signature"))
        algorithm = "sha1"
        settings = request.header("x-twilio-webhooks-signature-settings")
        if settings:
            fields = dict(p.strip().partition("=")[::2] for p in settings.split(","))
            chosen = fields.get("algorithm", "HMAC_SHA1")
            if chosen not in ("HMAC_SHA1", "HMAC_SHA256"):
                raise SignatureError("unsupported signature algorithm")
            algorithm = "sha256" if chosen == "HMAC_SHA256" else "sha1"
        url = str(self.url or request.url)
        query = parse_qs(urlsplit(url).query)
        if "bodySHA256" in query:
            digest = hashlib.sha256(request.body).hexdigest()
            # Both sides as bytes: compare_digest refuses non-ASCII str (a sender's choice).
            if not hmac.compare_digest(digest.encode(), query["bodySHA256"][0].encode()):
                raise SignatureError("bodySHA256 does not match the body")
            params: list[tuple[str, str]] = []
        else:
            params = parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        expected = [sign(key, signed_string(variant, params).encode(), algorithm)
                    for key in self.keys for variant in url_variants(url)]
        if not any_match(expected, [provided]):
            raise SignatureError("signature does not match")

    def fingerprint(self, request: InboundRequest) -> bytes:
        """Twilio signs the sorted params, so a form body reordered is still validly signed:
        its fingerprint is the sorted params, not the bytes."""
        if "json" in (request.header("content-type") or ""):
            return request.body
        pairs = sorted(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        return "&".join(f"{k}={v}" for k, v in pairs).encode()

    def identify(self, request: InboundRequest) -> Identity:
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        if form.get("MessageStatus") or form.get("SmsStatus"):
            kind = f"message.{form.get('MessageStatus') or form.get('SmsStatus')}"
        elif form.get("CallStatus"):
            kind = f"call.{form['CallStatus']}"
        else:
            kind = "twilio"
        return Identity(request.header("i-twilio-idempotency-token"), kind)
