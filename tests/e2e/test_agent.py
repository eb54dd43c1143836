"""The outbound-only agent, end to end, behind a real firewall.

The agent and the platform stand-in (the emulator) run inside a network namespace whose packet
filter drops every inbound connection; the edge, the callback receiver and the test run outside.
Everything the tests assert is read through the edge's HTTP and admin APIs, the emulator's
control API (queried from inside the namespace) and the receiver.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.support import http, netns
from tests.support.harness import (
    API_KEY,
    GITHUB_SECRET,
    TRIGGER_KEY,
    Bridge,
    free_port,
    github_headers,
    wait_for,
)
from tests.support.proxy import Proxy
from tests.support.receiver import Receiver
from tests.support.tcp_relay import pipe

# Processes killed, cut and restarted under load: these run one after another on one
# worker (`--dist loadgroup`), never beside each other.
pytestmark = pytest.mark.xdist_group("heavy")


AGENT_TOKEN = "agent-token-plant-a-4c1d9e"
OTHER_TOKEN = "agent-token-plant-b-77aa01"
CHANNEL_SECRET = "whsec_" + base64.b64encode(b"plant-a-channel-signing-key-01").decode()
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"edge-callback-signing-key-0001").decode()
ADMIN = "adm-token-5f0e9c1b2a7d"
SECRETS = [AGENT_TOKEN, OTHER_TOKEN, CHANNEL_SECRET, CALLBACK_SECRET, GITHUB_SECRET, TRIGGER_KEY,
           API_KEY, ADMIN]

EDGE = """
[server]
host = "{host}"
port = {port}
shutdown_timeout = "3s"

[store]
path = "{db}"

[admin]
tokens = ["{admin}"]

[callbacks]
signing_secret = "{callback_secret}"
allow_private = true

[callbacks.retry]
base = "100ms"
cap = "1s"

[[sources]]
name = "github"
provider = "github"
secret = "{github}"

[[channels]]
name = "plant-a"
tokens = {tokens}
signing_secret = "{channel_secret}"
lease = "{lease}"

[[routes]]
source = "github"
trigger = "github-push"
channel = "plant-a"
callbacks = ["{receiver}/done"]
"""

AGENT = """
[server]
host = "127.0.0.1"
port = {port}
shutdown_timeout = "2s"

[store]
path = "{db}"

[platform]
base_url = "http://127.0.0.1:{emulator}/api/v1"
trigger_key = "{trigger_key}"
{api_key}

[forwarder]
lease = "2s"
poll_interval = "100ms"

[forwarder.retry]
base = "100ms"
cap = "1s"

[tracking]
poll_initial = "200ms"
poll_max = "1s"
lease = "4s"

