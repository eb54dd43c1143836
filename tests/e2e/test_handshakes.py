"""Providers that check the URL before they send (Meta, Dropbox, Okta) and Standard Webhooks
senders by name (Clerk, Resend), against a real bridge: each URL check as the provider sends it
(GET, HEAD), then events signed as documented, and the failure cases.

Vectors: Dropbox's is the one published with `hapi-dropbox-webhooks` (body
`{"delta": {"users": [12345]}}`, secret `the_secret`); Meta's scheme is plain HMAC-SHA256 of the
body, checked against the example of the `whatsapp_sdk` documentation
(`compute_signature("test", "secret")`). Clerk and Resend are signed with Svix's own SDK.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from svix.webhooks import Webhook

from tests.support import http
from tests.support.cli import run_cli
from tests.support.harness import Bridge, github_headers, wait_for

META_SECRET = "meta-app-secret-0c1d"
META_VERIFY = "meta-verify-token-77aa"
DROPBOX_SECRET = "the_secret"
OKTA_SECRET = "okta-shared-secret-1f2e"
CLERK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RESEND_SECRET = "whsec_cGxhdGZvcm0tY2FsbGJhY2stc2VjcmV0LTAx"
SOURCES = f"""
[[sources]]
name = "wa"
provider = "meta"
secret = "{META_SECRET}"
verify_token = "{META_VERIFY}"

[[sources]]
name = "box"
provider = "dropbox"
secret = "{DROPBOX_SECRET}"

[[sources]]
name = "okta"
provider = "okta"
secret = "{OKTA_SECRET}"

[[sources]]
name = "clerk"
provider = "clerk"
secret = "{CLERK_SECRET}"

[[sources]]
name = "resend"
provider = "resend"
secret = "{RESEND_SECRET}"

[[sources]]
name = "graph"
provider = "microsoft-graph"
secret = "graph-client-state-5e6f"

[[sources]]
name = "trello"
provider = "trello"
secret = "trello-app-secret-6a6b"

[[sources]]
name = "tg"
provider = "telegram"
secret = "telegram-secret-token_7c7d"

[[routes]]
source = "wa"
trigger = "whatsapp"

[[routes]]
source = "graph"
trigger = "graph-lifecycle"
events = ["lifecycle.*"]

