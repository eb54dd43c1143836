"""Failed authentication costs the client that failed: a limit per address, and a log line.

The admin API, the console's sign-in and the agents' channel endpoints share one `Throttle`.
A client (its address, as the server sees it: behind a trusted proxy, the forwarded one) that
failed `limit` times within `window` seconds is answered 429 with `Retry-After` until its
oldest failure leaves the window, before its credentials are even looked at, so guessing a
token runs at `limit` tries per `window`. A success clears the client's failures. Each failure
is logged as a warning with the kind and the address, never what was tried.

It lives in memory, per process: with several workers each keeps its own count, so the limit is
per worker. Only `MAX_CLIENTS` addresses are remembered (the oldest are forgotten first), so a
flood of addresses cannot grow it without bound.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable

from starlette.requests import Request

from bridge.core.errors import TooManyAttempts

log = logging.getLogger("bridge.auth")
LIMIT = 10  # failures per client within WINDOW
WINDOW = 60.0
MAX_CLIENTS = 10_000


class Throttle:
    def __init__(self, limit: int = LIMIT, window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict())

    def check(self, request: Request) -> None:
        """Raises `TooManyAttempts` while the request's client is over the limit."""
        failures = self._recent(client_of(request))
        if failures is not None and len(failures) >= self.limit:
            wait = max(1, math.ceil(failures[0] + self.window - self.clock()))
            raise TooManyAttempts("too many failed attempts from this address: wait and try "
                                  "again", wait)

    def failed(self, request: Request, kind: str) -> None:
        address = client_of(request)
        failures = self._recent(address)
        if failures is None:
            failures = self.failures[address] = collections.deque(maxlen=self.limit)
            while len(self.failures) > MAX_CLIENTS:
                self.failures.popitem(last=False)
        failures.append(self.clock())
        self.failures.move_to_end(address)
        log.warning("authentication failed", extra={"kind": kind, "client": address,
                                                    "failures": len(failures)})

    def succeeded(self, request: Request) -> None:
        self.failures.pop(client_of(request), None)

    def _recent(self, client: str) -> collections.deque[float] | None:
        failures = self.failures.get(client)
        if failures is None:
            return None
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self.failures[client]
            return None
        return failures


def client_of(request: Request) -> str:
    """The client's address as the server sees it (behind a trusted proxy, the forwarded one)."""
    return request.client.host if request.client else "unknown"
