"""Providers that sign with an HMAC of their own layout, each checked against the provider's
own SDK: what the bridge accepts, the SDK's verifier accepts too (Razorpay's
`Utility.verify_webhook_signature`, WorkOS's `Webhooks.verify_header`, Coinbase Commerce's
`WebhookSignature`, Box's `compute_webhook_signature` and `validate_message`), and the failure
cases (a wrong secret, a tampered body, a missing header, a stale timestamp, a replay)."""

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
COINBASE_SECRET = "cc-shared-secret-3b7d"
BOX_PRIMARY, BOX_SECONDARY = "box-primary-key-11aa", "box-secondary-key-22bb"
SOURCES = f"""
[[sources]]
name = "rzp"
provider = "razorpay"
secret = "{RAZORPAY_SECRET}"

[[sources]]
name = "workos"
provider = "workos"
secret = "{WORKOS_SECRET}"

[[sources]]
name = "cc"
provider = "coinbase-commerce"
secret = "{COINBASE_SECRET}"

[[sources]]
name = "box"
provider = "box"
secrets = ["{BOX_PRIMARY}", "{BOX_SECONDARY}"]
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


def test_coinbase_commerce_as_its_sdk_signs_and_verifies(bridge: Bridge) -> None:
    from coinbase_commerce.webhook import WebhookSignature

    body = json.dumps({"id": 1, "event": {"id": "24934862-d980-46cb-9402-43c81b0cdba6",
                                          "type": "charge:confirmed",
                                          "data": {"code": "66BEOV2A"}}})
    signature = WebhookSignature._compute_signature(body, COINBASE_SECRET)
    assert WebhookSignature.verify_sig_header(body, signature, COINBASE_SECRET)
    headers = {"X-CC-Webhook-Signature": signature, "Content-Type": "application/json"}
    ok = bridge.post("/hooks/cc", body.encode(), headers)
    assert ok.status_code == 202, ok.text
    shown = bridge.event(ok.json()["id"])
    assert (shown["event_type"], shown["idempotency_key"]) == (
        "charge:confirmed", "cc:24934862-d980-46cb-9402-43c81b0cdba6")
    assert bridge.post("/hooks/cc", body.encode(), headers).json()["duplicate"] is True
    assert bridge.post("/hooks/cc", body.encode() + b" ", headers).status_code == 401
    assert bridge.post("/hooks/cc", body.encode(), {}).status_code == 401


def box_headers(body: str, when: float, primary: str | None = BOX_PRIMARY,
                secondary: str | None = BOX_SECONDARY, escape: bool = False,
                delivery: str = "box-delivery-1") -> dict[str, str]:
    from datetime import UTC, datetime

    from box_sdk_gen.internal.utils import compute_webhook_signature

    headers = {"box-delivery-id": delivery, "box-signature-version": "1",
               "box-signature-algorithm": "HmacSHA256",
               "box-delivery-timestamp": datetime.fromtimestamp(int(when), UTC).isoformat()}
    for name, key in (("box-signature-primary", primary),
                      ("box-signature-secondary", secondary)):
        if key is not None:
            headers[name] = str(compute_webhook_signature(body, headers, key,
                                                          escape_body=escape))
    return headers


def test_box_as_its_sdk_signs_and_validates_with_both_keys_and_its_ten_minutes(
        bridge: Bridge) -> None:
    from box_sdk_gen.managers.webhooks import WebhooksManager

    body = json.dumps({"type": "webhook_event", "id": "e-1", "trigger": "FILE.UPLOADED",
                       "source": {"id": "12345", "type": "file", "name": "Résumé ✓.pdf"}},
                      ensure_ascii=False)
    now = time.time()
    headers = box_headers(body, now)
    assert WebhooksManager.validate_message(body, headers, BOX_PRIMARY,
                                            secondary_key=BOX_SECONDARY)
    ok = bridge.post("/hooks/box", body.encode(), headers)
    assert ok.status_code == 202, ok.text
    shown = bridge.event(ok.json()["id"])
    assert (shown["event_type"], shown["idempotency_key"]) == ("FILE.UPLOADED",
                                                               "box:box-delivery-1")
    # A key rotation: the primary header made with a key this source no longer has, the
    # secondary with one it has; and the SDK's escaped-body variant.
    rotated = box_headers(body, now, primary="retired-key", delivery="box-delivery-2")
    assert bridge.post("/hooks/box", body.encode(), rotated).status_code == 202
    escaped = box_headers(body, now, secondary=None, escape=True, delivery="box-delivery-3")
    assert WebhooksManager.validate_message(body, escaped, BOX_PRIMARY)
    assert bridge.post("/hooks/box", body.encode(), escaped).status_code == 202
    stale = box_headers(body, now - 660, delivery="box-delivery-4")
    assert not WebhooksManager.validate_message(body, stale, BOX_PRIMARY)
    assert bridge.post("/hooks/box", body.encode(), stale).status_code == 401
    ahead = box_headers(body, now + 120, delivery="box-delivery-5")
    assert bridge.post("/hooks/box", body.encode(), ahead).status_code == 401
    wrong = box_headers(body, now, primary="guess", secondary="guess-2",
                        delivery="box-delivery-6")
    assert bridge.post("/hooks/box", body.encode(), wrong).status_code == 401
    assert bridge.post("/hooks/box", body.encode() + b" ", headers).status_code == 401
    unsigned = {k: v for k, v in headers.items() if not k.startswith("box-signature-p")
                and not k.startswith("box-signature-s")}
    assert bridge.post("/hooks/box", body.encode(), unsigned).status_code == 401


@pytest.mark.parametrize(("source", "event"), [
    ("rzp", "payment.captured"), ("workos", "user.created"), ("cc", "charge:confirmed"),
    ("box", "FILE.UPLOADED")])
def test_bridge_trigger_signs_a_sample_for_each(bridge: Bridge, source: str, event: str) -> None:
    sent = run_cli("trigger", source, event, "--config", str(bridge.config_path),
                   "--url", bridge.url, "--wait", "0")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "-> 202, accepted as event" in sent.stdout


# Providers with no SDK that verifies (the scheme is checked as each one's docs state it, with
# Python's own hmac here, never the bridge's code): Vercel (HMAC-SHA1 hex of the body), Sentry
# (HMAC-SHA256 hex, Sentry-Hook-Resource + action), Lemon Squeezy (HMAC-SHA256 hex, X-Event-Name),
# Calendly and Mux (`t=<s>,v1=<hex>` over `{t}.{body}`), Zendesk (base64 over timestamp + body).

def mac(secret: str, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), message, algorithm).digest()


NO_SDK = """
[[sources]]
name = "vercel"
provider = "vercel"
secret = "vercel-secret-01"

