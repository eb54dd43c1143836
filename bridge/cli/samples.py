"""Realistic sample events for `bridge trigger`, signed as each provider signs them.

Each sample is the shape the provider documents for that event (trimmed of fields no route is
likely to read), with fresh ids and times on every call, so a sample sent twice is two events
unless `--id` repeats the provider's delivery id. `request(provider, event, secret, ...)` returns
the body and every header the provider would send: signature, event type, delivery id.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from bridge.core.models import iso
from bridge.devtools import signers

Body = Callable[[str, int], dict[str, Any]]  # (delivery id, now) -> the JSON document

REPO = {"id": 1296269, "name": "Hello-World", "full_name": "octocat/Hello-World",
        "html_url": "https://github.com/octocat/Hello-World", "default_branch": "main",
        "owner": {"login": "octocat", "id": 1}}
SENDER = {"login": "octocat", "id": 1, "type": "User"}


def _github_push(delivery: str, now: int) -> dict[str, Any]:
    after = uuid.uuid5(uuid.NAMESPACE_URL, delivery).hex + "00000000"
    return {"ref": "refs/heads/main", "before": "0" * 40, "after": after[:40],
            "repository": REPO, "pusher": {"name": "octocat", "email": "octocat@example.com"},
            "sender": SENDER, "created": False, "deleted": False, "forced": False,
            "head_commit": {"id": after[:40], "message": "Fix the flux capacitor",
                            "timestamp": iso(now), "author": {"name": "octocat"}},
            "commits": [{"id": after[:40], "message": "Fix the flux capacitor"}]}


def _github_pull_request(delivery: str, now: int) -> dict[str, Any]:
    number = int(uuid.uuid5(uuid.NAMESPACE_URL, delivery).int % 10000)
    return {"action": "opened", "number": number, "repository": REPO, "sender": SENDER,
            "pull_request": {"number": number, "state": "open", "title": "Add a webhook bridge",
                             "html_url": f"https://github.com/octocat/Hello-World/pull/{number}",
                             "user": SENDER, "draft": False, "created_at": iso(now),
                             "head": {"ref": "feature", "sha": "a" * 40},
                             "base": {"ref": "main", "sha": "b" * 40}}}


def _github_issues(delivery: str, now: int) -> dict[str, Any]:
    number = int(uuid.uuid5(uuid.NAMESPACE_URL, delivery).int % 10000)
    return {"action": "opened", "repository": REPO, "sender": SENDER,
            "issue": {"number": number, "title": "Found a bug", "state": "open",
                      "html_url": f"https://github.com/octocat/Hello-World/issues/{number}",
                      "user": SENDER, "labels": [{"name": "bug"}], "body": "It broke.",
                      "created_at": iso(now)}}


def _stripe(kind: str, obj: dict[str, Any]) -> Body:
    def build(delivery: str, now: int) -> dict[str, Any]:
        return {"id": delivery, "object": "event", "api_version": "2024-06-20",
                "created": now, "type": kind, "livemode": False, "pending_webhooks": 1,
                "request": {"id": f"req_{secrets.token_hex(7)}", "idempotency_key": None},
                "data": {"object": {**obj, "created": now}}}
    return build


def _slack_mention(delivery: str, now: int) -> dict[str, Any]:
    return {"token": "verification-token-unused", "team_id": "T0001", "api_app_id": "A0001",
            "type": "event_callback", "event_id": delivery, "event_time": now,
            "event": {"type": "app_mention", "user": "U0001", "text": "<@U0BOT> deploy api",
                      "ts": f"{now}.000100", "channel": "C0001", "event_ts": f"{now}.000100"}}


def _slack_message(delivery: str, now: int) -> dict[str, Any]:
    body = _slack_mention(delivery, now)
    body["event"] = {**body["event"], "type": "message", "text": "hello"}
    return body


def _shopify_order(delivery: str, now: int) -> dict[str, Any]:
    number = int(uuid.uuid5(uuid.NAMESPACE_URL, delivery).int % 100000)
    return {"id": 820982911946154508 + number, "order_number": 1000 + number,
            "email": "jon@example.com", "created_at": iso(now), "currency": "USD",
            "total_price": "199.65", "financial_status": "paid",
            "line_items": [{"title": "IPod Nano - 8GB", "quantity": 1, "price": "199.00"}],
            "customer": {"id": 115310627314723954, "first_name": "John", "last_name": "Smith"}}


def _standard(kind: str) -> Body:
    def build(delivery: str, now: int) -> dict[str, Any]:
        return {"type": kind, "timestamp": iso(now),
                "data": {"id": f"inv_{secrets.token_hex(6)}", "amount": 4200,
                         "currency": "eur", "status": "paid"}}
    return build


def _meta_whatsapp(delivery: str, now: int) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{
        "id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881",
                         "phone_number_id": "106540352242922"},
            "messages": [{"from": "16505551234", "id": f"wamid.{delivery}",
                          "timestamp": str(now), "type": "text",
                          "text": {"body": "deploy api"}}]}}]}]}


def _dropbox_list_folder(delivery: str, now: int) -> dict[str, Any]:
    return {"list_folder": {"accounts": ["dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc"]},
            "delta": {"users": [12345]}}


def _okta_session(delivery: str, now: int) -> dict[str, Any]:
    return {"eventType": "com.okta.event_hook", "eventTypeVersion": "1.0",
            "cloudEventsVersion": "0.1", "source": "https://dev-1.okta.com/api/v1/eventHooks",
            "eventId": delivery, "eventTime": iso(now), "contentType": "application/json",
            "data": {"events": [{"uuid": delivery, "eventType": "user.session.start",
                                 "displayMessage": "User login to Okta",
                                 "actor": {"alternateId": "ada@example.com"},
                                 "outcome": {"result": "SUCCESS"}}]}}


def _razorpay_captured(delivery: str, now: int) -> dict[str, Any]:
    return {"entity": "event", "account_id": "acc_BFQ7uQEaa7j2z7", "event": "payment.captured",
            "contains": ["payment"], "created_at": now, "payload": {"payment": {"entity": {
                "id": f"pay_{delivery[:14]}", "amount": 50000, "currency": "INR",
                "status": "captured", "method": "upi"}}}}


def _workos_user_created(delivery: str, now: int) -> dict[str, Any]:
    return {"id": f"event_{delivery.replace('-', '')[:26]}", "event": "user.created",
            "created_at": iso(now), "data": {"object": "user", "id": "user_01E4ZCR3C56J083X43JQXF3JK5",
                                             "email": "ada@example.com"}}


def _coinbase_charge(delivery: str, now: int) -> dict[str, Any]:
    return {"id": 1, "scheduled_for": iso(now), "event": {
        "id": delivery, "type": "charge:confirmed", "api_version": "2018-03-22",
        "created_at": iso(now), "data": {"code": "66BEOV2A", "name": "The Sovereign Individual",
                                         "pricing_type": "fixed_price"}}}


def _box_uploaded(delivery: str, now: int) -> dict[str, Any]:
    return {"type": "webhook_event", "id": delivery, "created_at": iso(now),
            "trigger": "FILE.UPLOADED", "source": {"id": "1234567890", "type": "file",
                                                   "name": "report.pdf"}}


def _simple(document: dict[str, Any]) -> Body:
    """A sample that is the same document each time, with the delivery id where it names one."""
    def build(delivery: str, now: int) -> dict[str, Any]:
        built: dict[str, Any] = json.loads(json.dumps(document).replace("{delivery}", delivery))
        return built
    return build


def _telegram_message(delivery: str, now: int) -> dict[str, Any]:
    # update_id is Telegram's delivery id, an integer: a new one per sample, as Telegram does.
    update_id = int.from_bytes(hashlib.sha256(delivery.encode()).digest()[:4], "big")
    return {"update_id": update_id, "message": {"message_id": 1, "date": now,
                                                "text": "/deploy api"}}


SAMPLES: dict[str, dict[str, Body]] = {
    "github": {"push": _github_push, "pull_request.opened": _github_pull_request,
               "issues.opened": _github_issues},
    "stripe": {
        "payment_intent.succeeded": _stripe("payment_intent.succeeded", {
            "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "object": "payment_intent", "amount": 2000,
            "currency": "usd", "status": "succeeded"}),
        "checkout.session.completed": _stripe("checkout.session.completed", {
            "id": "cs_test_a1b2c3", "object": "checkout.session", "amount_total": 2000,
            "currency": "usd", "customer_details": {"email": "jenny@example.com"},
            "payment_status": "paid", "status": "complete"}),
        "invoice.paid": _stripe("invoice.paid", {
            "id": "in_1MtHbELkdIwHu7ixl4OzzPMv", "object": "invoice", "amount_paid": 4200,
            "currency": "usd", "customer": "cus_NffrFeUfNV2Hib", "status": "paid"}),
    },
    "slack": {"app_mention": _slack_mention, "message": _slack_message},
    "shopify": {"orders/create": _shopify_order, "orders/paid": _shopify_order},
    "standard": {"invoice.paid": _standard("invoice.paid"),
                 "user.created": _standard("user.created")},
    "clerk": {"user.created": _standard("user.created")},
    "resend": {"email.delivered": _standard("email.delivered")},
    "meta": {"whatsapp_business_account.messages": _meta_whatsapp},
    "dropbox": {"list_folder": _dropbox_list_folder},
    "okta": {"user.session.start": _okta_session},
    "razorpay": {"payment.captured": _razorpay_captured},
    "workos": {"user.created": _workos_user_created},
    "coinbase-commerce": {"charge:confirmed": _coinbase_charge},
    "box": {"FILE.UPLOADED": _box_uploaded},
    "vercel": {"deployment.succeeded": _simple({
        "id": "{delivery}", "type": "deployment.succeeded",
        "payload": {"deployment": {"url": "web-7d1f.vercel.app"}, "target": "production"}})},
    "lemonsqueezy": {"order_created": _simple({
        "meta": {"event_name": "order_created"},
        "data": {"type": "orders", "id": "{delivery}",
                 "attributes": {"total": 999, "status": "paid"}}})},
    "calendly": {"invitee.created": _simple({
        "event": "invitee.created", "payload": {"uri": "{delivery}", "email": "ada@example.com",
                                                "name": "Ada Lovelace", "status": "active"}})},
    "mux": {"video.asset.ready": _simple({
        "id": "{delivery}", "type": "video.asset.ready",
        "data": {"id": "asset-01", "status": "ready", "duration": 23.4}})},
    "zendesk": {"zen:event-type:ticket.created": _simple({
        "id": "{delivery}", "type": "zen:event-type:ticket.created",
        "detail": {"id": "35436", "subject": "Help, my printer is on fire"}})},
    "webflow": {"form_submission": _simple({
        "triggerType": "form_submission",
        "payload": {"name": "Contact", "id": "{delivery}",
                    "data": {"email": "ada@example.com"}}})},
    "docusign": {"envelope-completed": _simple({
        "event": "envelope-completed", "data": {"envelopeId": "{delivery}"}})},
    "trello": {"updateCard": _simple({
        "action": {"id": "{delivery}", "type": "updateCard",
                   "data": {"card": {"name": "Ship the release"}}}})},
    "telegram": {"message": _telegram_message},
}


def events_for(provider: str) -> list[str]:
    return list(SAMPLES.get(provider, {}))


def new_id(provider: str) -> str:
    """A delivery id of the provider's own form."""
    if provider == "stripe":
        return f"evt_{secrets.token_hex(12)}"
    if provider == "slack":
        return f"Ev{secrets.token_hex(5).upper()}"
    if provider in ("standard", "clerk", "resend"):
        return f"msg_{secrets.token_hex(12)}"
    return str(uuid.uuid4())


def request(provider: str, event: str, secret: str, url: str, delivery: str | None = None,
            payload: bytes | None = None, now: int | None = None
            ) -> tuple[bytes, dict[str, str]]:
    """The body and headers `provider` would send for `event` (the sample's body, or
    `payload`). Raises KeyError for a provider without a signer, or an event without a sample
    when no payload is given."""
    now = int(time.time()) if now is None else now
    delivery = delivery or new_id(provider)
    if payload is None:
        payload = json.dumps(SAMPLES[provider][event](delivery, now), indent=2).encode()
    if provider in ("standard", "clerk", "resend"):
        headers = signers.standard(payload, secret, now, url, msg_id=delivery)
    else:
        headers = signers.SIGNERS[provider](payload, secret, now, url)
    headers["Content-Type"] = "application/json"
    if provider == "github":
        headers["X-GitHub-Event"] = event.split(".")[0]
        headers["X-GitHub-Delivery"] = delivery
    elif provider == "shopify":
        headers["X-Shopify-Topic"] = event
        headers["X-Shopify-Webhook-Id"] = delivery
    return payload, headers
