"""The ``map`` module (``ngx_http_map_module``): a variable whose value depends on another.

``map string $variable { key value; ... default value; }``. Exact keys match
case-insensitively, then (with ``hostnames``) wildcard keys, the longest first, then regular
expressions (``~`` case-sensitive, ``~*`` not) in configuration order; their captures
(``$1``, named groups as variables) are usable in the value. A key that would read as a
parameter (``default``, ``hostnames``, ``~...``) is written with a leading ``\\``. Values may
contain variables. ``include`` works inside the block (the loader expands it).

The map is evaluated lazily, when its variable is read, and cached for the request as NGINX
does (not with ``volatile``); a value computed before authentication is computed again after
it (see :mod:`jwtgate.vars.registry`), so a map over ``$jwt_claim_sub`` sees the verified token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from jwtgate.conf.regex import compile_pcre
from jwtgate.conf.spec import Ctx, DirectiveSpec, Inherit
from jwtgate.modules.base import Module
from jwtgate.vars.complex import variable_names

__all__ = ["MapModule", "MapTable"]

DIRECTIVES = (
    DirectiveSpec("map", "map", Ctx.HTTP, 2, 2, block=True, block_ctx=Ctx.MAP, inherit=Inherit.NONE,
                  syntax="map string $variable { ... }",
                  doc="Creates `$variable` whose value depends on `string`: exact keys "
                      "(case-insensitive), `hostnames` wildcards, `~`/`~*` regexes in order, `default`.",
                  nginx_notes="Values are cached per request as in NGINX (not with `volatile`), but a "
                              "value read before authentication is computed again after it. Regex "
                              "captures do not leak out of the map into `$1`... of the location."),
)


@dataclass(eq=False)
class MapTable:
    """A compiled map: the source value and the lookup tables.

    Attributes:
        source: complex value of the ``string`` argument.
        exact: lowercased key → value.
        wild_head: ``(suffix, value)`` for ``*.example.com`` keys (``hostnames`` only).
        wild_tail: ``(prefix, value)`` for ``www.example.*`` keys (``hostnames`` only).
        regexes: ``(compiled, value)`` in configuration order.
        default: the ``default`` value, or ``None`` (then the empty string).
        hostnames: whether ``hostnames`` was given (wildcard keys, one trailing dot ignored).
    """

    source: Any = None
    exact: dict[str, Any] = field(default_factory=dict)
    wild_head: list[tuple[str, Any]] = field(default_factory=list)
    wild_tail: list[tuple[str, Any]] = field(default_factory=list)
    regexes: list[tuple[re.Pattern[str], Any]] = field(default_factory=list)
    default: Any = None
    hostnames: bool = False

    def lookup(self, ctx: Any) -> str:
        """The mapped value for this request."""
        key = self.source(ctx)
        if self.hostnames and key.endswith("."):
            key = key[:-1]
        low = key.lower()
        value = self.exact.get(low)
        if value is not None:
            return value(ctx)  # type: ignore[no-any-return]
        if self.hostnames:
            for suffix, v in self.wild_head:
                if low.endswith(suffix):
                    return v(ctx)  # type: ignore[no-any-return]
            for prefix, v in self.wild_tail:
                if low.startswith(prefix):
                    return v(ctx)  # type: ignore[no-any-return]
        for rx, v in self.regexes:
            m = rx.search(key)
            if m is not None:
                if v.constant is not None:
                    return v.constant  # type: ignore[no-any-return]
                saved = ctx.captures, ctx.capture_names
                ctx.captures, ctx.capture_names = m.groups(), rx.groupindex or None
                try:
                    return v(ctx)  # type: ignore[no-any-return]
                finally:
                    ctx.captures, ctx.capture_names = saved
        return self.default(ctx) if self.default is not None else ""


class MapModule(Module):
    """``map`` blocks."""

    name = "map"
    directives = DIRECTIVES

    def predeclare(self, build: Any, level: Any, d: Any) -> None:
        var = d.args[1]
        if not var.startswith("$") or len(var) < 2:
            raise build.error(f'invalid variable name "{var}"', d)
        table = MapTable()
        build.shared.setdefault("map", {})[id(d)] = table
        # What the map's value depends on, for limit_req's phase rule (a map over $jwt_*).
        deps = set(variable_names(d.args[0]))
        volatile = False
        for entry in d.block or ():
            if entry.name == "volatile" and not entry.args:
                volatile = True
            for arg in entry.args:
                deps.update(variable_names(arg))
        build.shared.setdefault("var_deps", {})[var[1:].lower()] = deps
        try:
            build.variables.add(var[1:], table.lookup, self.name, cacheable=not volatile)
        except ValueError:
            raise build.error(f'the duplicate "{var[1:]}" variable', d) from None
        for entry in d.block or ():
            if entry.name.startswith("~") and len(entry.args) == 1:
                _declare_captures(build, entry)

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        table: MapTable = build.shared["map"][id(d)]
        table.source = build.complex(d.args[0], d)
        heads: dict[str, Any] = {}
        tails: dict[str, Any] = {}
        for entry in d.block or ():
            key = entry.name
            if entry.block is not None:
                raise build.error('unexpected "{" in map block', entry)
            if key in ("hostnames", "volatile") and not entry.args:
                table.hostnames = table.hostnames or key == "hostnames"
                continue
            if len(entry.args) != 1:
                raise build.error("invalid number of the map parameters", entry)
            value = build.complex(entry.args[0], entry)
            if key == "default":
                if table.default is not None:
                    raise build.error('duplicate default map parameter', entry)
                table.default = value
                continue
            if key.startswith("~") and len(key) > 1:
                pattern = key[1:]
                nocase = pattern.startswith("*")
                if nocase:
                    pattern = pattern[1:]
                try:
                    table.regexes.append((compile_pcre(pattern, nocase), value))
                except re.error as e:
                    raise build.error(f'pcre2_compile() failed: {e} in "{pattern}"', entry) from None
                continue
            if key.startswith("\\"):
                key = key[1:]  # written \default: the key "default"; \~x: the key "~x"
            low = key.lower()
            if table.hostnames and low.startswith("*."):
                free = _claim(heads, low[1:], value)
            elif table.hostnames and low.startswith(".") and len(low) > 1:
                free = _claim(table.exact, low[1:], value) and _claim(heads, low, value)
            elif table.hostnames and low.endswith(".*"):
                free = _claim(tails, low[:-1], value)
            else:
                if table.hostnames and "*" in low:
                    raise build.error(f'invalid hostname or wildcard "{key}"', entry)
                free = _claim(table.exact, low, value)
            if not free:
                raise build.error(f'conflicting parameter "{key}"', entry)
        # Longest wildcard first, as NGINX's wildcard hash prefers the most specific name.
        table.wild_head = sorted(heads.items(), key=lambda kv: -len(kv[0]))
        table.wild_tail = sorted(tails.items(), key=lambda kv: -len(kv[0]))
        return table


def _claim(table: dict[str, Any], key: str, value: Any) -> bool:
    """Add ``key`` unless present; whether it was free."""
    if key in table:
        return False
    table[key] = value
    return True


def _declare_captures(build: Any, entry: Any) -> None:
    """Named groups of a regex key become variables (``ngx_http_regex_compile``)."""
    pattern = entry.name[2:] if entry.name.startswith("~*") else entry.name[1:]
    try:
        names = compile_pcre(pattern).groupindex
    except re.error:
        return  # reported when the map is parsed
    for name in names:
        try:
            build.variables.add_capture(name)
        except ValueError:
            raise build.error(f'the duplicate "{name}" variable', entry) from None
