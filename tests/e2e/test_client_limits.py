"""Client-side limits with NGINX's directives: client_body_timeout (408), send_timeout,
keepalive_requests, keepalive_timeout, client_header_buffer_size, large_client_header_buffers."""

from __future__ import annotations

import http.client
import socket
import time

from jwtgate_e2e import request

CONF = """
server {{
    listen 127.0.0.1:{{port}};
    {extra}
    location / {{
        proxy_pass http://127.0.0.1:{{upstream_port}};
    }}
    location = /local {{ return 200 "ok $connection_requests\\n"; }}
}}
"""


def _read_all(s: socket.socket, limit: float = 10) -> bytes:
    s.settimeout(limit)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_client_body_timeout_is_408_and_closes(gateway, upstream):
    gw = gateway(CONF.format(extra="client_body_timeout 1s;"))
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        start = time.monotonic()
        data = _read_all(s)
        took = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"Connection: close" in data
    assert 0.8 < took < 5
    # the timer is between two reads: a slow but steady body is fine
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        for byte in b"abcd":
            time.sleep(0.5)
            s.sendall(bytes([byte]))
        s.settimeout(10)
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 "), head[:200]


def test_client_body_timeout_waits_for_100_continue(gateway, upstream):
    gw = gateway(CONF.format(extra="client_body_timeout 1s;"))
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"abc")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_send_timeout_closes_a_client_that_stops_reading(gateway, upstream):
    gw = gateway(CONF.format(extra="send_timeout 1s;"))
    size = 64 << 20
    gw.get("/local")
    rss_before = _rss_kb(gw.proc.pid)
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(f"GET /big/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(2.5)  # read nothing: the gateway's writes stall
        rss_during = _rss_kb(gw.proc.pid)
        got = _read_all(s)
    assert got.startswith(b"HTTP/1.1 200 ")
    assert len(got) < size // 2, "the connection should have been closed by send_timeout"
    # memory stayed bounded: the upstream is paused, not buffered into the gateway
    assert rss_during - rss_before < 32 * 1024, (rss_before, rss_during)
    # and the gateway goes on serving; a reader that keeps up gets everything
    r = request(gw.port, "GET", f"/big/{1 << 20}")
    assert r.status == 200 and len(r.body) == 1 << 20


def test_keepalive_requests_closes_after_n(gateway, upstream):
    gw = gateway(CONF.format(extra="keepalive_requests 3;"))
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    bodies, closes = [], []
    for _ in range(3):
        r = request(gw.port, "GET", "/local", conn=c)
        bodies.append(r.body)
        closes.append(r.header("Connection"))
    assert bodies == [b"ok 1\n", b"ok 2\n", b"ok 3\n"]
    assert closes == [None, None, "close"]
    c.close()
    # at the socket level: the third answer is the last one on the connection
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"GET /local HTTP/1.1\r\nHost: x\r\n\r\n" * 5)
        data = _read_all(s)
    assert data.count(b"HTTP/1.1 200 ") == 3


def test_keepalive_timeout_closes_idle_connections(gateway, upstream):
    gw = gateway(CONF.format(extra="keepalive_timeout 1s;"))
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"GET /local HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        assert s.recv(65536) == b""  # closed by the gateway
        assert 0.7 < time.monotonic() - start < 5
    gw0 = gateway(CONF.format(extra="keepalive_timeout 0;"))
    r = gw0.get("/local")
    assert r.status == 200 and r.header("Connection") == "close"


def test_keepalive_timeout_header_argument_sends_keep_alive(gateway, upstream):
    """keepalive_timeout's second argument: "Keep-Alive: timeout=N" on kept-alive answers,
    proxied or not; none on the answer that closes, none without the argument."""
    gw = gateway(CONF.format(extra="keepalive_timeout 75s 60s; keepalive_requests 2;"))
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        r = request(gw.port, "GET", "/local", conn=c)
        assert r.status == 200 and r.header("Keep-Alive") == "timeout=60"
        r = request(gw.port, "GET", "/local", conn=c)  # the last one on this connection
        assert r.header("Connection") == "close" and r.header("Keep-Alive") is None
    finally:
        c.close()
    assert gw.get("/anything").header("Keep-Alive") == "timeout=60"
    plain = gateway(CONF.format(extra="keepalive_timeout 75s;"))
    assert plain.get("/local").header("Keep-Alive") is None


def test_client_header_timeout(gateway, upstream):
    gw = gateway(CONF.format(extra="client_header_timeout 1s;"))
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"GET /local HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        assert _read_all(s) == b""
        assert 0.7 < time.monotonic() - start < 5


def test_header_buffers(gateway, upstream):
    gw = gateway(CONF.format(extra="client_header_buffer_size 1k; large_client_header_buffers 4 2k;"))
    assert gw.get("/local", headers={"X-A": "a" * 1500}).status == 200  # over 1k, under 2k
    assert gw.get("/local?" + "q" * 3000).status == 414
    assert gw.get("/local", headers={"X-A": "a" * 3000}).status == 431
    assert gw.get("/local", headers={f"X-{i}": "a" * 1500 for i in range(6)}).status == 431


def test_client_max_body_size_413(gateway, upstream):
    gw = gateway(CONF.format(extra="client_max_body_size 10;"))
    assert request(gw.port, "POST", "/echo", body=b"x" * 10).status == 200
    assert request(gw.port, "POST", "/echo", body=b"x" * 11).status == 413


def test_first_head_time_counts_from_the_accept(gateway, upstream):
    """NGINX starts client_header_timeout when the connection is accepted and does not start
    it again at the first byte: a client that waits, then trickles a head, gets one timeout."""
    gw = gateway(CONF.format(extra="client_header_timeout 2s;"))
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        start = time.monotonic()
        time.sleep(1.5)
        s.sendall(b"GET /local HTTP/1.1\r\nHost: x\r\n")
        assert _read_all(s) == b""
        assert time.monotonic() - start < 3.0
