"""``allow``/``deny`` (NGINX ``ngx_http_access_module``) end to end: first match wins, 403 on
deny, NGINX's all-or-nothing inheritance, IPv4/IPv6/CIDR/``all``, and the order against
``auth_jwt`` (access rules first: a denied client gets 403, not a 401 challenge)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from jwtgate_e2e import JWTGATE, POST_TOKEN, bearer, curl, request


def conf(server_rules: str = "", loc_rules: str = "", nested: str = "", listen: str = "127.0.0.1:{port}",
         auth: str = "") -> str:
    return f"""
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen {listen};
    {server_rules}
    location /p/ {{
        proxy_pass http://api_server;
        {loc_rules}
        {auth}
        {nested}
    }}
    location /other/ {{ proxy_pass http://api_server; }}
}}
"""


def code(port: int, path: str = "/p/x", headers=None) -> int:
    return request(port, "GET", path, headers).status


@pytest.mark.parametrize("rules, expected", [
    ("", 200),
    ("deny all;", 403),
    ("allow all;", 200),
    ("allow 127.0.0.1; deny all;", 200),
    ("deny 127.0.0.1; allow all;", 403),
    ("allow 127.0.0.1; deny 127.0.0.1;", 200),  # the first match decides
    ("deny 127.0.0.0/8;", 403),
    ("deny 127.0.0.2;", 200),
    ("allow 10.0.0.0/8; deny all;", 403),
    ("allow 10.0.0.0/8; allow 127.0.0.0/24; deny all;", 200),
    ("deny ::1; allow all;", 200),  # an IPv6 rule does not match an IPv4 client
    ("deny 0.0.0.0/0;", 403),
    ("deny unix:; allow all;", 200),
])
def test_rules_in_order(gateway, upstream, rules, expected):
    gw = gateway(conf(loc_rules=rules))
    assert code(gw.port) == expected
    r = request(gw.port, "GET", "/p/x")
    if expected == 403:
        assert b"403" in r.body and not upstream.requests
        assert "access forbidden by rule, client: 127.0.0.1" in gw.stderr_text()


def test_inheritance_is_all_or_nothing(gateway):
    gw = gateway(conf(server_rules="deny all;", loc_rules="allow 127.0.0.1;",
                      nested="location /p/inner/ { deny 127.0.0.1; proxy_pass http://api_server; } "
                             "location /p/plain/ { proxy_pass http://api_server; }"))
    assert code(gw.port, "/p/x") == 200          # the location's own rules replace the server's
    assert code(gw.port, "/p/inner/x") == 403    # and the nested location's replace those
    assert code(gw.port, "/p/plain/x") == 200    # inherited from /p/
    assert code(gw.port, "/other/x") == 403      # inherited from the server


def test_access_runs_before_auth_jwt(gateway, post_token_file):
    auth = 'auth_jwt "Products API"; auth_jwt_key_file {keys};'
    gw = gateway(conf(loc_rules="deny all;", auth=auth))
    r = request(gw.port, "GET", "/p/x")
    assert r.status == 403 and r.header("WWW-Authenticate") is None
    assert code(gw.port, headers=bearer(POST_TOKEN)) == 403
    gw2 = gateway(conf(loc_rules="allow 127.0.0.1; deny all;", auth=auth))
    assert code(gw2.port) == 401
    assert code(gw2.port, headers=bearer(POST_TOKEN)) == 200


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("rules, expected", [
    ("deny ::1;", 403),
    ("deny ::/0;", 403),
    ("allow ::1/128; deny all;", 200),
    ("deny 127.0.0.1; allow all;", 200),
    ("allow 2001:db8::/32; deny all;", 403),
])
def test_ipv6_clients(gateway, rules, expected):
    gw = gateway(conf(loc_rules=rules, listen="127.0.0.1:{port}; listen [::1]:{port}"))
    r = curl(f"http://[::1]:{gw.port}/p/x", "-g")
    assert r.status == expected, r


@pytest.mark.parametrize("rule, message", [
    ("allow 300.1.1.1;", 'invalid parameter "300.1.1.1"'),
    ("deny 127.0.0.1/33;", 'invalid parameter "127.0.0.1/33"'),
    ("deny example.com;", 'invalid parameter "example.com"'),
    ("allow;", 'invalid number of arguments in "allow" directive'),
    ("deny 1.2.3.4 5.6.7.8;", 'invalid number of arguments in "deny" directive'),
])
def test_bad_rules_are_configuration_errors(tmp_path, rule, message):
    path = tmp_path / "bad.conf"
    path.write_text(f"server {{ listen 127.0.0.1:9; location / {{ {rule} return 200; }} }}")
    p = subprocess.run([JWTGATE, "check", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and message in p.stderr, p.stderr


def test_host_bits_warn_as_nginx(tmp_path):
    path = tmp_path / "warn.conf"
    path.write_text("server { listen 127.0.0.1:9; location / { deny 10.1.2.3/8; return 200; } }")
    p = subprocess.run([JWTGATE, "check", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "low address bits of 10.1.2.3/8 are meaningless" in p.stderr, p.stderr
