"""Upstream failures: proxy_next_upstream, tries, backup servers, passive health, timeouts."""

from __future__ import annotations

import re
import socket
import threading
import time

from jwtgate_e2e import SocketUpstream, free_port, recv_head, recv_request, recv_until, request, wait_until


class Dead:
    """A port where nothing listens."""

    def __init__(self) -> None:
        self.port = free_port()


class Silent:
    """Accepts connections and never answers (for read timeouts)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


GROUP = """
upstream grp {{
    {servers}
}}
server {{
    listen 127.0.0.1:{{port}};
    location / {{
        proxy_pass http://grp;
        proxy_read_timeout 1s;
        proxy_connect_timeout 1s;
        {extra}
    }}
}}
"""


def conf(servers: str, extra: str = "") -> str:
    return GROUP.format(servers=servers, extra=extra)


def test_connection_refused_goes_to_next_server(gateway, upstream):
    dead = Dead()
    gw = gateway(conf(f"server 127.0.0.1:{dead.port}; server 127.0.0.1:{upstream.port};"))
    statuses = [request(gw.port, "GET", f"/x{i}").status for i in range(6)]
    assert statuses == [200] * 6


def test_http_502_passed_to_next_server_only_when_configured(gateway, upstream, upstream2):
    servers = f"server 127.0.0.1:{upstream.port}; server 127.0.0.1:{upstream2.port};"
    gw = gateway(conf(servers))
    # Default (error timeout): a 502 answer is passed to the client as is.
    assert {request(gw.port, "GET", "/status/502").status for _ in range(4)} == {502}
    gw2 = gateway(conf(servers, "proxy_next_upstream error timeout http_502;"))
    upstream.clear()
    upstream2.clear()
    # Both answer 502, so each request tries both and the last answer reaches the client.
    r = request(gw2.port, "GET", "/status/502")
    assert r.status == 502
    assert len(upstream.requests) + len(upstream2.requests) == 2


def test_non_idempotent_request_not_retried_after_being_sent(gateway, upstream, upstream2):
    servers = f"server 127.0.0.1:{upstream.port}; server 127.0.0.1:{upstream2.port};"
    gw = gateway(conf(servers, "proxy_next_upstream http_503;"))
    upstream.clear()
    upstream2.clear()
    r = request(gw.port, "POST", "/status/503", body=b"x=1")
    assert r.status == 503
    assert len(upstream.requests) + len(upstream2.requests) == 1
    gw2 = gateway(conf(servers, "proxy_next_upstream http_503 non_idempotent;"))
    upstream.clear()
    upstream2.clear()
    r = request(gw2.port, "GET", "/status/503")
    assert len(upstream.requests) + len(upstream2.requests) == 2


def test_tries_limit(gateway):
    deads = [Dead() for _ in range(3)]
    servers = " ".join(f"server 127.0.0.1:{d.port};" for d in deads)
    gw = gateway(conf(servers, "proxy_next_upstream_tries 2;"))
    r = request(gw.port, "GET", "/")
    assert r.status == 502


def test_backup_takes_over_and_primary_returns_after_fail_timeout(gateway, upstream, upstream2):
    # The primary is a port we control: closed at first, then listening.
    primary = free_port()
    gw = gateway(conf(f"server 127.0.0.1:{primary} fail_timeout=1s; "
                      f"server 127.0.0.1:{upstream2.port} backup;"))
    r = request(gw.port, "GET", "/a")
    assert r.status == 200 and len(upstream2.requests) == 1
    # Start a server on the primary's port: it is skipped until fail_timeout passes.
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", primary))
    srv.listen(8)
    got = []

    def serve():
        srv.settimeout(5)
        try:
            c, _ = srv.accept()
        except OSError:
            return
        c.recv(65536)
        got.append(1)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nprimary")
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    r = request(gw.port, "GET", "/b")
    assert r.status == 200 and not got  # still on the backup
    time.sleep(1.2)
    r = request(gw.port, "GET", "/c")
    t.join(6)
    srv.close()
    assert got and r.body == b"primary"


def test_read_timeout_is_504_and_gateway_keeps_serving(gateway, upstream):
    silent = Silent()
    try:
        gw = gateway(conf(f"server 127.0.0.1:{silent.port};", "proxy_next_upstream off;"))
        t0 = time.monotonic()
        r = request(gw.port, "GET", "/", timeout=10)
        assert r.status == 504
        assert time.monotonic() - t0 < 5
    finally:
        silent.close()


def test_least_conn_and_hash_directives_serve(gateway, upstream, upstream2):
    servers = f"server 127.0.0.1:{upstream.port}; server 127.0.0.1:{upstream2.port};"
    gw = gateway(conf("least_conn; " + servers))
    assert [request(gw.port, "GET", "/").status for _ in range(4)] == [200] * 4
    gw2 = gateway(conf("hash $arg_user; " + servers))
    upstream.clear()
    upstream2.clear()
    for _ in range(6):
        assert request(gw2.port, "GET", "/?user=alice").status == 200
    assert sorted([len(upstream.requests), len(upstream2.requests)]) == [0, 6]


def test_send_timeout_is_504_when_the_upstream_stops_reading(gateway):
    silent = Silent()  # accepts, never reads: its receive buffer fills up
    try:
        gw = gateway(f"""
