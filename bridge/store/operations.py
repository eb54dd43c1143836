"""What operators read and do (admin API, console, housekeeping): the `Operations` role."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from bridge.core.models import (
    DeliveryStatus,
    NewDelivery,
    RouteState,
    new_id,
)
from bridge.store.dialect import Session, placeholders
from bridge.store.engine import Engine
from bridge.store.kinds import DELIVERIES
from bridge.store.records import (
    DeadLetter,
    EventSummary,
    Retried,
    SourceCount,
)
from bridge.store.transitions import refresh_event, set_route

log = logging.getLogger("bridge.store")


class AdminJobs(Engine):
    """What operators read and do (admin API, console, housekeeping)."""

    async def list_events(self, *, source: str | None = None, event_type: str | None = None,
                          state: str | None = None, since: float | None = None,
                          until: float | None = None, key_contains: str | None = None,
                          before_id: str | None = None, after_id: str | None = None,
                          limit: int = 50, workflow: str | None = None,
                          route: str | None = None) -> list[EventSummary]:
        """Newest first. `before_id` is the cursor: ids are time-ordered, so the page after one
        ending at X is everything with an id below X; `after_id` keeps only events newer than
        X (what arrived since a page was shown). `workflow`: only events with an execution in
        that state (`failed`: delivered, and the workflow failed); `route`: only events with a
        delivery on that route."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("source", source), ("event_type", event_type), ("state", state)):
            if value is not None:
                where.append(f"{column} = {{p}}")
                params.append(value)
        if since is not None:
            where.append("received_at >= {p}")
            params.append(since)
        if until is not None:
            where.append("received_at < {p}")
            params.append(until)
        if workflow is not None:
            where.append("EXISTS (SELECT 1 FROM executions x WHERE x.event_id = events.id"
                         " AND x.status = {p})")
            params.append(workflow)
        if route is not None:
            where.append("EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id"
                         " AND d.route = {p})")
            params.append(route)
        if key_contains:
            where.append("{instr}(idempotency_key, {p}) > 0")  # case-sensitive, unlike LIKE
            params.append(key_contains)
        if before_id:
            where.append("id < {p}")
            params.append(before_id)
        if after_id:
            where.append("id > {p}")
            params.append(after_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        # `workflows`: the executions' states, so a delivered event whose workflow failed
        # shows as such in a table.
        rows = await self._all(
            f"SELECT id, source, provider, event_type, idempotency_key, received_at, state,"
            f" (SELECT {{group_concat}}(status, ',') FROM executions x WHERE x.event_id = events.id)"
            f" AS workflows FROM events {clause} ORDER BY id DESC LIMIT {{p}}", (*params, limit))
        return [EventSummary(**{**row, "workflows": tuple((row["workflows"] or "").split(",")
                                                          if row["workflows"] else ())})
                for row in rows]

    async def event_body(self, event_id: str) -> bytes | None:
        row = await self._one("SELECT body FROM events WHERE id = {p}", (event_id,))
        return None if row is None else bytes(row["body"])

    async def replay(self, event_id: str, deliveries: Sequence[NewDelivery], now: float) -> int:
        """New deliveries for an event, each recorded as a replay of it; returns how many."""

        def job(conn: Session) -> int:
            conn.executemany(
                "INSERT INTO deliveries (id, event_id, route, trigger, idempotency_key, body,"
                " content_type, status, next_attempt_at, created_at, updated_at, replay_of,"
                " channel) VALUES ({p},{p},{p},{p},{p},{p},{p},{p},{p},{p},{p},{p},{p})",
                [(new_id(), event_id, d.route, d.trigger, d.idempotency_key, d.body,
                  d.content_type, DeliveryStatus.PENDING, now, now, now, event_id, d.channel)
                 for d in deliveries])
            if deliveries:
                refresh_event(conn, event_id)
                self._new_work.add(DELIVERIES)
            return len(deliveries)

        return await self._write(job)

    async def dead_letters(self, *, route: str | None = None, source: str | None = None,
                           after_id: str | None = None, limit: int = 50) -> list[DeadLetter]:
        where, params = ["d.status = 'dead'"], []
        if route:
            where.append("d.route = {p}")
            params.append(route)
        if source:
            where.append("e.source = {p}")
            params.append(source)
        if after_id:
            where.append("d.id > {p}")
            params.append(after_id)
        rows = await self._all(
            "SELECT d.id, d.event_id, e.source, e.event_type, d.route, d.trigger,"
            " d.idempotency_key, d.attempts, d.last_error, d.updated_at FROM deliveries d"
            f" JOIN events e ON e.id = d.event_id WHERE {' AND '.join(where)}"
            " ORDER BY d.id LIMIT {p}", (*params, limit))
        return [DeadLetter(**row) for row in rows]

    async def redrive(self, delivery_ids: Sequence[str], now: float,
                      unsafe_before: float | None = None) -> int:
        """Dead deliveries back to pending, due now, with their own idempotency key; their age
        (for the retry policy's max_age) starts again. A delivery that may have reached the
        platform before `unsafe_before` (its key may be forgotten there, so a resend could run
        the workflow twice) is left dead unless `unsafe_before` is None (an operator's --force);
        a forced one starts afresh (`reached_at` cleared)."""
        guard = "" if unsafe_before is None else " AND (reached_at IS NULL OR reached_at >= {p})"
        extra = () if unsafe_before is None else (unsafe_before,)
        # A superseded delivery (a replay of its route was delivered) goes only with force.
        statuses = "('dead')" if unsafe_before is not None else "('dead', 'superseded')"

        def job(conn: Session) -> int:
            changed = 0
            for delivery_id in delivery_ids:
                row = conn.execute(
                    "UPDATE deliveries SET status = 'pending', failures = 0, next_attempt_at = {p},"
                    " created_at = {p}, updated_at = {p},"
                    " reached_at = CASE WHEN {p} THEN NULL ELSE reached_at END"
                    f" WHERE id = {{p}} AND status IN {statuses}" + guard +
                    " RETURNING event_id",
                    (now, now, now, unsafe_before is None, delivery_id, *extra)).fetchone()
                if row is not None:
                    changed += 1
                    refresh_event(conn, row[0])
            if changed:
                self._new_work.add(DELIVERIES)
            return changed

        return await self._write(job)

    async def retry_now(self, delivery_id: str, now: float) -> Retried | None:
        """A pending delivery due now instead of at its backoff's end; its route, if paused,
        resumed (an operator asking for it to be sent). None when no pending delivery has
        that id."""

        def job(conn: Session) -> Retried | None:
            row = conn.execute(
                "UPDATE deliveries SET next_attempt_at = {p}, updated_at = {p} WHERE id = {p}"
                " AND status IN ('pending', 'leased') RETURNING route",  # leased: being sent
                (now, now, delivery_id)).fetchone()
            if row is None:
                return None
            paused = conn.execute("SELECT reason FROM routes WHERE name = {p} AND state = {p}",
                                  (row[0], RouteState.PAUSED)).fetchone()
            if paused is not None:
                set_route(conn, row[0], RouteState.ACTIVE, None, now, None)
            self._new_work.add(DELIVERIES)
            return Retried(delivery_id, row[0], resumed=paused is not None)

        return await self._write(job)

    async def dead_deliveries(self, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """The dead deliveries named by `ids`, each a delivery id or an event id (standing for
        its dead deliveries), superseded ones named by their own id too; and the ids that
        named none."""
        found: list[str] = []
        missing: list[str] = []
        for given in ids:
            rows = await self._all(
                "SELECT id FROM deliveries WHERE (status = 'dead' AND (id = {p} OR event_id = {p}))"
                " OR (status = 'superseded' AND id = {p}) ORDER BY id", (given, given, given))
            found += [r["id"] for r in rows if r["id"] not in found]
            if not rows:
                missing.append(given)
        return found, missing

    async def count_superseded(self, delivery_ids: Sequence[str]) -> int:
        """How many of these deliveries a delivered replay of their route superseded."""
        return await self._count(delivery_ids, "status = 'superseded'", ())

    async def count_unsafe(self, delivery_ids: Sequence[str], unsafe_before: float) -> int:
        """How many of these dead deliveries may have reached the platform before then."""
        return await self._count(delivery_ids, "status = 'dead' AND reached_at < {p}",
                                 (unsafe_before,))

    async def _count(self, delivery_ids: Sequence[str], condition: str,
                     params: Sequence[Any]) -> int:
        """How many of `delivery_ids` meet `condition`, asked 500 ids at a time."""
        total = 0
        for start in range(0, len(delivery_ids), 500):
            chunk = list(delivery_ids[start:start + 500])
            marks = placeholders(len(chunk))
            row = await self._one(f"SELECT COUNT(*) AS n FROM deliveries WHERE id IN ({marks})"
                                  f" AND {condition}", (*chunk, *params))
            total += int(row["n"]) if row else 0
        return total

    async def discard(self, delivery_ids: Sequence[str], reason: str, now: float) -> int:
        def job(conn: Session) -> int:
            changed = 0
            for delivery_id in delivery_ids:
                row = conn.execute(
                    "UPDATE deliveries SET status = 'discarded', last_error = {p}, updated_at = {p}"
                    " WHERE id = {p} AND status = 'dead' RETURNING event_id",
                    (f"discarded: {reason}", now, delivery_id)).fetchone()
                if row is not None:
                    changed += 1
            return changed

        return await self._write(job)

    async def pending_by_route(self) -> dict[str, int]:
        rows = await self._all("SELECT route, COUNT(*) AS n FROM deliveries"
                               " WHERE status IN ('pending', 'leased', 'handed_off')"
                               " GROUP BY route", ())
        return {row["route"]: row["n"] for row in rows}

    async def source_counts(self) -> dict[str, SourceCount]:
        rows = await self._all("SELECT source, COUNT(*) AS events, MAX(received_at) AS last"
                               " FROM events GROUP BY source", ())
        return {row["source"]: SourceCount(row["events"], row["last"]) for row in rows}

    async def prune(self, before: float, limit: int = 1000) -> int:
        """Forget events received before `before` that have nothing left to deliver."""

        def job(conn: Session) -> int:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM events e WHERE received_at < {p} AND NOT EXISTS ("
                " SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
                " AND d.status IN ('pending', 'leased', 'handed_off')) AND NOT EXISTS ("
                " SELECT 1 FROM executions x WHERE x.event_id = e.id"
                " AND x.status IN ('pending', 'running')) AND NOT EXISTS ("
                " SELECT 1 FROM callbacks c WHERE c.event_id = e.id"
                " AND c.status IN ('pending', 'leased')) ORDER BY received_at LIMIT {p}",
                (before, limit))]
            conn.execute("DELETE FROM traffic WHERE minute < {p}", (int(before // 60),))
            if not ids:
                return 0
            marks = placeholders(len(ids))
            conn.execute(f"DELETE FROM attempts WHERE delivery_id IN"
                         f" (SELECT id FROM deliveries WHERE event_id IN ({marks}))", ids)
            conn.execute(f"DELETE FROM attempts WHERE delivery_id IN"
                         f" (SELECT id FROM callbacks WHERE event_id IN ({marks}))", ids)
            conn.execute(f"DELETE FROM callbacks WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM executions WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM event_items WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM nonces WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
            return len(ids)

        return await self._write(job)

    async def check_writable(self) -> None:
        def job(conn: Session) -> None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('ready_probe', {p})"
                         " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         (str(time.time()),))

        await self._write(job)

    async def secret_key(self) -> str:
        """The key that signs status tokens when the config sets none: made once, kept."""

        def job(conn: Session) -> str:
            conn.execute("INSERT INTO meta (key, value) VALUES ('secret_key', {p})"
                         " ON CONFLICT(key) DO NOTHING",
                         (secrets.token_urlsafe(32),))
            return str(conn.execute(
                "SELECT value FROM meta WHERE key = 'secret_key'").fetchone()[0])

        return await self._write(job)

    async def counts(self) -> dict[str, dict[str, int]]:
        events = await self._all("SELECT state, COUNT(*) AS n FROM events GROUP BY state", ())
        deliveries = await self._all(
            "SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status", ())
        return {"events": {r["state"]: r["n"] for r in events},
                "deliveries": {r["status"]: r["n"] for r in deliveries}}
