"""Routing with a real gateway on 127.0.0.1: ``listen``, ``server_name`` by ``Host``, the
location kinds, NGINX's auto-redirect, named locations and URI normalisation."""

from __future__ import annotations


from jwtgate_e2e import curl, fetch, free_port, raw, request

ROUTING = r"""
upstream api_server { server 127.0.0.1:{upstream_port}; }

server {
    listen 127.0.0.1:{port};
    server_name api.example.com;

    location = / { return 200 "exact root"; }
    location / { return 200 "prefix root"; }
    location /products/ { proxy_pass http://api_server; }
    location ^~ /static/ { return 200 "static"; }
    location ~* \.(png|jpg)$ { return 200 "image $1"; }
    location /admin/ {
        location ~ ^/admin/users/(?<id>\d+)$ { return 200 "user $id"; }
        return 403;
    }
    location @internal { return 200 "named"; }
}

server {
    listen 127.0.0.1:{port};
    server_name *.example.com;
    return 200 "wildcard $host";
}

server {
    listen 127.0.0.1:{port};
    server_name www.example.*;
    return 200 "tail wildcard";
}

server {
    listen 127.0.0.1:{port};
    server_name ~^(?<tenant>[a-z]+)\.tenants\.test$;
    return 200 "tenant $tenant";
}

server {
    listen 127.0.0.1:{port} default_server;
    server_name _;
    return 404 "no such site";
}
"""


def get(port: int, path: str, host: str = "api.example.com"):
    return fetch(port, path, host)



def test_server_selection_by_host(gateway, upstream):
    gw = gateway(ROUTING)
    assert get(gw.port, "/").body == b"exact root"
    assert get(gw.port, "/", "API.Example.COM:8080").body == b"exact root"  # port and case ignored
    assert get(gw.port, "/", "shop.example.com").body == b"wildcard shop.example.com"
    assert get(gw.port, "/", "www.example.org").body == b"tail wildcard"
    assert get(gw.port, "/", "acme.tenants.test").body == b"tenant acme"
    r = get(gw.port, "/", "unknown.test")
    assert (r.status, r.body) == (404, b"no such site")
    # the host of an absolute request-target wins over the Host header
    reply = raw(gw.port, b"GET http://shop.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n"
                         b"Connection: close\r\n\r\n")
    assert reply.endswith(b"wildcard shop.example.com")
    # curl, with the name resolved to the gateway
    r = curl(f"http://www.example.net:{gw.port}/", "--resolve", f"www.example.net:{gw.port}:127.0.0.1")
    assert r.body == b"tail wildcard"


def test_location_kinds(gateway, upstream):
    gw = gateway(ROUTING)
    assert get(gw.port, "/index.html").body == b"prefix root"
    assert get(gw.port, "/static/a.png").body == b"static"  # ^~ stops the regex search
    assert get(gw.port, "/docs/a.PNG").body == b"image PNG"
    assert get(gw.port, "/admin/users/42").body == b"user 42"  # nested regex, named capture
    assert get(gw.port, "/admin/other").status == 403
    assert get(gw.port, "/@internal").body == b"prefix root"  # named locations are internal
    r = get(gw.port, "/products/widget1?x=1")
    assert r.status == 200 and r.json()["path"] == "/products/widget1?x=1"


def test_auto_redirect_to_the_proxied_prefix(gateway, upstream):
    gw = gateway(ROUTING)
    r = curl(f"{gw.url}/products?page=2", "-H", "Host: api.example.com")
    assert r.status == 301
    assert r.header("Location") == f"http://api.example.com:{gw.port}/products/?page=2"
    assert upstream.requests == []
    r = curl(f"{gw.url}/products", "-L", "-H", "Host: api.example.com", "--resolve",
             f"api.example.com:{gw.port}:127.0.0.1")
    assert r.status == 200 and upstream.last.path == "/products/"


def test_uri_normalisation_cannot_reach_another_location(gateway, upstream):
    gw = gateway(ROUTING)
    for path in ("/products/../admin/x", "/products/%2e%2e/admin/x", "/products%2F..%2Fadmin/x",
                 "//admin//x"):
        r = curl(f"{gw.url}{path}", "--path-as-is", "-H", "Host: api.example.com")
        assert r.status == 403, path  # /admin/, never /products/
    assert upstream.requests == []
    r = curl(f"{gw.url}/../etc/passwd", "--path-as-is", "-H", "Host: api.example.com")
    assert r.status == 400
    r = curl(f"{gw.url}/products/a/./b/../c", "--path-as-is", "-H", "Host: api.example.com")
    assert r.status == 200 and upstream.last.path == "/products/a/./b/../c"  # passed on as sent


def test_listen_variants(gateway, upstream):
    port2 = free_port()
    gw = gateway("""
server { listen {port}; server_name wild; return 200 "wildcard address"; }
server { listen 127.0.0.1:{port}; server_name exact; return 200 "exact address"; }
server { listen *:{port2} default_server; return 200 "second port"; }
""", port2=port2)
    # servers on the exact local address are chosen before those on the wildcard
    assert get(gw.port, "/", "wild").body == b"exact address"
    assert get(gw.port, "/", "exact").body == b"exact address"
    assert request(port2, "GET", "/").body == b"second port"


SERVER_LEVEL = r"""
upstream api_server { server 127.0.0.1:{upstream_port}; }

server {
    listen 127.0.0.1:{port};
    auth_jwt "site";
    auth_jwt_key_file {keys};
    root {site};
    add_header X-Server-Level yes always;

    location /products/ { proxy_pass http://api_server; }
}
"""


def test_request_matching_no_location_runs_the_server_level(gateway, upstream, tmp_path):
    """NGINX serves a request that matches no location with the server level's settings:
    its auth_jwt answers 401 (not a bare 404), its root serves files."""
    from jwtgate_e2e import bearer, mint_hs, now

    site = tmp_path / "site"
    site.mkdir()
    (site / "openapi.json").write_text('{"openapi": "3.1.0"}')
    gw = gateway(SERVER_LEVEL.replace("{site}", str(site)))
    r = request(gw.port, "GET", "/openapi.json")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Bearer realm="site"'
    assert r.header("X-Server-Level") == "yes"
    good = bearer(mint_hs({"sub": "alice", "exp": now() + 60}))
    r = request(gw.port, "GET", "/openapi.json", headers=good)
    assert r.status == 200 and r.body == b'{"openapi": "3.1.0"}'
    assert request(gw.port, "GET", "/nothing-here", headers=good).status == 404
    assert request(gw.port, "GET", "/nothing-here").status == 401
    # the location still works as before
    assert request(gw.port, "GET", "/products/1", headers=good).status == 200
    assert request(gw.port, "GET", "/products/1").status == 401
    assert len(upstream.requests) == 1
