"""Schemes that sign the raw body with one HMAC in one header.

    bitbucket  X-Hub-Signature: sha256=<hex>                 key X-Request-UUID, type X-Event-Key
    intercom   X-Hub-Signature: sha1=<hex> (HMAC-SHA1)       key body id, type body topic
    jira       X-Hub-Signature: sha256=<hex>                 key X-Atlassian-Webhook-Identifier,
                                                             type body webhookEvent
    typeform   Typeform-Signature: sha256=<base64>           key body event_id, type event_type
    shopify    X-Shopify-Hmac-Sha256: <base64> (also the     key X-Shopify-Webhook-Id,
               Events preview's Shopify-Hmac-Sha256)         type X-Shopify-Topic
    pagerduty  X-PagerDuty-Signature: v1=<hex>[,v1=<hex>]    key body event.id,
                                                             type event.event_type
    linear     Linear-Signature: <hex>, plus the signed      key Linear-Delivery,
               body's webhookTimestamp (ms) within ±60 s     type {type}.{action}
               (the Linear-Timestamp header is not signed, so it is never used)

    razorpay   X-Razorpay-Signature: <hex>                   key X-Razorpay-Event-Id,
                                                             type body event
    coinbase-commerce  X-CC-Webhook-Signature: <hex>         key body event.id,
                                                             type event.type
    vercel     x-vercel-signature: <hex> (HMAC-SHA1)         key body id, type body type
    sentry     Sentry-Hook-Signature: <hex>                  key Request-ID,
                                                             type {Sentry-Hook-Resource}.{action}
    docusign   X-DocuSign-Signature-1, -2, ...: <base64>     no id (body hash), type body event
               (one per Connect key; any may match any)
    airtable   X-Airtable-Content-MAC: hmac-sha256=<hex>,    no id (body hash),
               keyed with base64-decode(macSecretBase64)     type `notification`
    lemonsqueezy  X-Signature: <hex>                         no id (body hash),
                                                             type X-Event-Name (else
                                                             meta.event_name)

All are HMAC-SHA256 unless noted, keyed with the secret's UTF-8 bytes; every configured secret is
tried (rotation).
"""

from __future__ import annotations

from typing import ClassVar

from bridge.config import SourceConfig
from bridge.core.errors import ConfigError, MalformedSignature, SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field, decode_hex
from bridge.signing import any_match, decode_b64, sign


class BodyHmac(Provider):
    headers: ClassVar[tuple[str, ...]] = ()
    prefix: ClassVar[str] = ""
    algorithm: ClassVar[str] = "sha256"
    encoding: ClassVar[str] = "hex"
    multiple: ClassVar[bool] = False  # a comma-separated list of prefixed signatures

    def signature_header(self, request: InboundRequest) -> str:
        for name in self.headers:
            if request.header(name):
                return str(request.header(name))
        raise SignatureError(f"missing {self.headers[0]} header")

    def provided(self, request: InboundRequest) -> list[bytes]:
        header = self.signature_header(request)
        parts = [p.strip() for p in header.split(",")] if self.multiple else [header]
        values = []
        for part in parts:
            if not part.startswith(self.prefix):
                if self.multiple:
                    continue  # other schemes in the list are ignored
                raise MalformedSignature(f"signature must start with {self.prefix!r}")
            value = part[len(self.prefix):]
            values.append(decode_hex(value) if self.encoding == "hex" else decode_b64(value))
        if not values:
            raise SignatureError(f"no {self.prefix!r} signature")
        return values

    def verify(self, request: InboundRequest, now: float) -> None:
        provided = self.provided(request)
        expected = [sign(key, request.body, self.algorithm) for key in self.keys]
        if not any_match(expected, provided):
            raise SignatureError("signature does not match")


class Bitbucket(BodyHmac):
    name = "bitbucket"
    unsigned_id = True
    headers = ("x-hub-signature",)
    prefix = "sha256="

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(request.header("x-request-uuid"), request.header("x-event-key") or "unknown")


class Intercom(BodyHmac):
    name = "intercom"
    headers = ("x-hub-signature",)
    prefix = "sha1="
    algorithm = "sha1"

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "id"), body_field(request, "topic") or "unknown")


class Jira(BodyHmac):
    name = "jira"
    unsigned_id = True
    headers = ("x-hub-signature",)
    prefix = "sha256="

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(request.header("x-atlassian-webhook-identifier"),
                        body_field(request, "webhookEvent") or "unknown")


