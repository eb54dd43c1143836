"""ASGI helpers every surface uses: the request's headers, its body read within a limit, and
answers prebuilt as bytes (`Answer`) for the handlers that bypass Starlette's router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bridge.core import codec
from bridge.core.errors import BridgeError, PayloadTooLarge, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# (status, body, headers): an answer ready to send.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
_JSON = (b"content-type", b"application/json")


class Disconnected(Exception):
    """The sender went away before its body arrived; there is nobody to answer."""


def request_headers(scope: Scope) -> dict[str, str]:
    """Lower-cased headers; a repeated header's values are joined with ', ' (RFC 9110)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The raw body; past `limit` bytes stop reading and answer 413."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if not chunks and not more:  # the usual case: the whole body in one message
            if len(chunk) > limit:
                raise PayloadTooLarge(f"body exceeds {limit} bytes")
            return chunk
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
        if not more:
            return b"".join(chunks)


def raw_answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    out = [(b"content-length", str(len(body)).encode())]
    if headers:
        out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return status, body, out


def json_answer(payload: Any, status: int, headers: dict[str, str] | None = None) -> Answer:
    status, body, out = raw_answer(status, codec.dumps(payload), headers)
    out.insert(0, _JSON)
    return status, body, out


def error_answer(exc: BridgeError) -> Answer:
    return json_answer(error_body(exc.code, exc.message), exc.status_code, exc.headers())


def unstorable(scope: Scope) -> bool:
    """A NUL in the path or the query: PostgreSQL cannot store or even compare text holding
    one, so every endpoint refuses it here, in one place, before any id or key is looked up."""
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope["path"] or b"\x00" in query or (
        b"%" in query and b"%00" in query.lower())


async def send_answer(send: Send, answer: Answer) -> None:
    status, body, headers = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
