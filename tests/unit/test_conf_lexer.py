"""The lexer against NGINX's ngx_conf_read_token rules: one test per rule, every error with
its exact message and line."""

from __future__ import annotations

import pytest

from jwtgate.conf.lexer import MAX_WORD_BYTES, Token, tokenize, unescape
from jwtgate.errors import ConfigError


def toks(text: str) -> list[tuple[str, str, int, bool]]:
    return [(t.kind, t.value, t.line, t.quoted) for t in tokenize(text, "t.conf")]


def words(text: str) -> list[str]:
    return [t.value for t in tokenize(text, "t.conf") if t.kind == "word"]


def error(text: str) -> tuple[str, str | None, int | None]:
    with pytest.raises(ConfigError) as info:
        list(tokenize(text, "t.conf"))
    return info.value.message, info.value.file, info.value.line


def W(value: str, line: int = 1, quoted: bool = False) -> tuple[str, str, int, bool]:
    return ("word", value, line, quoted)


SEMI = ("semicolon", ";")
LB = ("lbrace", "{")
RB = ("rbrace", "}")


def test_token_shape() -> None:
    assert list(tokenize("a;", "f")) == [Token("word", "a", 1, False), Token("semicolon", ";", 1, False)]


def test_simple_directive_and_block() -> None:
    assert toks("http {\n  listen 80;\n}\n") == [
        W("http"), ("lbrace", "{", 1, False),
        W("listen", 2), W("80", 2), ("semicolon", ";", 2, False),
        ("rbrace", "}", 3, False),
    ]


def test_empty_input_and_only_comments() -> None:
    assert toks("") == []
    assert toks("  \n\t\r\n# only a comment\n#another") == []


@pytest.mark.parametrize("sep", [" ", "\t", "\r", "\n", "\r\n", " \t\r\n "])
def test_whitespace_separates(sep: str) -> None:
    assert words(f"a{sep}b{sep};") == ["a", "b"]


def test_other_whitespace_is_part_of_a_word() -> None:
    # NGINX only knows space, tab, CR and LF.
    assert words("a\fb\vc\x00d;") == ["a\fb\vc\x00d"]


def test_lines_count_lf_only() -> None:
    assert toks("a\r\rb;\nc;") == [W("a"), W("b"), ("semicolon", ";", 1, False), W("c", 2), ("semicolon", ";", 2, False)]


# -- comments -------------------------------------------------------------------------

def test_hash_inside_word_is_literal() -> None:
    assert words("a#b c#;") == ["a#b", "c#"]


def test_hash_at_token_start_is_comment() -> None:
    assert toks("a #b ;\n;") == [W("a"), ("semicolon", ";", 2, False)]


def test_comment_ends_at_lf_not_cr() -> None:
    assert toks("a; # x \r b;\nc;") == [W("a"), ("semicolon", ";", 1, False), W("c", 2), ("semicolon", ";", 2, False)]


def test_comment_between_arguments() -> None:
    assert toks("a # c1\n b # c2\n ;") == [W("a"), W("b", 2), ("semicolon", ";", 3, False)]


def test_comment_directly_after_closing_quote_is_an_error() -> None:
    assert error('a "b"#c\n;') == ('unexpected "#"', "t.conf", 1)


def test_comment_after_quote_and_space() -> None:
    assert words('a "b" #c\n;') == ["a", "b"]


# -- quotes ---------------------------------------------------------------------------

def test_double_and_single_quotes() -> None:
    assert toks("""a "b c" 'd e';""") == [W("a"), W("b c", quoted=True), W("d e", quoted=True), ("semicolon", ";", 1, False)]


def test_empty_quoted_words() -> None:
    assert toks("""a "" '';""") == [W("a"), W("", quoted=True), W("", quoted=True), ("semicolon", ";", 1, False)]


def test_quoted_directive_name_is_allowed() -> None:
    assert toks('"a b" c;')[0] == W("a b", quoted=True)


def test_special_characters_inside_quotes() -> None:
    assert words("""a "{ } ; # ' $" '" { }';""") == ["a", "{ } ; # ' $", '" { }']


def test_quote_inside_word_is_literal() -> None:
    # A quote only opens a string at the start of a token.
    assert toks("""a"b" c'd';""")[:2] == [W('a"b"'), W("c'd'")]


def test_multiline_quoted_word_line_is_its_start() -> None:
    assert toks('a "x\ny\nz" b;') == [W("a"), W("x\ny\nz", quoted=True), W("b", 3), ("semicolon", ";", 3, False)]


