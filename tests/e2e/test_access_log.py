"""``log_format`` and ``access_log``: the post's ``jwt`` format and the predefined ``combined``."""

from __future__ import annotations

import re

from jwtgate_e2e import POST_TOKEN, bearer, curl, mint_hs, post_conf, request, wait_until

JWT_FORMAT = """
log_format jwt '$remote_addr - $remote_user [$time_local] "$request" '
               '$status $body_bytes_sent "$http_referer" "$http_user_agent" '
               '$jwt_header_alg $jwt_claim_sub';
"""

TIME_LOCAL = r"\[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]"


def log_lines(path, n: int) -> list[str]:
    """The log's lines once it has at least ``n`` (the gateway writes after responding)."""
    def ready():
        if not path.exists():
            return None
        lines = path.read_text().splitlines()
        return lines if len(lines) >= n else None
    return wait_until(ready, timeout=5, what=f"{n} lines in {path}")


def test_jwt_log_format(gateway, upstream, tmp_path):
    log = tmp_path / "access_jwt.log"
    gw = gateway(post_conf(http_extra=JWT_FORMAT, location_extra=f"access_log {log} jwt;"))
    for _ in range(3):
        r = curl(f"{gw.url}/products/widget1", "-H", f"Authorization: Bearer {POST_TOKEN}",
                 "-A", "test-agent/1.0", "-e", "http://example.com/ref")
        assert r.status == 200
    lines = log_lines(log, 3)
    assert len(lines) == 3
    body_len = len(r.body)
    for line in lines:
        assert line.endswith("HS256 quotes"), line
        assert re.fullmatch(
            r'127\.0\.0\.1 - - ' + TIME_LOCAL + r' "GET /products/widget1 HTTP/1\.1" 200 '
            + str(body_len) + r' "http://example\.com/ref" "test-agent/1\.0" HS256 quotes', line), line
    # a refused request: 401, and "-" for both JWT variables
    r = request(gw.port, "GET", "/products/widget2?x=1", {"User-Agent": "ua"})
    assert r.status == 401
    line = log_lines(log, 4)[3]
    assert re.fullmatch(r'127\.0\.0\.1 - - ' + TIME_LOCAL + r' "GET /products/widget2\?x=1 HTTP/1\.1" 401 '
                        + str(len(r.body)) + r' "-" "ua" - -', line), line
    # a token with a bad signature logs no claims either
    r = request(gw.port, "GET", "/products/widget3", bearer(mint_hs({"sub": "quotes"}, key=b"wrong")))
    assert r.status == 401
    assert log_lines(log, 5)[4].endswith('" 401 %d "-" "-" - -' % len(r.body)), log_lines(log, 5)[4]


def test_combined_log_format(gateway, upstream, tmp_path):
    default = tmp_path / "default.log"
    combined = tmp_path / "combined.log"
    gw = gateway(post_conf(location_extra=f"access_log {default};\naccess_log {combined} combined;"))
    r = curl(f"{gw.url}/products/widget1?q=a%20b", "-H", f"Authorization: Bearer {POST_TOKEN}",
             "-A", 'agent "quoted"', "-e", "http://ref.example/")
    assert r.status == 200
    r401 = request(gw.port, "POST", "/products/", {"User-Agent": "x"}, body=b"{}")
    assert r401.status == 401
    for path in (default, combined):
        lines = log_lines(path, 2)
        assert len(lines) == 2, lines
        assert re.fullmatch(
            r'127\.0\.0\.1 - - ' + TIME_LOCAL + r' "GET /products/widget1\?q=a%20b HTTP/1\.1" 200 '
            + str(len(r.body)) + r' "http://ref\.example/" "agent \\x22quoted\\x22"', lines[0]), lines[0]
        assert re.fullmatch(
            r'127\.0\.0\.1 - - ' + TIME_LOCAL + r' "POST /products/ HTTP/1\.1" 401 '
            + str(len(r401.body)) + r' "-" "x"', lines[1]), lines[1]


def test_log_only_where_configured(gateway, upstream, tmp_path):
    """``access_log`` in one location logs that location only; http-level logs are inherited."""
    everything = tmp_path / "all.log"
    products = tmp_path / "products.log"
    gw = gateway(f"""
access_log {everything};
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    location /products/ {{
        auth_jwt "Products API";
        auth_jwt_key_file {{keys}};
        proxy_pass http://api_server;
        access_log {products};
    }}
    location /open/ {{
        proxy_pass http://api_server;
    }}
}}
""")
    assert gw.get("/open/a").status == 200
    assert gw.get("/products/b", bearer(POST_TOKEN)).status == 200
    assert gw.get("/open/c").status == 200
    lines = log_lines(everything, 2)
    assert [re.search(r'"GET (\S+)', ln).group(1) for ln in lines] == ["/open/a", "/open/c"]
    lines = log_lines(products, 1)
    assert [re.search(r'"GET (\S+)', ln).group(1) for ln in lines] == ["/products/b"]
