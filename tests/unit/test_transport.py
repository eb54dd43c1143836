"""The outbound client (`bridge.web.client`, aiohttp underneath), against a real TCP server that
answers the way real servers do, including the awkward and the hostile ways: chunked and
close-delimited bodies, interim 100 answers, idle connections closed by the server, truncated and
malformed answers, slow and dripping answers, huge and gzip answers, server-sent events, and
TLS."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from bridge.web.client import (
    BadHeader,
    Blocked,
    Broken,
    Client,
    ConnectFailed,
    HttpError,
    InvalidTarget,
    Timeout,
    lines,
)
from bridge.web.guard import GuardedResolver

Handler = Callable[[asyncio.StreamWriter, bytes, bytes], Awaitable[bool]]


class Server:
    """Reads each request (head and Content-Length body) and answers by its path."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[bytes, bytes, bytes]] = []  # (request line, head, body)
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line = head.split(b"\r\n", 1)[0]
                length = 0
                for header in head.split(b"\r\n")[1:]:
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append((line, head, body))
                path = line.split(b" ")[1]
                if path.startswith(b"http://"):  # absolute form: we are being used as a proxy
                    path = b"/" + path.split(b"/", 3)[3]
                served += 1
                if path == b"/once" and served > 1:
                    return  # the server's idle timeout fired just as this request arrived
                keep_open = await ANSWERS[path.split(b"?")[0]](writer, head, body)
                try:
                    await writer.drain()
                except ConnectionError:
                    return
                if not keep_open:
                    return
        finally:
            writer.close()


async def _len(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    answer = b'{"echo":' + str(len(body)).encode() + b"}"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(answer)).encode() + b"\r\n\r\n" + answer)
    return True


