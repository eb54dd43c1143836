"""Hardening II: what an attacker, or an operator in a bad hour, reached on the previous release.

Each test failed before its fix. Pure rules are tables; the rest runs against the real server,
the real store (both dialects where the store is involved) and, for the agent, the real agent.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import stripe

from bridge.core.errors import CallbackNotAllowed
from bridge.devtools.emulator import EmulatorServer
from bridge.web.guard import allowed, canonical_url, check_literal
from tests.support import http, pg
from tests.support.harness import ADMIN_TOKEN, STRIPE_SECRET, Bridge, github_headers, wait_for
from tests.support.receiver import Receiver

CALLBACKS = """
[callbacks]
signing_secret = "whsec_cGxhdGZvcm0tY2FsbGJhY2stc2VjcmV0LTAx"
timeout = "1s"
"""
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BOTH_STORES = pytest.mark.parametrize("postgres", [False, True], ids=["sqlite", "postgres"])


def stripe_headers(body: bytes) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), STRIPE_SECRET, int(time.time()))  # type: ignore[attr-defined]
    return {"Stripe-Signature": header, "Content-Type": "application/json"}

# -- 5. Unicode forms of an address --------------------------------------------------------------

LOOPBACK_FORMS = [
    "http://①②⑦.0.0.1:{port}/",
    "http://１２７.０.０.１:{port}/",
    "http://127。0。0。1:{port}/",
    "http://１６９.２５４.１６９.２５４/",
    "http://127.1:{port}/",
    "http://0x7f.1:{port}/",
    "http://2130706433:{port}/",
    "https://evil.test\\.example.com/x",
    "http://user@example.com/",
    "http://exa mple.com/",
    "http://example.com/\x00",
    "http://-bad-.example.com/",
]


@pytest.mark.parametrize("url", LOOPBACK_FORMS, ids=range(len(LOOPBACK_FORMS)))
def test_a_host_is_checked_as_the_client_will_connect_to_it(url: str) -> None:
    """Either refused as no valid host, or seen as the loopback/link-local address it is."""
    with pytest.raises(CallbackNotAllowed):
        check_literal(canonical_url(url.format(port=80)), False, ())


@pytest.mark.parametrize(("url", "canonical"), [
    ("https://hooks.example.com/cb?x=1", "https://hooks.example.com/cb?x=1"),
    ("https://HOOKS.Example.com/cb", "https://hooks.example.com/cb"),
    ("https://bücher.example/cb", "https://xn--bcher-kva.example/cb"),
    ("https://ｅｘａｍｐｌｅ.com/x", "https://example.com/x"),
    ("http://8.8.8.8/x#frag", "http://8.8.8.8/x"),
])
def test_a_valid_url_is_kept_in_the_form_that_is_connected_to(url: str, canonical: str) -> None:
    assert canonical_url(url) == canonical


def test_a_backslash_cannot_pass_a_wildcard_allow_list() -> None:
    url = "https://evil.test\\.example.com/x"
    with pytest.raises(CallbackNotAllowed):
        canonical_url(url)
    assert not allowed(url, ("https://*.example.com/*",))


def test_unicode_addresses_are_refused_at_the_door(
        make_bridge: Callable[..., Bridge], receiver: Receiver) -> None:
    """With an allow-list of any host and port, no form of a loopback address gets in, and
    nothing reaches the listener on 127.0.0.1."""
    bridge = make_bridge(CALLBACKS + """
[[sources]]
name = "zap"
provider = "token"
secret = "zap-token"
allow_callback_urls = ["http://*:*/*", "https://*.example.com/*"]
""")
    port = receiver.url.rsplit(":", 1)[1]
    headers = {"X-Webhook-Token": "zap-token"}
    for form in LOOPBACK_FORMS:
        url = form.format(port=port)
        refused = bridge.post("/hooks/zap", b"{}", headers, params={"callback_url": url})
        assert refused.status_code == 400, (url, refused.text)
        # (a NUL is refused before any source sees it, as in any query)
        assert refused.json()["error"]["code"] in ("callback_not_allowed", "bad_request")
    assert bridge.post("/hooks/zap", b"{}", headers,
                       params={"callback_url": "http://８.８.８.８/cb"}).status_code == 202
    assert receiver.all() == []


# -- 3. One NUL byte fails only its own request ---------------------------------------------------

@BOTH_STORES
def test_a_nul_byte_fails_only_its_own_request(make_bridge: Callable[..., Bridge],
                                                postgres: bool) -> None:
    bridge = make_bridge(CALLBACKS + """
