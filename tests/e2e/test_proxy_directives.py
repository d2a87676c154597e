"""proxy_pass with variables, proxy_pass_request_body, proxy_pass_header (NGINX semantics)."""

from __future__ import annotations

from jwtgate_e2e import request

VARS = """
upstream grp_a {{ server 127.0.0.1:{{upstream_port}}; }}
map $arg_pool $pool {{ default grp_a; b 127.0.0.1:{{upstream_port}}; dns localhost:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    location /by-map/ {{ proxy_pass http://$pool; }}
    location /by-set/ {{ set $backend 127.0.0.1:{{upstream_port}}; proxy_pass http://$backend; }}
    location /fixed/ {{ proxy_pass http://127.0.0.1:{{upstream_port}}/other$is_args$args; }}
    location /nobody/ {{ proxy_pass http://127.0.0.1:{{upstream_port}}; proxy_pass_request_body off; }}
    location /server/ {{ proxy_pass http://127.0.0.1:{{upstream_port}}; proxy_pass_header Server; }}
}}
"""


def test_proxy_pass_with_variables(gateway, upstream):
    gw = gateway(VARS.format())
    assert request(gw.port, "GET", "/by-map/x?pool=a").status == 200
    assert upstream.last.path == "/by-map/x?pool=a"
    assert request(gw.port, "GET", "/by-map/y?pool=b").status == 200
    assert upstream.last.path == "/by-map/y?pool=b"
    assert request(gw.port, "GET", "/by-set/z").status == 200
    assert upstream.last.path == "/by-set/z"
    # A URI part with variables replaces the request URI as it is.
    assert request(gw.port, "GET", "/fixed/ignored?q=1").status == 200
    assert upstream.last.path == "/other?q=1"
    # No resolver: a host name that is not an upstream group cannot be resolved per request.
    upstream.clear()
    assert request(gw.port, "GET", "/by-map/w?pool=dns").status == 502
    assert not upstream.requests


def test_proxy_pass_request_body_off(gateway, upstream):
    gw = gateway(VARS.format())
    r = request(gw.port, "POST", "/nobody/x", body=b"secret=1")
    assert r.status == 200
    assert upstream.last.body == b""
    assert upstream.last.values("Content-Length") in ([], ["0"])


def test_proxy_pass_header_server(gateway, upstream):
    gw = gateway(VARS.format())
    r = request(gw.port, "GET", "/server/x")
    assert r.status == 200
    servers = r.values("Server")
    assert len(servers) == 1 and "jwtgate" not in servers[0]
    r = request(gw.port, "GET", "/by-set/x")
    assert r.values("Server") == ["jwtgate"]