server {{
    listen 127.0.0.1:{{port}};
    client_max_body_size 0;
    location / {{
        proxy_pass http://127.0.0.1:{silent.port};
        proxy_send_timeout 1s;
        proxy_read_timeout 30s;
    }}
}}
""")
        size = 64 << 20
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)

        def pump():
            block = b"\0" * (1 << 20)
            try:
                for _ in range(64):
                    s.sendall(block)
            except OSError:
                pass  # the gateway answered and closed

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        t0 = time.monotonic()
        answer = s.recv(200)
        assert answer.startswith(b"HTTP/1.1 504 "), answer
        assert time.monotonic() - t0 < 15
        s.close()
    finally:
        silent.close()


def test_slow_body_is_cut_after_read_timeout_and_gateway_keeps_serving(gateway, upstream):
    """An upstream that sends its head and half its body, then stalls: after
    proxy_read_timeout the client connection is cut (the response cannot be completed)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []

    def serve():
        c, _ = srv.accept()
        held.append(c)
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500)

    threading.Thread(target=serve, daemon=True).start()
    gw = gateway(f"""
server {{
    listen 127.0.0.1:{{port}};
    location /stall/ {{ proxy_pass http://127.0.0.1:{srv.getsockname()[1]}; proxy_read_timeout 1s; }}
    location / {{ proxy_pass http://127.0.0.1:{{upstream_port}}; }}
}}
""")
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"GET /stall/x HTTP/1.1\r\nHost: x\r\n\r\n")
    t0 = time.monotonic()
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"x" * 500)
    assert 0.8 < time.monotonic() - t0 < 6
    assert request(gw.port, "GET", "/after").status == 200
    srv.close()
    for c in held:
        c.close()


def test_upstream_times_are_listed_per_attempt_like_upstream_addr(gateway, upstream, tmp_path):
    """NGINX keeps one $upstream_*_time per attempt, joined like $upstream_addr, with "-" for
    what an attempt never reached (a refused connection has no connect or header time)."""
    dead = Dead()
    log = tmp_path / "times.log"
    gw = gateway(conf(f"server 127.0.0.1:{dead.port}; server 127.0.0.1:{upstream.port};",
                      f"access_log {log} times;").replace(
        "upstream grp", "log_format times '$upstream_addr|$upstream_status|$upstream_response_time|"
                        "$upstream_connect_time|$upstream_header_time';\nupstream grp", 1))
    statuses = [request(gw.port, "GET", f"/t{i}").status for i in range(4)]
    assert statuses == [200] * 4
    wait_until(lambda: log.exists() and log.read_text().count("\n") >= 4, what="4 log lines")
    lines = log.read_text().splitlines()
    assert len(lines) == 4
    t = r"\d+\.\d{3}"
    retried = [x for x in lines if ", " in x.split("|")[0]]
    assert retried, lines  # round robin: some requests tried the dead server first
    for line in retried:
        addr, status, rt, ct, ht = line.split("|")
        assert addr == f"127.0.0.1:{dead.port}, 127.0.0.1:{upstream.port}"
        assert status == "502, 200"
        assert re.fullmatch(f"{t}, {t}", rt), line
        assert re.fullmatch(f"-, {t}", ct), line
        assert re.fullmatch(f"-, {t}", ht), line
    for line in lines:
        if line not in retried:
            addr, status, rt, ct, ht = line.split("|")
            assert addr == f"127.0.0.1:{upstream.port}" and status == "200"
            assert re.fullmatch(t, rt) and re.fullmatch(t, ct) and re.fullmatch(t, ht), line


