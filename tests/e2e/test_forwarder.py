"""The forwarder end to end: real bridge, real emulator, real SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable

from bridge.devtools.emulator import EmulatorServer
from tests.support import http
from tests.support.harness import Bridge, barrier, github_headers, wait_for
from tests.support.load import send_many
from tests.support.signatures import stripe_headers


def calls(emulator: EmulatorServer, trigger: str | None = None) -> list[dict[str, object]]:
    with emulator.emulator.lock:
        return [c for c in emulator.emulator.calls if trigger in (None, c["trigger"])]


def delivery_status(bridge: Bridge, key: str) -> list[tuple[str, str | None]]:
    [line] = bridge.events(key=key)
    return [(d["status"], d["last_error"]) for d in bridge.event(line["id"])["deliveries"]]


def test_an_sdk_signed_event_reaches_the_platform_once_and_intact(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    bridge = make_bridge()
    body = json.dumps({"id": "evt_intact", "type": "charge.succeeded",
                       "data": {"object": {"description": "Café ☕ — 東京", "amount": 1}}},
                      ensure_ascii=False).encode()
    ack = bridge.post("/hooks/stripe", body, stripe_headers(body))
    assert ack.status_code == 202
    wait_for(lambda: emulator.emulator.executions_for("stripe-events"))
    [execution] = emulator.emulator.executions_for("stripe-events")
    sent = execution.input
    assert sent["payload"] == json.loads(body)
    assert sent["payload"]["data"]["object"]["description"] == "Café ☕ — 東京"
    assert sent["id"] == ack.json()["id"] and sent["idempotency_key"] == "stripe:evt_intact"
    assert sent["source"] == "stripe" and sent["event_type"] == "charge.succeeded"
    assert sent["payload_encoding"] == "json"
    assert "stripe-signature" not in sent["headers"]
    [call] = calls(emulator)
    assert call["key"] == "stripe:evt_intact:stripe-events"
    wait_for(lambda: delivery_status(bridge, "stripe:evt_intact") == [("delivered", None)])
    [delivery] = bridge.deliveries()
    assert delivery["execution_id"] == execution.id
    # A redelivery by Stripe is a duplicate: still one execution.
    again = bridge.post("/hooks/stripe", body, stripe_headers(body))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    barrier(bridge, emulator)
    assert [c["key"] for c in calls(emulator) if "barrier" not in str(c["key"])] == [
        "stripe:evt_intact:stripe-events"]


def test_raw_envelope_sends_the_original_bytes(make_bridge: Callable[..., Bridge],
                                               emulator: EmulatorServer) -> None:
    bridge = make_bridge('\n[[routes]]\nsource = "github"\ntrigger = "raw-copy"\n'
                         'envelope = "raw"\nevents = ["issues.*"]\n')
    body = b'{"action":"opened",  "spacing" : "kept"}'
    bridge.post("/hooks/github", body, github_headers(body, delivery="raw", event="issues"))
    wait_for(lambda: calls(emulator, "raw-copy"))
    assert calls(emulator, "raw-copy")[0]["sha256"] == hashlib.sha256(body).hexdigest()
    assert calls(emulator, "github-push") == []  # "issues.opened" does not match that route


def test_retries_after_500s_reuse_key_and_bytes(make_bridge: Callable[..., Bridge],
                                                emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(trigger="github-push", count=2, status=500)
    bridge = make_bridge()
    body = b'{"ref":"retry"}'
    bridge.post("/hooks/github", body, github_headers(body, delivery="r500"))
    wait_for(lambda: delivery_status(bridge, "github:r500") == [("delivered", None)])
    attempts = calls(emulator, "github-push")
    assert [c["status"] for c in attempts] == [500, 500, 202]
    assert len({c["key"] for c in attempts}) == 1
    assert len({c["sha256"] for c in attempts}) == 1
    assert len(emulator.emulator.executions_for()) == 1
    rows = [(a["outcome"], a["status_code"]) for a in bridge.attempts()]
    assert rows == [("retrylater", 500), ("retrylater", 500), ("delivered", 202)]


def test_429_waits_for_retry_after(make_bridge: Callable[..., Bridge],
                                   emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(trigger="github-push", count=1, status=429, retry_after=1)
    bridge = make_bridge()
    body = b'{"ref":"slow down"}'
    bridge.post("/hooks/github", body, github_headers(body, delivery="r429"))
    wait_for(lambda: delivery_status(bridge, "github:r429") == [("delivered", None)])
    first, second = calls(emulator, "github-push")
    assert first["status"] == 429 and second["status"] == 202
    assert float(second["at"]) - float(first["at"]) >= 1.0  # type: ignore[arg-type]
    [delivery] = bridge.deliveries()
    assert delivery["failures"] == 0  # pacing is not a failure


def test_400_is_dead_with_its_reason(make_bridge: Callable[..., Bridge],
                                     emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(trigger="github-push", count=1, status=400)
    bridge = make_bridge()
    body = b'{"ref":"bad"}'
    ack = bridge.post("/hooks/github", body, github_headers(body, delivery="r400")).json()
    wait_for(lambda: delivery_status(bridge, "github:r400")[0][0] == "dead")
    [(status, reason)] = delivery_status(bridge, "github:r400")
    assert "400 injected_fault" in (reason or "")
    assert http.get(ack["status_url"]).json()["state"] == "dead"
    barrier(bridge, emulator)
    assert len(calls(emulator, "github-push")) == 1  # never retried


def test_401_pauses_the_route_until_the_key_works_again(make_bridge: Callable[..., Bridge],
                                                        emulator: EmulatorServer) -> None:
    good_key = emulator.emulator.settings.trigger_key
    emulator.emulator.configure(trigger_key="rotated-elsewhere")
    bridge = make_bridge()
    for i in range(3):
        body = f'{{"n":{i}}}'.encode()
        bridge.post("/hooks/github", body, github_headers(body, delivery=f"p{i}"))
    wait_for(lambda: bridge.routes()["github->github-push"]["state"] == "paused")
    assert bridge.routes()["github->github-push"]["reason"].startswith("401")
    time.sleep(1.0)  # paused: only periodic probes reach the platform, not every delivery
    probes = len(calls(emulator, "github-push"))
    assert 1 <= probes <= 6
    # Each waits for the route; one may be out as the probe of the moment (leased), none more.
    statuses = sorted(bridge.statuses())
    assert statuses in (["pending"] * 3, ["leased", "pending", "pending"])
    emulator.emulator.configure(trigger_key=good_key)
    wait_for(lambda: bridge.statuses() == ["delivered"] * 3)
    assert bridge.routes()["github->github-push"]["state"] == "active"
    assert len(emulator.emulator.executions_for()) == 3


def test_409_is_dead_and_logged_as_an_error(make_bridge: Callable[..., Bridge],
                                            emulator: EmulatorServer) -> None:
    bridge = make_bridge()
    # Something else already used the key this delivery will carry, with another body.
    http.post(f"{emulator.base_url}/workflows/triggers/github-push", content=b'{"other":1}',
               headers={"Authorization": f"Bearer {emulator.emulator.settings.trigger_key}",
                        "Idempotency-Key": "github:r409:github-push"})
    body = b'{"ref":"conflict"}'
    bridge.post("/hooks/github", body, github_headers(body, delivery="r409"))
    wait_for(lambda: delivery_status(bridge, "github:r409")[0][0] == "dead")
    assert "idempotency conflict" in (delivery_status(bridge, "github:r409")[0][1] or "")
    errors = [entry for entry in map(json.loads, filter(lambda line: line.startswith("{"),
                                                        bridge.logs().splitlines()))
              if entry["level"] == "error"]
    assert any("idempotency" in e["msg"] and e["idempotency_key"] == "github:r409:github-push"
               for e in errors)


def test_a_lost_answer_is_retried_without_a_second_execution(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(trigger="github-push", count=1, drop="after")
    bridge = make_bridge()
    body = b'{"ref":"lost answer"}'
    bridge.post("/hooks/github", body, github_headers(body, delivery="lost"))
    wait_for(lambda: delivery_status(bridge, "github:lost") == [("delivered", None)])
    assert len(calls(emulator, "github-push")) == 2
    assert len(emulator.emulator.executions_for()) == 1
    first = bridge.attempts()[0]
    assert first["outcome"] == "retrylater" and "connection error" in first["error"]


def test_unrouted_events_are_stored_and_never_sent(make_bridge: Callable[..., Bridge],
                                                   emulator: EmulatorServer) -> None:
    bridge = make_bridge()
    body = b'{"zen":"unrouted"}'
    ack = bridge.post("/hooks/github", body, github_headers(body, delivery="u1", event="ping"))
    assert ack.status_code == 202
    body = b'{"type":"x"}'
    from tests.support.signatures import standard_headers

    assert bridge.post("/hooks/standard", body, standard_headers(body)).status_code == 202
    barrier(bridge, emulator)
    assert [c for c in calls(emulator) if "barrier" not in str(c["key"])] == []
    unrouted = [e for e in bridge.events() if "barrier" not in e["idempotency_key"]]
    assert [e["state"] for e in unrouted] == ["unrouted", "unrouted"]
    assert all(bridge.event(e["id"])["deliveries"] == [] for e in unrouted)


def test_kill_9_with_deliveries_in_flight_executes_each_exactly_once(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    emulator.emulator.configure(latency=0.3)
    bridge = make_bridge(process=True)
    acked = asyncio.run(send_many(bridge.url, 200, concurrency=32))
    assert len(acked) == 200
    wait_for(lambda: len(calls(emulator)) >= 20)
    bridge.kill()  # with attempts in flight against a slow platform
    emulator.emulator.configure(latency=0.0)
    bridge.start()
    wait_for(lambda: bridge.statuses() == ["delivered"] * 200, timeout=60)
    executions = emulator.emulator.executions_for("github-push")
    assert len(executions) == 200
    executed = sorted(e.input["idempotency_key"] for e in executions)
    assert executed == sorted(acked)  # every acknowledged event, each exactly once
    by_key: dict[str, set[str]] = {}
    for call in calls(emulator):
        by_key.setdefault(str(call["key"]), set()).add(str(call["sha256"]))
    assert all(len(bodies) == 1 for bodies in by_key.values())  # byte-identical retries
    assert not any(c["status"] == 409 for c in calls(emulator))


def test_platform_rate_limit_headers_slow_the_forwarder(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    emulator.emulator.configure(rate_limit=20)  # per minute
    # Following executions spends the same budget (lists and polls are requests too); here only
    # the forwarder's pacing is under test.
    bridge = make_bridge("[tracking]\nenabled = false\n")
    for i in range(30):  # one at a time, so each answer's headers are seen before the next call
        body = f'{{"n":{i}}}'.encode()
        assert bridge.post("/hooks/github", body, github_headers(body, delivery=f"rl{i}")
                           ).status_code == 202
        time.sleep(0.03)
    time.sleep(1.0)
    statuses = [c["status"] for c in calls(emulator)]
    # It held back as X-RateLimit-Remaining ran low, instead of running into 429s.
    assert 429 not in statuses, statuses
    assert 15 <= len(statuses) <= 20
    # Waiting deliveries are not claimed while the forwarder holds back: no lease ages.
    held = bridge.statuses()
    assert held.count("pending") == 30 - len(statuses)
    assert "dead" not in held