async def _chunked(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for part in (b"alpha-", b"beta-", b"gamma"):
        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")
    return True


async def _close_delimited(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    return False


async def _bye(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    # Answers as if the connection stayed open, then closes it: the next request the client
    # sends on it meets a closed socket.
    await _len(writer, head, body)
    await writer.drain()
    await asyncio.sleep(0.05)
    return False


async def _slow(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    await asyncio.sleep(1.0)
    return await _len(writer, head, body)


async def _continue(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await writer.drain()
    return await _len(writer, head, body)


async def _truncated(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    return False


async def _garbage(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    writer.write(b"SURPRISE\r\n\r\n")
    return False


async def _silent(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    return False  # closes without a byte


async def _events(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    for number in range(3):
        event = f"event: tick\ndata: {number}\n\n".encode()
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
    writer.write(b"0\r\n\r\n")
    return True


async def _drip(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):  # a byte every 50 ms: each read is quick, the whole is not
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.05)
    return False


async def _huge(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    chunked = b"chunked" in head  # ?chunked: no Content-Length to go by
    writer.write(b"HTTP/1.1 200 OK\r\n" + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked
                 else b"Content-Length: " + str(64 << 20).encode() + b"\r\n\r\n"))
    block = b"y" * 65536
    try:
        for _ in range(1024):  # 64 MiB, if anyone kept reading
            writer.write(f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block)
            await writer.drain()
    except ConnectionError:
        pass
    return False


async def _gzip(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    bomb = gzip.compress(b"\0" * (50 << 20))  # 50 MiB of zeros in ~50 KB
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
                 + str(len(bomb)).encode() + b"\r\n\r\n" + bomb)
    return True


async def _large(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    payload = bytes(range(256)) * 8192  # 2 MiB, more than the transport buffers unread
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(payload)).encode()
                 + b"\r\n\r\n" + payload)
    return True


ANSWERS: dict[bytes, Handler] = {
    b"/len": _len, b"/chunked": _chunked, b"/close": _close_delimited, b"/bye": _bye,
    b"/slow": _slow, b"/continue": _continue, b"/truncated": _truncated,
    b"/once": _len, b"/garbage": _garbage, b"/silent": _silent, b"/events": _events, b"/large": _large,
    b"/drip": _drip, b"/huge": _huge, b"/gzip": _gzip,
}


@asynccontextmanager
async def running(context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server()
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=context)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


@asynccontextmanager
async def client(limit: int, **options: object) -> AsyncIterator[Client]:
    http = Client(limit, timeout=float(options.pop("timeout", 10.0)), **options)  # type: ignore[arg-type]
    try:
        yield http
    finally:
        await http.aclose()


def test_keep_alive_reuses_one_connection_and_sends_the_exact_bytes() -> None:
    async def scenario() -> None:
        async with running() as server, client(4) as http:
            body = b'{"payload":"' + b"x" * 3000 + b'"}'
            for number in range(5):
                reply = await http.request("POST", f"http://127.0.0.1:{server.port}/len?n={number}",
                                           body=body, headers={"Idempotency-Key": "k-1"})
                assert reply.status == 200
                assert reply.json() == {"echo": len(body)}
            assert server.connections == 1
            assert [r[2] for r in server.requests] == [body] * 5
            head = server.requests[0][1].lower()
            assert b"idempotency-key: k-1\r\n" in head and b"host: 127.0.0.1:" in head
            assert b"accept-encoding: identity\r\n" in head  # nothing to inflate
            assert server.requests[4][0] == b"POST /len?n=4 HTTP/1.1"

    run(scenario())


def test_chunked_close_delimited_interim_and_large_bodies() -> None:
    async def scenario() -> None:
        async with running() as server, client(4, max_body=4 << 20) as http:
            base = f"http://127.0.0.1:{server.port}"
            assert (await http.request("GET", f"{base}/chunked")).body == b"alpha-beta-gamma"
            assert (await http.request("GET", f"{base}/close")).body == b"until the end"
            interim = await http.request("POST", f"{base}/continue", body=b"abc")
            assert interim.status == 200 and interim.json() == {"echo": 3}
            large = await http.request("GET", f"{base}/large")
            assert large.body == bytes(range(256)) * 8192 and not large.truncated
            again = await http.request("GET", f"{base}/len")  # the connection is still sound
            assert again.json() == {"echo": 0}

    run(scenario())


def test_a_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async def scenario() -> None:
        async with running() as server, client(1) as http:
            base = f"http://127.0.0.1:{server.port}"
            for _ in range(3):
                assert (await http.request("POST", f"{base}/bye", body=b"x")).status == 200
                await asyncio.sleep(0.1)  # the server has closed it by now
            assert server.connections == 3
            assert len(server.requests) == 3  # each request reached the server once

            # Closed while the request was on its way: sent once more, on a new connection.
            for _ in range(2):
                reply = await http.request("POST", f"{base}/once", body=b"x")
                assert reply.json() == {"echo": 1}
            assert server.connections == 5

    run(scenario())


def test_broken_answers_raise_http_errors_that_say_whether_the_request_arrived() -> None:
    async def scenario() -> None:
        async with running() as server, client(4) as http:
            base = f"http://127.0.0.1:{server.port}"
            for path in ("/truncated", "/garbage", "/silent"):
                with pytest.raises(Broken) as broken:
                    await http.request("GET", f"{base}{path}")
                assert broken.value.reached  # it was sent: the server may have acted on it
            with pytest.raises(Timeout) as late:
                await http.request("GET", f"{base}/slow", timeout=0.2)
            assert late.value.reached
            assert (await http.request("GET", f"{base}/len")).status == 200  # and it goes on
        async with client(1) as http:
            with pytest.raises(ConnectFailed) as refused:
                await http.request("GET", f"http://127.0.0.1:{_closed_port()}/len")
            assert not refused.value.reached  # provably never arrived
            with pytest.raises(InvalidTarget):
                await http.request("GET", "ftp://127.0.0.1/len")
            with pytest.raises(InvalidTarget):
                await http.request("POST", "http://h:abc/x")

    run(scenario())


def test_every_attempt_has_an_overall_deadline() -> None:
    """A peer that sends one byte every 50 ms never trips a per-read timeout; the attempt's
    own deadline ends it."""

    async def scenario() -> None:
        async with running() as server, client(1, timeout=0.5) as http:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Timeout):
                await http.request("GET", f"http://127.0.0.1:{server.port}/drip")
            assert loop.time() - started < 2.0

    run(scenario())


@pytest.mark.parametrize("query", ["", "?chunked"], ids=["content-length", "chunked"])
def test_answers_are_read_up_to_the_cap_and_no_further(query: str) -> None:
    async def scenario() -> None:
        async with running() as server, client(1, max_body=64 * 1024) as http:
            reply = await http.request("GET", f"http://127.0.0.1:{server.port}/huge{query}")
            assert reply.status == 200 and reply.truncated and len(reply.body) == 64 * 1024
            with pytest.raises(ValueError):
                reply.json()
            gz = await http.request("GET", f"http://127.0.0.1:{server.port}/gzip")
            # 50 MiB of zeros arrive as their ~50 KB of gzip: kept as sent, never inflated.
            assert not gz.truncated and len(gz.body) < 64 * 1024
            assert gz.body[:2] == b"\x1f\x8b" and gzip.decompress(gz.body) == b"\0" * (50 << 20)

    run(scenario())


@pytest.mark.parametrize("value", ["x\r\nX-Injected: yes", "a\nb", "nul\x00", "del\x7f"])
def test_control_characters_in_header_values_are_never_sent(value: str) -> None:
    async def scenario() -> None:
        async with running() as server, client(1) as http:
            with pytest.raises(BadHeader) as refused:
                await http.request("POST", f"http://127.0.0.1:{server.port}/len", body=b"x",
                                   headers={"Idempotency-Key": value})
            assert not refused.value.reached
            assert server.requests == []

    run(scenario())


def test_the_pool_limit_holds_and_times_out() -> None:
    async def scenario() -> None:
        async with running() as server, client(1) as http:
            base = f"http://127.0.0.1:{server.port}"
            slow = asyncio.create_task(http.request("GET", f"{base}/slow"))
            await asyncio.sleep(0.1)
            with pytest.raises(ConnectFailed) as waited:
                await http.request("GET", f"{base}/len", connect_timeout=0.2)
            assert not waited.value.reached
            assert (await slow).status == 200
            assert (await http.request("GET", f"{base}/len")).status == 200
            assert server.connections == 1

    run(scenario())


def test_streamed_events_arrive_as_they_are_sent() -> None:
    async def scenario() -> None:
        async with running() as server, client(2) as http:
            loop = asyncio.get_running_loop()
            started = loop.time()
            seen: list[tuple[str, float]] = []
            async with http.stream("GET", f"http://127.0.0.1:{server.port}/events",
                                   read_timeout=5) as response:
                async for line in lines(response):
                    if line.startswith("data:"):
                        seen.append((line[5:].strip(), loop.time() - started))
            assert [value for value, _ in seen] == ["0", "1", "2"]
            assert seen[0][1] < 0.15  # the first event did not wait for the last

    run(scenario())


def test_a_silent_stream_times_out_per_read() -> None:
    async def scenario() -> None:
        async with running() as server, client(2) as http:
            with pytest.raises(Timeout):
                async with http.stream("GET", f"http://127.0.0.1:{server.port}/slow",
                                       read_timeout=0.2) as response:
                    await response.read()

    run(scenario())


def test_abandoning_a_stream_closes_its_connection() -> None:
    async def scenario() -> None:
        async with running() as server, client(1) as http:
            base = f"http://127.0.0.1:{server.port}"
            async with http.stream("GET", f"{base}/events", read_timeout=5) as response:
                async for _ in lines(response):
                    break
            assert (await http.request("GET", f"{base}/len")).status == 200
            assert server.connections == 2  # the half-read stream was not reused

    run(scenario())


class FixedResolver(ThreadedResolver):
    """Every name resolves to 127.0.0.1: what a DNS answer pointing a public name at the test
    server looks like."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)]


def test_tls_is_verified_against_the_name_not_the_resolved_address() -> None:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("hooks.example.com").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def scenario() -> None:
        async with running(server_context) as server:
            async with client(4, ssl_context=client_context, resolver=FixedResolver()) as http:
                named = await http.request("POST", f"https://hooks.example.com:{server.port}/len",
                                           body=b"tls")
                assert named.json() == {"echo": 3}
                head = server.requests[-1][1].lower()
                assert f"host: hooks.example.com:{server.port}".encode() in head
                with pytest.raises(HttpError):  # the certificate does not name the address
                    await http.request("GET", f"https://127.0.0.1:{server.port}/len")

    run(scenario())


def test_the_guarded_resolver_refuses_names_of_private_addresses() -> None:
    async def scenario() -> None:
        async with running() as server, client(1, resolver=GuardedResolver()) as http:
            with pytest.raises(Blocked) as blocked:
                await http.request("POST", f"http://localhost:{server.port}/len", body=b"x")
            assert not blocked.value.reached and "127.0.0.1" in str(blocked.value)
            assert server.requests == []

    run(scenario())


def test_a_proxy_in_the_environment_carries_the_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxies work for every call: a plain HTTP proxy receives the absolute-form request."""

    async def scenario() -> None:
        async with running() as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            async with client(1) as http:
                # The "proxy" answers /len itself; the request line names the real target.
                reply = await http.request("POST", "http://upstream.invalid/len", body=b"abc")
                assert reply.json() == {"echo": 3}
            assert proxy.requests[0][0] == b"POST http://upstream.invalid/len HTTP/1.1"

    run(scenario())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
