"""Signature schemes, checked against the providers' own SDKs and published test vectors.

End-to-end cases go through the real server; the vector cases call the verifiers directly.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import pytest

from bridge.config import Secret, SourceConfig
from bridge.core.errors import MalformedSignature, SignatureError
from bridge.ingest.providers import InboundRequest, build
from tests.support.harness import STANDARD_SECRET, Bridge, github_headers
from tests.support.signatures import standard_headers, stripe_event, stripe_headers

OTHER_STANDARD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
ROTATION = f"""
[[sources]]
name = "stripe-rotating"
provider = "stripe"
secrets = ["whsec_new_one", "whsec_old_one"]

[[sources]]
name = "standard-rotating"
provider = "standard"
secrets = ["{STANDARD_SECRET}", "{OTHER_STANDARD_SECRET}"]

[[sources]]
name = "github-rotating"
provider = "github"
secrets = ["gh-new", "gh-old"]

[[sources]]
name = "custom"
provider = "hmac"
secrets = ["custom-new", "custom-old"]
header = "X-Signature"
prefix = "sha512="
algorithm = "sha512"
encoding = "base64"
signed = "{{timestamp}}.{{id}}.{{body}}"
timestamp_header = "X-Timestamp"
id_header = "X-Delivery"
event_header = "X-Event"

