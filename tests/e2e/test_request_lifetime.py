"""What a request leaves behind, with the gateway in this process on real sockets.

- No reference cycles per request: a request's objects go with their last reference, so the
  cycle collector never has per-request work (its collections were ~10% of the CPU of a
  proxied request, and their pauses the tail latency).
- An upstream keep-alive connection carries GET, HEAD (a head announcing a body it does not
  send) and GET again correctly: the response parser is reused only after a whole message.
- A client that half-closes after its requests (``shutdown(SHUT_WR)``) still gets every answer,
  although answers are written at the end of the loop's turn (jwtgate.writebatch).
- An exception escaping the handler answers 500 and ends that connection only; a client's
  non-UTF-8 header in a realm does not raise at all.
"""

from __future__ import annotations

import asyncio
import gc
import json

import uvloop

from jwtgate.http.server import RequestBody, Responder
from jwtgate.process.gateway import Gateway
from jwtgate.runtime.context import RequestContext
from jwtgate.upstream.client import Exchange
from jwtgate_e2e import POST_JWKS, POST_TOKEN, free_port, tamper_signature

_PER_REQUEST = (RequestContext, Responder, RequestBody, Exchange)


class _Upstream:
    """A keep-alive HTTP/1.1 upstream: 200 with an 11-byte body; HEAD gets the head only."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request line)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                self.requests.append((number, line))
                body = b'{"ok":true}'
                out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
                writer.write(out if line.startswith(b"HEAD ") else out + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str,
                    token: str | None = None) -> tuple[int, bytes]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = b"" if method == "HEAD" else await asyncio.wait_for(reader.readexactly(length), 5)
    return status, body


async def _with_gateway(tmp_path, test) -> None:
    up = _Upstream()
    up_server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up_port = up_server.sockets[0].getsockname()[1]
    port = free_port()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(POST_JWKS))
    conf = tmp_path / "gw.conf"
    conf.write_text(f"""
upstream backend {{ server 127.0.0.1:{up_port}; keepalive 1; }}
access_log off;
server {{
    listen 127.0.0.1:{port};
    location /api/ {{
        auth_jwt "api";
        auth_jwt_key_file {jwks};
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
    location /open/ {{
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
    location /realm/ {{
        auth_jwt "API $http_x_tenant";
        auth_jwt_key_file {jwks};
        proxy_pass http://backend;
    }}
    location = /ret {{
        return 200 "ret\n";
    }}
}}
""")
    gw = Gateway(str(conf))
    await gw.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await test(up, reader, writer, port)
        writer.close()
    finally:
        await gw.stop(graceful=False)
        up_server.close()


def test_requests_leave_no_reference_cycles(tmp_path):
    bad = tamper_signature(POST_TOKEN)

    async def test(up, reader, writer, port) -> None:
        async def mix() -> None:
            assert await _exchange(reader, writer, "GET", "/open/a") == (200, b'{"ok":true}')
            assert (await _exchange(reader, writer, "HEAD", "/open/h"))[0] == 200
            assert (await _exchange(reader, writer, "GET", "/api/x", POST_TOKEN))[0] == 200
            assert (await _exchange(reader, writer, "GET", "/api/x", bad))[0] == 401
            assert (await _exchange(reader, writer, "GET", "/api/x"))[0] == 401
            assert (await _exchange(reader, writer, "GET", "/nowhere"))[0] == 404

        await mix()  # warm-up: first connections, key loading, caches
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                await mix()
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage if isinstance(o, _PER_REQUEST)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert left == [], f"request objects only the cycle collector frees: {sorted(set(left))}"

    uvloop.run(_with_gateway(tmp_path, test))


def test_upstream_connection_reused_across_get_head_get(tmp_path):
    async def test(up, reader, writer, port) -> None:
        results = [await _exchange(reader, writer, m, p) for m, p in
                   [("GET", "/open/1"), ("HEAD", "/open/2"), ("GET", "/open/3"), ("GET", "/open/4"),
                    ("HEAD", "/open/5"), ("HEAD", "/open/6"), ("GET", "/open/7")]]
        assert results == [(200, b'{"ok":true}'), (200, b""), (200, b'{"ok":true}'), (200, b'{"ok":true}'),
                           (200, b""), (200, b""), (200, b'{"ok":true}')]
        # One kept-alive upstream connection carried them all, in order.
        assert [line.split()[1] for _, line in up.requests] == [f"/open/{i}".encode() for i in range(1, 8)]
        assert {number for number, _ in up.requests} == {1}

    uvloop.run(_with_gateway(tmp_path, test))


async def _half_closed(port: int, payload: bytes) -> bytes:
    """Send ``payload``, shut the write side, read until the gateway closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def test_half_closed_client_gets_every_answer(tmp_path):
    async def test(up, reader, writer, port) -> None:
        one = b"GET /ret HTTP/1.1\r\nHost: t\r\n\r\n"
        # Answers the gateway makes itself: always delivered.
        for path in (b"/ret", b"/realm/x", b"/nowhere"):
            data = await _half_closed(port, b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            assert data.startswith(b"HTTP/1.1 "), (path, data)
            assert data.count(b"HTTP/1.1 ") == 1
        data = await _half_closed(port, one * 3)
        assert data.count(b"HTTP/1.1 200 OK") == 3 and data.endswith(b"ret\n"), data
        # A proxied request the client gave up on while it waited for the upstream is
        # abandoned, as NGINX does (499): a whole answer or none, never part of one.
        for _ in range(20):
            data = await _half_closed(port, b"GET /open/p HTTP/1.1\r\nHost: t\r\n\r\n")
            assert data == b"" or (data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b'{"ok":true}')), data

    uvloop.run(_with_gateway(tmp_path, test))


def test_non_utf8_header_in_realm_is_answered(tmp_path):
    async def test(up, reader, writer, port) -> None:
        writer.write(b"GET /realm/x HTTP/1.1\r\nHost: t\r\nX-Tenant: a\xffb\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 401 ")
        assert b'WWW-Authenticate: Bearer realm="API a\xffb"' in head  # the octets as sent
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        # The connection goes on.
        assert await _exchange(reader, writer, "GET", "/ret") == (200, b"ret\n")

    uvloop.run(_with_gateway(tmp_path, test))


def test_an_exception_escaping_the_handler_is_a_500_and_closes_only_that_connection():
    from jwtgate.http.server import HttpLimits, HttpProtocol

    async def handler(ctx) -> None:
        if ctx.uri == "/boom":
            raise RuntimeError("a bug")
        ctx.responder.send(204)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpProtocol(handler, HttpLimits(), [0]), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)  # answered, then closed
            assert data.startswith(b"HTTP/1.1 500 ") and b"Connection: close" in data
            assert data.count(b"HTTP/1.1 ") == 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await _exchange(reader, writer, "GET", "/ok") == (204, b"")
            writer.close()
        finally:
            server.close()

    uvloop.run(main())
