"""The store's roles: what each part of the bridge may ask of storage, as protocols.

Each loop and surface receives only its role (the forwarder an `Outbox`, the tracker
`Executions`...); `Store` is every role, for the composition root. Each implementation
keeps the same promises: nothing is acknowledged before it is durable, a delivery or an
execution is held by one worker at a time (leases), and a worker whose lease was lost writes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bridge.core.models import (
    Accepted,
    AgentReport,
    Attempt,
    CallbackTargets,
    ChannelPull,
    ChannelReported,
    ClaimedCallback,
    ClaimedDelivery,
    ExecutionResult,
    NewDelivery,
    Outcome,
    Pacing,
    RouteState,
    TrackedExecution,
    VerifiedEvent,
)
from bridge.store.kinds import WORK
from bridge.store.records import (
    AgentSeen,
    ChannelBacklog,
    DeadLetter,
    EventRecord,
    EventSummary,
    ExecutionRecord,
    JournalEntry,
    Retried,
    RouteRecord,
    SourceCount,
    TrafficCount,
)


class Waking(Protocol):
    """What a loop waits on: a commit that made its kind of work due."""

    def watch(self, callback: Callable[[], None], kinds: frozenset[str] = WORK) -> None: ...
    async def changed(self, timeout: float) -> None: ...


class Ingest(Waking, Protocol):
    """`POST /hooks/{source}` and the status view: store an event durably, read it back."""

    async def accept(self, event: VerifiedEvent, deliveries: Sequence[NewDelivery],
                     seen_items: frozenset[str] = frozenset()) -> Accepted: ...
    async def get_event(self, event_id: str) -> EventRecord | None: ...
    async def event_settled(self, event_id: str) -> bool: ...
    async def learned_secret(self, source: str) -> str | None: ...
    async def learn_secret(self, source: str, secret: str, now: float) -> None: ...


class Outbox(Waking, Protocol):
    """The forwarder: claim due deliveries, record each attempt, pace, release on shutdown."""

    async def claim(self, owner: str, now: float, lease: float, limit: int,
                    probe_every: float, pacing: Pacing | None = None, urgent: bool = False
                    ) -> list[ClaimedDelivery]: ...
    async def hold(self, until: float, now: float) -> None: ...
    async def record(self, delivery: ClaimedDelivery, owner: str, attempt: Attempt,
                     outcome: Outcome, next_at: float | None, now: float,
                     probe_every: float, track_until: float | None = None,
                     reached_at: float | None = None) -> bool: ...
    async def release(self, owner: str) -> int: ...
    async def next_due(self) -> float | None: ...


class Executions(Waking, Protocol):
    """The tracker: follow started executions to their end."""

    async def claim_executions(self, owner: str, now: float, lease: float,
                               limit: int, urgent: bool = False) -> list[TrackedExecution]: ...
    async def reschedule_execution(self, execution_id: str, owner: str, status: str | None,
                                   next_check_at: float, now: float) -> bool: ...
    async def complete_execution(self, execution_id: str, result: ExecutionResult, now: float,
                                 targets: CallbackTargets) -> bool: ...
    async def next_execution_due(self) -> float | None: ...
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None: ...
    async def release_leases(self, owner: str) -> None: ...


class Callbacks(Waking, Protocol):
    """The relay: send each finished execution's callbacks."""

    async def claim_callbacks(self, owner: str, now: float, lease: float,
                              limit: int, urgent: bool = False) -> list[ClaimedCallback]: ...
    async def record_callback(self, callback: ClaimedCallback, owner: str, attempt: Attempt,
                              delivered: bool, next_at: float | None, reason: str | None,
                              now: float) -> bool: ...
    async def next_callback_due(self) -> float | None: ...
    async def release_leases(self, owner: str) -> None: ...


