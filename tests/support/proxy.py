"""An HTTP proxy in the path between an agent and its edge (tests only).

It serves `CONNECT host:port` and absolute-form requests (`POST http://host:port/...`), as the
proxy an operator names in HTTPS_PROXY / HTTP_PROXY would, then pipes bytes both ways. A test
can cut every open connection at once (`cut()`), or rewrite bytes on their way back to the
client (`tamper`), as a TLS-intercepting proxy could.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Proxy:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.tamper: tuple[bytes, bytes] | None = None
        self.connections = 0  # client connections accepted
        self.requests: list[str] = []  # first request lines seen
        self.loop = asyncio.new_event_loop()
        self.writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.base_events.Server | None = None

    def start(self) -> Proxy:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.serve, self.host, 0), self.loop)
        self.server = future.result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cut(self) -> None:
        """Close every connection through the proxy, as a restarted proxy would."""
        async def close_all() -> None:
            for writer in list(self.writers):
                writer.transport.abort()
        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            if self.server is not None:
                self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n")
            method, target, version = head.decode("latin-1").split()
            self.requests.append(f"{method} {target}")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                up_reader, upstream = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = b""
            else:  # absolute form: the origin is in the request line
                rest = target.split("://", 1)[1]
                authority, _, path = rest.partition("/")
                host, _, port = authority.rpartition(":")
                up_reader, upstream = await asyncio.open_connection(host, int(port or 80))
                first = f"{method} /{path} {version}\r\n".encode("latin-1")
            self.writers.add(upstream)
            upstream.write(first)
            await asyncio.gather(self.pipe(reader, upstream, False),
                                 self.pipe(up_reader, writer, True))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self.writers.discard(w)
                    w.transport.abort()

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   back: bool) -> None:
        try:
            while data := await reader.read(65536):
                if back and self.tamper is not None:
                    data = data.replace(*self.tamper)
                elif not back and data.startswith((b"POST http://", b"GET http://")):
                    line, _, tail = data.partition(b"\r\n")  # the next request on this link
                    method, target, version = line.split(b" ")
                    path = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
                    data = b" ".join((method, path, version)) + b"\r\n" + tail
                writer.write(data)
                await writer.drain()
        except (OSError, ValueError):
            pass
        finally:
            writer.transport.abort()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
