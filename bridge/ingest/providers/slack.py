"""Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256("v0:{ts}:{body}")>`, `X-Slack-Request-Timestamp`.

Window ±300 s. The Events API's `url_verification` request is answered inline with its
`challenge`. Idempotency: the Events API's `event_id` (a retry, flagged by `X-Slack-Retry-Num`,
carries the same one and is answered as a duplicate); form posts (slash commands, interactivity)
have no id and are keyed on the body hash. Event type: `event.type` for event callbacks, the
body's `type` otherwise, `slash_command` for commands, `interactive.{type}` for interactivity.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from bridge.ingest.providers.base import (
    Identity,
    InboundRequest,
    Provider,
    body_field,
)


class Slack(Provider):
    name = "slack"
    default_tolerance = 300.0

    def verify(self, request: InboundRequest, now: float) -> None:
        self.verify_v0(request, now, "x-slack-signature", "x-slack-request-timestamp")

    def handshake(self, request: InboundRequest) -> tuple[int, dict[str, str], bytes] | None:
        if body_field(request, "type") == "url_verification":
            challenge = body_field(request, "challenge") or ""
            return 200, {"content-type": "application/json"}, json.dumps(
                {"challenge": challenge}).encode()
        return None

    def identify(self, request: InboundRequest) -> Identity:
        if request.json() is not None:
            kind = body_field(request, "event", "type") or body_field(request, "type")
            return Identity(body_field(request, "event_id"), kind or "unknown")
        form = parse_qs(request.body.decode("utf-8", "replace"))
        if "command" in form:
            return Identity(None, "slash_command")
        payload = form.get("payload", [""])[0]
        try:
            kind = json.loads(payload).get("type", "unknown") if payload else "unknown"
        except (ValueError, AttributeError):
            kind = "unknown"
        return Identity(None, f"interactive.{kind}")
