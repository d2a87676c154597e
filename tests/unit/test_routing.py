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


# -- locations: nesting, ^~, auto-redirect, named ----------------------------------------

from inproc import plan_of as _plan, serve  # noqa: E402

from jwtgate.conf.compiler import ConfigErrors  # noqa: E402
from jwtgate.errors import ConfigError  # noqa: E402

NESTED = """
server {
    listen 127.0.0.1:8080;
    location / { return 200 root; }
    location /api/ {
        location /api/v1/ { return 200 v1-prefix; }
        location ^~ /api/static/ { return 200 static; }
        location ~ ^/api/v(\\d+)/users/(\\d+)$ { return 200 "user $1 $2"; }
        location = /api/exact { return 200 nested-exact; }
        return 200 api;
    }
    location ~ \\.json$ { return 200 json; }
    location ~ ^/re/ {
        location ~ /deep$ { return 200 "regex in regex"; }
        return 200 "outer regex";
    }
    location ^~ /files/ {
        location ~ \\.txt$ { return 200 "txt in files"; }
        return 200 files;
    }
    location @fallback { return 200 named; }
}
"""


@pytest.mark.parametrize("uri, body", [
    ("/", "root"),
    ("/api/", "api"),
    ("/api/x", "api"),
    ("/api/v1/x", "v1-prefix"),
    # a nested prefix does not stop the outer regexes (ngx_http_core_find_location)
    ("/api/v1/x.json", "json"),
    # a nested ^~ stops the regexes of its own level only; the outer ones still run
    ("/api/static/a.json", "json"),
    ("/api/static/a", "static"),
    # nested regexes are tried before the outer ones
    ("/api/v2/users/42", "user 2 42"),
    ("/api/exact", "nested-exact"),
    ("/re/a", "outer regex"),
    ("/re/a/deep", "regex in regex"),
    # ^~ stops the outer regexes but not its own nested ones
    ("/files/a.json", "files"),
    ("/files/a.txt", "txt in files"),
    # a named location is never chosen for a request URI
    ("/@fallback", "root"),
    ("@fallback", "root"),
])
def test_nested_location_selection(tmp_path, uri, body):
    plan = _plan(tmp_path, NESTED)
    if not uri.startswith("/"):
        # such a target never passes the HTTP layer; the matcher alone must not match it either
        assert plan.servers[0].locations.match(uri) is None
        return
    assert serve(plan, uri).text == body


def test_named_locations_are_kept_but_never_matched(tmp_path):
    plan = _plan(tmp_path, NESTED)
    matcher = plan.servers[0].locations
    assert "@fallback" in matcher.named
    assert all(loc.match.kind != "@" for loc in matcher.prefixes + matcher.regexes)
    assert repr(matcher.named["@fallback"]).startswith("<location @fallback ")


AUTO = """
upstream api { server 127.0.0.1:9; }
server {
    listen 127.0.0.1:8080;
    location / { return 200 root; }
    location /products/ { proxy_pass http://api; }
    location = /exact/ { proxy_pass http://api; }
    location /plain/ { return 200 plain; }
    location /both/ { proxy_pass http://api; }
    location /both { return 200 "both without slash"; }
    location ~ ^/products$ { return 200 regex; }
}
"""


@pytest.mark.parametrize("target, status, location", [
    # NGINX's auto_redirect: a prefix location with proxy_pass, requested without its slash
    ("/products", 301, "http://gw.example:8080/products/"),
    ("/products?a=1&b", 301, "http://gw.example:8080/products/?a=1&b"),
    ("/exact", 301, "http://gw.example:8080/exact/"),
    # not for locations without proxy_pass, nor when a location has the name without slash
    ("/plain", 200, None),
    ("/both", 200, None),
])
def test_auto_redirect(tmp_path, target, status, location):
    plan = _plan(tmp_path, AUTO)
    answer = serve(plan, target, {"Host": "GW.example:8080"})
    assert answer.status == status
    assert answer.header("Location") == location
    if status == 301:
        # NGINX's page; and the redirect wins over the regex "^/products$", since it is
        # decided in the static tree, before any regex is tried
        assert b"301 Moved Permanently" in answer.body


def test_auto_redirect_port_and_host(tmp_path):
    plan = _plan(tmp_path, AUTO)
    assert serve(plan, "/products", {"Host": "a.example"}, local=("127.0.0.1", 80)).header(
        "Location") == "http://a.example/products/"
    # HTTP/1.0 without Host: the local address
    answer = serve(plan, "/products", {}, version="1.0", local=("127.0.0.1", 8080))
    assert answer.header("Location") == "http://127.0.0.1:8080/products/"


