"""The parsed form of an NGINX-syntax configuration: a tree of :class:`Directive`.

The tree is syntax only: it knows nothing about which directives exist or where they are
allowed (that is :mod:`jwtgate.conf.spec` and the compiler). Every node keeps the file and
line it came from so that any later error can be reported as ``MESSAGE in FILE:LINE``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Directive"]


@dataclass(frozen=True, slots=True)
class Directive:
    """One directive: ``name arg ...;`` or ``name arg ... { ... }``.

    Attributes:
        name: the directive name (the first token), with quotes removed and escapes resolved.
        args: the arguments after the name, with quotes removed and escapes resolved exactly
            as ``ngx_conf_read_token`` does (``\\"``, ``\\'``, ``\\\\``, ``\\t``, ``\\r``,
            ``\\n``; any other ``\\x`` keeps both characters).
        file: path of the file the directive was read from: the main file as given to
            :func:`jwtgate.conf.loader.load`, an included file as resolved (absolute).
        line: 1-based line of the directive's name (its first token).
        block: ``None`` for a simple directive ended by ``;``; a tuple of the directives
            inside ``{ ... }`` for a block directive (possibly empty).
        quoted: one flag per element of ``args``: whether that argument was written in
            quotes. NGINX itself never looks at quoting once a word is read (in a ``map``
            block ``"default"`` and ``default`` are the same; a key equal to a special
            name is escaped as ``\\default``, which the lexer keeps verbatim); the flag is
            there for stricter checks and for :func:`~jwtgate.conf.parser.render`.
            Whether the *name* was quoted is not recorded. ``()`` when unknown (a
            directive built by hand); a parsed directive always has
            ``len(quoted) == len(args)``.
    """

    name: str
    args: tuple[str, ...]
    file: str
    line: int
    block: tuple[Directive, ...] | None = None
    quoted: tuple[bool, ...] = ()