[edge]
url = "{edge}"
channel = "plant-a"
token = "{token}"
signing_secret = "{channel_secret}"
wait = "2s"
batch_size = {batch}
"""


@pytest.fixture
def network() -> Iterator[netns.PrivateNetwork]:
    netns.require()
    net = netns.PrivateNetwork().create()
    yield net
    net.destroy()


class Site:
    """An edge outside, a firewalled network inside with an emulator and agents."""

    def __init__(self, net: netns.PrivateNetwork, tmp: Path, *, lease: str = "2s",
                 tracked: bool = True, execution_delay: float = 0.1) -> None:
        self.net = net
        self.tmp = tmp
        self.receiver = Receiver().start()
        self.ports: set[int] = set()  # listening inside the namespace
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.emulator, self.emulator_port = self.launch(
            lambda port: [sys.executable, "-m", "bridge", "emulator", "--host", "127.0.0.1",
                          "--port", str(port), "--trigger-key", TRIGGER_KEY, "--api-key",
                          API_KEY, "--execution-delay", str(execution_delay)],
            tmp / "emulator.log", lambda port: self.emulator_calls(port) is not None)
        self.tracked = tracked
        self.lease = lease
        self.edge = self.make_edge([AGENT_TOKEN])

    def launch(self, argv: Callable[[int], list[str]], log: Path, up: Callable[[int], bool],
               env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
        """Start a process inside the namespace on a port of its own and wait until it answers.
        Ports come from the host's free ones, which the namespace does not see, so a clash is
        possible there: then once more on another port. Any other exit, or no answer in time,
        fails with what the process logged."""
        for _ in range(3):
            port = free_port()
            if port in self.ports:
                continue
            offset = log.stat().st_size if log.exists() else 0
            proc = self.net.popen(argv(port), str(log), env=env)
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if up(port):
                    self.ports.add(port)
                    return proc, port
                time.sleep(0.05)
            timed_out = proc.poll() is None
            if timed_out:
                proc.kill()
                proc.wait(10)
            said = log.read_bytes()[offset:].decode(errors="replace")
            if timed_out:
                raise AssertionError(f"{log.stem} did not answer in 30 s:\n{said[-4000:]}")
            if "already in use" not in said:
                raise AssertionError(
                    f"{log.stem} exited {proc.returncode}:\n{said[-4000:]}")
        raise AssertionError("no free port inside the namespace after three tries")

    # the edge

    def make_edge(self, tokens: list[str]) -> Bridge:
        port = getattr(self, "edge", None).port if getattr(self, "edge", None) else free_port()
        config = self.tmp / "edge.toml"
        config.write_text(EDGE.format(
            host=self.net.host_ip, port=port, db=self.tmp / "edge.db", admin=ADMIN,
            callback_secret=CALLBACK_SECRET, github=GITHUB_SECRET, tokens=json.dumps(tokens),
            channel_secret=CHANNEL_SECRET, receiver=self.receiver.url, lease=self.lease))
        bridge = Bridge(config, port, self.tmp / "edge.db", self.tmp / "edge.log")
        bridge.url = f"http://{self.net.host_ip}:{port}"
        return bridge

    def admin(self, path: str) -> Any:
        response = http.get(f"{self.edge.url}{path}", timeout=10,
                             headers={"Authorization": f"Bearer {ADMIN}"})
        response.raise_for_status()
        return response.json()

    def send(self, n: int, start: int = 0, prefix: str = "d") -> list[str]:
        """Send n signed GitHub pushes; the delivery ids the edge acknowledged."""
        acked = []
        with httpx.Client(base_url=self.edge.url, timeout=30) as client:
            for i in range(start, start + n):
                body = json.dumps({"ref": "refs/heads/main", "n": i}).encode()
                try:
                    r = client.post("/hooks/github", content=body,
                                    headers=github_headers(body, delivery=f"{prefix}-{i}"))
                except httpx.HTTPError:
                    continue
                if r.status_code == 202:
                    acked.append(f"{prefix}-{i}")
        return acked

    # the private side

    def start_agent(self, name: str = "a", *, edge_url: str | None = None,
                    env: dict[str, str] | None = None, batch: int = 100,
                    token: str = AGENT_TOKEN, edge_extra: str = "") -> int:
        config = self.tmp / f"agent-{name}.toml"

        def argv(port: int) -> list[str]:
            config.write_text(AGENT.format(
                port=port, db=self.tmp / f"agent-{name}.db", emulator=self.emulator_port,
                trigger_key=TRIGGER_KEY,
                api_key=f'api_key = "{API_KEY}"' if self.tracked else "",
                edge=edge_url or self.edge.url, token=token, channel_secret=CHANNEL_SECRET,
                batch=batch) + edge_extra)  # [edge] is the template's last table
            return [sys.executable, "-m", "bridge", "agent", "--config", str(config)]

        self.agents[name], port = self.launch(
            argv, self.tmp / f"agent-{name}.log",
            lambda port: self.agent_health(port) is not None, env=env)
        return port

    def agent_health(self, port: int) -> Any:
        try:
            return self.net.get_json(f"http://127.0.0.1:{port}/healthz")
        except (subprocess.SubprocessError, ValueError):
            return None

    def kill_agent(self, name: str = "a") -> None:
        proc = self.agents.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def emulator_calls(self, port: int | None = None) -> list[dict[str, Any]] | None:
        try:
            return self.net.get_json(
                f"http://127.0.0.1:{port or self.emulator_port}/_emulator/calls")
        except (subprocess.SubprocessError, ValueError):
            return None

    def executions(self) -> list[dict[str, Any]]:
        return self.net.get_json(
            f"http://127.0.0.1:{self.emulator_port}/_emulator/executions", timeout=30)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.tmp.glob("*.log"))

    def close(self) -> None:
        for proc in [*self.agents.values(), self.emulator]:
            proc.kill()
            proc.wait(10)
        if self.edge.proc and self.edge.proc.poll() is None:
            self.edge.proc.kill()
            self.edge.proc.wait(10)
        self.receiver.stop()
        logs = self.logs()
        for secret in SECRETS:
            assert secret not in logs, "a token or secret reached a log"


@pytest.fixture
def site(network: netns.PrivateNetwork, tmp_path: Path) -> Iterator[Site]:
    s = Site(network, tmp_path)
    yield s
    s.close()


def executed_keys(site: Site) -> Counter[str]:
    return Counter(e["input_key"] for e in site.executions())


def delivered(site: Site, keys: list[str]) -> bool:
    got = executed_keys(site)
    return all(got[k] >= 1 for k in keys)


def test_the_edge_cannot_connect_in_and_events_still_arrive(site: Site) -> None:
    # Proof that the firewall holds: a server listening on every address inside the namespace
    # cannot be reached from outside, while the namespace reaches the edge.
    probe = site.net.popen([sys.executable, "-m", "http.server", "18765", "--bind", "0.0.0.0"],
                           str(site.tmp / "probe.log"))
    try:
        time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection((site.net.inside_ip, 18765), timeout=2).close()
    finally:
        probe.kill()
        probe.wait(5)
    site.edge.start()
    port = site.start_agent()
    acked = site.send(20)
    assert len(acked) == 20
    keys = [f"github:{d}" for d in acked]
    wait_for(lambda: delivered(site, keys), timeout=30)
    assert max(executed_keys(site).values()) == 1

    # The outcome travels back: the edge shows each delivery delivered and its workflow
    # completed, and sends the route's callback, signed with its own secret.
    def all_done() -> bool:
        events = site.admin("/admin/events?limit=100")["events"]
        return len(events) == 20 and all(e["state"] == "delivered" and e["workflows"] ==
                                         "completed" for e in events)
    wait_for(all_done, timeout=30)
    wait_for(lambda: len(site.receiver.accepted()) == 20, timeout=30)
    callback = site.receiver.accepted()[0]
    body = Webhook(CALLBACK_SECRET).verify(callback["body"], callback["headers"])
    assert body["data"]["execution"]["status"] == "completed"
    assert body["data"]["event"]["source"] == "github"  # the edge's event, not the agent's
    first = site.admin("/admin/events?limit=1")["events"][0]
    shown = site.admin(f"/admin/events/{first['id']}")
    delivery = shown["deliveries"][0]
    assert delivery["status"] == "delivered" and delivery["execution_id"]
    assert delivery["attempt_log"][-1]["status_code"] in (200, 201, 202)
    assert shown["executions"][0]["status"] == "completed"

    # The status URL's wait ends with the on-prem outcome.
    body = json.dumps({"ref": "refs/heads/main", "n": "waited"}).encode()
    r = http.post(f"{site.edge.url}/hooks/github?wait=20", content=body, timeout=30,
                   headers=github_headers(body, delivery="waited"))
    assert r.status_code == 200, r.text
    assert r.json()["deliveries"][0]["status"] == "delivered"

    # The agent's own health and metrics, on loopback inside the network.
    assert site.agent_health(port)["edge_connected"] is True
    channels = site.admin("/admin/channels")["channels"]
    assert channels[0]["name"] == "plant-a" and channels[0]["lag"]["events"] == 0
    assert channels[0]["agents"][0]["connected"] is True
    metrics = http.get(f"{site.edge.url}/metrics", timeout=10).text
    assert 'bridge_channel_agents_connected{channel="plant-a"} 1.0' in metrics


def test_a_tampered_batch_is_refused_and_a_revoked_token_is_refused(site: Site) -> None:
    site.edge.start()
    with Proxy(site.net.host_ip) as proxy:
        # Every byte the edge sends back passes through a proxy that rewrites one field.
        proxy.tamper = (b'"github-push"', b'"github-evil"')
        site.start_agent(env={"HTTP_PROXY": proxy.url, "NO_PROXY": "127.0.0.1,localhost"})
        acked = site.send(3)
        # The refusal is the agent moving on: a batch is checked whole before any of it is
        # stored, so nothing of it can run later either (checked again below, once clean).
        wait_for(lambda: "batch refused" in site.logs(), timeout=20)
        assert site.emulator_calls() == []
        assert proxy.connections >= 1  # the agent went through HTTP_PROXY
        proxy.tamper = None  # the path is clean again: the same events arrive, once
        keys = [f"github:{d}" for d in acked]
        wait_for(lambda: delivered(site, keys), timeout=30)
        assert all(c["trigger"] == "github-push" for c in site.emulator_calls() or [])
        assert executed_keys(site) == Counter(keys)  # nothing tampered ran; each event once

        # A token removed from the config (and the config reloaded) is refused at once.
        pull = f"{site.edge.url}/agent/v1/channels/plant-a/pull"
        assert agent_call(pull, {"agent": "x", "limit": 0}).status_code == 200
        site.edge.config_path.write_text(site.edge.config_path.read_text().replace(
            f'"{AGENT_TOKEN}"', f'"{OTHER_TOKEN}"'))
        assert site.edge.proc is not None
        site.edge.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: agent_call(pull, {"agent": "x", "limit": 0}).status_code == 401,
                 timeout=10)
        wait_for(lambda: "the edge refused this agent" in site.logs(), timeout=20)
        r = agent_call(pull, {"agent": "x", "limit": 0}, token=OTHER_TOKEN)
        assert r.status_code == 200



@pytest.mark.timeout(600)
def test_nothing_lost_or_doubled_through_kills_cuts_and_restarts(network: netns.PrivateNetwork,
                                                                 tmp_path: Path) -> None:
    """Two agents share a channel through a proxy while the test SIGKILLs agents mid-batch,
    cuts every proxied connection and restarts the edge: every acknowledged event runs once."""
    site = Site(network, tmp_path, lease="1s")
    try:
        site.edge.start()
        proxy = Proxy(site.net.host_ip).start()
        env = {"HTTP_PROXY": proxy.url, "NO_PROXY": "127.0.0.1,localhost"}
        site.start_agent("a", env=env, batch=20)
        site.start_agent("b", env=env, batch=20)
        acked: list[str] = []
        done = threading.Event()

        def load() -> None:
            round_ = 0
            while not done.is_set():
                acked.extend(site.send(40, start=round_ * 40))
                round_ += 1

        sender = threading.Thread(target=load, daemon=True)
        sender.start()
        for step in range(4):
            time.sleep(1.5)
            site.kill_agent("a")  # mid-batch: batches are in flight all the time
            proxy.cut()
            time.sleep(0.5)
            site.start_agent("a", env=env, batch=20)
            if step == 1:  # the edge itself goes away and comes back on the same store
                site.edge.terminate()
                site.edge.start()
        done.set()
        sender.join(60)
        assert len(acked) > 100
        keys = [f"github:{d}" for d in acked]
        wait_for(lambda: delivered(site, keys), timeout=90, interval=0.5)
        executed = executed_keys(site)
        assert max(executed.values()) == 1  # nothing ran twice
        assert set(keys) <= set(executed)

        def settled() -> bool:
            events = site.admin("/admin/events?limit=500")["events"]
            return all(e["state"] == "delivered" for e in events)
        wait_for(settled, timeout=60, interval=0.5)
        proxy.stop()
    finally:
        site.close()


@pytest.mark.timeout(600)
def test_an_offline_agent_catches_up_on_the_backlog(network: netns.PrivateNetwork,
                                                    tmp_path: Path) -> None:
    count = int(os.environ.get("AGENT_BACKLOG", "10000"))
    site = Site(network, tmp_path, tracked=False, execution_delay=0.0)
    try:
        site.edge.start()
        # The agent is offline while the events arrive.
        acked = _send_many(site, count)
        assert len(acked) == count
        lag = site.admin("/admin/channels")["channels"][0]["lag"]
        assert lag["events"] == count and lag["seconds"] > 0
        started = time.monotonic()
        site.start_agent(batch=500)
        wait_for(lambda: site.admin("/admin/channels")["channels"][0]["lag"]["events"] == 0,
                 timeout=300, interval=0.5)
        drained = time.monotonic() - started
        keys = [f"github:{d}" for d in acked]
        wait_for(lambda: len(executed_keys(site)) >= count, timeout=300, interval=1)
        executed = executed_keys(site)
        assert set(keys) == set(executed) and max(executed.values()) == 1
        wait_for(lambda: site.admin("/admin/events?state=queued&limit=1")["events"] == [],
                 timeout=120, interval=0.5)
        print(f"drained {count} events in {drained:.1f} s")
    finally:
        site.close()


def _send_many(site: Site, count: int) -> list[str]:
    """Send `count` pushes over 16 keep-alive connections; the acknowledged delivery ids."""
    host, port = site.net.host_ip, site.edge.port
    queue = list(range(count))
    acked: list[str] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                i = queue.pop()
                body = json.dumps({"ref": "refs/heads/main", "n": i}).encode()
                head = "".join(f"{k}: {v}\r\n" for k, v in
                               github_headers(body, delivery=f"bk-{i}").items())
                writer.write(f"POST /hooks/github HTTP/1.1\r\nHost: {host}\r\n{head}"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                answer = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", answer).group(1))
                await reader.readexactly(length)
                if answer.startswith(b"HTTP/1.1 202"):
                    acked.append(f"bk-{i}")
        finally:
            writer.close()

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(16)))

    asyncio.run(main())
    return acked


def test_the_agent_refuses_a_config_that_would_listen_outside(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(AGENT.format(
        port=free_port(), db=tmp_path / "a.db", emulator=1, trigger_key=TRIGGER_KEY,
        api_key="", edge="https://hooks.example.com", token=AGENT_TOKEN,
        channel_secret=CHANNEL_SECRET, batch=10).replace('host = "127.0.0.1"',
                                                         'host = "0.0.0.0"'))
    out = subprocess.run([sys.executable, "-m", "bridge", "agent", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "server.host: an agent listens on loopback only" in out.stderr


def agent_call(url: str, payload: Any, token: str = AGENT_TOKEN,
               secret: str | None = CHANNEL_SECRET, **headers: str) -> httpx.Response:
    """A request as an agent makes it: the bearer token, and the body signed with the channel's
    secret by Standard Webhooks' own library (none when `secret` is None)."""
    body = json.dumps(payload).encode()
    signed: dict[str, str] = {}
    if secret is not None:
        msg_id, now = f"msg_{time.time_ns()}", dt.datetime.now(tz=dt.UTC)
        signed = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                  "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode())}
    return http.post(url, content=body, timeout=10, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
        **signed, **headers})


