"""The workflow platform, as the bridge sees it: trigger calls, pacing, and `classify()`.

`classify()` is the one place where an upstream answer (or an `http.HttpError`) becomes an
outcome:

    2xx                          Delivered(execution id from execution_id | id | executionId)
    429                          RetryLater(after Retry-After / X-RateLimit-Reset), not a failure
    400, 422, other 4xx          Dead(reason)
    409                          Dead(idempotency conflict)  -- logged as an error
    401, 403, 404                Paused(reason)              -- a configuration fault
    408, 425, 5xx                RetryLater(reason, reached)  -- the platform may have run it
    timeouts, broken connections RetryLater(reason, reached)  -- the request may have arrived
    connection refused, DNS      RetryLater(reason)           -- provably never arrived
    a header we refuse to send   Dead(reason)

`reached` marks an attempt after which the platform may hold the Idempotency-Key; the forwarder
never resends such a delivery once that key may have expired (see `Forwarder`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from urllib.parse import quote

from bridge import __version__
from bridge.config import TRIGGER_NAME, Config
from bridge.core.models import Dead, Delivered, Outcome, Pacing, Paused, RetryLater
from bridge.core.retry import parse_retry_after
from bridge.delivery.results import execution_id_of
from bridge.web.client import BadHeader, Client, HttpError, InvalidTarget, Reply

log = logging.getLogger("bridge.platform")
LOW_WATER = 0.1  # slow down once fewer than 10 % of the window's requests remain


def base_url(config: Config) -> str:
    if config.platform.base_url:
        return config.platform.base_url
    return f"http://{config.emulator.host}:{config.emulator.port}/api/v1"


def resend_deadline(reached_at: float, key_lifetime: float) -> float:
    """The last moment a delivery that may have reached the platform at `reached_at` can be
    sent again safely: the platform still remembers its Idempotency-Key, less a margin for
    clock skew and the attempt's own duration."""
    return reached_at + key_lifetime - min(3600.0, key_lifetime / 10)


def platform_headers(config: Config) -> dict[str, str]:
    """The headers every call to the platform carries: who calls, and for which project."""
    headers = {"User-Agent": f"webhook-bridge/{__version__}"}
    if config.platform.project_slug:
        headers["X-Project-Slug"] = config.platform.project_slug
    if config.platform.project_id:
        headers["X-Project-ID"] = config.platform.project_id
    return headers


def error_reason(response: Reply) -> str:
    """`<status> <code>: <message>` from either error dialect, else a body excerpt."""
    code, message = "", ""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            message = str(error.get("message") or "")
        elif isinstance(data.get("detail"), str):
            message = data["detail"]
    if not (code or message):
        message = response.text(200)
    label = f" {code}" if code else ""
    return f"{response.status}{label}: {message}".strip()


def execution_id(response: Reply) -> str | None:
    try:
        return execution_id_of(response.json())
    except ValueError:
        return None


def classify(result: Reply | HttpError, now: float) -> Outcome:
    if isinstance(result, BadHeader | InvalidTarget):  # refused here: it would never go
        return Dead(str(result))
    if isinstance(result, HttpError):
        where = f" to {result.url}" if result.url else ""
        return RetryLater(f"{result}{where}", reached=result.reached)
    status = result.status
    if 200 <= status < 300:
        return Delivered(execution_id(result), status)
    if status == 429:
        after = parse_retry_after(result.headers.get("retry-after"), now)
        if after is None:
            reset = _number(result.headers.get("x-ratelimit-reset"))
            after = max(0.0, reset - now) if reset is not None else None
        return RetryLater(error_reason(result), status, after, counts_as_failure=False)
    if status in (401, 403, 404):
        return Paused(error_reason(result), status)
    if status == 409:
        return Dead(f"idempotency conflict: {error_reason(result)}", status)
    if status in (408, 425) or status >= 500:
        after = parse_retry_after(result.headers.get("retry-after"), now)
        return RetryLater(error_reason(result), status, after, reached=True)
    return Dead(error_reason(result), status)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def pacing(per_minute: int | None) -> Pacing | None:
    """`[platform] rate_limit` as the store's shared bucket: at most a tenth of a minute's
    worth at once (and at least one)."""
    if not per_minute:
        return None
    return Pacing(per_minute / 60.0, max(1.0, min(float(per_minute), per_minute / 10)))


class Pacer:
    """The holds the platform's answers ask for, kept in this process from the moment they
    arrive: a slowdown as X-RateLimit-Remaining runs low, and a full stop until a 429's
    Retry-After has passed. (The rate limit's bucket is the store's: see `pacing`.)"""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall
        self.not_before = 0.0  # monotonic time before which nothing is sent
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            while (wait := self.not_before - self.clock()) > 0:
                await asyncio.sleep(wait)

    def holding(self) -> float:
        """Seconds until sending may resume (0 when it may now)."""
        return max(0.0, self.not_before - self.clock())

    def observe(self, response: Reply) -> None:
        headers = response.headers
        now_wall = self.wall()
        if response.status == 429:
            after = parse_retry_after(headers.get("retry-after"), now_wall)
            if after is None:
                reset = _number(headers.get("x-ratelimit-reset"))
                after = max(0.0, reset - now_wall) if reset is not None else 1.0
            self.hold(after)
            return
        limit = _number(headers.get("x-ratelimit-limit"))
        remaining = _number(headers.get("x-ratelimit-remaining"))
        reset = _number(headers.get("x-ratelimit-reset"))
        if limit and remaining is not None and reset is not None and remaining < limit * LOW_WATER:
            window = max(0.0, reset - now_wall)
            # Spread what is left of the window over the time until it resets.
            self.hold(window / max(remaining, 1.0) if remaining > 0 else window)

    def hold(self, seconds: float) -> None:
        self.not_before = max(self.not_before, self.clock() + min(seconds, 3600.0))


def trigger_path(trigger: str) -> str:
    """`trigger` as one quoted path segment under `/workflows/triggers/`, never by joining
    strings: no name from any source (a config, an edge's batch) can leave that prefix."""
    if not TRIGGER_NAME.match(trigger):
        raise InvalidTarget(f"refused to send: not a valid trigger name: {trigger[:80]!r}")
    return quote(trigger, safe="")


class PlatformClient:
    """Trigger calls for one forwarder loop."""

    def __init__(self, config: Config) -> None:
        platform = config.platform
        headers = platform_headers(config)
        if platform.trigger_key:
            headers["Authorization"] = f"Bearer {platform.trigger_key.reveal()}"
        self.http = Client(config.forwarder.concurrency, headers=headers,
                           timeout=platform.timeout, max_body=platform.max_response_bytes,
                           base_url=f"{base_url(config)}/workflows/triggers/")
        # The rate limit's bucket is the store's, shared by every process (`Forwarder.pacing`);
        # this pacer keeps the holds the platform's answers ask for, at once, in this process.
        self.pacer = Pacer()

    async def trigger(self, trigger: str, body: bytes, content_type: str, key: str,
                      extra: dict[str, str] | None = None) -> Reply:
        """One trigger call. Raises `http.HttpError` when no answer came."""
        path = trigger_path(trigger)
        await self.pacer.acquire()
        headers = {"Idempotency-Key": key, "Content-Type": content_type, **(extra or {})}
        response = await self.http.request("POST", path, body=body, headers=headers)
        self.pacer.observe(response)
        return response

    async def aclose(self) -> None:
        await self.http.aclose()