[[sources]]
name = "gh"
provider = "github"
secret = "gh-test-secret-8d1e"
allow_callback_urls = ["https://*.example.com/*"]
""", postgres=postgres)

    def ordinary(i: int) -> int:
        body = json.dumps({"n": i}).encode()
        return bridge.post("/hooks/github", body, github_headers(body, delivery=f"ok-{i}"),
                           ).status_code

    def hostile(i: int) -> int:
        body = json.dumps({"bad": i}).encode()
        return bridge.post("/hooks/gh?callback_url=https://a.example.com/%00",
                           body, github_headers(body, delivery=f"bad-{i}")).status_code

    with concurrent.futures.ThreadPoolExecutor(45) as pool:
        good = [pool.submit(ordinary, i) for i in range(40)]
        bad = [pool.submit(hostile, i) for i in range(5)]
        assert [f.result() for f in good] == [202] * 40
        assert [f.result() for f in bad] == [400] * 5
    # Signed ids and types with a NUL are stored as every store can hold them.
    for field in ("id", "type"):
        event = {"id": "evt_1", "type": "charge.succeeded", "object": "event"}
        event[field] = event[field] + "\u0000x"
        body = json.dumps(event).encode()
        answer = bridge.post("/hooks/stripe", body, stripe_headers(body))
        assert answer.status_code == 202, answer.text
    for path in ("/admin/events/%00", "/admin/events?key=%00", "/admin/events?cursor=a%00",
                 "/admin/dead-letters?source=%00", "/console/events?key=%00",
                 "/console/events?cursor=%00", "/console/events/feed?after=%00"):
        answer = http.get(f"{bridge.url}{path}", headers=AUTH, timeout=30)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["error"]["code"] == "bad_request"
    for path, payload in (("/admin/routes/github->github-push/pause", {"reason": "a\u0000b"}),
                          ("/admin/dead-letters/redrive", {"ids": ["x\u0000"]})):
        answer = http.post(f"{bridge.url}{path}", headers=AUTH, timeout=30,
                            content=json.dumps(payload).encode())
        assert answer.status_code < 500, (path, answer.text)
    assert "Traceback" not in bridge.logs()


# -- 4. A database that stops answering ----------------------------------------------------------

@pytest.fixture
def stalled_link() -> Iterator[subprocess.Popen[str]]:
    """A relay process between the bridge and PostgreSQL, to be stopped with SIGSTOP."""
    pg.require()
    port = urlsplit(pg.SERVER).port or 5432
    relay = subprocess.Popen([sys.executable, "-m", "tests.support.tcp_relay", str(port)],
                             stdout=subprocess.PIPE, text=True)
    assert relay.stdout is not None
    relay.port = int(relay.stdout.readline())  # type: ignore[attr-defined]
    yield relay
    relay.send_signal(signal.SIGCONT)
    relay.kill()
    relay.wait()
    relay.stdout.close()


def test_a_stalled_database_answers_503_within_the_deadline_and_recovers(
        make_bridge: Callable[..., Bridge], stalled_link: subprocess.Popen[str],
        emulator: EmulatorServer) -> None:
    bridge = make_bridge(start=False, postgres=True, process=True)
    port = urlsplit(pg.SERVER).port or 5432
    relayed = stalled_link.port  # type: ignore[attr-defined]
    text = bridge.config_path.read_text().replace(f"127.0.0.1:{port}/", f"127.0.0.1:{relayed}/")
    bridge.config_path.write_text(text.replace('busy_timeout = "300ms"',
                                               'busy_timeout = "300ms"\ndeadline = "2s"'))
    bridge.start()
    first = github_post(bridge, "before")
    assert first.status_code == 202
    stalled_link.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    stalled = github_post(bridge, "during")
    assert stalled.status_code == 503, stalled.text
    assert stalled.headers["Retry-After"] and stalled.json()["error"]["code"] == "store_unavailable"
    listed = http.get(f"{bridge.url}/admin/events", headers=AUTH, timeout=60)
    assert listed.status_code == 503 and "Retry-After" in listed.headers
    took = time.monotonic() - started
    stalled_link.send_signal(signal.SIGCONT)
    # The sender retries as told; the bridge has recovered on its own, without a restart.
    wait_for(lambda: github_post(bridge, "during").status_code in (200, 202), timeout=60)
    assert github_post(bridge, "after").status_code == 202
    wanted = sorted(f"github:{d}:github-push" for d in ("before", "during", "after"))
    wait_for(lambda: sorted({c["key"] for c in emulator.emulator.calls}) == wanted, timeout=60)
    assert len(emulator.emulator.executions_for("github-push")) == 3  # each ran once
    print(f"a stalled store answered in {took:.1f}s (deadline 2s, two requests)")


def github_post(bridge: Bridge, delivery: str) -> httpx.Response:
    body = json.dumps({"ref": delivery}).encode()
    return http.post(f"{bridge.url}/hooks/github", content=body, timeout=60,
                      headers=github_headers(body, delivery=delivery))


# -- 6. Replay, then redrive -----------------------------------------------------------------------

@BOTH_STORES
def test_a_delivered_replay_supersedes_the_dead_delivery(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, postgres: bool) -> None:
    bridge = make_bridge(postgres=postgres)
    emulator.emulator.add_fault(trigger="github-push", count=1, status=422)
    event_id = github_post(bridge, "replayed-1").json()["id"]

    def admin(method: str, path: str, **kwargs: Any) -> Any:
        return http.request(method, f"{bridge.url}{path}", headers=AUTH, timeout=30,
                             **kwargs).json()

    [dead] = wait_for(lambda: admin("GET", "/admin/dead-letters")["dead_letters"])
    assert admin("POST", f"/admin/events/{event_id}/replay")["replayed"] == 1
    wait_for(lambda: admin("GET", f"/admin/events/{event_id}")["state"] == "delivered")
    statuses = {d["id"]: d["status"] for d in admin("GET", f"/admin/events/{event_id}")[
        "deliveries"]}
    assert statuses.pop(dead["id"]) == "superseded" and list(statuses.values()) == ["delivered"]
    assert admin("GET", "/admin/dead-letters")["dead_letters"] == []
    assert len(emulator.emulator.executions_for("github-push")) == 1
    # Tidying up: the redrive is held, with the warning, and nothing runs twice.
    held = admin("POST", "/admin/dead-letters/redrive", json={"ids": [dead["id"]]})
    assert held["redriven"] == 0 and held["held"] == 1 and "superseded" in held["warning"]
    assert admin("GET", f"/admin/events/{event_id}")["state"] == "delivered"
    forced = admin("POST", "/admin/dead-letters/redrive", json={"ids": [dead["id"]],
                                                                 "force": True})
    assert forced == {"redriven": 1}  # the operator insisted: it runs again, knowingly
    wait_for(lambda: len(emulator.emulator.executions_for("github-push")) == 2)


# -- 7. Failed authentication, the console's session, and a TLS proxy in front ----------------------

def test_failed_authentication_is_limited_per_client_and_logged(
        make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge("""
