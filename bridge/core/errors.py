"""The one error hierarchy of webhook-bridge.

    BridgeError                    base; carries status_code and a stable code
    ├── ConfigError                invalid configuration (exit code 2, never an HTTP answer)
    ├── BadRequest                 400 bad_request
    │   ├── MalformedSignature     400 malformed_signature: the signature header cannot be parsed
    │   └── CallbackNotAllowed     400 callback_not_allowed
    ├── SignatureError             401 invalid_signature: missing, wrong, or outside the time window
    │   └── ReplayedToken          401 replayed_token: a single-use token (Mailgun) seen before
    ├── NotFound                   404 not_found
    │   └── UnknownSource          404 unknown_source
    ├── MethodNotAllowed           405 method_not_allowed
    ├── PayloadTooLarge            413 payload_too_large
    ├── UnsupportedMediaType       415 unsupported_media_type
    ├── TooManyAttempts            429 too_many_attempts: failed sign-ins from one client (Retry-After)
    ├── InternalError              500 internal: a bug, logged once with its traceback where found
    └── StoreUnavailable           503 store_unavailable (answered with Retry-After)

Every HTTP-facing error is rendered as `error_body()`, `{"error": {"code": ..., "message": ...}}`:
by the handler registered in `app.py`, and by the webhook path in `inbound.py`, which answers
without the router. Messages never contain secrets.
"""

from __future__ import annotations

from typing import Any


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one shape of every error answer."""
    return {"error": {"code": code, "message": message}}


class BridgeError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code.replace("_", " "))

    @property
    def message(self) -> str:
        return str(self.args[0])

    def headers(self) -> dict[str, str]:
        return {}


class ConfigError(BridgeError):
    """One or more configuration problems; each line names its key path."""

    code = "config_error"

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class BadRequest(BridgeError):
    status_code = 400
    code = "bad_request"


class MalformedSignature(BadRequest):
    code = "malformed_signature"


class CallbackNotAllowed(BadRequest):
    code = "callback_not_allowed"


class SignatureError(BridgeError):
    status_code = 401
    code = "invalid_signature"


class ReplayedToken(SignatureError):
    code = "replayed_token"


class NotFound(BridgeError):
    status_code = 404
    code = "not_found"


class UnknownSource(NotFound):
    code = "unknown_source"


class MethodNotAllowed(BridgeError):
    status_code = 405
    code = "method_not_allowed"


class PayloadTooLarge(BridgeError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(BridgeError):
    status_code = 415
    code = "unsupported_media_type"


class TooManyAttempts(BridgeError):
    """Too many failed authentications from one client: it waits before trying again."""

    status_code = 429
    code = "too_many_attempts"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class InternalError(BridgeError):
    """A bug (not an outage): the traceback was logged where it happened."""

    status_code = 500
    code = "internal"


class StoreUnavailable(BridgeError):
    """The store could not durably commit; the sender must retry later."""

    status_code = 503
    code = "store_unavailable"
    retry_after = 5

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
