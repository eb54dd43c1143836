"""Hostile input against the real server: compressed bodies, header smuggling, odd bytes."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.support.harness import GITHUB_SECRET, Bridge, github_headers

GZIP_SOURCE = f"""
[[sources]]
name = "zipped"
provider = "github"
secret = "{GITHUB_SECRET}"
gzip = true
max_body_bytes = 65536
"""


@pytest.fixture(scope="module")
def bridge(make_module_bridge: Callable[..., Bridge]) -> Bridge:
    return make_module_bridge(GZIP_SOURCE)


def test_gzip_is_accepted_only_where_configured(bridge: Bridge) -> None:
    body = b'{"ref":"refs/heads/zip","padding":"' + b"z" * 2000 + b'"}'
    headers = {**github_headers(body, delivery="gz-1"), "Content-Encoding": "gzip"}
    ok = bridge.post("/hooks/zipped", gzip.compress(body), headers)
    assert ok.status_code == 202, ok.text
    shown = bridge.event(ok.json()["id"])
    assert (shown["body"], shown["body_encoding"]) == (body.decode(), "text")  # stored decoded
    refused = bridge.post("/hooks/github", gzip.compress(body), headers)
    assert refused.status_code == 415
    assert refused.json()["error"]["code"] == "unsupported_media_type"
    brotli = bridge.post("/hooks/zipped", body, {**headers, "Content-Encoding": "br"})
    assert brotli.status_code == 415
    broken = bridge.post("/hooks/zipped", b"\x1f\x8b not gzip", headers)
    assert broken.status_code == 400


def test_a_zip_bomb_gets_413(bridge: Bridge) -> None:
    before = stored(bridge)
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # 50 MiB that packs into ~50 KB
    assert len(bomb) < 65536
    headers = {**github_headers(b"{}", delivery="bomb"), "Content-Encoding": "gzip"}
    response = bridge.post("/hooks/zipped", bomb, headers)
    assert response.status_code == 413
    assert stored(bridge) == before  # nothing stored (the bridge is shared by this module)


def stored(bridge: Bridge) -> set[str]:
    return {event["id"] for event in bridge.events()}


def raw_request(bridge: Bridge, head: bytes, body: bytes = b"") -> int:
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = sock.recv(65536)
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_duplicate_signature_headers_never_verify(bridge: Bridge) -> None:
    before = stored(bridge)
    body = b'{"ref":"dup"}'
    good = github_headers(body, delivery="dup")["X-Hub-Signature-256"]
    head = (f"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"X-GitHub-Delivery: dup\r\nX-Hub-Signature-256: sha256={'0' * 64}\r\n"
            f"X-Hub-Signature-256: {good}\r\nConnection: close\r\n\r\n").encode()
    assert raw_request(bridge, head, body) in (400, 401)
    assert stored(bridge) == before  # nothing stored (the bridge is shared by this module)


@pytest.mark.parametrize(
    "header",
    [
        b"X-Hub-Signature-256 : sha256=00\r\n",  # space before the colon
        b"X-Hub-Signature-256: sha256=00\r\n continued\r\n",  # obsolete line folding
        "X-Hub-Signature-256\u2010x: sha256=00\r\n".encode(),  # a unicode hyphen lookalike
        b"X-Hub-Signature-256: sha256=\xff\xfe\r\n",  # invalid UTF-8 in a value
    ],
)
def test_malformed_headers_are_refused_without_a_500(bridge: Bridge, header: bytes) -> None:
    before = stored(bridge)
    body = b'{"ref":"smuggle"}'
    head = (b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
            + header + b"Connection: close\r\n\r\n")
    status = raw_request(bridge, head, body)
    assert status in (0, 400, 401)  # refused by the HTTP parser or by the verifier
    assert stored(bridge) == before  # nothing stored (the bridge is shared by this module)


def test_a_flood_of_headers_is_refused_cleanly(bridge: Bridge) -> None:
    body = b"{}"
    flood = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 40) for i in range(2000))
    head = (b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + flood
            + b"Connection: close\r\n\r\n")
    assert raw_request(bridge, head, body) in (0, 400, 401, 413, 431)
    assert bridge.post("/healthz", b"").status_code in (200, 405)  # still serving


def test_invalid_utf8_and_deep_json_are_stored_and_forwarded_safely(bridge: Bridge) -> None:
    binary = b'\xff\xfe\x00{"not": "utf-8"}'
    assert bridge.post("/hooks/github", binary, github_headers(binary, delivery="bin")
                       ).status_code == 202
    deep = b"[" * 5000 + b"]" * 5000
    assert bridge.post("/hooks/github", deep, github_headers(deep, delivery="deep")
                       ).status_code == 202
    bodies = {key: body for key, body in bridge.query(
        "SELECT e.idempotency_key, d.body FROM deliveries d JOIN events e ON e.id = d.event_id")}
    assert json.loads(bodies["github:bin"])["payload_encoding"] == "base64"
    assert json.loads(bodies["github:deep"])["payload_encoding"] == "text"  # not parsed


def test_slow_clients_do_not_block_other_senders(bridge: Bridge) -> None:
    """A slowloris connection (headers never finished) and a body trickled byte by byte hold
    only their own connections; a normal sender is answered at once meanwhile."""
    import time

    slow_headers = socket.create_connection(("127.0.0.1", bridge.port))
    slow_headers.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    body = b'{"ref":"trickle"}'
    trickle = socket.create_connection(("127.0.0.1", bridge.port))
    head = "".join(f"{k}: {v}\r\n" for k, v in github_headers(body, delivery="trickle").items())
    trickle.sendall(f"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                    f"{head}\r\n".encode() + body[:1])
    try:
        for i in range(5):
            started = time.monotonic()
            fast = f'{{"fast":{i}}}'.encode()
            response = bridge.post("/hooks/github", fast, github_headers(fast, delivery=f"f{i}"))
            assert response.status_code == 202
            assert time.monotonic() - started < 1.0
            slow_headers.sendall(b"a")  # keep both slow senders going
            trickle.sendall(body[1 + i:2 + i])
        trickle.sendall(body[6:])
        trickle.settimeout(10)
        assert trickle.recv(1024).startswith(b"HTTP/1.1 202")  # the trickled event got in too
    finally:
        slow_headers.close()
        trickle.close()


@settings(max_examples=200, deadline=None)
@example(body=b"[\x00]\x00", headers={}, event_type="t")  # UTF-16 JSON once slipped through
@example(body=b"\xef\xbb\xbf{}", headers={}, event_type="t")  # a BOM is not JSON
@given(body=st.binary(max_size=2048),
       headers=st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=5),
       event_type=st.text(max_size=30))
def test_the_envelope_is_always_valid_json_that_carries_the_body(
        body: bytes, headers: dict[str, str], event_type: str) -> None:
    import base64

    from bridge.core.models import VerifiedEvent
    from bridge.ingest.routing import envelope

    event = VerifiedEvent("id-1", "src", "github", event_type, "src:key", 1.5, headers, body)
    document = json.loads(envelope(event))
    assert document["headers"] == headers and document["event_type"] == event_type
    encoding = document["payload_encoding"]
    if encoding == "base64":
        assert base64.b64decode(document["payload"]) == body
    elif encoding == "text":
        assert document["payload"].encode() == body
    else:
        assert document["payload"] == json.loads(body)
