"""Variables: the registry (load-time resolution, per-request cache), NGINX's core variables
served in process, and complex values."""

from __future__ import annotations

import base64
import re
import time
from types import SimpleNamespace

import pytest
from inproc import evaluate, plan_of, serve

from jwtgate.errors import ConfigError
from jwtgate.vars.complex import compile_complex
from jwtgate.vars.registry import VariableRegistry, cached

# -- the registry -------------------------------------------------------------------------


def _ctx(**kw):
    base = {"var_cache": None, "jwt": None, "captures": (), "capture_names": None}
    base.update(kw)
    ns = SimpleNamespace(**base)
    ns.capture = lambda i: (ns.captures[i - 1] or "") if 0 < i <= len(ns.captures) else ""
    return ns


def test_names_resolve_case_insensitively_and_unknown_is_none():
    reg = VariableRegistry()
    reg.add("Remote_Addr", lambda ctx: "1.2.3.4", "core")
    reg.add_prefix("http_", lambda s: (lambda ctx: s), "core")
    assert reg.resolve("REMOTE_ADDR")(None) == "1.2.3.4"
    assert reg.resolve("http_X_Y")(None) == "X_Y"
    assert reg.resolve("http_") is None and reg.resolve("nope") is None
    assert reg.owner("http_a") == "core" and reg.owner("nope") is None
    with pytest.raises(ValueError):
        reg.add("remote_addr", lambda ctx: "", "map")


def test_longest_prefix_wins():
    reg = VariableRegistry()
    reg.add_prefix("jwt_", lambda s: (lambda ctx: "short"), "a")
    reg.add_prefix("jwt_claim_", lambda s: (lambda ctx: "long:" + s), "b")
    assert reg.resolve("jwt_claim_sub")(None) == "long:sub"
    assert reg.resolve("jwt_header_alg")(None) == "short"


def test_cached_variable_is_computed_once_per_request():
    calls = []
    reg = VariableRegistry()
    reg.add("costly", lambda ctx: calls.append(1) or f"v{len(calls)}", "m", cacheable=True)
    reg.add("cheap", lambda ctx: calls.append(1) or "c", "m")
    get = reg.resolve("costly")
    ctx = _ctx()
    assert get(ctx) == "v1" and get(ctx) == "v1" and reg.resolve("COSTLY")(ctx) == "v1"
    assert len(calls) == 1
    assert get(_ctx()) == "v2"  # another request
    reg.resolve("cheap")(ctx)
    reg.resolve("cheap")(ctx)
    assert len(calls) == 4


def test_cached_value_is_recomputed_after_authentication():
    claims = {}
    get = cached(lambda ctx: claims.get("sub", ""), "m")
    ctx = _ctx()
    assert get(ctx) == ""
    claims["sub"] = "alice"
    ctx.jwt = object()  # the access phase verified a token
    assert get(ctx) == "alice"
    claims["sub"] = "mallory"
    assert get(ctx) == "alice"  # cached again, under the verified token


def test_no_cache_dict_until_a_cached_variable_is_read():
    reg = VariableRegistry()
    reg.add("plain", lambda ctx: "p", "m")
    ctx = _ctx()
    reg.resolve("plain")(ctx)
    assert ctx.var_cache is None


def test_capture_variables():
    reg = VariableRegistry()
    reg.add_capture("user")
    reg.add_capture("user")  # several regexes may name a group alike
    reg.add("host", lambda ctx: "h", "core")
    with pytest.raises(ValueError):
        reg.add_capture("host")
    m = re.search(r"(?P<user>\w+)@(\w+)", "bob@example")
    ctx = _ctx(captures=m.groups(), capture_names=m.re.groupindex)
    assert reg.resolve("user")(ctx) == "bob"
    assert reg.resolve("2")(ctx) == "example" and reg.resolve("3")(ctx) == ""
    assert reg.resolve("user")(_ctx()) == ""


def test_complex_value_compiles_into_one_function():
    reg = VariableRegistry()
    reg.add("a", lambda ctx: "A", "m")
    reg.add("b", lambda ctx: "B", "m")
    value = compile_complex("${a}x:$b-$a", reg)
    assert value(None) == "Ax:B-A" and value.variables == ("a", "b", "a")
    assert compile_complex("plain", reg).constant == "plain"
    assert compile_complex("$a", reg).evaluate is reg.resolve("a")
    with pytest.raises(ConfigError, match='unknown "nope" variable'):
        compile_complex("$nope", reg, "f", 3)
    with pytest.raises(ConfigError, match="invalid variable name"):
        compile_complex("cost: 5$", reg, "f", 3)


# -- core variables, served ----------------------------------------------------------------

