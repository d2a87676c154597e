"""Compiling configurations: NGINX's error messages with file:line, and inheritance rules."""

import json

import pytest

from jwtgate.conf.compiler import ConfigErrors
from jwtgate.conf.plan import compile_plan
from jwtgate.errors import ConfigError

JWK = {"keys": [{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]}


@pytest.fixture
def write(tmp_path):
    (tmp_path / "api_secret.jwk").write_text(json.dumps(JWK))

    def write(text: str) -> str:
        path = tmp_path / "gw.conf"
        path.write_text(text)
        return str(path)
    return write


def errors_of(path: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        compile_plan(path)
    errs = getattr(e.value, "errors", [e.value])
    return [str(x) for x in errs]


BASE = """upstream api_server {{ server 127.0.0.1:9; }}
server {{
    listen 127.0.0.1:18997;
    location /products/ {{
        auth_jwt "Products API";
        auth_jwt_key_file api_secret.jwk;
        {extra}
        proxy_pass http://api_server;
    }}
}}
"""


def test_reference_config_compiles(write):
    plan = compile_plan(write(BASE.format(extra="")))
    assert plan.binds == [("127.0.0.1", 18997)]


@pytest.mark.parametrize("extra, message, line", [
    ("proxy_passs http://x;", 'unknown directive "proxy_passs"', 7),
    ("listen 80;", '"listen" directive is not allowed here', 7),
    ("proxy_set_header A;", 'invalid number of arguments in "proxy_set_header" directive', 7),
    ("proxy_set_header A $nope;", 'unknown "nope" variable', 7),
    ("auth_jwt_leeway forever;", 'invalid value "forever" in "auth_jwt_leeway" directive', 7),
    ('auth_jwt "again";', '"auth_jwt" directive is duplicate', 7),
    ("limit_req zone=missing;", 'zone "missing" is unknown', 7),
    ("auth_jwt_require 1;", 'invalid value "1" in "auth_jwt_require", it must start with a variable', 7),
    ("location /x { }", 'location "/x" is outside location "/products/"', 7),
    ("location /products/x { }", None, None),
])
def test_errors_are_located(write, extra, message, line):
    path = write(BASE.format(extra=extra))
    if message is None:
        compile_plan(path)
        return
    errs = errors_of(path)
    assert errs[0] == f"{message} in {path}:{line}"


def test_every_error_is_reported(write):
    path = write("server {\n listen 127.0.0.1:1;\n foo;\n location / { bar; return 200 $nope; }\n}\n")
    errs = errors_of(path)
    assert [e.split(" in ")[0] for e in errs] == [
        'unknown directive "foo"', 'unknown directive "bar"', 'unknown "nope" variable']


def test_auth_jwt_without_key_source_is_an_error(write):
    path = write('server { listen 127.0.0.1:18997; location / { auth_jwt "x"; return 200; } }')
    assert "no key source" in errors_of(path)[0]


def test_missing_key_file(write):
    path = write(BASE.format(extra="").replace("api_secret.jwk", "missing.jwk"))
    err = errors_of(path)[0]
    assert "missing.jwk" in err and err.endswith(f"{path}:6")


def test_full_nginx_conf_with_http_block(write):
    text = "worker_processes 1;\nevents { worker_connections 1024; }\nhttp {\n" + BASE.format(extra="") + "}\n"
    plan = compile_plan(write(text))
    assert len(plan.servers) == 1


def test_block_rules(write):
    path = write("server { listen 127.0.0.1:1; location / ; }")
    assert errors_of(path)[0].startswith('directive "location" has no opening "{"')
    path = write("server { listen 127.0.0.1:1; return 200 { } }")
    assert errors_of(path)[0].startswith('directive "return" is not terminated by ";"')


def _head(plan, uri):
    loc, _ = plan.servers[0].locations.match(uri)
    return loc.content.set_headers


def test_proxy_set_header_inherited_only_when_inner_level_has_none(write):
    text = """
server {
    listen 127.0.0.1:18997;
    proxy_set_header X-Outer outer;
    location /a/ { proxy_pass http://127.0.0.1:9; }
    location /b/ { proxy_set_header X-Inner inner; proxy_pass http://127.0.0.1:9; }
}
"""
    plan = compile_plan(write(text))
    a = [n for n, _ in _head(plan, "/a/")]
    b = [n for n, _ in _head(plan, "/b/")]
    assert b"X-Outer" in a and b"X-Inner" not in a
    assert b"X-Inner" in b and b"X-Outer" not in b
    assert b"Host" in a and b"Host" in b  # NGINX's default Host $proxy_host stays


def test_limit_req_phase_follows_jwt_dependency(write):
    text = BASE.format(extra="limit_req zone=bysub; limit_req zone=byaddr; limit_req zone=bymap;")
    text = ("limit_req_zone $jwt_claim_sub zone=bysub:1m rate=1r/s;\n"
            "limit_req_zone $binary_remote_addr zone=byaddr:1m rate=1r/s;\n"
            "map $jwt_claim_iss $issuer { default $jwt_claim_iss; }\n"
            "limit_req_zone $issuer zone=bymap:1m rate=1r/s;\n" + text)
    plan = compile_plan(write(text))
    loc, _ = plan.servers[0].locations.match("/products/x")
    handlers = [h for h in loc.access if type(h).__name__ in ("LimitReqHandler", "AuthJwtHandler")]
    kinds = [type(h).__name__ for h in handlers]
    # byaddr before auth; bysub and the map over $jwt_claim_iss after it.
    assert kinds == ["LimitReqHandler", "AuthJwtHandler", "LimitReqHandler"]
    assert [z.name for z, _ in handlers[0].limits] == ["byaddr"]
    assert sorted(z.name for z, _ in handlers[2].limits) == ["bymap", "bysub"]


def test_map_errors(write):
    path = write("map $uri $b { default 1; default 2; }\nserver { listen 127.0.0.1:1; }")
    assert "duplicate default" in errors_of(path)[0]
    path = write("map $uri $b { x 1; }\nmap $args $b { y 1; }\nserver { listen 127.0.0.1:1; }")
    assert 'duplicate "b" variable' in errors_of(path)[0]


def test_config_errors_type(write):
    with pytest.raises(ConfigErrors):
        compile_plan(write("server { nope; }"))


# -- inheritance of array-like directives, http -> server -> location -> nested location ---

ARRAYS = {
    # directive: (an argument list for the outer level, one for the inner level)
    "proxy_set_header": ("X-Outer outer", "X-Inner inner"),
    "auth_jwt_key_file": ("api_secret.jwk", "other.jwk"),
    "auth_jwt_require": ("$arg_a", "$arg_b"),
    "limit_req": ("zone=a", "zone=b"),
    "access_log": ("outer.log", "inner.log"),
    "add_header": ("X-Outer outer", "X-Inner inner"),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_directives_inherit_all_or_nothing(write, tmp_path, name):
    (tmp_path / "other.jwk").write_text(json.dumps(JWK))
    outer, inner = ARRAYS[name]
    text = f"""
limit_req_zone $binary_remote_addr zone=a:1m rate=1r/s;
limit_req_zone $binary_remote_addr zone=b:1m rate=1r/s;
{name} {outer};
server {{
    listen 127.0.0.1:18997;
    auth_jwt "api";
    auth_jwt_key_file api_secret.jwk;
    location /inherits/ {{
        location /inherits/nested/ {{ return 200; }}
        return 200;
    }}
    location /own/ {{
        {name} {inner};
        location /own/nested/ {{ return 200; }}
        location /own/nested-own/ {{ {name} {outer}; {name} {inner}; return 200; }}
        return 200;
    }}
}}
"""
    plan = compile_plan(write(text))
    levels = {level.location.pattern: level for level in plan.build.locations()}

    def arguments(pattern):
        return [d.args for _, d in _effective(levels[pattern], name)]

    o, i = tuple(outer.split()), tuple(inner.split())
    # (for auth_jwt_key_file the server's own line, with the same file, is the one inherited)
    assert arguments("/inherits/") == arguments("/inherits/nested/") == [o]
    assert arguments("/own/") == arguments("/own/nested/") == [i]
    assert arguments("/own/nested-own/") == [o, i]


def _effective(level, name):
    """The (value, directive) pairs a level uses for array-like ``name`` (Level.get_all's rule)."""
    group = level.build.spec_group(name)
    while level is not None:
        if group in level.groups:
            return level.values.get(name, [])
        level = level.parent
    return []


def test_get_all_follows_the_rule(write):
    plan = compile_plan(write("proxy_set_header A 1;\nproxy_set_header B 2;\nserver { listen 127.0.0.1:1;"
                              " location / { location /x { proxy_set_header C 3; } } }"))
    by = {level.location.pattern: level for level in plan.build.locations()}
    assert [n for n, _ in by["/"].get_all("proxy_set_header")] == ["A", "B"]
    assert [n for n, _ in by["/x"].get_all("proxy_set_header")] == ["C"]


def test_value_directives_inherit_from_the_nearest_level(write):
    plan = compile_plan(write("keepalive_timeout 10s;\nserver { listen 127.0.0.1:1; client_max_body_size 5k;"
                              " location / { location /x { client_max_body_size 7k; } } }"))
    by = {level.location.pattern: level for level in plan.build.locations()}
    assert by["/"].get("client_max_body_size") == 5 * 1024
    assert by["/x"].get("client_max_body_size") == 7 * 1024
    assert by["/x"].get("keepalive_timeout") == 10.0


# -- property: any configuration compiles or raises ConfigError, never anything else ------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from jwtgate.conf.parser import render  # noqa: E402
from jwtgate.conf.tree import Directive  # noqa: E402

_NAMES = ["server", "location", "listen", "server_name", "return", "set", "map", "add_header", "proxy_pass",
          "proxy_set_header", "auth_jwt", "auth_jwt_key_file", "auth_jwt_require", "limit_req",
          "limit_req_zone", "access_log", "log_format", "upstream", "default", "hostnames", "volatile",
          "keepalive_timeout", "client_max_body_size", "error_log", "events", "http", "include", "nope"]
_ARGS = ["/", "/a/", "/a/b", "~", "~*", "=", "^~", "@x", "^/a(\\d+)$", "(?<n>x)", "$uri", "$x", "$1", "$n",
         "$jwt_claim_sub", "200", "301", "444", "80", "127.0.0.1:1", "[::1]:2", "default_server", "*.a",
         "~^a", "a.*", "", "on", "off", "1m", "10s", "zone=z:1m", "zone=z", "rate=1r/s",
         "http://127.0.0.1:9", "http://up", "X-A", "always", "api_secret.jwk", "missing.jwk", "a b", ";"]

_leaves = st.builds(lambda n, a: Directive(n, tuple(a), "p", 1), st.sampled_from(_NAMES),
                    st.lists(st.sampled_from(_ARGS), max_size=3))
_trees = st.lists(st.recursive(
    _leaves,
    lambda inner: st.builds(lambda n, a, b: Directive(n, tuple(a), "p", 1, tuple(b)), st.sampled_from(_NAMES),
                            st.lists(st.sampled_from(_ARGS), max_size=2), st.lists(inner, max_size=4)),
    max_leaves=25), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(_trees)
def test_any_configuration_compiles_or_raises_config_error(write, tree):
    path = write(render(tree))
    try:
        plan = compile_plan(path)
    except ConfigError as e:
        for err in getattr(e, "errors", [e]):
            assert err.message and (err.file is None or err.line is None or err.line >= 1)
        return
    assert plan.servers
