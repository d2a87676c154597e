"""proxy_pass and upstream: bodies both ways (Content-Length, chunked, close-delimited, large),
keep-alive on both sides, failures, balancing and NGINX's URI rules."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess

import pytest

from jwtgate_e2e import (
    CHUNKED_BODY, CLOSE_BODY, POST_TOKEN, PYTHON, bearer, curl, file_sha256, free_port, pattern,
    port_open, post_conf, request, sha256, wait_until,
)

MiB = 1 << 20

PLAIN = """
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    client_max_body_size 0;
    location / {{
        proxy_pass {target};
        {extra}
    }}
}}
"""


def plain(target: str = "http://api_server", extra: str = "") -> str:
    return PLAIN.format(target=target, extra=extra)


@pytest.fixture
def body_file(tmp_path):
    data = pattern(5 * MiB + 12345)
    path = tmp_path / "body.bin"
    path.write_bytes(data)
    return path, data


def test_post_body_with_content_length(gateway, upstream, body_file):
    path, data = body_file
    gw = gateway(post_conf(server_extra="client_max_body_size 16m;"))
    r = curl(f"{gw.url}/products/echo", "-H", f"Authorization: Bearer {POST_TOKEN}",
             "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{path}")
    assert r.returncode == 0, r.stderr
    assert r.status == 200, r.body[:300]
    assert json.loads(r.body) == {"length": len(data), "sha256": sha256(data), "path": "/products/echo"}
    rec = upstream.last
    assert rec.method == "POST"
    assert sha256(rec.body) == sha256(data)
    assert rec.values("Content-Type") == ["application/octet-stream"]


def test_post_body_chunked(gateway, upstream, body_file):
    path, data = body_file
    gw = gateway(post_conf(server_extra="client_max_body_size 16m;"))
    r = curl(f"{gw.url}/products/echo", "-H", f"Authorization: Bearer {POST_TOKEN}",
             "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}")
    assert r.returncode == 0, r.stderr
    assert r.status == 200, r.body[:300]
    assert json.loads(r.body)["sha256"] == sha256(data)
    assert len(upstream.last.body) == len(data)
    assert sha256(upstream.last.body) == sha256(data)


LIMITS_CONF = """
server {
    listen 127.0.0.1:{port};
    client_max_body_size 2m;
    location /products/ {
        auth_jwt "Products API";
        auth_jwt_key_file {keys};
        proxy_pass http://127.0.0.1:{upstream_port};
    }
    location /big/ {
        client_max_body_size 16m;
        proxy_pass http://127.0.0.1:{upstream_port};
    }
    location /tiny/ {
        client_max_body_size 100k;
        proxy_pass http://127.0.0.1:{upstream_port};
    }
    location /unlimited/ {
        client_max_body_size 0;
        proxy_pass http://127.0.0.1:{upstream_port};
    }
}
"""


def test_client_max_body_size_server_level(gateway, upstream, body_file, tmp_path):
    path, data = body_file
    small = tmp_path / "small.bin"
    small.write_bytes(data[:900_000])
    gw = gateway(LIMITS_CONF)
    auth = ("-H", f"Authorization: Bearer {POST_TOKEN}")
    assert curl(f"{gw.url}/products/echo", *auth, "--data-binary", f"@{path}").status == 413
    assert curl(f"{gw.url}/products/echo", *auth, "--data-binary", f"@{small}").status == 200
    assert [len(rec.body) for rec in upstream.requests] == [900_000]


def test_client_max_body_size_location_level(gateway, upstream, body_file, tmp_path):
    """NGINX: client_max_body_size in a location overrides the server's (raises or lowers it)."""
    path, data = body_file
    small = tmp_path / "small.bin"
    small.write_bytes(data[:900_000])
    gw = gateway(LIMITS_CONF)
    results = {
        "location raises it (5 MiB, 16m)": curl(f"{gw.url}/big/echo", "--data-binary", f"@{path}").status,
        "location lowers it (900 KB, 100k)": curl(f"{gw.url}/tiny/echo", "--data-binary", f"@{small}").status,
        "location 0 (5 MiB, no limit)": curl(f"{gw.url}/unlimited/echo", "--data-binary", f"@{path}").status,
    }
    assert results == {"location raises it (5 MiB, 16m)": 200, "location lowers it (900 KB, 100k)": 413,
                       "location 0 (5 MiB, no limit)": 200}
    assert sorted(len(rec.body) for rec in upstream.requests) == [len(data), len(data)]