@pytest.mark.parametrize(
    "raw, value",
    [
        (r"\"", '"'),
        (r"\'", "'"),
        (r"\\", "\\"),
        (r"\t", "\t"),
        (r"\r", "\r"),
        (r"\n", "\n"),
        (r"\d", r"\d"),          # any other escape keeps both characters
        (r"\$", r"\$"),
        (r"\x41", r"\x41"),
        (r"\\\\", "\\\\"),
        (r"\\n", "\\n"),         # escaped backslash then plain n
        (r"a\\\"b", 'a\\"b'),
        ("\\\n", "\\\n"),        # backslash-newline kept
    ],
)
def test_escapes_in_quotes(raw: str, value: str) -> None:
    assert words(f'k "{raw}";') == ["k", value]
    if "'" not in raw:
        assert words(f"k '{raw}';") == ["k", value]


def test_escaped_quote_does_not_close() -> None:
    assert words(r'k "a\"b" ' + r"'c\'d';") == ["k", 'a"b', "c'd"]


@pytest.mark.parametrize("after", [" ", "\t", "\r", "\n"])
def test_whitespace_after_closing_quote(after: str) -> None:
    assert words(f'a "b"{after}c;') == ["a", "b", "c"]


def test_semicolon_and_brace_after_closing_quote() -> None:
    assert toks('a "b";') == [W("a"), W("b", quoted=True), ("semicolon", ";", 1, False)]
    assert toks("a 'b'{}") == [W("a"), W("b", quoted=True), ("lbrace", "{", 1, False), ("rbrace", "}", 1, False)]


def test_paren_after_closing_quote_starts_a_word() -> None:
    # NGINX allows ')' after a quote for "if ($a = "b")".
    assert words('if ($a = "b") {}') == ["if", "($a", "=", "b", ")"]


@pytest.mark.parametrize("after", ["x", '"', "'", "}", "#", "\\", "$", "("])
def test_other_character_after_closing_quote(after: str) -> None:
    assert error(f'a\n"b"{after} c;') == (f'unexpected "{after}"', "t.conf", 2)


def test_error_after_multiline_quote_is_on_the_closing_line() -> None:
    assert error('a "b\n\nc"x;') == ('unexpected "x"', "t.conf", 3)


# -- unquoted words and backslashes ---------------------------------------------------

def test_word_ends_at_semicolon_and_brace() -> None:
    assert toks("location /a{b;}") == [W("location"), W("/a"), ("lbrace", "{", 1, False), W("b"), ("semicolon", ";", 1, False), ("rbrace", "}", 1, False)]


def test_closing_brace_inside_word_is_literal() -> None:
    # NGINX: '}' only means "block end" at the start of a token.
    assert words("return 200 ok};") == ["return", "200", "ok}"]


def test_variable_braces_belong_to_the_word() -> None:
    assert words("set $a ${b}c;") == ["set", "$a", "${b}c"]
    assert words("x a${b}${c}d;") == ["x", "a${b}${c}d"]
    assert words("x ${{a}};") == ["x", "${{a}}"]


def test_brace_after_variable_close_opens_a_block() -> None:
    assert toks("x ${a}{}") == [W("x"), W("${a}"), ("lbrace", "{", 1, False), ("rbrace", "}", 1, False)]


def test_escaped_dollar_does_not_protect_brace() -> None:
    assert toks(r"x \${}")[:3] == [W("x"), W(r"\$"), ("lbrace", "{", 1, False)]


def test_dollar_then_escape_then_brace() -> None:
    assert words(r"x $\{a;") == ["x", r"$\{a"]


@pytest.mark.parametrize(
    "raw, value",
    [
        (r"a\;b", r"a\;b"),      # the ';' is protected, the backslash stays (NGINX)
        (r"a\ b", r"a\ b"),      # same for a space
        (r"a\{b", r"a\{b"),
        (r"\"a", '"a'),          # an escaped quote at token start is a plain character
        (r"\'a", "'a"),
        (r"\#a", r"\#a"),
        (r"a\tb", "a\tb"),
        (r"a\nb", "a\nb"),
        (r"a\rb", "a\rb"),
        (r"a\\b", "a\\b"),
        (r"^/api/(\d+)$", r"^/api/(\d+)$"),
        (r"\\", "\\"),
    ],
)
def test_unquoted_escapes(raw: str, value: str) -> None:
    assert toks(f"k {raw};")[1] == W(value)


