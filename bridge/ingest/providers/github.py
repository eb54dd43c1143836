"""GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`; no timestamp.

Idempotency: `X-GitHub-Delivery` (unchanged on redelivery). Event type: `X-GitHub-Event`, plus
`.action` from the body when present (`pull_request.opened`).
"""

from __future__ import annotations

from bridge.ingest.providers.base import Identity, InboundRequest, body_field
from bridge.ingest.providers.body_hmac import BodyHmac


class GitHub(BodyHmac):
    name = "github"
    unsigned_id = True
    headers = ("x-hub-signature-256",)
    prefix = "sha256="

    def identify(self, request: InboundRequest) -> Identity:
        event = request.header("x-github-event") or "unknown"
        # Only a body that names "action" (or spells a key with \u escapes) can carry one: a
        # push event is not parsed at all.
        body = request.body
        action = body_field(request, "action") if b'"action"' in body or b"\\u" in body else None
        return Identity(request.header("x-github-delivery"), f"{event}.{action}" if action else event)
