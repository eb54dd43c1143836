"""What an accepted event puts in the outbox: matching routes and byte-exact request bodies.

Bodies are rendered once, here, when the event is accepted, and stored; every attempt sends the
same bytes with the same Idempotency-Key, so the platform's own dedupe can recognise a retry.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from fnmatch import fnmatchcase

from bridge.config import RouteConfig
from bridge.models import NewDelivery, VerifiedEvent, iso
from bridge.providers.base import parse_json

JSON = "application/json"


def matching(routes: Iterable[RouteConfig], source: str, event_type: str) -> list[RouteConfig]:
    """Routes of `source` whose event globs match `event_type` (case-sensitive fnmatch)."""
    return [r for r in routes if r.source == source
            and any(fnmatchcase(event_type, glob) for glob in r.events)]


def delivery_key(event_key: str, trigger: str, max_length: int) -> str:
    """`{event key}:{trigger}`; when longer than the platform allows, a stable hash of it."""
    key = f"{event_key}:{trigger}"
    if len(key) <= max_length:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"sha256:{digest}"[:max_length]


def render(event: VerifiedEvent, route: RouteConfig, max_key_length: int,
           seen_items: frozenset[str] = frozenset()) -> NewDelivery:
    key = delivery_key(event.idempotency_key, route.trigger, max_key_length)
    if route.envelope == "raw":
        content_type = event.headers.get("content-type", "application/octet-stream")
        return NewDelivery(route.name, route.trigger, key, event.body, content_type,
                           route.channel)
    return NewDelivery(route.name, route.trigger, key, envelope(event, seen_items), JSON,
                       route.channel)


def envelope(event: VerifiedEvent, seen_items: frozenset[str] = frozenset()) -> bytes:
    """The default body sent upstream.

    `payload` is the provider's JSON embedded verbatim (its bytes are not re-serialised); a body
    that is not JSON travels as text, or as base64 when it is not UTF-8, with
    `payload_encoding` saying which.
    """
    head: dict[str, object] = {
        "id": event.id,
        "source": event.source,
        "provider": event.provider,
        "event_type": event.event_type,
        "idempotency_key": event.idempotency_key,
        "received_at": iso(event.received_at),
        "headers": event.headers,
    }
    if event.items:  # a batch: which items are new, so the workflow can skip the others
        head["items"] = {"keys": list(event.items),
                         "duplicates": [k for k in event.items if k in seen_items]}
    prefix = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1].encode()
    if parse_json(event.body) is not None and _is_utf8(event.body):
        return prefix + b',"payload_encoding":"json","payload":' + event.body.strip() + b"}"
    if _is_utf8(event.body):
        text = json.dumps(event.body.decode("utf-8"), ensure_ascii=False).encode()
        return prefix + b',"payload_encoding":"text","payload":' + text + b"}"
    b64 = base64.b64encode(event.body)
    return prefix + b',"payload_encoding":"base64","payload":"' + b64 + b'"}'


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

