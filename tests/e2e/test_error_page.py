"""error_page for the gateway's own errors: 401 (with WWW-Authenticate kept), 404, 502,
=code, =, named locations, URL redirects, loops."""

from __future__ import annotations

import json

import pytest

from jwtgate_e2e import POST_TOKEN, bearer, curl, free_port, request

CONF = """
server {{
    listen 127.0.0.1:{{port}};
    root {root};
    error_page 404 /errors/404.json;
    error_page 502 503 504 /errors/50x.html;

    location /errors/ {{ internal; }}
    location /api/ {{
        auth_jwt "API";
        auth_jwt_key_file {{keys}};
        error_page 401 = @unauthorized;
        error_page 403 =200 /errors/403.txt;
        auth_jwt_require $jwt_claim_admin error=403;
        proxy_pass http://127.0.0.1:{{upstream_port}};
    }}
    location @unauthorized {{
        default_type application/json;
        return 401 '{{"error":"unauthorized"}}';
    }}
    location /down/ {{ proxy_pass http://127.0.0.1:{dead}; }}
    location /down-loop/ {{
        error_page 502 /down/again;
        proxy_pass http://127.0.0.1:{dead};
    }}
    location /moved/ {{ error_page 404 https://example.com/gone; }}
    location /moved301/ {{ error_page 404 =301 https://example.com/gone; }}
    location /missing-page/ {{ error_page 404 /errors/nope.html; }}
    location /ret {{ return 404; }}
}}
"""


@pytest.fixture
def pages(tmp_path):
    root = tmp_path / "www"
    (root / "errors").mkdir(parents=True)
    (root / "errors" / "404.json").write_text('{"error":"not found"}')
    (root / "errors" / "50x.html").write_text("<p>upstream trouble</p>")
    (root / "errors" / "403.txt").write_text("forbidden, politely")
    return root


def conf(root) -> str:
    return CONF.format(root=root, dead=free_port())


def test_401_named_location_keeps_www_authenticate(gateway, upstream, pages):
    gw = gateway(conf(pages))
    r = request(gw.port, "GET", "/api/x")
    assert r.status == 401
    assert json.loads(r.body) == {"error": "unauthorized"}
    assert r.header("WWW-Authenticate") == 'Bearer realm="API"'
    r = request(gw.port, "GET", "/api/x", headers=bearer("bad.token.here"))
    assert r.status == 401 and 'error="invalid_token"' in r.header("WWW-Authenticate")


def test_403_with_override_code(gateway, upstream, pages):
    gw = gateway(conf(pages))
    r = request(gw.port, "GET", "/api/x", headers=bearer(POST_TOKEN))  # no admin claim
    assert r.status == 200 and r.body == b"forbidden, politely"
    assert r.header("Content-Type") == "text/plain"


def test_404_page_with_original_status(gateway, pages):
    gw = gateway(conf(pages))
    for path in ("/nothing.html", "/ret"):
        r = request(gw.port, "GET", path)
        assert r.status == 404, path
        assert r.json() == {"error": "not found"}
        assert r.header("Content-Type") == "application/json"
    # POST becomes GET for the page, as NGINX
    r = request(gw.port, "POST", "/nothing.html", body=b"x")
    assert r.status == 404 and r.json() == {"error": "not found"}
    # HEAD gets the head only
    r = curl(f"{gw.url}/nothing.html", "-I")
    assert r.status == 404
    # the internal location is not reachable directly, but its 404 has the page
    r = request(gw.port, "GET", "/errors/404.json")
    assert r.status == 404


def test_502_upstream_down_custom_page(gateway, pages):
    gw = gateway(conf(pages))
    r = request(gw.port, "GET", "/down/x")
    assert r.status == 502
    assert r.body == b"<p>upstream trouble</p>"
    assert r.header("Content-Type") == "text/html"


def test_second_error_answers_plain_page(gateway, pages):
    gw = gateway(conf(pages))
    r = request(gw.port, "GET", "/missing-page/x")
    assert r.status == 404 and b"<center>jwtgate</center>" in r.body
    r = request(gw.port, "GET", "/down-loop/x")  # the page is itself a 502
    assert r.status == 502 and b"502 Bad Gateway" in r.body


def test_url_redirects(gateway, pages):
    gw = gateway(conf(pages))
    r = request(gw.port, "GET", "/moved/x")
    assert r.status == 302 and r.header("Location") == "https://example.com/gone"
    r = request(gw.port, "GET", "/moved301/x")
    assert r.status == 301 and r.header("Location") == "https://example.com/gone"


def test_config_errors(gateway, tmp_path):
    from jwtgate.conf.plan import compile_plan
    from jwtgate.errors import ConfigError

    for text, message in [
        ("error_page 200 /x;", 'value "200" must be between 300 and 599'),
        ("error_page 404 =abc /x;", 'invalid value "=abc"'),
        ("error_page =200 /x;", 'invalid number of arguments in "error_page" directive'),
    ]:
        p = tmp_path / "c.conf"
        p.write_text(f"server {{ listen 127.0.0.1:{free_port()}; {text} }}")
        with pytest.raises(ConfigError) as info:
            compile_plan(str(p))
        assert message in str(info.value)
