"""The parser: golden trees, block errors, truncation and trailing data over a corpus,
hypothesis properties (never an exception other than ConfigError; render round-trips)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jwtgate.conf.lexer import tokenize
from jwtgate.conf.parser import MAX_DEPTH, parse, render
from jwtgate.conf.tree import Directive
from jwtgate.errors import ConfigError

GOLDEN = Path(__file__).parent / "conf_golden"


def to_json(directives: tuple[Directive, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for d in directives:
        o: dict[str, Any] = {"name": d.name, "args": list(d.args), "quoted": list(d.quoted), "line": d.line}
        if d.block is not None:
            o["block"] = to_json(d.block)
        out.append(o)
    return out




def shape(directives: tuple[Directive, ...] | list[Directive]) -> tuple[Any, ...]:
    """The tree without file and line (quoted flags padded to one per argument)."""
    return tuple(
        (
            d.name,
            d.args,
            tuple(d.quoted) + (False,) * (len(d.args) - len(d.quoted)),
            None if d.block is None else shape(d.block),
        )
        for d in directives
    )


def error(text: str) -> tuple[str, str | None, int | None]:
    with pytest.raises(ConfigError) as info:
        parse(text, "t.conf")
    return info.value.message, info.value.file, info.value.line


# -- golden trees -----------------------------------------------------------------------

@pytest.mark.parametrize("conf", sorted(GOLDEN.glob("*.conf")), ids=lambda p: p.name)
def test_golden(conf: Path) -> None:
    tree = parse(conf.read_text(encoding="utf-8"), str(conf))
    assert to_json(tree) == json.loads(conf.with_suffix(".json").read_text(encoding="utf-8"))
    assert all(d.file == str(conf) for d in tree)


def test_reference_post_snippet() -> None:
    text = """\
log_format jwt '$remote_addr - $remote_user [$time_local] "$request" '
               '$status $body_bytes_sent "$http_referer" "$http_user_agent" '
               '$jwt_header_alg $jwt_claim_sub';
limit_req_zone $jwt_claim_sub zone=10rps_per_client:1m rate=10r/s;
map $jwt_claim_sub $jwt_status { "quotes" 0; "test" 0; default 1; }
upstream api_server { server 127.0.0.1:9000; }
server { listen 80; location /products/ { auth_jwt "Products API" token=$arg_apijwt; auth_jwt_key_file conf/api_secret.jwk; proxy_pass http://api_server; } }
"""
    tree = parse(text, "nginx.conf")
    assert [d.name for d in tree] == ["log_format", "limit_req_zone", "map", "upstream", "server"]
    assert [d.line for d in tree] == [1, 4, 5, 6, 7]
    log_format = tree[0]
    assert log_format.args == (
        "jwt",
        '$remote_addr - $remote_user [$time_local] "$request" ',
        '$status $body_bytes_sent "$http_referer" "$http_user_agent" ',
        "$jwt_header_alg $jwt_claim_sub",
    )
    assert log_format.quoted == (False, True, True, True) and log_format.block is None
    assert tree[1].args == ("$jwt_claim_sub", "zone=10rps_per_client:1m", "rate=10r/s")
    assert shape(tree[2].block or ()) == (("quotes", ("0",), (False,), None), ("test", ("0",), (False,), None), ("default", ("1",), (False,), None))
    location = (tree[4].block or ())[1]
    assert location.name == "location" and location.args == ("/products/",)
    assert shape(location.block or ()) == (
        ("auth_jwt", ("Products API", "token=$arg_apijwt"), (True, False), None),
        ("auth_jwt_key_file", ("conf/api_secret.jwk",), (False,), None),
        ("proxy_pass", ("http://api_server",), (False,), None),
    )


def test_directive_line_is_line_of_its_name() -> None:
    tree = parse("\n\nserver\n{\n listen\n 80\n ;\n}\n", "t.conf")
    assert tree[0].line == 3 and (tree[0].block or ())[0].line == 5


def test_empty_block_and_empty_file() -> None:
    assert parse("", "t.conf") == ()
    assert parse("# nothing\n", "t.conf") == ()
    assert parse("events {}", "t.conf") == (Directive("events", (), "t.conf", 1, (), ()),)


def test_directive_without_args() -> None:
    assert parse("a;", "f") == (Directive("a", (), "f", 1, None, ()),)


# -- block errors -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, message, line",
    [
        ("}", 'unexpected "}"', 1),
        ("a {}\n}", 'unexpected "}"', 2),
        ("a { b; }\n\n}\n", 'unexpected "}"', 3),
        ("http {", 'unexpected end of file, expecting "}"', 1),
        ("http {\n server {\n }\n", 'unexpected end of file, expecting "}"', 4),
        ("http {\n listen 80", 'unexpected end of file, expecting ";" or "}"', 2),
        ("http {\n { }", 'unexpected "{"', 2),
        ("http {\n ; }", 'unexpected ";"', 2),
    ],
)
def test_block_errors(text: str, message: str, line: int) -> None:
    assert error(text) == (message, "t.conf", line)


def test_depth_limit() -> None:
    ok = "a {" * MAX_DEPTH + "}" * MAX_DEPTH
    assert len(parse(ok, "t.conf")) == 1
    deep = "a {\n" * (MAX_DEPTH + 1) + "}" * (MAX_DEPTH + 1)
    assert error(deep) == (f"too deeply nested blocks (more than {MAX_DEPTH} levels)", "t.conf", MAX_DEPTH + 1)


# -- corpus: trailing data and truncation -----------------------------------------------

CORPUS = {p.name: p.read_text(encoding="utf-8") for p in sorted(GOLDEN.glob("*.conf"))} | {
    "inline_small": "worker_processes 1;\nevents { worker_connections 64; }\n",
    "inline_quotes": "a 'b \"c\" d' \"e\\\"f\" g\\ h;\nb ${x}y { c; }\n",
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_trailing_garbage_is_a_located_error(name: str) -> None:
    text = CORPUS[name]
    parse(text, name)
    last = (text + "\nx").count("\n") + 1
    for garbage, message in [
        ("}", 'unexpected "}"'),
        ("foo", 'unexpected end of file, expecting ";" or "}"'),
        ("foo {", 'unexpected end of file, expecting "}"'),
        ("{", 'unexpected "{"'),
        (";", 'unexpected ";"'),
        ('"open', 'unexpected end of file, expecting ";" or "}"'),
    ]:
        with pytest.raises(ConfigError) as info:
            parse(text + "\n" + garbage, name)
        assert (info.value.message, info.value.file, info.value.line) == (message, name, last), garbage


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_truncation_parses_or_raises_config_error(name: str) -> None:
    text = CORPUS[name]
    full = shape(parse(text, name))
    for i in range(len(text) + 1):
        try:
            tree = parse(text[:i], name)
        except ConfigError as e:
            assert e.file == name and e.line is not None and 1 <= e.line <= text[:i].count("\n") + 1
        else:
            # A prefix that parses is a prefix of the statements, never a mangled tree.
            assert shape(tree) == full[: len(tree)]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_round_trips_through_render(name: str) -> None:
    tree = parse(CORPUS[name], name)
    assert shape(parse(render(tree), "r.conf")) == shape(tree)


# -- render -----------------------------------------------------------------------------

def test_render_layout() -> None:
    tree = parse("http{server{listen 80;location /a{}}}map $a $b{default 1;}", "t.conf")
    assert render(tree) == (
        "http {\n"
        "    server {\n"
        "        listen 80;\n"
        "        location /a {\n"
        "        }\n"
        "    }\n"
        "}\n"
        "map $a $b {\n"
        "    default 1;\n"
        "}\n"
    )
    assert render(tree[1:], indent=1) == "    map $a $b {\n        default 1;\n    }\n"


def test_render_keeps_quoting_with_fewest_escapes() -> None:
    d = Directive("x", ("a", "b c", 'say "hi"', "it's \"x\"", "", "\\d", "tail\\", r"a\;b", '"lead', "${v}w"),
                  "f", 1, None, (False, True, True, True, True, True, True, False, False, False))
    assert render([d]) == (
        "x a \"b c\" 'say \"hi\"' \"it's \\\"x\\\"\" \"\" \"\\d\" \"tail\\\\\" a\\;b \\\"lead ${v}w;\n"
    )
    assert shape(parse(render([d]), "f")) == shape([d])


def test_render_quotes_what_cannot_be_unquoted() -> None:
    # Hand-built directives may carry no flags, or values no unquoted word can produce.
    d = Directive("a b", ("c d", "x;y", "{", "#c", "}", ""), "f", 1)
    text = render([d])
    assert text == '"a b" "c d" "x;y" "{" "#c" "}" "";\n'
    assert parse(text, "f")[0].args == d.args


def test_render_control_characters_unquoted() -> None:
    d = Directive("a", ("x\ty\nz\r",), "f", 1, None, (False,))
    assert render([d]) == "a x\\ty\\nz\\r;\n"
    assert shape(parse(render([d]), "f")) == shape([d])


def test_render_deep_tree_iteratively() -> None:
    node = Directive("leaf", (), "f", 1)
    for _ in range(MAX_DEPTH - 1):
        node = Directive("a", (), "f", 1, (node,))
    assert shape(parse(render([node]), "f")) == shape([node])


# -- hypothesis -------------------------------------------------------------------------

SPECIALS = list(" \t\r\n;{}#\"'\\$()")
config_alphabet = st.sampled_from(SPECIALS + list("abcx/=") + ["é", "\x00", "\f"])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.text(config_alphabet, max_size=60)))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        tree = parse(text, "fuzz.conf")
    except ConfigError as e:
        assert e.file == "fuzz.conf"
        assert e.line is not None and 1 <= e.line <= text.count("\n") + 1
        return
    assert isinstance(tree, tuple) and all(isinstance(d, Directive) for d in tree)
    assert shape(parse(render(tree), "r.conf")) == shape(tree)


def _unquoted_value(raw: str) -> str:
    """A value the lexer can produce from an unquoted word: the first one in ``raw``."""
    try:
        tokens = list(tokenize(f"n {raw};", "g"))
    except ConfigError:
        return "x"
    found = [t.value for t in tokens[1:] if t.kind == "word" and not t.quoted]
    return found[0] if found else "x"


unquoted_values = st.text(st.one_of(config_alphabet, st.characters()), min_size=1, max_size=12).map(_unquoted_value)
any_values = st.text(max_size=12)
arguments = st.lists(
    st.one_of(st.tuples(unquoted_values, st.just(False)), st.tuples(any_values, st.just(True))), max_size=4
)
names = st.one_of(unquoted_values, any_values)


def _directive(name: str, args: list[tuple[str, bool]], block: list[Directive] | None) -> Directive:
    return Directive(name, tuple(a for a, _ in args), "gen", 1, None if block is None else tuple(block),
                     tuple(q for _, q in args))


leaves = st.builds(_directive, names, arguments, st.none())
trees = st.lists(
    st.recursive(leaves, lambda inner: st.builds(_directive, names, arguments, st.lists(inner, max_size=4)),
                 max_leaves=20),
    max_size=5,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_render_round_trip(tree: list[Directive]) -> None:
    assert shape(parse(render(tree), "r.conf")) == shape(tree)