def test_a_single_refused_attempt_has_a_response_time_and_no_connect_or_header_time(gateway, tmp_path):
    dead = Dead()
    log = tmp_path / "times.log"
    gw = gateway(conf(f"server 127.0.0.1:{dead.port};", f"access_log {log} times;").replace(
        "upstream grp", "log_format times '$upstream_status|$upstream_response_time|"
                        "$upstream_connect_time|$upstream_header_time';\nupstream grp", 1))
    assert request(gw.port, "GET", "/x").status == 502
    wait_until(lambda: log.exists() and log.read_text().strip(), what="a log line")
    status, rt, ct, ht = log.read_text().strip().split("|")
    assert status == "502" and re.fullmatch(r"\d+\.\d{3}", rt) and ct == "-" and ht == "-"


class CutAfterHead(SocketUpstream):
    """Answers with a head announcing 100 bytes, sends 10, and closes."""

    def serve(self, c: socket.socket) -> None:
        if recv_head(c) is None:
            return
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")


def test_a_response_cut_after_its_head_is_listed_with_the_peer_that_sent_it(gateway, tmp_path):
    """The attempt that answered (then broke off) is in $upstream_addr, as in every other
    list, so the entries line up (and statistics count the right peer)."""
    dead = Dead()
    cut = CutAfterHead()
    log = tmp_path / "cut.log"
    try:
        gw = gateway(conf(f"server 127.0.0.1:{dead.port} max_fails=0; server 127.0.0.1:{cut.port} max_fails=0;",
                          f"access_log {log} cut;").replace(
            "upstream grp", "log_format cut '$upstream_addr|$upstream_status|$upstream_response_time|"
                            "$upstream_connect_time|$upstream_header_time';\nupstream grp", 1))
        for i in range(2):
            try:
                request(gw.port, "GET", f"/c{i}")
            except Exception:
                pass  # the client connection is cut mid-body, as NGINX does
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 2, what="2 log lines")
        lines = log.read_text().splitlines()
        assert len(lines) == 2, lines
        for line in lines:
            fields = line.split("|")
            assert fields[0].endswith(f"127.0.0.1:{cut.port}"), line
            assert len({len(f.split(", ")) for f in fields}) == 1, line  # every list lines up
    finally:
        cut.close()


class SwitchesUnasked(SocketUpstream):
    """Answers every request with 101 Switching Protocols, asked or not."""

    def serve(self, c: socket.socket) -> None:
        if recv_head(c) is None:
            return
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        c.recv(100)


def test_an_unasked_101_is_an_invalid_answer_counted_and_retried(gateway, upstream, tmp_path):
    """101 to a request that asked for no upgrade is an invalid header (502), not a started
    response: the peer is listed with 502 and proxy_next_upstream invalid_header moves on."""
    bad = SwitchesUnasked()
    log = tmp_path / "u.log"
    try:
        gw = gateway(conf(f"server 127.0.0.1:{bad.port} max_fails=0; server 127.0.0.1:{upstream.port} max_fails=0;",
                          f"proxy_next_upstream error invalid_header; access_log {log} u;").replace(
            "upstream grp", "log_format u '$status|$upstream_addr|$upstream_status';\nupstream grp", 1))
        assert [request(gw.port, "GET", f"/u{i}").status for i in range(2)] == [200, 200]
        alone = gateway(conf(f"server 127.0.0.1:{bad.port};", f"access_log {log} u;").replace(
            "upstream grp", "log_format u '$status|$upstream_addr|$upstream_status';\nupstream grp", 1))
        assert request(alone.port, "GET", "/a").status == 502
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 3, what="3 log lines")
        lines = log.read_text().splitlines()
        assert f"200|127.0.0.1:{bad.port}, 127.0.0.1:{upstream.port}|502, 200" in lines, lines
        assert f"502|127.0.0.1:{bad.port}|502" in lines, lines
    finally:
        bad.close()


