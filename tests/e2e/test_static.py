"""root, alias, index, try_files and the static content handler, against a real gateway
with real curl: types, validators, 304, Range, HEAD, directories, methods, large files."""

from __future__ import annotations

import json
import os
from email.utils import formatdate

import pytest

from jwtgate_e2e import POST_TOKEN, bearer, curl, file_sha256, pattern, request, sha256

MiB = 1 << 20


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "openapi.json").write_text(json.dumps({"openapi": "3.1.0"}))
    (root / "index.html").write_text("<h1>portal</h1>")
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (root / "docs" / "guide.md").write_text("# guide")
    (root / "empty").mkdir()
    (root / "noext").write_bytes(b"raw")
    (root / "big.bin").write_bytes(pattern(8 * MiB + 7))
    portal = tmp_path / "portal"
    portal.mkdir()
    (portal / "a.html").write_text("alias a")
    (tmp_path / "secret.txt").write_text("outside")
    return root


CONF = """
server {{
    listen 127.0.0.1:{{port}};
    root {root};
    location / {{ {extra} }}
    location /portal/ {{ alias {portal}/; }}
    location = /spec {{ alias {root}/openapi.json; }}
    location /p {{ alias {portal}/; }}
    location /try/ {{ try_files $uri $uri/ /index.html; }}
    location /try404/ {{ try_files $uri =404; }}
    location /broken/ {{ try_files $uri @nowhere; }}
    location /api/ {{
        auth_jwt "API";
        auth_jwt_key_file {{keys}};
        proxy_pass http://127.0.0.1:{{upstream_port}};
    }}
}}
"""


def conf(site, extra: str = "") -> str:
    return CONF.format(root=site, portal=site.parent / "portal", extra=extra)


def test_openapi_beside_authenticated_api(gateway, upstream, site):
    gw = gateway(conf(site))
    r = request(gw.port, "GET", "/openapi.json")
    assert r.status == 200
    assert r.json() == {"openapi": "3.1.0"}
    assert r.header("Content-Type") == "application/json"
    assert r.header("Accept-Ranges") == "bytes"
    st = os.stat(site / "openapi.json")
    assert r.header("ETag") == f'"{int(st.st_mtime):x}-{st.st_size:x}"'
    assert r.header("Last-Modified") == formatdate(int(st.st_mtime), usegmt=True)
    assert r.header("Server") == "jwtgate"
    assert request(gw.port, "GET", "/api/x").status == 401
    ok = request(gw.port, "GET", "/api/x", headers=bearer(POST_TOKEN))
    assert ok.status == 200 and upstream.last.path == "/api/x"


def test_index_and_directory_redirect(gateway, site):
    gw = gateway(conf(site))
    r = request(gw.port, "GET", "/")
    assert r.status == 200 and r.body == b"<h1>portal</h1>" and r.header("Content-Type") == "text/html"
    r = request(gw.port, "GET", "/docs/")
    assert r.body == b"<h1>docs</h1>"
    r = request(gw.port, "GET", "/docs?x=1")
    assert r.status == 301
    assert r.header("Location") == f"http://127.0.0.1:{gw.port}/docs/?x=1"
    r = request(gw.port, "GET", "/empty/")
    assert r.status == 403 and b"jwtgate" in r.body
    assert request(gw.port, "GET", "/nothere/").status == 404
    assert request(gw.port, "GET", "/missing.json").status == 404


def test_types_default_type_and_alias(gateway, site):
    gw = gateway(conf(site, extra="default_type application/octet-stream;"))
    assert request(gw.port, "GET", "/docs/guide.md").header("Content-Type") == "text/markdown"
    r = request(gw.port, "GET", "/noext")
    assert r.body == b"raw" and r.header("Content-Type") == "application/octet-stream"
    r = request(gw.port, "GET", "/portal/a.html")
    assert r.status == 200 and r.body == b"alias a"
    r = request(gw.port, "GET", "/spec")
    assert r.status == 200 and r.json() == {"openapi": "3.1.0"}
    # the classic alias mistake (/p without a slash, alias with one) does not climb out
    assert request(gw.port, "GET", "/p../secret.txt").status == 404
    assert request(gw.port, "GET", "/p/../secret.txt").status in (400, 404)
    assert request(gw.port, "GET", "/%2e%2e/secret.txt").status == 400


