"""The bridge on PostgreSQL: real processes on one database (a schema of its own per test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import http, pg
from tests.support.harness import BASE_CONFIG, free_port, github_headers, wait_for

# Processes killed, cut and restarted under load: these run one after another on one
# worker (`--dist loadgroup`), never beside each other.
pytestmark = pytest.mark.xdist_group("heavy")


ADMIN = "adm-token-5f0e9c1b2a7d"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A schema of the test's own. Tests ask for it before `make_bridge`, so it is dropped after
    their bridges are killed (a drop while replicas still run can deadlock with them)."""
    pg.require()
    with pg.schema() as url:
        yield url


def on_postgres(url: str) -> str:
    return BASE_CONFIG.replace('path = "{db}"', f'url = "{url}"') + f"""
[admin]
tokens = ["{ADMIN}"]
"""


def test_a_bridge_on_postgres_accepts_forwards_and_survives_a_kill(
        pg_url: str, make_bridge: Any, emulator: Any) -> None:
    bridge = make_bridge(base=on_postgres(pg_url), process=True)
    acked = []
    for i in range(20):
        body = json.dumps({"ref": "refs/heads/main", "n": i}).encode()
        r = bridge.post("/hooks/github", body, github_headers(body, delivery=f"pg-{i}"))
        assert r.status_code == 202, r.text
        acked.append(r.json()["id"])
    again = json.dumps({"ref": "refs/heads/main", "n": 0}).encode()
    assert bridge.post("/hooks/github", again, github_headers(again, delivery="pg-0")
                       ).json()["duplicate"] is True
    bridge.kill()  # SIGKILL: whatever was acknowledged is in PostgreSQL
    bridge.start()
    wait_for(lambda: len({c["key"] for c in emulator.emulator.calls}) == 20, timeout=30)
    admin = {"Authorization": f"Bearer {ADMIN}"}

    def all_delivered() -> bool:
        events = http.get(f"{bridge.url}/admin/events?limit=100", headers=admin,
                           timeout=10).json()["events"]
        return len(events) == 20 and all(e["state"] == "delivered" for e in events)
    wait_for(all_delivered, timeout=30)
    assert http.get(f"{bridge.url}/readyz", timeout=10).status_code == 200