def test_chunked_body_over_the_limit_is_413(gateway, upstream, body_file):
    path, data = body_file
    gw = gateway(LIMITS_CONF)
    r = curl(f"{gw.url}/products/echo", "-H", f"Authorization: Bearer {POST_TOKEN}",
             "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}")
    assert r.status == 413
    assert upstream.requests == []  # no complete request reached the upstream


def test_small_post_and_put_with_http_client(gateway, upstream):
    gw = gateway(plain())
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        for method, body in (("POST", b'{"a": 1}'), ("PUT", b"x" * 70000), ("POST", b""), ("DELETE", None)):
            r = request(gw.port, method, "/echo", body=body, conn=conn)
            assert r.status == 200, method
            assert r.json()["sha256"] == sha256(body or b""), method
            assert upstream.last.method == method
    finally:
        conn.close()


def test_large_response(gateway, upstream, tmp_path):
    n = 50 * MiB
    gw = gateway(post_conf())
    out = tmp_path / "big.out"
    r = curl(f"{gw.url}/products/big/{n}", "-H", f"Authorization: Bearer {POST_TOKEN}", out=out)
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    assert os.path.getsize(out) == n
    assert file_sha256(out) == sha256(pattern(n))
    assert r.header("Content-Length") == str(n)


def test_upstream_chunked_response(gateway, upstream):
    gw = gateway(plain())
    r = gw.get("/chunked")
    assert r.status == 200
    assert r.body == CHUNKED_BODY
    c = curl(f"{gw.url}/chunked")
    assert c.status == 200 and c.body == CHUNKED_BODY
    # HTTP/1.0 client: no chunked framing possible, the body ends with the connection
    c = curl(f"{gw.url}/chunked", "--http1.0")
    assert c.status == 200 and c.body == CHUNKED_BODY
    assert (c.header("Transfer-Encoding") or "").lower() != "chunked"


def test_upstream_close_delimited_response(gateway, upstream):
    gw = gateway(plain())
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        r = request(gw.port, "GET", "/close", conn=conn)
        assert r.status == 200
        assert len(r.body) == len(CLOSE_BODY)
        assert r.body == CLOSE_BODY
        # the client connection can go on (or http.client reconnects if the gateway closed it)
        r = request(gw.port, "GET", "/after", conn=conn)
        assert r.status == 200 and r.json()["path"] == "/after"
    finally:
        conn.close()
    c = curl(f"{gw.url}/close")
    assert c.status == 200 and c.body == CLOSE_BODY


def test_client_keep_alive(gateway, upstream):
    gw = gateway(plain(extra="proxy_set_header X-Conn $connection;\n"
                             "proxy_set_header X-Client-Port $remote_port;"))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        local_port = sock.getsockname()[1]
        for i in range(10):
            r = request(gw.port, "GET", f"/ka/{i}", conn=conn)
            assert r.status == 200
            assert r.json()["path"] == f"/ka/{i}"
            assert (r.header("Connection") or "").lower() != "close"
            assert conn.sock is sock, f"the gateway closed the connection after request {i}"
    finally:
        conn.close()
    assert {rec.values("X-Client-Port")[0] for rec in upstream.requests} == {str(local_port)}
    assert len({rec.values("X-Conn")[0] for rec in upstream.requests}) == 1


def test_upstream_connections_are_reused(gateway, upstream):
    gw = gateway(post_conf())
    for i in range(20):  # sequential, each on a new client connection
        assert gw.get(f"/products/{i}", bearer(POST_TOKEN)).status == 200
    ports = [rec.client_port for rec in upstream.requests]
    assert len(ports) == 20
    assert len(set(ports)) < 20, f"no upstream connection was reused: {len(set(ports))} connections"
    # the gateway must not ask the upstream to close
    assert all(v.lower() != "close" for rec in upstream.requests for v in rec.values("Connection"))


