"""The ``dashboard`` directive over HTTP (real gateway, real curl): what it serves, its headers,
conditional requests, methods, and the configuration errors ``jwtgate check`` reports."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest

from jwtgate_e2e import curl, request, run_cli

CONF = """
events {}
http {
    server {
        listen 127.0.0.1:{port};
        location /dashboard/ { dashboard; }
        location /other/ { dashboard http://127.0.0.1:8081/status/api; }
    }
}
"""


def _package_file(name: str) -> bytes:
    return resources.files("jwtgate").joinpath("dashboard", name).read_bytes()


def test_serves_page_and_assets(gateway):
    gw = gateway(CONF)
    page = curl(gw.url + "/dashboard/")
    assert page.status == 200
    assert page.header("Content-Type") == "text/html; charset=utf-8"
    assert b'<meta name="jwtgate-api" content="/api/">' in page.body
    assert b'<script src="dashboard.js" defer></script>' in page.body
    csp = page.header("Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self';" in csp
    assert page.header("X-Content-Type-Options") == "nosniff"
    assert page.header("Cache-Control") == "no-cache"
    for name in ("index.html", "dashboard.html"):
        assert curl(f"{gw.url}/dashboard/{name}").body == page.body
    for name, ctype in (("dashboard.js", "application/javascript; charset=utf-8"),
                        ("dashboard.css", "text/css; charset=utf-8")):
        r = curl(f"{gw.url}/dashboard/{name}")
        assert r.status == 200 and r.header("Content-Type") == ctype
        assert r.body == _package_file(name)
        assert r.header("ETag") == '"' + hashlib.sha256(r.body).hexdigest()[:32] + '"'
    # the page never builds HTML from data
    assert b"innerHTML" not in _package_file("dashboard.js")
    assert b"http://" not in _package_file("index.html") and b"https://" not in _package_file("dashboard.css")


def test_other_api_uri_and_csp(gateway):
    gw = gateway(CONF)
    r = curl(gw.url + "/other/")
    assert b'content="http://127.0.0.1:8081/status/api/"' in r.body
    assert "connect-src 'self' http://127.0.0.1:8081;" in r.header("Content-Security-Policy")


def test_conditional_head_methods_and_unknown_names(gateway):
    gw = gateway(CONF)
    first = request(gw.port, "GET", "/dashboard/dashboard.js")
    etag = first.header("ETag")
    again = request(gw.port, "GET", "/dashboard/dashboard.js", headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    assert request(gw.port, "GET", "/dashboard/dashboard.js",
                   headers={"If-None-Match": '"other"'}).status == 200
    head = request(gw.port, "HEAD", "/dashboard/")
    assert head.status == 200 and head.body == b"" and int(head.header("Content-Length")) > 1000
    post = request(gw.port, "POST", "/dashboard/", body=b"x")
    assert post.status == 405 and post.header("Allow") == "GET, HEAD"
    assert request(gw.port, "GET", "/dashboard/secret.txt").status == 404
    assert request(gw.port, "GET", "/dashboard/../../etc/passwd").status in (400, 404)
    redirect = request(gw.port, "GET", "/dashboard")
    assert redirect.status == 301 and redirect.header("Location").endswith("/dashboard/")


@pytest.mark.parametrize("directive, message", [
    ('dashboard; dashboard;', '"dashboard" directive is duplicate'),
    ('dashboard "/a b";', 'invalid api_uri "/a b"'),
    ('dashboard javascript:alert(1);', 'must be an absolute path or an http:// or https:// URL'),
    ('dashboard "/x\\"onload=\\"y";', 'invalid api_uri'),
    ('dashboard //evil.example/api;', 'scheme-relative'),
    ('dashboard "http://a;b/";', 'is not a host[:port]'),
    ('dashboard /api/?x=1;', 'must not hold a query'),
    ('dashboard /api/; proxy_pass http://127.0.0.1:1;', '"dashboard" and "proxy_pass" in one location'),
    ('dashboard a b;', 'invalid number of arguments'),
])
def test_configuration_errors(tmp_path, directive, message):
    conf = tmp_path / "bad.conf"
    conf.write_text("events {}\nhttp { server { listen 127.0.0.1:1;\n"
                    f"  location /d/ {{ {directive} }}\n}} }}\n")
    r = run_cli("check", "-c", str(conf))
    assert r.returncode == 1, r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{conf}:3" in r.stderr


def test_not_allowed_outside_a_location(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("events {}\nhttp { dashboard; server { listen 127.0.0.1:1; } }\n")
    r = run_cli("check", "-c", str(conf))
    assert r.returncode == 1 and '"dashboard" directive is not allowed here' in r.stderr, r.stderr


def test_a_dashboard_without_an_api_location_to_poll_is_a_warning(tmp_path):
    conf = tmp_path / "gw.conf"
    conf.write_text("events {}\nhttp {\n"
                    "  server { listen 127.0.0.1:1;\n"
                    "    location /dashboard/ { dashboard; }\n"
                    "    location /remote/ { dashboard http://127.0.0.1:8081/api/; }\n"
                    "  }\n"
                    "  server { listen 127.0.0.1:2;\n"
                    "    location / { location /admin/api/ { api; } }\n"
                    "    location /dashboard/ { dashboard /admin/api/; }\n"
                    "  }\n"
                    "}\n")
    r = run_cli("check", "-c", str(conf))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "[warn]" in line]
    # only the first server's local dashboard: a URL polls another gateway, the second server has an api
    assert len(warnings) == 1, r.stderr
    assert '"dashboard" polls the API at "/api/", but no location of this server has "api"' in warnings[0]
    assert warnings[0].endswith(f"{conf}:4")
    assert "test is successful" in r.stderr
