"""Nothing acknowledged is lost: kill -9, store faults answered 503, clean SIGTERM."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable

from tests.support import http
from tests.support.harness import Bridge, github_headers, sqlite_only, wait_for
from tests.support.load import body_for, send_many

NO_ROUTES_CONFIG_TAIL = ""






def test_every_acknowledged_event_survives_kill_9(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(process=True)
    acked: dict[str, int] = {}

    async def load_then_kill() -> None:
        sender = asyncio.create_task(send_many(bridge.url, 600, concurrency=32))
        await asyncio.sleep(0.4)  # mid-load
        bridge.kill()
        acked.update(await sender)

    asyncio.run(load_then_kill())
    assert acked, "the load should have been acknowledged in part before the kill"
    bridge.start()  # the store opens cleanly again after the crash
    stored = {event["idempotency_key"] for event in bridge.events()}
    assert set(acked) <= stored, f"{len(set(acked) - stored)} acknowledged events were lost"
    more = asyncio.run(send_many(bridge.url, 20, start=10_000))
    assert len(more) == 20


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@sqlite_only
def test_a_locked_store_answers_503_and_never_a_false_2xx(
        make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge()
    with subprocess.Popen([sys.executable, "-c", LOCKER, str(bridge.db)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as locker:
        assert locker.stdin is not None and locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        body = b'{"locked":true}'
        response = bridge.post("/hooks/github", body, github_headers(body, delivery="locked"))
        ready = http.get(f"{bridge.url}/readyz", timeout=10)
        locker.stdin.write("\n")
        locker.stdin.flush()
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert response.json()["error"]["code"] == "store_unavailable"
    assert ready.status_code == 503
    assert bridge.events(key="github:locked") == []
    # Once the lock is gone the same delivery is accepted: the sender's retry works.
    retry = bridge.post("/hooks/github", body, github_headers(body, delivery="locked"))
    assert retry.status_code == 202
    assert http.get(f"{bridge.url}/readyz").status_code == 200


@sqlite_only
def test_a_full_store_answers_503_and_keeps_what_it_acknowledged(
        make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(start=False)
    # Cap the database at 256 KiB: a disk that fills up.
    text = bridge.config_path.read_text().replace(
        'busy_timeout = "300ms"', 'busy_timeout = "300ms"\nmax_size_bytes = 262144')
    bridge.config_path.write_text(text)
    bridge.start()
    acked, refused = [], []
    for i in range(200):
        body = body_for(i, size=4000)
        r = bridge.post("/hooks/github", body, github_headers(body, delivery=f"full-{i}"))
        if r.status_code == 202:
            acked.append(f"github:full-{i}")
        else:
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"].isdigit()
            refused.append(i)
    assert acked and refused, "the cap should be reached within 200 events of 4 KB"
    stored = {event["idempotency_key"] for event in bridge.events()}
    assert set(acked) <= stored
    assert not any(f"github:full-{i}" in stored for i in refused)
    # Space returns (here: an operator clears old bodies); the same sender's retry gets in.
    conn = sqlite3.connect(bridge.db)
    conn.execute("UPDATE events SET body = x'' WHERE idempotency_key IN"
                 " (SELECT idempotency_key FROM events ORDER BY received_at LIMIT 30)")
    conn.commit()
    conn.close()
    body = body_for(refused[0], size=4000)
    retry = bridge.post("/hooks/github", body, github_headers(body, delivery=f"full-{refused[0]}"))
    assert retry.status_code == 202
    assert http.get(f"{bridge.url}/readyz").status_code == 200


def test_sigterm_drains_and_exits_0(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge()
    acked = asyncio.run(send_many(bridge.url, 50))
    started = time.monotonic()
    assert bridge.terminate() == 0
    assert time.monotonic() - started < 10
    assert "bridge stopped" in bridge.logs()
    bridge.start()
    stored = {event["idempotency_key"] for event in bridge.events()}
    assert set(acked) <= stored


def test_events_reach_the_store_before_the_ack(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge()
    body = b'{"ref":"now"}'
    ack = bridge.post("/hooks/github", body, github_headers(body, delivery="visible"))
    assert ack.status_code == 202
    # Read by another connection immediately: the commit has happened.
    rows = bridge.query("SELECT id, body FROM events WHERE idempotency_key = 'github:visible'")
    assert rows == [(ack.json()["id"], body)]
    wait_for(lambda: bridge.statuses() == ["delivered"])