def test_methods(gateway, site):
    gw = gateway(conf(site))
    r = request(gw.port, "PUT", "/openapi.json", body=b"x")
    assert r.status == 405 and r.header("Allow") == "GET, HEAD"
    assert request(gw.port, "DELETE", "/missing").status == 405
    assert request(gw.port, "POST", "/openapi.json", body=b"x").status == 405
    assert request(gw.port, "POST", "/missing.json", body=b"x").status == 404


def test_head_conditional_and_range_with_curl(gateway, site):
    gw = gateway(conf(site))
    url = f"{gw.url}/openapi.json"
    head = curl(url, "-I")
    assert head.status == 200 and b"{" not in head.body  # curl -I: the head only
    assert head.header("Content-Length") == str(os.path.getsize(site / "openapi.json"))
    etag = head.header("ETag")
    lm = head.header("Last-Modified")
    r = curl(url, "-H", f"If-None-Match: {etag}")
    assert r.status == 304 and r.body == b"" and r.header("ETag") == etag
    r = curl(url, "-H", f"If-Modified-Since: {lm}")
    assert r.status == 304
    r = curl(url, "-z", str(site / "openapi.json"))  # curl's own If-Modified-Since
    assert r.status == 304
    r = curl(url, "-H", 'If-None-Match: "other"')
    assert r.status == 200
    r = curl(url, "-H", "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT")
    assert r.status == 200
    r = curl(url, "-H", 'If-Match: "other"')
    assert r.status == 412
    data = (site / "openapi.json").read_bytes()
    r = curl(url, "-r", "2-5")
    assert r.status == 206 and r.body == data[2:6]
    assert r.header("Content-Range") == f"bytes 2-5/{len(data)}"
    r = curl(url, "-r", "-3")
    assert r.status == 206 and r.body == data[-3:]
    r = curl(url, "-r", "5-")
    assert r.status == 206 and r.body == data[5:]
    r = curl(url, "-r", "0-1,4-5")
    assert r.status == 200 and r.body == data
    r = curl(url, "-r", "9999-")
    assert r.status == 416 and r.header("Content-Range") == f"bytes */{len(data)}"
    r = curl(url, "-r", "0-3", "-H", 'If-Range: "stale"')
    assert r.status == 200 and r.body == data
    r = curl(url, "-r", "0-3", "-H", f"If-Range: {etag}")
    assert r.status == 206 and r.body == data[:4]


@pytest.mark.parametrize("sendfile", ["on", "off"])
def test_large_file_and_range(gateway, site, tmp_path, sendfile):
    gw = gateway(conf(site, extra=f"sendfile {sendfile};"))
    out = tmp_path / "out.bin"
    r = curl(f"{gw.url}/big.bin", out=out)
    assert r.status == 200
    assert file_sha256(out) == file_sha256(site / "big.bin")
    data = pattern(8 * MiB + 7)
    r = curl(f"{gw.url}/big.bin", "-r", f"{3 * MiB}-{5 * MiB}", out=out)
    assert r.status == 206
    assert sha256(out.read_bytes()) == sha256(data[3 * MiB:5 * MiB + 1])
    # keep-alive survives a static response: two on one connection
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        assert request(gw.port, "GET", "/openapi.json", conn=c).status == 200
        assert request(gw.port, "HEAD", "/big.bin", conn=c).body == b""
        assert request(gw.port, "GET", "/index.html", conn=c).body == b"<h1>portal</h1>"
    finally:
        c.close()


def test_try_files(gateway, site):
    (site / "try").mkdir()
    (site / "try" / "here.txt").write_text("here")
    (site / "try404").mkdir()
    gw = gateway(conf(site))
    assert request(gw.port, "GET", "/try/here.txt").body == b"here"
    r = request(gw.port, "GET", "/try/missing")
    assert r.status == 200 and r.body == b"<h1>portal</h1>"
    assert request(gw.port, "GET", "/try404/missing").status == 404


def test_unreadable_file_is_403_without_details(gateway, site):
    if os.geteuid() == 0:
        pytest.skip("root reads anything")
    p = site / "locked.json"
    p.write_text("{}")
    p.chmod(0)
    gw = gateway(conf(site))
    r = request(gw.port, "GET", "/locked.json")
    assert r.status == 403
    assert b"Traceback" not in r.body and str(site).encode() not in r.body


def test_internal_error_body_is_small_and_version_free(gateway, site):
    gw = gateway(conf(site))
    r = request(gw.port, "GET", "/broken/x")  # a named location that does not exist: 500
    assert r.status == 500
    assert len(r.body) < 300
    for leak in (b"Traceback", b"python", b"Python", str(site).encode(), b"jwtgate/"):
        assert leak not in r.body
    assert r.header("Server") == "jwtgate"
