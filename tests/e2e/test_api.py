"""The NGINX Plus API location (``api``), end to end: versions, paths, keyvals, status codes,
NGINX Plus error objects, ``write=off``, protection by ``allow``/``deny`` and ``auth_jwt``, and
hostile input (huge and chunked bodies, bad JSON, wrong shapes, bad keys and versions)."""

from __future__ import annotations

import json
import socket

import pytest

from jwtgate_e2e import bearer, curl, mint_hs, now, request

HREF = "https://nginx.org/en/docs/http/ngx_http_api_module.html"
KV = "/api/9/http/keyvals"

CONF = """
http {
    keyval_zone zone=one:64k timeout=1h;
    keyval $arg_k $one zone=one;
    keyval_zone zone=small:32k;
    keyval $arg_k $small zone=small;
    keyval_zone zone=nets:64k type=ip;
    keyval $remote_addr $net zone=nets;
    server {
        listen 127.0.0.1:{port};
        location /api { api write=on; }
        location /ro/api { api; }
        location /off/api { api write=off; }
        location = /limited/api/9/http/keyvals/one { api write=on; client_max_body_size 100; }
        location /jwt/api {
            api write=on;
            auth_jwt "API";
            auth_jwt_key_file {keys};
            auth_jwt_require $admin error=403;
        }
        location /local/api { api write=on; allow 10.0.0.0/8; allow ::1; deny all; }
    }
    map $jwt_claim_role $admin { admin 1; default ""; }
}
"""


@pytest.fixture
def gw(gateway):
    return gateway(CONF)


def call(port, method, path, body=None, headers=None):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    return request(port, method, path, headers=headers, body=data)


def error_of(r, status: int, code: str) -> dict:
    assert r.status == status, (r.status, r.body)
    assert r.header("Content-Type") == "application/json"
    obj = json.loads(r.body)
    assert set(obj) == {"error", "request_id", "href"}
    assert obj["error"]["status"] == status and obj["error"]["code"] == code
    assert isinstance(obj["error"]["text"], str) and obj["error"]["text"]
    assert len(obj["request_id"]) == 32 and obj["href"] == HREF
    return obj


def test_versions_and_endpoints(gw):
    for path in ("/api", "/api/"):
        r = call(gw.port, "GET", path)
        assert r.status == 200 and r.header("Content-Type") == "application/json"
        assert json.loads(r.body) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    for version in range(1, 10):
        r = call(gw.port, "GET", f"/api/{version}/")
        assert r.status == 200 and "http" in json.loads(r.body)
    r = call(gw.port, "GET", "/api/9/http/")
    assert "keyvals" in json.loads(r.body) and "requests" in json.loads(r.body)
    for bad in ("/api/0/", "/api/10/", "/api/99999999999999999999/", "/api/x/", "/api/-1/"):
        error_of(call(gw.port, "GET", bad), 404, "UnknownVersion")
    error_of(call(gw.port, "GET", "/api/9/nope"), 404, "PathNotFound")
    error_of(call(gw.port, "GET", "/api/9/http/keyvals/one/extra"), 404, "PathNotFound")
    error_of(call(gw.port, "PUT", "/api/9/http/keyvals/one", {}), 405, "MethodNotSupported")
    error_of(call(gw.port, "POST", "/api/9/http/keyvals/", {}), 405, "MethodNotSupported")


