"""Choosing the server and the location of a request, as NGINX does.

Servers (``ngx_http_find_virtual_server``): among the servers on the listening address, an
exact ``server_name``, then the longest leading wildcard (``*.example.com``), then the
longest trailing wildcard (``www.example.*``), then the first matching regex, else the
``default_server`` (the first server on that address when none is marked).

Locations (``ngx_http_core_find_location``): an ``=`` match wins at once; otherwise the
longest matching prefix is remembered; if it is ``^~`` it wins; otherwise regexes are tried
in configuration order (nested ones inside the remembered prefix first) and the first
match wins; otherwise the remembered prefix.
"""

from __future__ import annotations

import re

from jwtgate.conf.regex import compile_pcre
from collections.abc import Sequence
from typing import Any

__all__ = ["LocationMatcher", "ServerSelector"]


class LocationMatcher:
    """Locations of one server (or nested in one location), ready to match a URI.

    Args:
        locations: location plans with ``match`` (``kind``, ``pattern``, ``regex``) and
            ``children`` (a nested :class:`LocationMatcher` or ``None``).
    """

    def __init__(self, locations: Sequence[Any]) -> None:
        self.exact: dict[str, Any] = {}
        self.prefixes: list[Any] = []
        self.regexes: list[Any] = []
        self.named: dict[str, Any] = {}
        for loc in locations:
            kind = loc.match.kind
            if kind == "=":
                self.exact[loc.match.pattern] = loc
            elif kind in ("", "^~"):
                self.prefixes.append(loc)
            elif kind in ("~", "~*"):
                self.regexes.append(loc)
            elif kind == "@":
                self.named[loc.match.pattern] = loc
        # Longest first; equal lengths keep configuration order.
        self.prefixes.sort(key=lambda loc: -len(loc.match.pattern))

    def __repr__(self) -> str:
        return (f"<LocationMatcher exact={len(self.exact)} prefix={len(self.prefixes)} "
                f"regex={len(self.regexes)}>")

    def match(self, uri: str) -> tuple[Any, tuple[str, ...]] | None:
        """The location for ``uri`` and its regex captures, or ``None``."""
        loc = self.exact.get(uri)
        if loc is not None:
            return loc, ()
        best = None
        for loc in self.prefixes:
            if uri.startswith(loc.match.pattern):
                best = loc
                break
        if best is not None:
            if best.children is not None:
                inner = best.children.match(uri)
                if inner is not None:
                    return inner
            if best.match.kind == "^~":
                return best, ()
        for loc in self.regexes:
            m = loc.match.regex.search(uri)
            if m is not None:
                if loc.children is not None:
                    inner = loc.children.match(uri)
                    if inner is not None:
                        return inner
                return loc, m.groups()
        if best is not None:
            return best, ()
        return None


class ServerSelector:
    """The servers of one listening address, selected by ``Host``.

    Args:
        servers: server plans with ``names`` (lowercased ``server_name`` values), in order.
        default: the ``default_server``, or ``None`` for the first.
    """

    def __init__(self, servers: Sequence[Any], default: Any = None) -> None:
        self.default = default if default is not None else servers[0]
        self.exact: dict[str, Any] = {}
        self.head: list[tuple[str, Any]] = []
        self.tail: list[tuple[str, Any]] = []
        self.regexes: list[tuple[re.Pattern[str], Any]] = []
        for server in servers:
            for name in server.names:
                if name.startswith("~"):
                    self.regexes.append((compile_pcre(name[1:], ignore_case=True), server))
                elif name.startswith("*."):
                    self.head.append((name[1:], server))
                elif name.startswith("."):
                    self.exact.setdefault(name[1:], server)
                    self.head.append((name, server))
                elif name.endswith(".*"):
                    self.tail.append((name[:-1], server))
                else:
                    self.exact.setdefault(name, server)
        self.head.sort(key=lambda p: -len(p[0]))
        self.tail.sort(key=lambda p: -len(p[0]))

    def select(self, host: str) -> Any:
        """The server for ``host`` (already lowercased, without port)."""
        if host:
            server = self.exact.get(host)
            if server is not None:
                return server
            for suffix, server in self.head:
                if host.endswith(suffix):
                    return server
            for prefix, server in self.tail:
                if host.startswith(prefix):
                    return server
            for rx, server in self.regexes:
                if rx.search(host):
                    return server
        return self.default
