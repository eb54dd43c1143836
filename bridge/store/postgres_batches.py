"""PostgreSQL's fast paths: a batch's changes of one kind in one statement, claims in one
statement each, runs of one-statement jobs in one pipeline. Each is held to the shared jobs
by the differential test (`tests/store/test_differential.py`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from bridge.core.models import (
    Accepted,
    new_id,
)
from bridge.store.engine import (
    AcceptJob,
    CombinableJob,
    first_of_each_key,
    savepointed,
)
from bridge.store.faults import describe, outage
from bridge.store.kinds import DELIVERIES
from bridge.store.postgres_connection import NOTIFY, Connection
from bridge.store.rows import CLAIMED_COLUMNS

if TYPE_CHECKING:
    from bridge.store.postgres import PostgresStore

log = logging.getLogger("bridge.store")


INSERT_EVENT = (
    "INSERT INTO events (id, source, provider, event_type, idempotency_key, received_at,"
    " headers, body, state, callback_url, fingerprint, filtered)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id")
# A delivery of an event this batch inserted: ids are fresh, so an event with its id exists only
# when the insert above stored it (not when its key was a duplicate).
INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, event_id, route, trigger, idempotency_key, body, content_type,"
    " status, next_attempt_at, created_at, updated_at, channel)"
    " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
    " WHERE EXISTS (SELECT 1 FROM events WHERE id = %s)")


# The statements that write a batch's changes of one kind at once. Each takes one array per
# column (`unnest`), so its text is the same whatever the batch's size: parsed and planned once.
# All the parts of a statement see the tables as they were before it, so each part reads what an
# earlier part changed from that part's own answer (`held`), not from the table.
RECORDS = """
WITH v AS (
  SELECT * FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::bigint[], {p}::double precision[],
    {p}::text[], {p}::text[], {p}::double precision[], {p}::double precision[], {p}::text[], {p}::text[],
    {p}::text[], {p}::double precision[], {p}::double precision[], {p}::double precision[], {p}::text[],
    {p}::bigint[], {p}::text[], {p}::text[]) WITH ORDINALITY
  AS v(id, owner, status, failures, next_at, execution_id, error, reached_at, now, event_id,
       route, trigger, track_until, started_at, latency_ms, outcome, status_code, attempt_error,
       excerpt, n)),
held AS (
  UPDATE deliveries d SET status = v.status, attempts = d.attempts + 1,
    failures = d.failures + v.failures, next_attempt_at = COALESCE(v.next_at, d.next_attempt_at),
    execution_id = COALESCE(v.execution_id, d.execution_id), last_error = v.error,
    reached_at = COALESCE(d.reached_at, v.reached_at), lease_owner = NULL, lease_until = NULL,
    updated_at = v.now
  FROM v WHERE d.id = v.id AND d.status = 'leased' AND d.lease_owner = v.owner
  RETURNING d.id, d.event_id, d.status, d.route, d.replay_of, d.created_at),
superseded AS (
  UPDATE deliveries d SET status = 'superseded', updated_at = v.now
  FROM held JOIN v ON v.id = held.id
  WHERE held.status = 'delivered' AND held.replay_of IS NOT NULL AND d.status = 'dead'
    AND d.event_id = held.event_id AND d.route = held.route AND d.created_at <= held.created_at
  RETURNING d.id),
tried AS (
  INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome, status_code, error,
    response_excerpt)
  SELECT v.id, v.started_at, v.latency_ms, v.outcome, v.status_code, v.attempt_error, v.excerpt
  FROM v JOIN held ON held.id = v.id ORDER BY v.n),
followed AS (
  INSERT INTO executions (id, delivery_id, event_id, route, trigger, status, created_at,
    updated_at, deadline_at, next_check_at)
  SELECT v.execution_id, v.id, v.event_id, v.route, v.trigger, 'pending', v.now, v.now,
    v.track_until, v.now
  FROM v JOIN held ON held.id = v.id WHERE v.track_until IS NOT NULL ORDER BY v.n
  ON CONFLICT (id) DO NOTHING),
resumed AS (
  UPDATE routes r SET state = 'active', reason = NULL, changed_at = v.now, next_probe_at = NULL
  FROM v JOIN held ON held.id = v.id
  WHERE r.name = v.route AND held.status = 'delivered' AND r.state <> 'active'
  RETURNING r.name),
