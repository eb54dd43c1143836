"""Providers that check the URL with a GET before they send anything.

    meta     GET ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C: T must equal the
             source's `verify_token` (constant time), answer C as text/plain; else 403.
             Events: X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body, app secret>.
             No delivery id: the key is the body's hash. Type: `{object}.{field}` of the first
             change (`whatsapp_business_account.messages`), or `{object}.messaging`.
    dropbox  GET ?challenge=C: answer C as text/plain with X-Content-Type-Options: nosniff.
             Events: X-Dropbox-Signature: <hex HMAC-SHA256 of the body, app secret>. The body
             names only which accounts changed; no id (the key is the body's hash).
    okta     GET with X-Okta-Verification-Challenge: C: answer {"verification": C}. Events: a
             shared secret in a header of the operator's choosing (`auth_header`, default
             Authorization), compared in constant time with every configured secret. Key: the
             body's eventId; type: the first event's eventType.

    microsoft-graph
             POST ?validationToken=V (a new subscription, or its lifecycle URL): answer V as
             text/plain, storing nothing. Notifications: `{"value": [...]}`, each item's
             `clientState` equal (constant time) to the source's `secret`, the clientState
             given when subscribing (several during a change). Type: `{changeType}` of the
             first item (`created`), or `lifecycle.{lifecycleEvent}` for lifecycle
             notifications, which are routed like any event. No id: the key is the body's hash.

    asana    The first POST carries X-Hook-Secret: S (and no events): answered 200 with the same
             header, and S kept in the store for every replica. Only while the source has
             `accept_handshake = true`: otherwise a handshake is refused, so nobody can swap
             the secret of a live source. Events: X-Hook-Signature: <hex HMAC-SHA256 of the
             body, S>. Type: `{resource_type}.{action}` of the first event, `heartbeat` for an
             empty list. No id: the key is the body's hash.

    trello   HEAD (and GET) on the callback URL when the webhook is created: 200, empty. Events:
             X-Trello-Webhook: <base64 HMAC-SHA1 of the body followed by the callback URL,
             app secret>; the URL is the hook's public URL, or the source's `callback_url`
             when Trello was given another. Key: body `action.id`; type: `action.type`.
    telegram setWebhook's `secret_token` comes back in X-Telegram-Bot-Api-Secret-Token on
             every update (constant time against every configured secret). Key: body
             `update_id`; type: the update's kind (`message`, `callback_query`, ...).

None of these signs a timestamp, so none has a replay window of its own: a replay is
answered as a duplicate (its key is the same) for the dedupe window.
"""

from __future__ import annotations

import hmac
import json

from bridge.config import SourceConfig
from bridge.core.errors import ConfigError, SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field
from bridge.ingest.providers.body_hmac import BodyHmac
from bridge.signing import any_match, decode_b64, sign

TEXT = "text/plain; charset=utf-8"
MAX_CHALLENGE = 1024  # characters echoed at most: a challenge is a short random string


def _echo(value: str) -> bytes:
    return value[:MAX_CHALLENGE].encode("utf-8", "replace")


class Meta(BodyHmac):
    name = "meta"
    options = frozenset({"verify_token"})
    answers_get = True
    headers = ("x-hub-signature-256",)
    prefix = "sha256="

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        token = self.option("verify_token")
        if not token:
            raise ConfigError(f"{self.where('verify_token')}: required for provider 'meta' "
                              "(the Verify Token you enter in Meta's dashboard)")
        self.verify_token = str(token).encode()

    def challenge(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes]:
        query = self.query(request)
        given = query.get("hub.verify_token", "").encode()
        if query.get("hub.mode") != "subscribe" or not hmac.compare_digest(
                given, self.verify_token):
            raise SignatureError("hub.verify_token does not match this source's verify_token")
        return 200, {"content-type": TEXT}, _echo(query.get("hub.challenge", ""))

    def identify(self, request: InboundRequest) -> Identity:
        data = request.json()
        kind = "unknown"
        if isinstance(data, dict):
            entry = (data.get("entry") or [{}])[0] if isinstance(data.get("entry"), list) else {}
            changes = entry.get("changes") if isinstance(entry, dict) else None
            field = changes[0].get("field") if isinstance(changes, list) and changes and \
                isinstance(changes[0], dict) else None
            if field is None and isinstance(entry, dict) and "messaging" in entry:
                field = "messaging"
            kind = f"{data.get('object', 'unknown')}.{field or 'unknown'}"
        return Identity(None, kind)


class Dropbox(BodyHmac):
    name = "dropbox"
    answers_get = True
    headers = ("x-dropbox-signature",)

    def challenge(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes]:
        return 200, {"content-type": TEXT, "x-content-type-options": "nosniff"}, _echo(
            self.query(request).get("challenge", ""))

    def identify(self, request: InboundRequest) -> Identity:
        data = request.json()
        kind = next(iter(data), "unknown") if isinstance(data, dict) and data else "unknown"
        return Identity(None, str(kind))  # list_folder (v2), delta (v1)


