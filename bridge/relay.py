"""The relay: send each callback, signed with Standard Webhooks, until it is delivered or dead.

Every attempt carries `webhook-id` (the callback's id: the same on every retry, so a receiver can
dedupe), a fresh `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">` keyed with `[callbacks] signing_secret`). Any 2xx is delivered; every
other answer, a timeout or a connection error is retried by `[callbacks.retry]` (Retry-After is a
floor) until `max_age`, then the callback is dead. Callback failures never change the event.

Sender-supplied URLs (`?callback_url=`) pass the SSRF guard at send time: the host is resolved,
every address must be public (not loopback, private, link-local, CGNAT, multicast, reserved or
unspecified), and the request goes to the address that was checked, so a DNS answer that changes
between the check and the connection (rebinding) cannot redirect it. `[callbacks] allow_private`
turns the guard off. Operator-configured URLs are trusted as written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bridge import __version__
from bridge.config import Config
from bridge.errors import CallbackNotAllowed
from bridge.loop import ClaimLoop, owner_id
from bridge.metrics import Metrics
from bridge.models import Attempt, ClaimedCallback
from bridge.platform import EXCERPT
from bridge.providers.standard import decode_secret
from bridge.retry import next_delay, parse_retry_after
from bridge.store import Store
from bridge.transport import client

log = logging.getLogger("bridge.relay")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class Blocked(Exception):
    """A sender-supplied callback URL that resolves to a non-public address."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


def check_literal(url: str, allow_private: bool) -> None:
    """At ingest: refuse a sender-supplied URL whose host is a non-public IP literal."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked after resolution, at send time
    if not allow_private and not is_public(host):
        raise CallbackNotAllowed("callback_url points at a non-public address")


async def pin(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Resolve `url`'s host, require every address to be public, and return the URL rewritten
    to the first address, with the Host header and TLS server name of the original."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Blocked(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    bad = [a for a in addresses if not is_public(a)]
    if not addresses or bad:
        raise Blocked(f"{host} resolves to a non-public address ({', '.join(bad) or 'none'})")
    address = addresses[0]
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, {"Host": host_header}, extensions


def signature_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}


class Relay(ClaimLoop[ClaimedCallback]):
    name = "relay"

    def __init__(self, config: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 metrics: Metrics | None = None) -> None:
        settings = config.callbacks
        self.metrics = metrics or Metrics()
        super().__init__(concurrency=settings.concurrency, batch_size=settings.batch_size,
                         poll_interval=settings.poll_interval, shutdown_grace=2.0, clock=clock)
        self.settings = settings
        self.store = store
        self.rng = rng or random.Random()
        self.transport = transport
        secret = settings.signing_secret
        self.key = decode_secret(secret.reveal()) if secret else None
        self.owner = owner_id("relay")
        self.http: httpx.AsyncClient | None = None
        store.watch(self.wake.set)

    def client(self) -> httpx.AsyncClient:
        if self.http is None:
            self.http = client(
                self.settings.concurrency, self.transport, timeout=self.settings.timeout,
                follow_redirects=False,
                headers={"User-Agent": f"webhook-bridge/{__version__}",
                         "Content-Type": "application/json"})
        return self.http

    async def claim(self, limit: int, now: float) -> list[ClaimedCallback]:
        return await self.store.claim_callbacks(self.owner, now, self.settings.lease, limit)

    async def next_due(self) -> float | None:
        return await self.store.next_callback_due()

    async def release(self) -> None:
        await self.store.release_leases(self.owner)
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    async def handle(self, item: ClaimedCallback) -> None:
        started = self.clock()
        t0 = time.perf_counter()
        status: int | None = None
        excerpt: str | None = None
        retry_after: float | None = None
        try:
            url, headers, extensions = item.url, {}, {}
            if item.sender_supplied and not self.settings.allow_private:
                url, headers, extensions = await pin(item.url)
            if self.key is not None:
                headers.update(signature_headers(self.key, item.id, int(time.time()), item.body))
            response = await self.client().post(url, content=item.body, headers=headers,
                                                extensions=extensions)
            status, excerpt = response.status_code, response.text[:EXCERPT]
            retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
            delivered = 200 <= status < 300
            reason = None if delivered else f"receiver answered {status}"
        except Blocked as exc:
            await self._record(item, started, t0, status, "dead", str(exc), None, excerpt)
            log.warning("callback refused by the SSRF guard",
                        extra={"callback_id": item.id, "reason": str(exc)})
            return
        except httpx.HTTPError as exc:
            delivered, reason = False, f"connection error ({exc.__class__.__name__})"
        now = self.clock()
        if delivered:
            await self._record(item, started, t0, status, "delivered", None, None, excerpt)
            log.info("callback delivered", extra={"callback_id": item.id, "status_code": status,
                                                  "execution_id": item.execution_id})
            return
        delay = next_delay(item.failures + 1, self.settings.retry, self.rng, retry_after,
                           now - item.created_at)
        next_at = None if delay is None else now + delay
        outcome = "retrylater" if next_at is not None else "dead"
        await self._record(item, started, t0, status, outcome, reason, next_at, excerpt)
        log.info("callback failed", extra={"callback_id": item.id, "reason": reason,
                                           "outcome": outcome})

    async def _record(self, item: ClaimedCallback, started: float, t0: float,
                      status: int | None, outcome: str, reason: str | None,
                      next_at: float | None, excerpt: str | None) -> None:
        attempt = Attempt(item.id, started, (time.perf_counter() - t0) * 1000, outcome, status,
                          reason, excerpt)
        self.metrics.callbacks.labels(outcome).inc()
        await self.store.record_callback(item, self.owner, attempt, outcome == "delivered",
                                         next_at, reason, self.clock())
