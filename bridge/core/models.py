"""Value types shared by every layer: statuses, the verified event, delivery outcomes."""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeGuard


class EventState(StrEnum):
    QUEUED = "queued"  # stored, at least one delivery still on its way
    UNROUTED = "unrouted"  # stored, no route matched: never forwarded
    DELIVERED = "delivered"  # every delivery reached the platform
    DEAD = "dead"  # no delivery pending and at least one dead


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt (or for its paused route)
    LEASED = "leased"  # claimed by a worker (or a channel's agent) until lease_until
    HANDED_OFF = "handed_off"  # a channel's agent holds it in its store; its outcome comes back
    DELIVERED = "delivered"  # the platform accepted it (2xx)
    DEAD = "dead"  # permanent failure or retries exhausted; kept for redrive
    DISCARDED = "discarded"  # an operator gave up on a dead delivery
    # A dead delivery whose route a replay of the same event has since delivered: the event's
    # outcome is that replay's; redriving it would run the workflow again, so only with force.
    SUPERSEDED = "superseded"


class ExecutionStatus(StrEnum):
    PENDING = "pending"  # the platform accepted the trigger; not started yet
    RUNNING = "running"
    COMPLETED = "completed"  # terminal: the workflow finished
    FAILED = "failed"  # terminal: the workflow failed
    CANCELLED = "cancelled"  # terminal
    TIMED_OUT = "timed_out"  # terminal: still unfinished at the tracking deadline (ours, not the platform's)


TERMINAL = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.FAILED,
                      ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT})


class CallbackStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    LEASED = "leased"  # being sent
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD = "dead"  # retries exhausted, or refused by the SSRF guard


