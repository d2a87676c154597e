"""Third adversarial pass: live revocation, the NGINX Plus API, allow/deny, metrics (issue 8).

Tests named ``test_defect_*`` pin defects this review found and fixed (each fails on the code
before its fix); the others pin attacks that were already handled. The CLI's defects are in
``tests/cli/test_revoke.py``, the keyval file limit in ``tests/unit/test_keyval_state.py``.
"""

from __future__ import annotations

import json
import socket

import pytest

from jwtgate_e2e import bearer, mint_hs, now, request

pytestmark = pytest.mark.timeout(90)

API = "/api/9/http/keyvals"

CONF = """
http {
    keyval_zone zone=revoked:64k timeout=1h;
    keyval $jwt_claim_jti $jwt_revoked zone=revoked;
    map $jwt_revoked $valid_jti { "" 1; default 0; }
    keyval_zone zone=ro:64k;
    server {
        listen 127.0.0.1:{port};
        status_zone gateway;
        location /api { api write=on; allow 127.0.0.1; deny all; }
        location /roapi/ { api; }
        location /denied/ { api write=on; deny all; }
        location = /metrics { metrics; }
        location /products/ {
            auth_jwt "Products API";
            auth_jwt_key_file {keys};
            auth_jwt_cache on;
            auth_jwt_require $valid_jti;
            proxy_pass http://127.0.0.1:{upstream_port};
        }
    }
}
"""