class KeepAliveSlow(SocketUpstream):
    """A keep-alive upstream: answers ``/.../slow`` after 3 s, anything else at once; counts
    the connections it accepted."""

    def __init__(self) -> None:
        self.accepted = 0
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        self.accepted += 1
        while True:
            head = recv_head(c)
            if head is None:
                return
            if head.split(b" ", 2)[1].endswith(b"/slow"):
                time.sleep(3)
            try:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                return


def test_read_timeout_of_the_location_holds_on_a_reused_connection(gateway):
    """Two locations with different proxy_read_timeout share a keep-alive upstream: the short
    one must time out at its own 1 s on a connection last used by the long one (the 60 s
    timer left from that exchange used to decide, and the slow answer came through)."""
    up = KeepAliveSlow()
    try:
        gw = gateway(f"""
upstream grp {{ server 127.0.0.1:{up.port}; keepalive 4; }}
server {{
    listen 127.0.0.1:{{port}};
    location /long/ {{ proxy_pass http://grp; proxy_http_version 1.1; proxy_set_header Connection "";
                      proxy_read_timeout 60s; proxy_next_upstream off; }}
    location /short/ {{ proxy_pass http://grp; proxy_http_version 1.1; proxy_set_header Connection "";
                       proxy_read_timeout 1s; proxy_next_upstream off; }}
}}
""")
        assert request(gw.port, "GET", "/long/ok").status == 200
        t0 = time.monotonic()
        r = request(gw.port, "GET", "/short/slow", timeout=10)
        elapsed = time.monotonic() - t0
        assert up.accepted == 1  # the same upstream connection
        assert r.status == 504 and elapsed < 2.5, (r.status, elapsed)
    finally:
        up.close()


