"""A lean HTTP/1.1 transport for httpx: asyncio protocols and the httptools parser.

Every outbound call of the bridge (trigger calls, execution polls and streams, callbacks) goes
through an `httpx.AsyncClient`. httpx's own transport parses HTTP/1.1 in pure Python (h11) and
checks every idle pooled connection on each request, which makes it the largest cost of a
forwarded event. This transport keeps the httpx API (requests, responses, timeouts, exceptions)
and does the wire work with the same C parser uvicorn uses:

- one pool per transport, keyed by (scheme, host, port), at most `max_connections` at once
  (waiting longer than the pool timeout raises `httpx.PoolTimeout`);
- keep-alive: a connection is reused when the response allowed it and was read to its end; a
  connection the server closed is dropped as soon as the close arrives, with no polling;
- a request sent on a reused connection that the server closed before answering a single byte
  is sent once more on a new connection (the usual keep-alive race). Every request the bridge
  makes is idempotent by design (Idempotency-Key, webhook-id), so that repeat is harmless;
- responses are streamed (`client.stream(...)` reads server-sent events as they come);
- TLS through `ssl`, with httpx's default context; the `sni_hostname` extension sets the TLS
  server name when the URL holds a pinned IP address (see `relay.pin`);
- connect, read and pool timeouts from the request's `timeout` extension, mapped to httpx's
  exception classes; failures to connect or read are `httpx.ConnectError` / `httpx.ReadError`,
  a malformed answer `httpx.RemoteProtocolError`.

Not supported, so `client_transport()` picks httpx's own transport instead: proxies (when a
proxy variable is set in the environment) and HTTP/2.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx

KEEPALIVE_EXPIRY = 4.0  # below the 5 s idle timeout common servers (uvicorn, nginx) apply
HIGH_WATER = 1 << 18  # buffered body bytes before reading from the socket pauses
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                   "all_proxy")

# (scheme, host, port, TLS server name): a connection verified for one name never serves another
PoolKey = tuple[str, str, int, str]


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its response parsed as it arrives."""

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: Exception | None = None
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        """Fresh state for the next response on this connection."""
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.keep_alive = False
        self.head_only = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.received_any = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))

    def eof_received(self) -> bool | None:
        if self.head is not None and self.head.done() and not self.complete:
            if self.keep_alive or self._has_length():
                self._fail(httpx.RemoteProtocolError("the server closed the connection "
                                                     "before the body ended"))
            else:  # a body delimited by the end of the connection
                self.on_message_complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            if self.head is None or not self.head.done():
                self._fail(httpx.RemoteProtocolError(
                    "the server disconnected without sending a response"))
            else:
                self._fail(httpx.ReadError(str(exc) if exc else "connection closed"))

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.headers = []
            self.reason = b""
            return
        if self.head_only:  # the answer to HEAD has no body, whatever its headers say
            self.complete = True
            self.closed = True  # and the parser cannot tell, so the connection is not reused
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.status < 200:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        self.complete = True
        self._wake()

    # helpers

    def _has_length(self) -> bool:
        return any(name.lower() in (b"content-length", b"transfer-encoding")
                   for name, _ in self.headers)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        for future in (self.head, self.waiter):
            if future is not None and not future.done():
                future.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return not self.closed and self.complete and self.error is None and self.keep_alive

    # used by the transport

    async def send(self, head: bytes, body: bytes, timeouts: dict[str, float | None],
                   head_only: bool = False) -> None:
        """Write the request and wait for the response head."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._reset()
        self.head_only = head_only
        self.head = loop.create_future()
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        await _within(self.head, timeouts.get("read"), httpx.ReadTimeout, self)

    async def next_chunk(self, timeout: float | None) -> bytes | None:
        """The next piece of the body, or None at its end."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered < HIGH_WATER // 2 and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self.waiter = asyncio.get_running_loop().create_future()
            await _within(self.waiter, timeout, httpx.ReadTimeout, self)


async def _within(future: asyncio.Future[None], timeout: float | None,
                  error: type[httpx.TimeoutException], connection: _Connection) -> None:
    """Await `future` for at most `timeout` seconds; on timeout or cancellation the connection
    is in an unknown state and is closed."""
    if future.done():
        future.result()
        return
    handle = None
    if timeout is not None:
        handle = asyncio.get_running_loop().call_later(
            timeout, _expire, future, error, f"no answer within {timeout:g} s")
    try:
        await future
    except BaseException:
        connection.close()
        raise
    finally:
        if handle is not None:
            handle.cancel()


