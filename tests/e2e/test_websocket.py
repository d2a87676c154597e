"""WebSocket (Upgrade) tunnelling through proxy_pass, configured as NGINX documents it."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time

from jwtgate_e2e import (POST_TOKEN, SocketUpstream, free_port, raw, recv_head, recv_request, recv_until,
                         wait_until)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class EchoWebSocketServer(SocketUpstream):
    """A minimal RFC 6455 server: completes the handshake, then echoes raw bytes back."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        data = recv_head(c)
        if data is None:
            return
        head, _, rest = data.partition(b"\r\n\r\n")
        self.heads.append(head)
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
        if fields.get(b"Upgrade", b"").lower() != b"websocket":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
            return
        accept = base64.b64encode(hashlib.sha1(fields[b"Sec-WebSocket-Key"] + GUID).digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\nhello")
        if rest:
            c.sendall(rest)
        echo(c)


def echo(c: socket.socket) -> None:
    """Send back every byte ``c`` receives, until it closes (or fails)."""
    while True:
        try:
            chunk = c.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        c.sendall(chunk)


CONF = """
server {{
    listen 127.0.0.1:{{port}};
    location /ws/ {{
        auth_jwt "ws" token=$arg_token;
        auth_jwt_key_file {{keys}};
        proxy_pass http://127.0.0.1:{ws_port};
        {headers}
        proxy_read_timeout 2s;
    }}
}}
"""
UPGRADE_HEADERS = 'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";'


def handshake(port: int, path: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return s, data


def test_websocket_tunnel_both_ways(gateway):
    ws = EchoWebSocketServer()
    try:
        gw = gateway(CONF.format(ws_port=ws.port, headers=UPGRADE_HEADERS))
        s, head = handshake(gw.port, f"/ws/chat?token={POST_TOKEN}")
        with s:
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"upgrade: websocket" in head.lower()
            rest = head.split(b"\r\n\r\n", 1)[1]
            while len(rest) < 5:
                rest += s.recv(100)
            assert rest == b"hello"
            payload = os.urandom(300_000)
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                assert chunk, "tunnel closed early"
                got += chunk
            assert got == payload
        assert b"Upgrade: websocket" in ws.heads[-1]
    finally:
        ws.close()


def test_upgrade_needs_a_token(gateway):
    ws = EchoWebSocketServer()
    try:
        gw = gateway(CONF.format(ws_port=ws.port, headers=UPGRADE_HEADERS))
        s, head = handshake(gw.port, "/ws/chat")
        with s:
            assert head.startswith(b"HTTP/1.1 401 ")
        assert ws.heads == []
    finally:
        ws.close()


def test_without_upgrade_headers_the_request_is_answered_and_closed(gateway):
    ws = EchoWebSocketServer()
    try:
        gw = gateway(CONF.format(ws_port=ws.port, headers=""))
        s, head = handshake(gw.port, f"/ws/chat?token={POST_TOKEN}")
        with s:
            assert head.startswith(b"HTTP/1.1 200 ")
            s.settimeout(5)
            tail = b""
            while True:
                chunk = s.recv(100)
                if not chunk:
                    break
                tail += chunk
        assert b"Upgrade" not in ws.heads[-1]
    finally:
        ws.close()


def test_idle_tunnel_closes_after_read_timeout(gateway):
    ws = EchoWebSocketServer()
    try:
        gw = gateway(CONF.format(ws_port=ws.port, headers=UPGRADE_HEADERS))
        s, head = handshake(gw.port, f"/ws/chat?token={POST_TOKEN}")
        with s:
            assert head.startswith(b"HTTP/1.1 101 ")
            s.settimeout(6)
            data = head.split(b"\r\n\r\n", 1)[1]
            while True:
                chunk = s.recv(100)
                if not chunk:
                    break
                data += chunk
            assert data == b"hello"  # then closed by the 2 s idle timeout
    finally:
        ws.close()


def test_tunnel_response_time_runs_until_it_closes_and_lists_every_attempt(gateway, tmp_path):
    """NGINX: an upgraded connection's $upstream_response_time runs until the tunnel closes;
    after a refused first peer it is listed per attempt, like $upstream_addr."""
    ws = EchoWebSocketServer()
    dead = free_port()
    log = tmp_path / "ws.log"
    try:
        gw = gateway(f"""
log_format ws '$upstream_addr|$upstream_status|$upstream_response_time';
upstream pair {{ server 127.0.0.1:{dead} max_fails=0; server 127.0.0.1:{ws.port} max_fails=0; }}
server {{
    listen 127.0.0.1:{{port}};
    location /ws/ {{
        proxy_pass http://pair;
        {UPGRADE_HEADERS}
        access_log {log} ws;
    }}
}}
""")
        for i in range(2):  # round robin: one of the two starts with the refused peer
            s, head = handshake(gw.port, f"/ws/{i}")
            with s:
                assert head.startswith(b"HTTP/1.1 101 ")
                time.sleep(0.3)
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 2, what="2 log lines")
        lines = log.read_text().splitlines()
        assert len(lines) == 2, lines
        for line in lines:
            addr, status, rt = line.split("|")
            assert len(addr.split(", ")) == len(status.split(", ")) == len(rt.split(", ")), line
            assert float(rt.split(", ")[-1]) >= 0.25, line  # the tunnel was open 0.3 s
        assert any(line.startswith(f"127.0.0.1:{dead}, ") for line in lines), lines
    finally:
        ws.close()


class CountingWebSocketServer(EchoWebSocketServer):
    """The echo server, counting the tunnels whose gateway side closed (recv returned b"")."""

    def __init__(self) -> None:
        self.ended = 0
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        super().serve(c)
        self.ended += 1


def test_a_client_closing_its_tunnel_closes_the_upstream_side(gateway):
    """A client that drops its WebSocket must not leave the upstream connection open (it did
    until proxy_read_timeout at best, forever at worst: cancelling the request also ended
    the tunnel's future, and Tunnel.close took that for "already closed")."""
    ws = CountingWebSocketServer()
    try:
        conf = CONF.format(ws_port=ws.port, headers=UPGRADE_HEADERS).replace(
            "proxy_read_timeout 2s;", "proxy_read_timeout 60s;")
        gw = gateway(conf)
        for i in range(5):
            s, head = handshake(gw.port, f"/ws/{i}?token={POST_TOKEN}")
            assert head.startswith(b"HTTP/1.1 101 ")
            s.close()
        wait_until(lambda: ws.ended == 5, timeout=5, what="the upstream sides of 5 closed tunnels")
    finally:
        ws.close()


class BodyThenMaybeUpgrade(SocketUpstream):
    """Reads a request and its Content-Length body; answers 101 to ``/up`` paths (then echoes),
    200 with the body it got otherwise. ``bodies`` records each body received."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        c.settimeout(5)
        got = recv_request(c)
        if got is None:
            return
        head, body, rest = got
        self.bodies.append(body)
        if b" /up" in head.split(b"\r\n")[0]:
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                      + rest)
            echo(c)
            return
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


UPGRADE_BODY_CONF = """
server {{
    listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://127.0.0.1:{port}; proxy_read_timeout 3s; %s }}
}}
""" % UPGRADE_HEADERS


def test_the_body_of_a_request_that_asks_to_upgrade_goes_upstream(gateway):
    """llhttp stops parsing after a head that asks to upgrade, even when it declares a body;
    the body then went nowhere and the upstream waited for it (504 after proxy_read_timeout,
    the peer counted as failed). The declared body is the request's, sent before any switch."""
    up = BodyThenMaybeUpgrade()
    try:
        gw = gateway(UPGRADE_BODY_CONF.format(port=up.port))
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        with s:
            s.sendall(b"POST /plain HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Content-Length: 10\r\n\r\nabc")
            time.sleep(0.2)
            s.sendall(b"defg")  # the body arrives in three reads
            time.sleep(0.2)
            s.sendall(b"hij")
            data = recv_until(s, b"\r\n\r\nabcdefghij")
        assert data.startswith(b"HTTP/1.1 200 "), data[:100]
        assert data.endswith(b"\r\n\r\nabcdefghij") and up.bodies == [b"abcdefghij"]

        # The upstream agrees to switch: the body went as the body, what followed it (in the
        # same read) is the new protocol's first bytes.
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        with s:
            s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Content-Length: 4\r\n\r\nBODYframe1")
            data = recv_until(s, b"frame1")
            assert data.startswith(b"HTTP/1.1 101 ") and data.endswith(b"\r\n\r\nframe1"), data
            s.sendall(b"frame2")
            assert s.recv(100) == b"frame2"
        assert up.bodies[1] == b"BODY"
    finally:
        up.close()


def test_a_chunked_body_in_a_request_that_asks_to_upgrade_is_refused(gateway):
    up = BodyThenMaybeUpgrade()
    try:
        gw = gateway(UPGRADE_BODY_CONF.format(port=up.port))
        data = raw(gw.port, b"POST /plain HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in data, data[:200]
        time.sleep(0.2)
        assert up.bodies == []  # nothing reached the upstream
    finally:
        up.close()


def test_an_upgrade_pipelined_behind_a_plain_request_is_served_after_it(gateway):
    """The Upgrade belongs to the request that asked: the GET in front of it is answered and
    kept alive, then the upgrade is served (it used to be dropped with the connection, after
    a GET answered without Connection: close)."""
    ws = EchoWebSocketServer()
    try:
        gw = gateway(CONF.format(ws_port=ws.port, headers=UPGRADE_HEADERS))
        key = base64.b64encode(os.urandom(16))
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        with s:
            s.sendall(f"GET /ws/plain?token={POST_TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                      + f"GET /ws/chat?token={POST_TOKEN} HTTP/1.1\r\nHost: x\r\n".encode()
                      + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
            data = recv_until(s, b"hello")  # (the 101's first tunnel bytes)
            first, _, rest = data.partition(b"\r\n\r\nplain")
            assert first.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in first, data
            assert rest.startswith(b"HTTP/1.1 101 ") and rest.endswith(b"\r\n\r\nhello"), data
            s.sendall(b"ping")
            assert s.recv(100) == b"ping"
    finally:
        ws.close()


class SwitchesAtOnce(SocketUpstream):
    """Answers 101 right after the head, without reading any body, greets with ``HELLO``,
    then echoes every byte (body octets included: they are the client's, in order)."""

    def serve(self, c: socket.socket) -> None:
        c.settimeout(10)
        data = recv_head(c)
        if data is None:
            return
        rest = data.partition(b"\r\n\r\n")[2]
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        c.sendall(b"HELLO")
        if rest:
            c.sendall(rest)
        echo(c)


def test_an_upstream_that_switches_before_the_body_is_sent_gets_every_byte_in_order(gateway):
    """The body of an upgrading request may still be arriving when the upstream answers 101
    (WebSocket servers do not wait for it): the rest of the body and all later bytes go
    through the tunnel in order, the upstream's greeting reaches the client, and
    client_body_timeout does not fire inside the live tunnel."""
    up = SwitchesAtOnce()
    try:
        gw = gateway(f"""
server {{
    listen 127.0.0.1:{{port}};
    client_body_timeout 1s;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; proxy_read_timeout 5s; {UPGRADE_HEADERS} }}
}}
""")
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        with s:
            s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Content-Length: 11\r\n\r\nhel")
            # after the 101: the greeting, though the body is not all here
            got = recv_until(s, b"HELLOhel")
            assert got.endswith(b"HELLOhel"), got
            for part in (b"lo wo", b"rld", b"TUNNEL"):
                time.sleep(0.2)
                s.sendall(part)
            got += recv_until(s, b"TUNNEL")
            assert got.startswith(b"HTTP/1.1 101 ")
            assert got.split(b"\r\n\r\n", 1)[1] == b"HELLOhello worldTUNNEL", got
            for i in range(6):  # 1.8 s: past client_body_timeout, the tunnel still carries
                time.sleep(0.3)
                s.sendall(b"ping%d" % i)
                assert recv_until(s, b"ping%d" % i).endswith(b"ping%d" % i)
    finally:
        up.close()
