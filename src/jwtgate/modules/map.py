"""The ``map`` module (``ngx_http_map_module``): a variable whose value depends on another.

``map string $variable { key value; ... default value; }``. Exact keys match
case-insensitively, then (with ``hostnames``) wildcard keys, then regular expressions
(``~`` case-sensitive, ``~*`` not) in configuration order; their captures are usable in the
value. Values may contain variables. The map is evaluated when (and each time) its variable
is read, so a map over ``$jwt_claim_sub`` sees the verified token.
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
                  nginx_notes="Values are computed on every read (as NGINX's `volatile`), so a map "
                              "read before and after authentication gives the current answer."),
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
        default: the ``default`` value, or an empty constant.
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
        if self.hostnames:
            key = key.rstrip(".")
        low = key.lower()
        value = self.exact.get(low)
        if value is not None:
            return value(ctx)
        if self.hostnames:
            for suffix, v in self.wild_head:
                if low.endswith(suffix):
                    return v(ctx)
            for prefix, v in self.wild_tail:
                if low.startswith(prefix):
                    return v(ctx)
        for rx, v in self.regexes:
            m = rx.search(key)
            if m is not None:
                if v.constant is not None:
                    return v.constant
                saved = ctx.captures
                ctx.captures = m.groups()
                try:
                    return v(ctx)
                finally:
                    ctx.captures = saved
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
        for entry in d.block or ():
            for arg in entry.args:
                deps.update(variable_names(arg))
        build.shared.setdefault("var_deps", {})[var[1:].lower()] = deps
        try:
            build.variables.add(var[1:], table.lookup, self.name)
        except ValueError:
            raise build.error(f'the duplicate "{var[1:]}" variable', d) from None

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        table: MapTable = build.shared["map"][id(d)]
        table.source = build.complex(d.args[0], d)
        for entry in d.block or ():
            key = entry.name
            if entry.block is not None:
                raise build.error(f'unexpected "{{" in map block', entry)
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
            elif key.startswith("~") and len(key) > 1:
                pattern = key[1:]
                nocase = pattern.startswith("*")
                if nocase:
                    pattern = pattern[1:]
                try:
                    table.regexes.append((compile_pcre(pattern, nocase), value))
                except re.error as e:
                    raise build.error(f'pcre2_compile() failed: {e} in "{pattern}"', entry) from None
            elif table.hostnames and key.startswith("*."):
                table.wild_head.append((key[1:].lower(), value))
            elif table.hostnames and key.startswith("."):
                table.exact.setdefault(key[1:].lower(), value)
                table.wild_head.append((key.lower(), value))
            elif table.hostnames and key.endswith(".*"):
                table.wild_tail.append((key[:-1].lower(), value))
            else:
                low = key.lower()
                if low in table.exact:
                    raise build.error(f'conflicting parameter "{key}"', entry)
                table.exact[low] = value
        # Longest wildcard first, as NGINX's wildcard hash prefers the most specific name.
        table.wild_head.sort(key=lambda kv: -len(kv[0]))
        table.wild_tail.sort(key=lambda kv: -len(kv[0]))
        return table
