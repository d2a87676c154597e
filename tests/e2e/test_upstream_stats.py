"""Upstream peer statistics as NGINX Plus counts them: an attempt that got no response (a
refused connection) is a request to the peer and a fail, never one of its responses; a
group's only server is never marked unavailable (NGINX ignores max_fails for it)."""

from __future__ import annotations

import json

from jwtgate_e2e import free_port, request

CONF = """
upstream pair {{
    zone pair 64k;
    server 127.0.0.1:{dead} max_fails=1 fail_timeout=30s;
    server 127.0.0.1:{{upstream_port}};
}}
upstream lonely {{
    zone lonely 64k;
    server 127.0.0.1:{dead} max_fails=1;
}}
server {{
    listen 127.0.0.1:{{port}};
    status_zone site;
    location /pair/ {{ proxy_pass http://pair; }}
    location /lonely/ {{ proxy_pass http://lonely; }}
    location /api/ {{ api; allow 127.0.0.1; deny all; }}
}}
"""


def _api(port: int, path: str) -> dict:
    r = request(port, "GET", f"/api/9/{path}")
    assert r.status == 200, r.body
    return json.loads(r.body)


def test_refused_attempts_are_fails_not_responses(gateway, upstream):
    gw = gateway(CONF.format(dead=free_port()))
    # round robin starts at the dead server: refused, then the live one answers
    for _ in range(3):
        assert request(gw.port, "GET", "/pair/x").status == 200
    dead, live = _api(gw.port, "http/upstreams/pair")["peers"]
    assert dead["fails"] == 1 and dead["requests"] == 1
    assert dead["responses"]["total"] == 0 and dead["responses"]["codes"] == {}
    assert dead["state"] == "unavail"
    assert live["responses"]["2xx"] == 3 and live["responses"]["codes"] == {"200": 3}
    assert live["fails"] == 0 and live["state"] == "up"


def test_a_groups_only_server_is_never_unavailable(gateway, upstream):
    gw = gateway(CONF.format(dead=free_port()))
    for _ in range(3):
        assert request(gw.port, "GET", "/lonely/x").status == 502
    (peer,) = _api(gw.port, "http/upstreams/lonely")["peers"]
    assert peer["state"] == "up" and peer["unavail"] == 0
    assert peer["requests"] == 3 and peer["responses"]["total"] == 0


def test_upstream_zone_directive_is_checked(tmp_path):
    import pytest

    from jwtgate.conf.plan import compile_plan
    from jwtgate.errors import ConfigError

    def plan(body: str):
        path = tmp_path / "gw.conf"
        path.write_text("upstream u { %s server 127.0.0.1:9; }\n"
                        "server { listen 127.0.0.1:8080; location / { proxy_pass http://u; } }\n" % body)
        return compile_plan(str(path))

    assert plan("zone backend 64k;").servers  # NGINX Plus configurations load
    assert plan("zone backend;").servers
    with pytest.raises(ConfigError, match='invalid zone size "64q"'):
        plan("zone backend 64q;")
    with pytest.raises(ConfigError, match='"zone" directive is duplicate'):
        plan("zone a; zone b;")