class Typeform(BodyHmac):
    name = "typeform"
    headers = ("typeform-signature",)
    prefix = "sha256="
    encoding = "base64"

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "event_id"),
                        body_field(request, "event_type") or "unknown")


class Shopify(BodyHmac):
    name = "shopify"
    unsigned_id = True
    headers = ("x-shopify-hmac-sha256", "shopify-hmac-sha256")
    encoding = "base64"

    def identify(self, request: InboundRequest) -> Identity:
        # Shopify's current docs key duplicates on the webhook id; older ones on the event id,
        # which is also the same across subscriptions. The webhook id wins; the event id is kept
        # among the stored headers.
        delivery = request.header("x-shopify-webhook-id") or request.header("shopify-webhook-id")
        topic = request.header("x-shopify-topic") or request.header("shopify-topic")
        return Identity(delivery or request.header("x-shopify-event-id"), topic or "unknown")


class PagerDuty(BodyHmac):
    name = "pagerduty"
    headers = ("x-pagerduty-signature",)
    prefix = "v1="
    multiple = True

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "event", "id"),
                        body_field(request, "event", "event_type") or "unknown")


class Linear(BodyHmac):
    name = "linear"
    headers = ("linear-signature",)
    default_tolerance = 60.0

    def verify(self, request: InboundRequest, now: float) -> None:
        super().verify(request, now)
        # Only signed data may feed a replay window: the body's field, never the header.
        raw = body_field(request, "webhookTimestamp")
        if raw is None:
            raise SignatureError("missing webhook timestamp")
        try:
            millis = int(raw)
        except ValueError:
            raise MalformedSignature("timestamp is not an integer") from None
        self.check_timestamp(str(millis // 1000), now)

    def identify(self, request: InboundRequest) -> Identity:
        kind = body_field(request, "type") or request.header("linear-event") or "unknown"
        action = body_field(request, "action")
        return Identity(request.header("linear-delivery"), f"{kind}.{action}" if action else kind)


class Razorpay(BodyHmac):
    name = "razorpay"
    headers = ("x-razorpay-signature",)

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(request.header("x-razorpay-event-id"),
                        body_field(request, "event") or "unknown")


class CoinbaseCommerce(BodyHmac):
    name = "coinbase-commerce"
    headers = ("x-cc-webhook-signature",)

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "event", "id"),
                        body_field(request, "event", "type") or "unknown")


class Vercel(BodyHmac):
    name = "vercel"
    headers = ("x-vercel-signature",)
    algorithm = "sha1"

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "id"), body_field(request, "type") or "unknown")


class Sentry(BodyHmac):
    name = "sentry"
    headers = ("sentry-hook-signature",)

    def identify(self, request: InboundRequest) -> Identity:
        resource = request.header("sentry-hook-resource") or "unknown"
        action = body_field(request, "action")
        return Identity(request.header("request-id"),
                        f"{resource}.{action}" if action else resource)


class LemonSqueezy(BodyHmac):
    name = "lemonsqueezy"
    headers = ("x-signature",)

    def identify(self, request: InboundRequest) -> Identity:
        kind = request.header("x-event-name") or body_field(request, "meta", "event_name")
        return Identity(None, kind or "unknown")


class DocuSign(BodyHmac):
    name = "docusign"
    encoding = "base64"
    MAX_SIGNATURES = 100

    def provided(self, request: InboundRequest) -> list[bytes]:
        values = [decode_b64(request.headers[f"x-docusign-signature-{i}"])
                  for i in range(1, self.MAX_SIGNATURES + 1)
                  if f"x-docusign-signature-{i}" in request.headers]
        if not values:
            raise SignatureError("missing x-docusign-signature-1 header")
        return values

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(None, body_field(request, "event") or "unknown")


class Airtable(BodyHmac):
    name = "airtable"
    headers = ("x-airtable-content-mac",)
    prefix = "hmac-sha256="

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        try:  # Airtable gives the MAC secret base64-encoded (macSecretBase64)
            self.keys = [decode_b64(s.reveal()) for s in source.secrets]
        except MalformedSignature:
            raise ConfigError(f"{self.where('secret')}: expected the macSecretBase64 value "
                              "(base64)") from None

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(None, "notification")
