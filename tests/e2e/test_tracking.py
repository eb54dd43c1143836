"""Execution tracking and signed callbacks: real bridge, real emulator, real callback receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from bridge.devtools.emulator import EmulatorServer
from tests.support import http
from tests.support.harness import TRIGGER_KEY, Bridge, github_headers, wait_for
from tests.support.receiver import Receiver
from tests.support.tracking import send_issue, tracked_config, verified

PUSH_SECRET = "whsec_cHVzaC1zZWNyZXQtZm9yLXRlc3RzLTAxMjM0NTY3"








def test_completion_reaches_the_callback_signed_once(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    bridge = make_bridge(tracked_config(receiver))
    ack = send_issue(bridge, "track-1").json()
    wait_for(lambda: receiver.accepted())
    # Recorded as delivered: the bridge is done with it, so no second message can follow.
    wait_for(lambda: [c["status"] for c in bridge.callbacks()] == ["delivered"])
    [message] = receiver.all()
    payload = verified(message)
    assert payload["type"] == "execution.completed"
    data = payload["data"]
    assert data["trigger"] == "notify"
    assert data["event"]["idempotency_key"] == "github:track-1"
    assert data["execution"]["status"] == "completed"
    assert data["execution"]["output"]["echo"]["payload"]["issue"]["title"] == "Ünïcode ✓"
    [execution] = emulator.emulator.executions_for("notify")
    assert data["execution"]["id"] == execution.id
    assert message["headers"]["webhook-id"]
    shown = http.get(ack["status_url"]).json()
    delivery = shown["deliveries"][0]
    assert delivery["execution"]["status"] == "completed"
    assert delivery["execution"]["output"]["echo"]["payload"]["issue"]["title"] == "Ünïcode ✓"
    assert shown["callbacks"][0]["status"] == "delivered"


def test_a_failing_workflow_sends_execution_failed(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    emulator.emulator.configure(failing_triggers=["notify"])
    bridge = make_bridge(tracked_config(receiver))
    send_issue(bridge, "fail-1")
    wait_for(lambda: receiver.accepted())
    payload = verified(receiver.accepted()[0])
    assert payload["type"] == "execution.failed"
    assert payload["data"]["execution"]["status"] == "failed"


def test_an_execution_that_never_ends_times_out(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    emulator.emulator.configure(hanging_triggers=["notify"])
    bridge = make_bridge(tracked_config(receiver, tracking='deadline = "1500ms"'))
    send_issue(bridge, "hang-1")
    wait_for(lambda: receiver.accepted(), timeout=20)
    payload = verified(receiver.accepted()[0])
    assert payload["type"] == "execution.timed_out"
    assert [x["status"] for x in bridge.executions()] == ["timed_out"]


def test_a_503_callback_is_retried_with_the_same_id_and_a_fresh_signature(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    receiver.fail_next = [503]
    bridge = make_bridge(tracked_config(receiver))
    send_issue(bridge, "cb-503")
    wait_for(lambda: receiver.accepted(), timeout=20)
    first, second = receiver.all()
    assert (first["status"], second["status"]) == (503, 200)
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["body"] == second["body"]
    # Both verify on their own timestamp; the signature changes whenever the timestamp does.
    verified(first)
    verified(second)
    wait_for(lambda: [(c["status"], c["attempts"]) for c in bridge.callbacks()]
             == [("delivered", 2)])


@pytest.mark.parametrize("mode", ["drop", "unavailable"])
def test_polling_finishes_when_the_stream_fails(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver,
        mode: str) -> None:
    emulator.emulator.configure(stream_mode=mode, execution_delay=0.8)
    bridge = make_bridge(tracked_config(receiver))
    send_issue(bridge, f"stream-{mode}")
    wait_for(lambda: receiver.accepted(), timeout=20)
    assert verified(receiver.accepted()[0])["type"] == "execution.completed"
    assert [x["checks"] > 0 for x in bridge.executions()] == [True]  # it polled


@pytest.mark.parametrize("mode", ["full", "summary", "unavailable", "error"])
def test_a_burst_of_executions_is_followed_by_listing(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver,
        mode: str) -> None:
    """Executions starting faster than one per `list_every` are followed by listing the
    trigger's executions, not a stream each; a list without results, or none at all, falls
    back to reading each execution. Every callback carries the execution's real output."""
    emulator.emulator.configure(execution_delay=0.3, list_mode=mode)
    bridge = make_bridge(tracked_config(receiver))
    count = 40
    for i in range(count):
        assert send_issue(bridge, f"many-{i}").status_code == 202
    wait_for(lambda: len(receiver.accepted()) >= count, timeout=30)
    payloads = [verified(m) for m in receiver.accepted()]
    assert sorted(p["data"]["event"]["idempotency_key"] for p in payloads) == sorted(
        f"github:many-{i}" for i in range(count))
    for payload in payloads:
        assert payload["type"] == "execution.completed"
        echoed = payload["data"]["execution"]["output"]["echo"]["payload"]["issue"]
        assert echoed["delivery"] == payload["data"]["event"]["idempotency_key"][7:]
    reads = emulator.emulator.reads
    assert reads["list"] >= 1
    if mode == "full":  # the first few streamed, until the rate was known; the rest were listed
        assert reads["stream"] + reads["get"] < count / 2, reads
    elif mode == "summary":  # listed, then each finished one fetched for its output
        assert reads["get"] >= count / 2, reads
    elif mode == "unavailable":  # asked once, then never again
        assert reads["list"] == 1 and reads["stream"] + reads["get"] >= count, reads
    else:  # lists that fail show nothing: each followed alone after two
        assert reads["list"] >= 2 and reads["stream"] >= count / 2, reads
    assert {e["status"] for e in bridge.executions()} == {"completed"}


