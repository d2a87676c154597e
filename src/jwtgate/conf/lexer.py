"""The NGINX configuration lexer: text to :class:`Token`, following ``ngx_conf_read_token``.

The rules are those of NGINX's ``src/core/ngx_conf_file.c`` (``ngx_conf_read_token``),
including its statement-level checks, so that :func:`tokenize` alone rejects everything
NGINX's tokenizer rejects, with NGINX's message and the line where NGINX detects it:

* space, tab, CR and LF separate tokens; only LF counts lines;
* ``#`` starts a comment (to the end of the line) only at the start of a token;
* ``"`` or ``'`` starts a quoted word only at the start of a token; after the closing quote
  the next character must be whitespace, ``;``, ``{`` or ``)``, else ``unexpected "x"``
  (``}`` is therefore an error there, as in NGINX);
* an unquoted word ends at whitespace, ``;`` or ``{``, except that ``{`` directly after
  ``$`` (``${name}``) belongs to the word; ``}``, ``#``, quotes are ordinary characters
  inside a word;
* a backslash makes the next character ordinary (in and out of quotes); escapes are then
  resolved in every word as NGINX does: ``\\"`` ``\\'`` ``\\\\`` give the character,
  ``\\t`` ``\\r`` ``\\n`` give TAB CR LF, any other ``\\x`` keeps both characters (so
  ``a\\;b`` is the word ``a\\;b``, not ``a;b``);
* ``;`` or ``{`` with no word before it: ``unexpected ";"`` / ``unexpected "{"``;
  ``}`` after words of an unfinished directive: ``unexpected "}"``;
  end of input inside a directive, a quoted string or after a lone backslash:
  ``unexpected end of file, expecting ";" or "}"``;
* a word of 4096 bytes or more (NGINX's ``NGX_CONF_BUFFER``): ``too long parameter
  "0123456789..." started``, or for a quoted one ``too long parameter, probably missing
  terminating Q character`` (Q the quote), at the line where the word starts. This is what NGINX
  reports for a quote left open in the middle of a file. NGINX applies the same limit to a
  comment (from ``#`` to the end of its line), and so do we.

Block nesting (``}`` with no open block, a block left open) is the parser's job.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from jwtgate.errors import ConfigError

__all__ = ["Token", "TokenKind", "tokenize", "unescape", "MAX_WORD_BYTES"]

TokenKind = Literal["word", "lbrace", "rbrace", "semicolon"]

#: NGINX's NGX_CONF_BUFFER: a word this long (in UTF-8 bytes, quotes excluded) is refused.
MAX_WORD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Token:
    """One lexical token.

    Attributes:
        kind: ``"word"``, ``"lbrace"`` (``{``), ``"rbrace"`` (``}``) or ``"semicolon"``.
        value: for a word, its text with quotes removed and escapes resolved; for the
            others, the character itself.
        line: 1-based line where the token starts (for a quoted word, the opening quote).
        quoted: whether a word was written in quotes (always ``False`` for the others).
    """

    kind: TokenKind
    value: str
    line: int
    quoted: bool


# Possessive quantifiers: none of these can backtrack, so scanning stays linear.
_SPACE = re.compile(r"[ \t\r\n]*+")
_COMMENT = re.compile(r"#[^\n]*+")
# Unquoted word: plain runs, a backslash pair, or "$" with the "{"s that follow it.
_WORD = re.compile(r"(?:[^ \t\r\n;{\\$]++|\\[\s\S]|\$\{*+)*+")
_DQ_BODY = re.compile(r'(?:[^"\\]++|\\[\s\S])*+')
_SQ_BODY = re.compile(r"(?:[^'\\]++|\\[\s\S])*+")
_ESCAPE = re.compile(r"\\([\s\S])")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}
_AFTER_QUOTE_OK = frozenset(" \t\r\n;{)")
_EOF_MESSAGE = 'unexpected end of file, expecting ";" or "}"'


def _scan(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """End of the run of ``pattern`` at ``pos`` (every scanner pattern matches the empty string)."""
    m = pattern.match(text, pos)
    assert m is not None
    return m.end()


def _resolve(m: re.Match[str]) -> str:
    c = m.group(1)
    return _ESCAPES.get(c, "\\" + c)


def unescape(raw: str) -> str:
    """Resolve backslash escapes in a raw word the way ``ngx_conf_read_token`` does.

    Args:
        raw: the word as written, without its surrounding quotes.

    Returns:
        ``\\"``, ``\\'``, ``\\\\`` become the character; ``\\t``, ``\\r``, ``\\n`` become
        TAB, CR, LF; any other backslash pair is kept as written (both characters).
    """
    if "\\" not in raw:
        return raw
    return _ESCAPE.sub(_resolve, raw)


def _check_length(text: str, start: int, end: int, terminated: bool, quote: str, file: str, line: int) -> None:
    """Raise NGINX's ``too long parameter`` error when ``text[start:end]`` fills NGX_CONF_BUFFER.

    NGINX reads the file through a 4096-byte buffer and gives up when one token (or one
    comment: it does not move the token start while skipping a comment) fills it before
    its terminator; a token that ends exactly at the end of the file is reported as end
    of file instead.
    """
    if end - start < MAX_WORD_BYTES // 4:  # cannot reach the limit even at 4 bytes per char
        return
    raw = text[start:end]
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size < MAX_WORD_BYTES or (size == MAX_WORD_BYTES and not terminated):
        return
    if quote:
        raise ConfigError(
            f'too long parameter, probably missing terminating "{quote}" character', file, line
        )
    raise ConfigError(f'too long parameter "{raw[:10]}..." started', file, line)


def tokenize(text: str, file: str) -> Iterator[Token]:
    """Split NGINX configuration text into tokens, exactly as ``ngx_conf_read_token``.

    Args:
        text: the whole configuration text (already decoded).
        file: the file name used in error locations.

    Yields:
        :class:`Token` in order. A ``semicolon`` or ``lbrace`` always follows at least one
        ``word`` of the same directive; an ``rbrace`` never does; the input never ends in
        the middle of a directive.

    Raises:
        ConfigError: located at ``file`` and the line where NGINX detects the problem:
            ``unexpected ";"``, ``unexpected "{"``, ``unexpected "}"``, ``unexpected "x"``
            (after a closing quote), ``unexpected end of file, expecting ";" or "}"``,
            ``too long parameter ...`` (see the module docstring).
    """
    n = len(text)
    pos = 0
    line = 1
    words = 0  # words of the directive being read (NGINX's cf->args->nelts)
    while True:
        end = _scan(_SPACE, text, pos)
        if end != pos:
            line += text.count("\n", pos, end)
            pos = end
        if pos < n and text[pos] == "#":
            end = _scan(_COMMENT, text, pos)
            _check_length(text, pos, end, end < n, "", file, line)
            pos = end
            continue
        if pos >= n:
            if words:
                raise ConfigError(_EOF_MESSAGE, file, line)
            return
        ch = text[pos]
        if ch == ";" or ch == "{":
            if not words:
                raise ConfigError(f'unexpected "{ch}"', file, line)
            words = 0
            pos += 1
            yield Token("semicolon" if ch == ";" else "lbrace", ch, line, False)
        elif ch == "}":
            if words:
                raise ConfigError('unexpected "}"', file, line)
            pos += 1
            yield Token("rbrace", ch, line, False)
        elif ch == '"' or ch == "'":
            end = _scan(_DQ_BODY if ch == '"' else _SQ_BODY, text, pos + 1)
            closed = end < n and text[end] == ch
            _check_length(text, pos + 1, end, closed, ch, file, line)
            raw = text[pos + 1 : end]
            start_line = line
            line += raw.count("\n")
            if not closed:
                raise ConfigError(_EOF_MESSAGE, file, line + text.count("\n", end))
            words += 1
            yield Token("word", unescape(raw), start_line, True)
            pos = end + 1
            if pos < n and text[pos] not in _AFTER_QUOTE_OK:
                raise ConfigError(f'unexpected "{text[pos]}"', file, line)
        else:
            end = _scan(_WORD, text, pos)
            # The scan stops at a terminator, at the end, or at a lone trailing backslash.
            terminated = end < n and text[end] != "\\"
            _check_length(text, pos, end, terminated, "", file, line)
            raw = text[pos:end]
            start_line = line
            line += raw.count("\n")
            if not terminated:
                raise ConfigError(_EOF_MESSAGE, file, line + text.count("\n", end))
            words += 1
            pos = end
            yield Token("word", unescape(raw), start_line, False)