@pytest.mark.parametrize("body, message, line", [
    ("location /a { }\n location /a { }", 'duplicate location "/a"', 4),
    ("location /a { }\n location ^~ /a { }", 'duplicate location "/a"', 4),
    ("location = /a { }\n location = /a { }", 'duplicate location "/a"', 4),
    ("location @x { }\n location @x { }", 'duplicate location "@x"', 4),
    ("location /a/ {\n location /b/ { } }", 'location "/b/" is outside location "/a/"', 4),
    ("location ~ ^/a {\n location /a/b { } }", 'location "/a/b" is outside location "^/a"', 4),
    ("location = /a {\n location /a { } }", 'location "/a" cannot be inside the exact location "/a"', 4),
    ("location @x {\n location /a { } }", 'location "/a" cannot be inside the named location "@x"', 4),
    ("location /a {\n location @x { } }", 'named location "@x" can be on the server level only', 4),
    ("location ~ ( { }", 'pcre2_compile() failed', 3),
    ("location !! /a { }", 'invalid location modifier "!!"', 3),
])
def test_location_errors(tmp_path, body, message, line):
    text = f"server {{\n listen 127.0.0.1:8080;\n {body}\n}}\n"
    with pytest.raises(ConfigError) as info:
        _plan(tmp_path, text)
    err = info.value.errors[0] if isinstance(info.value, ConfigErrors) else info.value
    assert err.message.startswith(message), err.message
    assert err.line == line


def test_same_name_in_different_kinds_is_no_duplicate(tmp_path):
    plan = _plan(tmp_path, "server { listen 127.0.0.1:8080; location = /a { return 200 exact; }"
                           " location /a { return 200 prefix; } location ~ /a { return 200 re; }"
                           " location ~ /a { return 200 re2; } }")
    assert serve(plan, "/a").text == "exact"
    assert serve(plan, "/ab").text == "re"  # regexes beat a plain prefix, in configuration order


def test_regex_named_captures_are_variables(tmp_path):
    plan = _plan(tmp_path, "server { listen 127.0.0.1:8080;"
                           r" location ~ ^/users/(?<user>\w+)/(?P<n>\d+)$ { return 200 '$user $n $1 $2 $3'; }"
                           " location / { return 200 '[$user]'; } }")
    assert serve(plan, "/users/bob/7").text == "bob 7 bob 7 "
    assert serve(plan, "/other").text == "[]"


def test_captures_case_insensitive_regex(tmp_path):
    plan = _plan(tmp_path, r"server { listen 127.0.0.1:8080; location ~* \.(PNG|jpg)$ { return 200 $1; } }")
    assert serve(plan, "/a/B.png").text == "png"
    assert serve(plan, "/a/b.gif").status == 404


def test_uri_is_normalised_before_matching(tmp_path):
    plan = _plan(tmp_path, "server { listen 127.0.0.1:8080; location /admin/ { return 200 admin; }"
                           " location /products/ { return 200 products; } }")
    for target in ("/products/../admin/", "/products%2F..%2Fadmin/", "//admin//", "/products/./../admin/",
                   "/%61dmin/"):
        assert serve(plan, target).text == "admin", target
    assert serve(plan, "/products/%2e%2e%2fadmin/").text == "admin"


# -- servers: listen variants, Host, conflicts ---------------------------------------------

def test_listen_variants(tmp_path):
    plan = _plan(tmp_path, """
server { listen 8080; server_name a; return 200 a; }
server { listen *:8081; return 200 b; }
server { listen [::1]:8082; return 200 c; }
server { listen 127.0.0.1:8080; server_name a; return 200 specific; }
server { listen localhost:8083; return 200 d; }
server { listen 127.0.0.2; return 200 e; }
""")
    keys = set(plan.selectors)
    assert {("0.0.0.0", 8080), ("0.0.0.0", 8081), ("::1", 8082), ("127.0.0.1", 8080), ("127.0.0.2", 80)} <= keys
    assert ("127.0.0.1", 8083) in keys or ("::1", 8083) in keys
    # a wildcard and a specific address on one port: only the wildcard is bound
    assert ("0.0.0.0", 8080) in plan.binds and ("127.0.0.1", 8080) not in plan.binds
    # an IPv4 wildcard does not cover IPv6 addresses
    assert ("::1", 8082) in plan.binds
    # the servers of the exact address are chosen first, then the wildcard's
    assert serve(plan, "/", {"Host": "a"}, local=("127.0.0.1", 8080)).text == "specific"
    assert serve(plan, "/", {"Host": "a"}, local=("10.0.0.1", 8080)).text == "a"
    assert serve(plan, "/", local=("::1", 8082)).text == "c"


def test_host_header_port_and_case(tmp_path):
    plan = _plan(tmp_path, SERVERS)
    for host in ("WWW.Example.ORG", "www.example.org:18998", "www.example.org.", "Www.Example.Org.:1"):
        assert serve(plan, "/", {"Host": host}, local=("127.0.0.1", 18998)).text == "exact", host
    # the absolute-form request-target wins over the Host header
    assert serve(plan, "http://mail.example.org/x", {"Host": "example.org"},
                 local=("127.0.0.1", 18998)).text == "head"