def test_backslash_newline_in_word_counts_lines() -> None:
    assert toks("a b\\\nc d;") == [W("a"), W("b\\\nc"), W("d", 2), ("semicolon", ";", 2, False)]


def test_unescape_function() -> None:
    assert unescape(r"a\tb\q\\") == "a\tb\\q\\"
    assert unescape("plain") == "plain"


# -- statement-level errors -------------------------------------------------------------

@pytest.mark.parametrize(
    "text, message, line",
    [
        (";", 'unexpected ";"', 1),
        ("a;\n\n ;", 'unexpected ";"', 3),
        ("a;;", 'unexpected ";"', 1),
        ("{", 'unexpected "{"', 1),
        ("a {}\n{ b; }", 'unexpected "{"', 2),
        ("a\n}", 'unexpected "}"', 2),
        ("a b }", 'unexpected "}"', 1),
        ('a "b"}', 'unexpected "}"', 1),
        ("a", 'unexpected end of file, expecting ";" or "}"', 1),
        ("a b\n\n", 'unexpected end of file, expecting ";" or "}"', 3),
        ("a;\nb", 'unexpected end of file, expecting ";" or "}"', 2),
        ("a # no end\n", 'unexpected end of file, expecting ";" or "}"', 2),
        ('a "b', 'unexpected end of file, expecting ";" or "}"', 1),
        ('a "b\nc\n', 'unexpected end of file, expecting ";" or "}"', 3),
        ("a 'b;\n}\n", 'unexpected end of file, expecting ";" or "}"', 3),
        ('a "b\\"', 'unexpected end of file, expecting ";" or "}"', 1),
        ('a "b"', 'unexpected end of file, expecting ";" or "}"', 1),
        ("a \\", 'unexpected end of file, expecting ";" or "}"', 1),
        ("\\", 'unexpected end of file, expecting ";" or "}"', 1),
        ("a b\\", 'unexpected end of file, expecting ";" or "}"', 1),
        ('"', 'unexpected end of file, expecting ";" or "}"', 1),
    ],
)
def test_errors(text: str, message: str, line: int) -> None:
    assert error(text) == (message, "t.conf", line)


def test_error_renders_like_nginx() -> None:
    with pytest.raises(ConfigError, match=r'^unexpected "\}" in conf/x.conf:2$'):
        list(tokenize("a\nb }", "conf/x.conf"))


def test_tokens_before_an_error_are_yielded() -> None:
    gen = tokenize("a; ;", "t.conf")
    assert next(gen).value == "a"
    assert next(gen).kind == "semicolon"
    with pytest.raises(ConfigError):
        next(gen)


# -- NGX_CONF_BUFFER --------------------------------------------------------------------

def test_long_word_limit() -> None:
    ok = "x" * (MAX_WORD_BYTES - 1)
    assert words(f"a {ok};") == ["a", ok]
    assert error("a\n" + "y" * MAX_WORD_BYTES + ";") == ('too long parameter "yyyyyyyyyy..." started', "t.conf", 2)


def test_long_word_counts_utf8_bytes() -> None:
    word = "é" * (MAX_WORD_BYTES // 2)  # 2048 characters, 4096 bytes
    assert error(f"a {word};")[0] == f'too long parameter "{word[:10]}..." started'
    assert words(f"a {word[1:]};") == ["a", word[1:]]


def test_long_quoted_word_limit() -> None:
    ok = "x" * (MAX_WORD_BYTES - 1)
    assert words(f'a "{ok}";') == ["a", ok]
    assert error("a\n'" + "y" * MAX_WORD_BYTES + "';") == (
        "too long parameter, probably missing terminating \"'\" character", "t.conf", 2)


def test_unterminated_quote_in_a_long_file() -> None:
    text = 'a;\nlog_format x "oops;\n' + "b c;\n" * 2000
    assert error(text) == ('too long parameter, probably missing terminating """ character', "t.conf", 2)


def test_word_exactly_at_limit_ending_the_file_is_end_of_file() -> None:
    assert error("a " + "y" * MAX_WORD_BYTES) == ('unexpected end of file, expecting ";" or "}"', "t.conf", 1)


def test_long_comment_limit() -> None:
    assert toks("#" + "c" * (MAX_WORD_BYTES - 2) + "\na;") == [W("a", 2), ("semicolon", ";", 2, False)]
    assert error("a;\n#" + "c" * MAX_WORD_BYTES + "\n") == ('too long parameter "#ccccccccc..." started', "t.conf", 2)
