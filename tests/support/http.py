"""Plain requests from tests, through one shared client.

`httpx.get(...)` builds a client for every call, and building one costs about 30 ms of CPU
(its TLS context): more than the request, and paid again on every poll of a `wait_for`. These
take the same arguments and go through one client instead. It keeps no connection open between
requests, so a bridge stopped and started again between two of them leaves nothing stale,
and keeps no cookie: a request sends only the cookies it is given, as `httpx.get` does.
"""

from __future__ import annotations

import threading
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

_CLIENT: httpx.Client | None = None
_LOCK = threading.Lock()


def client() -> httpx.Client:
    global _CLIENT
    with _LOCK:
        if _CLIENT is None:
            _CLIENT = httpx.Client(
                timeout=30, limits=httpx.Limits(max_keepalive_connections=0),
                cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])))
        return _CLIENT


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    cookies = kwargs.pop("cookies", None)
    if cookies is not None:  # a client of its own: httpx takes cookies per client only
        with httpx.Client(cookies=cookies, timeout=kwargs.pop("timeout", 30)) as own:
            return own.request(method, url, **kwargs)
    return client().request(method, url, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return request("POST", url, **kwargs)


def put(url: str, **kwargs: Any) -> httpx.Response:
    return request("PUT", url, **kwargs)


def delete(url: str, **kwargs: Any) -> httpx.Response:
    return request("DELETE", url, **kwargs)