[[sources]]
name = "sentry"
provider = "sentry"
secret = "sentry-client-secret-02"

[[sources]]
name = "lemon"
provider = "lemonsqueezy"
secret = "lemon-signing-secret-03"

[[sources]]
name = "calendly"
provider = "calendly"
secret = "calendly-signing-key-04"

[[sources]]
name = "mux"
provider = "mux"
secret = "mux-signing-secret-05"

[[sources]]
name = "zendesk"
provider = "zendesk"
secret = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="

[[sources]]
name = "webflow"
provider = "webflow"
secret = "webflow-secret-06"

[[sources]]
name = "docusign"
provider = "docusign"
secrets = ["docusign-connect-key-1", "docusign-connect-key-2"]

[[sources]]
name = "airtable"
provider = "airtable"
secret = "YWlydGFibGUtbWFjLXNlY3JldC1ieXRlcw=="
"""


@pytest.fixture(scope="module")
def no_sdk(make_module_bridge: Callable[..., Bridge]) -> Iterator[Bridge]:
    yield make_module_bridge(NO_SDK, name="no-sdk")


def signed_cases(now: int) -> list[tuple[str, bytes, dict[str, str], str, str | None]]:
    """(source, body, headers, event type, key id) for each, signed as its docs state."""
    import base64
    from datetime import UTC, datetime

    vercel = b'{"id":"evt_vercel_1","type":"deployment.created","payload":{"name":"web"}}'
    sentry = b'{"action":"created","data":{"issue":{"id":"1170820242"}}}'
    lemon = b'{"meta":{"event_name":"order_created"},"data":{"id":"1"}}'
    calendly = b'{"event":"invitee.created","payload":{"email":"ada@example.com"}}'
    mux = b'{"id":"3a56ac3d-33da-4366-855b-f592d898409d","type":"video.asset.ready"}'
    zendesk = b'{"id":"zen-evt-1","type":"zen:event-type:ticket.created","detail":{}}'
    webflow = b'{"triggerType":"form_submission","payload":{"name":"Contact"}}'
    docusign = b'{"event":"envelope-completed","data":{"envelopeId":"93be49ab"}}'
    airtable = b'{"base":{"id":"appA"},"webhook":{"id":"achB"},"timestamp":"2026-12-08"}'
    millis = str(now * 1000)
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        ("vercel", vercel, {"x-vercel-signature": mac("vercel-secret-01", vercel, "sha1").hex()},
         "deployment.created", "evt_vercel_1"),
        ("sentry", sentry, {"sentry-hook-signature": mac("sentry-client-secret-02", sentry).hex(),
                            "sentry-hook-resource": "issue", "request-id": "req-sentry-1"},
         "issue.created", "req-sentry-1"),
        ("lemon", lemon, {"x-signature": mac("lemon-signing-secret-03", lemon).hex(),
                          "x-event-name": "order_created"}, "order_created", None),
        ("calendly", calendly, {"calendly-webhook-signature": f"t={now},v1=" + mac(
            "calendly-signing-key-04", f"{now}.".encode() + calendly).hex()},
         "invitee.created", None),
        ("mux", mux, {"mux-signature": f"t={now},v1=" + mac(
            "mux-signing-secret-05", f"{now}.".encode() + mux).hex()},
         "video.asset.ready", "3a56ac3d-33da-4366-855b-f592d898409d"),
        ("zendesk", zendesk, {
            "x-zendesk-webhook-signature": base64.b64encode(mac(
                "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ==", stamp.encode() + zendesk)).decode(),
            "x-zendesk-webhook-signature-timestamp": stamp},
         "zen:event-type:ticket.created", "zen-evt-1"),
        ("webflow", webflow, {"x-webflow-timestamp": millis, "x-webflow-signature": mac(
            "webflow-secret-06", millis.encode() + b":" + webflow).hex()},
         "form_submission", None),
        # Two Connect keys: the first header made with a key this source does not hold.
        ("docusign", docusign, {
            "x-docusign-signature-1": base64.b64encode(mac("retired", docusign)).decode(),
            "x-docusign-signature-2": base64.b64encode(
                mac("docusign-connect-key-2", docusign)).decode()},
         "envelope-completed", None),
        ("airtable", airtable, {"x-airtable-content-mac": "hmac-sha256=" + hmac.new(
            base64.b64decode("YWlydGFibGUtbWFjLXNlY3JldC1ieXRlcw=="), airtable,
            "sha256").hexdigest()}, "notification", None),
    ]


@pytest.mark.parametrize("index", range(9), ids=["vercel", "sentry", "lemonsqueezy",
                                                  "calendly", "mux", "zendesk", "webflow",
                                                  "docusign", "airtable"])
def test_signed_as_documented_and_refused_otherwise(no_sdk: Bridge, index: int) -> None:
    now = int(time.time())
    source, body, headers, kind, key = signed_cases(now)[index]
    ok = no_sdk.post(f"/hooks/{source}", body, {**headers, "content-type": "application/json"})
    assert ok.status_code == 202, ok.text
    shown = no_sdk.event(ok.json()["id"])
    assert shown["event_type"] == kind
    if key is not None:
        assert shown["idempotency_key"] == f"{source}:{key}"
    again = no_sdk.post(f"/hooks/{source}", body, headers)  # a replay: the same key
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert no_sdk.post(f"/hooks/{source}", body + b" ", headers).status_code == 401
    unsigned = {k: v for k, v in headers.items() if "signature" not in k and "mac" not in k}
    assert no_sdk.post(f"/hooks/{source}", body, unsigned).status_code == 401
    if source in ("calendly", "mux", "zendesk", "webflow"):  # signed time: stale is refused
        _, _, old, _, _ = signed_cases(now - 3600)[index]
        assert no_sdk.post(f"/hooks/{source}", body, old).status_code == 401


@pytest.mark.parametrize(("source", "event"), [
    ("vercel", "deployment.succeeded"), ("lemon", "order_created"),
    ("calendly", "invitee.created"), ("mux", "video.asset.ready"),
    ("zendesk", "zen:event-type:ticket.created"), ("webflow", "form_submission"),
    ("docusign", "envelope-completed")])
def test_bridge_trigger_signs_a_sample_for_the_others(no_sdk: Bridge, source: str,
                                                      event: str) -> None:
    sent = run_cli("trigger", source, event, "--config", str(no_sdk.config_path),
                   "--url", no_sdk.url, "--wait", "0")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "-> 202, accepted as event" in sent.stdout
