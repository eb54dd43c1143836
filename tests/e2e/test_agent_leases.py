"""Hardening II for channels: a stolen agent token, a misbehaving agent and a fake edge.

The edge is the real bridge; the agent is the real `bridge agent` process; requests an agent
would sign are signed with Standard Webhooks' own library. A stolen token may at worst delay
events, never drop or forge them; a batch is checked field by field before anything of it runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.delivery.platform import trigger_path
from tests.support import http
from tests.support.harness import TRIGGER_KEY, Bridge, free_port, github_headers, wait_for
from tests.support.receiver import Receiver

AGENT_TOKEN = "agent-token-plant-a-leases-91"
SECRET = "whsec_" + base64.b64encode(b"plant-a-lease-signing-key-000").decode()
ADMIN = "adm-test-reads-5d2e"
CHANNEL = f"""
[[channels]]
name = "plant-a"
tokens = ["{AGENT_TOKEN}"]
signing_secret = "{SECRET}"
report_within = "1s"

[[routes]]
source = "github"
trigger = "onprem-push"
channel = "plant-a"
"""


def signed(payload: Any, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    msg_id, now = f"msg_{time.time_ns()}", dt.datetime.now(tz=dt.UTC)
    return body, {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                  "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode())}


def call(bridge: Bridge, action: str, payload: Any, *, sign: bool = True) -> httpx.Response:
    body, headers = signed(payload) if sign else (json.dumps(payload).encode(), {})
    return http.post(f"{bridge.url}/agent/v1/channels/plant-a/{action}", content=body,
                      timeout=30, headers={"Authorization": f"Bearer {AGENT_TOKEN}",
                                           "Content-Type": "application/json", **headers})


def delivery(bridge: Bridge, event_id: str) -> dict[str, Any]:
    event = http.get(f"{bridge.url}/admin/events/{event_id}", timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}).json()
    [found] = [d for d in event["deliveries"] if d["trigger"] == "onprem-push"]
    return found  # type: ignore[no-any-return]


def ignored(bridge: Bridge, kind: str) -> float:
    text = http.get(f"{bridge.url}/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {ADMIN}"}).text
    line = 'bridge_channel_ignored_total{channel="plant-a",kind="' + kind + '"} '
    match = re.search(re.escape(line) + r"(\S+)", text)
    return float(match.group(1)) if match else 0.0


def push(bridge: Bridge, delivery_id: str) -> str:
    body = json.dumps({"ref": delivery_id}).encode()
    answer = bridge.post("/hooks/github", body, github_headers(body, delivery=delivery_id))
    assert answer.status_code == 202
    return str(answer.json()["id"])


def attempt_report(item: dict[str, Any], state: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "attempt", "delivery_id": item["delivery_id"],
            "generation": item["generation"], "state": state, "tracked": False,
            "attempt": {"started_at": time.time(), "latency_ms": 1.0, "outcome": state,
                        "status_code": 202}, **extra}


# -- 1. the agent's way back to the edge ----------------------------------------------------------

def test_a_stolen_token_alone_writes_nothing(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(CHANNEL)
    event_id = push(bridge, "stolen-1")
    pending = delivery(bridge, event_id)
    forged = {"agent": "other", "limit": 0,
              "ack": [{"delivery_id": pending["id"], "generation": 1.0}]}
    for action, payload in (("pull", forged), ("report", {"agent": "other", "reports": []})):
        refused = call(bridge, action, payload, sign=False)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_signature"
    body, headers = signed(forged, "whsec_" + base64.b64encode(b"a-guess" * 4).decode())
    wrong = http.post(f"{bridge.url}/agent/v1/channels/plant-a/pull", content=body, timeout=30,
                       headers={"Authorization": f"Bearer {AGENT_TOKEN}", **headers})
    assert wrong.status_code == 401
    assert delivery(bridge, event_id)["status"] == "pending"


def test_acks_and_reports_must_answer_the_agents_own_lease(
        make_bridge: Callable[..., Bridge]) -> None:
    """Signed, but from an agent that holds no lease: nothing is handed off or forged, and
    each is counted."""
    bridge = make_bridge(CHANNEL)
    never_pulled = delivery(bridge, push(bridge, "lease-1"))
    leased_event = push(bridge, "lease-2")
    # Agent "a" pulls both; "other" tries to ack and report what it never held.
    batch = call(bridge, "pull", {"agent": "a", "limit": 1}).json()["items"]
    [held] = batch
    assert held["delivery_id"] == never_pulled["id"]
    second = call(bridge, "pull", {"agent": "b", "limit": 1}).json()["items"]
    assert [i["event_id"] for i in second] == [leased_event]
    acks = [{"delivery_id": held["delivery_id"], "generation": held["generation"]},
            {"delivery_id": second[0]["delivery_id"],
             "generation": second[0]["generation"]}]
    assert call(bridge, "pull", {"agent": "other", "limit": 0, "ack": acks}).status_code == 200
    assert ignored(bridge, "acks") == 2
    # A replayed or late ack of another generation hands nothing off either.
    stale = [{"delivery_id": held["delivery_id"], "generation": held["generation"] - 1}]
    call(bridge, "pull", {"agent": "a", "limit": 0, "ack": stale})
    assert ignored(bridge, "acks") == 3
    assert delivery(bridge, held["event_id"])["status"] == "leased"
    # Reports of an outcome for a delivery "other" never held, and of its execution.
    forged = call(bridge, "report", {"agent": "other", "reports": [
        attempt_report(held, "delivered", execution_id="exe_forged"),
        {"kind": "execution", "execution_id": "exe_forged",
         "result": {"status": "completed", "output": {"approved": True}}}]}).json()
    assert forged == {"received": 2, "applied": 0, "ignored": 2}
    shown = delivery(bridge, held["event_id"])
    assert shown["status"] == "leased" and shown["execution_id"] is None
    # The agent that holds it: acked, reported, delivered.
    ack = [{"delivery_id": held["delivery_id"], "generation": held["generation"]}]
    call(bridge, "pull", {"agent": "a", "limit": 0, "ack": ack})
    assert delivery(bridge, held["event_id"])["status"] == "handed_off"
    done = call(bridge, "report", {"agent": "a", "reports": [
        attempt_report(held, "delivered", execution_id="exe_real")]}).json()
    assert done == {"received": 1, "applied": 1, "ignored": 0}
    assert delivery(bridge, held["event_id"])["execution_id"] == "exe_real"


def test_a_hand_off_with_no_report_goes_back_to_the_channel(
        make_bridge: Callable[..., Bridge]) -> None:
    """`report_within` (1s here): an agent that acked and then went silent delays the event,
    and it goes to an agent again, with the same key."""
    bridge = make_bridge(CHANNEL)
    event_id = push(bridge, "silent-1")
    [item] = call(bridge, "pull", {"agent": "a", "limit": 10}).json()["items"]
    ack = [{"delivery_id": item["delivery_id"], "generation": item["generation"]}]
    assert call(bridge, "pull", {"agent": "a", "limit": 0, "ack": ack}).status_code == 200
    assert delivery(bridge, event_id)["status"] == "handed_off"
    again = wait_for(lambda: call(bridge, "pull", {"agent": "b", "limit": 10}).json()["items"],
                     timeout=30)
    assert [i["delivery_id"] for i in again] == [item["delivery_id"]]
    assert again[0]["idempotency_key"] == item["idempotency_key"]
    assert again[0]["generation"] == item["generation"]


def test_a_refused_batch_goes_back_to_the_channel_at_once(
        make_bridge: Callable[..., Bridge]) -> None:
    """An agent that cannot verify its batch hands it back (`refused`, with a pull that takes
    nothing): the next agent gets it now, not when the 30 s lease runs out; and a refusal of a
    lease the agent does not hold, or of another generation, releases nothing."""
    bridge = make_bridge(CHANNEL)
    first, second = push(bridge, "refused-1"), push(bridge, "refused-2")
    batch = call(bridge, "pull", {"agent": "bad", "limit": 10}).json()["items"]
    assert [i["event_id"] for i in batch] == [first, second]
    assert call(bridge, "pull", {"agent": "good", "limit": 10}).json()["items"] == []  # leased
    one, two = ({"delivery_id": i["delivery_id"], "generation": i["generation"]} for i in batch)
    # Not its lease, or another generation: nothing released.
    assert call(bridge, "pull", {"agent": "good", "limit": 0, "refused": [one]}).status_code == 200
    stale = {**two, "generation": two["generation"] - 1}
    assert call(bridge, "pull", {"agent": "bad", "limit": 0, "refused": [stale]}
                ).status_code == 200
    assert call(bridge, "pull", {"agent": "good", "limit": 10}).json()["items"] == []
    # The holder hands both back; the other agent takes them at once, same keys.
    handed = call(bridge, "pull", {"agent": "bad", "limit": 0, "refused": [one, two]})
    assert handed.status_code == 200 and handed.json()["items"] == []
    again = call(bridge, "pull", {"agent": "good", "limit": 10}).json()["items"]
    assert [(i["delivery_id"], i["idempotency_key"]) for i in again] == [
        (i["delivery_id"], i["idempotency_key"]) for i in batch]
    assert "an agent refused its batch" in bridge.logs()
    bad = call(bridge, "pull", {"agent": "bad", "limit": 0, "refused": "everything"})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("refused:")


# -- 2. the agent trusts no field of a signed batch ------------------------------------------------

@pytest.mark.parametrize("name", ["../../../../admin/drop?x=", "a b/%2e%2e/%2e%2e/x", "..", ".",
                                  "x/y", "", "a" * 201, "a\r\nb"])
def test_no_trigger_name_leaves_the_triggers_path(name: str) -> None:
    with pytest.raises(Exception, match="not a valid trigger name"):
        trigger_path(name)


@pytest.mark.parametrize(("name", "path"), [("deploy", "deploy"), ("a.b-c_d", "a.b-c_d")])
def test_a_trigger_name_is_one_path_segment(name: str, path: str) -> None:
    assert trigger_path(name) == path


class FakeEdge:
    """An edge that holds the channel's secret and lies: it answers each pull with the next
    batch of `batches` (then empty ones), signed, and checks the agent's own signatures."""

    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = batches
        self.pulls: list[dict[str, Any]] = []
        self.unsigned = 0
        app = Starlette(routes=[Route("/agent/v1/channels/plant-a/{action}", self.answer,
                                      methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                                    log_config=None, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def answer(self, request: Request) -> Response:
        body = await request.body()
        try:
            data = Webhook(SECRET).verify(body, dict(request.headers))
        except Exception:  # noqa: BLE001 - any refusal by the oracle counts
            self.unsigned += 1
            return Response(status_code=401)
        if request.path_params["action"] != "pull":
            return Response(b'{"received":0,"applied":0}', media_type="application/json")
        self.pulls.append(data)
        # A pull that takes nothing (`limit: 0`, how an agent hands a refused batch back)
        # gets nothing, as from the edge.
        items = self.batches.pop(0) if self.batches and data.get("limit") != 0 else []
        payload, headers = signed({"channel": "plant-a", "items": items})
        return Response(payload, headers=headers, media_type="application/json")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.config.port}"

    def __enter__(self) -> FakeEdge:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def item(n: int, trigger: str = "ok-trigger") -> dict[str, Any]:
    return {"delivery_id": f"d-{n}", "event_id": f"e-{n}", "route": "github->x",
            "trigger": trigger, "idempotency_key": f"github:{n}:x",
            "content_type": "application/json", "generation": 1.5, "source": "github",
            "provider": "github", "event_type": "push", "received_at": time.time(),
            "body": base64.b64encode(b'{"n":%d}' % n).decode()}


@pytest.fixture
def platform() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def test_the_agent_refuses_a_lying_batch_before_anything_of_it_runs(
        tmp_path: Path, platform: Receiver) -> None:
    hostile = [[item(1, "../../../../admin/drop?x=")], [item(2, "a b/%2e%2e/%2e%2e/x")],
               [item(i) for i in range(20_000)], [item(3, "ok-trigger"), dict(item(4), route=7)],
               [item(5)]]
    with FakeEdge(hostile) as edge:
        port = free_port()
        config = tmp_path / "agent.toml"
        config.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}

[store]
path = "{tmp_path / 'agent.db'}"

[platform]
base_url = "{platform.url}/api/v1"
trigger_key = "{TRIGGER_KEY}"

[forwarder]
poll_interval = "100ms"

[edge]
url = "{edge.url}"
channel = "plant-a"
token = "{AGENT_TOKEN}"
signing_secret = "{SECRET}"
wait = "0s"
batch_size = 10
""")
        log = tmp_path / "agent.log"
        with open(log, "wb") as out:
            agent = subprocess.Popen([sys.executable, "-m", "bridge", "agent", "--config",
                                      str(config)], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: [r["path"] for r in platform.all()], timeout=120)
            wait_for(lambda: not edge.batches and len(edge.pulls) >= 6, timeout=60)
        finally:
            agent.terminate()
            agent.wait(30)
        text = log.read_text()
        assert [r["path"] for r in platform.all()] == ["/api/v1/workflows/triggers/ok-trigger"]
        assert json.loads(platform.all()[0]["body"]) == {"n": 5}
        assert text.count("batch refused") == 4, text
        assert "items[0].trigger: not a valid value" in text
        assert "20000 items where at most 10 were asked for" in text
        assert edge.unsigned == 0  # every request the agent made was signed
        # Only the clean batch was stored, so only it was acknowledged.
        acked = [a for pull in edge.pulls for a in pull["ack"]]
        assert acked == [{"delivery_id": "d-5", "generation": 1.5}]
        # Each refused batch was handed back at once, by a pull that took nothing.
        handed_back = [pull for pull in edge.pulls if pull.get("refused")]
        assert len(handed_back) >= 3 and all(p["limit"] == 0 for p in handed_back)
