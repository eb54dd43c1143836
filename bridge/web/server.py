"""The HTTP server's own bounds on what a client may send before any authentication.

uvicorn's httptools protocol buffers a request's head for as long as the client keeps sending
it: one connection that sent 400 MiB of headers held 400 MiB of memory and never got an answer.
`BoundedHttpTools` is that protocol with two limits on the head (request line and headers):

- `max_header_bytes` (64 KiB by default): past it, the request is answered
  `431 Request Header Fields Too Large` and the connection closed;
- `max_headers` (100 by default): more header fields than that, the same.

The number of open connections is bounded by uvicorn's `limit_concurrency`
(`[server] max_connections`): past it, new requests get 503.

The limits are class attributes: `bounded()` gives one server a subclass with its own, and
`configure()` sets the defaults that worker processes started by uvicorn read from the
environment, where the parent put them.
"""

from __future__ import annotations

import os

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 100

_ENV_BYTES = "BRIDGE_MAX_HEADER_BYTES"
_ENV_COUNT = "BRIDGE_MAX_HEADERS"
_ANSWER = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
           b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_BODY = (b'{"error":{"code":"headers_too_large","message":"the request line and headers exceed '
         b'this server\'s limits"}}')


class _HeadTooLarge(Exception):
    pass


class BoundedHttpTools(HttpToolsProtocol):
    max_header_bytes = int(os.environ.get(_ENV_BYTES, DEFAULT_MAX_HEADER_BYTES))
    max_headers = int(os.environ.get(_ENV_COUNT, DEFAULT_MAX_HEADERS))

    _in_head = True
    _head_bytes = 0
    _header_count = 0

    @classmethod
    def configure(cls, max_header_bytes: int, max_headers: int) -> None:
        """`[server] max_header_bytes` and `max_headers`, for this process and its workers."""
        cls.max_header_bytes = max_header_bytes
        cls.max_headers = max_headers
        os.environ[_ENV_BYTES] = str(max_header_bytes)  # for worker processes
        os.environ[_ENV_COUNT] = str(max_headers)

    @classmethod
    def bounded(cls, max_header_bytes: int, max_headers: int) -> type[BoundedHttpTools]:
        """This protocol with limits of its own, for one server: several servers in one
        process (the test suite's) each keep the bounds their config gave."""
        return type(cls.__name__, (cls,), {"max_header_bytes": max_header_bytes,
                                           "max_headers": max_headers})

    def data_received(self, data: bytes) -> None:
        """uvicorn's own, with the head's size checked after each read and a refusal from
        `on_header` answered 431 rather than 400."""
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        # Still in the head after this many bytes: it will not fit. (One read is at most
        # 256 KiB, so the parser never holds more than the limit and one read.)
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse()

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def _refuse(self) -> None:
        if self.transport.is_closing():
            return
        self._in_head = False
        self.transport.write(_ANSWER % (len(_BODY), _BODY))
        self.transport.close()