refreshed AS (
  UPDATE events e SET state = CASE
    WHEN EXISTS (SELECT 1 FROM held h WHERE h.event_id = e.id
                 AND h.status IN ('pending', 'leased', 'handed_off'))
      OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id
                 AND d.status IN ('pending', 'leased', 'handed_off')
                 AND NOT EXISTS (SELECT 1 FROM held h WHERE h.id = d.id)) THEN 'queued'
    WHEN EXISTS (SELECT 1 FROM held h WHERE h.event_id = e.id
                 AND h.status IN ('dead', 'discarded'))
      OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id
                 AND d.status IN ('dead', 'discarded')
                 AND NOT EXISTS (SELECT 1 FROM held h WHERE h.id = d.id)
                 AND NOT EXISTS (SELECT 1 FROM superseded s WHERE s.id = d.id)) THEN 'dead'
    ELSE 'delivered' END
  WHERE e.id IN (SELECT event_id FROM held))
SELECT 'held', id FROM held UNION ALL SELECT DISTINCT 'resumed', name FROM resumed
"""
COMPLETIONS = """
UPDATE executions x SET status = v.status, output = v.output, node_results = v.node_results,
  error = v.error, started_at = COALESCE(v.started_at, x.started_at),
  completed_at = v.completed_at, lease_owner = NULL, lease_until = NULL, updated_at = v.now
FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[],
  {p}::double precision[]) AS v(id, status, output, node_results, error, started_at, completed_at,
  now)
WHERE x.id = v.id AND x.status IN ('pending', 'running')
RETURNING x.id, x.event_id, x.route, (SELECT callback_url FROM events e WHERE e.id = x.event_id)
"""
INSERT_CALLBACK = (
    "INSERT INTO callbacks (id, execution_id, event_id, url, sender_supplied, body, status,"
    " next_attempt_at, created_at, updated_at) VALUES ({p},{p},{p},{p},{p},{p},{p},{p},{p},{p})")
CALLBACK_OUTCOMES = """
WITH v AS (
  SELECT * FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::bigint[], {p}::double precision[],
    {p}::text[], {p}::double precision[], {p}::text[], {p}::double precision[], {p}::double precision[],
    {p}::text[], {p}::bigint[], {p}::text[], {p}::text[]) WITH ORDINALITY
  AS v(id, owner, status, failures, next_at, error, now, delivery_id, started_at, latency_ms,
       outcome, status_code, attempt_error, excerpt, n)),
held AS (
  UPDATE callbacks c SET status = v.status, attempts = c.attempts + 1,
    failures = c.failures + v.failures, next_attempt_at = COALESCE(v.next_at, c.next_attempt_at),
    last_error = v.error, lease_owner = NULL, lease_until = NULL, updated_at = v.now
  FROM v WHERE c.id = v.id AND c.status = 'leased' AND c.lease_owner = v.owner
  RETURNING c.id),
tried AS (
  INSERT INTO attempts (delivery_id, started_at, latency_ms, outcome, status_code, error,
    response_excerpt)
  SELECT v.delivery_id, v.started_at, v.latency_ms, v.outcome, v.status_code, v.attempt_error,
    v.excerpt
  FROM v JOIN held ON held.id = v.id ORDER BY v.n)
SELECT id FROM held
"""


# The shared claims' statements, one after the other in one: the due (and the expired leases,
# up to the limit), skipping rows another replica is taking, leased where still claimable.
# Nothing while the platform asked every sender to hold. The paused routes come back too, as
# rows of their own, to be probed; their deliveries are not claimed.
CLAIM = f"""
WITH hold AS (SELECT 1 FROM pacing WHERE key = 'platform' AND not_before > {{p}}),
paused AS (SELECT name FROM routes WHERE state = 'paused'),
due AS (
  SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= {{p}} AND channel IS NULL
    AND route NOT IN (SELECT name FROM paused) AND NOT EXISTS (SELECT 1 FROM hold)
  ORDER BY next_attempt_at, id LIMIT {{p}} FOR UPDATE SKIP LOCKED),
expired AS (
  SELECT id FROM deliveries WHERE status = 'leased' AND lease_until <= {{p}} AND channel IS NULL
    AND route NOT IN (SELECT name FROM paused) AND NOT EXISTS (SELECT 1 FROM hold)
  ORDER BY lease_until, id LIMIT GREATEST({{p}}::bigint - (SELECT count(*) FROM due), 0)
  FOR UPDATE SKIP LOCKED),
