"""``map`` as ngx_http_map_module: precedence, regex captures, hostnames, escapes, include,
lazy evaluation and per-request caching (``volatile``)."""

from __future__ import annotations

import pytest
from inproc import evaluate, plan_of, serve

from jwtgate.errors import ConfigError


def answer(tmp_path, maps: str, value: str, target: str = "/", headers=None) -> str:
    text = f"{maps}\nserver {{ listen 127.0.0.1:8080; location / {{ return 200 \"{value}\"; }} }}\n"
    return serve(plan_of(tmp_path, text), target, headers).text


PRECEDENCE = r"""
map $arg_k $out {
    default          dflt;
    Exact            exact;
    ~^ex             regex-first;
    ~*^EXA           regex-second;
    ~^(\w+)-(\d+)$   "cap $2 $1";
    ~^(?<word>[a-z]+)\.(?<num>\d+)$ "named $word/$num";
    \default         escaped-default;
    \~tilde          escaped-tilde;
}
"""


@pytest.mark.parametrize("key, out", [
    ("exact", "exact"),        # exact keys first, case-insensitive
    ("EXACT", "exact"),
    ("exa", "regex-first"),    # then regexes in configuration order
    ("EXAx", "regex-second"),  # ~* ignores case
    ("abc-42", "cap 42 abc"),  # captures usable in the value
    ("ab.7", "named ab/7"),    # named captures are variables in the value
    ("default", "escaped-default"),
    ("~tilde", "escaped-tilde"),
    ("", "dflt"),
    ("zzz", "dflt"),
])
def test_precedence(tmp_path, key, out):
    assert answer(tmp_path, PRECEDENCE, "$out", f"/?k={key}") == out


def test_no_default_is_empty_and_map_captures_do_not_leak(tmp_path):
    text = r"""
map $uri $m { ~^/(\w+)/ "m:$1"; }
server { listen 127.0.0.1:8080; location ~ ^/(\w+)/(\w+)$ { return 200 "$m $1 $2 [$nomatch]"; } }
map $arg_none $nomatch { x y; }
"""
    assert serve(plan_of(tmp_path, text), "/a/b").text == "m:a a b []"


HOSTNAMES = """
map $http_host $site {
    hostnames;
    default              other;
    example.com          exact;
    *.example.com        head;
    *.api.example.com    longer-head;
    .example.org         dot;
    www.example.*        tail;
    ~^(\\w+)\\.test$      "regex $1";
}
"""


@pytest.mark.parametrize("host, site", [
    ("example.com", "exact"),
    ("Example.COM.", "exact"),  # one trailing dot is ignored with hostnames
    ("a.example.com", "head"),
    ("x.api.example.com", "longer-head"),
    ("example.org", "dot"),
    ("deep.sub.example.org", "dot"),
    ("www.example.net", "tail"),
    ("foo.test", "regex foo"),
    ("nothing", "other"),
])
def test_hostnames(tmp_path, host, site):
    assert answer(tmp_path, HOSTNAMES, "$site", "/", {"Host": host}) == site


def test_wildcards_without_hostnames_are_plain_keys(tmp_path):
    maps = "map $arg_h $v { *.example.com star; default no; }"
    assert answer(tmp_path, maps, "$v", "/?h=*.example.com") == "star"
    assert answer(tmp_path, maps, "$v", "/?h=a.example.com") == "no"


def test_values_with_variables_and_map_of_map(tmp_path):
    maps = """
map $arg_a $first { default "a=$arg_a"; }
map $first $second { "a=1" "one via $first"; default "other"; }
"""
    assert answer(tmp_path, maps, "$second", "/?a=1") == "one via a=1"
    assert answer(tmp_path, maps, "$second", "/?a=2") == "other"


def test_include_inside_a_map_block(tmp_path):
    (tmp_path / "keys.map").write_text("alpha 1;\nbeta  2;\n")
    maps = "map $arg_k $n {\n    default 0;\n    include keys.map;\n}"
    assert answer(tmp_path, maps, "$n", "/?k=beta") == "2"
    assert answer(tmp_path, maps, "$n", "/?k=gamma") == "0"


def test_map_is_evaluated_lazily_and_cached_unless_volatile(tmp_path):
    text = """
map $arg_k $cached { default "$request_id"; }
map $arg_k $fresh { volatile; default "$msec"; }
map $request_id $unused { default x; }
server { listen 127.0.0.1:8080; location / { return 200 "$arg_k"; } }
"""
    plan = plan_of(tmp_path, text)
    ctx = serve(plan, "/?k=1").ctx
    # nothing read $unused (or $cached), so its source $request_id was never computed
    assert ctx.request_id == "" and ctx.var_cache == {"arg_k": (None, "1")}
    first = evaluate(plan, "$cached", ctx)
    assert first and ctx.var_cache["cached"] == (None, first)
    ctx.request_id = "changed"
    assert evaluate(plan, "$cached", ctx) == first  # cached for the request
    evaluate(plan, "$fresh", ctx)
    assert "fresh" not in ctx.var_cache  # volatile: computed on every read


def test_map_over_a_claim_is_recomputed_after_authentication(tmp_path):
    plan = plan_of(tmp_path, """
map $jwt_claim_sub $who { "" anonymous; default "user $jwt_claim_sub"; }
server { listen 127.0.0.1:8080; location / { return 200 x; } }
""")
    ctx = serve(plan, "/").ctx
    assert evaluate(plan, "$who", ctx) == "anonymous"  # read before authentication
    ctx.jwt = type("Verified", (), {"claims": {"sub": "alice"}, "header": {}})()
    assert evaluate(plan, "$who", ctx) == "user alice"


@pytest.mark.parametrize("block, message, line", [
    ("default 1; default 2;", "duplicate default map parameter", 2),
    ("a 1; A 2;", 'conflicting parameter "A"', 2),
    ("hostnames; *.a 1; *.a 2;", 'conflicting parameter "*.a"', 2),
    ("hostnames; a.*.b 1;", 'invalid hostname or wildcard "a.*.b"', 2),
    ("a;", "invalid number of the map parameters", 2),
    ("a 1 2;", "invalid number of the map parameters", 2),
    ("~( 1;", "pcre2_compile() failed", 2),
    ("a $nope;", 'unknown "nope" variable', 2),
    ("x { }", 'unexpected "{" in map block', 2),
])
def test_map_errors(tmp_path, block, message, line):
    text = f"map $uri $m {{\n{block}\n}}\nserver {{ listen 127.0.0.1:1; }}\n"
    with pytest.raises(ConfigError) as info:
        plan_of(tmp_path, text)
    err = info.value.errors[0]
    assert err.message.startswith(message) and err.line == line, str(err)


@pytest.mark.parametrize("text, message", [
    ("map $uri m { }", 'invalid variable name "m"'),
    ("map $uri $uri { }", 'the duplicate "uri" variable'),
    ("map $uri $a { }\nmap $args $A { }", 'the duplicate "A" variable'),
    ("map $uri $a { ~(?<host>x) 1; }", 'the duplicate "host" variable'),
    ("server { map $uri $a { } }", '"map" directive is not allowed here'),
])
def test_map_declaration_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        plan_of(tmp_path, text + "\nserver { listen 127.0.0.1:1; }\n")
    assert info.value.errors[0].message == message