[[channels]]
name = "plant-a"
tokens = ["agent-token-plant-a-0001"]
signing_secret = "whsec_cGxhbnQtYS1jaGFubmVsLXNpZ25pbmcta2V5"
""")
    guesses = [f"guess-{i:04d}-not-a-token" for i in range(12)]
    answers = [http.get(f"{bridge.url}/admin/events", timeout=30,
                         headers={"Authorization": f"Bearer {g}"}) for g in guesses]
    assert [a.status_code for a in answers[:10]] == [401] * 10
    assert answers[10].status_code == 429 and int(answers[10].headers["Retry-After"]) >= 1
    assert answers[10].json()["error"]["code"] == "too_many_attempts"
    # Over the limit, even the right token waits: guessing runs at 10 tries a minute.
    assert http.get(f"{bridge.url}/admin/events", headers=AUTH, timeout=30).status_code == 429
    pull = http.post(f"{bridge.url}/agent/v1/channels/plant-a/pull", json={"agent": "a"},
                      headers={"Authorization": "Bearer agent-token-plant-a-0001"}, timeout=30)
    assert pull.status_code == 429
    login = http.post(f"{bridge.url}/console/login", data={"token": ADMIN_TOKEN}, timeout=30)
    assert login.status_code == 429 and "Retry-After" in login.headers
    logs = wait_for(lambda: (text := bridge.logs()).count("authentication failed") >= 10 and text)
    assert not any(g in logs for g in guesses)  # what was tried is never logged


def sign_in(bridge: Bridge, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post(f"{bridge.url}/console/login", data={"token": ADMIN_TOKEN}, timeout=30,
                      headers=headers or {})


def test_signing_out_ends_the_session_and_the_cookie_is_opaque(
        make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge()
    signed_in = sign_in(bridge)
    assert signed_in.status_code == 303
    cookie = signed_in.cookies["bridge_console"]
    old_digest = hashlib.sha256(b"bridge.console:" + ADMIN_TOKEN.encode()).hexdigest()[:32]
    assert old_digest not in cookie and ADMIN_TOKEN not in cookie
    assert "." not in cookie  # no signed payload: an opaque id
    page = http.get(f"{bridge.url}/console/events", cookies={"bridge_console": cookie},
                     timeout=30)
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    out = http.post(f"{bridge.url}/console/logout", data={"csrf": csrf.group(1)},
                     cookies={"bridge_console": cookie}, timeout=30)
    assert out.status_code == 303
    replayed = http.get(f"{bridge.url}/console/events", cookies={"bridge_console": cookie},
                         timeout=30)
    assert replayed.status_code == 303 and replayed.headers["location"] == "/console/login"


def test_behind_a_trusted_tls_proxy_the_console_is_secure_and_accepts_its_own_origin(
        make_bridge: Callable[..., Bridge]) -> None:
    public = "https://console.example.test"
    bridge = make_bridge(start=False)
    text = bridge.config_path.read_text()
    bridge.config_path.write_text(text.replace('shutdown_timeout = "3s"\n', (
        f'shutdown_timeout = "3s"\npublic_url = "{public}"\n'
        'forwarded_allow_ips = ["127.0.0.1"]\n'), 1))
    bridge.start()
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    signed_in = sign_in(bridge, proxied)
    assert signed_in.status_code == 303
    assert "secure" in signed_in.headers["set-cookie"].lower()
    cookie = signed_in.cookies["bridge_console"]
    page = http.get(f"{bridge.url}/console/events", headers=proxied, timeout=30,
                     cookies={"bridge_console": cookie})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    paused = http.post(f"{bridge.url}/console/routes/github->github-push/pause",
                        data={"csrf": csrf.group(1), "reason": "proxy"}, timeout=30,
                        headers={**proxied, "Origin": public},
                        cookies={"bridge_console": cookie})
    assert paused.status_code in (200, 303), paused.text
    forged = http.post(f"{bridge.url}/console/routes/github->github-push/resume",
                        data={"csrf": csrf.group(1)}, timeout=30,
                        headers={**proxied, "Origin": "https://evil.example"},
                        cookies={"bridge_console": cookie})
    assert forged.status_code == 403


def test_forwarded_headers_from_anyone_else_are_not_believed(
        make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge()
    signed_in = sign_in(bridge, {"X-Forwarded-Proto": "https"})
    assert "secure" not in signed_in.headers["set-cookie"].lower()
    # A client cannot dodge the limit by claiming other addresses.
    for i in range(11):
        answer = http.get(f"{bridge.url}/admin/events", timeout=30, headers={
            "Authorization": "Bearer wrong", "X-Forwarded-For": f"198.51.100.{i}"})
    assert answer.status_code == 429


@pytest.mark.parametrize("url", [u.format(port=80) for u in LOOPBACK_FORMS[:4]])
def test_the_send_time_check_sees_the_host_the_client_connects_to(url: str) -> None:
    """For a URL stored before canonical forms (or by any other path), the relay's own check
    reads the host as the client does."""
    from bridge.web.guard import connect_host, is_public

    assert not is_public(connect_host(url))