def test_wildcards_longest_first_and_dot_names(tmp_path):
    plan = _plan(tmp_path, """
server { listen 127.0.0.1:1; server_name _; return 200 default; }
server { listen 127.0.0.1:1; server_name *.example.org; return 200 short; }
server { listen 127.0.0.1:1; server_name *.mail.example.org; return 200 long; }
server { listen 127.0.0.1:1; server_name .example.com; return 200 dot; }
server { listen 127.0.0.1:1; server_name www.example.*; return 200 tail-short; }
server { listen 127.0.0.1:1; server_name www.example.co.*; return 200 tail-long; }
server { listen 127.0.0.1:1; server_name ~^api\\d+\\.; return 200 regex1; }
server { listen 127.0.0.1:1; server_name ~^api; return 200 regex2; }
""")
    def host(h):
        return serve(plan, "/", {"Host": h}, local=("127.0.0.1", 1)).text
    assert host("a.mail.example.org") == "long"
    assert host("mail.example.org") == "short"
    assert host("example.org") == "default"  # *.example.org does not match the bare name
    assert host("example.com") == "dot" and host("a.b.example.com") == "dot"
    assert host("www.example.co.uk") == "tail-long" and host("www.example.net") == "tail-short"
    assert host("api12.x") == "regex1" and host("apix") == "regex2" and host("API7.X") == "regex1"


def test_server_name_regex_captures(tmp_path):
    # https://nginx.org/en/docs/http/server_names.html#regex_names
    plan = _plan(tmp_path, r"""
server { listen 127.0.0.1:1; server_name ~^(www\.)?(?<domain>.+)$; return 200 "$domain|$2"; }
""")
    assert serve(plan, "/", {"Host": "www.example.com"}, local=("127.0.0.1", 1)).text == "example.com|example.com"


def test_request_without_host_goes_to_the_empty_name(tmp_path):
    plan = _plan(tmp_path, """
server { listen 127.0.0.1:1 default_server; server_name example.org; return 200 default; }
server { listen 127.0.0.1:1; server_name example.net ""; return 200 empty; }
""")
    assert serve(plan, "/", {}, version="1.0", local=("127.0.0.1", 1)).text == "empty"
    assert serve(plan, "/", {"Host": "other"}, local=("127.0.0.1", 1)).text == "default"


def test_server_without_name_has_the_empty_name(tmp_path):
    plan = _plan(tmp_path, "server { listen 127.0.0.1:1; return 200 a; }")
    assert plan.servers[0].names == ("",)


def test_conflicting_server_name_is_a_warning(tmp_path):
    path = tmp_path / "gw.conf"
    plan = _plan(tmp_path, """server { listen 80; server_name a.example; return 200 first; }
server {
    listen 80;
    server_name b.example A.example;
    return 200 second;
}
server { listen 127.0.0.1:81; server_name *.x; return 200 x1; }
server { listen 127.0.0.1:81; server_name *.x; return 200 x2; }
""")
    assert [str(w) for w in plan.warnings] == [
        f'conflicting server name "a.example" on 0.0.0.0:80, ignored in {path}:4',
        f'conflicting server name "*.x" on 127.0.0.1:81, ignored in {path}:8',
    ]
    assert serve(plan, "/", {"Host": "a.example"}, local=("10.0.0.1", 80)).text == "first"
    assert serve(plan, "/", {"Host": "b.example"}, local=("10.0.0.1", 80)).text == "second"


@pytest.mark.parametrize("text, message", [
    ("server { listen 80; listen 80; }", "a duplicate listen 0.0.0.0:80"),
    ("server { listen [::1]:80; listen [::1]:80; }", "a duplicate listen [::1]:80"),
    ("server { listen 80 default_server; } server { listen *:80 default_server; }",
     "a duplicate default server for 0.0.0.0:80"),
    ("server { server_name www.*.example; }", 'server name "www.*.example" is invalid'),
    ("server { server_name ~; }", 'empty regex in server name "~"'),
    ("server { listen 80 ssl; }", 'no "ssl_certificate" is defined for the "listen ... ssl" directive'),
    ("server { listen 80 http2; }", 'the "http2" parameter of the "listen" directive is not supported yet'),
    ("server { listen 99999; }", 'invalid port in "99999" of the "listen" directive'),
    ("server { listen 80 fancy; }", 'invalid parameter "fancy"'),
])
def test_server_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        _plan(tmp_path, text)
    assert info.value.errors[0].message == message


def test_two_servers_without_names_conflict_on_the_empty_name(tmp_path):
    # nginx -t: [warn] conflicting server name "" on 0.0.0.0:8000, ignored
    plan = _plan(tmp_path, "server {\n listen 8000;\n}\nserver {\n listen 8000;\n}\n")
    assert [w.message for w in plan.warnings] == ['conflicting server name "" on 0.0.0.0:8000, ignored']
    assert plan.warnings[0].line == 4