leased AS (
  UPDATE deliveries SET status = 'leased', lease_owner = {{p}}, lease_until = {{p}}
  WHERE id IN (SELECT id FROM due UNION ALL SELECT id FROM expired)
    AND (status = 'pending' OR (status = 'leased' AND lease_until <= {{p}}))
  RETURNING {CLAIMED_COLUMNS})
SELECT 'leased', * FROM leased
UNION ALL
SELECT 'paused', NULL, NULL, name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM paused
WHERE NOT EXISTS (SELECT 1 FROM hold)
"""
CLAIM_EXECUTIONS = """
WITH due AS (
  SELECT id FROM executions WHERE status IN ('pending', 'running') AND next_check_at <= {p}
    AND (lease_until IS NULL OR lease_until <= {p}) AND channel IS NULL
  ORDER BY next_check_at, id LIMIT {p} FOR UPDATE SKIP LOCKED)
UPDATE executions SET lease_owner = {p}, lease_until = {p}
WHERE id IN (SELECT id FROM due) AND status IN ('pending', 'running')
  AND (lease_until IS NULL OR lease_until <= {p})
RETURNING id, delivery_id, event_id, route, trigger, status, deadline_at, checks
"""
CLAIM_CALLBACKS = """
WITH due AS (
  SELECT id FROM callbacks WHERE status = 'pending' AND next_attempt_at <= {p}
  ORDER BY next_attempt_at, id LIMIT {p} FOR UPDATE SKIP LOCKED),
expired AS (
  SELECT id FROM callbacks WHERE status = 'leased' AND lease_until <= {p}
  ORDER BY lease_until, id LIMIT GREATEST({p}::bigint - (SELECT count(*) FROM due), 0)
  FOR UPDATE SKIP LOCKED),
leased AS (
  UPDATE callbacks SET status = 'leased', lease_owner = {p}, lease_until = {p}
  WHERE id IN (SELECT id FROM due UNION ALL SELECT id FROM expired)
    AND (status = 'pending' OR (status = 'leased' AND lease_until <= {p}))
  RETURNING id)
SELECT c.id, c.execution_id, c.event_id, c.url, c.sender_supplied, c.attempts, c.failures,
  c.created_at, e.source, e.provider, e.event_type, e.idempotency_key, e.received_at, x.trigger,
  x.status, x.output, x.node_results, x.error, x.started_at, x.completed_at
FROM leased JOIN callbacks c ON c.id = leased.id JOIN events e ON e.id = c.event_id
  JOIN executions x ON x.id = c.execution_id
ORDER BY c.next_attempt_at
"""


# A mixed batch's new events and the deliveries of those stored (of those not skipped as stored
# before): ids are fresh, so a delivery's event is in `stored` only when this insert stored it.
ACCEPTS = """
WITH stored AS (
  INSERT INTO events (id, source, provider, event_type, idempotency_key, received_at, headers,
    body, state, callback_url, fingerprint, filtered)
  SELECT * FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[],
    {p}::double precision[], {p}::text[], {p}::bytea[], {p}::text[], {p}::text[], {p}::bytea[], {p}::text[])
  ON CONFLICT DO NOTHING RETURNING id),