def test_keyval_lifecycle_with_nginx_plus_codes(gw):
    p = gw.port
    assert json.loads(call(p, "GET", f"{KV}/").body) == {"one": {}, "small": {}, "nets": {}}
    r = call(p, "POST", f"{KV}/one", {"a": "1", "b": {"value": "2", "expire": 60000}})
    assert r.status == 201 and r.body == b""
    assert json.loads(call(p, "GET", f"{KV}/one").body) == {"a": "1", "b": "2"}
    assert json.loads(call(p, "GET", f"{KV}/one?key=a").body) == {"a": "1"}
    assert call(p, "GET", "/value?k=a").status in (200, 404)  # no such location: fine
    error_of(call(p, "GET", f"{KV}/one?key=zz"), 404, "KeyvalKeyNotFound")
    error_of(call(p, "GET", f"{KV}/nope"), 404, "KeyvalNotFound")
    error_of(call(p, "POST", f"{KV}/nope", {"a": "1"}), 404, "KeyvalNotFound")
    error_of(call(p, "POST", f"{KV}/one", {"a": "again"}), 409, "KeyvalKeyExists")
    assert json.loads(call(p, "GET", f"{KV}/one?key=a").body) == {"a": "1"}  # unchanged
    assert call(p, "PATCH", f"{KV}/one", {"a": "3", "b": None}).status == 204
    assert json.loads(call(p, "GET", f"{KV}/one").body) == {"a": "3"}
    assert json.loads(call(p, "GET", f"{KV}/?fields=").body) == {"one": {}, "small": {}, "nets": {}}
    assert json.loads(call(p, "GET", f"{KV}/?fields=one").body) == {"one": {"a": "3"}, "small": {}, "nets": {}}
    assert call(p, "DELETE", f"{KV}/one").status == 204
    assert json.loads(call(p, "GET", f"{KV}/one").body) == {}
    # keys are any string (percent-encoded in ?key=), values are kept exactly
    assert call(p, "POST", f"{KV}/one", {"ü/ key?&": "välue \"q\""}).status == 201
    r = call(p, "GET", f"{KV}/one?key=%C3%BC%2F%20key%3F%26")
    assert json.loads(r.body) == {"ü/ key?&": "välue \"q\""}


def test_write_off_refuses_writes_with_405(gw):
    for prefix in ("/ro/api", "/off/api"):
        for method, body in (("POST", {"x": "1"}), ("PATCH", {"x": None}), ("DELETE", None)):
            error_of(call(gw.port, method, f"{prefix}/9/http/keyvals/one", body), 405, "MethodDisabled")
        assert call(gw.port, "GET", f"{prefix}/9/http/keyvals/one").status == 200
    assert json.loads(call(gw.port, "GET", f"{KV}/one").body) == {}


@pytest.mark.parametrize("body, status, code", [
    (b"", 415, "JsonError"),
    (b"not json", 415, "JsonError"),
    (b'{"a": "1"', 415, "JsonError"),
    (b'{"a": NaN}', 415, "JsonError"),
    (b'\xff\xfe{"a": "1"}', 415, "JsonError"),
    (b"[" * 100000 + b"]" * 100000, 415, "JsonError"),
    (b'["a", "1"]', 400, "KeyvalFormatError"),
    (b'"a"', 400, "KeyvalFormatError"),
    (b"{}", 400, "KeyvalFormatError"),
    (b'{"a": 1}', 400, "KeyvalFormatError"),
    (b'{"a": true}', 400, "KeyvalFormatError"),
    (b'{"a": ["1"]}', 400, "KeyvalFormatError"),
    (b'{"a": null}', 400, "KeyvalFormatError"),
    (b'{"a": {"value": 1}}', 400, "KeyvalFormatError"),
    (b'{"a": {"value": "1", "expire": "10"}}', 400, "KeyvalFormatError"),
    (b'{"a": {"value": "1", "expire": -1}}', 400, "KeyvalFormatError"),
    (b'{"a": {"value": "1", "expire": 1.5}}', 400, "KeyvalFormatError"),
    (b'{"a": {"value": "1", "bogus": 1}}', 400, "KeyvalFormatError"),
    (b'{"": "1"}', 400, "KeyvalFormatError"),
    (json.dumps({"k" * 1025: "1"}).encode(), 400, "KeyvalFormatError"),
    (json.dumps({"a": "v" * 4097}).encode(), 400, "KeyvalFormatError"),
    (b'{"\\ud800": "1"}', 400, "KeyvalFormatError"),
    (b'{"a": "\\udc00"}', 400, "KeyvalFormatError"),
])
def test_hostile_post_bodies(gw, body, status, code):
    error_of(call(gw.port, "POST", f"{KV}/one", body), status, code)
    assert json.loads(call(gw.port, "GET", f"{KV}/one").body) == {}


def test_expire_needs_a_zone_timeout(gw):
    obj = error_of(call(gw.port, "POST", f"{KV}/small", {"a": {"value": "1", "expire": 1000}}), 400,
                   "KeyvalFormatError")
    assert obj["error"]["text"] == "keyval timeout is not enabled"
    assert call(gw.port, "POST", f"{KV}/small", {"a": "1"}).status == 201


def test_ip_zone_keys_must_be_addresses(gw):
    error_of(call(gw.port, "POST", f"{KV}/nets", {"example.com": "1"}), 400, "KeyvalFormatError")
    error_of(call(gw.port, "POST", f"{KV}/nets", {"10.0.0.1/8": "1"}), 400, "KeyvalFormatError")
    assert call(gw.port, "POST", f"{KV}/nets", {"10.0.0.0/8": "1", "2001:db8::/32": "2"}).status == 201


