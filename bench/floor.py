"""The least work a Python proxy on uvloop + httptools can do per request: a floor, not a gateway.

It forwards bodiless requests on client keep-alive connections to one upstream through a
pool of keep-alive connections and copies the response back: no routing, no
authentication, no limits, no logging, no timeouts, no error handling worth the name. It
exists only to be measured beside jwtgate in the same benchmark run, as the ceiling any
Python gateway on this stack can reach on this machine (what remains per request is the
kernel's socket work and the event loop's and llhttp's own overhead).

    bench/run --scenarios noauth,hs256 --gateway ".venv/bin/python bench/floor.py" \\
        --gateway-name python-floor

Listens on 127.0.0.1:18000 and forwards to 127.0.0.1:18080 (the harness's ports), or
``--listen PORT --upstream PORT``. Never put it in front of anything.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; one exchange at a time."""

    def __init__(self, pool: deque[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.head: list[bytes] = []
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head += (name, b": ", value, b"\r\n")

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        out = b"HTTP/1.1 %d OK\r\n%b\r\n%b" % (self.parser.get_status_code(), b"".join(self.head),
                                               b"".join(self.body))
        self.head, self.body = [], []
        self.pool.append(self)
        if client is not None and client.transport is not None:
            client.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)


class Client(asyncio.Protocol):
    """One client connection."""

    def __init__(self, pool: deque[Upstream], upstream: int) -> None:
        self.pool, self.upstream = pool, upstream
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.head: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in (b"host", b"connection"):
            self.head += (name, b": ", value, b"\r\n")

    def on_message_complete(self) -> None:
        request = b"%b %b HTTP/1.1\r\nHost: upstream\r\n%b\r\n" % (
            self.parser.get_method(), self.url, b"".join(self.head))
        self.url, self.head = b"", []
        if self.pool:
            up = self.pool.pop()
            up.client = self
            assert up.transport is not None
            up.transport.write(request)
        else:
            asyncio.get_running_loop().create_task(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        transport, up = await loop.create_connection(lambda: Upstream(self.pool), "127.0.0.1", self.upstream)
        up.client = self
        transport.write(request)


async def main(listen: int, upstream: int) -> None:
    loop = asyncio.get_running_loop()
    pool: deque[Upstream] = deque()
    server = await loop.create_server(lambda: Client(pool, upstream), "127.0.0.1", listen, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=int, default=18000)
    p.add_argument("--upstream", type=int, default=18080)
    p.add_argument("config", nargs="?", help="ignored (the harness passes its generated configuration)")
    a = p.parse_args()
    uvloop.run(main(a.listen, a.upstream))