queued AS (
  INSERT INTO deliveries (id, event_id, route, trigger, idempotency_key, body, content_type,
    status, next_attempt_at, created_at, updated_at, channel)
  SELECT d.id, d.event_id, d.route, d.trigger, d.idempotency_key, d.body, d.content_type,
    'pending', d.at, d.at, d.at, d.channel
  FROM unnest({p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::text[], {p}::bytea[], {p}::text[],
    {p}::double precision[], {p}::text[]) WITH ORDINALITY
    AS d(id, event_id, route, trigger, idempotency_key, body, content_type, at, channel, n)
  WHERE d.event_id IN (SELECT id FROM stored) ORDER BY d.n)
SELECT id FROM stored
"""


def column_arrays(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column: the arrays a grouped statement takes."""
    return [list(column) for column in zip(*rows, strict=True)]


def pipeline_runs(plan: list[Any], answers: list[Any]) -> tuple[list[Any], list[Any]]:
    """`plan` with each run of two or more consecutive one-statement jobs made one `PipelinedRun`
    job, whose answers are the positions of each of its jobs."""
    out_plan: list[Any] = []
    out_answers: list[Any] = []
    run: list[tuple[Any, Any]] = []

    def close() -> None:
        if len(run) > 1:
            out_plan.append(PipelinedRun([job for job, _ in run]))
            out_answers.append([where for _, where in run])
        else:
            out_plan.extend(job for job, _ in run)
            out_answers.extend(where for _, where in run)
        run.clear()

    for job, where in zip(plan, answers, strict=True):
        if isinstance(job, OneStatement | CombinedChanges | AcceptsInOneStatement):
            run.append((job, where))
            continue
        close()
        out_plan.append(job)
        out_answers.append(where)
    close()
    return out_plan, out_answers


def answer_positions(out: list[tuple[bool, Any]], job: Any, positions: list[int],
            result: tuple[bool, Any]) -> None:
    """Puts a job's result at its place in the batch: a group's, one per change."""
    ok, value = result
    if not isinstance(job, CombinedChanges | AcceptsInOneStatement):
        out[positions[0]] = result
        return
    for i, answer in zip(positions, value if ok else [result] * len(positions), strict=True):
        out[i] = answer


class WriteEachAlone(Exception):
    """These changes cannot be written as one statement: each is applied on its own."""


class CombinedChanges:
    """A batch's changes of one kind (`CombinableJob`), applied by one of the store's methods for
    that kind inside the savepoint the batch gives every job. Should that fail other than by an
    outage, the group is undone and its changes are applied one at a time, each in a savepoint
    of its own, so the one that failed is undone alone and the others are written, as if they
    had never been grouped."""

    __slots__ = ("store", "jobs")

    def __init__(self, store: PostgresStore, jobs: list[CombinableJob]) -> None:
        self.store = store
        self.jobs = jobs

    def statement(self) -> tuple[str, Sequence[Any]]:
        """The one statement; raises `WriteEachAlone` when these changes cannot be one."""
        store = self.store
        return {"record": store._records, "complete": store._completions,
                "callback": store._callback_outcomes}[self.jobs[0].kind](self.jobs)

    def read(self, conn: Any, answer: list[tuple[Any, ...]]) -> list[tuple[bool, Any]]:
        store = self.store
        read = {"record": store._records_read, "complete": store._completions_read,
                "callback": store._callback_outcomes_read}[self.jobs[0].kind]
        return [(True, value) for value in read(conn, self.jobs, answer)]

    def __call__(self, conn: Any) -> list[tuple[bool, Any]]:
        try:
            sql, params = self.statement()
            return self.read(conn, conn.execute(sql, params).fetchall())
        except Exception as exc:
            if outage(exc):
                raise
            if not isinstance(exc, WriteEachAlone):
                log.warning("grouped changes failed; applying them one at a time",
                            extra={"kind": self.jobs[0].kind, "changes": len(self.jobs),
                                   "error": describe(exc)})
            conn.execute("ROLLBACK TO job")  # the batch's savepoint for this job: still there
        return [savepointed(conn, job) for job in self.jobs]


class AcceptsInOneStatement:
    """A batch's plain accepts among other changes, in one statement (`ACCEPTS`) when they go in
    a run of one pipeline: the events that are new, and the deliveries of those it stored. The
    same outcome as the shared `_accept_all`'s two inserts (which it runs when applied alone): a
    key stored before (or twice in the batch) is a duplicate of the event stored under it, and
    its deliveries are not stored again."""

    __slots__ = ("store", "jobs", "first")

    def __init__(self, store: PostgresStore, jobs: list[AcceptJob]) -> None:
        self.store = store
        self.jobs = jobs
        self.first: dict[str, str] = {}  # idempotency key -> the id stored (or to be) under it

    def statement(self) -> tuple[str, Sequence[Any]]:
        self.first, fresh = first_of_each_key(self.jobs)
        events = column_arrays([job.event_row() for job in fresh])
        deliveries = column_arrays([(new_id(), e.id, d.route, d.trigger, d.idempotency_key, d.body,
                               d.content_type, e.received_at, d.channel)
                              for job in fresh for e in (job.event,) for d in job.deliveries])
        return ACCEPTS, (*(events or [[]] * 12), *(deliveries or [[]] * 9))

    def read(self, conn: Any, answer: list[tuple[Any, ...]]) -> list[tuple[bool, Any]]:
        store, first = self.store, self.first
        fresh = [job for job in self.jobs if first[job.event.idempotency_key] == job.event.id]
        inserted = {row[0] for row in answer}
        if any(job.deliveries and job.event.id in inserted for job in fresh):
            store._new_work.add(DELIVERIES)
        if len(inserted) < len(fresh):  # some were stored before: find by what
            stored = dict(store._lookup(conn, "idempotency_key", list(first)))
            first.update(stored)
            prints = [job.event.fingerprint for job in fresh
                      if job.event.idempotency_key not in stored and job.event.fingerprint]
            by_print = dict(store._lookup(conn, "fingerprint", prints)) if prints else {}
            for job in fresh:
                key, event = job.event.idempotency_key, job.event
                if event.id in inserted or key in stored:
                    continue
                kept = by_print.get(event.fingerprint or b"")
                if kept is None:  # never answer "stored" for what was not: the sender retries
                    raise psycopg.OperationalError("an event skipped as stored was not found")
                first[key] = kept
        return [(True, Accepted(first[job.event.idempotency_key],
                                duplicate=first[job.event.idempotency_key] != job.event.id))
                for job in self.jobs]

    def __call__(self, conn: Any) -> list[tuple[bool, Any]]:
        return self.store._accept_run(conn, self.jobs)


class OneStatement:
    """A job that is one statement and what is made of its answer (a claim): so a run of them
    can be sent in one pipeline (`PipelinedRun`). `read` may run statements of its own."""

    __slots__ = ("sql", "params", "read")

    def __init__(self, sql: str, params: Sequence[Any],
                 read: Callable[[Any, list[tuple[Any, ...]]], Any]) -> None:
        self.sql = sql
        self.params = params
        self.read = read

    def statement(self) -> tuple[str, Sequence[Any]]:
        return self.sql, self.params

    def __call__(self, conn: Any) -> Any:
        return self.read(conn, conn.execute(self.sql, self.params).fetchall())


class PipelinedRun:
    """Consecutive jobs of a batch that are one statement each (claims, `OneStatement`) or one
    statement and what follows from its answer (a group of changes, `CombinedChanges`), sent in one
    pipeline: one round trip for all, where each waited for its own. The server runs them in the
    batch's order, each seeing what those before it wrote, as before; only reading the answers
    waits until all are sent. What a job does with its answer (a completion's callbacks, a
    claim's probes of paused routes) then comes after the run's last statement rather than
    before the next one, which is an order the batch's changes could have come in, for the
    reason `PostgresStore._apply` gives. Should a statement fail other than by an outage, the
    run is undone and its jobs are applied one at a time, as without the pipeline."""

    __slots__ = ("jobs",)

    def __init__(self, jobs: list[OneStatement | CombinedChanges | AcceptsInOneStatement]) -> None:
        self.jobs = jobs

    def __call__(self, conn: Any) -> list[tuple[bool, Any]]:
        try:
            statements = [job.statement() for job in self.jobs]
        except WriteEachAlone:  # a group that cannot be one statement: as without the pipeline
            return [savepointed(conn, job) for job in self.jobs]
        try:
            answers = conn.answers(statements)
            return [(True, job.read(conn, answer))
                    for job, answer in zip(self.jobs, answers, strict=True)]
        except Exception as exc:
            if outage(exc):
                raise
            log.warning("pipelined changes failed; applying them one at a time",
                        extra={"changes": len(self.jobs), "error": describe(exc)})
            conn.execute("ROLLBACK TO job")  # the batch's savepoint for this run: still there
        return [savepointed(conn, job) for job in self.jobs]


class NotifyingSession:
    """The writer's connection for one batch: at commit, tells the other replicas when the
    batch made work due."""

    def __init__(self, conn: Connection, store: PostgresStore) -> None:
        self.conn = conn
        self.store = store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if sql == "COMMIT" and self.store._new_work:  # which kinds: each replica wakes only those
            self.conn.execute(f"NOTIFY {NOTIFY}, '{','.join(sorted(self.store._new_work))}'")
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def defer(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.defer(sql, rows)

    def answers(self, statements: Sequence[tuple[str, Sequence[Any]]]
                ) -> list[list[tuple[Any, ...]]]:
        return self.conn.answers(statements)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction
