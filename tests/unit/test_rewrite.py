"""The rewrite module (``set``, ``return``) and the headers module (``add_header``), served in
process."""

from __future__ import annotations

import pytest
from inproc import evaluate, plan_of, serve

from jwtgate.errors import ConfigError


def test_set_runs_in_order_with_return(tmp_path):
    plan = plan_of(tmp_path, """
server {
    listen 127.0.0.1:8080;
    set $who "server";
    location /a {
        set $x "1";
        set $x "$x-2";
        set $y "[$z]";
        set $z late;
        return 200 "$who $x $y $z";
        set $x never;
    }
    location /b { return 200 "$who [$x]"; }
}
""")
    assert serve(plan, "/a").text == "server 1-2 [] late"
    assert serve(plan, "/b").text == "server []"  # a set variable not set reads empty


def test_set_variable_usable_anywhere_and_before_its_set(tmp_path):
    plan = plan_of(tmp_path, """
map $tenant $plan_name { acme gold; default free; }
server {
    listen 127.0.0.1:8080;
    location / {
        set $tenant $arg_t;
        return 200 "$tenant:$plan_name";
    }
}
""")
    assert serve(plan, "/?t=acme").text == "acme:gold"
    assert serve(plan, "/?t=x").text == "x:free"


def test_server_level_script_runs_before_location_matching(tmp_path):
    plan = plan_of(tmp_path, """
server {
    listen 127.0.0.1:8080;
    set $a "$uri";
    return 418 "server $a";
    location / { return 200 never; }
}
""")
    answer = serve(plan, "/x")
    assert (answer.status, answer.text) == (418, "server /x")
    assert answer.ctx.location is None


@pytest.mark.parametrize("directive, status, body, location", [
    ("return 204;", 204, b"", None),
    ("return 404;", 404, b"404 Not Found", None),
    ("return 301;", 301, b"301 Moved Permanently", None),
    ('return 200 "t $uri";', 200, b"t /p/q", None),
    ("return 301 /new$uri;", 301, b"301 Moved Permanently", "http://gw.example:8080/new/p/q"),
    ("return 302 https://other.example/x;", 302, b"302 Found", "https://other.example/x"),
    ("return http://other.example/$arg_a;", 302, b"302 Found", "http://other.example/b"),
    ("return 307 $scheme://$host/t;", 307, b"307", "http://gw.example/t"),
])
def test_return_forms(tmp_path, directive, status, body, location):
    plan = plan_of(tmp_path, f"server {{ listen 127.0.0.1:8080; location / {{ {directive} }} }}")
    answer = serve(plan, "/p/q?a=b", {"Host": "gw.example:8080"})
    assert answer.status == status
    assert body in answer.body
    assert answer.header("Location") == location


def test_return_444_closes_without_an_answer(tmp_path):
    plan = plan_of(tmp_path, "server { listen 127.0.0.1:8080; location / { return 444; } }")
    answer = serve(plan, "/")
    assert answer.body == b"" and answer.headers == [] and answer.closed and answer.ctx.status == 444


def test_return_answers_before_authentication(tmp_path):
    (tmp_path / "k.jwk").write_text('{"keys": [{"kty": "oct", "k": "ZmFudGFzdGljand0", "kid": "1"}]}')
    plan = plan_of(tmp_path, """
server {
    listen 127.0.0.1:8080;
    location / {
        auth_jwt "api";
        auth_jwt_key_file k.jwk;
        return 200 "no token needed [$jwt_claim_sub]";
    }
}
""")
    assert serve(plan, "/").text == "no token needed []"
    assert any('"$jwt_claim_sub" is empty in "return"' in str(w) for w in plan.warnings)


@pytest.mark.parametrize("text, message", [
    ("set x 1;", 'invalid variable name "x"'),
    ("set $a-b 1;", 'invalid variable name "$a-b"'),
    ("set $uri x;", 'the duplicate "uri" variable'),
    ("set $http_host x;", 'the duplicate "http_host" variable'),
    ("set $jwt_claim_sub admin;", 'the duplicate "jwt_claim_sub" variable'),
    ("set $a $nope;", 'unknown "nope" variable'),
    ("set $a;", 'invalid number of arguments in "set" directive'),
    ("return 1000;", 'invalid return code "1000"'),
    ("return /relative;", 'invalid return code "/relative"'),
    ("return 200 a b;", 'invalid number of arguments in "return" directive'),
])
def test_rewrite_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        plan_of(tmp_path, f"server {{\n listen 127.0.0.1:1;\n location / {{ {text} }}\n}}")
    err = info.value.errors[0]
    assert (err.message, err.line) == (message, 3)


def test_set_of_a_map_variable_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        plan_of(tmp_path, "map $uri $m { default 1; }\nserver { listen 127.0.0.1:1; set $m 2; }")
    assert info.value.errors[0].message == 'the duplicate "m" variable'


def test_set_of_a_claim_warns(tmp_path):
    (tmp_path / "k.jwk").write_text('{"keys": [{"kty": "oct", "k": "ZmFudGFzdGljand0", "kid": "1"}]}')
    plan = plan_of(tmp_path, """
map $jwt_claim_iss $issuer { default $jwt_claim_iss; }
server { listen 127.0.0.1:1; location / { set $k $issuer; auth_jwt x; auth_jwt_key_file k.jwk; } }
""")
    assert [w.message for w in plan.warnings if "rewrite phase" in w.message] == [
        '"$jwt_claim_iss" is empty in "set": the rewrite phase runs before authentication']


# -- add_header ---------------------------------------------------------------------------

HEADERS = """
server {
    listen 127.0.0.1:8080;
    add_header X-Server s;
    add_header X-Always "a $status" always;
    location /inherit { return 200 x; }
    location /own {
        add_header X-Own "own $request_method";
        add_header X-Empty "$arg_none";
        return 201 x;
    }
    location /error { return 404; }
    location /nested {
        location /nested/inner { return 200 inner; }
        add_header X-Nested n;
    }
    location /evil { add_header X-Evil "$arg_v"; return 200 x; }
}
"""


def test_add_header_inheritance_and_statuses(tmp_path):
    plan = plan_of(tmp_path, HEADERS)
    inherit = serve(plan, "/inherit")
    assert inherit.values("X-Server") == ["s"] and inherit.values("X-Always") == ["a 200"]
    own = serve(plan, "/own")
    # a level with its own add_header inherits none of the outer ones (NGINX's array rule)
    assert own.values("X-Own") == ["own GET"] and own.header("X-Server") is None
    assert own.header("X-Always") is None
    assert own.header("X-Empty") is None  # an empty value adds nothing
    error = serve(plan, "/error")
    assert error.header("X-Server") is None and error.values("X-Always") == ["a 404"]
    nested = serve(plan, "/nested/inner")
    assert nested.values("X-Nested") == ["n"] and nested.header("X-Server") is None
    # the headers are on the response as sent: $sent_http_*
    assert evaluate(plan, "$sent_http_x_own", own.ctx) == "own GET"


def test_add_header_value_with_a_newline_is_not_written(tmp_path):
    plan = plan_of(tmp_path, HEADERS)
    answer = serve(plan, "/evil?v=a%0d%0aSet-Cookie:%20x")
    assert answer.header("X-Evil") == "a%0d%0aSet-Cookie:%20x"  # $arg_ is not decoded
    ctx_plan = plan_of(tmp_path, 'server { listen 127.0.0.1:8080; location / { set $v "a\\r\\nB: c";'
                                 ' add_header X-V $v; return 200 x; } }', name="gw2.conf")
    answer = serve(ctx_plan, "/")
    assert answer.status == 200 and answer.header("X-V") is None and answer.header("B") is None


def test_add_header_on_server_level_return(tmp_path):
    plan = plan_of(tmp_path, "server { listen 127.0.0.1:8080; add_header X-S 1; return 302 /x; }")
    answer = serve(plan, "/", {"Host": "h"})
    assert answer.header("X-S") == "1" and answer.header("Location") == "http://h:8080/x"


@pytest.mark.parametrize("text, message", [
    ("add_header X;", 'invalid number of arguments in "add_header" directive'),
    ('add_header "X Y" v;', 'invalid header name "X Y"'),
    ("add_header X v sometimes;", 'invalid parameter "sometimes"'),
])
def test_add_header_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        plan_of(tmp_path, f"server {{ listen 127.0.0.1:1; {text} }}")
    assert info.value.errors[0].message == message


def test_return_text_content_type_follows_default_type_and_extension(tmp_path):
    """NGINX's return sets Content-Type as for a file: the URI's extension, else default_type
    (inherited, or set after the return in the same block)."""
    plan = plan_of(tmp_path, """
        server {
            listen 127.0.0.1:8080;
            default_type application/json;
            location /health { return 200 '{"ok":true}'; }
            location = /health.txt { return 200 "ok"; }
            location /plain { return 200 "plain"; default_type text/csv; }
            location /both { set $x 1; return 200 "x=$x"; }
        }
        server { listen 127.0.0.1:8081; return 200 "bare"; }
    """)
    assert serve(plan, "/health").header("Content-Type") == "application/json"
    assert serve(plan, "/health.txt").header("Content-Type") == "text/plain"
    assert serve(plan, "/plain").header("Content-Type") == "text/csv"
    assert serve(plan, "/both").header("Content-Type") == "application/json"
    assert serve(plan, "/x", local=("127.0.0.1", 8081)).header("Content-Type") == "text/plain"
