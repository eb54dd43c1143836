"""State changes several jobs share, each written once: a route paused or resumed, an event's
state from its deliveries, a replay superseding the dead deliveries before it."""

from __future__ import annotations

import logging

from bridge.core.models import (
    DeliveryStatus,
    RouteState,
)
from bridge.store.dialect import Session

log = logging.getLogger("bridge.store")


def set_route(conn: Session, route: str, state: RouteState, reason: str | None,
               now: float, next_probe: float | None) -> None:
    current = conn.execute("SELECT state FROM routes WHERE name = {p}", (route,)).fetchone()
    if current is None and state == RouteState.ACTIVE:
        return  # routes are active unless a row says otherwise
    if current is not None and current[0] == state and state == RouteState.ACTIVE:
        return
    conn.execute(
        "INSERT INTO routes (name, state, reason, changed_at, next_probe_at) VALUES ({p},{p},{p},{p},{p})"
        " ON CONFLICT(name) DO UPDATE SET state = excluded.state, reason = excluded.reason,"
        " changed_at = excluded.changed_at, next_probe_at = excluded.next_probe_at",
        (route, state, reason, now, next_probe))
    if state == RouteState.ACTIVE:
        log.info("route resumed", extra={"route": route})
    else:
        log.warning("route paused", extra={"route": route, "reason": reason})

def supersede(conn: Session, delivered_id: str, now: float) -> None:
    """A replay delivered: the dead deliveries of its route made before it are superseded (out
    of the dead letters; a redrive needs force). PostgreSQL's `RECORDS` does the same."""
    conn.execute(
        "UPDATE deliveries SET status = {p}, updated_at = {p} WHERE status = 'dead' AND id IN"
        " (SELECT d.id FROM deliveries d JOIN deliveries r ON r.id = {p}"
        "  WHERE r.replay_of IS NOT NULL AND d.event_id = r.event_id AND d.route = r.route"
        "  AND d.created_at <= r.created_at AND d.id <> r.id)",
        (DeliveryStatus.SUPERSEDED, now, delivered_id))

def refresh_event(conn: Session, event_id: str) -> None:
    conn.execute(
        "UPDATE events SET state = CASE"
        " WHEN EXISTS (SELECT 1 FROM deliveries WHERE event_id = {p}"
        "   AND status IN ('pending', 'leased', 'handed_off')) THEN 'queued'"
        " WHEN EXISTS (SELECT 1 FROM deliveries WHERE event_id = {p} AND status IN ('dead', 'discarded'))"
        "   THEN 'dead'"
        " ELSE 'delivered' END WHERE id = {p}", (event_id, event_id, event_id))