def post(port: int, path: str, body, method: str = "POST"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(port, method, path, body=data)


def test_defect_access_log_line_cannot_be_forged_through_the_decoded_uri(gateway):
    """``deny`` logged the decoded ``$uri``: ``%0d%0a`` in the request wrote a forged line into
    the error log (and ``%1b`` terminal escapes). It logs the request line as sent, as NGINX
    does, without the query string (which may carry a token)."""
    gw = gateway(CONF)
    assert request(gw.port, "GET", "/denied/x%0d%0a2026/11/29%2022:00:00%20[emerg]%201%230:%20FORGED%1b[2J"
                   "?token=SECRET").status == 403
    log = gw.stderr_text()
    line = next(li for li in log.splitlines() if "access forbidden by rule" in li)
    assert 'request: "GET /denied/x%0d%0a2026/11/29%2022:00:00%20[emerg]%201%230:%20FORGED%1b[2J HTTP/1.1"' in line, line
    assert not any(li.startswith("2026/11/29 22:00:00 [emerg]") for li in log.splitlines())
    assert "\x1b" not in log and "SECRET" not in log


def test_write_off_cannot_be_bypassed(gateway):
    """``api;`` (write=off): no method override, path trick or encoded slash gets a write in."""
    gw = gateway(CONF)
    body = json.dumps({"k": "1"}).encode()
    for path in ("/roapi/9/http/keyvals/ro", "//roapi/9/http/keyvals/ro", "/roapi/9/../9/http/keyvals/ro",
                 "/roapi%2F9/http/keyvals/ro", "/roapi/9/http/keyvals/ro/", "/roapi/09/http/keyvals/ro"):
        for method in ("POST", "PATCH", "DELETE"):
            r = request(gw.port, method, path, body=body)
            assert r.status == 405 and b"MethodDisabled" in r.body, (method, path, r.status)
    r = request(gw.port, "GET", "/roapi/9/http/keyvals/ro",
                headers={"X-HTTP-Method-Override": "POST", "X-Method-Override": "POST"})
    assert r.status == 200 and json.loads(r.body) == {}
    for version in ("0", "10", "-1", "9abc", "999", "%39"):
        r = request(gw.port, "GET", f"/api/{version}/http/keyvals")
        assert r.status in (200, 404), (version, r.status)
        if version != "%39":
            assert b"UnknownVersion" in r.body
    # nothing was written anywhere
    assert json.loads(request(gw.port, "GET", API).body) == {"revoked": {}, "ro": {}}


@pytest.mark.parametrize("body, status, code", [
    (b"[" * 100000 + b"]" * 100000, 415, b"JsonError"),          # deep nesting: no RecursionError 500
    (b'{"a":' * 40000 + b'"x"' + b"}" * 40000, 415, b"JsonError"),
    (b"[1, 2]", 400, b"KeyvalFormatError"),
    (b"5", 400, b"KeyvalFormatError"),
    (b"null", 400, b"KeyvalFormatError"),
    (b"{}", 400, b"KeyvalFormatError"),
    (b'{"k": 1}', 400, b"KeyvalFormatError"),
    (b'{"k": true}', 400, b"KeyvalFormatError"),
    (b'{"k": NaN}', 415, b"JsonError"),
    (b'{"k": {"value": "1", "expire": -1}}', 400, b"KeyvalFormatError"),
    (b'{"k": {"value": "1", "expire": 1.5}}', 400, b"KeyvalFormatError"),
    (b'{"k": {"value": "1", "expire": "10"}}', 400, b"KeyvalFormatError"),
    (b'{"k": {"value": "1", "expire": 99999999999999999999999}}', 400, b"KeyvalFormatError"),
    (b'{"k": {"value": "1", "expire": ' + b"9" * 5000 + b"}}", 415, b"JsonError"),  # int digits limit
    (b'{"\\ud800": "1"}', 400, b"KeyvalFormatError"),
    (b'{"k": "\\udfff"}', 400, b"KeyvalFormatError"),
    (b'{"\xff": "1"}', 415, b"JsonError"),
    (b"", 415, b"JsonError"),
    (json.dumps({"x" * 1025: "1"}).encode(), 400, b"KeyvalFormatError"),
])
def test_hostile_bodies_get_nginx_plus_errors(gateway, body, status, code):
    gw = gateway(CONF)
    r = post(gw.port, f"{API}/revoked", body)
    assert r.status == status and code in r.body, (r.status, r.body[:200])
    assert json.loads(request(gw.port, "GET", f"{API}/revoked").body) == {}
    assert "Traceback" not in gw.stderr_text()


def test_odd_keys_revoke_exactly_the_token_that_carries_them(gateway, upstream):
    """NUL, CR/LF, quotes and non-ASCII in a ``jti``: stored, found, and the token refused on
    the very next request (verified-token cache on); non-string jti claims as NGINX prints them."""
    gw = gateway(CONF)
    for jti, key in [("a\u0000b", "a\u0000b"), ("crlf\r\nX-Evil: 1", "crlf\r\nX-Evil: 1"), ('q"s', 'q"s'),
                     ("uni\u00e9\u4e2d", "uni\u00e9\u4e2d"), (12345, "12345"), (["a", "b"], "a,b"),
                     ("x" * 1024, "x" * 1024)]:
        tok = mint_hs({"sub": "s", "jti": jti, "exp": now() + 3600})
        assert request(gw.port, "GET", "/products/x", bearer(tok)).status == 200
        assert post(gw.port, f"{API}/revoked", {key: "1"}).status == 201
        assert request(gw.port, "GET", "/products/x", bearer(tok)).status == 401, jti
        other = mint_hs({"sub": "s", "jti": "other", "exp": now() + 3600})
        assert request(gw.port, "GET", "/products/x", bearer(other)).status == 200
        assert request(gw.port, "DELETE", f"{API}/revoked").status == 204
        assert request(gw.port, "GET", "/products/x", bearer(tok)).status == 200
    stats = json.loads(request(gw.port, "GET", "/api/9/jwtgate").body)
    assert stats["auth"]["outcomes"]["revoked"] == 7


def test_hostile_sub_never_reaches_the_metrics_text(gateway):
    """A ``sub`` with quotes, newlines and markup is counted in the API's top talkers (JSON
    escaped) but never becomes a Prometheus label."""
    gw = gateway(CONF)
    evil = 'a"b\nc} jwtgate_fake_total 1e9\n<img src=x onerror=alert(1)>'
    tok = mint_hs({"sub": evil, "jti": "j", "exp": now() + 3600})
    assert request(gw.port, "GET", "/products/x", bearer(tok)).status == 200
    text = request(gw.port, "GET", "/metrics").body.decode()
    assert "jwtgate_fake_total" not in text and "onerror" not in text
    top = json.loads(request(gw.port, "GET", "/api/9/jwtgate").body)["top_subs"]
    assert top == [{"sub": evil, "requests": 1}]


def test_defect_a_reload_refuses_no_connection_while_new_workers_read_a_big_state_file(gateway, tmp_path):
    """The master stopped the old workers 0.2 s after forking the new ones, whatever the new
    ones were doing; a worker reads its keyval state files before it binds, and 200,000
    revoked ``jti``s take most of a second to read: every reload refused connections for that
    long. The master now waits until the new workers report that they listen."""
    import signal
    import threading
    import time

    from jwtgate_e2e import wait_until

    state = tmp_path / "revoked.json"
    state.write_text(json.dumps({f"jti-{i:08d}-aaaaaaaaaaaaaaaaaaaaaaaa": "1" for i in range(200_000)}))
    gw = gateway(f"""
worker_processes 2;
error_log stderr info;
http {{
    keyval_zone zone=revoked:128m state={state};
    keyval $jwt_claim_jti $jwt_revoked zone=revoked;
    server {{ listen 127.0.0.1:{{port}}; location / {{ return 200 "ok"; }} }}
}}
""")
    wait_until(lambda: gw.stderr_text().count("listening on") >= 2, timeout=20, what="two workers")
    refused, answered = [0], [0]
    stop = threading.Event()

    def knock():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        answered[0] += 1
            except ConnectionRefusedError:
                refused[0] += 1
            except OSError:
                pass

    threads = [threading.Thread(target=knock) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        gw.send_signal(signal.SIGHUP)
        wait_until(lambda: gw.stderr_text().count("listening on") >= 4, timeout=20, what="the new workers")
        wait_until(lambda: "configuration reloaded" in gw.stderr_text(), timeout=20, what="the reload")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert refused[0] == 0 and answered[0] > 0, (refused[0], answered[0])


def test_defect_key_query_keeps_a_plus(gateway):
    """``GET ...?key=`` decoded ``+`` as a space (``parse_qs``): a revoked base64 ``jti`` such as
    ``ab+cd/ef==`` was reported absent (404), while the zone held it. NGINX's unescaping keeps
    ``+``; ``%2B`` and ``%20`` still decode."""
    gw = gateway(CONF)
    assert post(gw.port, f"{API}/revoked", {"ab+cd/ef==": "1", "with space": "2"}).status == 201
    for query, expected in [("ab+cd/ef==", {"ab+cd/ef==": "1"}), ("ab%2Bcd%2Fef%3D%3D", {"ab+cd/ef==": "1"}),
                            ("with%20space", {"with space": "2"}), ("ab+cd/ef==&fields=x", {"ab+cd/ef==": "1"})]:
        r = request(gw.port, "GET", f"{API}/revoked?key={query}")
        assert r.status == 200 and json.loads(r.body) == expected, (query, r.status, r.body)
    r = request(gw.port, "GET", f"{API}/revoked?key=with+space")
    assert r.status == 404 and b"KeyvalKeyNotFound" in r.body
    r = request(gw.port, "GET", "/api/9/http/server_zones?fields=requests")
    assert r.status == 200 and list(json.loads(r.body)["gateway"]) == ["requests"]
