"""Retry policy as data plus pure functions; callers inject the random generator.

`backoff` is the one formula every loop waits by (forwarder and relay through `next_delay`, the
tracker's polls, the agent's reconnects); each passes its own base, factor, cap and jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from bridge.core.models import Dead, Outcome, RetryLater

DAY = 86400.0


@dataclass(frozen=True)
class RetryPolicy:
    """A retry schedule, as `[forwarder.retry]` and `[callbacks.retry]` configure it."""

    base: float = 5.0  # seconds before the first retry (the ceiling's start)
    factor: float = 2.0  # the ceiling's growth per failure
    cap: float = 3600.0  # the ceiling's limit
    max_age: float = 3 * DAY  # past this age there is no next attempt: the delivery is dead
    jitter: str = "full"  # full | none


def backoff(failures: int, base: float, factor: float, cap: float, jitter: str = "none",
            rng: random.Random | None = None) -> float:
    """The wait after `failures` (>= 1) failures in a row: a ceiling of base * factor**(n-1),
    capped at `cap`. Jitter: "none" waits the ceiling; "full" is uniform in [0, ceiling] but
    never below base/2 (a burst of failures never retries at once); "equal" is uniform in
    [ceiling/2, ceiling]. Pure but for `rng`, which tests seed."""
    ceiling = min(cap, base * factor ** max(0, failures - 1))
    if jitter == "none":
        return ceiling
    uniform = rng.uniform if rng is not None else random.uniform
    if jitter == "full":
        return max(min(base / 2, ceiling), uniform(0, ceiling))
    return ceiling * uniform(0.5, 1)


def next_delay(failures: int, policy: RetryPolicy, rng: random.Random,
               retry_after: float | None = None, age: float = 0.0) -> float | None:
    """Seconds to wait before the next attempt, or None when the policy is exhausted.

    `failures` counts failed attempts so far (>= 1). The ceiling grows as
    base * factor**(failures-1), capped at `cap`; with full jitter the delay is uniform in
    [0, ceiling] but never below base/2, so a burst of failures does not retry instantly.
    A server's Retry-After is honoured as a lower bound. Past `max_age` there is no next time.
    """
    delay = backoff(failures, policy.base, policy.factor, policy.cap, policy.jitter, rng)
    if retry_after is not None:
        delay = max(delay, retry_after)
    if age + delay > policy.max_age:
        return None
    return delay


def schedule(outcome: Outcome, failures: int, age: float, policy: RetryPolicy,
             rng: random.Random, now: float) -> tuple[Outcome, float | None]:
    """Backoff or dead: a `RetryLater` gets its next attempt's time, or becomes `Dead` once the
    policy is exhausted; any other outcome passes through with no next time. A retry that is
    pacing (a 429) waits what it was asked to without counting as a failure."""
    if not isinstance(outcome, RetryLater):
        return outcome, None
    if not outcome.counts_as_failure:
        wait = outcome.after if outcome.after is not None else policy.base
        if age + wait > policy.max_age:
            return Dead(f"retries exhausted: {outcome.reason}", outcome.status_code), None
        return outcome, now + wait
    delay = next_delay(failures + 1, policy, rng, outcome.after, age)
    if delay is None:
        return Dead(f"retries exhausted: {outcome.reason}", outcome.status_code), None
    return outcome, now + delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date. None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