[[sources]]
name = "shared-token"
provider = "token"
secrets = ["tok-new", "tok-old"]
header = "X-Gitlab-Token"
"""








def flip(body: bytes) -> bytes:
    """The same body with one byte changed."""
    return body[:-2] + bytes([body[-2] ^ 0x01]) + body[-1:]


Signer = Callable[..., dict[str, str]]
CASES: dict[str, tuple[str, bytes, Signer, dict[str, str]]] = {
    # name: (source, body, signer, kwargs giving a wrong secret)
    "github": ("github", b'{"ref":"refs/heads/main"}', github_headers, {"secret": "wrong"}),
    "stripe": ("stripe", stripe_event(), stripe_headers, {"secret": "whsec_wrong"}),
    "standard": ("standard", b'{"type":"user.created","data":{}}', standard_headers,
                 {"secret": OTHER_STANDARD_SECRET}),
    "svix": ("standard", b'{"type":"user.created","data":{}}',
             lambda body, **kw: standard_headers(body, svix=True, msg_id="msg_svix", **kw),
             {"secret": OTHER_STANDARD_SECRET}),
}


@pytest.fixture(scope="module")
def bridge(make_module_bridge: Callable[..., Bridge]) -> Bridge:
    return make_module_bridge(ROTATION)


@pytest.mark.parametrize("case", list(CASES))
def test_sdk_signed_request_is_accepted_and_tampering_refused(bridge: Bridge, case: str) -> None:
    source, body, signer, wrong = CASES[case]
    path = f"/hooks/{source}"
    ok = bridge.post(path, body, signer(body))
    assert ok.status_code == 202, ok.text
    assert ok.json()["duplicate"] is False
    tampered = bridge.post(path, flip(body), signer(body))
    assert tampered.status_code == 401
    assert tampered.json()["error"]["code"] == "invalid_signature"
    assert bridge.post(path, body, signer(body, **wrong)).status_code == 401
    unsigned = bridge.post(path, body, {"Content-Type": "application/json"})
    assert unsigned.status_code == 401


@pytest.mark.parametrize("case", ["stripe", "standard", "svix"])
def test_stale_timestamp_is_refused(bridge: Bridge, case: str) -> None:
    source, body, signer, _ = CASES[case]
    stale = int(time.time()) - 600
    response = bridge.post(f"/hooks/{source}", body, signer(body, at=stale))
    assert response.status_code == 401
    assert "timestamp" in response.json()["error"]["message"]


def test_stripe_accepts_future_timestamps_like_its_sdk(bridge: Bridge) -> None:
    body = stripe_event("evt_future")
    assert bridge.post("/hooks/stripe", body, stripe_headers(body, at=int(time.time()) + 3600)
                       ).status_code == 202


def test_standard_refuses_future_timestamps(bridge: Bridge) -> None:
    body = b'{"type":"a"}'
    future = int(time.time()) + 600
    assert bridge.post("/hooks/standard", body, standard_headers(body, at=future)).status_code == 401


def test_rotated_secrets_each_verify(bridge: Bridge) -> None:
    for i, secret in enumerate(["whsec_new_one", "whsec_old_one"]):
        body = stripe_event(f"evt_rot_{i}")
        assert bridge.post("/hooks/stripe-rotating", body, stripe_headers(body, secret)
                           ).status_code == 202
    # Stripe during a roll: one v1 per secret in one header.
    body = stripe_event("evt_both")
    now = int(time.time())
    both = stripe_headers(body, "whsec_new_one", now)["Stripe-Signature"]
    old = stripe_headers(body, "whsec_old_one", now)["Stripe-Signature"].split(",")[1]
    assert bridge.post("/hooks/stripe-rotating", body,
                       {"Stripe-Signature": f"{both},{old},v0=abcd"}).status_code == 202
    for i, secret in enumerate([STANDARD_SECRET, OTHER_STANDARD_SECRET]):
        body = b'{"type":"t"}'
        assert bridge.post("/hooks/standard-rotating", body,
                           standard_headers(body, secret, msg_id=f"m{i}")).status_code == 202
    for i, secret in enumerate(["gh-new", "gh-old"]):
        body = f'{{"n":{i}}}'.encode()
        assert bridge.post("/hooks/github-rotating", body,
                           github_headers(body, secret, delivery=f"r{i}")).status_code == 202
    for i, secret in enumerate(["tok-new", "tok-old"]):
        assert bridge.post("/hooks/shared-token", f"{i}".encode(),
                           {"X-Gitlab-Token": secret}).status_code == 202
    assert bridge.post("/hooks/shared-token", b"x", {"X-Gitlab-Token": "tok"}).status_code == 401


def test_standard_webhooks_several_signatures_in_one_header(bridge: Bridge) -> None:
    body = b'{"type":"multi"}'
    good = standard_headers(body, msg_id="msg_multi")
    good["webhook-signature"] = f"v1,AAAA{good['webhook-signature'][7:]} v2,xyz " \
                                f"{good['webhook-signature']}"
    assert bridge.post("/hooks/standard", body, good).status_code == 202


def test_generic_hmac_template_with_timestamp_and_id(bridge: Bridge) -> None:
    import base64

    body = b'{"hello":"world"}'
    now = str(int(time.time()))

    def headers(secret: str, ts: str = now) -> dict[str, str]:
        mac = hmac.new(secret.encode(), f"{ts}.dlv-9.".encode() + body, hashlib.sha512).digest()
        return {"X-Signature": "sha512=" + base64.b64encode(mac).decode(), "X-Timestamp": ts,
                "X-Delivery": "dlv-9", "X-Event": "thing.happened"}

    ok = bridge.post("/hooks/custom", body, headers("custom-old"))
    assert ok.status_code == 202 and ok.json()["idempotency_key"] == "custom:dlv-9"
    assert bridge.post("/hooks/custom", body, headers("wrong")).status_code == 401
    assert bridge.post("/hooks/custom", body, headers("custom-new", str(int(now) - 900))
                       ).status_code == 401


@pytest.mark.parametrize(
    ("source", "headers"),
    [
        ("github", {"X-Hub-Signature-256": "md5=abc"}),
        ("github", {"X-Hub-Signature-256": "sha256=not-hex"}),
        ("stripe", {"Stripe-Signature": "garbage"}),
        ("stripe", {"Stripe-Signature": "v1=abcd"}),
        ("stripe", {"Stripe-Signature": "t=soon,v1=abcd"}),
        ("standard", {"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "nocomma"}),
    ],
)
def test_malformed_signature_headers_are_400(bridge: Bridge, source: str,
                                             headers: dict[str, str]) -> None:
    response = bridge.post(f"/hooks/{source}", b'{"a":1}', headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_signature"


def test_idempotency_keys_and_event_types(bridge: Bridge) -> None:
    body = b'{"action":"opened","number":1}'
    gh = bridge.post("/hooks/github", body,
                     github_headers(body, delivery="abc-123", event="pull_request")).json()
    assert gh["idempotency_key"] == "github:abc-123"
    st = bridge.post("/hooks/stripe", stripe_event("evt_K"), stripe_headers(stripe_event("evt_K")))
    assert st.json()["idempotency_key"] == "stripe:evt_K"
    sw = bridge.post("/hooks/standard", b'{"type":"x"}', standard_headers(b'{"type":"x"}',
                                                                          msg_id="msg_Z"))
    assert sw.json()["idempotency_key"] == "standard:msg_Z"
    rows = {e["idempotency_key"]: e["event_type"] for e in bridge.events()}
    assert {key: rows.get(key) for key in ("github:abc-123", "stripe:evt_K", "standard:msg_Z")} \
        == {"github:abc-123": "pull_request.opened", "stripe:evt_K": "invoice.paid",
            "standard:msg_Z": "x"}
    no_id = b'{"no":"delivery header"}'
    headers = github_headers(no_id)
    del headers["X-GitHub-Delivery"]
    key = bridge.post("/hooks/github", no_id, headers).json()["idempotency_key"]
    assert key == "github:sha256:" + hashlib.sha256(no_id).hexdigest()


# Published vectors, straight into the verifiers.

def source(provider: str, *secrets: str, **options: object) -> SourceConfig:
    return SourceConfig(name="s", provider=provider, secrets=tuple(Secret(s) for s in secrets),
                        options=options)


@pytest.mark.parametrize(
    ("secret", "body", "signature"),
    [
        pytest.param("It's a Secret to Everybody", b"Hello, World!",
                     "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
                     id="github-docs"),
        pytest.param("mysecret", b'{"foo":"bar"}',
                     "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3",
                     id="octokit"),
    ],
)
def test_github_published_vectors(secret: str, body: bytes, signature: str) -> None:
    verifier = build(source("github", secret))
    verifier.verify(InboundRequest({"x-hub-signature-256": signature}, body), time.time())
    with pytest.raises(SignatureError):
        verifier.verify(InboundRequest({"x-hub-signature-256": signature}, body + b" "), 0)


def test_standard_webhooks_published_vector() -> None:
    verifier = build(source("standard", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    verifier.verify(InboundRequest(headers, b'{"test": 2432232314}'), 1614265330)
    with pytest.raises(SignatureError):  # the same request, ten minutes later
        verifier.verify(InboundRequest(headers, b'{"test": 2432232314}'), 1614265330 + 600)


def test_slack_vector_through_the_generic_hmac_model() -> None:
    """Slack's documented request, verified by the configurable scheme (v0:{ts}:{body})."""
    verifier = build(source("hmac", "8f742231b10e8888abcd99yyyzzz85a5", header="X-Slack-Signature",
                            prefix="v0=", signed="v0:{timestamp}:{body}",
                            timestamp_header="X-Slack-Request-Timestamp"))
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id="
            b"G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebho"
            b"ok-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F3"
            b"97700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887"
            b"a14d10d2c447fce8b6703c")
    headers = {"x-slack-request-timestamp": "1531420618",
               "x-slack-signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"}
    verifier.verify(InboundRequest(headers, body), 1531420618)


