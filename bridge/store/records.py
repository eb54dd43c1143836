"""What the store's reads return: frozen, typed records.

Callers never see a database row: not SQLite's `0/1` for a flag nor PostgreSQL's `memoryview`
for a body. Each store turns its rows into these, so the admin API, the status URL, the edge
and the agent read the same fields with the same types whichever store they have. Records are
frozen: a view that adds to one (the admin API's reasons for waiting) builds a new value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.core import codec


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One call to the platform (or to a callback URL) and what came of it."""

    started_at: float
    latency_ms: float
    outcome: str
    status_code: int | None
    error: str | None
    response_excerpt: str | None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str
    route: str
    trigger: str
    idempotency_key: str
    status: str
    attempts: int
    failures: int
    next_attempt_at: float
    execution_id: str | None
    last_error: str | None
    replay_of: str | None
    created_at: float
    updated_at: float
    channel: str | None
    reached_at: float | None  # when it may first have reached the platform (answer unknown)
    attempt_log: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    id: str
    delivery_id: str
    route: str
    trigger: str
    status: str
    output: Any
    node_results: Any
    error: str | None
    started_at: str | None
    completed_at: str | None
    checks: int

    @property
    def running(self) -> bool:
        return self.status in ("pending", "running")


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    id: str
    execution_id: str
    url: str
    sender_supplied: bool
    status: str
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    attempt_log: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class FilteredRoute:
    """A route whose filter did not take the event, and why."""

    route: str
    reason: str


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event with everything that happened to it."""

    id: str
    source: str
    provider: str
    event_type: str
    idempotency_key: str
    received_at: float
    state: str
    headers: Mapping[str, str]
    body: bytes
    callback_url: str | None
    filtered: tuple[FilteredRoute, ...]
    deliveries: tuple[DeliveryRecord, ...]
    executions: tuple[ExecutionRecord, ...]
    callbacks: tuple[CallbackRecord, ...]


@dataclass(frozen=True, slots=True)
class EventSummary:
    """A line of the event list; `workflows` are its executions' states, so a delivered event
    whose workflow failed shows as such."""

    id: str
    source: str
    provider: str
    event_type: str
    idempotency_key: str
    received_at: float
    state: str
    workflows: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    event_id: str
    source: str
    event_type: str
    route: str
    trigger: str
    idempotency_key: str
    attempts: int
    last_error: str | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class RouteRecord:
    """A route's shared state: paused (by an operator, or by the platform refusing its calls)
    or active; a paused route is probed at `next_probe_at`."""

    name: str
    state: str
    reason: str | None
    changed_at: float
    next_probe_at: float | None

    @property
    def paused(self) -> bool:
        return self.state == "paused"


@dataclass(frozen=True, slots=True)
class SourceCount:
    events: int
    last_received_at: float | None


@dataclass(frozen=True, slots=True)
class Retried:
    """A pending delivery made due now; `resumed` when its paused route was resumed for it."""

    id: str
    route: str
    resumed: bool


@dataclass(frozen=True, slots=True)
class ChannelBacklog:
    """A channel's deliveries waiting for an agent (how many, the oldest's creation) and held
    by agents."""

    waiting: int = 0
    oldest: float | None = None
    handed_off: int = 0


@dataclass(frozen=True, slots=True)
class AgentSeen:
    channel: str
    agent: str
    address: str | None
    first_seen: float
    last_seen: float
    cursor: str | None
    acked: int


@dataclass(frozen=True, slots=True)
class TrafficCount:
    """How many of `kind` ("webhook" by source, "delivery" by route) had `outcome` in one
    minute (epoch seconds // 60)."""

    minute: int
    kind: str
    name: str
    outcome: str
    n: int


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """An outcome an agent has yet to report to its edge."""

    id: int
    body: Mapping[str, Any]


def plain(record: Any) -> Any:
    """A record as JSON-ready data: nested records become objects, tuples lists. Bodies
    (bytes) are left to the caller, which decides how to show them."""
    return dataclasses.asdict(record)


def decode_json(value: Any) -> Any:
    """A stored JSON column: read by `codec.loads` (orjson, with its fallbacks) when a claimed
    callback renders the execution's output."""
    return None if value is None else codec.loads(value.encode())
