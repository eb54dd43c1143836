"""The admin API, metrics, CLI and config reload, against the real server and emulator."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.devtools.emulator import EmulatorServer
from tests.support import http
from tests.support.admin import ADMIN, ADMIN_TOKEN, AUTH, admin, cli
from tests.support.harness import GITHUB_SECRET, Bridge, barrier, by_id, github_headers, wait_for


def send(bridge: Bridge, i: int, event: str = "push", prefix: str = "adm") -> httpx.Response:
    body = json.dumps({"n": i, "ref": "main"}).encode()
    return bridge.post("/hooks/github", body, github_headers(body, delivery=f"{prefix}-{i}",
                                                             event=event))




@pytest.fixture
def bridge(make_bridge: Callable[..., Bridge]) -> Bridge:
    return make_bridge(ADMIN)


def test_admin_auth(make_bridge: Callable[..., Bridge], bridge: Bridge) -> None:
    assert http.get(f"{bridge.url}/admin/events").status_code == 401
    wrong = http.get(f"{bridge.url}/admin/events", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    basic = http.get(f"{bridge.url}/admin/events",
                      headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
    assert basic.status_code == 401
    assert admin(bridge, "GET", "/admin/events").status_code == 200
    disabled = make_bridge(name="no-admin", admin=False)
    assert http.get(f"{disabled.url}/admin/events", headers=AUTH).status_code == 404


def test_filters_and_cursor_pagination(bridge: Bridge, emulator: EmulatorServer) -> None:
    for i in range(7):
        assert send(bridge, i).status_code == 202
    send(bridge, 100, event="ping")  # unrouted
    first = admin(bridge, "GET", "/admin/events", params={"limit": 3}).json()
    second = admin(bridge, "GET", "/admin/events",
                   params={"limit": 3, "cursor": first["next_cursor"]}).json()
    third = admin(bridge, "GET", "/admin/events",
                  params={"limit": 3, "cursor": second["next_cursor"]}).json()
    ids = [e["id"] for page in (first, second, third) for e in page["events"]]
    assert len(ids) == 8 and len(set(ids)) == 8 and ids == sorted(ids, reverse=True)
    assert third["next_cursor"] is None
    unrouted = admin(bridge, "GET", "/admin/events", params={"state": "unrouted"}).json()
    assert [e["idempotency_key"] for e in unrouted["events"]] == ["github:adm-100"]
    by_key = admin(bridge, "GET", "/admin/events", params={"key": "adm-3"}).json()
    assert [e["idempotency_key"] for e in by_key["events"]] == ["github:adm-3"]
    assert admin(bridge, "GET", "/admin/events", params={"source": "stripe"}).json()[
        "events"] == []
    future = admin(bridge, "GET", "/admin/events", params={"since": time.time() + 60}).json()
    assert future["events"] == []
    bad = admin(bridge, "GET", "/admin/events", params={"since": "yesterday-ish"})
    assert bad.status_code == 400


def test_show_replay_and_bulk_replay(bridge: Bridge, emulator: EmulatorServer) -> None:
    ack = send(bridge, 1).json()
    wait_for(lambda: len(emulator.emulator.executions_for("github-push")) == 1)
    wait_for(lambda: admin(bridge, "GET", f"/admin/events/{ack['id']}").json()["state"]
             == "delivered")
    shown = admin(bridge, "GET", f"/admin/events/{ack['id']}").json()
    assert json.loads(shown["body"]) == {"n": 1, "ref": "main"}
    assert shown["headers"]["x-github-delivery"] == "adm-1"
    assert "x-hub-signature-256" not in shown["headers"]
    assert shown["deliveries"][0]["attempt_log"][0]["status_code"] == 202
    replay = admin(bridge, "POST", f"/admin/events/{ack['id']}/replay").json()
    assert replay["replayed"] == 1
    wait_for(lambda: len(emulator.emulator.executions_for("github-push")) == 2)
    keys = {c["key"] for c in emulator.emulator.calls}
    assert "github:adm-1:github-push" in keys
    assert any(k.startswith("github:adm-1:github-push:replay-") for k in keys)
    assert [d["replay_of"] for d in bridge.deliveries()] == [None, ack["id"]]
    for i in (2, 3):
        send(bridge, i)
    bulk = admin(bridge, "POST", "/admin/events/replay", json={"key": "adm-"}).json()
    assert bulk == {"events": 3, "replayed": 3}
    wait_for(lambda: len(emulator.emulator.executions_for("github-push")) == 2 + 2 + 3)


def test_dead_letters_redrive_and_discard(bridge: Bridge, emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(trigger="github-push", count=2, status=422)
    send(bridge, 1)
    send(bridge, 2)
    wait_for(lambda: len(admin(bridge, "GET", "/admin/dead-letters").json()["dead_letters"]) == 2)
    dead = admin(bridge, "GET", "/admin/dead-letters").json()["dead_letters"]
    assert all("422" in d["last_error"] for d in dead)
    first, second = (d["id"] for d in dead)
    assert admin(bridge, "POST", "/admin/dead-letters/redrive",
                 json={"ids": [first]}).json() == {"redriven": 1}
    wait_for(lambda: by_id(bridge.deliveries())[first]["status"] == "delivered")
    keys = [c["key"] for c in emulator.emulator.calls]
    assert keys.count(dead[0]["idempotency_key"]) == 2  # a redrive reuses the key
    no_reason = admin(bridge, "POST", "/admin/dead-letters/discard", json={"ids": [second]})
    assert no_reason.status_code == 400
    discarded = admin(bridge, "POST", "/admin/dead-letters/discard",
                      json={"all": True, "reason": "customer deleted"}).json()
    assert discarded == {"discarded": 1}
    gone = by_id(bridge.deliveries())[second]
    assert (gone["status"], gone["last_error"]) == ("discarded", "discarded: customer deleted")
    assert admin(bridge, "GET", "/admin/dead-letters").json()["dead_letters"] == []


def test_routes_pause_and_resume(bridge: Bridge, emulator: EmulatorServer) -> None:
    route = "github->github-push"
    paused = admin(bridge, "POST", f"/admin/routes/{route}/pause",
                   json={"reason": "maintenance"}).json()
    assert paused["state"] == "paused"
    send(bridge, 1)
    barrier(bridge, emulator)  # another route's event went through meanwhile
    assert [c for c in emulator.emulator.calls if c["trigger"] == "github-push"] == []
    routes = admin(bridge, "GET", "/admin/routes").json()["routes"]
    state = next(r for r in routes if r["name"] == route)
    assert state["state"] == "paused" and state["reason"] == "maintenance"
    assert state["pending"] == 1
    admin(bridge, "POST", f"/admin/routes/{route}/resume")
    wait_for(lambda: [c for c in emulator.emulator.calls if c["trigger"] == "github-push"])
    assert len([c for c in emulator.emulator.calls if c["trigger"] == "github-push"]) == 1
    assert admin(bridge, "POST", "/admin/routes/nope/pause").status_code == 404


def test_sources_show_counts_and_last_failure_without_secrets(bridge: Bridge) -> None:
    send(bridge, 1)
    body = b'{"forged":true}'
    bridge.post("/hooks/github", body, github_headers(body, secret="guess"))
    sources = {s["name"]: s for s in admin(bridge, "GET", "/admin/sources").json()["sources"]}
    assert sources["github"]["events"] == 1
    assert sources["github"]["last_failure"]["reason"].startswith("invalid_signature")
    assert sources["stripe"]["last_failure"] is None
    assert GITHUB_SECRET not in json.dumps(sources)


def test_openapi_document(bridge: Bridge) -> None:
    doc = admin(bridge, "GET", "/admin/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/admin/dead-letters/redrive" in doc["paths"]


def metric(bridge: Bridge, name: str, **labels: str) -> float:
    text = http.get(f"{bridge.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_metrics_move_as_expected(bridge: Bridge, emulator: EmulatorServer) -> None:
    assert metric(bridge, "bridge_events_accepted_total", source="github") == 0
    send(bridge, 1)
    send(bridge, 1)
    body = b"{}"
    bridge.post("/hooks/github", body, github_headers(body, secret="guess"))
    assert metric(bridge, "bridge_events_received_total", source="github") == 3
    assert metric(bridge, "bridge_events_accepted_total", source="github") == 1
    assert metric(bridge, "bridge_events_duplicate_total", source="github") == 1
    assert metric(bridge, "bridge_events_rejected_total", source="github",
                  reason="invalid_signature") == 1
    assert metric(bridge, "bridge_request_seconds_count", source="github") == 3
    wait_for(lambda: metric(bridge, "bridge_delivery_attempts_total", status_class="2xx") == 1)
    assert metric(bridge, "bridge_outbox_deliveries", status="delivered") == 1
    assert metric(bridge, "bridge_store_batch_size_count") >= 2
    assert metric(bridge, "bridge_route_paused", route="github->github-push") == 0




def test_cli_against_a_running_bridge(bridge: Bridge, emulator: EmulatorServer) -> None:
    acks = [send(bridge, i).json() for i in range(3)]
    listed = cli(bridge, "events", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {e["id"] for e in json.loads(listed.stdout)["events"]} == {a["id"] for a in acks}
    table = cli(bridge, "events", "list", "--source", "github")
    assert table.returncode == 0 and "idempotency_key" in table.stdout
    assert "github:adm-2" in table.stdout
    shown = cli(bridge, "events", "show", acks[0]["id"])
    assert shown.returncode == 0 and "deliveries:" in shown.stdout
    replayed = cli(bridge, "events", "replay", "--key", "adm-", "--json")
    assert replayed.returncode == 0 and json.loads(replayed.stdout) == {"events": 3,
                                                                        "replayed": 3}
    assert "replaying" in replayed.stderr  # the progress bar
    paused = cli(bridge, "routes", "pause", "github->github-push", "--reason", "deploy")
    assert paused.returncode == 0 and "paused" in paused.stdout
    assert "paused" in cli(bridge, "routes", "list").stdout
    assert cli(bridge, "routes", "resume", "github->github-push").returncode == 0
    assert cli(bridge, "dead-letters", "list", "--json").returncode == 0
    pruned = cli(bridge, "prune", "--json")
    assert pruned.returncode == 0 and json.loads(pruned.stdout) == {"removed": 0}
    denied = subprocess.run([sys.executable, "-m", "bridge", "events", "list", "--url",
                             bridge.url, "--token", "wrong-token"], capture_output=True,
                            text=True, timeout=60)
    assert denied.returncode == 1
    assert denied.stderr.strip().startswith("bridge: 401 unauthorized")
    assert len(denied.stderr.strip().splitlines()) == 1


def test_cli_sign_and_send(bridge: Bridge, emulator: EmulatorServer) -> None:
    body = b'{"zen":"Keep it logically awesome."}'
    signed = cli(bridge, "sign", "--provider", "github", "--secret", GITHUB_SECRET, stdin=body)
    assert signed.returncode == 0
    headers = dict(line.split(": ", 1) for line in signed.stdout.strip().splitlines())
    expected = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == f"sha256={expected}"
    assert bridge.post("/hooks/github", body, headers).status_code == 202
    payload = bridge.config_path.parent / "payload.json"
    payload.write_text('{"ref":"refs/heads/send"}')
    sent = cli(bridge, "send", "--source", "github", "--config", str(bridge.config_path),
               str(payload))
    assert sent.returncode == 0 and sent.stdout.startswith("202 ")
    unknown = cli(bridge, "send", "--source", "nope", "--config", str(bridge.config_path),
                  str(payload))
    assert unknown.returncode == 1 and "no source named 'nope'" in unknown.stderr


def test_sighup_reloads_a_good_config_and_keeps_the_old_on_a_bad_one(
        make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(ADMIN, process=True)
    assert bridge.post("/hooks/extra", b"{}", {"X-Webhook-Token": "t"}).status_code == 404
    original = bridge.config_path.read_text()
    bridge.config_path.write_text(original + '\n[[sources]]\nname = "extra"\nprovider = "token"\n'
                                  'secret = "extra-token-value"\n')
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: bridge.post("/hooks/extra", b"{}",
                                 {"X-Webhook-Token": "extra-token-value"}).status_code == 202)
    bridge.config_path.write_text(original + '\n[[sources]]\nname = "broken"\nprovider = "nope"\n')
    bridge.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in bridge.logs())
    # The running config stays: the extra source still works, the broken one does not exist.
    assert bridge.post("/hooks/extra", b"{}", {"X-Webhook-Token": "extra-token-value"}
                       ).status_code in (200, 202)
    assert bridge.post("/hooks/broken", b"{}").status_code == 404
    assert "extra-token-value" not in bridge.logs()


def test_demo_shows_the_whole_path() -> None:
    result = subprocess.run([sys.executable, "-m", "bridge", "demo"], capture_output=True,
                            text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    for step in ("received", "forwarded", "executed", "callback"):
        assert result.stdout.count(f"  {step} ") == 2, result.stdout
    assert result.stdout.count("signature valid") == 2
    assert "duplicate=True; executions at the platform: 1" in result.stdout
