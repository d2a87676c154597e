"""Variables, ``set``, ``return``, ``map`` and ``add_header`` with a real gateway on 127.0.0.1:
values in ``return`` text, in upstream headers and in the access log."""

from __future__ import annotations

import re
import socket

from jwtgate_e2e import POST_TOKEN, bearer, curl, fetch, mint_hs, request, wait_until


def test_variables_in_return_text(gateway, upstream):
    gw = gateway("""
server {
    listen 127.0.0.1:{port};
    server_name gw.example;
    location / {
        return 200 "$request_method $uri $arg_x|$args|$is_args|$host|$server_name|$server_port|$remote_addr|$http_x_test|$cookie_c|$request_uri|$scheme|$server_protocol";
    }
}
""")
    r = fetch(gw.port, "/a/%62/../c?x=1&y", "GW.example", "POST", {"X-Test": "t", "Cookie": "c=v"})
    assert r.status == 200
    assert r.body.decode() == (f"POST /a/c 1|x=1&y|?|gw.example|gw.example|{gw.port}|127.0.0.1|t|v|"
                               "/a/%62/../c?x=1&y|http|HTTP/1.1")


def test_set_and_return_run_before_authentication(gateway, upstream):
    gw = gateway("""
upstream api_server { server 127.0.0.1:{upstream_port}; }
server {
    listen 127.0.0.1:{port};
    set $origin "server";
    location /products/ {
        auth_jwt "Products API";
        auth_jwt_key_file {keys};
        set $client "$arg_client";
        proxy_set_header X-Client "$client from $origin";
        proxy_pass http://api_server;
    }
    location /maintenance/ {
        auth_jwt "Products API";
        auth_jwt_key_file {keys};
        set $reason "upgrade";
        return 503 "down for $reason";
    }
    location /close { return 444; }
}
""")
    r = request(gw.port, "GET", "/products/a?client=web", bearer(POST_TOKEN))
    assert r.status == 200 and upstream.last.values("X-Client") == ["web from server"]
    # return answers in the rewrite phase, before auth_jwt: no token needed
    r = request(gw.port, "GET", "/maintenance/x")
    assert (r.status, r.body) == (503, b"down for upgrade")
    # 444 closes the connection without an answer
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100) == b""


MAPS = r"""
upstream api_server { server 127.0.0.1:{upstream_port}; }

map $http_host $site {
    hostnames;
    default          other;
    example.com      main;
    *.example.com    sub;
    www.example.*    www;
}

map $uri $api_version {
    default                    none;
    ~^/api/v(?<major>\d+)/     "v$major";
    ~*^/LEGACY/(\w+)           "legacy-$1";
}

map $jwt_claim_sub $tier {
    quotes    gold;
    default   "basic $jwt_claim_sub";
}

server {
    listen 127.0.0.1:{port};
    location / {
        return 200 "$site $api_version";
    }
    location /products/ {
        auth_jwt "Products API";
        auth_jwt_key_file {keys};
        proxy_set_header X-Tier $tier;
        proxy_pass http://api_server;
    }
}
"""


def test_map_hostnames_regex_captures_and_claims(gateway, upstream):
    gw = gateway(MAPS)
    for host, site in (("example.com", "main"), ("a.b.example.com", "sub"), ("www.example.org", "www"),
                       ("other.test", "other")):
        assert fetch(gw.port, "/", host).body.decode() == f"{site} none", host
    assert fetch(gw.port, "/api/v3/x", "x").body == b"other v3"
    assert fetch(gw.port, "/legacy/orders/1", "x").body == b"other legacy-orders"
    # a map over a claim is evaluated with the verified token
    request(gw.port, "GET", "/products/a", bearer(POST_TOKEN))
    assert upstream.last.values("X-Tier") == ["gold"]
    request(gw.port, "GET", "/products/a", bearer(mint_hs({"sub": "bob"})))
    assert upstream.last.values("X-Tier") == ["basic bob"]


def test_add_header(gateway, upstream):
    gw = gateway("""
upstream api_server { server 127.0.0.1:{upstream_port}; }
add_header X-Gateway jwtgate;
server {
    listen 127.0.0.1:{port};
    location /products/ {
        auth_jwt "Products API";
        auth_jwt_key_file {keys};
        add_header X-Upstream-Status $upstream_status;
        add_header X-Always "seen" always;
        proxy_pass http://api_server;
    }
    location / { return 200 ok; }
}
""")
    r = curl(f"{gw.url}/products/a", "-H", f"Authorization: Bearer {POST_TOKEN}")
    assert r.status == 200
    assert r.header("X-Upstream-Status") == "200" and r.header("X-Always") == "seen"
    assert r.header("X-Gateway") is None  # the location has its own add_header
    r = curl(f"{gw.url}/products/a")
    assert r.status == 401 and r.header("X-Always") == "seen" and r.header("X-Upstream-Status") is None
    r = curl(f"{gw.url}/other")
    assert r.header("X-Gateway") == "jwtgate"


def test_variables_in_the_access_log(gateway, upstream, tmp_path):
    log = tmp_path / "vars.log"
    gw = gateway(f"""
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
log_format vars '$status|$sent_http_content_type|$sent_http_x_upstream_port|$upstream_addr|'
                '$upstream_status|$upstream_connect_time|$upstream_header_time|$upstream_response_time|'
                '$request_length|$bytes_sent|$body_bytes_sent|$request_time|$connection_requests|'
                '$jwt_claim_sub|$request_id';
server {{
    listen 127.0.0.1:{{port}};
    location /products/ {{
        auth_jwt "Products API";
        auth_jwt_key_file {{keys}};
        proxy_pass http://api_server;
        access_log {log} vars;
    }}
}}
""")
    r = request(gw.port, "GET", "/products/widget1", bearer(POST_TOKEN))
    assert r.status == 200
    line = wait_until(lambda: log.exists() and log.read_text().strip(), what="a log line")
    fields = line.split("|")
    assert fields[:5] == ["200", "application/json", str(upstream.port), f"127.0.0.1:{upstream.port}", "200"]
    for timing in fields[5:8]:
        assert re.fullmatch(r"\d+\.\d{3}", timing), fields
    request_line = len("GET /products/widget1 HTTP/1.1\r\n")
    assert int(fields[8]) > request_line
    assert int(fields[9]) > int(fields[10]) == len(r.body)
    assert re.fullmatch(r"\d+\.\d{3}", fields[11]) and fields[12] == "1"
    assert fields[13] == "quotes" and re.fullmatch(r"[0-9a-f]{32}", fields[14])