def test_malformed_standard_header_raises_our_error_not_valueerror() -> None:
    verifier = build(source("standard", STANDARD_SECRET))
    for value in ["v1", "v1,***", "", " "]:
        headers = {"webhook-id": "m", "webhook-timestamp": str(int(time.time())),
                   "webhook-signature": value}
        with pytest.raises((SignatureError, MalformedSignature)):
            verifier.verify(InboundRequest(headers, b"{}"), time.time())


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_keyed_hmac_matches_the_standard_library(algorithm: str) -> None:
    from bridge.signing import sign

    for key, message in [(b"k", b""), (b"secret" * 30, b"x" * 5000), (b"", b"body")]:
        for _ in range(2):  # the second call reuses the cached keyed state
            assert sign(key, message, algorithm) == hmac.digest(key, message, algorithm)


@pytest.mark.parametrize("body, expected", [
    (b'{"action":"opened","number":1}', "pull_request.opened"),
    (b'{"\\u0061ction":"opened"}', "pull_request.opened"),  # a key spelled with escapes
    (b'{"ref":"refs/heads/main"}', "pull_request"),
    (b'{"pull_request":{"action":"nested"}}', "pull_request"),
    (b"not json", "pull_request"),
])
def test_github_event_type_takes_the_top_level_action(body: bytes, expected: str) -> None:
    source = SourceConfig(name="gh", provider="github", secrets=[Secret("s")])
    request = InboundRequest({"x-github-event": "pull_request", "x-github-delivery": "d"}, body,
                             "http://127.0.0.1/hooks/gh", "POST")
    assert build(source).identify(request).event_type == expected
