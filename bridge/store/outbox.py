"""Claiming due deliveries and recording their attempts: the `Outbox` role."""

from __future__ import annotations

import logging

from bridge.core.models import (
    Attempt,
    ClaimedDelivery,
    Dead,
    Delivered,
    DeliveryStatus,
    ExecutionStatus,
    Outcome,
    Pacing,
    Paused,
    RetryLater,
    RouteState,
)
from bridge.store.dialect import Session, placeholders
from bridge.store.engine import CombinableJob, Engine
from bridge.store.kinds import DELIVERIES, EXECUTIONS
from bridge.store.records import (
    RouteRecord,
)
from bridge.store.rows import CLAIMED_COLUMNS, FOR_UPDATE, SKIP_LOCKED, claimed_delivery
from bridge.store.transitions import refresh_event, set_route, supersede

log = logging.getLogger("bridge.store")


class OutboxJobs(Engine):
    """Claiming due deliveries and recording their attempts."""

    async def claim(self, owner: str, now: float, lease: float, limit: int,
                    probe_every: float, pacing: Pacing | None = None,
                    urgent: bool = False) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries of active routes, plus one probe per paused route
        whose probe is due. An expired lease (a crashed worker's) is due again. Nothing while
        the platform asked every sender to hold (`hold`); with `pacing`, no more than the
        shared bucket's tokens, which the claim spends."""

        def job(conn: Session) -> list[ClaimedDelivery]:
            if pacing is not None:  # one bucket: replicas claiming at once take turns on it
                conn.execute("INSERT INTO pacing (key, tokens, rate, updated_at)"
                             " VALUES ('platform', {p}, {p}, {p}) ON CONFLICT(key) DO NOTHING",
                             (pacing.capacity, pacing.rate, now))
            row = conn.execute("SELECT tokens, updated_at, not_before FROM pacing"
                               " WHERE key = 'platform'" + (FOR_UPDATE if pacing else "")
                               ).fetchone()
            if row is not None and row[2] is not None and row[2] > now:
                return []  # the platform asked us all to wait
            tokens: float | None = None
            if pacing is not None:
                tokens = pacing.capacity if row is None or row[0] is None else min(
                    pacing.capacity, row[0] + max(0.0, now - row[1]) * pacing.rate)
                claimed = self._claim(conn, owner, now, lease, min(limit, int(tokens)),
                                      probe_every) if tokens >= 1 else []
                conn.execute(
                    "INSERT INTO pacing (key, tokens, rate, updated_at) VALUES ('platform',{p},{p},{p})"
                    " ON CONFLICT(key) DO UPDATE SET tokens = excluded.tokens,"
                    " rate = excluded.rate, updated_at = excluded.updated_at",
                    (tokens - len(claimed), pacing.rate, now))
                return claimed
            return self._claim(conn, owner, now, lease, limit, probe_every)

        return await self._write(job, urgent=urgent)

    async def hold(self, until: float, now: float) -> None:
        """Every sender waits until `until` (a 429's Retry-After, or the window's reset)."""

        def job(conn: Session) -> None:
            conn.execute(
                "INSERT INTO pacing (key, updated_at, not_before) VALUES ('platform', {p}, {p})"
                " ON CONFLICT(key) DO UPDATE SET not_before = CASE WHEN pacing.not_before IS NULL"
                " OR pacing.not_before < excluded.not_before THEN excluded.not_before"
                " ELSE pacing.not_before END", (now, until))

        await self._write(job)

    def _claim(self, conn: Session, owner: str, now: float, lease: float,
               limit: int, probe_every: float) -> list[ClaimedDelivery]:
        paused = [r[0] for r in conn.execute(
            "SELECT name FROM routes WHERE state = {p}", (RouteState.PAUSED,))]
        skip = f" AND route NOT IN ({placeholders(len(paused))})" if paused else ""
        # Each half walks an index in due order and stops at the limit: no sort of the
        # whole backlog per claim.
        due = [r[0] for r in conn.execute(
            f"SELECT id FROM deliveries WHERE status = {{p}} AND next_attempt_at <= {{p}}"
            f"{skip} AND channel IS NULL ORDER BY next_attempt_at, id"
            f" LIMIT {{p}}{SKIP_LOCKED}",
            (DeliveryStatus.PENDING, now, *paused, limit))]
        if len(due) < limit:
            due += [r[0] for r in conn.execute(
                f"SELECT id FROM deliveries WHERE status = {{p}} AND lease_until <= {{p}}"
                f"{skip} AND channel IS NULL ORDER BY lease_until, id"
                f" LIMIT {{p}}{SKIP_LOCKED}",
                (DeliveryStatus.LEASED, now, *paused, limit - len(due)))]
        marks = placeholders(len(due))
        # Status checked again as the lease is taken: only what is still claimable.
        rows = conn.execute(
            f"UPDATE deliveries SET status = {{p}}, lease_owner = {{p}}, lease_until = {{p}}"
            f" WHERE id IN ({marks}) AND (status = {{p}} OR (status = {{p}} AND lease_until <= {{p}}))"
            f" RETURNING {CLAIMED_COLUMNS}",
            (DeliveryStatus.LEASED, owner, now + lease, *due, DeliveryStatus.PENDING,
             DeliveryStatus.LEASED, now),
        ).fetchall() if due else []
        claimed = [claimed_delivery(row) for row in rows]
        for route in paused if limit > 0 else ():
            claimed.extend(self._probe(conn, route, owner, now, lease, probe_every))
        return claimed

    @staticmethod
    def _probe(conn: Session, route: str, owner: str, now: float, lease: float,
               probe_every: float) -> list[ClaimedDelivery]:
        due = conn.execute(
            "UPDATE routes SET next_probe_at = {p} WHERE name = {p} AND next_probe_at <= {p}",
            (now + probe_every, route, now)).rowcount
        if not due:
            return []
        rows = conn.execute(
            "UPDATE deliveries SET status = {p}, lease_owner = {p}, lease_until = {p}"
            " WHERE id = (SELECT id FROM deliveries WHERE route = {p} AND channel IS NULL AND"
            "  ((status = {p} AND next_attempt_at <= {p}) OR (status = {p} AND lease_until <= {p}))"
            f"  ORDER BY next_attempt_at, id LIMIT 1) RETURNING {CLAIMED_COLUMNS}",
            (DeliveryStatus.LEASED, owner, now + lease, route, DeliveryStatus.PENDING, now,
             DeliveryStatus.LEASED, now)).fetchall()
        return [claimed_delivery(row, probe=True) for row in rows]

    async def record(self, delivery: ClaimedDelivery, owner: str, attempt: Attempt,
                     outcome: Outcome, next_at: float | None, now: float,
                     probe_every: float, track_until: float | None = None,
                     reached_at: float | None = None) -> bool:
        """Record one attempt and apply its outcome, in one transaction. A delivery that
        started an execution also starts following it when `track_until` is given; one that
        may have reached the platform remembers when (`reached_at`, kept once set).

        Only while `owner` still holds the lease: when it was lost (it expired and another
        worker claimed the delivery, or an operator acted on it), nothing is written, not even
        the attempt, and the answer is False. The other holder's outcome is the one that
        counts."""
        if isinstance(outcome, Delivered):
            status, failures, error = DeliveryStatus.DELIVERED, 0, None
        elif isinstance(outcome, RetryLater) and next_at is not None:
            status, failures, error = (DeliveryStatus.PENDING, int(outcome.counts_as_failure),
                                       outcome.reason)
        elif isinstance(outcome, Paused):
            status, failures, error = DeliveryStatus.PENDING, 0, outcome.reason
        else:
            status, failures = DeliveryStatus.DEAD, 0
            error = outcome.reason if isinstance(outcome, Dead | RetryLater) else "dead"

        def job(conn: Session) -> bool:
            held = conn.execute(
                "UPDATE deliveries SET status = {p}, attempts = attempts + 1,"
                " failures = failures + {p}, next_attempt_at = COALESCE({p}, next_attempt_at),"
                " execution_id = COALESCE({p}, execution_id), last_error = {p},"
                " reached_at = COALESCE(reached_at, {p}), lease_owner = NULL, lease_until = NULL,"
                " updated_at = {p} WHERE id = {p} AND status = 'leased' AND lease_owner = {p}"
                " RETURNING replay_of",
                (status, failures, next_at if status == DeliveryStatus.PENDING else None,
                 getattr(outcome, "execution_id", None), error, reached_at, now, delivery.id,
                 owner)).fetchone()
            if held is None:
                return False
            if held[0] is not None and status == DeliveryStatus.DELIVERED:
                supersede(conn, delivery.id, now)
            conn.execute(
                "INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome, status_code,"
                " error, response_excerpt) VALUES ({p},{p},{p},{p},{p},{p},{p})",
                (attempt.delivery_id, attempt.started_at, attempt.latency_ms, attempt.outcome,
                 attempt.status_code, attempt.error, attempt.response_excerpt))
            if isinstance(outcome, Delivered):
                set_route(conn, delivery.route, RouteState.ACTIVE, None, now, None)
                if outcome.execution_id and track_until is not None:
                    conn.execute(
                        "INSERT INTO executions (id, delivery_id, event_id, route, trigger, status,"
                        " created_at, updated_at, deadline_at, next_check_at)"
                        " VALUES ({p},{p},{p},{p},{p},{p},{p},{p},{p},{p}) ON CONFLICT(id) DO NOTHING",
                        (outcome.execution_id, delivery.id, delivery.event_id, delivery.route,
                         delivery.trigger, ExecutionStatus.PENDING, now, now, track_until, now))
                    self._new_work.add(EXECUTIONS)
            elif isinstance(outcome, Paused):
                set_route(conn, delivery.route, RouteState.PAUSED, outcome.reason, now,
                           now + probe_every)
            refresh_event(conn, delivery.event_id)
            if self.journaling:  # an agent: tell the edge
                state = ("delivered" if status == DeliveryStatus.DELIVERED else
                         "waiting" if status == DeliveryStatus.PENDING else "dead")
                self._journal(conn, delivery.event_id, now, {
                    "kind": "attempt", "state": state,
                    "execution_id": getattr(outcome, "execution_id", None),
                    "tracked": bool(track_until and getattr(outcome, "execution_id", None)),
                    "attempt": {"started_at": attempt.started_at,
                                "latency_ms": attempt.latency_ms, "outcome": attempt.outcome,
                                "status_code": attempt.status_code, "error": attempt.error,
                                "response_excerpt": attempt.response_excerpt}})
            return True

        if isinstance(outcome, Paused) or self.journaling:  # rare, and more than one row each
            return await self._write(job)
        track = track_until if isinstance(outcome, Delivered) and outcome.execution_id else None
        return await self._write(CombinableJob(job, "record", (
            delivery, owner, attempt, status, failures,
            next_at if status == DeliveryStatus.PENDING else None,
            getattr(outcome, "execution_id", None), error, reached_at, now, track)))

    async def release(self, owner: str) -> int:
        """Give back every lease `owner` still holds (clean shutdown)."""

        def job(conn: Session) -> int:
            return int(conn.execute(
                "UPDATE deliveries SET status = {p}, lease_owner = NULL, lease_until = NULL"
                " WHERE status = {p} AND lease_owner = {p}",
                (DeliveryStatus.PENDING, DeliveryStatus.LEASED, owner)).rowcount)

        return await self._write(job)

    async def next_due(self) -> float | None:
        """When the forwarder next has something to claim: the earliest due delivery of an
        active route, or the next probe of a paused route that has deliveries waiting. (A
        paused route's deliveries are not claimable: counting them woke the loop at once,
        again and again, while the route stayed paused.)"""
        row = await self._one(
            "SELECT MIN(t) AS t FROM ("
            " SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE status = 'pending'"
            "  AND route NOT IN (SELECT name FROM routes WHERE state = 'paused')"
            "  AND channel IS NULL"
            " UNION ALL SELECT MIN(lease_until) FROM deliveries WHERE status = 'leased'"
            "  AND route NOT IN (SELECT name FROM routes WHERE state = 'paused')"
            "  AND channel IS NULL"
            " UNION ALL SELECT MIN(r.next_probe_at) FROM routes r WHERE r.state = 'paused'"
            "  AND EXISTS (SELECT 1 FROM deliveries d WHERE d.route = r.name"
            "   AND d.status IN ('pending', 'leased') AND d.channel IS NULL)) AS due", ())
        due = None if row is None else row["t"]
        pacing = await self._one("SELECT tokens, rate, updated_at, not_before FROM pacing"
                                 " WHERE key = 'platform'", ())
        if due is None or pacing is None:
            return due
        if pacing["not_before"] is not None:  # held: nothing goes before then
            due = max(due, pacing["not_before"])
        if pacing["rate"] and pacing["tokens"] is not None and pacing["tokens"] < 1:
            due = max(due, pacing["updated_at"] + (1 - pacing["tokens"]) / pacing["rate"])
        return float(due)

    async def route_states(self) -> dict[str, RouteRecord]:
        rows = await self._all(
            "SELECT name, state, reason, changed_at, next_probe_at FROM routes", ())
        return {row["name"]: RouteRecord(**row) for row in rows}

    async def set_route_state(self, route: str, state: RouteState, reason: str | None,
                              now: float, probe_every: float) -> None:
        def job(conn: Session) -> None:
            next_probe = now + probe_every if state == RouteState.PAUSED else None
            set_route(conn, route, state, reason, now, next_probe)
            if state == RouteState.ACTIVE:
                self._new_work.add(DELIVERIES)

        await self._write(job)
