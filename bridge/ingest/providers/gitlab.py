"""GitLab: a secret token sent as-is in `X-Gitlab-Token`, or a signing token (`whsec_...`) that
signs like Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).

List plain tokens and/or signing tokens in `secret`/`secrets`; values starting with `whsec_` are
signing tokens. When any signing token is configured a request must carry a valid
`webhook-signature` (GitLab sends `webhook-*` ids on every delivery, the signature only with a
signing token); otherwise the `X-Gitlab-Token` must equal a plain token (constant time).
Idempotency: `Idempotency-Key` (the same across retries), else `webhook-id`. Event type: the body's
`object_kind`, plus `.{object_attributes.action}` when present (`merge_request.open`).
"""

from __future__ import annotations

import dataclasses

from bridge.config import SourceConfig
from bridge.core.errors import SignatureError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider, body_field
from bridge.ingest.providers.standard import Standard
from bridge.signing import any_match


class GitLab(Provider):
    name = "gitlab"
    unsigned_id = True  # Idempotency-Key, the id GitLab keeps across retries, is unsigned
    default_tolerance = 300.0

    def __init__(self, source: SourceConfig) -> None:
        super().__init__(source)
        signing = tuple(s for s in source.secrets if s.reveal().startswith("whsec_"))
        self.tokens = [s.reveal().encode() for s in source.secrets if s not in signing]
        self.signed = Standard(dataclasses.replace(source, secrets=signing, options={})) \
            if signing else None

    def verify(self, request: InboundRequest, now: float) -> None:
        if self.signed is not None:
            self.signed.verify(request, now)
            return
        token = self.require(request, "x-gitlab-token")
        if not any_match(self.tokens, [token.encode("utf-8", "surrogateescape")]):
            raise SignatureError("token does not match")

    def identify(self, request: InboundRequest) -> Identity:
        kind = body_field(request, "object_kind") or \
            (request.header("x-gitlab-event") or "unknown").lower().replace(" hook", "")
        action = body_field(request, "object_attributes", "action")
        key = request.header("idempotency-key") or request.header("webhook-id")
        return Identity(key, f"{kind}.{action}" if action else kind)