CORE = """
server {
    listen 127.0.0.1:8080;
    server_name gw.example alias.example;
    location / {
        return 200 "$request_method|$uri|$document_uri|$args|$query_string|$is_args|$request_uri|$request|$server_protocol|$scheme|$https|$host|$server_name|$server_addr|$server_port|$remote_addr|$remote_port|$connection|$connection_requests|$arg_x|$arg_Y|$cookie_session|$http_user_agent|$http_x_custom|$content_type|$content_length|$remote_user|$status";
    }
}
"""


def test_core_variables_in_return_text(tmp_path):
    plan = plan_of(tmp_path, CORE)
    auth = "Basic " + base64.b64encode(b"alice:secret").decode()
    answer = serve(plan, "/a/%62/../c?x=1&y=2&x=3", [
        ("Host", "GW.Example:8080"), ("User-Agent", "ua/1"), ("X-Custom", "c"),
        ("Cookie", "a=1; Session=s1"), ("Cookie", "session=s2"), ("Content-Type", "text/x"),
        ("Authorization", auth)], method="POST")
    values = answer.text.split("|")
    assert values == [
        "POST", "/a/c", "/a/c", "x=1&y=2&x=3", "x=1&y=2&x=3", "?", "/a/%62/../c?x=1&y=2&x=3",
        "POST /a/%62/../c?x=1&y=2&x=3 HTTP/1.1", "HTTP/1.1", "http", "", "gw.example", "gw.example",
        "127.0.0.1", "8080", "192.0.2.7", "40000", "1", "1", "1", "2", "s1", "ua/1", "c", "text/x", "",
        "alice", "000",
    ]


def test_host_falls_back_to_server_name_and_args_absent(tmp_path):
    plan = plan_of(tmp_path, CORE.replace('"$request_method', '"$host|$is_args|$args|$arg_x|$request_method'))
    answer = serve(plan, "/", {}, version="1.0")
    assert answer.text.startswith("gw.example||||GET")


def test_variables_after_the_response(tmp_path):
    plan = plan_of(tmp_path, CORE)
    answer = serve(plan, "/x?y", {"Host": "gw.example"})
    ctx = answer.ctx
    assert evaluate(plan, "$status", ctx) == "200"
    assert evaluate(plan, "$body_bytes_sent", ctx) == str(len(answer.body))
    assert int(evaluate(plan, "$bytes_sent", ctx)) > len(answer.body)
    assert evaluate(plan, "$sent_http_content_type", ctx) == "text/plain"
    assert evaluate(plan, "$sent_http_content_length", ctx) == str(len(answer.body))
    assert evaluate(plan, "$sent_http_x_nope", ctx) == ""
    # request line + Host + final CRLF: "GET /x?y HTTP/1.1\r\n" "Host: gw.example\r\n" "\r\n"
    assert evaluate(plan, "$request_length", ctx) == str(19 + 18 + 2)
    assert re.fullmatch(r"\d+\.\d{3}", evaluate(plan, "$request_time", ctx))
    assert abs(float(evaluate(plan, "$msec", ctx)) - time.time()) < 5
    rid = evaluate(plan, "$request_id", ctx)
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and evaluate(plan, "$request_id", ctx) == rid
    assert re.fullmatch(r"\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", evaluate(plan, "$time_local", ctx))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", evaluate(plan, "$time_iso8601", ctx))
    assert evaluate(plan, "$binary_remote_addr", ctx) == "\xc0\x00\x02\x07"
    assert evaluate(plan, "$pid", ctx).isdigit() and evaluate(plan, "$hostname", ctx)
    assert evaluate(plan, "$upstream_addr$upstream_status$upstream_response_time$upstream_connect_time"
                          "$upstream_header_time", ctx) == ""


def test_every_documented_core_variable_is_declared(tmp_path):
    plan = plan_of(tmp_path, CORE)
    reg = plan.build.variables
    for name in ("args", "arg_a", "binary_remote_addr", "body_bytes_sent", "bytes_sent", "connection",
                 "connection_requests", "content_length", "content_type", "cookie_a", "document_uri",
                 "host", "hostname", "http_a", "https", "is_args", "msec", "pid", "query_string",
                 "remote_addr", "remote_port", "remote_user", "request", "request_id", "request_length",
                 "request_method", "request_time", "request_uri", "scheme", "sent_http_a", "server_addr",
                 "server_name", "server_port", "server_protocol", "status", "time_iso8601", "time_local",
                 "uri", "upstream_addr", "upstream_status", "upstream_response_time",
                 "upstream_connect_time", "upstream_header_time", "jwt_claim_sub", "jwt_header_alg",
                 "jwt_payload", "limit_req_status"):
        assert name in reg, name


def test_unknown_variable_is_a_located_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        plan_of(tmp_path, "server {\n listen 127.0.0.1:1;\n return 200 $nope;\n}")
    assert str(info.value.errors[0]) == f'unknown "nope" variable in {tmp_path / "gw.conf"}:3'
