"""Coverage-guided fuzzing of every verifier and the envelope builder with atheris.

    python fuzz/verifiers.py -atheris_runs=200000        # or any libFuzzer flags

Each input is split into headers and a body; every verifier must either refuse it with its own
error (SignatureError / MalformedSignature) or (for `none`) accept it, and the envelope must
always be valid JSON. Anything else is a crash that libFuzzer reports with the input.
"""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports():
    from bridge.config import Secret, SourceConfig
    from bridge.core.errors import MalformedSignature, SignatureError
    from bridge.core.models import VerifiedEvent
    from bridge.ingest.providers import SCHEMES, InboundRequest, build
    from bridge.ingest.routing import envelope

SECRETS = {"standard": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
           "clerk": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
           "resend": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
           "airtable": "ZnV6ei1tYWMtc2VjcmV0LWJ5dGVz",
           "discord": "d" * 64, "sendgrid": None}
OPTIONS = {"hmac": {"header": "x-sig", "signed": "{timestamp}.{body}",
                    "timestamp_header": "x-ts"},
           "meta": {"verify_token": "fuzz-verify-token"}}
HEADERS = ["x-hub-signature-256", "stripe-signature", "webhook-id", "webhook-timestamp",
           "webhook-signature", "x-slack-signature", "x-slack-request-timestamp",
           "paddle-signature", "x-twilio-signature", "x-zm-signature", "x-zm-request-timestamp",
           "twitch-eventsub-message-signature", "twitch-eventsub-message-id",
           "twitch-eventsub-message-timestamp", "x-signature-ed25519", "x-signature-timestamp",
           "x-hubspot-signature-v3", "x-hubspot-request-timestamp", "x-gitlab-token",
           "x-pagerduty-signature", "typeform-signature", "x-hub-signature", "x-sig", "x-ts",
           "linear-signature", "x-shopify-hmac-sha256", "x-square-hmacsha256-signature",
           "x-twilio-email-event-webhook-signature", "x-twilio-email-event-webhook-timestamp",
           "x-dropbox-signature", "authorization", "x-razorpay-signature", "workos-signature",
           "x-cc-webhook-signature", "box-signature-primary", "box-delivery-timestamp",
           "x-vercel-signature", "sentry-hook-signature", "x-signature",
           "calendly-webhook-signature", "mux-signature", "x-zendesk-webhook-signature",
           "x-zendesk-webhook-signature-timestamp", "x-webflow-signature",
           "x-webflow-timestamp", "x-docusign-signature-1", "x-airtable-content-mac",
           "x-trello-webhook", "x-telegram-bot-api-secret-token", "x-hook-signature"]


def verifiers() -> list[object]:
    built = []
    for name in sorted(SCHEMES):
        if name == "sendgrid":
            continue  # needs a real public key; covered by the hypothesis suite
        secret = SECRETS.get(name) or "fuzz-secret"
        if name == "discord":
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

            secret = Ed25519PrivateKey.generate().public_key().public_bytes(
                Encoding.Raw, PublicFormat.Raw).hex()
        built.append(build(SourceConfig("f", name, (Secret(secret),),
                                        options=OPTIONS.get(name, {}), insecure=True)))
    return built


VERIFIERS = verifiers()


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    headers = {fdp.PickValueInList(HEADERS): fdp.ConsumeUnicodeNoSurrogates(80)
               for _ in range(fdp.ConsumeIntInRange(0, 6))}
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    request = InboundRequest(headers, body, "http://127.0.0.1/hooks/f")
    for verifier in VERIFIERS:
        try:
            verifier.verify(request, 1_700_000_000)  # type: ignore[attr-defined]
        except (SignatureError, MalformedSignature):
            pass
        else:
            if verifier.name != "none":  # type: ignore[attr-defined]
                raise AssertionError(f"{verifier.name} accepted an unsigned input")  # type: ignore[attr-defined]
        verifier.identify(request)  # type: ignore[attr-defined]
    json.loads(envelope(VerifiedEvent("i", "s", "p", "t", "k", 0.0, headers, body)))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
