"""Server and location selection, against the NGINX documentation's own examples."""

import pytest

from jwtgate.conf.plan import compile_plan


def plan_of(tmp_path, text):
    path = tmp_path / "gw.conf"
    path.write_text(text)
    return compile_plan(str(path))


LOCATIONS = """
server {
    listen 127.0.0.1:18999;
    location = / { return 200 A; }
    location / { return 200 B; }
    location /documents/ { return 200 C; }
    location ^~ /images/ { return 200 D; }
    location ~* \\.(gif|jpg|jpeg)$ { return 200 E; }
    location /api/ {
        location ~ ^/api/v(\\d+)/ { return 200 F; }
        return 200 G;
    }
    location ~ ^/users/(\\w+)/(\\d+)$ { return 200 H; }
}
"""


@pytest.mark.parametrize("uri, pattern", [
    # https://nginx.org/en/docs/http/ngx_http_core_module.html#location
    ("/", "/"),
    ("/index.html", "/"),
    ("/documents/document.html", "/documents/"),
    ("/images/1.gif", "/images/"),
    ("/documents/1.jpg", "\\.(gif|jpg|jpeg)$"),
    ("/api/v2/x", "^/api/v(\\d+)/"),
    ("/api/other", "/api/"),
])
def test_location_selection(tmp_path, uri, pattern):
    plan = plan_of(tmp_path, LOCATIONS)
    loc, _ = plan.servers[0].locations.match(uri)
    assert loc.match.pattern == pattern


def test_exact_beats_prefix_and_kind(tmp_path):
    plan = plan_of(tmp_path, LOCATIONS)
    loc, _ = plan.servers[0].locations.match("/")
    assert loc.match.kind == "="


def test_regex_captures(tmp_path):
    plan = plan_of(tmp_path, LOCATIONS)
    loc, captures = plan.servers[0].locations.match("/users/bob/42")
    assert captures == ("bob", "42")


SERVERS = """
server { listen 127.0.0.1:18998; server_name default.example; return 200 default; }
server { listen 127.0.0.1:18998; server_name example.org www.example.org; return 200 exact; }
server { listen 127.0.0.1:18998; server_name *.example.org; return 200 head; }
server { listen 127.0.0.1:18998; server_name mail.*; return 200 tail; }
server { listen 127.0.0.1:18998; server_name ~^(?<user>.+)\\.example\\.net$; return 200 regex; }
server { listen 127.0.0.1:18998 default_server; server_name _; return 200 marked; }
"""


@pytest.mark.parametrize("host, name", [
    # https://nginx.org/en/docs/http/server_names.html: exact, longest leading wildcard,
    # longest trailing wildcard, first regex, else the default server.
    ("www.example.org", "example.org"),
    ("example.org", "example.org"),
    ("mail.example.org", "*.example.org"),
    ("mail.example.com", "mail.*"),
    ("joe.example.net", "~^(?<user>.+)\\.example\\.net$"),
    ("unknown.test", "_"),
    ("", "_"),
])
def test_server_selection(tmp_path, host, name):
    plan = plan_of(tmp_path, SERVERS)
    server = plan.select_server("127.0.0.1", 18998, host)
    assert name in server.names


def test_first_server_is_default_without_default_server(tmp_path):
    plan = plan_of(tmp_path, SERVERS.replace(" default_server", ""))
    assert plan.select_server("127.0.0.1", 18998, "nope").primary_name == "default.example"
