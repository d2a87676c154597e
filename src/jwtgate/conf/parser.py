"""The NGINX configuration parser: tokens to a :class:`~jwtgate.conf.tree.Directive` tree,
and back to text with :func:`render`.

Block structure follows NGINX's ``ngx_conf_parse``: a ``}`` outside any block is
``unexpected "}"``, the end of the text inside a block is ``unexpected end of file,
expecting "}"``. Everything else is checked by :func:`jwtgate.conf.lexer.tokenize`.
Nothing is looked up here: whether a directive exists, takes a block or takes these
arguments is the compiler's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from jwtgate.conf.lexer import tokenize
from jwtgate.conf.tree import Directive
from jwtgate.errors import ConfigError

__all__ = ["parse", "parse_expanding", "render", "MAX_DEPTH", "INDENT"]

#: Deepest block nesting accepted. NGINX has no explicit limit (only its C stack); real
#: configurations nest a handful of levels, and a bound keeps every later tree walk safe.
MAX_DEPTH = 100

#: Indentation per nesting level used by :func:`render`.
INDENT = "    "


def parse(text: str, file: str) -> tuple[Directive, ...]:
    """Parse NGINX configuration text into a tree of directives.

    Args:
        text: the whole configuration text.
        file: the file name recorded in every :class:`Directive` and in error locations.

    Returns:
        The top-level directives in order. ``include`` is not expanded here (see
        :func:`jwtgate.conf.loader.load`).

    Raises:
        ConfigError: any lexical error of :func:`~jwtgate.conf.lexer.tokenize`;
            ``unexpected "}"`` for a ``}`` that closes no block;
            ``unexpected end of file, expecting "}"`` (at the last line) for an unclosed
            block; ``too deeply nested blocks (more than 100 levels)``.
    """
    return parse_expanding(text, file, None)


def parse_expanding(
    text: str, file: str, include: Callable[[Directive], Iterable[Directive]] | None
) -> tuple[Directive, ...]:
    """:func:`parse`, calling ``include`` on each ``include`` directive as soon as it is read.

    The directives ``include`` returns replace it in place. It is called in document order,
    like NGINX's ``ngx_conf_include``, so an error in an included file is reported before
    any later error in the including file. A block ``include ... {`` is passed with
    ``block=()`` when its ``{`` is read, so that ``include`` can reject it.
    """
    top: list[Directive] = []
    current = top
    # One entry per open block: (name and args, their quoted flags, line, parent list).
    stack: list[tuple[list[str], list[bool], int, list[Directive]]] = []
    words: list[str] = []
    quoted: list[bool] = []
    line = 0
    for token in tokenize(text, file):
        kind = token.kind
        if kind == "word":
            if not words:
                line = token.line
            words.append(token.value)
            quoted.append(token.quoted)
        elif kind == "semicolon":
            d = Directive(words[0], tuple(words[1:]), file, line, None, tuple(quoted[1:]))
            if include is not None and d.name == "include":
                current.extend(include(d))
            else:
                current.append(d)
            words, quoted = [], []
        elif kind == "lbrace":
            if include is not None and words[0] == "include":
                current.extend(include(Directive(words[0], tuple(words[1:]), file, line, (), tuple(quoted[1:]))))
            if len(stack) >= MAX_DEPTH:
                raise ConfigError(f"too deeply nested blocks (more than {MAX_DEPTH} levels)", file, token.line)
            stack.append((words, quoted, line, current))
            current, words, quoted = [], [], []
        else:
            if not stack:
                raise ConfigError('unexpected "}"', file, token.line)
            bwords, bquoted, bline, parent = stack.pop()
            parent.append(
                Directive(bwords[0], tuple(bwords[1:]), file, bline, tuple(current), tuple(bquoted[1:]))
            )
            current = parent
    if stack:
        raise ConfigError('unexpected end of file, expecting "}"', file, text.count("\n") + 1)
    return tuple(top)


# After a backslash, these characters form an escape that NGINX resolves; any other
# character after a backslash is kept together with the backslash.
_RESOLVED = frozenset("\"'\\tnr")
_CONTROL = {"\t": "\\t", "\r": "\\r", "\n": "\\n"}


def _unquoted(value: str) -> str | None:
    """Write ``value`` as an unquoted word that lexes back to it, or ``None`` if impossible.

    Mirrors the lexer: a plain space, ``;`` or ``{`` (not after ``$``) would end the word,
    and a word cannot start with a quote, ``#`` or ``}``; none of those can be escaped
    without the backslash staying in the value.
    """
    if not value:
        return None
    out: list[str] = []
    variable = False  # the previous written unit was "$" (or "{" right after it)
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "\\":
            d = value[i + 1] if i + 1 < n else ""
            if d and d not in _RESOLVED:
                out.append(c + d)  # kept verbatim by the lexer, e.g. "\d", "\;", "\ "
                i += 2
            else:
                out.append("\\\\")
                i += 1
            variable = False
            continue
        if c in _CONTROL:
            out.append(_CONTROL[c])
            variable = False
        elif c == " " or c == ";":
            return None
        elif c == "{":
            if not variable:
                return None
            out.append(c)
        elif c == "$":
            out.append(c)
            variable = True
        elif i == 0 and (c == '"' or c == "'"):
            out.append("\\" + c)
            variable = False
        elif i == 0 and (c == "#" or c == "}"):
            return None
        else:
            out.append(c)
            variable = False
        i += 1
    return "".join(out)


def _quoted(value: str) -> str:
    """Write ``value`` as a quoted word that lexes back to it (always possible)."""
    q = "'" if '"' in value and "'" not in value else '"'
    out: list[str] = [q]
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "\\":
            d = value[i + 1] if i + 1 < n else ""
            if d and d not in _RESOLVED:
                out.append(c + d)
                i += 2
                continue
            out.append("\\\\")
        elif c == q:
            out.append("\\" + q)
        else:
            out.append(c)
        i += 1
    out.append(q)
    return "".join(out)


def _word(value: str, quoted: bool) -> str:
    if not quoted:
        written = _unquoted(value)
        if written is not None:
            return written
    return _quoted(value)


def render(directives: Sequence[Directive], indent: int = 0) -> str:
    """Write a directive tree as NGINX configuration text.

    ``parse(render(tree), f)`` equals ``tree`` in everything but ``file`` and ``line``:
    names, argument values and quoted flags come back identical. Arguments are written
    as they were (quoted or not), with the fewest escapes; an argument marked unquoted
    (or with no flag, for hand-built directives) whose value no unquoted word can produce
    (e.g. one containing a space) is written quoted. A name is written unquoted when
    possible.

    Args:
        directives: the directives to write, in order.
        indent: nesting level of the first line; each level is four spaces.

    Returns:
        The text, one directive per line, blocks as ``name args {`` ... ``}``, each line
        ended by ``\\n`` (a quoted value containing a newline spans lines).
    """
    out: list[str] = []
    # Iterative walk: (directive list, next index, level); closing braces on the way out.
    stack: list[tuple[Sequence[Directive], int, int]] = [(directives, 0, indent)]
    while stack:
        items, index, level = stack.pop()
        if index >= len(items):
            if len(stack) > 0:
                out.append(INDENT * (level - 1) + "}\n")
            continue
        stack.append((items, index + 1, level))
        d = items[index]
        parts = [_word(d.name, False)]
        for k, arg in enumerate(d.args):
            parts.append(_word(arg, d.quoted[k] if k < len(d.quoted) else False))
        head = INDENT * level + " ".join(parts)
        if d.block is None:
            out.append(head + ";\n")
        else:
            out.append(head + " {\n")
            stack.append((d.block, 0, level + 1))
    return "".join(out)