def _expire(future: asyncio.Future[None], error: type[Exception], message: str) -> None:
    if not future.done():
        future.set_exception(error(message))


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection; at its end the connection goes back to the
    pool (or is closed when it cannot be reused)."""

    def __init__(self, transport: FastTransport, connection: _Connection,
                 timeout: float | None) -> None:
        self.transport = transport
        self.connection = connection
        self.timeout = timeout
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                chunk = await self.connection.next_chunk(self.timeout)
                if chunk is None:
                    break
                if chunk:
                    yield chunk
        except httpx.TransportError:
            await self.aclose()
            raise
        await self.aclose()

    async def aclose(self) -> None:
        if not self.done:
            self.done = True
            self.transport.release(self.connection)


class FastTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int = 100, *, ssl_context: ssl.SSLContext | None = None,
                 keepalive_expiry: float = KEEPALIVE_EXPIRY) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[PoolKey, list[_Connection]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._active: set[_Connection] = set()
        self._closed = False

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        scheme = request.url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        host = request.url.host
        sni = request.extensions.get("sni_hostname") or host if scheme == "https" else ""
        key = (scheme, host, request.url.port or (443 if scheme == "https" else 80),
               sni.decode("ascii") if isinstance(sni, bytes) else sni)
        head = _head(request)
        body = await request.aread()
        await self._acquire(timeouts.get("pool"))
        try:
            connection = await self._send(key, request, head, body, timeouts)
        except BaseException:
            self._slot_free()
            raise
        return httpx.Response(connection.status, headers=connection.headers,
                              stream=_Body(self, connection, timeouts.get("read")),
                              extensions={"http_version": b"HTTP/1.1",
                                          "reason_phrase": connection.reason})

    async def _send(self, key: PoolKey, request: httpx.Request, head: bytes, body: bytes,
                    timeouts: dict[str, float | None]) -> _Connection:
        connection = self._checkout(key)
        if connection is not None:
            try:
                await connection.send(head, body, timeouts, request.method == "HEAD")
                self._active.add(connection)
                return connection
            except (httpx.RemoteProtocolError, httpx.ReadError):
                if connection.received_any:
                    raise
                # The server closed this kept-alive connection as we reused it: once more,
                # on a fresh one.
        connection = await self._connect(key, timeouts.get("connect"))
        self._active.add(connection)
        try:
            await connection.send(head, body, timeouts, request.method == "HEAD")
        except BaseException:
            self._active.discard(connection)
            raise
        return connection

    def _checkout(self, key: PoolKey) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_expiry:
                return connection
            connection.close()
        return None

    async def _connect(self, key: PoolKey, timeout: float | None) -> _Connection:
        scheme, host, port, server_name = key
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {}
        if scheme == "https":
            options["ssl"] = self._context()
            options["server_hostname"] = server_name
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(lambda: _Connection(key), host, port,
                                                             **options)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} within "
                                       f"{timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"could not connect to {host}:{port}: "
                                     f"{exc.strerror or exc}" if isinstance(exc, OSError)
                                     else str(exc)) from None
        return connection

    def release(self, connection: _Connection) -> None:
        """Called once per response, when its body has been read or abandoned."""
        if connection not in self._active:
            return
        self._active.discard(connection)
        self._slot_free()
        if connection.reusable and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.key, []).append(connection)
        else:
            connection.close()

    async def _acquire(self, timeout: float | None) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no connection became free in time") from None

    def _slot_free(self) -> None:
        if self._slots is not None:
            self._slots.release()

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in list(self._active):
            connection.close()


def _head(request: httpx.Request) -> bytes:
    target = request.url.raw_path or b"/"
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def uses_proxy() -> bool:
    return any(os.environ.get(name) for name in PROXY_VARIABLES)


def client(connections: int, transport: httpx.AsyncBaseTransport | None = None,
           **options: Any) -> httpx.AsyncClient:
    """An httpx client allowing `connections` at once: over `transport` when given, else over
    `FastTransport`, or over httpx's own (which honours proxy variables) when one is set."""
    if transport is None and not uses_proxy():
        transport = FastTransport(connections)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(transport=transport, limits=limits, **options)