def test_upstream_down_is_502(gateway, upstream):
    dead = free_port()
    gw = gateway(f"""
upstream api_server {{ server 127.0.0.1:{dead}; }}
server {{
    listen 127.0.0.1:{{port}};
    location /products/ {{
        auth_jwt "Products API";
        auth_jwt_key_file {{keys}};
        proxy_pass http://api_server;
    }}
    location /alive/ {{ proxy_pass http://127.0.0.1:{{upstream_port}}; }}
}}
""")
    assert gw.get("/products/widget1", bearer(POST_TOKEN)).status == 502
    assert gw.get("/products/widget1", bearer(POST_TOKEN)).status == 502
    assert gw.get("/products/widget1").status == 401  # authentication still comes first
    r = gw.get("/alive/x")
    assert r.status == 200 and r.json()["path"] == "/alive/x"
    assert gw.proc.poll() is None


def test_round_robin_over_two_servers(gateway, upstream, upstream2):
    gw = gateway(f"""
upstream api_server {{
    server 127.0.0.1:{upstream.port};
    server 127.0.0.1:{upstream2.port};
}}
server {{
    listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://api_server; }}
}}
""")
    seen = [gw.get(f"/rr/{i}").header("X-Upstream-Port") for i in range(10)]
    assert len(upstream.requests) + len(upstream2.requests) == 10
    assert len(upstream.requests) >= 3 and len(upstream2.requests) >= 3, seen
    assert set(seen) == {str(upstream.port), str(upstream2.port)}


def test_one_server_down_in_group(gateway, upstream):
    dead = free_port()
    gw = gateway(f"""
upstream api_server {{
    server 127.0.0.1:{dead};
    server 127.0.0.1:{upstream.port};
}}
server {{
    listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://api_server; }}
}}
""")
    codes = [gw.get(f"/x/{i}").status for i in range(6)]
    assert codes == [200] * 6, codes
    assert len(upstream.requests) == 6


def test_proxy_pass_with_uri_replaces_the_location_prefix(gateway, upstream):
    gw = gateway("""
server {
    listen 127.0.0.1:{port};
    location /products/ {
        proxy_pass http://127.0.0.1:{upstream_port}/v1/;
    }
}
""")
    cases = {
        "/products/x?a=1": "/v1/x?a=1",
        "/products/": "/v1/",
        "/products/a/b/c": "/v1/a/b/c",
        "/products/x?a=1&b=%2F": "/v1/x?a=1&b=%2F",
    }
    for sent, expected in cases.items():
        r = gw.get(sent)
        assert r.status == 200, sent
        assert upstream.last.path == expected, (sent, upstream.last.path)


def test_proxy_pass_without_uri_passes_the_request_uri_unchanged(gateway, upstream):
    gw = gateway(post_conf())
    for target in ("/products/widget1", "/products/a%20b/c?x=%2F&y=1&y=2", "/products/%7Euser?q=a+b",
                   "/products/x;param?"):
        r = gw.get(target, bearer(POST_TOKEN))
        assert r.status == 200, target
        assert upstream.last.path == target


def test_status_and_headers_pass_through(gateway, upstream):
    gw = gateway(plain())
    for code in (201, 404, 500, 503):
        r = gw.get(f"/status/{code}")
        assert r.status == code
        assert r.json() == {"status": code, "path": f"/status/{code}"}
        assert r.header("X-Upstream-Port") == str(upstream.port)
        assert r.header("Content-Type") == "application/json"
    r = request(gw.port, "HEAD", "/head")
    assert r.status == 200 and r.body == b""
    assert upstream.last.method == "HEAD"


def test_python_http_server_as_upstream(gateway, tmp_path):
    www = tmp_path / "www"
    (www / "products").mkdir(parents=True)
    content = pattern(200_000)
    (www / "products" / "data.bin").write_bytes(content)
    (www / "products" / "hello.txt").write_text("hello from http.server\n")
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(www)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or port_open(port), timeout=15, what="http.server")
        assert proc.poll() is None, "python -m http.server did not start"
        gw = gateway(post_conf(), upstream_port=port)
        r = gw.get("/products/hello.txt", bearer(POST_TOKEN))
        assert r.status == 200
        assert r.body == b"hello from http.server\n"
        c = curl(f"{gw.url}/products/data.bin", "-H", f"Authorization: Bearer {POST_TOKEN}")
        assert c.status == 200 and c.body == content
        assert gw.get("/products/missing", bearer(POST_TOKEN)).status == 404
        assert gw.get("/products/hello.txt").status == 401
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(5)