def test_list_every_0s_always_streams(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    emulator.emulator.configure(execution_delay=0.3)
    bridge = make_bridge(tracked_config(receiver, tracking='list_every = "0s"'))
    for i in range(20):
        assert send_issue(bridge, f"never-{i}").status_code == 202
    wait_for(lambda: len(receiver.accepted()) >= 20, timeout=30)
    reads = emulator.emulator.reads
    assert reads["list"] == 0 and reads["stream"] >= 20, reads


def test_executions_a_list_cannot_hold_are_followed_alone(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    """With more executions running than one list shows (`list_limit`), the older ones drop
    off the lists and are followed with a stream each; none is lost or finished twice. The
    executions run until the bridge has listed them all, so a slow machine (a slower send rate)
    cannot let the lists hold more of them than the test means to."""
    emulator.emulator.configure(finish_at=time.time() + 600)
    bridge = make_bridge(tracked_config(receiver, tracking="list_limit = 10"))
    count = 40
    for i in range(count):
        assert send_issue(bridge, f"over-{i}").status_code == 202
    wait_for(lambda: len(bridge.executions()) >= count, timeout=30)
    lists = emulator.emulator.reads["list"]
    wait_for(lambda: emulator.emulator.reads["list"] >= lists + 3, timeout=10)
    emulator.emulator.end_now("notify")
    wait_for(lambda: len(receiver.accepted()) >= count, timeout=30)
    keys = [verified(m)["data"]["event"]["idempotency_key"] for m in receiver.accepted()]
    assert sorted(keys) == sorted(f"github:over-{i}" for i in range(count))
    reads = emulator.emulator.reads
    assert reads["list"] >= 1 and reads["stream"] >= count - 10 - 5, reads


def test_others_executions_push_no_watched_one_off_the_lists(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    """Executions the bridge does not follow (another client's, on the same trigger) start after
    its own and fill a list sized for its own. It asks for longer lists instead of following
    each of its own with a stream; none is lost or finished twice."""
    emulator.emulator.configure(finish_at=time.time() + 600)
    # Each watch lasts half a lease: 15 s, longer than the test, so no execution is given back
    # and taken up again meanwhile (by then the start rate has fallen, and it would stream).
    bridge = make_bridge(tracked_config(receiver).replace('lease = "2s"', 'lease = "30s"'))
    count, others = 20, 120
    for i in range(count):
        assert send_issue(bridge, f"mine-{i}").status_code == 202
    wait_for(lambda: len(bridge.executions()) >= count, timeout=30)
    lists = emulator.emulator.reads["list"]
    wait_for(lambda: emulator.emulator.reads["list"] >= lists + 2, timeout=10)  # all listed
    streams = emulator.emulator.reads["stream"]
    with httpx.Client(base_url=emulator.base_url, timeout=10) as platform:
        for i in range(others):
            answer = platform.post("/workflows/triggers/notify", json={"other": i}, headers={
                "Authorization": f"Bearer {TRIGGER_KEY}", "Idempotency-Key": f"other-{i}"})
            assert answer.status_code in (200, 201, 202), answer.text
    lists = emulator.emulator.reads["list"]
    reads = emulator.emulator.reads  # five more lists, or the bridge gave up listing its own
    wait_for(lambda: reads["list"] >= lists + 5 or reads["stream"] > streams, timeout=10)
    emulator.emulator.end_now("notify")
    wait_for(lambda: len(receiver.accepted()) >= count, timeout=30)
    keys = [verified(m)["data"]["event"]["idempotency_key"] for m in receiver.accepted()]
    assert sorted(keys) == sorted(f"github:mine-{i}" for i in range(count))
    # Counted as misses, the 120 newer ones would have sent every one of the 20 to a stream.
    assert emulator.emulator.reads["stream"] - streams <= 2, emulator.emulator.reads
    assert {e["status"] for e in bridge.executions()} == {"completed"}


def test_tracking_survives_kill_9(make_bridge: Callable[..., Bridge], emulator: EmulatorServer,
                                  receiver: Receiver) -> None:
    emulator.emulator.configure(execution_delay=3.0)
    bridge = make_bridge(tracked_config(receiver), process=True)
    for i in range(5):
        assert send_issue(bridge, f"kill-{i}").status_code == 202
    wait_for(lambda: len(bridge.executions()) == 5)
    bridge.kill()  # while every execution is still running
    assert receiver.all() == []
    bridge.start()
    wait_for(lambda: len(receiver.accepted()) >= 5, timeout=30)
    wait_for(lambda: [c["status"] for c in bridge.callbacks()] == ["delivered"] * 5)
    ids = [m["headers"]["webhook-id"] for m in receiver.all()]
    assert len(ids) == 5 and len(set(ids)) == 5  # each completion delivered once
    executions = {verified(m)["data"]["execution"]["id"] for m in receiver.all()}
    assert executions == {e.id for e in emulator.emulator.executions_for("notify")}


def test_wait_returns_the_output_or_202(make_bridge: Callable[..., Bridge],
                                        emulator: EmulatorServer, receiver: Receiver) -> None:
    emulator.emulator.configure(execution_delay=0.2)
    bridge = make_bridge(tracked_config(receiver))
    fast = send_issue(bridge, "wait-fast", "?wait=10")
    assert fast.status_code == 200
    result = fast.json()
    assert result["state"] == "delivered" and result["duplicate"] is False
    execution = result["deliveries"][0]["execution"]
    assert execution["status"] == "completed"
    assert execution["output"]["echo"]["payload"]["action"] == "opened"
    emulator.emulator.configure(execution_delay=5.0)
    started = time.monotonic()
    slow = send_issue(bridge, "wait-slow", "?wait=1")
    assert slow.status_code == 202 and 0.9 <= time.monotonic() - started < 4
    assert "status_url" in slow.json()
    assert len(bridge.events(key="github:wait-slow")) == 1
    assert send_issue(bridge, "wait-bad", "?wait=600").status_code == 400


def test_a_push_and_a_poll_make_one_completion(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    emulator.emulator.configure(hanging_triggers=["notify"])
    bridge = make_bridge(tracked_config(receiver), start=False)
    text = bridge.config_path.read_text().replace(
        "[platform]\n", f'[platform]\nwebhook_secret = "{PUSH_SECRET}"\n', 1)
    bridge.config_path.write_text(text)
    bridge.start()
    send_issue(bridge, "push-1")
    wait_for(lambda: bridge.executions())
    [execution_id] = [x["id"] for x in bridge.executions()]
    body = json.dumps({"type": "execution.completed",
                       "data": {"execution_id": execution_id, "status": "completed",
                                "output": {"pushed": True}}})
    from datetime import UTC, datetime

    def push(msg_id: str) -> httpx.Response:
        signature = Webhook(PUSH_SECRET).sign(msg_id, datetime.now(tz=UTC), body)
        return bridge.post("/platform/events", body.encode(),
                           {"webhook-id": msg_id, "webhook-timestamp": str(int(time.time())),
                            "webhook-signature": signature})

    first = push("msg-1")
    assert first.status_code == 200 and first.json()["duplicate"] is False
    again = push("msg-2")
    assert again.json()["duplicate"] is True
    wait_for(lambda: receiver.accepted())
    # Completed once, its one callback recorded delivered: the tracker, polling the (hanging)
    # execution meanwhile, has nothing left to complete.
    wait_for(lambda: [c["status"] for c in bridge.callbacks()] == ["delivered"])
    assert [x["status"] for x in bridge.executions()] == ["completed"]
    assert len(receiver.all()) == 1
    assert verified(receiver.all()[0])["data"]["execution"]["output"] == {"pushed": True}
    forged = bridge.post("/platform/events", body.encode(),
                         {"webhook-id": "m", "webhook-timestamp": str(int(time.time())),
                          "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="})
    assert forged.status_code == 401


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://10.0.0.1/x",
                                 "http://169.254.169.254/latest/meta-data"])
def test_sender_callback_urls_to_private_addresses_are_refused(
        make_bridge: Callable[..., Bridge], receiver: Receiver, url: str) -> None:
    bridge = make_bridge(tracked_config(receiver))
    response = bridge.post(f"/hooks/zap?callback_url={url}", b'{"a":1}',
                           {"X-Webhook-Token": "zap-token", "X-Request-Id": "r1"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "callback_not_allowed"


def test_a_name_resolving_to_loopback_is_refused_at_send_time(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    bridge = make_bridge(tracked_config(receiver, callbacks="allowed_ports = []"))
    port = receiver.url.rsplit(":", 1)[1]
    response = bridge.post(f"/hooks/zap?callback_url=http://localhost:{port}/sender",
                           b'{"a":1}', {"X-Webhook-Token": "zap-token", "X-Request-Id": "r2"})
    assert response.status_code == 202
    wait_for(lambda: [c["status"] for c in bridge.callbacks()] == ["dead"], timeout=20)
    [error] = [c["last_error"] for c in bridge.callbacks()]
    assert "non-public" in error and "127.0.0.1" in error  # the detail, for operators
    assert receiver.all() == []  # nothing reached the loopback receiver
    # The sender's status page says only that it was not delivered: no reason, no address.
    view = http.get(response.json()["status_url"]).json()
    assert view["callbacks"] == [{"status": "dead", "attempts": 1}]


def test_private_callbacks_work_when_allowed(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    bridge = make_bridge(tracked_config(receiver, callbacks="allow_private = true\n"
                                                           "allowed_ports = []"))
    response = bridge.post(f"/hooks/zap?callback_url={receiver.url}/mine", b'{"a":1}',
                           {"X-Webhook-Token": "zap-token", "X-Request-Id": "r3"})
    assert response.status_code == 202
    wait_for(lambda: receiver.accepted())
    assert receiver.accepted()[0]["path"] == "/mine"


def test_callback_url_needs_an_allowing_source(make_bridge: Callable[..., Bridge],
                                               receiver: Receiver) -> None:
    bridge = make_bridge(tracked_config(receiver))
    body = b'{"a":1}'
    refused = bridge.post("/hooks/github?callback_url=https://x.example.com/cb", body,
                          github_headers(body))
    assert refused.status_code == 400
    outside = bridge.post("/hooks/zap?callback_url=ftp://x.example.com/cb", body,
                          {"X-Webhook-Token": "zap-token"})
    assert outside.status_code == 400