class Okta(Provider):
    name = "okta"
    options = frozenset({"auth_header"})
    answers_get = True

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.header = str(self.option("auth_header", "Authorization")).lower()
        self.auth_headers = frozenset({self.header})

    def challenge(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes]:
        value = request.header("x-okta-verification-challenge")
        if not value:
            raise SignatureError("missing X-Okta-Verification-Challenge header")
        return 200, {"content-type": "application/json"}, json.dumps(
            {"verification": value[:MAX_CHALLENGE]}).encode()

    def verify(self, request: InboundRequest, now: float) -> None:
        given = self.require(request, self.header).encode()
        if not any_match(self.keys, [given]):
            raise SignatureError("token does not match")

    def identify(self, request: InboundRequest) -> Identity:
        data = request.json()
        inner = data.get("data") if isinstance(data, dict) else None
        events = inner.get("events") if isinstance(inner, dict) else None
        first = events[0] if isinstance(events, list) and events else {}
        kind = first.get("eventType") if isinstance(first, dict) else None
        return Identity(body_field(request, "eventId"), str(kind or "unknown"))


class MicrosoftGraph(Provider):
    name = "microsoft-graph"

    def validation(self, request: InboundRequest) -> str | None:
        token = self.query(request).get("validationToken")
        return token if token is not None and not request.body.strip() else None

    def verify(self, request: InboundRequest, now: float) -> None:
        if self.validation(request) is not None:
            return  # answered by `handshake`, nothing stored
        data = request.json()
        items = data.get("value") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise SignatureError("missing the notifications' clientState")
        for item in items:
            state = item.get("clientState") if isinstance(item, dict) else None
            if not isinstance(state, str):
                raise SignatureError("missing the notifications' clientState")
            if not any_match(self.keys, [state.encode()]):  # every clientState compared
                raise SignatureError("clientState does not match")

    def handshake(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes] | None:
        token = self.validation(request)
        return None if token is None else (200, {"content-type": TEXT}, _echo(token))

    def identify(self, request: InboundRequest) -> Identity:
        data = request.json()
        items = data.get("value") if isinstance(data, dict) else None
        first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) \
            else {}
        if first.get("lifecycleEvent"):
            return Identity(None, f"lifecycle.{first['lifecycleEvent']}")
        return Identity(None, str(first.get("changeType") or "unknown"))


class Asana(Provider):
    name = "asana"
    options = frozenset({"accept_handshake"})
    learns_secret = True
    auth_headers = frozenset({"x-hook-secret"})

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        self.accepts_handshake = self.option("accept_handshake", False) is True

    def offered_secret(self, request: InboundRequest) -> str | None:
        value = request.header("x-hook-secret")
        return value[:MAX_CHALLENGE] if value else None

    def verify_learned(self, request: InboundRequest, learned: list[bytes]) -> None:
        given = self.require(request, "x-hook-signature")
        try:
            provided = bytes.fromhex(given)
        except ValueError:
            raise SignatureError("signature does not match") from None
        expected = [sign(key, request.body) for key in learned]
        if not any_match(expected, [provided]):
            raise SignatureError("signature does not match")

    def verify(self, request: InboundRequest, now: float) -> None:
        self.verify_learned(request, self.keys)  # a configured secret; learned ones: hooks

    def identify(self, request: InboundRequest) -> Identity:
        data = request.json()
        events = data.get("events") if isinstance(data, dict) else None
        if isinstance(events, list) and not events:
            return Identity(None, "heartbeat")
        first = events[0] if isinstance(events, list) and isinstance(events[0], dict) else {}
        resource = first.get("resource")
        kind = resource.get("resource_type") if isinstance(resource, dict) else None
        return Identity(None, f"{kind or 'unknown'}.{first.get('action') or 'unknown'}")


class Trello(Provider):
    name = "trello"
    options = frozenset({"callback_url"})
    answers_get = True

    def challenge(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, b""

    def verify(self, request: InboundRequest, now: float) -> None:
        provided = decode_b64(self.require(request, "x-trello-webhook"))
        url = str(self.option("callback_url") or request.url.split("?", 1)[0])
        expected = [sign(key, request.body + url.encode(), "sha1") for key in self.keys]
        if not any_match(expected, [provided]):
            raise SignatureError("signature does not match")

    def identify(self, request: InboundRequest) -> Identity:
        return Identity(body_field(request, "action", "id"),
                        body_field(request, "action", "type") or "unknown")


class Telegram(Provider):
    name = "telegram"
    auth_headers = frozenset({"x-telegram-bot-api-secret-token"})

    def verify(self, request: InboundRequest, now: float) -> None:
        given = self.require(request, "x-telegram-bot-api-secret-token").encode()
        if not any_match(self.keys, [given]):
            raise SignatureError("token does not match")

    def identify(self, request: InboundRequest) -> Identity:
        data = request.json()
        kind = next((k for k in data if k != "update_id"), "unknown") \
            if isinstance(data, dict) else "unknown"
        return Identity(body_field(request, "update_id"), str(kind))
