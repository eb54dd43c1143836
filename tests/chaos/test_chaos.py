"""Chaos at CI-friendly sizes (`make chaos` runs the same with CHAOS_SCALE=10).

* kill -9 the bridge every ~1.5 s under constant load: every acknowledged event is executed
  exactly once and every completion reaches the callback receiver under one webhook-id;
* a random mix of platform faults (500, 503, 429, dropped connections before and after the
  platform executed, slow answers): nothing is lost, nothing runs twice, nothing is dead.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from bridge.devtools.emulator import EmulatorServer
from tests.support.harness import Bridge, github_headers, wait_for
from tests.support.receiver import Receiver
from tests.support.tracking import tracked_config, verified

# Processes killed, cut and restarted under load: these run one after another on one
# worker (`--dist loadgroup`), never beside each other.
pytestmark = pytest.mark.xdist_group("heavy")


SCALE = int(os.environ.get("CHAOS_SCALE", "1"))


class Load:
    """Sends signed issue events one after another until stopped; remembers what got a 2xx."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.acked: set[str] = set()
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                i = self.sent
                self.sent += 1
                body = f'{{"action":"opened","n":{i}}}'.encode()
                try:
                    r = client.post(f"{self.bridge.url}/hooks/github", content=body,
                                    headers=github_headers(body, delivery=f"chaos-{i}",
                                                           event="issues"))
                except httpx.HTTPError:
                    time.sleep(0.05)  # the bridge is down: a real sender retries later
                    continue
                if r.status_code in (200, 202):
                    self.acked.add(f"github:chaos-{i}")
                time.sleep(0.01)


def test_kill_9_every_few_seconds_loses_nothing_and_runs_nothing_twice(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer,
        receiver: Receiver) -> None:
    emulator.emulator.configure(execution_delay=0.3)
    bridge = make_bridge(tracked_config(receiver), process=True)
    load = Load(bridge)
    load.thread.start()
    rounds = 4 * SCALE
    for _ in range(rounds):
        time.sleep(random.uniform(1.0, 2.0))
        bridge.kill()
        bridge.start()
    time.sleep(1.0)
    load.stop.set()
    load.thread.join(10)
    assert len(load.acked) >= 20 * SCALE, "the load should have been acknowledged throughout"
    def called_back() -> bool:  # every stored event's completion delivered to the callback
        details = bridge.details()
        return all([c["status"] for c in e["callbacks"]] == ["delivered"] for e in details)

    wait_for(called_back, timeout=90, interval=1.0)
    executions = emulator.emulator.executions_for("notify")
    executed = Counter(e.input["idempotency_key"] for e in executions)
    stored = {event["idempotency_key"] for event in bridge.events()}
    assert load.acked <= set(executed)  # every acknowledged event ran ...
    assert max(executed.values()) == 1  # ... exactly once
    # A kill between the commit and the answer leaves an event stored but unacknowledged (its
    # sender would retry and get a duplicate); it runs too, and nothing unstored ever runs.
    assert set(executed) <= stored
    assert not [c for c in emulator.emulator.calls if c["status"] == 409]
    ids_per_execution: dict[str, set[str]] = {}
    for message in receiver.accepted():
        execution = verified(message)["data"]["execution"]["id"]
        ids_per_execution.setdefault(execution, set()).add(message["headers"]["webhook-id"])
    assert set(ids_per_execution) == {e.id for e in executions}
    assert all(len(ids) == 1 for ids in ids_per_execution.values())


def test_a_random_mix_of_platform_faults(make_bridge: Callable[..., Bridge],
                                         emulator: EmulatorServer) -> None:
    rng = random.Random(8)
    faults = [{"status": 500}, {"status": 503}, {"status": 429, "retry_after": 0.2},
              {"drop": "before"}, {"drop": "after"}, {"latency": 0.3},
              {"status": 502, "latency": 0.1}, {"latency": 1.5}]  # > the 1 s client timeout
    for _ in range(60 * SCALE):
        emulator.emulator.add_fault(trigger="github-push", count=1, **rng.choice(faults))
    bridge = make_bridge(start=False)
    text = bridge.config_path.read_text().replace("[platform]\n", '[platform]\ntimeout = "1s"\n', 1)
    bridge.config_path.write_text(text)
    bridge.start()
    count = 80 * SCALE

    async def send_all() -> set[str]:
        acked = set()
        async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as client:
            for i in range(count):
                body = f'{{"n":{i}}}'.encode()
                r = await client.post("/hooks/github", content=body,
                                      headers=github_headers(body, delivery=f"fault-{i}"))
                if r.status_code == 202:
                    acked.add(f"github:fault-{i}")
        return acked

    acked = asyncio.run(send_all())
    assert len(acked) == count
    wait_for(lambda: bridge.outbox().get("delivered") == count, timeout=120, interval=0.5)
    executed = Counter(e.input["idempotency_key"] for e in emulator.emulator.executions_for())
    assert set(executed) == acked and max(executed.values()) == 1
    assert bridge.outbox().get("dead", 0) == 0
    attempts = bridge.attempts()
    outcomes = Counter(a["outcome"] for a in attempts)
    assert outcomes["retrylater"] >= 30 * SCALE  # the faults really happened
    errors = [a["error"] for a in attempts if a["error"] is not None]
    assert any(e.startswith("timeout") for e in errors)  # timeouts among them
    bodies: dict[str, set[str]] = {}
    for call in emulator.emulator.calls:
        bodies.setdefault(str(call["key"]), set()).add(str(call["sha256"]))
    assert all(len(b) == 1 for b in bodies.values())  # every retry byte-identical
