"""What an accepted event puts in the outbox: matching routes and byte-exact request bodies.

Bodies are rendered once, here, when the event is accepted, and stored; every attempt sends the
same bytes with the same Idempotency-Key, so the platform's own dedupe can recognise a retry.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import replace
from fnmatch import fnmatchcase

from bridge.config import RouteConfig
from bridge.core import codec
from bridge.core.models import NewDelivery, VerifiedEvent, iso
from bridge.ingest import filters as glue
from bridge.ingest.providers.base import parse_json

JSON = "application/json"


def matching(routes: Iterable[RouteConfig], source: str, event_type: str) -> list[RouteConfig]:
    """Routes of `source` whose event globs match `event_type` (case-sensitive fnmatch)."""
    return [r for r in routes if r.source == source
            and any(fnmatchcase(event_type, glob) for glob in r.events)]


def decide(event: VerifiedEvent, routes: list[RouteConfig], query: dict[str, str]
           ) -> tuple[list[tuple[RouteConfig, bytes | None]], tuple[tuple[str, str], ...]]:
    """Run the routes' filters and input mappings: the routes that take the event (with the
    body their glue built, if any), and (route, why) for those that do not. The body is parsed
    once, and only when some route has glue."""
    if not any(r.filter is not None or r.input is not None for r in routes):
        return [(route, None) for route in routes], ()
    doc = glue.document(event.source, event.event_type, event.headers, event.body, query)
    taken: list[tuple[RouteConfig, bytes | None]] = []
    skipped: list[tuple[str, str]] = []
    for route in routes:
        decision = glue.decide(doc, len(event.body), bool(event.items), route.filter,
                               route.input)
        if decision.taken:
            taken.append((route, decision.body))
        else:
            skipped.append((route.name, decision.reason or "filter did not match"))
    return taken, tuple(skipped)


def delivery_key(event_key: str, trigger: str, max_length: int) -> str:
    """`{event key}:{trigger}`; when longer than the platform allows, a stable hash of it."""
    key = f"{event_key}:{trigger}"
    if len(key) <= max_length:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"sha256:{digest}"[:max_length]


def render(event: VerifiedEvent, route: RouteConfig, max_key_length: int,
           seen_items: frozenset[str] = frozenset(), built: bytes | None = None) -> NewDelivery:
    """The delivery of `event` on `route`. `built` is the body the route's glue made (see
    `glue.decide`): its `input` mapping, sent as it is; or, for a batch the route's filter
    narrowed, the items it took, sent in place of the whole batch."""
    key = delivery_key(event.idempotency_key, route.trigger, max_key_length)
    if built is not None and route.input is not None:
        return NewDelivery(route.name, route.trigger, key, built, JSON, route.channel)
    if built is not None:
        event = replace(event, body=built)
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
    prefix = codec.dumps(head)[:-1]
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