def test_three_replicas_take_one_delivery_once(
        pg_url: str, make_bridge: Any, emulator: Any) -> None:
    replicas = [make_bridge(base=on_postgres(pg_url), name=f"replica-{i}") for i in range(3)]
    body = json.dumps({"ref": "refs/heads/main", "n": "same"}).encode()
    headers = github_headers(body, delivery="everywhere")
    answers: list[httpx.Response] = []
    start = threading.Barrier(3)

    def send(replica: Any) -> None:
        start.wait()
        answers.append(replica.post("/hooks/github", body, headers))

    threads = [threading.Thread(target=send, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 202]
    assert len({a.json()["id"] for a in answers}) == 1
    wait_for(lambda: emulator.emulator.calls, timeout=20)
    # Every replica's forwarder runs; the one delivery is claimed by exactly one of them.
    admin = {"Authorization": f"Bearer {ADMIN}"}
    event_id = answers[0].json()["id"]
    wait_for(lambda: http.get(f"{replicas[1].url}/admin/events/{event_id}", headers=admin,
                               timeout=10).json()["state"] == "delivered", timeout=20)
    assert len(emulator.emulator.calls) == 1
    shown = http.get(f"{replicas[2].url}/admin/events/{event_id}", headers=admin,
                      timeout=10).json()
    assert len(shown["deliveries"][0]["attempt_log"]) == 1


@pytest.mark.timeout(300)
def test_the_database_going_away_answers_503_and_the_bridge_recovers(
        make_bridge: Any, emulator: Any, tmp_path: Any) -> None:
    reason = pg.OwnServer.unavailable()
    if reason:
        if os.environ.get("BRIDGE_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    directory = tempfile.mkdtemp(prefix="bridge-pg-")
    server = pg.OwnServer(directory, free_port()).init()
    try:
        bridge = make_bridge(base=on_postgres(server.url), process=True)
        acked: list[str] = []
        refused: list[httpx.Response] = []
        stop = threading.Event()

        def load() -> None:
            i = 0
            with httpx.Client(base_url=bridge.url, timeout=15) as client:
                while not stop.is_set():
                    body = json.dumps({"ref": "refs/heads/main", "n": i}).encode()
                    try:
                        r = client.post("/hooks/github", content=body,
                                        headers=github_headers(body, delivery=f"f-{i}"))
                    except httpx.HTTPError:
                        i += 1
                        continue
                    if r.status_code == 202:
                        acked.append(f"github:f-{i}")
                    else:
                        refused.append(r)
                    i += 1

        sender = threading.Thread(target=load, daemon=True)
        sender.start()
        wait_for(lambda: len(acked) >= 30, timeout=30)
        server.crash()
        wait_for(lambda: len(refused) >= 5, timeout=60)
        assert http.get(f"{bridge.url}/readyz", timeout=15).status_code == 503
        server.start()
        mark = len(acked)
        wait_for(lambda: len(acked) >= mark + 30, timeout=60)  # recovered, no restart
        stop.set()
        sender.join(30)
        assert all(r.status_code == 503 and r.headers.get("retry-after") for r in refused), \
            {r.status_code for r in refused}
        assert all(r.json()["error"]["code"] for r in refused)
        assert http.get(f"{bridge.url}/readyz", timeout=15).status_code == 200
        print(f"acknowledged {len(acked)}, refused {len(refused)} while the database was down")
        # Every acknowledged event was stored and reaches the platform.
        wait_for(lambda: set(acked) <= {c["key"].rsplit(":", 1)[0]
                                        for c in emulator.emulator.calls}, timeout=60)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_pause_through_one_replica_holds_on_all(
        pg_url: str, make_bridge: Any, emulator: Any) -> None:
    from tests.support.signatures import stripe_event, stripe_headers

    a, b, c = (make_bridge(base=on_postgres(pg_url), name=f"replica-{i}") for i in range(3))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert http.post(f"{a.url}/admin/routes/github-push/pause", headers=admin, json={},
                      timeout=10).status_code == 200
    for i, replica in enumerate((b, c)):
        body = json.dumps({"ref": "refs/heads/main", "n": i}).encode()
        assert replica.post("/hooks/github", body, github_headers(
            body, delivery=f"held-{i}")).status_code == 202
    for i, replica in enumerate((b, c)):  # later, on an active route: proof the loops ran
        body = stripe_event(f"evt_after_{i}")
        assert replica.post("/hooks/stripe", body, stripe_headers(body)).status_code == 202
    wait_for(lambda: len([x for x in emulator.emulator.calls
                          if x["trigger"] == "stripe-events"]) == 2, timeout=20)
    assert [x for x in emulator.emulator.calls if x["trigger"] == "github-push"] == []
    routes = http.get(f"{b.url}/admin/routes", headers=admin, timeout=10).json()["routes"]
    assert {r["name"]: r["state"] for r in routes}["github->github-push"] == "paused"
    assert http.post(f"{c.url}/admin/routes/github-push/resume", headers=admin,
                      timeout=10).status_code == 200
    wait_for(lambda: len([x for x in emulator.emulator.calls
                          if x["trigger"] == "github-push"]) == 2, timeout=20)


@pytest.mark.timeout(300)
def test_replicas_killed_under_load_lose_and_double_nothing(
        pg_url: str, make_bridge: Any, emulator: Any) -> None:
    replicas = [make_bridge(base=on_postgres(pg_url), name=f"replica-{i}", process=True) for i in range(3)]
    acked: list[str] = []
    stop = threading.Event()

    def load(n: int) -> None:
        i = 0
        while not stop.is_set():
            replica = replicas[(i + n) % 3]
            body = json.dumps({"ref": "refs/heads/main", "n": f"{n}-{i}"}).encode()
            try:
                r = http.post(f"{replica.url}/hooks/github", content=body, timeout=10,
                               headers=github_headers(body, delivery=f"k-{n}-{i}"))
                if r.status_code == 202:
                    acked.append(f"github:k-{n}-{i}")
            except httpx.HTTPError:
                pass
            i += 1

    senders = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(3)]
    for t in senders:
        t.start()
    for round_ in range(3):
        mark = len(acked)
        wait_for(lambda: len(acked) >= mark + 40, timeout=60)  # noqa: B023
        victim = replicas[round_ % 3]
        victim.kill()  # SIGKILL, leases and all
        mark = len(acked)
        wait_for(lambda: len(acked) >= mark + 20, timeout=60)  # noqa: B023
        victim.start()
    stop.set()
    for t in senders:
        t.join(30)
    assert len(acked) >= 180

    def executed() -> Counter[str]:
        return Counter(e.input["idempotency_key"] for e in emulator.emulator.executions_for())
    wait_for(lambda: set(acked) <= set(executed()), timeout=120, interval=0.5)
    assert max(executed().values()) == 1


def test_an_accept_on_one_replica_wakes_the_forwarder_of_another(
        pg_url: str, make_bridge: Any, emulator: Any) -> None:
    """Replica A does not forward; B polls only every 30 s, so only the NOTIFY that A's commit
    sends can make B deliver within seconds."""
    quiet = on_postgres(pg_url).replace('poll_interval = "100ms"', 'poll_interval = "30s"')
    a = make_bridge(base=quiet.replace("[forwarder]", "[forwarder]\nenabled = false"),
                    name="accepts")
    make_bridge(base=quiet, name="forwards")
    time.sleep(1)  # both idle: B's next poll is 30 s away
    body = json.dumps({"ref": "refs/heads/main", "n": "notify"}).encode()
    started = time.monotonic()
    assert a.post("/hooks/github", body, github_headers(body, delivery="n-1")).status_code == 202
    wait_for(lambda: emulator.emulator.calls, timeout=10)
    assert time.monotonic() - started < 10


@pytest.mark.timeout(300)
def test_store_copy_keeps_the_dedupe_history_and_reruns_double_nothing(
        pg_url: str, make_bridge: Any, emulator: Any, tmp_path: Any) -> None:
    old = make_bridge(f"""
[admin]
tokens = ["{ADMIN}"]
""", name="sqlite", sqlite=True)  # the store copied from is SQLite, whatever the suite runs on
    status_urls = []
    for i in range(300):
        body = json.dumps({"ref": "refs/heads/main", "n": i}).encode()
        r = old.post("/hooks/github", body, github_headers(body, delivery=f"c-{i}"))
        assert r.status_code == 202
        status_urls.append(r.json()["status_url"])
    wait_for(lambda: len(emulator.emulator.calls) >= 300, timeout=60)
    old.terminate()
    command = [sys.executable, "-m", "bridge", "store", "copy", "--from", str(old.db),
               "--to", pg_url]
    # Interrupted: killed as soon as it has started, then run again to the end.
    interrupted = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    assert interrupted.stderr is not None
    interrupted.stderr.readline()
    interrupted.kill()
    interrupted.communicate(timeout=10)
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert all(part.endswith("+0") for part in again.stdout.strip().split(": ", 2)[2]
               .split(", ")), again.stdout  # everything was there: nothing doubled
    new = make_bridge(base=on_postgres(pg_url), name="postgres")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    events = []
    cursor = None
    while True:
        page = http.get(f"{new.url}/admin/events", headers=admin, timeout=10,
                         params={"limit": 500, **({"cursor": cursor} if cursor else {})}).json()
        events += page["events"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(events) == 300 and all(e["state"] == "delivered" for e in events)
    # A provider's retry after the move is still a duplicate, and old status links still work.
    body = json.dumps({"ref": "refs/heads/main", "n": 7}).encode()
    assert new.post("/hooks/github", body, github_headers(body, delivery="c-7")
                    ).json()["duplicate"] is True
    status_url = status_urls[7].replace(old.url, new.url)
    assert http.get(status_url, timeout=10).json()["state"] == "delivered"
    shown = http.get(f"{new.url}/admin/events/{events[0]['id']}", headers=admin,
                      timeout=10).json()
    assert shown["deliveries"][0]["attempt_log"]


def test_replicas_share_one_rate_limit(pg_url: str, make_bridge: Any, emulator: Any) -> None:
    """`rate_limit = 60` (a minute's worth: 1/s, at most 6 at once) holds for all replicas
    together: two replicas with a backlog send what one bucket allows, not twice that."""
    paced = on_postgres(pg_url).replace('[platform]', '[platform]\nrate_limit = 60')
    a, b = (make_bridge(base=paced, name=f"paced-{i}") for i in range(2))
    for i in range(30):
        replica = (a, b)[i % 2]
        body = json.dumps({"ref": "refs/heads/main", "n": i}).encode()
        assert replica.post("/hooks/github", body, github_headers(
            body, delivery=f"rate-{i}")).status_code == 202
    wait_for(lambda: len(emulator.emulator.calls) >= 10, timeout=30)
    times = sorted(c["at"] for c in emulator.emulator.calls)
    first = times[0]
    within = [t for t in times if t - first <= 4.0]
    # One bucket: 6 at once, then one a second (+1 for timing at the edge of the window).
    assert len(within) <= 6 + 4 + 1, [(round(c["at"] - first, 2), c["status"])
                                      for c in emulator.emulator.calls]
    assert 429 not in {c["status"] for c in emulator.emulator.calls}