[[routes]]
source = "okta"
trigger = "okta-events"
"""


@pytest.fixture(scope="module")
def bridge(make_module_bridge: Callable[..., Bridge]) -> Iterator[Bridge]:
    yield make_module_bridge(SOURCES)


def hexmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_the_published_hmac_examples_hold() -> None:
    assert hexmac("secret", b"test") == (
        "0329a06b62cd16b33eb6792be8c60b158d89a2ee3a876fce9a881ebb488c0914")
    assert hexmac(DROPBOX_SECRET, b'{"delta": {"users": [12345]}}') == (
        "0a8c16b085420b960dc78664279fe09e936a2a01b1f91064869d9e77dfd64529")


def test_meta_answers_its_url_check_only_with_the_verify_token(bridge: Bridge) -> None:
    url = f"{bridge.url}/hooks/wa"
    before = len(bridge.events(source="wa"))
    ok = http.get(url, params={"hub.mode": "subscribe", "hub.verify_token": META_VERIFY,
                               "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    head = http.request("HEAD", url, params={"hub.mode": "subscribe",
                                             "hub.verify_token": META_VERIFY,
                                             "hub.challenge": "42"})
    assert head.status_code == 200 and head.content == b""
    for params in ({"hub.mode": "subscribe", "hub.verify_token": "guess",
                    "hub.challenge": "c-8812"},
                   {"hub.mode": "unsubscribe", "hub.verify_token": META_VERIFY,
                    "hub.challenge": "c-8812"}, {}):
        refused = http.get(url, params=params)
        assert refused.status_code == 401, params
        assert "c-8812" not in refused.text  # the challenge is not echoed
        assert META_VERIFY not in refused.text
    assert len(bridge.events(source="wa")) == before  # a URL check stores nothing


def test_meta_events_are_verified_and_a_replay_is_a_duplicate(bridge: Bridge) -> None:
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{
        "id": "1", "changes": [{"field": "messages", "value": {"messages": [
            {"id": "wamid.meta-1", "text": {"body": "hi ✓"}}]}}]}]},
        ensure_ascii=False).encode()
    headers = {"X-Hub-Signature-256": "sha256=" + hexmac(META_SECRET, body),
               "Content-Type": "application/json"}
    first = bridge.post("/hooks/wa", body, headers)
    assert first.status_code == 202, first.text
    assert bridge.event(first.json()["id"])["event_type"] == (
        "whatsapp_business_account.messages")
    again = bridge.post("/hooks/wa", body, headers)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    tampered = bridge.post("/hooks/wa", body.replace(b"hi", b"yo"), headers)
    assert tampered.status_code == 401
    wrong = bridge.post("/hooks/wa", body, {"X-Hub-Signature-256": "sha256=" + hexmac(
        "not-the-app-secret", body)})
    assert wrong.status_code == 401 and "check the secret of sources[" in wrong.text
    assert bridge.post("/hooks/wa", body, {}).status_code == 401


def test_dropbox_echoes_its_challenge_and_verifies_the_published_vector(bridge: Bridge) -> None:
    check = http.get(f"{bridge.url}/hooks/box", params={"challenge": "sa9OKkQ0Jf"})
    assert check.status_code == 200 and check.text == "sa9OKkQ0Jf"
    assert check.headers["x-content-type-options"] == "nosniff"
    assert check.headers["content-type"].startswith("text/plain")
    body = b'{"delta": {"users": [12345]}}'
    vector = "0a8c16b085420b960dc78664279fe09e936a2a01b1f91064869d9e77dfd64529"
    ok = bridge.post("/hooks/box", body, {"X-Dropbox-Signature": vector})
    assert ok.status_code == 202, ok.text
    assert bridge.event(ok.json()["id"])["event_type"] == "delta"
    assert bridge.post("/hooks/box", body + b" ", {"X-Dropbox-Signature": vector}
                       ).status_code == 401
    assert bridge.post("/hooks/box", body, {}).status_code == 401


def test_okta_verifies_its_hook_then_takes_events_with_its_shared_secret(
        bridge: Bridge) -> None:
    check = http.get(f"{bridge.url}/hooks/okta",
                     headers={"X-Okta-Verification-Challenge": "pl-jKX6c4DVqd0pv_7YcVw"})
    assert check.status_code == 200
    assert check.json() == {"verification": "pl-jKX6c4DVqd0pv_7YcVw"}
    assert http.get(f"{bridge.url}/hooks/okta").status_code == 401  # no challenge header
    body = json.dumps({"eventType": "com.okta.event_hook", "eventId": "okta-evt-1",
                       "data": {"events": [{"eventType": "user.lifecycle.create",
                                            "uuid": "u-1"}]}}).encode()
    ok = bridge.post("/hooks/okta", body, {"Authorization": OKTA_SECRET,
                                           "Content-Type": "application/json"})
    assert ok.status_code == 202, ok.text
    shown = bridge.event(ok.json()["id"])
    assert (shown["event_type"], shown["idempotency_key"]) == (
        "user.lifecycle.create", "okta:okta-evt-1")
    assert "authorization" not in {k.lower() for k in shown["headers"]}  # the secret is not kept
    again = bridge.post("/hooks/okta", body, {"Authorization": OKTA_SECRET})
    assert again.json()["duplicate"] is True
    assert bridge.post("/hooks/okta", body, {"Authorization": "Bearer guess"}).status_code == 401


@pytest.mark.parametrize(("source", "secret", "kind"), [
    ("clerk", CLERK_SECRET, "user.created"), ("resend", RESEND_SECRET, "email.delivered")])
def test_standard_webhooks_senders_by_name_are_verified_with_svixs_sdk(
        bridge: Bridge, source: str, secret: str, kind: str) -> None:
    body = json.dumps({"type": kind, "data": {"id": f"{source}-1"}})
    now = dt.datetime.now(tz=dt.UTC)
    msg_id = f"msg_{source}_{time.time_ns()}"
    headers = {"svix-id": msg_id, "svix-timestamp": str(int(now.timestamp())),
               "svix-signature": Webhook(secret).sign(msg_id, now, body),
               "content-type": "application/json"}
    ok = bridge.post(f"/hooks/{source}", body.encode(), headers)
    assert ok.status_code == 202, ok.text
    shown = bridge.event(ok.json()["id"])
    assert (shown["event_type"], shown["idempotency_key"]) == (kind, f"{source}:{msg_id}")
    stale = now - dt.timedelta(minutes=10)
    old = {**headers, "svix-timestamp": str(int(stale.timestamp())),
           "svix-signature": Webhook(secret).sign(msg_id, stale, body)}
    assert bridge.post(f"/hooks/{source}", body.encode(), old).status_code == 401
    assert bridge.post(f"/hooks/{source}", body.encode() + b" ", headers).status_code == 401


def test_microsoft_graph_validates_its_url_and_checks_each_client_state(
        bridge: Bridge) -> None:
    url = f"{bridge.url}/hooks/graph"
    before = len(bridge.events(source="graph"))
    check = http.post(url, params={"validationToken": "Validation: Testing client 1.2.3"},
                      headers={"Content-Type": "text/plain"})
    assert check.status_code == 200 and check.text == "Validation: Testing client 1.2.3"
    assert check.headers["content-type"].startswith("text/plain")
    assert len(bridge.events(source="graph")) == before  # nothing stored

    def notify(*states: str, **fields: str) -> Any:
        body = json.dumps({"value": [{"subscriptionId": "sub-1", "clientState": state,
                                      "tenantId": "t-1", **fields} for state in states]})
        return http.post(url, content=body, headers={"Content-Type": "application/json"})

    created = notify("graph-client-state-5e6f", changeType="created",
                     resource="Users/u-1/messages/m-1")
    assert created.status_code == 202, created.text
    assert bridge.event(created.json()["id"])["event_type"] == "created"
    lifecycle = notify("graph-client-state-5e6f", lifecycleEvent="reauthorizationRequired")
    assert lifecycle.status_code == 202
    event = bridge.event(lifecycle.json()["id"])
    assert event["event_type"] == "lifecycle.reauthorizationRequired"
    assert [d["trigger"] for d in event["deliveries"]] == ["graph-lifecycle"]  # routed
    assert notify("guess", changeType="updated").status_code == 401
    assert notify("graph-client-state-5e6f", "guess", changeType="updated").status_code == 401
    assert http.post(url, content=b'{"value": []}').status_code == 401
    assert http.post(url, content=b"").status_code == 401  # no token, no notification


def test_trello_answers_its_head_check_and_verifies_body_plus_callback_url(
        bridge: Bridge) -> None:
    """Trello's docs: HEAD on the callback URL when the webhook is made; then X-Trello-Webhook,
    base64 HMAC-SHA1 of the body followed by the callback URL (signed here with Python's hmac)."""
    import base64

    url = f"{bridge.url}/hooks/trello"
    head = http.request("HEAD", url)
    assert head.status_code == 200 and head.content == b""
    body = json.dumps({"action": {"id": "5f1c8d2e9a0b", "type": "updateCard",
                                  "data": {"card": {"name": "Ship ✓"}}}}).encode()
    callback_url = url  # the hook's public URL: what the webhook was registered with

    def signed(secret: str, signed_url: str) -> dict[str, str]:
        digest = hmac.new(secret.encode(), body + signed_url.encode(), hashlib.sha1).digest()
        return {"X-Trello-Webhook": base64.b64encode(digest).decode(),
                "Content-Type": "application/json"}

    ok = bridge.post("/hooks/trello", body, signed("trello-app-secret-6a6b", callback_url))
    assert ok.status_code == 202, ok.text
    shown = bridge.event(ok.json()["id"])
    assert (shown["event_type"], shown["idempotency_key"]) == ("updateCard",
                                                               "trello:5f1c8d2e9a0b")
    other_url = signed("trello-app-secret-6a6b", "https://elsewhere.example/hooks/trello")
    assert bridge.post("/hooks/trello", body, other_url).status_code == 401
    assert bridge.post("/hooks/trello", body, signed("guess", callback_url)).status_code == 401
    assert bridge.post("/hooks/trello", body, {}).status_code == 401


def test_telegram_checks_its_secret_token_and_keys_on_update_id(bridge: Bridge) -> None:
    body = json.dumps({"update_id": 912345678, "message": {"message_id": 1,
                                                           "text": "/deploy api"}}).encode()
    token = {"X-Telegram-Bot-Api-Secret-Token": "telegram-secret-token_7c7d"}
    ok = bridge.post("/hooks/tg", body, token)
    assert ok.status_code == 202, ok.text
    shown = bridge.event(ok.json()["id"])
    assert (shown["event_type"], shown["idempotency_key"]) == ("message", "tg:912345678")
    assert "x-telegram-bot-api-secret-token" not in {k.lower() for k in shown["headers"]}
    assert bridge.post("/hooks/tg", body, token).json()["duplicate"] is True
    assert bridge.post("/hooks/tg", body, {"X-Telegram-Bot-Api-Secret-Token": "guess"}
                       ).status_code == 401
    assert bridge.post("/hooks/tg", body, {}).status_code == 401


def test_a_get_is_answered_only_for_a_provider_that_checks_with_one(bridge: Bridge) -> None:
    for path in ("/hooks/github", "/hooks/clerk", "/hooks/graph", "/hooks/nobody"):
        assert http.get(f"{bridge.url}{path}", params={"challenge": "x"}).status_code == 405
        assert http.request("HEAD", f"{bridge.url}{path}").status_code == 405
    body = b'{"ref":"refs/heads/main"}'
    assert bridge.post("/hooks/github", body, github_headers(body, delivery="hs-1")
                       ).status_code == 202  # POSTs are unchanged


@pytest.mark.parametrize(("source", "event"), [
    ("wa", "whatsapp_business_account.messages"), ("box", "list_folder"),
    ("okta", "user.session.start"), ("clerk", "user.created"), ("resend", "email.delivered"),
    ("trello", "updateCard"), ("tg", "message")])
def test_bridge_trigger_signs_a_sample_for_each(bridge: Bridge, source: str, event: str) -> None:
    sent = run_cli("trigger", source, event, "--config", str(bridge.config_path),
                   "--url", bridge.url, "--wait", "0")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "-> 202, accepted as event" in sent.stdout
    wait_for(lambda: any(e["event_type"] == event for e in bridge.events(source=source)))


ASANA = """
[[sources]]
name = "asana"
provider = "asana"
accept_handshake = {accept}

[[routes]]
source = "asana"
trigger = "asana-tasks"
"""


def asana_event(n: int) -> bytes:
    return json.dumps({"events": [{"action": "changed", "user": {"gid": "1"},
                                   "resource": {"gid": f"task-{n}", "resource_type": "task"}}]
                       }).encode()


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_asanas_secret_is_learned_once_shared_by_replicas_and_not_replaced_when_closed(
        make_bridge: Callable[..., Bridge], store: str) -> None:
    """The handshake's secret is kept in the store: a replica that never saw the handshake
    verifies with it; a handshake is refused unless the source accepts one; a new secret
    learned on one replica is picked up by the other at its first event that needs it."""
    on_pg = store == "postgres"
    first = make_bridge(ASANA.format(accept="true"), name="asana-a", postgres=on_pg,
                        sqlite=not on_pg)
    second = make_bridge(ASANA.format(accept="false"), name="asana-b", start=False,
                         postgres=on_pg, sqlite=not on_pg)
    shared = f'url = "{first.store_url}"' if on_pg else f'path = "{first.db}"'
    text = second.config_path.read_text()
    text = re.sub(r'^(url|path) = ".*"$', shared, text, count=1, flags=re.M)
    second.config_path.write_text(text)
    second.start()

    def handshake(bridge: Bridge, secret: str) -> Any:
        return bridge.post("/hooks/asana", b"", {"X-Hook-Secret": secret})

    def send(bridge: Bridge, secret: str, n: int) -> Any:
        body = asana_event(n)
        return bridge.post("/hooks/asana", body, {"X-Hook-Signature": hexmac(secret, body),
                                                  "Content-Type": "application/json"})

    assert send(second, "none-yet", 0).status_code == 401  # nothing learned: fail closed
    shake = handshake(first, "asana-secret-one-8d2f")
    assert shake.status_code == 200 and shake.headers["x-hook-secret"] == "asana-secret-one-8d2f"
    assert first.events(source="asana") == []  # a handshake is not an event
    ok = send(second, "asana-secret-one-8d2f", 1)  # the other replica never saw it
    assert ok.status_code == 202, ok.text
    assert second.event(ok.json()["id"])["event_type"] == "task.changed"
    assert send(second, "a-guess", 2).status_code == 401
    # The closed replica refuses a handshake: a live source's secret cannot be swapped there.
    refused = handshake(second, "attacker-secret-0000")
    assert refused.status_code == 401 and "accept_handshake" in refused.json()["error"]["message"]
    assert send(second, "attacker-secret-0000", 3).status_code == 401
    # While the window is open (on the first), a new registration replaces it everywhere.
    assert handshake(first, "asana-secret-two-71aa").status_code == 200
    assert send(second, "asana-secret-two-71aa", 4).status_code == 202
    assert send(second, "asana-secret-one-8d2f", 5).status_code == 401
    heartbeat = b'{"events": []}'
    beat = second.post("/hooks/asana", heartbeat, {
        "X-Hook-Signature": hexmac("asana-secret-two-71aa", heartbeat)})
    assert beat.status_code == 202
    assert second.event(beat.json()["id"])["event_type"] == "heartbeat"
    for bridge in (first, second):
        logs = bridge.logs()
        for secret in ("asana-secret-one-8d2f", "asana-secret-two-71aa", "attacker-secret-0000"):
            assert secret not in logs
        shown = bridge.event(ok.json()["id"])
        assert "x-hook-secret" not in {k.lower() for k in shown["headers"]}
