"""Sending each finished execution's callbacks: the `Callbacks` role."""

from __future__ import annotations

import logging

from bridge.core.models import (
    Attempt,
    CallbackStatus,
    ClaimedCallback,
)
from bridge.store.dialect import Session, placeholders
from bridge.store.engine import CombinableJob, Engine
from bridge.store.rows import SKIP_LOCKED, claimed_callback

log = logging.getLogger("bridge.store")


class CallbackJobs(Engine):
    """Sending each finished execution's callbacks."""

    async def claim_callbacks(self, owner: str, now: float, lease: float,
                              limit: int, urgent: bool = False) -> list[ClaimedCallback]:
        def job(conn: Session) -> list[ClaimedCallback]:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM callbacks WHERE status = {p} AND next_attempt_at <= {p}"
                " ORDER BY next_attempt_at, id LIMIT {p}" + SKIP_LOCKED,
                (CallbackStatus.PENDING, now, limit))]
            if len(ids) < limit:
                ids += [r[0] for r in conn.execute(
                    "SELECT id FROM callbacks WHERE status = {p} AND lease_until <= {p}"
                    " ORDER BY lease_until, id LIMIT {p}" + SKIP_LOCKED,
                    (CallbackStatus.LEASED, now, limit - len(ids)))]
            if not ids:
                return []
            marks = placeholders(len(ids))
            leased = [r[0] for r in conn.execute(
                f"UPDATE callbacks SET status = {{p}}, lease_owner = {{p}}, lease_until = {{p}}"
                f" WHERE id IN ({marks}) AND (status = {{p}} OR (status = {{p}} AND lease_until <= {{p}}))"
                f" RETURNING id",
                (CallbackStatus.LEASED, owner, now + lease, *ids, CallbackStatus.PENDING,
                 CallbackStatus.LEASED, now)).fetchall()]
            if not leased:
                return []
            marks = placeholders(len(leased))
            cursor = conn.execute(
                "SELECT c.id, c.execution_id, c.event_id, c.url, c.sender_supplied, c.attempts,"
                " c.failures, c.created_at, e.source, e.provider, e.event_type,"
                " e.idempotency_key, e.received_at, x.trigger, x.status, x.output,"
                " x.node_results, x.error, x.started_at, x.completed_at FROM callbacks c"
                " JOIN events e ON e.id = c.event_id JOIN executions x ON x.id = c.execution_id"
                f" WHERE c.id IN ({marks}) ORDER BY c.next_attempt_at", leased)
            return [claimed_callback(row) for row in cursor.fetchall()]

        return await self._write(job, urgent=urgent)

    async def record_callback(self, callback: ClaimedCallback, owner: str, attempt: Attempt,
                              delivered: bool, next_at: float | None, reason: str | None,
                              now: float) -> bool:
        """Record one callback attempt; delivered, retried at `next_at`, or dead. False, with
        nothing written, when `owner` no longer holds the lease."""
        if delivered:
            status = CallbackStatus.DELIVERED
        else:
            status = CallbackStatus.PENDING if next_at is not None else CallbackStatus.DEAD

        def job(conn: Session) -> bool:
            held = conn.execute(
                "UPDATE callbacks SET status = {p}, attempts = attempts + 1, failures = failures + {p},"
                " next_attempt_at = COALESCE({p}, next_attempt_at), last_error = {p},"
                " lease_owner = NULL, lease_until = NULL, updated_at = {p}"
                " WHERE id = {p} AND status = 'leased' AND lease_owner = {p}",
                (status, 0 if delivered else 1, next_at, reason, now, callback.id,
                 owner)).rowcount
            if held:  # a lost lease writes nothing: the other holder's outcome counts
                conn.execute(
                    "INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome,"
                    " status_code, error, response_excerpt) VALUES ({p},{p},{p},{p},{p},{p},{p})",
                    (attempt.delivery_id, attempt.started_at, attempt.latency_ms,
                     attempt.outcome, attempt.status_code, attempt.error,
                     attempt.response_excerpt))
            return bool(held)

        return await self._write(CombinableJob(job, "callback", (
            callback, owner, attempt, status, 0 if delivered else 1, next_at, reason, now)))

    async def next_callback_due(self) -> float | None:
        row = await self._one("SELECT MIN(next_attempt_at) AS t FROM callbacks"
                              " WHERE status = 'pending'", ())
        return None if row is None else row["t"]

    async def release_leases(self, owner: str) -> None:
        """Free every execution and callback lease `owner` holds (clean shutdown)."""

        def job(conn: Session) -> None:
            conn.execute("UPDATE executions SET lease_owner = NULL, lease_until = NULL"
                         " WHERE lease_owner = {p}", (owner,))
            conn.execute("UPDATE callbacks SET status = 'pending', lease_owner = NULL,"
                         " lease_until = NULL WHERE status = 'leased' AND lease_owner = {p}",
                         (owner,))

        await self._write(job)

    # channels: an edge's deliveries carried by outbound-only agents (see `bridge.channels.edge`)