class Big(SocketUpstream):
    """Answers every request with a ``size``-byte body, as fast as the gateway reads it."""

    size = 24 * 1024 * 1024

    def serve(self, c: socket.socket) -> None:
        if recv_head(c) is None:
            return
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
        block = b"x" * 65536
        try:
            for _ in range(self.size // len(block)):
                c.sendall(block)
        except OSError:
            return


def test_a_client_that_reads_slowly_is_governed_by_send_timeout_not_proxy_read_timeout(gateway):
    """While the client does not take the response, the gateway stops reading the upstream;
    that pause is not the upstream's silence (NGINX stops the upstream read timer then), so a
    client pausing longer than proxy_read_timeout (1 s) but within send_timeout (10 s) gets
    the whole body. It used to be cut at proxy_read_timeout."""
    up = Big()
    try:
        gw = gateway(f"""
server {{
    listen 127.0.0.1:{{port}};
    send_timeout 10s;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; proxy_read_timeout 1s; }}
}}
""")
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        with s:
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            time.sleep(3)  # the client reads nothing for 3 proxy_read_timeouts
            got = 0
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        head_len = got - Big.size
        assert 0 < head_len < 1000, got  # the whole body arrived, after a head
    finally:
        up.close()


class SendsThenHolds(SocketUpstream):
    """Answers every request with ``answer`` (a head and the start of the body it announces),
    then holds the connection until the gateway closes it."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        if recv_head(c) is None:
            return
        c.sendall(self.answer)
        c.settimeout(10)
        try:
            c.recv(1)  # until the gateway closes
        except OSError:
            pass


def test_a_response_set_aside_for_a_retry_is_not_read_to_its_end(gateway, upstream, tmp_path):
    """proxy_next_upstream http_503: the next server is tried at once, as NGINX does (it
    closes the connection); the 503's body used to be read to its end first, here until
    proxy_read_timeout, after which the peer was logged 504 and counted as failed."""
    holds = SendsThenHolds(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000000\r\n\r\npartial")
    log = tmp_path / "retry.log"
    try:
        gw = gateway(f"""
log_format r '$upstream_addr|$upstream_status';
upstream grp {{ server 127.0.0.1:{holds.port} max_fails=0; server 127.0.0.1:{upstream.port}; }}
server {{
    listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://grp; proxy_next_upstream http_503; proxy_read_timeout 3s;
                 access_log {log} r; }}
}}
""")
        for _ in range(2):  # round robin: one of the two starts at the holding peer
            t0 = time.monotonic()
            r = request(gw.port, "GET", "/x", timeout=10)
            assert r.status == 200 and time.monotonic() - t0 < 1.5, (r.status, time.monotonic() - t0)
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 2, what="2 log lines")
        assert f"127.0.0.1:{holds.port}, 127.0.0.1:{upstream.port}|503, 200" in log.read_text().splitlines()
    finally:
        holds.close()


class ReadsBody(SocketUpstream):
    """Reads a request with a Content-Length body, then answers 200 with that body."""

    def serve(self, c: socket.socket) -> None:
        c.settimeout(10)
        got = recv_request(c)
        if got is not None:
            body = got[1]
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def test_a_slow_request_body_is_not_the_upstreams_silence(gateway):
    """proxy_read_timeout starts once the request is sent (NGINX): a client sending its body
    slower than that, but within client_body_timeout, gets its answer; it used to get a 502
    with the peer counted as failed."""
    up = ReadsBody()
    try:
        gw = gateway(f"""
server {{
    listen 127.0.0.1:{{port}};
    client_body_timeout 3s;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; proxy_read_timeout 1s; }}
}}
""")
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        with s:
            s.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
            for octet in (b"a", b"b", b"c"):
                time.sleep(0.8)  # 2.4 s in all: past proxy_read_timeout, within client_body_timeout
                s.sendall(octet)
            data = recv_until(s, b"abc")
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nabc"), data
    finally:
        up.close()


def test_a_client_that_leaves_before_the_answer_is_logged_499(gateway, tmp_path):
    """NGINX's 499 (client closed request): the request is given up when its client goes,
    and logged as such, with the peer it was waiting for (it used to be logged 000)."""
    silent = Silent()
    log = tmp_path / "gone.log"
    try:
        gw = gateway(f"""
log_format gone '$status|$upstream_addr|$request';
server {{
    listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://127.0.0.1:{silent.port}; proxy_read_timeout 30s; access_log {log} gone; }}
}}
""")
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(b"GET /waiting HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: silent.conns, what="the request upstream")
        s.close()
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 1, what="a log line")
        assert log.read_text().splitlines() == [f"499|127.0.0.1:{silent.port}|GET /waiting HTTP/1.1"]
    finally:
        silent.close()


def test_a_client_that_leaves_mid_response_is_logged_with_the_peer(gateway, tmp_path):
    """The response had started (200 is what the client got the head of); the peer that
    sent it is listed (it used to be "-" while $upstream_status said 200)."""
    up = SendsThenHolds(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nstart")
    log = tmp_path / "gone.log"
    try:
        gw = gateway(f"""
log_format gone '$status|$upstream_addr|$upstream_status|$upstream_response_time';
server {{
    listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://127.0.0.1:{up.port}; proxy_read_timeout 30s; access_log {log} gone; }}
}}
""")
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(b"GET /part HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (recv_head(s) or b"").startswith(b"HTTP/1.1 200 ")
        s.close()
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 1, what="a log line")
        status, addr, ustatus, rt = log.read_text().splitlines()[0].split("|")
        assert (status, addr, ustatus) == ("200", f"127.0.0.1:{up.port}", "200"), log.read_text()
        assert float(rt) >= 0
    finally:
        up.close()