class Channels(Waking, Protocol):
    """An edge's channels (agents pull and report) and an agent's journal for its edge."""

    async def pull_channel(self, channel: str, agent: str, address: str | None,
                           acked: Sequence[tuple[str, float]], now: float, lease: float,
                           limit: int, max_bytes: int, report_within: float = 3600.0,
                           refused: Sequence[tuple[str, float]] = ()) -> ChannelPull: ...
    async def channel_report(self, channel: str, agent: str, reports: Sequence[AgentReport],
                             now: float, track_until: float, targets: CallbackTargets,
                             report_within: float = 3600.0) -> ChannelReported: ...
    async def expire_channels(self, before: float, now: float) -> int: ...
    async def channel_stats(self) -> tuple[dict[str, ChannelBacklog], list[AgentSeen]]: ...
    async def read_journal(self, limit: int) -> list[JournalEntry]: ...
    async def drop_journal(self, ids: Sequence[int]) -> None: ...
    async def instance_id(self) -> str: ...


class Routes(Protocol):
    """Route pauses, read by the status view and set by operators."""

    async def route_states(self) -> dict[str, RouteRecord]: ...
    async def set_route_state(self, route: str, state: RouteState, reason: str | None,
                              now: float, probe_every: float) -> None: ...


class Operations(Protocol):
    """The admin API and the console: read everything, redrive, replay, discard, prune."""

    async def get_event(self, event_id: str) -> EventRecord | None: ...
    async def list_events(self, *, source: str | None = None, event_type: str | None = None,
                          state: str | None = None, since: float | None = None,
                          until: float | None = None, key_contains: str | None = None,
                          before_id: str | None = None, after_id: str | None = None,
                          limit: int = 50, workflow: str | None = None,
                          route: str | None = None) -> list[EventSummary]: ...
    async def event_body(self, event_id: str) -> bytes | None: ...
    async def replay(self, event_id: str, deliveries: Sequence[NewDelivery], now: float) -> int: ...
    async def dead_letters(self, *, route: str | None = None, source: str | None = None,
                           after_id: str | None = None, limit: int = 50) -> list[DeadLetter]: ...
    async def redrive(self, delivery_ids: Sequence[str], now: float,
                      unsafe_before: float | None = None) -> int: ...
    async def retry_now(self, delivery_id: str, now: float) -> Retried | None: ...
    async def dead_deliveries(self, ids: Sequence[str]) -> tuple[list[str], list[str]]: ...
    async def count_unsafe(self, delivery_ids: Sequence[str], unsafe_before: float) -> int: ...
    async def count_superseded(self, delivery_ids: Sequence[str]) -> int: ...
    async def discard(self, delivery_ids: Sequence[str], reason: str, now: float) -> int: ...
    async def pending_by_route(self) -> dict[str, int]: ...
    async def source_counts(self) -> dict[str, SourceCount]: ...
    async def counts(self) -> dict[str, dict[str, int]]: ...
    async def prune(self, before: float, limit: int = 1000) -> int: ...
    async def route_states(self) -> dict[str, RouteRecord]: ...
    async def set_route_state(self, route: str, state: RouteState, reason: str | None,
                              now: float, probe_every: float) -> None: ...


class Sessions(Protocol):
    """The console's server-side sessions."""

    async def start_session(self, session_id: str, token: str, csrf: str, now: float,
                            expires_at: float) -> None: ...
    async def find_session(self, session_id: str, now: float) -> dict[str, Any] | None: ...
    async def end_session(self, session_id: str) -> None: ...


class Traffic(Protocol):
    """Traffic per minute for the console's pictures."""

    async def add_traffic(self, counts: Sequence[TrafficCount]) -> None: ...
    async def traffic(self, since_minute: int) -> list[TrafficCount]: ...


class Lifecycle(Protocol):
    """Opening, closing and probing a store; its keys."""

    journaling: bool
    on_commit: Callable[[int, float], None] | None

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def check_writable(self) -> None: ...
    async def secret_key(self) -> str: ...


class Operator(Operations, Sessions, Traffic, Protocol):
    """What the operator's surfaces (the admin API and the console) use."""


class Store(Lifecycle, Ingest, Outbox, Executions, Callbacks, Channels, Routes, Operations, Sessions,
            Traffic, Protocol):
    """Every role: what a store implementation provides (`SQLiteStore`, `PostgresStore`)."""