def test_pulls_are_authenticated_bounded_and_signed(make_bridge: Any) -> None:
    bridge = make_bridge(f"""
[admin]
tokens = ["{ADMIN}"]

[[channels]]
name = "plant-a"
tokens = ["{AGENT_TOKEN}"]
signing_secret = "{CHANNEL_SECRET}"

[[routes]]
source = "github"
trigger = "onprem-push"
channel = "plant-a"
""")
    url = f"{bridge.url}/agent/v1/channels/plant-a/pull"
    assert http.post(url, json={"agent": "a"}, timeout=10).status_code == 401
    wrong = agent_call(url, {"agent": "a"}, token=OTHER_TOKEN)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    other = agent_call(f"{bridge.url}/agent/v1/channels/plant-b/pull", {"agent": "a"})
    assert other.status_code == 401  # a token is good for its own channel only
    for bad in ({"agent": "a b"}, {"agent": "a", "limit": 10**6}, {"agent": "a", "wait": 3600},
                {"agent": "a", "ack": "x"}, {"agent": "a", "ack": ["x" * 100]},
                {"agent": "a", "ack": [{"delivery_id": "x"}]}):
        r = agent_call(url, bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", bad
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    assert bridge.post("/hooks/github", body, github_headers(body, delivery="p-1")
                       ).status_code == 202
    r = agent_call(url, {"agent": "a", "limit": 10, "wait": 5})
    assert r.status_code == 200
    batch = Webhook(CHANNEL_SECRET).verify(r.content, dict(r.headers))
    [item] = batch["items"]
    assert item["idempotency_key"] == "github:p-1:onprem-push" and item["trigger"] == "onprem-push"
    assert json.loads(base64.b64decode(item["body"]))["payload"] == {"ref": "refs/heads/main"}
    # Not acknowledged: the same agent gets it again (its own lease first), another does not.
    again = agent_call(url, {"agent": "a", "limit": 10}).json()
    assert [i["delivery_id"] for i in again["items"]] == [item["delivery_id"]]
    assert agent_call(url, {"agent": "b", "limit": 10}).json()["items"] == []
    # Acknowledged: handed off, and the event is still on its way until the agent reports.
    ack = [{"delivery_id": item["delivery_id"], "generation": item["generation"]}]
    r = agent_call(url, {"agent": "a", "ack": ack, "limit": 10})
    assert r.json()["items"] == []
    admin = {"Authorization": f"Bearer {ADMIN}"}
    event = http.get(f"{bridge.url}/admin/events/{item['event_id']}", timeout=10,
                      headers=admin).json()
    [onprem] = [d for d in event["deliveries"] if d["trigger"] == "onprem-push"]
    assert event["state"] == "queued" and onprem["status"] == "handed_off"
    # A report for it: delivered, with its attempt in the edge's log.
    report = {"agent": "a", "reports": [{
        "kind": "attempt", "delivery_id": item["delivery_id"],
        "generation": item["generation"], "state": "delivered", "execution_id": "ex-1",
        "tracked": False, "attempt": {"started_at": time.time(), "latency_ms": 3.0,
                                      "outcome": "delivered", "status_code": 202}}]}
    reports = f"{bridge.url}/agent/v1/channels/plant-a/report"
    assert agent_call(reports, report).json() == {"received": 1, "applied": 1, "ignored": 0}
    # the same report twice changes nothing
    assert agent_call(reports, report).json() == {"received": 1, "applied": 0, "ignored": 0}
    bad = agent_call(reports, {"agent": "a", "reports": [{"kind": "nope"}]})
    assert bad.status_code == 400
    event = wait_for(lambda: (e := http.get(
        f"{bridge.url}/admin/events/{item['event_id']}", timeout=10, headers=admin).json()
    )["state"] == "delivered" and e)
    [onprem] = [d for d in event["deliveries"] if d["trigger"] == "onprem-push"]
    assert onprem["execution_id"] == "ex-1" and onprem["status"] == "delivered"
    assert onprem["attempt_log"][0]["status_code"] == 202


def test_channel_deliveries_no_agent_took_become_redrivable_dead_letters(tmp_path: Path) -> None:
    """Past the dedupe window, a channel delivery nobody pulled is a dead letter; a redrive
    starts a new generation, so an agent that stored the old one takes it again."""
    from bridge.core.models import NewDelivery, VerifiedEvent, new_id
    from bridge.store import SQLiteStore

    async def scenario() -> None:
        store = SQLiteStore(str(tmp_path / "edge.db"))
        await store.open()
        try:
            now = time.time()
            event = VerifiedEvent(new_id(), "github", "github", "push", "github:x", now - 10,
                                  {}, b"{}")
            await store.accept(event, [NewDelivery("r", "t", "github:x:t", b"{}",
                                                   "application/json", "plant-a")])
            [item] = (await store.pull_channel("plant-a", "a", None, [], now, 30, 10,
                                               1 << 20)).items
            assert await store.expire_channels(now - 60, now) == 0  # still young
            assert await store.expire_channels(now, now) == 1
            [dead] = await store.dead_letters()
            assert dead.last_error == "no agent took it within the dedupe window"
            assert await store.redrive([dead.id], now + 1) == 1
            [again] = (await store.pull_channel("plant-a", "b", None, [], now + 1, 30, 10,
                                                1 << 20)).items
            assert again.delivery_id == item.delivery_id
            assert again.generation != item.generation  # a new generation: sent again
            assert again.idempotency_key == item.idempotency_key  # with the same key
        finally:
            await store.close()

    asyncio.run(scenario())


def test_channels_list_from_the_cli(make_bridge: Any) -> None:
    bridge = make_bridge(f"""
[admin]
tokens = ["{ADMIN}"]

[[channels]]
name = "plant-a"
tokens = ["{AGENT_TOKEN}"]
signing_secret = "{CHANNEL_SECRET}"

[[routes]]
source = "github"
trigger = "onprem-push"
channel = "plant-a"
""")
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    assert bridge.post("/hooks/github", body, github_headers(body, delivery="c-1")
                       ).status_code == 202
    agent_call(f"{bridge.url}/agent/v1/channels/plant-a/pull", {"agent": "site-7"})
    out = subprocess.run([sys.executable, "-m", "bridge", "channels", "list", "--url",
                          bridge.url, "--token", ADMIN], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    header, _, row = out.stdout.splitlines()[:3]
    assert header.split()[:4] == ["channel", "lag_events", "lag_seconds", "agent"]
    assert row.split()[:2] == ["plant-a", "1"] and "site-7" in row and " yes " in row


class TlsFront:
    """TLS in front of the edge, as a load balancer on the public address would terminate it
    (tests only): a certificate from a throwaway CA for the edge's address, piped to the edge."""

    def __init__(self, host: str, target: tuple[str, int], directory: Path) -> None:
        import ssl

        import trustme

        ca = trustme.CA()
        self.ca_file = directory / "edge-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(host).configure_cert(self.context)
        self.host = host
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    def __enter__(self) -> TlsFront:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self.serve, self.host, 0, ssl=self.context), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_over_https_through_the_proxy_named_in_https_proxy(site: Site) -> None:
    site.edge.start()
    with TlsFront(site.net.host_ip, (site.net.host_ip, site.edge.port), site.tmp) as front, \
            Proxy(site.net.host_ip) as proxy:
        site.start_agent(edge_url=f"https://{site.net.host_ip}:{front.port}",
                         env={"HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.1,localhost"},
                         edge_extra=f'ca_file = "{front.ca_file}"\n')
        acked = site.send(5)
        keys = [f"github:{d}" for d in acked]
        wait_for(lambda: delivered(site, keys), timeout=30)
        # The agent reached the edge only through a CONNECT tunnel, over TLS.
        assert any(r == f"CONNECT {site.net.host_ip}:{front.port}" for r in proxy.requests)
        wait_for(lambda: all(e["state"] == "delivered" for e in
                             site.admin("/admin/events?limit=10")["events"]), timeout=30)


def test_the_agents_own_callbacks_are_sent_on_prem_signed_with_its_secret(site: Site) -> None:
    """`[callbacks] urls` on the agent: every execution it follows is also called back there,
    signed with the agent's own secret (here a receiver the agent reaches going out)."""
    onprem_secret = "whsec_" + base64.b64encode(b"agent-callback-signing-key-01").decode()
    SECRETS.append(onprem_secret)
    receiver = Receiver(site.net.host_ip).start()
    try:
        site.edge.start()
        site.start_agent(edge_extra=f"""
[callbacks]
signing_secret = "{onprem_secret}"
allow_private = true
urls = ["{receiver.url}/onprem"]
""")
        acked = site.send(3)
        wait_for(lambda: len(receiver.accepted()) == 3, timeout=30)
        for callback in receiver.accepted():
            body = Webhook(onprem_secret).verify(callback["body"], callback["headers"])
            assert body["data"]["execution"]["status"] == "completed"
            assert callback["path"] == "/onprem"
        keys = {Webhook(onprem_secret).verify(c["body"], c["headers"])["data"]["event"]
                ["idempotency_key"] for c in receiver.accepted()}
        assert len(keys) == 3 and len(acked) == 3
        # The edge's own route callbacks are sent as well, signed with the edge's secret.
        wait_for(lambda: len(site.receiver.accepted()) == 3, timeout=30)
    finally:
        receiver.stop()
