"""Accepting events and reading them back: the `Ingest` role."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from bridge.core import codec
from bridge.core.models import (
    Accepted,
    DeliveryStatus,
    EventState,
    NewDelivery,
    VerifiedEvent,
    new_id,
)
from bridge.store.dialect import Session, placeholders
from bridge.store.engine import BUSY_SENDERS, AcceptJob, Engine
from bridge.store.kinds import DELIVERIES
from bridge.store.records import (
    AttemptRecord,
    CallbackRecord,
    DeliveryRecord,
    EventRecord,
    FilteredRoute,
)
from bridge.store.rows import execution_record, filtered_column

log = logging.getLogger("bridge.store")


class IngestJobs(Engine):
    """Accepting events and reading them back."""

    async def accept(self, event: VerifiedEvent, deliveries: Sequence[NewDelivery],
                     seen_items: frozenset[str] = frozenset()) -> Accepted:
        """Store the event and its deliveries atomically, or name the event already stored
        under the same idempotency key. Returns only once the transaction is durable.

        For a batch (`event.items`), a request whose items were all seen before is a duplicate
        of the event that first carried one of them. Its deliveries were rendered for
        `seen_items` already seen (their bodies say which items are duplicates); when the store
        finds others, it stores nothing and answers `seen_items` with the ones it found, for
        the caller to render again. A `nonce` seen before with another event stores nothing and
        answers `replayed_token` (the caller refuses the request: an HTTP concern, not the
        store's)."""
        headers = codec.dumps(event.headers).decode()
        # Many senders waiting at once (each sends again only once answered): their batch
        # begins at once rather than gathering company (see `writer.Writer`).
        self._accepting += 1
        urgent = self._accepting > BUSY_SENDERS
        try:
            if not (event.items or event.nonce):
                return await self._write(AcceptJob(event, headers, deliveries), False,
                                         urgent=urgent, answers=True)
            return await self._accept_checked(event, headers, deliveries, seen_items, urgent)
        finally:
            self._accepting -= 1

    async def _accept_checked(self, event: VerifiedEvent, headers: str,
                              deliveries: Sequence[NewDelivery], seen_items: frozenset[str],
                              urgent: bool) -> Accepted:
        """An event with batch items or a single-use token: checks before anything is
        written."""
        source_key = f"{event.source}:"

        def job(conn: Session) -> Accepted:
            if event.items or event.nonce:  # checks first: nothing is written before them
                row = conn.execute("SELECT id FROM events WHERE idempotency_key = {p}",
                                   (event.idempotency_key,)).fetchone()
                if row is not None:
                    return Accepted(row[0], duplicate=True)
                if event.fingerprint and (row := conn.execute(
                        "SELECT id FROM events WHERE fingerprint = {p}",
                        (event.fingerprint,)).fetchone()):
                    return Accepted(row[0], duplicate=True)
                if event.nonce and conn.execute("SELECT 1 FROM nonces WHERE key = {p}",
                                                (source_key + event.nonce,)).fetchone():
                    return Accepted("", duplicate=False, replayed_token=True)
                if event.items:
                    marks = placeholders(len(event.items))
                    found = conn.execute(f"SELECT key, event_id FROM event_items WHERE key IN"
                                         f" ({marks})", event.items).fetchall()
                    seen = frozenset(key for key, _ in found)
                    if len(seen) == len(set(event.items)):
                        return Accepted(found[0][1], duplicate=True)
                    if seen != seen_items:
                        return Accepted("", duplicate=False, seen_items=seen)
            rendered = deliveries
            state = EventState.QUEUED if rendered else EventState.UNROUTED
            cur = conn.execute(
                "INSERT INTO events (id, source, provider, event_type, idempotency_key,"
                " received_at, headers, body, state, callback_url, fingerprint, filtered)"
                " VALUES ({p},{p},{p},{p},{p},{p},{p},{p},{p},{p},{p},{p}) ON CONFLICT DO NOTHING",
                (event.id, event.source, event.provider, event.event_type,
                 event.idempotency_key, event.received_at, headers, event.body, state,
                 event.callback_url, event.fingerprint, filtered_column(event)),
            )
            if cur.rowcount == 0:
                row = conn.execute("SELECT id FROM events WHERE idempotency_key = {p} OR"
                                   " fingerprint = {p}", (event.idempotency_key,
                                                        event.fingerprint)).fetchone()
                return Accepted(row[0], duplicate=True)
            if event.items:
                conn.executemany("INSERT INTO event_items (key, event_id) VALUES ({p},{p})"
                                 " ON CONFLICT DO NOTHING",
                                 [(key, event.id) for key in event.items])
            if event.nonce:
                conn.execute("INSERT INTO nonces (key, event_id) VALUES ({p},{p})",
                             (source_key + event.nonce, event.id))
            if rendered:
                conn.executemany(
                    "INSERT INTO deliveries (id, event_id, route, trigger, idempotency_key, body,"
                    " content_type, status, next_attempt_at, created_at, updated_at, channel)"
                    " VALUES ({p},{p},{p},{p},{p},{p},{p},{p},{p},{p},{p},{p})",
                    [(new_id(), event.id, d.route, d.trigger, d.idempotency_key, d.body,
                      d.content_type, DeliveryStatus.PENDING, event.received_at,
                      event.received_at, event.received_at, d.channel) for d in rendered],
                )
                self._new_work.add(DELIVERIES)
            return Accepted(event.id, duplicate=False)

        return await self._write(job, savepoint=False, urgent=urgent, answers=True)

    async def get_event(self, event_id: str) -> EventRecord | None:
        event = await self._one(
            "SELECT id, source, provider, event_type, idempotency_key, received_at, state,"
            " headers, body, callback_url, filtered FROM events WHERE id = {p}", (event_id,))
        if event is None:
            return None
        deliveries = await self._all(
            "SELECT id, route, trigger, idempotency_key, status, attempts, failures,"
            " next_attempt_at, execution_id, last_error, replay_of, created_at, updated_at,"
            " channel, reached_at FROM deliveries WHERE event_id = {p} ORDER BY created_at, id",
            (event_id,))
        executions = await self._all(
            "SELECT id, delivery_id, route, trigger, status, output, node_results, error,"
            " started_at, completed_at, checks FROM executions WHERE event_id = {p}"
            " ORDER BY created_at", (event_id,))
        callbacks = await self._all(
            "SELECT id, execution_id, url, sender_supplied, status, attempts, last_error,"
            " created_at, updated_at FROM callbacks WHERE event_id = {p} ORDER BY created_at, id",
            (event_id,))
        attempts: dict[str, list[AttemptRecord]] = {}  # of deliveries and of callbacks
        if owners := [row["id"] for row in deliveries + callbacks]:
            marks = placeholders(len(owners))
            for row in await self._all(
                    "SELECT delivery_id, started_at, latency_ms, outcome, status_code, error,"
                    f" response_excerpt FROM attempts WHERE delivery_id IN ({marks})"
                    " ORDER BY id", owners):
                attempts.setdefault(row.pop("delivery_id"), []).append(AttemptRecord(**row))
        return EventRecord(
            id=event["id"], source=event["source"], provider=event["provider"],
            event_type=event["event_type"], idempotency_key=event["idempotency_key"],
            received_at=event["received_at"], state=event["state"],
            headers=json.loads(event["headers"]), body=bytes(event["body"]),
            callback_url=event["callback_url"],
            filtered=tuple(FilteredRoute(route, reason) for route, reason in
                           json.loads(event["filtered"] or "[]")),
            deliveries=tuple(DeliveryRecord(**d, attempt_log=tuple(attempts.get(d["id"], ())))
                             for d in deliveries),
            executions=tuple(execution_record(x) for x in executions),
            callbacks=tuple(CallbackRecord(**{**c, "sender_supplied": bool(c["sender_supplied"])},
                                           attempt_log=tuple(attempts.get(c["id"], ())))
                            for c in callbacks))

    async def learned_secret(self, source: str) -> str | None:
        """The secret `source`'s provider handed over in its last accepted handshake."""
        row = await self._one("SELECT secret FROM learned_secrets WHERE source = {p}",
                              (source,))
        return None if row is None else str(row["secret"])

    async def learn_secret(self, source: str, secret: str, now: float) -> None:
        """Keep (or replace) the secret of `source`'s handshake; the caller decides whether a
        handshake may replace one (see `ingest.hooks`)."""
        def job(conn: Session) -> None:
            conn.execute("INSERT INTO learned_secrets (source, secret, learned_at)"
                         " VALUES ({p}, {p}, {p}) ON CONFLICT(source) DO UPDATE SET"
                         " secret = excluded.secret, learned_at = excluded.learned_at",
                         (source, secret, now))

        await self._write(job)

    async def event_settled(self, event_id: str) -> bool:
        """Nothing more will happen to the event's deliveries and executions (one small query,
        not the event)."""
        row = await self._one(
            "SELECT EXISTS(SELECT 1 FROM deliveries WHERE event_id = {p}"
            "  AND status IN ('pending', 'leased', 'handed_off'))"
            " OR EXISTS(SELECT 1 FROM executions WHERE event_id = {p}"
            "  AND status IN ('pending', 'running')) AS busy", (event_id, event_id))
        return row is not None and not row["busy"]
