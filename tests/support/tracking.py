"""A bridge that follows executions, and what its callbacks carry."""

from __future__ import annotations

import json

import httpx
from standardwebhooks.webhooks import Webhook

from tests.support.harness import Bridge, github_headers
from tests.support.receiver import Receiver

CALLBACK_SECRET = "whsec_cGxhdGZvcm0tY2FsbGJhY2stc2VjcmV0LTAx"


def tracked_config(receiver: Receiver, tracking: str = "", callbacks: str = "") -> str:
    return f"""
[callbacks]
signing_secret = "{CALLBACK_SECRET}"
{callbacks}
[callbacks.retry]
base = "200ms"
cap = "1s"

[tracking]
poll_initial = "100ms"
poll_max = "300ms"
lease = "2s"
poll_interval = "100ms"
{tracking}

[[sources]]
name = "zap"
provider = "token"
secret = "zap-token"
id_header = "X-Request-Id"
allow_callback_urls = ["http://*:*", "https://*.example.com/*"]

[[routes]]
source = "github"
trigger = "notify"
events = ["issues.*"]
callbacks = ["{receiver.url}/done"]

[[routes]]
source = "zap"
trigger = "zap-flow"
"""


def send_issue(bridge: Bridge, delivery: str, query: str = "") -> httpx.Response:
    body = json.dumps({"action": "opened",
                       "issue": {"title": "Ünïcode ✓", "delivery": delivery}}).encode()
    return bridge.post(f"/hooks/github{query}", body,
                       github_headers(body, delivery=delivery, event="issues"))


def verified(message: dict[str, object]) -> dict[str, object]:
    """Verify a received callback with the official Standard Webhooks library."""
    body = message["body"]
    assert isinstance(body, bytes)
    headers = message["headers"]
    assert isinstance(headers, dict)
    return Webhook(CALLBACK_SECRET).verify(body.decode(), headers)  # type: ignore[no-any-return]
