"""What a hostile sender or receiver could reach, each against the real server and store.

One test (or table) per defect of the hardening review; each of them failed before its fix.
The pure parts (the SSRF guard's address rules, the allow-list matcher) are tables.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from twilio.request_validator import RequestValidator

from bridge.devtools.emulator import EmulatorServer
from bridge.web.guard import allowed, is_public
from tests.support import http
from tests.support.admin import ADMIN, admin
from tests.support.harness import (
    GITHUB_SECRET,
    TRIGGER_KEY,
    Bridge,
    barrier,
    free_port,
    github_headers,
    sqlite_only,
    wait_for,
)


def peak_rss_mb(bridge: Bridge) -> float:
    assert bridge.proc is not None
    for line in Path(f"/proc/{bridge.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# -- a receiver that misbehaves on purpose ------------------------------------------------------

class Hostile:
    """A raw TCP server answering every request by `mode`: `huge` (a 300 MiB body), `drip`
    (a byte every 100 ms, forever), or `ok`."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(
                asyncio.start_server(self.serve, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            server.close()
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            self.requests.append(head)
            if self.mode == "huge":
                size = 300 << 20
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                block = b"z" * (1 << 20)
                for _ in range(300):
                    writer.write(block)
                    await writer.drain()
            elif self.mode == "drip":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                for _ in range(100000):
                    writer.write(b"z")
                    await writer.drain()
                    await asyncio.sleep(0.1)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.stop()


CALLBACKS = """
[callbacks]
signing_secret = "whsec_cGxhdGZvcm0tY2FsbGJhY2stc2VjcmV0LTAx"
timeout = "1s"
[callbacks.retry]
base = "200ms"
cap = "500ms"
max_age = "1h"
[tracking]
poll_initial = "100ms"
poll_max = "200ms"
poll_interval = "100ms"
"""


def notify_route(url: str) -> str:
    return f"""
[[routes]]
source = "github"
trigger = "notify"
events = ["issues.*"]
callbacks = ["{url}/done"]
"""


def send_issue(bridge: Bridge, delivery: str) -> httpx.Response:
    body = json.dumps({"action": "opened", "issue": {"n": delivery}}).encode()
    return bridge.post("/hooks/github", body,
                       github_headers(body, delivery=delivery, event="issues"))


def test_callback_answers_are_capped_and_every_attempt_has_a_deadline(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, hostile: Hostile) -> None:
    """1. A receiver's 300 MiB answer is read to 64 KiB; a receiver that drips a byte every
    100 ms is cut off by the attempt's deadline instead of holding it forever."""
    bridge = make_bridge(CALLBACKS + notify_route(f"http://127.0.0.1:{hostile.port}"), process=True)
    base = peak_rss_mb(bridge)
    hostile.mode = "huge"
    assert send_issue(bridge, "cap-1").status_code == 202
    wait_for(lambda: [c["status"] for c in bridge.callbacks()] == ["delivered"], timeout=30)
    assert peak_rss_mb(bridge) - base < 100, "the bridge read the whole answer"
    [attempt] = bridge.callbacks()[0]["attempt_log"]
    excerpt = attempt["response_excerpt"]
    assert excerpt.startswith("zzz") and len(excerpt) <= 512

    hostile.mode = "drip"
    assert send_issue(bridge, "cap-2").status_code == 202
    wait_for(lambda: sum(1 for c in bridge.callbacks() for a in c["attempt_log"]
                         if (a["error"] or "").startswith("timeout")) >= 2, timeout=20)
    head = hostile.requests[-1].lower()
    assert b"accept-encoding: identity" in head


def test_oversized_request_heads_get_431_and_cost_nothing(
        make_bridge: Callable[..., Bridge]) -> None:
    """2. Before any authentication, headers are bounded in bytes and in count."""
    bridge = make_bridge(process=True)
    base = peak_rss_mb(bridge)
    with socket.create_connection(("127.0.0.1", bridge.port)) as sock:
        sock.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            while sent < 200 << 20:  # 200 MiB of headers, if the server kept reading
                sock.sendall(b"X-Filler: " + b"a" * 65000 + b"\r\n")
                sent += 65012
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(5)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert b"headers_too_large" in answer
    assert sent < 50 << 20  # refused early, not after everything was read
    assert peak_rss_mb(bridge) - base < 50
    many = {f"X-H{i}": "v" for i in range(150)}
    counted = http.post(f"{bridge.url}/hooks/github", content=b"{}", headers=many)
    assert counted.status_code == 431
    body = b'{"zen":"ok"}'
    fine = bridge.post("/hooks/github", body, {**github_headers(body, delivery="h-1"),
                                               **{f"X-H{i}": "v" for i in range(60)}})
    assert fine.status_code == 202


def _github(bridge: Bridge, body: bytes, delivery: str) -> httpx.Response:
    return bridge.post("/hooks/github", body, github_headers(body, delivery=delivery))


def test_a_signed_body_replayed_under_a_new_unsigned_id_is_a_duplicate(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    """4. GitHub signs the body, not X-GitHub-Delivery."""
    bridge = make_bridge()
    body = b'{"ref":"refs/heads/main","after":"abc"}'
    first = _github(bridge, body, "rep-1")
    replay = _github(bridge, body, "rep-2")
    assert first.status_code == 202
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    assert replay.json()["id"] == first.json()["id"]
    # The answer says why, with the stored event's key and the request's own.
    assert replay.json()["duplicate_reason"] == "same_signed_body"
    assert replay.json()["idempotency_key"] == first.json()["idempotency_key"] == "github:rep-1"
    assert replay.json()["request_key"] == "github:rep-2"
    redelivery = _github(bridge, body, "rep-1").json()  # a real redelivery
    assert redelivery["duplicate"] is True and redelivery["duplicate_reason"] == "same_key"
    assert "request_key" not in redelivery
    barrier(bridge, emulator)
    assert len(emulator.emulator.executions_for("github-push")) == 1
    # Several in one burst (one store batch): still one event.
    bodies = [b'{"ref":"refs/heads/main","after":"burst"}'] * 6

    def post(i: int) -> httpx.Response:
        return _github(bridge, bodies[i], f"burst-{i}")

    with __import__("concurrent.futures").futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 5
    assert len({a.json()["id"] for a in answers}) == 1
    # The same body under another event type is another event.
    other = bridge.post("/hooks/github", body, github_headers(body, delivery="rep-3",
                                                              event="create"))
    assert other.status_code == 202


def test_body_dedupe_can_be_turned_off_per_source(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(start=False)
    text = bridge.config_path.read_text().replace(
        'name = "github"\nprovider = "github"',
        'name = "github"\nprovider = "github"\nbody_dedupe = false')
    bridge.config_path.write_text(text)
    bridge.start()
    body = b'{"same":"body"}'
    assert _github(bridge, body, "off-1").status_code == 202
    assert _github(bridge, body, "off-2").status_code == 202


TWILIO_TOKEN = "twilio-auth-token-0c9a"


def test_twilio_fields_reordered_under_a_new_token_are_a_duplicate(
        make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(f"""
[[sources]]
name = "sms"
provider = "twilio"
secret = "{TWILIO_TOKEN}"
""")
    url = f"{bridge.url}/hooks/sms"
    fields = [("MessageSid", "SM1"), ("MessageStatus", "delivered"), ("To", "+14155550100")]
    validator = RequestValidator(TWILIO_TOKEN)
    answers = []
    for order, token in ((fields, "idem-1"), (list(reversed(fields)), "idem-2")):
        body = urlencode(order).encode()
        signature = validator.compute_signature(url, dict(order))
        answers.append(bridge.post("/hooks/sms", body, {
            "X-Twilio-Signature": signature, "I-Twilio-Idempotency-Token": token,
            "Content-Type": "application/x-www-form-urlencoded"}))
    assert answers[0].status_code == 202
    assert answers[1].status_code == 200 and answers[1].json()["duplicate"] is True


@pytest.mark.parametrize(("url", "ok"), [
    ("https://a.example.com/x", True),
    ("https://a.b.example.com/cb?x=1", True),
    ("https://evil.com/.example.com/x", False),
    ("https://evil.com/?.example.com/x", False),
    ("https://evil.com#.example.com/x", False),
    ("https://example.com/x", False),
    ("https://a.example.com.evil.com/x", False),
    ("https://a.example.com@evil.com/x", False),
    ("https://a.example.com:8443/x", False),
    ("http://a.example.com/x", False),
    ("https://x.evil-example.com/x", False),
])
def test_callback_allow_list_matches_each_part_of_the_url(url: str, ok: bool) -> None:
    """5. `*` never reaches across into another part of the URL."""
    assert allowed(url, ("https://*.example.com/*",)) is ok


@pytest.mark.parametrize(("pattern", "url", "ok"), [
    ("https://hooks.example.com/cb/*", "https://hooks.example.com/cb/1", True),
    ("https://hooks.example.com/cb/*", "https://hooks.example.com/other", False),
    ("https://hooks.example.com:8443", "https://hooks.example.com:8443/any", True),
    ("https://hooks.example.com:*/x", "https://hooks.example.com:9/x", True),
    ("http://*", "http://anything.test/path", True),
    ("http://*", "http://anything.test:8080/path", False),
])
def test_callback_allow_list_ports_and_paths(pattern: str, url: str, ok: bool) -> None:
    assert allowed(url, (pattern,)) is ok


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("100.64.0.1", False), ("::1", False),
    ("::ffff:10.0.0.1", False),
    ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
    ("2002:0808:0808::1", True),  # 6to4 of 8.8.8.8
    ("2001:0000:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo, client 10.0.0.1
    ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
    ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ("64:ff9b:1::7f00:1", False),  # local-use NAT64 of 127.0.0.1
])
def test_ipv6_forms_that_embed_a_private_ipv4_are_not_public(address: str,
                                                              public: bool) -> None:
    """11. 6to4, Teredo and NAT64 addresses are judged by the IPv4 address inside."""
    assert is_public(address) is public


def test_sender_callback_urls_keep_to_the_allowed_ports(make_bridge: Callable[..., Bridge]
                                                        ) -> None:
    """11. Default ports only, unless the operator allows others; an invalid port is refused
    at the door instead of failing on every attempt (6)."""
    bridge = make_bridge(CALLBACKS + """
[[sources]]
name = "zap"
provider = "token"
secret = "zap-token"
allow_callback_urls = ["https://*.example.com:*/*", "http://*:*"]
""")
    headers = {"X-Webhook-Token": "zap-token"}
    for url in ("https://a.example.com:8443/cb", "http://h:abc/x", "http://h:0/x"):
        refused = bridge.post(f"/hooks/zap?callback_url={url}", b"{}", headers)
        assert refused.status_code == 400, url
        assert refused.json()["error"]["code"] == "callback_not_allowed"
    assert bridge.post("/hooks/zap?callback_url=https://a.example.com/cb", b"{}",
                       headers).status_code == 202


@sqlite_only
def test_a_poison_delivery_backs_off_and_dies_instead_of_holding_its_lease(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    """6. Anything that makes an attempt raise is a failed attempt that counts toward dead."""
    bridge = make_bridge(start=False)
    text = bridge.config_path.read_text().replace('max_age = "1h"', 'max_age = "2s"')
    bridge.config_path.write_text(text)
    bridge.start()
    body = b'{"ref":"x"}'
    ack = _github(bridge, body, "poison-1").json()
    wait_for(lambda: bridge.statuses() == ["delivered"])
    bridge.terminate()
    conn = sqlite3.connect(bridge.db)
    # A value no attempt can send (stored by a bug, or by a hand): the content type as bytes.
    # Its 2 s of life begin a few seconds from now, so that they are spent retrying, not
    # waiting for the bridge to start again (on a busy machine a start took over 2 s, and the
    # first attempt then found the delivery already too old to retry).
    conn.execute("UPDATE deliveries SET status = 'pending', content_type = x'ff', attempts = 0,"
                 " next_attempt_at = 0, created_at = ? WHERE event_id = ?",
                 (time.time() + 5, ack["id"]))
    conn.commit()
    conn.close()
    bridge.start()
    wait_for(lambda: bridge.statuses() == ["dead"], timeout=20)
    [delivery] = bridge.deliveries()
    assert delivery["attempts"] >= 2 and "internal error (TypeError)" in delivery["last_error"]
    wait_for(lambda: "Traceback" in bridge.logs())  # the bug is visible, with where it happened
    assert [e["state"] for e in bridge.events()] == ["dead"]


def test_non_ascii_delivery_ids_are_hashed_into_the_key(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    """6. A valid request with a non-ASCII X-GitHub-Delivery is delivered, not stuck."""
    bridge = make_bridge()
    body = b'{"ref":"unicode"}'
    headers = github_headers(body, delivery="x")
    headers["X-GitHub-Delivery"] = "d\u00e9livr\u00e9-1"
    ack = http.post(f"{bridge.url}/hooks/github", content=body,
                     headers={k: v.encode() for k, v in headers.items()})  # type: ignore[misc]
    assert ack.status_code == 202
    key = ack.json()["idempotency_key"]
    assert key.startswith("github:sha256:") and key.isascii()
    wait_for(lambda: bridge.statuses() == ["delivered"])


def _mailgun(secret: str, event_id: str) -> bytes:
    ts, token = str(int(time.time())), "tok-" + hashlib.sha256(event_id.encode()).hexdigest()
    signature = hmac.new(secret.encode(), f"{ts}{token}".encode(), hashlib.sha256).hexdigest()
    return json.dumps({"signature": {"timestamp": ts, "token": token, "signature": signature},
                       "event-data": {"id": event_id, "event": "delivered"}}).encode()


def test_ids_from_a_body_cannot_add_headers_toward_the_platform(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    """7. An `event-data.id` of `x\\r\\nX-Injected: yes` reaches no header verbatim."""
    bridge = make_bridge("""
[[sources]]
name = "mail"
provider = "mailgun"
secret = "mg-signing-key-4d1f"

[[routes]]
source = "mail"
trigger = "mail-events"
""")
    evil = "x\r\nX-Injected: yes\r\nContent-Length: 0\r\n\r\nPOST /smuggled HTTP/1.1"
    ack = bridge.post("/hooks/mail", _mailgun("mg-signing-key-4d1f", evil),
                      {"Content-Type": "application/json"})
    assert ack.status_code == 202, ack.text
    wait_for(lambda: emulator.emulator.calls)
    barrier(bridge, emulator)
    calls = [c for c in emulator.emulator.calls if c["trigger"] != "stripe-events"]
    assert len(calls) == 1 and calls[0]["trigger"] == "mail-events"
    digest = hashlib.sha256(evil.encode()).hexdigest()
    assert calls[0]["key"] == f"mail:sha256:{digest}:mail-events"


def test_a_token_sources_secret_is_never_stored_nor_forwarded(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    """8. Neither the configured auth header nor any header carrying a configured secret."""
    bridge = make_bridge(ADMIN + """
[[sources]]
name = "zap"
provider = "token"
secret = "zap-shared-secret-91b2"
header = "X-Auth"

[[routes]]
source = "zap"
trigger = "zap-flow"
""")
    ack = bridge.post("/hooks/zap", b'{"a":1}', {
        "X-Auth": "zap-shared-secret-91b2", "X-Echo": f"Bearer {GITHUB_SECRET}",
        "X-Kept": "visible", "Content-Type": "application/json"}).json()
    event = admin(bridge, "GET", f"/admin/events/{ack['id']}").json()
    assert "x-auth" not in event["headers"] and "x-echo" not in event["headers"]
    assert event["headers"]["x-kept"] == "visible"
    wait_for(lambda: emulator.emulator.executions_for("zap-flow"))
    [execution] = emulator.emulator.executions_for("zap-flow")
    sent = json.dumps(execution.input)
    assert "zap-shared-secret-91b2" not in sent and GITHUB_SECRET not in sent
    assert "visible" in sent


def test_no_input_produces_a_500(make_bridge: Callable[..., Bridge]) -> None:
    """9. An undecodable bodySHA256, an admin body of the wrong type, a deep JSON body."""
    bridge = make_bridge(ADMIN + f"""
[[sources]]
name = "sms"
provider = "twilio"
secret = "{TWILIO_TOKEN}"
""")
    twilio = bridge.post("/hooks/sms?bodySHA256=%C3%A9", b'{"a":1}', {
        "X-Twilio-Signature": "c2ln", "Content-Type": "application/json"})
    assert twilio.status_code == 401
    for body in ({"limit": "x"}, {"source": ["x"]}, {"limit": 10**30}, {"since": "soon"}):
        answer = admin(bridge, "POST", "/admin/events/replay", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["code"] == "bad_request"
    deep = admin(bridge, "POST", "/admin/events/replay", content=b"[" * 100000)
    assert deep.status_code == 400
    assert "Traceback" not in bridge.logs()


@sqlite_only
def test_a_sql_error_is_a_bug_with_a_traceback_not_an_outage(
        make_bridge: Callable[..., Bridge]) -> None:
    """6. Only connection, lock and disk errors answer 503; a broken statement is logged with its
    traceback and answered 500."""
    bridge = make_bridge(ADMIN)
    conn = sqlite3.connect(bridge.db)
    conn.execute("DROP TABLE routes")
    conn.commit()
    conn.close()
    answer = admin(bridge, "GET", "/admin/routes")
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "internal"
    wait_for(lambda: "Traceback" in (logs := bridge.logs()) and "no such table: routes" in logs)
    assert http.get(f"{bridge.url}/readyz").status_code == 200  # the store itself is fine


LIFETIME = """
[platform]
idempotency_key_lifetime = "3s"
"""


def test_a_delivery_that_may_have_run_is_never_resent_past_the_keys_lifetime(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    """10. The platform ran it but the answer was lost; then an outage outlasted the key."""
    emulator.emulator.configure(idempotency_ttl=3.0)
    emulator.emulator.add_fault(trigger="github-push", count=1, drop="after")
    emulator.emulator.add_fault(trigger="github-push", count=1000, status=503)
    bridge = make_bridge(ADMIN, start=False)
    text = bridge.config_path.read_text().replace("[platform]\n", LIFETIME.strip() + "\n", 1)
    bridge.config_path.write_text(text)
    bridge.start()
    ack = _github(bridge, b'{"ref":"lost"}', "lost-1").json()
    wait_for(lambda: bridge.statuses() == ["dead"], timeout=20)
    [delivery] = bridge.deliveries()
    delivery_id, reached = delivery["id"], delivery["reached_at"]
    assert "may already have run" in delivery["last_error"] and reached is not None
    assert len(emulator.emulator.executions_for("github-push")) == 1
    shown = admin(bridge, "GET", f"/admin/events/{ack['id']}").json()
    assert "may already have run" in shown["deliveries"][0]["last_error"]
    emulator.emulator.faults.clear()
    reached_at = datetime.datetime.fromisoformat(reached.replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, reached_at + 3.0 - time.time()))  # the platform has forgotten the key

    held = admin(bridge, "POST", "/admin/dead-letters/redrive", json={"ids": [delivery_id]})
    assert held.json()["redriven"] == 0 and held.json()["held"] == 1
    assert "force" in held.json()["warning"]
    assert bridge.statuses() == ["dead"]  # held: nothing was made due, so nothing can be sent
    assert len(emulator.emulator.executions_for("github-push")) == 1
    forced = admin(bridge, "POST", "/admin/dead-letters/redrive",
                   json={"ids": [delivery_id], "force": True})
    assert forced.json()["redriven"] == 1
    wait_for(lambda: bridge.statuses() == ["delivered"])
    assert len(emulator.emulator.executions_for("github-push")) == 2  # the operator's choice


def test_within_the_keys_lifetime_a_lost_answer_is_retried_and_runs_once(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(trigger="github-push", count=1, drop="after")
    bridge = make_bridge()
    _github(bridge, b'{"ref":"lost-once"}', "lost-2")
    wait_for(lambda: bridge.statuses() == ["delivered"])
    assert len(emulator.emulator.executions_for("github-push")) == 1
    assert len(emulator.emulator.calls) == 2


def test_a_delivery_that_never_reached_the_platform_keeps_retrying(
        make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(start=False)
    closed = free_port()
    text = re.sub(r'base_url = ".*"', f'base_url = "http://127.0.0.1:{closed}/api/v1"',
                  bridge.config_path.read_text(), count=1)
    text = text.replace("[platform]\n", LIFETIME.strip().replace("3s", "1s") + "\n", 1)
    bridge.config_path.write_text(text)
    bridge.start()
    _github(bridge, b'{"ref":"refused"}', "refused-1")
    started = time.monotonic()
    # Three key lifetimes pass, and it is still being tried.
    wait_for(lambda: time.monotonic() - started >= 3.0 and bridge.deliveries()[0]["attempts"] >= 3)
    [delivery] = bridge.deliveries()
    assert delivery["status"] in ("pending", "leased") and delivery["reached_at"] is None
    assert f"127.0.0.1:{closed}" in delivery["last_error"]  # the URL that was tried


def test_check_config_masks_credentials_in_urls_and_warns_about_max_age(tmp_path: Path) -> None:
    """11. `check-config` prints no URL credentials; a max_age beyond the key lifetime warns."""
    from tests.support.cli import run_cli

    path = tmp_path / "c.toml"
    path.write_text(f"""
[platform]
base_url = "https://user:hunter2-pass@platform.example.com/api/v1"
trigger_key = "{TRIGGER_KEY}"
[forwarder.retry]
max_age = "72h"
[[sources]]
name = "github"
provider = "github"
secret = "{GITHUB_SECRET}"
[[routes]]
source = "github"
trigger = "t"
""")
    result = run_cli("check-config", "--config", str(path), "--print")
    assert result.returncode == 0, result.stderr
    assert "hunter2-pass" not in result.stdout and "user:" not in result.stdout
    assert "********@platform.example.com" in result.stdout
    assert "idempotency_key_lifetime" in result.stderr


def test_wait_answers_when_the_execution_ends(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    """11. `?wait=` answers when the execution ends; it does not reload the event meanwhile."""
    bridge = make_bridge()
    body = b'{"ref":"wait"}'
    started = time.monotonic()
    answer = bridge.post("/hooks/github?wait=10", body, github_headers(body, delivery="w-1"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["deliveries"][0]["execution"]["status"] == "completed"
    assert time.monotonic() - started < 5
