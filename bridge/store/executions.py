"""Following executions to their end: the `Executions` role."""

from __future__ import annotations

import logging

from bridge.core.models import (
    CallbackStatus,
    CallbackTargets,
    ExecutionResult,
    TrackedExecution,
    new_id,
)
from bridge.store.dialect import Session, placeholders
from bridge.store.engine import CombinableJob, Engine
from bridge.store.kinds import CALLBACKS
from bridge.store.records import (
    ExecutionRecord,
)
from bridge.store.rows import SKIP_LOCKED, execution_record, stored_json

log = logging.getLogger("bridge.store")


class ExecutionJobs(Engine):
    """Following executions to their end."""

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        row = await self._one(
            "SELECT id, delivery_id, route, trigger, status, output, node_results, error,"
            " started_at, completed_at, checks FROM executions WHERE id = {p}", (execution_id,))
        return None if row is None else execution_record(row)

    async def claim_executions(self, owner: str, now: float, lease: float,
                               limit: int, urgent: bool = False) -> list[TrackedExecution]:
        """Lease unfinished executions whose next check is due (or whose lease expired)."""

        def job(conn: Session) -> list[TrackedExecution]:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM executions WHERE status IN ('pending', 'running')"
                " AND next_check_at <= {p} AND (lease_until IS NULL OR lease_until <= {p})"
                " AND channel IS NULL"
                " ORDER BY next_check_at, id LIMIT {p}" + SKIP_LOCKED, (now, now, limit))]
            if not ids:
                return []
            marks = placeholders(len(ids))
            rows = conn.execute(
                f"UPDATE executions SET lease_owner = {{p}}, lease_until = {{p}} WHERE id IN ({marks})"
                f" AND status IN ('pending', 'running')"
                f" AND (lease_until IS NULL OR lease_until <= {{p}})"  # still claimable
                f" RETURNING id, delivery_id, event_id, route, trigger, status, deadline_at, checks",
                (owner, now + lease, *ids, now)).fetchall()
            return [TrackedExecution(*row) for row in rows]

        return await self._write(job, urgent=urgent)

    async def reschedule_execution(self, execution_id: str, owner: str, status: str | None,
                                   next_check_at: float, now: float) -> bool:
        """Not finished yet: note its status, free the lease, check again at `next_check_at`.
        False, with nothing written, when `owner` no longer holds the lease."""

        def job(conn: Session) -> bool:
            return bool(conn.execute(
                "UPDATE executions SET status = COALESCE({p}, status), next_check_at = {p},"
                " checks = checks + 1, lease_owner = NULL, lease_until = NULL, updated_at = {p}"
                " WHERE id = {p} AND lease_owner = {p} AND status IN ('pending', 'running')",
                (status, next_check_at, now, execution_id, owner)).rowcount)

        return await self._write(job)

    async def complete_execution(self, execution_id: str, result: ExecutionResult, now: float,
                                 targets: CallbackTargets) -> bool:
        """Apply a terminal state once; in the same transaction, create one callback per URL of
        the execution's route (and the sender's own, if it gave one). False if it was already
        finished (a push and a poll for the same execution produce one completion)."""

        def job(conn: Session) -> bool:
            return self._complete(conn, execution_id, result, now, targets)

        if self.journaling:
            return await self._write(job)
        return await self._write(CombinableJob(job, "complete", (execution_id, result, now, targets)))

    def _complete(self, conn: Session, execution_id: str, result: ExecutionResult,
                  now: float, targets: CallbackTargets) -> bool:
        changed = conn.execute(
            "UPDATE executions SET status = {p}, output = {p}, node_results = {p}, error = {p},"
            " started_at = COALESCE({p}, started_at), completed_at = {p}, lease_owner = NULL,"
            " lease_until = NULL, updated_at = {p} WHERE id = {p}"
            " AND status IN ('pending', 'running') RETURNING event_id, route, trigger",
            (result.status, stored_json(result.output), stored_json(result.node_results), result.error,
             result.started_at, result.completed_at, now, execution_id)).fetchone()
        if changed is None:
            return False
        event_id, route, _ = changed
        sender_url = conn.execute("SELECT callback_url FROM events WHERE id = {p}",
                                  (event_id,)).fetchone()[0]
        urls = [(url, 0) for url in targets.for_route(route)]
        if sender_url:
            urls.append((sender_url, 1))
        if urls:  # their body is rendered from the event and execution rows, when sent
            conn.executemany(
                "INSERT INTO callbacks (id, execution_id, event_id, url, sender_supplied,"
                " body, status, next_attempt_at, created_at, updated_at)"
                " VALUES ({p},{p},{p},{p},{p},{p},{p},{p},{p},{p})",
                [(new_id(), execution_id, event_id, url, supplied, b"",
                  CallbackStatus.PENDING, now, now, now) for url, supplied in urls])
            self._new_work.add(CALLBACKS)
        if self.journaling:
            self._journal(conn, event_id, now, {
                "kind": "execution", "execution_id": execution_id,
                "result": {"status": result.status, "output": result.output,
                           "node_results": result.node_results, "error": result.error,
                           "started_at": result.started_at,
                           "completed_at": result.completed_at}})
        return True

    async def next_execution_due(self) -> float | None:
        row = await self._one("SELECT MIN(next_check_at) AS t FROM executions"
                              " WHERE status IN ('pending', 'running') AND channel IS NULL", ())
        return None if row is None else row["t"]
