"""What a provider would send: headers that sign a body, for `bridge sign`, `bridge send` and the
demo. The tests never rely on these alone; they sign with the providers' own SDKs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable

from bridge import signing


def _hex(secret: str, message: bytes, algo: str = "sha256") -> str:
    return hmac.new(secret.encode(), message, getattr(hashlib, algo)).hexdigest()


def _b64(key: bytes, message: bytes, algo: str = "sha256") -> str:
    return base64.b64encode(hmac.new(key, message, getattr(hashlib, algo)).digest()).decode()


def github(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
    return {"X-Hub-Signature-256": "sha256=" + _hex(secret, body),
            "X-GitHub-Event": _event(body, "push"), "X-GitHub-Delivery": _uid()}


def stripe(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
    return {"Stripe-Signature": f"t={now},v1={_hex(secret, f'{now}.'.encode() + body)}"}


def standard(body: bytes, secret: str, now: int, url: str,
             msg_id: str | None = None) -> dict[str, str]:
    msg_id = msg_id or f"msg_{secrets.token_hex(8)}"
    return signing.headers(signing.decode_secret(secret), msg_id, now, body)


def slack(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
    return {"X-Slack-Signature": "v0=" + _hex(secret, f"v0:{now}:".encode() + body),
            "X-Slack-Request-Timestamp": str(now)}


def shopify(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
    return {"X-Shopify-Hmac-Sha256": _b64(secret.encode(), body),
            "X-Shopify-Webhook-Id": _uid(), "X-Shopify-Topic": "orders/create"}


def token(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
    return {"X-Webhook-Token": secret}


def _prefixed(header: str, prefix: str, algo: str = "sha256", b64: bool = False
              ) -> Callable[[bytes, str, int, str], dict[str, str]]:
    def sign(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
        mac = _b64(secret.encode(), body, algo) if b64 else _hex(secret, body, algo)
        return {header: prefix + mac}

    return sign


SIGNERS: dict[str, Callable[[bytes, str, int, str], dict[str, str]]] = {
    "github": github, "stripe": stripe, "standard": standard, "slack": slack,
    "shopify": shopify, "token": token,
    "bitbucket": _prefixed("X-Hub-Signature", "sha256="),
    "jira": _prefixed("X-Hub-Signature", "sha256="),
    "intercom": _prefixed("X-Hub-Signature", "sha1=", "sha1"),
    "typeform": _prefixed("Typeform-Signature", "sha256=", b64=True),
    "pagerduty": _prefixed("X-PagerDuty-Signature", "v1="),
    "meta": _prefixed("X-Hub-Signature-256", "sha256="),
    "dropbox": _prefixed("X-Dropbox-Signature", ""),
    "okta": lambda body, secret, now, url: {"Authorization": secret},
    "clerk": standard, "resend": standard,
    "razorpay": _prefixed("X-Razorpay-Signature", ""),
    "coinbase-commerce": _prefixed("X-CC-Webhook-Signature", ""),
    "workos": lambda body, secret, now, url: {"WorkOS-Signature": f"t={now * 1000}, v1="
                                              + _hex(secret, f"{now * 1000}.".encode() + body)},
}


def box(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
    import datetime

    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()
    return {"box-delivery-id": _uid(), "box-delivery-timestamp": stamp,
            "box-signature-version": "1", "box-signature-algorithm": "HmacSHA256",
            "box-signature-primary": _b64(secret.encode(), body + stamp.encode())}


SIGNERS["box"] = box


def _t_v1(header: str) -> Callable[[bytes, str, int, str], dict[str, str]]:
    def sign(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
        return {header: f"t={now},v1=" + _hex(secret, f"{now}.".encode() + body)}

    return sign


def zendesk(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
    import datetime

    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"X-Zendesk-Webhook-Signature": _b64(secret.encode(), stamp.encode() + body),
            "X-Zendesk-Webhook-Signature-Timestamp": stamp}


def webflow(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
    millis = str(now * 1000)
    return {"x-webflow-timestamp": millis,
            "x-webflow-signature": _hex(secret, millis.encode() + b":" + body)}


def trello(body: bytes, secret: str, now: int, url: str) -> dict[str, str]:
    return {"X-Trello-Webhook": _b64(secret.encode(), body + url.split("?", 1)[0].encode(),
                                     "sha1")}


SIGNERS.update({
    "vercel": _prefixed("x-vercel-signature", "", "sha1"),
    "sentry": _prefixed("Sentry-Hook-Signature", ""),
    "lemonsqueezy": _prefixed("X-Signature", ""),
    "calendly": _t_v1("Calendly-Webhook-Signature"),
    "mux": _t_v1("Mux-Signature"),
    "zendesk": zendesk, "webflow": webflow, "trello": trello,
    "docusign": lambda body, secret, now, url: {
        "X-DocuSign-Signature-1": _b64(secret.encode(), body)},
    "telegram": lambda body, secret, now, url: {"X-Telegram-Bot-Api-Secret-Token": secret},
})


def _event(body: bytes, default: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return default
    return "pull_request" if isinstance(data, dict) and "pull_request" in data else default


def _uid() -> str:
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
