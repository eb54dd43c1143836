"""An edge's channels and an agent's journal: the `Channels` role."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from collections.abc import Sequence

from bridge.core.models import (
    IN_FLIGHT,
    AgentCompletion,
    AgentReport,
    CallbackTargets,
    ChannelItem,
    ChannelPull,
    ChannelReported,
    DeliveryStatus,
    ExecutionStatus,
    agent_owner,
)
from bridge.store.dialect import Session, placeholders
from bridge.store.executions import ExecutionJobs
from bridge.store.kinds import DELIVERIES
from bridge.store.records import (
    AgentSeen,
    ChannelBacklog,
    JournalEntry,
)
from bridge.store.rows import SKIP_LOCKED
from bridge.store.transitions import refresh_event, supersede

log = logging.getLogger("bridge.store")


class ChannelJobs(ExecutionJobs):
    """An edge's channels and an agent's journal."""

    async def pull_channel(self, channel: str, agent: str, address: str | None,
                           acked: Sequence[tuple[str, float]], now: float, lease: float,
                           limit: int, max_bytes: int,
                           report_within: float = 3600.0,
                           refused: Sequence[tuple[str, float]] = ()) -> ChannelPull:
        """For one agent's pull, in one transaction: note the agent as seen; mark what it
        acknowledged (committed to its own store) as handed off, where the ack answers a lease
        this agent holds, of that generation (anything else is ignored and counted: a stolen
        token or a late ack may not hand off what the agent never held); lease it the next
        batch, in event order: first what is still leased to it (a restarted agent resumes
        where it stopped), then the oldest waiting, then leases other agents let expire and
        hand-offs whose agent reported nothing within `report_within`. At least one delivery,
        and no more than `max_bytes` of bodies beyond the first. What the agent `refused` (a
        batch that failed its signature check), where it answers this agent's own lease of that
        generation, goes back to the channel at once, for any agent: an agent with a wrong
        secret can delay a batch by one pull, never hold it."""
        owner = agent_owner(channel, agent)

        def job(conn: Session) -> ChannelPull:
            conn.execute(
                "INSERT INTO agents (channel, agent, address, first_seen, last_seen)"
                " VALUES ({p},{p},{p},{p},{p}) ON CONFLICT(channel, agent) DO UPDATE SET"
                " last_seen = excluded.last_seen, address = excluded.address",
                (channel, agent, address, now, now))
            done = 0
            for start in range(0, len(acked), 500):
                held = leases_held(conn, channel, owner, acked[start:start + 500])
                if held:
                    done += conn.execute(
                        "UPDATE deliveries SET status = {p}, lease_until = {p},"
                        " attempts = attempts + 1, updated_at = {p}"
                        f" WHERE id IN ({placeholders(len(held))})",
                        (DeliveryStatus.HANDED_OFF, now + report_within, now, *held)).rowcount
            if acked:
                conn.execute("UPDATE agents SET cursor = {p}, acked = acked + {p}"
                             " WHERE channel = {p} AND agent = {p}",
                             (max(a[0] for a in acked), done, channel, agent))
            ignored = len(acked) - done  # acks that answered no lease of this agent
            for start in range(0, len(refused), 500):
                mine = leases_held(conn, channel, owner, refused[start:start + 500])
                if mine:
                    conn.execute(
                        "UPDATE deliveries SET status = {p}, lease_owner = NULL,"
                        " lease_until = NULL, updated_at = {p}"
                        f" WHERE id IN ({placeholders(len(mine))})",
                        (DeliveryStatus.PENDING, now, *mine))
                    self._new_work.add(DELIVERIES)  # other agents' long polls take them now
            if limit <= 0:
                return ChannelPull([], ignored)
            found: list[tuple[str, int]] = []
            for sql, extra in (
                    ("status = 'leased' AND lease_owner = {p}", (owner,)),
                    ("status = 'pending'", ()),
                    ("status IN ('leased', 'handed_off') AND lease_until <= {p}", (now,))):
                if len(found) < limit:
                    found += conn.execute(
                        f"SELECT id, length(body) FROM deliveries WHERE channel = {{p}} AND {sql}"
                        " ORDER BY id LIMIT {p}" + SKIP_LOCKED,
                        (channel, *extra, limit - len(found))).fetchall()
            ids: list[str] = []
            size = 0
            for delivery_id, length in found:
                if delivery_id in ids:
                    continue
                if ids and size + length > max_bytes:
                    break
                ids.append(delivery_id)
                size += length
            if not ids:
                return ChannelPull([], ignored)
            marks = placeholders(len(ids))
            rows = conn.execute(
                f"UPDATE deliveries SET status = {{p}}, lease_owner = {{p}}, lease_until = {{p}}"
                f" WHERE id IN ({marks}) RETURNING id, event_id, route, trigger,"
                f" idempotency_key, body, content_type, created_at",
                (DeliveryStatus.LEASED, owner, now + lease, *ids)).fetchall()
            events = {r[0]: r[1:] for r in conn.execute(
                "SELECT id, source, provider, event_type, received_at FROM events WHERE id IN"
                f" ({placeholders(len(rows))})", [r[1] for r in rows])}
            items = [ChannelItem(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7],
                                 *events[r[1]]) for r in rows]
            return ChannelPull(sorted(items, key=lambda item: item.delivery_id), ignored)

        return await self._write(job)

    async def channel_report(self, channel: str, agent: str, reports: Sequence[AgentReport],
                             now: float, track_until: float, targets: CallbackTargets,
                             report_within: float = 3600.0) -> ChannelReported:
        """Apply what an agent reports, once: an attempt (its log line, and the delivery
        delivered, dead or still waiting, which gives the agent `report_within` more before
        the delivery goes back to the channel), or a finished execution (which makes the
        route's callbacks here). Only what answers this agent's own lease counts: a report for
        a delivery another agent holds, never pulled, or redriven since (another generation),
        or for an execution another agent started, is ignored and counted; one repeated after
        a lost answer changes nothing."""

        def job(conn: Session) -> ChannelReported:
            applied = ignored = 0
            owner = agent_owner(channel, agent)
            for report in reports:
                if isinstance(report, AgentCompletion):
                    owned = conn.execute(
                        "SELECT 1 FROM executions x JOIN deliveries d ON d.id = x.delivery_id"
                        " WHERE x.id = {p} AND x.channel = {p} AND d.lease_owner = {p}",
                        (report.execution_id, channel, owner)).fetchone()
                    if not owned:
                        ignored += 1
                    elif self._complete(conn, report.execution_id, report.result, now, targets):
                        applied += 1
                    continue
                row = conn.execute(
                    "SELECT event_id, route, trigger, status, created_at, lease_owner"
                    " FROM deliveries WHERE id = {p} AND channel = {p}",
                    (report.delivery_id, channel)).fetchone()
                if row is None or row[4] != report.generation or row[5] != owner:
                    ignored += 1
                    log.warning("agent report ignored", extra={
                        "channel": channel, "delivery_id": report.delivery_id,
                        "reason": "no such delivery on this channel" if row is None else
                        "the delivery was redriven since (another generation)"
                        if row[4] != report.generation else
                        "the delivery is not leased to this agent"})
                    continue
                event_id, route, trigger, status, _, _ = row
                a = report.attempt
                if conn.execute("SELECT 1 FROM attempts WHERE delivery_id = {p} AND started_at = {p}",
                                (report.delivery_id, a.started_at)).fetchone():
                    continue  # reported before; its answer was lost
                conn.execute(
                    "INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome,"
                    " status_code, error, response_excerpt) VALUES ({p},{p},{p},{p},{p},{p},{p})",
                    (report.delivery_id, a.started_at, a.latency_ms, a.outcome, a.status_code,
                     a.error, a.response_excerpt))
                applied += 1
                if status not in IN_FLIGHT:
                    continue  # already delivered (by another agent) or given up on here
                if report.state == "delivered":  # the owner stays: its execution's reports
                    conn.execute("UPDATE deliveries SET status = {p}, execution_id = {p},"
                                 " last_error = NULL, lease_until = NULL,"
                                 " updated_at = {p} WHERE id = {p}",
                                 (DeliveryStatus.DELIVERED, report.execution_id, now,
                                  report.delivery_id))
                    supersede(conn, report.delivery_id, now)
                    if report.execution_id and report.tracked:
                        conn.execute(
                            "INSERT INTO executions (id, delivery_id, event_id, route, trigger,"
                            " status, created_at, updated_at, deadline_at, next_check_at,"
                            " channel) VALUES ({p},{p},{p},{p},{p},{p},{p},{p},{p},{p},{p})"
                            " ON CONFLICT(id) DO NOTHING",
                            (report.execution_id, report.delivery_id, event_id, route, trigger,
                             ExecutionStatus.PENDING, now, now, track_until, track_until,
                             channel))
                elif report.state == "dead":
                    conn.execute("UPDATE deliveries SET status = {p}, last_error = {p},"
                                 " lease_until = NULL, updated_at = {p}"
                                 " WHERE id = {p}", (DeliveryStatus.DEAD,
                                                   f"on the agent: {a.error}", now,
                                                   report.delivery_id))
                else:  # still trying on-premises: the agent has that much longer again
                    conn.execute("UPDATE deliveries SET last_error = {p}, updated_at = {p},"
                                 " lease_until = CASE WHEN status = {p} THEN {p} ELSE lease_until"
                                 " END WHERE id = {p}",
                                 (a.error, now, DeliveryStatus.HANDED_OFF, now + report_within,
                                  report.delivery_id))
                refresh_event(conn, event_id)
            return ChannelReported(applied, ignored)

        return await self._write(job)

    async def expire_channels(self, before: float, now: float) -> int:
        """Channel deliveries no agent took before `before` (the dedupe window) become dead
        letters: visible, and redrivable once an agent is back."""

        def job(conn: Session) -> int:
            rows = conn.execute(
                "UPDATE deliveries SET status = {p}, last_error = {p}, lease_owner = NULL,"
                " lease_until = NULL, updated_at = {p} WHERE channel IS NOT NULL"
                " AND status IN ({p}, {p}) AND created_at < {p} RETURNING event_id",
                (DeliveryStatus.DEAD, "no agent took it within the dedupe window", now,
                 DeliveryStatus.PENDING, DeliveryStatus.LEASED, before)).fetchall()
            for event_id in {r[0] for r in rows}:
                refresh_event(conn, event_id)
            return len(rows)

        return await self._write(job)

    async def channel_stats(self) -> tuple[dict[str, ChannelBacklog], list[AgentSeen]]:
        """Per channel: deliveries waiting for an agent (count, oldest) and held by agents;
        and every agent seen."""
        rows = await self._all(
            "SELECT channel, status, COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries"
            " WHERE channel IS NOT NULL AND status IN ('pending', 'leased', 'handed_off')"
            " GROUP BY channel, status", ())
        stats: dict[str, ChannelBacklog] = {}
        for row in rows:
            entry = stats.get(row["channel"], ChannelBacklog())
            if row["status"] == "handed_off":
                entry = dataclasses.replace(entry, handed_off=entry.handed_off + row["n"])
            else:
                oldest = row["oldest"] if entry.oldest is None else min(entry.oldest,
                                                                        row["oldest"])
                entry = ChannelBacklog(entry.waiting + row["n"], oldest, entry.handed_off)
            stats[row["channel"]] = entry
        agents = await self._all("SELECT channel, agent, address, first_seen, last_seen,"
                                 " cursor, acked FROM agents ORDER BY channel, agent", ())
        return stats, [AgentSeen(**a) for a in agents]

    # an agent's journal of outcomes, for its edge

    async def read_journal(self, limit: int) -> list[JournalEntry]:
        """The oldest entries. Ids are never reused (AUTOINCREMENT), so dropping what was read
        can never drop an entry written since."""
        rows = await self._all("SELECT id, body FROM journal ORDER BY id LIMIT {p}", (limit,))
        return [JournalEntry(row["id"], json.loads(row["body"])) for row in rows]

    async def drop_journal(self, ids: Sequence[int]) -> None:
        def job(conn: Session) -> None:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start:start + 500])
                conn.execute(f"DELETE FROM journal WHERE id IN ({placeholders(len(chunk))})",
                             chunk)

        await self._write(job)

    async def instance_id(self) -> str:
        """This store's own random name, made once and kept: an agent's identity at its edge,
        the same across restarts."""

        def job(conn: Session) -> str:
            conn.execute("INSERT INTO meta (key, value) VALUES ('instance_id', {p})"
                         " ON CONFLICT(key) DO NOTHING", (secrets.token_hex(8),))
            return str(conn.execute(
                "SELECT value FROM meta WHERE key = 'instance_id'").fetchone()[0])

        return await self._write(job)


def leases_held(conn: Session, channel: str, owner: str,
                named: Sequence[tuple[str, float]]) -> list[str]:
    """Of the (delivery id, generation) pairs an agent named, the deliveries it really holds:
    leased to it, on this channel, of that generation. An ack or a refusal counts only there."""
    given = dict(named)
    return [row[0] for row in conn.execute(
        "SELECT id, created_at FROM deliveries WHERE channel = {p} AND status = {p}"
        f" AND lease_owner = {{p}} AND id IN ({placeholders(len(given))})",
        (channel, DeliveryStatus.LEASED, owner, *given)).fetchall()
        if row[1] == given[row[0]]]
