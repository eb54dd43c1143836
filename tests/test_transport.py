"""The HTTP/1.1 transport under the bridge's httpx clients, against a real TCP server that
answers the way real servers do, including the awkward ways: chunked and close-delimited
bodies, interim 100 answers, idle connections closed by the server, truncated and malformed
answers, slow answers, server-sent events, and TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from bridge.transport import FastTransport, client

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
                served += 1
                if path == b"/once" and served > 1:
                    return  # the server's idle timeout fired just as this request arrived
                keep_open = await ANSWERS[path.split(b"?")[0]](writer, head, body)
                await writer.drain()
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


async def _large(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    payload = bytes(range(256)) * 8192  # 2 MiB, more than the transport buffers unread
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(payload)).encode()
                 + b"\r\n\r\n" + payload)
    return True


ANSWERS: dict[bytes, Handler] = {
    b"/len": _len, b"/chunked": _chunked, b"/close": _close_delimited, b"/bye": _bye,
    b"/slow": _slow, b"/continue": _continue, b"/truncated": _truncated,
    b"/once": _len, b"/garbage": _garbage, b"/silent": _silent, b"/events": _events, b"/large": _large,
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
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_sends_the_exact_bytes() -> None:
    async def scenario() -> None:
        async with running() as server, client(4) as http:
            body = b'{"payload":"' + b"x" * 3000 + b'"}'
            for number in range(5):
                response = await http.post(f"http://127.0.0.1:{server.port}/len?n={number}",
                                           content=body, headers={"Idempotency-Key": "k-1"})
                assert response.status_code == 200
                assert response.json() == {"echo": len(body)}
                assert response.reason_phrase == "OK"
            assert server.connections == 1
            assert [r[2] for r in server.requests] == [body] * 5
            head = server.requests[0][1].lower()
            assert b"idempotency-key: k-1\r\n" in head and b"host: 127.0.0.1:" in head
            assert server.requests[4][0] == b"POST /len?n=4 HTTP/1.1"

    run(scenario())


def test_chunked_close_delimited_interim_and_large_bodies() -> None:
    async def scenario() -> None:
        async with running() as server, client(4) as http:
            base = f"http://127.0.0.1:{server.port}"
            assert (await http.get(f"{base}/chunked")).text == "alpha-beta-gamma"
            assert (await http.get(f"{base}/close")).text == "until the end"
            interim = await http.post(f"{base}/continue", content=b"abc")
            assert interim.status_code == 200 and interim.json() == {"echo": 3}
            large = await http.get(f"{base}/large")
            assert large.content == bytes(range(256)) * 8192
            again = await http.get(f"{base}/len")  # the connection after the 2 MiB is sound
            assert again.json() == {"echo": 0}

    run(scenario())


def test_a_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async def scenario() -> None:
        async with running() as server, client(1) as http:
            base = f"http://127.0.0.1:{server.port}"
            for _ in range(3):
                assert (await http.post(f"{base}/bye", content=b"x")).status_code == 200
                await asyncio.sleep(0.1)  # the server has closed it by now
            assert server.connections == 3
            assert len(server.requests) == 3  # each request reached the server once

            # Closed while the request was on its way: sent once more, on a new connection.
            for _ in range(2):
                assert (await http.post(f"{base}/once", content=b"x")).json() == {"echo": 1}
            assert server.connections == 5

    run(scenario())


def test_broken_answers_raise_httpx_errors() -> None:
    async def scenario() -> None:
        async with running() as server, client(4) as http:
            base = f"http://127.0.0.1:{server.port}"
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(f"{base}/truncated")
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(f"{base}/garbage")
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(f"{base}/silent")
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"{base}/slow", timeout=httpx.Timeout(5, read=0.2))
            assert (await http.get(f"{base}/len")).status_code == 200  # and it goes on
        async with client(1) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{_closed_port()}/len")
            with pytest.raises(httpx.UnsupportedProtocol):
                await http.get("ftp://127.0.0.1/len")

    run(scenario())


def test_the_pool_limit_holds_and_times_out() -> None:
    async def scenario() -> None:
        async with running() as server, client(1) as http:
            base = f"http://127.0.0.1:{server.port}"
            slow = asyncio.create_task(http.get(f"{base}/slow"))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.PoolTimeout):
                await http.get(f"{base}/len", timeout=httpx.Timeout(5, pool=0.2))
            assert (await slow).status_code == 200
            assert (await http.get(f"{base}/len")).status_code == 200
            assert server.connections == 1

    run(scenario())


def test_streamed_events_arrive_as_they_are_sent() -> None:
    async def scenario() -> None:
        async with running() as server, client(2) as http:
            loop = asyncio.get_running_loop()
            started = loop.time()
            seen: list[tuple[str, float]] = []
            async with http.stream("GET", f"http://127.0.0.1:{server.port}/events") as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        seen.append((line[5:].strip(), loop.time() - started))
            assert [value for value, _ in seen] == ["0", "1", "2"]
            assert seen[0][1] < 0.15  # the first event did not wait for the last

    run(scenario())


def test_abandoning_a_stream_closes_its_connection() -> None:
    async def scenario() -> None:
        async with running() as server, client(1) as http:
            base = f"http://127.0.0.1:{server.port}"
            async with http.stream("GET", f"{base}/events") as response:
                async for _ in response.aiter_lines():
                    break
            assert (await http.get(f"{base}/len")).status_code == 200
            assert server.connections == 2  # the half-read stream was not reused

    run(scenario())


def test_tls_with_server_name_and_pinned_address() -> None:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def scenario() -> None:
        async with running(server_context) as server:
            transport = FastTransport(4, ssl_context=client_context)
            async with httpx.AsyncClient(transport=transport) as http:
                named = await http.post(f"https://localhost:{server.port}/len", content=b"tls")
                assert named.json() == {"echo": 3}
                pinned = await http.post(f"https://127.0.0.1:{server.port}/len", content=b"pin",
                                         headers={"Host": f"localhost:{server.port}"},
                                         extensions={"sni_hostname": "localhost"})
                assert pinned.json() == {"echo": 3}
                with pytest.raises(httpx.ConnectError):  # the certificate names localhost only
                    await http.get(f"https://127.0.0.1:{server.port}/len")

    run(scenario())


def test_a_proxy_in_the_environment_selects_httpx_own_transport(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    http = client(2)
    assert not isinstance(http._transport, FastTransport)
    monkeypatch.delenv("HTTPS_PROXY")
    assert isinstance(client(2)._transport, FastTransport)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