def test_a_full_zone_refuses_writes(gw):
    # 32k zone, 128 bytes per entry plus key and value: about 250 small entries
    batch = {f"key-{i:05d}": "x" for i in range(200)}
    assert call(gw.port, "POST", f"{KV}/small", batch).status == 201
    obj = error_of(call(gw.port, "POST", f"{KV}/small", {f"more-{i:05d}": "x" for i in range(100)}),
                   507, "KeyvalZoneFull")
    assert "full" in obj["error"]["text"]
    assert len(json.loads(call(gw.port, "GET", f"{KV}/small").body)) == 200  # nothing half-written
    assert call(gw.port, "PATCH", f"{KV}/small", {f"key-{i:05d}": None for i in range(100)}).status == 204
    assert call(gw.port, "POST", f"{KV}/small", {"more-1": "x"}).status == 201


def test_bodies_are_bounded(gw):
    huge = json.dumps({"a": "x" * (300 * 1024)}).encode()
    error_of(call(gw.port, "POST", f"{KV}/one", huge), 413, "RequestEntityTooLarge")
    # the location's client_max_body_size applies first (NGINX's own 413 page)
    r = call(gw.port, "POST", "/limited/api/9/http/keyvals/one", {"a": "y" * 200})
    assert r.status == 413
    # a chunked body that never ends is cut, not buffered
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"POST /api/9/http/keyvals/one HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"a" * 64 * 1024)
    try:
        for _ in range(64):
            s.sendall(chunk)
    except OSError:
        pass  # the gateway closed the connection after answering
    answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(call(gw.port, "GET", f"{KV}/one").body) == {}


def test_api_location_behind_allow_deny(gw):
    error = call(gw.port, "GET", "/local/api/9/http/keyvals/one")
    assert error.status == 403  # 127.0.0.1 is neither 10/8 nor ::1
    assert b"403" in error.body


def test_api_location_behind_auth_jwt(gw):
    r = call(gw.port, "GET", "/jwt/api/9/http/keyvals/one")
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Bearer realm="API"'
    user = mint_hs({"sub": "u", "role": "user", "exp": now() + 600})
    admin = mint_hs({"sub": "a", "role": "admin", "exp": now() + 600})
    assert call(gw.port, "POST", "/jwt/api/9/http/keyvals/one", {"x": "1"}, bearer(user)).status == 403
    assert call(gw.port, "POST", "/jwt/api/9/http/keyvals/one", {"x": "1"}, bearer(admin)).status == 201
    # the same with real curl
    r = curl(f"{gw.url}/jwt/api/9/http/keyvals/one", "-H", f"Authorization: Bearer {admin}")
    assert r.status == 200 and json.loads(r.body) == {"x": "1"}


def test_statistics_paths_answer_or_404(gw):
    """The read-only endpoints come from the statistics module; whatever it returns is JSON,
    and an unknown statistics path is PathNotFound."""
    for path in ("/api/9/nginx", "/api/9/connections", "/api/9/http/requests", "/api/9/http/server_zones",
                 "/api/9/http/location_zones", "/api/9/http/upstreams", "/api/9/http/limit_reqs",
                 "/api/9/jwtgate"):
        r = call(gw.port, "GET", path)
        assert r.status in (200, 404), (path, r.status, r.body)
        json.loads(r.body)
        if r.status == 404:
            error_of(r, 404, "PathNotFound")
    error_of(call(gw.port, "GET", "/api/9/http/server_zones/no-such-zone/x/y"), 404, "PathNotFound")
    error_of(call(gw.port, "POST", "/api/9/nginx", {}), 405, "MethodNotSupported")


def test_curl_post_and_error(gw):
    r = curl(f"{gw.url}{KV}/one", "-X", "POST", "-H", "Content-Type: application/json", "-d", '{"c": "3"}')
    assert r.status == 201
    r = curl(f"{gw.url}{KV}/one", "-X", "POST", "-d", "{bad")
    assert r.status == 415 and json.loads(r.body)["error"]["code"] == "JsonError"
    r = curl(f"{gw.url}/ro/api/9/http/keyvals/one", "-X", "DELETE")
    assert r.status == 405 and json.loads(r.body)["error"]["code"] == "MethodDisabled"
