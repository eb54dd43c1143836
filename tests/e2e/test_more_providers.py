"""Every further provider, end to end: SDK-signed (or independently signed from the provider's
docs where no SDK exists) requests against the real server.

For each: valid -> 2xx; one byte changed -> 401; wrong secret -> 401; stale timestamp -> 401 where
the scheme has one; both rotated secrets verify; handshakes answered as the provider expects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hubspot.utils.signature import Signature as HubSpotSignature
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from paddle_billing.Notifications.PaddleSignature import PaddleSignature
from sendgrid.helpers.eventwebhook import EventWebhook
from slack_sdk.signature import SignatureVerifier
from square.utils.webhooks_helper import verify_signature as square_verifies
from standardwebhooks.webhooks import Webhook as StandardWebhook
from twilio.request_validator import RequestValidator

from bridge.core.errors import MalformedSignature, SignatureError
from bridge.ingest.providers import SCHEMES, InboundRequest, build
from tests.support.harness import Bridge

# Asymmetric keys: the provider holds the private key; the bridge is given the public one.
DISCORD_KEYS = [SigningKey.generate() for _ in range(3)]
SENDGRID_KEYS = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]


def discord_public(i: int) -> str:
    return DISCORD_KEYS[i].verify_key.encode().hex()


def sendgrid_public(i: int) -> str:
    der = SENDGRID_KEYS[i].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def hexmac(secret: str, message: bytes, algo: str = "sha256") -> str:
    return hmac.new(secret.encode(), message, getattr(hashlib, algo)).hexdigest()


def b64mac(secret: str, message: bytes, algo: str = "sha256") -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, getattr(hashlib, algo)).digest()
                            ).decode()


Signer = Callable[[bytes, str, int, str], dict[str, str]]  # body, secret, timestamp, url


@dataclass
class Case:
    provider: str
    secrets: list[str]
    wrong: str
    body: bytes
    sign: Signer
    timestamped: bool = False
    path_query: str = ""
    key: str | None = None  # expected idempotency key suffix
    event_type: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # unsigned headers
    signs_body: bool = True  # GitLab's plain token authenticates the sender, not the body


def slack(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
    return {"X-Slack-Signature": str(signature), "X-Slack-Request-Timestamp": str(ts)}


def twilio(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    params = dict(p.split("=", 1) for p in body.decode().split("&"))
    from urllib.parse import unquote_plus

    params = {k: unquote_plus(v) for k, v in params.items()}
    return {"X-Twilio-Signature": RequestValidator(secret).compute_signature(url, params),
            "Content-Type": "application/x-www-form-urlencoded",
            "I-Twilio-Idempotency-Token": "tw-idem-1"}


def gitlab_token(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    return {"X-Gitlab-Token": secret, "Idempotency-Key": "gl-key-1",
            "X-Gitlab-Event": "Merge Request Hook"}


def gitlab_signed(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    signature = StandardWebhook(secret).sign("gl-key-2", datetime.fromtimestamp(ts, tz=UTC),
                                             body.decode())
    return {"webhook-id": "gl-key-2", "webhook-timestamp": str(ts),
            "webhook-signature": signature, "Idempotency-Key": "gl-key-2"}


def paddle(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    h1 = PaddleSignature.calculate_hmac(secret, f"{ts}:".encode() + body).hexdigest()
    return {"Paddle-Signature": f"ts={ts};h1={h1}"}


def square(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    signature = b64mac(secret, url.encode() + body)
    # Independent signer, checked against Square's own verifier before use.
    assert square_verifies(request_body=body.decode(), signature_header=signature,
                           signature_key=secret, notification_url=url)
    return {"x-square-hmacsha256-signature": signature}


def zoom(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    return {"x-zm-signature": "v0=" + hexmac(secret, f"v0:{ts}:".encode() + body),
            "x-zm-request-timestamp": str(ts)}


def twitch(body: bytes, secret: str, ts: int, url: str, kind: str = "notification"
           ) -> dict[str, str]:
    stamp = datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    message_id = "tw-msg-1"
    return {"Twitch-Eventsub-Message-Id": message_id, "Twitch-Eventsub-Message-Timestamp": stamp,
            "Twitch-Eventsub-Message-Signature": "sha256=" + hexmac(
                secret, (message_id + stamp).encode() + body),
            "Twitch-Eventsub-Message-Type": kind,
            "Twitch-Eventsub-Subscription-Type": "channel.follow"}


def hubspot(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    millis = str(ts * 1000)
    signature = HubSpotSignature.get_signature(secret, body.decode(), "v3", url, "POST", millis)
    return {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": millis}


def discord(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    key = DISCORD_KEYS[int(secret)]
    signature = key.sign(str(ts).encode() + body).signature.hex()
    return {"X-Signature-Ed25519": signature, "X-Signature-Timestamp": str(ts)}


def sendgrid(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    key = SENDGRID_KEYS[int(secret)]
    signature = base64.b64encode(key.sign(str(ts).encode() + body,
                                          ec.ECDSA(hashes.SHA256()))).decode()
    # Checked against SendGrid's own verifier before use.
    assert EventWebhook(sendgrid_public(int(secret))).verify_signature(
        body.decode(), signature, str(ts))
    return {"X-Twilio-Email-Event-Webhook-Signature": signature,
            "X-Twilio-Email-Event-Webhook-Timestamp": str(ts)}


def mailgun_body(secret: str, ts: int, token: str = "tok-" + "a" * 46,
                 event_id: str = "mg-evt-1") -> bytes:
    return json.dumps({"signature": {"timestamp": str(ts), "token": token,
                                     "signature": hexmac(secret, f"{ts}{token}".encode())},
                       "event-data": {"id": event_id, "event": "delivered"}}).encode()


def prefixed(header: str, prefix: str, algo: str = "sha256", b64: bool = False) -> Signer:
    def sign(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
        mac = b64mac(secret, body, algo) if b64 else hexmac(secret, body, algo)
        return {header: prefix + mac}

    return sign


def linear_body(ts: float, marker: str = "") -> bytes:
    """Linear puts its timestamp inside the signed body (milliseconds)."""
    return json.dumps({"type": "Issue", "action": "create", "data": {"m": marker},
                       "webhookTimestamp": int(ts * 1000)}).encode()


def linear(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    # Linear-Timestamp is sent, but it is not signed: the bridge must never use it.
    return {"Linear-Signature": hexmac(secret, body), "Linear-Timestamp": str(ts * 1000),
            "Linear-Delivery": f"lin-{ts}"}


def pagerduty(body: bytes, secret: str, ts: int, url: str) -> dict[str, str]:
    return {"X-PagerDuty-Signature": f"v1={'0' * 64},v1={hexmac(secret, body)}"}


SLACK_EVENT = json.dumps({"type": "event_callback", "event_id": "Ev01",
                          "event": {"type": "app_mention", "text": "hi"}}).encode()
CASES: dict[str, Case] = {
    "slack": Case("slack", ["slack-new", "slack-old"], "slack-wrong", SLACK_EVENT, slack, True,
                  key="Ev01", event_type="app_mention"),
    "shopify": Case("shopify", ["shp-new", "shp-old"], "shp-wrong", b'{"id":1,"total":"9.99"}',
                    prefixed("X-Shopify-Hmac-Sha256", "", b64=True), key="shp-wh-1",
                    event_type="orders/create",
                    extra={"X-Shopify-Webhook-Id": "shp-wh-1", "X-Shopify-Topic": "orders/create",
                           "X-Shopify-Event-Id": "shp-ev-1"}),
    "twilio": Case("twilio", ["tw-new", "tw-old"], "tw-wrong",
                   b"MessageSid=SM123&MessageStatus=delivered&To=%2B14155550100&Body=H%C3%A9llo",
                   twilio, key="tw-idem-1", event_type="message.delivered"),
    "gitlab": Case("gitlab", ["gl-new", "gl-old"], "gl-wrong",
                   b'{"object_kind":"merge_request","object_attributes":{"action":"open"}}',
                   gitlab_token, key="gl-key-1", event_type="merge_request.open",
                   signs_body=False),
    "gitlab-signed": Case("gitlab", ["whsec_Z2l0bGFiLXNpZ25pbmctdG9rZW4tMDAwMDAwMDA=",
                                     "whsec_b2xkLWdpdGxhYi1zaWduaW5nLXRva2VuLTAwMDA="],
                          "whsec_d3JvbmctZ2l0bGFiLXNpZ25pbmctdG9rZW4tMDA=",
                          b'{"object_kind":"push"}', gitlab_signed, True, key="gl-key-2",
                          event_type="push"),
    "bitbucket": Case("bitbucket", ["bb-new", "bb-old"], "bb-wrong", b'{"push":{}}',
                      prefixed("X-Hub-Signature", "sha256="), key="bb-req-1",
                      event_type="repo:push",
                      extra={"X-Request-UUID": "bb-req-1", "X-Event-Key": "repo:push"}),
    "paddle": Case("paddle", ["pdl_ntfset_01_new", "pdl_ntfset_01_old"], "pdl_ntfset_wrong",
                   b'{"event_id":"evt_01","event_type":"transaction.completed"}', paddle, True,
                   key="evt_01", event_type="transaction.completed"),
    "square": Case("square", ["sq-new", "sq-old"], "sq-wrong",
                   b'{"event_id":"sq-evt-1","type":"payment.created"}', square,
                   key="sq-evt-1", event_type="payment.created"),
    "zoom": Case("zoom", ["zm-new", "zm-old"], "zm-wrong",
                 b'{"event":"meeting.started","payload":{}}', zoom, True,
                 event_type="meeting.started"),
    "twitch": Case("twitch", ["twitch-secret-new", "twitch-secret-old"], "twitch-secret-bad",
                   b'{"subscription":{"type":"channel.follow"},"event":{}}', twitch, True,
                   key="tw-msg-1", event_type="channel.follow"),
    "hubspot": Case("hubspot", ["hs-new", "hs-old"], "hs-wrong",
                    b'[{"eventId":101,"subscriptionType":"contact.creation"}]', hubspot, True,
                    event_type="contact.creation"),
    "intercom": Case("intercom", ["ic-new", "ic-old"], "ic-wrong",
                     b'{"id":"notif_1","topic":"conversation.user.created"}',
                     prefixed("X-Hub-Signature", "sha1=", "sha1"), key="notif_1",
                     event_type="conversation.user.created"),
    "discord": Case("discord", [discord_public(0), discord_public(1)], "2",
                    b'{"id":"9001","type":2}', discord, key="9001",
                    event_type="interaction.2"),
    "sendgrid": Case("sendgrid", [sendgrid_public(0), sendgrid_public(1)], "2",
                     b'[{"sg_event_id":"sg-1","event":"delivered"}]\r\n', sendgrid,
                     event_type="delivered"),
    "pagerduty": Case("pagerduty", ["pd-new", "pd-old"], "pd-wrong",
                      b'{"event":{"id":"pd-ev-1","event_type":"incident.triggered"}}', pagerduty,
                      key="pd-ev-1", event_type="incident.triggered"),
    "typeform": Case("typeform", ["tf-new", "tf-old"], "tf-wrong",
                     b'{"event_id":"tf-1","event_type":"form_response"}',
                     prefixed("Typeform-Signature", "sha256=", b64=True), key="tf-1",
                     event_type="form_response"),
    "jira": Case("jira", ["jira-new", "jira-old"], "jira-wrong",
                 b'{"webhookEvent":"jira:issue_created"}', prefixed("X-Hub-Signature", "sha256="),
                 key="jira-1", event_type="jira:issue_created",
                 extra={"X-Atlassian-Webhook-Identifier": "jira-1"}),
}
SIGNING_SECRETS = {"discord": [0, 1], "sendgrid": [0, 1]}  # secrets handed to the signer


def secret_for_signer(case: Case, i: int) -> str:
    return str(i) if case.provider in SIGNING_SECRETS else case.secrets[i]


def config() -> str:
    text = ""
    for name, case in CASES.items():
        secrets = ", ".join(json.dumps(s) for s in case.secrets)
        text += f'\n[[sources]]\nname = "{name}"\nprovider = "{case.provider}"\n' \
                f"secrets = [{secrets}]\n"
    text += '\n[[sources]]\nname = "mailgun"\nprovider = "mailgun"\n' \
            'secrets = ["mg-new", "mg-old"]\n'
    text += '\n[[sources]]\nname = "linear"\nprovider = "linear"\n' \
            'secrets = ["lin-new", "lin-old"]\n'
    return text


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> object:
    from tests.support.harness import ADMIN_TOKEN, BASE_CONFIG, free_port

    tmp = tmp_path_factory.mktemp("providers")
    port = free_port()
    text = BASE_CONFIG.format(port=port, db=tmp / "p.db", platform="http://127.0.0.1:9/api/v1",
                              trigger_key="tk-x", api_key="ak-x", github="g", stripe="s",
                              standard="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    path = tmp / "p.toml"
    path.write_text(text.replace("[[routes]]", "[[ignored]]", 0) + config()
                    + f'\n[admin]\ntokens = ["{ADMIN_TOKEN}"]\n')
    server = Bridge(path, port, tmp / "p.db", tmp / "p.log").start()
    yield server
    if server.proc is not None:
        server.proc.kill()
        server.proc.wait(10)
    logs = server.logs()
    assert "accepted" in logs  # the log is there to search
    used = [s for case in CASES.values() for s in (*case.secrets, case.wrong) if len(s) > 2]
    # configured, rotated and wrong secrets alike
    for secret in used + ["mg-new", "mg-old", "lin-new", "lin-old", "lin-wrong"]:
        assert secret not in logs, "a provider secret appeared in the bridge's logs"


def send(bridge: Bridge, name: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return bridge.post(f"/hooks/{name}", body, {**CASES[name].extra, **headers}
                       if name in CASES else headers)


def url_of(bridge: Bridge, name: str) -> str:
    return f"{bridge.url}/hooks/{name}"


@pytest.mark.parametrize("name", list(CASES))
def test_valid_tampered_and_wrong_secret(bridge: Bridge, name: str) -> None:
    case = CASES[name]
    now = int(time.time())
    headers = case.sign(case.body, secret_for_signer(case, 0), now, url_of(bridge, name))
    ok = send(bridge, name, case.body, headers)
    assert ok.status_code in (200, 202), ok.text
    if case.key is not None:
        assert ok.json()["idempotency_key"] == f"{name}:{case.key}"
    if case.event_type is not None:
        assert bridge.event(ok.json()["id"])["event_type"] == case.event_type
    tampered = bytearray(case.body)
    tampered[len(tampered) // 2] ^= 0x01
    status = send(bridge, name, bytes(tampered), headers).status_code
    assert status == 401 if case.signs_body else status in (200, 202)
    wrong = case.sign(case.body, case.wrong, now, url_of(bridge, name))
    response = send(bridge, name, case.body, wrong)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_signature"
    assert send(bridge, name, case.body, case.extra).status_code == 401  # unsigned


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.timestamped])
def test_stale_timestamps_are_refused(bridge: Bridge, name: str) -> None:
    case = CASES[name]
    stale = int(time.time()) - 3600
    headers = case.sign(case.body, secret_for_signer(case, 0), stale, url_of(bridge, name))
    response = send(bridge, name, case.body, headers)
    assert response.status_code == 401


@pytest.mark.parametrize("name", list(CASES))
def test_both_rotated_secrets_verify(bridge: Bridge, name: str) -> None:
    case = CASES[name]
    for i in (0, 1):
        body = case.body
        headers = case.sign(body, secret_for_signer(case, i), int(time.time()),
                            url_of(bridge, name))
        assert send(bridge, name, body, headers).status_code in (200, 202)


def test_paddle_published_vector() -> None:
    from bridge.config import Secret, SourceConfig
    from bridge.ingest.providers import InboundRequest, build

    verifier = build(SourceConfig("p", "paddle", (Secret(
        "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_WvRO0eL4Bj9rgYYIBZY6wZhG4EHy9jzh"),)))
    header = ("ts=1696195954;h1=dummy;"
              "h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02")
    with pytest.raises(MalformedSignature):  # "dummy" is not hex
        verifier.verify(InboundRequest({"paddle-signature": header}, b"hello-world"), 1696195954)
    good = "ts=1696195954;h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02"
    verifier.verify(InboundRequest({"paddle-signature": good}, b"hello-world"), 1696195954)


@pytest.mark.parametrize(
    ("body", "key", "url", "signature"),
    [
        (b'{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":"ac3ac95b'
         b'-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":{"ty'
         b'pe":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}', "Ibxx_5AKakO-3qeNVR61Dw",
         "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9",
         "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="),
        (b'{"data":{"type":"webhooks","id":">id<"}}', "signature-key",
         "https://webhook.site/webhooks", "Cxt7+aTi4rKgcA0bC4g9EHdVtLSDWdqccmL5MvihU4U="),
    ],
)
def test_square_published_vectors(body: bytes, key: str, url: str, signature: str) -> None:
    from bridge.config import Secret, SourceConfig
    from bridge.ingest.providers import InboundRequest, build

    verifier = build(SourceConfig("s", "square", (Secret(key),),
                                  options={"notification_url": url}))
    verifier.verify(InboundRequest({"x-square-hmacsha256-signature": signature}, body), 0)


def test_twilio_published_vectors_and_port_variants() -> None:
    from bridge.config import Secret, SourceConfig
    from bridge.ingest.providers import InboundRequest, build

    uri = "https://mycompany.com/myapp.php?foo=1&bar=2"
    body = urlencode({"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
                      "From": "+14158675309", "To": "+18005551212"}).encode()
    for url in (uri, "https://mycompany.com:443/myapp.php?foo=1&bar=2"):
        verifier = build(SourceConfig("t", "twilio", (Secret("12345"),), options={"url": url}))
        verifier.verify(InboundRequest({"x-twilio-signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="},
                                       body), 0)
    json_url = ("https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256="
                "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620")
    verifier = build(SourceConfig("t", "twilio", (Secret("12345"),), options={"url": json_url}))
    verifier.verify(InboundRequest({"x-twilio-signature": "a9nBmqA0ju/hNViExpshrM61xv4="},
                                   b'{"property": "value", "boolean": true}'), 0)


def test_sendgrid_published_vector() -> None:
    from bridge.config import Secret, SourceConfig
    from bridge.ingest.providers import InboundRequest, build

    key = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe6"
           "2gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==")
    events = [{"email": "hello@world.com", "event": "dropped", "reason": "Bounced Address",
               "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
               "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-"
                                "5F5FC76C-9.0",
               "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
               "timestamp": 1600112492}]
    body = (json.dumps(events, sort_keys=True, separators=(",", ":")) + "\r\n").encode()
    headers = {"x-twilio-email-event-webhook-timestamp": "1600112502",
               "x-twilio-email-event-webhook-signature": "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmM"
               "OVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="}
    verifier = build(SourceConfig("g", "sendgrid", (Secret(key),)))
    verifier.verify(InboundRequest(headers, body), 0)
    with pytest.raises(SignatureError):  # the trailing CRLF is part of what was signed
        verifier.verify(InboundRequest(headers, body.rstrip()), 0)


def test_hubspot_published_v3_vector() -> None:
    from bridge.config import Secret, SourceConfig
    from bridge.ingest.providers import InboundRequest, build

    verifier = build(SourceConfig("h", "hubspot", (Secret("yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"),),
                                  options={"url": "https://www.example.com/webhook_uri"}))
    headers = {"x-hubspot-signature-v3": "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw=",
               "x-hubspot-request-timestamp": "15000000"}
    verifier.verify(InboundRequest(headers, b"{'example_field':'example_value'}"), 15000)


def test_handshakes_are_answered_as_the_provider_expects(bridge: Bridge) -> None:
    now = int(time.time())
    body = json.dumps({"type": "url_verification", "challenge": "3eZbrw1aB"}).encode()
    slack_answer = send(bridge, "slack", body, slack(body, "slack-new", now, ""))
    assert slack_answer.status_code == 200 and slack_answer.json() == {"challenge": "3eZbrw1aB"}

    body = json.dumps({"event": "endpoint.url_validation",
                       "payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"}}).encode()
    zoom_answer = send(bridge, "zoom", body, zoom(body, "zm-new", now, ""))
    assert zoom_answer.json() == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw",
                                  "encryptedToken": hexmac("zm-new", b"qgg8vlvZRS6UYooatFL8Aw")}

    body = json.dumps({"challenge": "pogchamp-kappa-360noscope-vohiyo",
                       "subscription": {"type": "channel.follow"}}).encode()
    twitch_answer = send(bridge, "twitch", body,
                         twitch(body, "twitch-secret-new", now, "", "webhook_callback_verification"))
    assert twitch_answer.status_code == 200
    assert twitch_answer.text == "pogchamp-kappa-360noscope-vohiyo"
    assert twitch_answer.headers["content-type"].startswith("text/plain")

    body = b'{"id":"ping-1","type":1}'
    discord_answer = send(bridge, "discord", body, discord(body, "0", now, ""))
    assert discord_answer.status_code == 200 and discord_answer.json() == {"type": 1}
    forged = send(bridge, "discord", body, discord(body, "2", now, ""))
    assert forged.status_code == 401  # a PING is answered only when it is genuine


def test_twitch_revocation_is_stored_with_its_own_type(bridge: Bridge) -> None:
    body = b'{"subscription":{"type":"channel.follow","status":"authorization_revoked"}}'
    headers = twitch(body, "twitch-secret-new", int(time.time()), "", "revocation")
    headers["Twitch-Eventsub-Message-Id"] = "tw-revoke-1"
    headers["Twitch-Eventsub-Message-Signature"] = "sha256=" + hexmac(
        "twitch-secret-new", ("tw-revoke-1" + headers["Twitch-Eventsub-Message-Timestamp"]
                              ).encode() + body)
    response = send(bridge, "twitch", body, headers)
    assert response.status_code == 202
    assert bridge.event(response.json()["id"])["event_type"] == "revocation.channel.follow"


def test_slack_retries_are_duplicates(bridge: Bridge) -> None:
    body = json.dumps({"type": "event_callback", "event_id": "EvRetry",
                       "event": {"type": "message"}}).encode()
    first = send(bridge, "slack", body, slack(body, "slack-new", int(time.time()), ""))
    retry = send(bridge, "slack", body, {**slack(body, "slack-new", int(time.time()), ""),
                                         "X-Slack-Retry-Num": "1",
                                         "X-Slack-Retry-Reason": "http_timeout"})
    assert first.status_code == 202 and retry.status_code == 200
    assert retry.json()["duplicate"] is True and retry.json()["id"] == first.json()["id"]


def test_sendgrid_batches_dedupe_per_item(bridge: Bridge) -> None:
    def post(events: list[dict[str, str]]) -> httpx.Response:
        body = (json.dumps(events) + "\r\n").encode()
        return send(bridge, "sendgrid", body, sendgrid(body, "0", int(time.time()), ""))

    a, b, c = ({"sg_event_id": f"batch-{x}", "event": "open"} for x in "abc")
    first = post([a, b])
    assert first.status_code == 202
    second = post([b, c])  # one item seen before, one new: stored, and says which is which
    assert second.status_code == 202 and second.json()["duplicate"] is False
    again = post([b, a])  # every item seen before: a duplicate, not forwarded again
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["id"] == first.json()["id"]


def test_mailgun_tokens_are_single_use(bridge: Bridge) -> None:
    now = int(time.time())
    body = mailgun_body("mg-new", now, token="tok-" + "b" * 46, event_id="mg-1")
    assert send(bridge, "mailgun", body, {}).status_code == 202
    assert send(bridge, "mailgun", body, {}).status_code == 200  # the same event again
    replay = mailgun_body("mg-new", now, token="tok-" + "b" * 46, event_id="mg-2")
    refused = send(bridge, "mailgun", replay, {})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "replayed_token"
    assert send(bridge, "mailgun", mailgun_body("mg-old", now, token="tok-" + "c" * 46,
                                                event_id="mg-3"), {}).status_code == 202
    wrong = mailgun_body("mg-wrong", now, token="tok-" + "d" * 46, event_id="mg-4")
    assert send(bridge, "mailgun", wrong, {}).status_code == 401
    stale = mailgun_body("mg-new", now - 3600, token="tok-" + "e" * 46, event_id="mg-5")
    assert send(bridge, "mailgun", stale, {}).status_code == 401


def test_bad_public_keys_are_config_errors(tmp_path: object) -> None:
    from bridge.config import Secret, SourceConfig
    from bridge.core.errors import ConfigError
    from bridge.ingest.providers import build

    for provider in ("discord", "sendgrid"):
        with pytest.raises(ConfigError) as info:
            build(SourceConfig("x", provider, (Secret("not-a-key"),)))
        assert "sources[0].secret" in str(info.value)


FUZZ_SECRETS = {"discord": discord_public(0), "sendgrid": sendgrid_public(0),
                **dict.fromkeys(("standard", "clerk", "resend"),
                                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                "airtable": "ZnV6ei1tYWMtc2VjcmV0LWJ5dGVz"}
FUZZ_OPTIONS = {"hmac": {"header": "X-Sig", "signed": "{timestamp}.{body}",
                         "timestamp_header": "X-Ts"},
                "meta": {"verify_token": "fuzz-verify-token"}}
FUZZ_HEADERS = sorted({h.lower() for c in CASES.values()
                       for h in c.sign(c.body, secret_for_signer(c, 0), 0, "http://h/")}
                      | {"stripe-signature", "x-hub-signature-256", "webhook-signature",
                         "webhook-id", "webhook-timestamp", "x-sig", "x-ts", "x-webhook-token"})


@settings(max_examples=40, deadline=None)
@given(headers=st.dictionaries(st.sampled_from(FUZZ_HEADERS),
                               st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                       max_size=120), max_size=6),
       body=st.binary(max_size=512))
@pytest.mark.parametrize("provider", sorted(set(SCHEMES) - {"none"}))
def test_no_verifier_accepts_or_crashes_on_arbitrary_input(provider: str,
                                                           headers: dict[str, str],
                                                           body: bytes) -> None:
    from bridge.config import Secret, SourceConfig

    source = SourceConfig("f", provider, (Secret(FUZZ_SECRETS.get(provider, "fuzz-secret")),),
                          options=FUZZ_OPTIONS.get(provider, {}))
    verifier = build(source)
    request = InboundRequest(headers, body, "http://127.0.0.1/hooks/f")
    with pytest.raises((SignatureError, MalformedSignature)):
        verifier.verify(request, time.time())
    verifier.identify(request)  # never raises either


def test_linear_signed_body_timestamp_rotation_and_tampering(bridge: Bridge) -> None:
    now = time.time()
    for i, secret in enumerate(("lin-new", "lin-old")):
        body = linear_body(now, f"rot-{i}")
        ok = bridge.post("/hooks/linear", body, linear(body, secret, int(now) + i, ""))
        assert ok.status_code == 202, ok.text
        assert bridge.event(ok.json()["id"])["event_type"] == "Issue.create"
    body = linear_body(now, "t")
    headers = linear(body, "lin-new", int(now), "")
    assert bridge.post("/hooks/linear", body.replace(b'"t"', b'"u"'), headers).status_code == 401
    assert bridge.post("/hooks/linear", body, linear(body, "lin-wrong", int(now), "")
                       ).status_code == 401


def test_linear_replay_window_reads_only_the_signed_body() -> None:
    """A 30-day-old signed body with a fresh (unsigned) Linear-Timestamp header is stale."""
    from bridge.config import Secret, SourceConfig
    from bridge.ingest.providers import InboundRequest, build

    verifier = build(SourceConfig("l", "linear", (Secret("lin-new"),)))
    now = time.time()
    old = linear_body(now - 30 * 86400)
    fresh_header = {k.lower(): v for k, v in linear(old, "lin-new", int(now), "").items()}
    with pytest.raises(SignatureError):
        verifier.verify(InboundRequest(fresh_header, old), now)
    fresh = linear_body(now)
    verifier.verify(InboundRequest({"linear-signature": hexmac("lin-new", fresh)}, fresh), now)
    no_time = b'{"type":"Issue","action":"create"}'
    with pytest.raises(SignatureError):  # with no signed timestamp at all, nothing to trust
        verifier.verify(InboundRequest({"linear-signature": hexmac("lin-new", no_time),
                                        "linear-timestamp": str(int(now * 1000))}, no_time), now)
