"""Outbound HTTP: a thin layer over aiohttp's client, for every call the loops make.

Trigger calls, execution polls and streams, and callbacks all go through `Client`. aiohttp does
the wire work (HTTP/1.1 with a C parser, keep-alive pooling, TLS, proxies from the environment);
this module adds what the bridge owes to hostile or broken peers, in one place:

- every attempt has an overall deadline (`timeout`), so a peer that drips a byte at a time still
  ends; a stream sets a per-read deadline instead;
- answers are read up to `max_body` bytes and no further; what was cut is reported
  (`Reply.truncated`) and the connection is dropped rather than drained;
- answers are asked for and taken as `identity`: nothing is inflated, so a small gzip bomb stays
  small;
- a header value with a control character is refused before anything is sent (`BadHeader`), so
  an id taken from a body can never add a header or smuggle a request;
- a POST whose connection the server closed before answering a byte (the keep-alive race) is
  sent once more on a new connection: every request the bridge makes is idempotent by design
  (Idempotency-Key, webhook-id), so the repeat is harmless.

Failures are this module's `HttpError` tree, translated from aiohttp here and nowhere else:

    HttpError           no usable answer; `reached` says whether the peer may have received it
    ├── ConnectFailed   reached = False: refused, unresolvable, TLS failed, pool wait expired,
    │   └── Blocked     or refused by the SSRF guard (guard.Blocked)
    ├── BadHeader       reached = False: a header value we refuse to send
    ├── InvalidTarget   reached = False: a URL that cannot be requested (bad port, scheme)
    ├── Timeout         the deadline passed after the request may have been sent
    └── Broken          the connection broke or the answer was malformed

httpx stays where its API serves people (the CLI, tests); the loops do not pay for its
request/response object layer, cookie jar or URL re-parsing.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.helpers import get_env_proxy_for_url, proxies_from_env
from multidict import CIMultiDictProxy
from yarl import URL

from bridge.core import codec
from bridge.web.guard import Blocked as GuardBlocked

DEFAULT_MAX_BODY = 1 << 20
CALLBACK_MAX_BODY = 64 * 1024
KEEPALIVE_EXPIRY = 4.0  # below the 5 s idle timeout common servers (uvicorn, nginx) apply
MAX_LINE = 1 << 20  # one server-sent-events line
EXCERPT = 512  # bytes of an answer kept with an attempt (for operators, never parsed)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class HttpError(Exception):
    reached = True

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class ConnectFailed(HttpError):
    reached = False


class Blocked(ConnectFailed):
    pass


class BadHeader(HttpError):
    reached = False


class InvalidTarget(HttpError):
    reached = False


class Timeout(HttpError):
    pass


class Broken(HttpError):
    pass


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    truncated: bool = False

    def text(self, limit: int) -> str:
        return self.body[:limit].decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not (or was cut)."""
        if self.truncated:
            raise ValueError("the answer was cut at its size limit")
        return codec.loads(self.body)


def check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if _CONTROL.search(value) or _CONTROL.search(name):
            raise BadHeader(f"refused to send header {name[:40]!r}: it contains a control "
                            "character")


def translate(exc: BaseException, url: str) -> HttpError:
    """The one place where an aiohttp failure becomes an `HttpError`."""
    name = exc.__class__.__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = getattr(exc, "os_error", None) or exc.__cause__
        if isinstance(cause, GuardBlocked):
            return Blocked(str(cause), url)
        return ConnectFailed(f"connection failed ({name})", url)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectFailed("connection failed (connect timeout)", url)
    if isinstance(exc, GuardBlocked):
        return Blocked(str(exc), url)
    if isinstance(exc, asyncio.TimeoutError):
        return Timeout(f"timeout ({name})", url)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError | ValueError):
        return InvalidTarget(f"invalid URL ({name})", url)
    return Broken(f"connection error ({name})", url)


class Client:
    """A pool of at most `limit` connections with the bridge's bounds; one per loop."""

    def __init__(self, limit: int, *, timeout: float, max_body: int = DEFAULT_MAX_BODY,
                 headers: Mapping[str, str] | None = None, base_url: str = "",
                 resolver: AbstractResolver | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self.timeout = timeout
        self.max_body = max_body
        self.headers = {"Accept-Encoding": "identity", **(headers or {})}
        check_headers(self.headers)
        self.base_url = base_url
        self.resolver = resolver
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        # Proxies from the environment, looked up once per (scheme, host): aiohttp's own
        # `trust_env` reads the whole environment on every request.
        self._proxies: dict[tuple[str, str], URL | None] = {}
        self._env_proxies = bool(proxies_from_env())

    def proxy_for(self, url: str) -> URL | None:
        if not self._env_proxies:
            return None
        target = URL(url)
        key = (target.scheme, target.host or "")
        if key not in self._proxies:
            if len(self._proxies) >= 1024:  # hosts come from senders too: keep it bounded
                self._proxies.clear()
            try:
                self._proxies[key] = get_env_proxy_for_url(target)[0]
            except LookupError:
                self._proxies[key] = None
        return self._proxies[key]

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.limit, limit_per_host=0, keepalive_timeout=KEEPALIVE_EXPIRY,
                resolver=self.resolver, ssl=self.ssl_context if self.ssl_context else True)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self.headers, trust_env=False,
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",), read_bufsize=1 << 16, max_line_size=MAX_LINE,
                max_field_size=16384, raise_for_status=False)
        return self._session

    def _timeout(self, seconds: float | None, connect: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=seconds if seconds is not None else self.timeout,
                                     connect=connect)

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None,
                      timeout: float | None = None, connect_timeout: float | None = None,
                      max_body: int | None = None) -> Reply:
        """Send one request and read its answer within the bounds. Raises `HttpError`."""
        if headers:
            check_headers(headers)
        target = self.base_url + url
        deadline = self._timeout(timeout, connect_timeout)
        cap = self.max_body if max_body is None else max_body
        for attempt in (1, 2):
            try:
                async with self.session.request(method, target, data=body, headers=headers,
                                                timeout=deadline, allow_redirects=False,
                                                proxy=self.proxy_for(target)) as resp:
                    data, cut = await _read(resp, cap)
                    return Reply(resp.status, resp.headers, data, cut)
            except aiohttp.ServerDisconnectedError as exc:
                if attempt == 2:  # the server closed the connection before answering
                    raise translate(exc, target) from None
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                raise translate(exc, target) from None
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def stream(self, method: str, url: str, *,
                     read_timeout: float) -> AsyncIterator[aiohttp.ClientResponse]:
        """An open response whose lines are read as they come (`lines()`); each read must
        arrive within `read_timeout`. Raises `HttpError`."""
        target = self.base_url + url
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout,
                                        sock_read=read_timeout)
        try:
            async with self.session.request(method, target, timeout=timeout,
                                            allow_redirects=False,
                                            proxy=self.proxy_for(target)) as resp:
                yield resp
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, target) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The response body as text lines, without their line endings."""
    while True:
        line = await response.content.readline()
        if not line:
            return
        yield line.decode("utf-8", "replace").rstrip("\r\n")


async def _read(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    length = resp.content_length
    if length is not None and length <= cap:
        return await resp.read(), False
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await resp.content.read(min(1 << 16, cap + 1 - size))
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    resp.close()  # the rest is never read: drop the connection rather than drain it
    return b"".join(chunks)[:cap], True
