"""Providers that sign with an HMAC of their own layout, each checked against the provider's
own SDK: what the bridge accepts, the SDK's verifier accepts too (Razorpay's
`Utility.verify_webhook_signature`, WorkOS's `Webhooks.verify_header`), and the failure cases
(a wrong secret, a tampered body, a missing header, a stale timestamp, a replay)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.cli import run_cli
from tests.support.harness import Bridge

RAZORPAY_SECRET = "rzp-webhook-secret-4c1a"
WORKOS_SECRET = "workos-endpoint-secret-9e0b"
SOURCES = f"""
[[sources]]
name = "rzp"
provider = "razorpay"
secret = "{RAZORPAY_SECRET}"

[[sources]]
name = "workos"
provider = "workos"
secret = "{WORKOS_SECRET}"
"""


@pytest.fixture(scope="module")
def bridge(make_module_bridge: Callable[..., Bridge]) -> Iterator[Bridge]:
    yield make_module_bridge(SOURCES)


def hexmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_razorpay_as_its_sdk_verifies(bridge: Bridge) -> None:
    import razorpay

    body = json.dumps({"entity": "event", "event": "payment.captured",
                       "payload": {"payment": {"entity": {"id": "pay_29QQoUBi66xm2f",
                                                          "amount": 50000}}}}).encode()
    signature = hexmac(RAZORPAY_SECRET, body)
    assert razorpay.Utility().verify_webhook_signature(body.decode(), signature,
                                                       RAZORPAY_SECRET) is True
    headers = {"X-Razorpay-Signature": signature, "X-Razorpay-Event-Id": "EVT_rzp_1",
               "Content-Type": "application/json"}
    ok = bridge.post("/hooks/rzp", body, headers)
    assert ok.status_code == 202, ok.text
    shown = bridge.event(ok.json()["id"])
    assert (shown["event_type"], shown["idempotency_key"]) == ("payment.captured", "rzp:EVT_rzp_1")
    again = bridge.post("/hooks/rzp", body, headers)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert bridge.post("/hooks/rzp", body + b" ", headers).status_code == 401
    wrong = {**headers, "X-Razorpay-Signature": hexmac("not-the-secret", body)}
    assert bridge.post("/hooks/rzp", body, wrong).status_code == 401
    assert bridge.post("/hooks/rzp", body, {"X-Razorpay-Event-Id": "EVT_rzp_2"}
                       ).status_code == 401


def workos_header(body: bytes, millis: int, secret: str = WORKOS_SECRET) -> str:
    return f"t={millis}, v1={hexmac(secret, f'{millis}.'.encode() + body)}"


def test_workos_as_its_sdk_verifies_with_its_180_second_window(bridge: Bridge) -> None:
    from workos.webhooks import Webhooks

    oracle = Webhooks.__new__(Webhooks)  # verify_header uses no client
    body = json.dumps({"id": "event_01J9QX0SBV7WZ8CKM5Z6K3G2RP", "event": "user.created",
                       "data": {"object": "user", "email": "ada@example.com"}}).encode()
    now_ms = int(time.time() * 1000)
    header = workos_header(body, now_ms)
    oracle.verify_header(event_body=body, event_signature=header, secret=WORKOS_SECRET)
    ok = bridge.post("/hooks/workos", body, {"WorkOS-Signature": header,
                                             "Content-Type": "application/json"})
    assert ok.status_code == 202, ok.text
    shown = bridge.event(ok.json()["id"])
    assert (shown["event_type"], shown["idempotency_key"]) == (
        "user.created", "workos:event_01J9QX0SBV7WZ8CKM5Z6K3G2RP")
    assert bridge.post("/hooks/workos", body, {"WorkOS-Signature": header}
                       ).json()["duplicate"] is True
    stale = workos_header(body, now_ms - 200_000)  # past WorkOS's 180 s
    with pytest.raises(ValueError):
        oracle.verify_header(event_body=body, event_signature=stale, secret=WORKOS_SECRET)
    assert bridge.post("/hooks/workos", body, {"WorkOS-Signature": stale}).status_code == 401
    ahead = workos_header(body, now_ms + 200_000)
    assert bridge.post("/hooks/workos", body, {"WorkOS-Signature": ahead}).status_code == 401
    tampered = body.replace(b"ada", b"eve")
    assert bridge.post("/hooks/workos", tampered, {"WorkOS-Signature": header}
                       ).status_code == 401
    wrong = workos_header(body, now_ms, "not-the-secret")
    assert bridge.post("/hooks/workos", body, {"WorkOS-Signature": wrong}).status_code == 401
    assert bridge.post("/hooks/workos", body, {"WorkOS-Signature": "v1=abc"}).status_code == 400
    assert bridge.post("/hooks/workos", body, {}).status_code == 401


@pytest.mark.parametrize(("source", "event"), [("rzp", "payment.captured"),
                                               ("workos", "user.created")])
def test_bridge_trigger_signs_a_sample_for_each(bridge: Bridge, source: str, event: str) -> None:
    sent = run_cli("trigger", source, event, "--config", str(bridge.config_path),
                   "--url", bridge.url, "--wait", "0")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "-> 202, accepted as event" in sent.stdout
