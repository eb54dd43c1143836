"""Retry policy as data plus pure functions; callers inject the random generator."""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

from bridge.config import RetryPolicy
from bridge.core.models import Dead, Outcome, RetryLater


def next_delay(failures: int, policy: RetryPolicy, rng: random.Random,
               retry_after: float | None = None, age: float = 0.0) -> float | None:
    """Seconds to wait before the next attempt, or None when the policy is exhausted.

    `failures` counts failed attempts so far (>= 1). The ceiling grows as
    base * factor**(failures-1), capped at `cap`; with full jitter the delay is uniform in
    [0, ceiling] but never below base/2, so a burst of failures does not retry instantly.
    A server's Retry-After is honoured as a lower bound. Past `max_age` there is no next time.
    """
    ceiling = min(policy.cap, policy.base * policy.factor ** max(0, failures - 1))
    delay = ceiling
    if policy.jitter == "full":
        delay = max(min(policy.base / 2, ceiling), rng.uniform(0, ceiling))
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