class RouteState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # configuration fault (401/403/404) or an operator; probed periodically


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC with its zone, to the millisecond: the one style of every
    time the bridge prints (tables, logs, envelopes)."""
    if ts is None:
        return None
    global _SECOND
    second = int(ts // 1)
    cached = _SECOND  # (second, its text): log lines ask many times a second
    if cached[0] != second:
        cached = _SECOND = (second, datetime.fromtimestamp(second, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{min(999, int((ts - second) * 1000)):03d}Z"


_SECOND: tuple[int, str] = (-1, "")
_TIME_KEYS = frozenset({"at", "first_seen", "last_seen"})


def with_iso_times(value: Any) -> Any:
    """`value` (JSON-ready dicts and lists) with every time given as Unix seconds under a key
    that names a time (`*_at`, `at`, `first_seen`, `last_seen`) turned into `iso()` text: the
    one form of time in every JSON answer, as in the CLI and the logs. Times that are text
    already (the platform's own) are left as they are."""
    if isinstance(value, dict):
        return {k: iso(v) if isinstance(v, int | float) and not isinstance(v, bool) and (
                    k.endswith("_at") or k in _TIME_KEYS) else with_iso_times(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [with_iso_times(v) for v in value]
    return value


def new_id() -> str:
    """A UUIDv7: time-ordered, so inserts land at the end of the primary-key index; and strictly
    increasing within a process (RFC 9562, 6.2, method 1: a 12-bit counter in `rand_a`, started
    at random each millisecond, the millisecond borrowed from the next one on overflow), so ids
    made one after another sort as they were made, and two stores given the same changes in
    the same order claim in the same order."""
    rand = int.from_bytes(os.urandom(10), "big")
    with _ID_LOCK:
        ms = max((time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF, _LAST_ID[0])
        if ms == _LAST_ID[0]:
            seq = _LAST_ID[1] + 1
            if seq > 0xFFF:  # 4,096 in one millisecond: take the next one
                ms, seq = ms + 1, (rand >> 64) & 0x7FF
        else:
            seq = (rand >> 64) & 0x7FF  # a random start, with room to count up
        _LAST_ID[0], _LAST_ID[1] = ms, seq
    a = 0x7000 | seq  # version 7 + the counter
    b = 0x8000 | ((rand >> 48) & 0x3FFF)  # variant 10 + 14 random bits
    c = rand & 0xFFFF_FFFF_FFFF  # 48 random bits
    h = f"{ms:012x}"
    return f"{h[:8]}-{h[8:]}-{a:04x}-{b:04x}-{c:012x}"


_ID_LOCK = threading.Lock()
_LAST_ID = [0, 0]  # the millisecond and the counter of the last id made


@dataclass(frozen=True, slots=True)
class VerifiedEvent:
    """A request whose signature has been checked; the only thing the store accepts."""

    id: str
    source: str
    provider: str
    event_type: str
    idempotency_key: str
    received_at: float
    headers: dict[str, str]
    body: bytes
    callback_url: str | None = None
    items: tuple[str, ...] = ()  # per-item idempotency keys of a batch
    nonce: str | None = None  # a single-use value (Mailgun's token), refused if seen again
    fingerprint: bytes | None = None  # the signed content's key, where the scheme signs no id
    filtered: tuple[tuple[str, str], ...] = ()  # (route, why) of matching routes that did not take it


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery rendered at accept time: its body is sent byte-identical on every attempt."""

    route: str
    trigger: str
    idempotency_key: str
    body: bytes
    content_type: str
    channel: str | None = None  # carried by that channel's agents instead of the forwarder


# Deliveries still on their way: waiting, being sent, or held by an agent.
IN_FLIGHT = ("pending", "leased", "handed_off")


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: str
    duplicate: bool
    replayed_token: bool = False  # refused: its single-use token (`nonce`) was seen before
    # Not stored: a batch's deliveries were rendered for other items already seen than these,
    # which the store found. Render them again for these and accept again.
    seen_items: frozenset[str] | None = None


# Outcomes of one delivery attempt, produced by platform.classify().


@dataclass(frozen=True, slots=True)
class Delivered:
    execution_id: str | None
    status_code: int


@dataclass(frozen=True, slots=True)
class RetryLater:
    reason: str
    status_code: int | None = None
    after: float | None = None  # seconds the platform asked for (Retry-After)
    counts_as_failure: bool = True  # a 429 is pacing, not a failure
    reached: bool = False  # the platform may have received (and run) it: see Forwarder


@dataclass(frozen=True, slots=True)
class Dead:
    reason: str
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class Paused:
    reason: str
    status_code: int | None = None


Outcome = Delivered | RetryLater | Dead | Paused


@dataclass(frozen=True, slots=True)
class Attempt:
    """The record of one HTTP try, whatever its outcome."""

    delivery_id: str
    started_at: float
    latency_ms: float
    outcome: str
    status_code: int | None = None
    error: str | None = None
    response_excerpt: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    id: str
    event_id: str
    route: str
    trigger: str
    idempotency_key: str
    body: bytes
    content_type: str
    attempts: int
    failures: int
    created_at: float
    probe: bool = False
    reached_at: float | None = None  # first attempt that may have reached the platform


@dataclass(frozen=True, slots=True)
class TrackedExecution:
    id: str
    delivery_id: str
    event_id: str
    route: str
    trigger: str
    status: str
    deadline_at: float
    checks: int


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What the platform said about an execution (stream, poll or push)."""

    status: str
    output: object = None
    node_results: object = None
    error: str | None = None
    started_at: str | None = None
    completed_at: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class Completion:
    """What a callback tells: an event's execution that ended, and when the bridge learned it
    (`at`). Everything here is stored once the execution ends, so every attempt renders the
    same bytes (`completion.callback_body`)."""

    event_id: str
    source: str
    provider: str
    event_type: str
    idempotency_key: str
    received_at: float
    trigger: str
    execution_id: str
    result: ExecutionResult
    at: float


@dataclass(frozen=True, slots=True)
class ClaimedCallback:
    id: str  # also the webhook-id: the same on every attempt
    execution_id: str
    event_id: str
    url: str
    sender_supplied: bool
    completion: Completion
    attempts: int
    failures: int
    created_at: float


@dataclass(frozen=True, slots=True)
class Pacing:
    """`[platform] rate_limit` as a token bucket kept in the store, so every process and replica
    sending to the platform draws from one bucket."""

    rate: float  # tokens per second
    capacity: float  # the most that may go at once after a quiet spell


@dataclass(frozen=True, slots=True)
class CallbackTargets:
    """Where a finished execution is called back: its route's URLs, then those told of every
    execution (`[callbacks] urls`). Data, handed to the store as it completes an execution."""

    by_route: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    always: tuple[str, ...] = ()

    def for_route(self, route: str) -> tuple[str, ...]:
        return tuple(self.by_route.get(route, ())) + self.always


# Channels: what an edge hands an agent, and what the agent reports back.


@dataclass(frozen=True, slots=True)
class ChannelItem:
    """One delivery leased to an agent, with what the agent stores of its event."""

    delivery_id: str
    event_id: str
    route: str
    trigger: str
    idempotency_key: str  # the platform's key: the same on-prem as at the edge
    body: bytes
    content_type: str
    generation: float  # the delivery's created_at; a redrive starts a new one
    source: str
    provider: str
    event_type: str
    received_at: float


@dataclass(frozen=True, slots=True)
class ChannelPull:
    """A pull's answer from the store: the batch leased, and how many acknowledgements
    answered no lease of that agent (ignored)."""

    items: list[ChannelItem]
    ignored: int = 0


@dataclass(frozen=True, slots=True)
class ChannelReported:
    """Reports that changed something, and those that answered no lease of the agent."""

    applied: int
    ignored: int = 0


# A delivery id as the edge makes them (`new_id`) and as an agent may name one back.
DELIVERY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def finite_number(value: object) -> TypeGuard[float]:
    """A JSON number that is one (not a bool, NaN or infinity): a generation, a time."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def agent_owner(channel: str, agent: str) -> str:
    """The lease owner an agent's deliveries carry at its edge."""
    return f"agent:{channel}:{agent}"


@dataclass(frozen=True, slots=True)
class AgentAttempt:
    delivery_id: str
    generation: float
    state: str  # delivered | waiting | dead
    attempt: Attempt
    execution_id: str | None = None
    tracked: bool = False  # the agent follows the execution and will report its end


@dataclass(frozen=True, slots=True)
class AgentCompletion:
    execution_id: str
    result: ExecutionResult


AgentReport = AgentAttempt | AgentCompletion
