"""Signing as providers do, with their SDKs or their published schemes."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import stripe
from standardwebhooks.webhooks import Webhook as StandardWebhook
from svix.webhooks import Webhook as SvixWebhook

from tests.support.harness import STANDARD_SECRET, STRIPE_SECRET


def stripe_event(event_id: str = "evt_1", kind: str = "invoice.paid") -> bytes:
    return json.dumps({"id": event_id, "type": kind, "data": {"object": {"amount": 42}}}).encode()


def stripe_headers(body: bytes, secret: str = STRIPE_SECRET, at: int | None = None) -> dict[str, str]:
    at = int(time.time()) if at is None else at
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, at)
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def standard_headers(body: bytes, secret: str = STANDARD_SECRET, msg_id: str = "msg_1",
                     at: int | None = None, svix: bool = False) -> dict[str, str]:
    when = datetime.fromtimestamp(int(time.time()) if at is None else at, tz=UTC)
    signer = SvixWebhook(secret) if svix else StandardWebhook(secret)
    signature = signer.sign(msg_id, when, body.decode())
    prefix = "svix" if svix else "webhook"
    return {f"{prefix}-id": msg_id, f"{prefix}-timestamp": str(int(when.timestamp())),
            f"{prefix}-signature": signature, "Content-Type": "application/json"}
