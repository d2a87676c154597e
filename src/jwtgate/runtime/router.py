"""Choosing the server and the location of a request, as NGINX does.

Servers (``ngx_http_find_virtual_server``): among the servers on the listening address, an
exact ``server_name`` (the empty name ``""`` for a request without ``Host``), then the longest
leading wildcard (``*.example.com``, ``.example.com``), then the longest trailing wildcard
(``www.example.*``), then the first matching regex in configuration order, else the
``default_server`` (the first server on that address when none is marked). When two servers
on one address claim the same name, the first keeps it (NGINX's ``conflicting server name``
warning, which the plan reports).

Locations (``ngx_http_core_find_location`` and ``ngx_http_core_find_static_location``), at
each nesting level:

1. an ``=`` location equal to the URI wins at once;
2. if no prefix location is named exactly as the URI but a location whose content handler
   redirects (``proxy_pass``) is named as the URI plus ``/``, the answer is a 301 to that name
   (NGINX's ``auto_redirect``), before any regex;
3. otherwise the longest matching prefix (``^~`` or plain) is remembered and its nested
   locations searched the same way; an ``=``, regex or redirect result from there wins;
4. unless the remembered prefix is ``^~``, the regexes of this level are tried in
   configuration order; the first that matches wins (after searching its own nested
   locations, whose match wins over it);
5. otherwise the remembered prefix (or the deepest nested prefix found in 3).

Named locations (``@name``) are never matched by a request URI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from jwtgate.conf.regex import compile_pcre
from jwtgate.memo import remember

__all__ = ["LocationMatcher", "ServerSelector"]

# What _find reports besides the location (NGINX's return codes).
_EXACT, _PREFIX, _REGEX, _REDIRECT = "exact", "prefix", "regex", "redirect"


_MEMO_MAX = 1024        # URIs remembered per LocationMatcher (cleared when full)
_MEMO_URI_MAX = 256     # characters of a URI worth remembering: a memo stays under ~0.5 MB


class LocationMatcher:
    """Locations of one server (or nested in one location), ready to match a URI.

    Args:
        locations: location plans with ``match`` (``kind``, ``pattern``, ``regex``),
            ``children`` (a nested :class:`LocationMatcher` or ``None``) and
            ``auto_redirect`` (whether a request for the name without its trailing ``/`` is
            redirected to it).
    """

    def __init__(self, locations: Sequence[Any]) -> None:
        self.exact: dict[str, Any] = {}
        self.prefixes: list[Any] = []
        self.regexes: list[Any] = []
        self.named: dict[str, Any] = {}
        self.redirects: dict[str, Any] = {}
        inclusive: dict[str, Any] = {}
        for loc in locations:
            kind = loc.match.kind
            if kind == "=":
                self.exact.setdefault(loc.match.pattern, loc)
            elif kind in ("", "^~"):
                self.prefixes.append(loc)
                inclusive.setdefault(loc.match.pattern, loc)
            elif kind in ("~", "~*"):
                self.regexes.append(loc)
            elif kind == "@":
                self.named.setdefault(loc.match.pattern, loc)
        # Longest first; equal lengths keep configuration order.
        self.prefixes.sort(key=lambda loc: -len(loc.match.pattern))
        #: lookup results by URI: clients ask for the same few paths again and again
        self._memo: dict[str, tuple[Any, re.Match[str] | None, bool] | None] = {}
        # A node of NGINX's tree redirects when its exact or its prefix location does; the
        # exact one serves the redirect when both exist.
        for name in {*self.exact, *inclusive}:
            if len(name) > 1 and name.endswith("/"):
                pair = [x for x in (self.exact.get(name), inclusive.get(name)) if x is not None]
                if any(getattr(x, "auto_redirect", False) for x in pair):
                    self.redirects[name[:-1]] = pair[0]

    def __repr__(self) -> str:
        return (f"<LocationMatcher exact={len(self.exact)} prefix={len(self.prefixes)} "
                f"regex={len(self.regexes)} named={len(self.named)}>")

    def lookup(self, uri: str) -> tuple[Any, re.Match[str] | None, bool] | None:
        """The location for ``uri``.

        Returns:
            ``(location, regex match or None, redirect)``, or ``None`` when nothing matches.
            ``redirect`` is true for NGINX's auto-redirect: answer 301 with the location's
            name as ``Location``. The match is the last regex that matched (its groups are
            ``$1``...), possibly a regex location's while a location nested in it was chosen.
        """
        memo = self._memo
        try:
            return memo[uri]
        except KeyError:
            pass
        found = self._find(uri)
        result = None if found is None else (found[0], found[1], found[2] is _REDIRECT)
        remember(memo, uri, result, _MEMO_MAX, _MEMO_URI_MAX)
        return result

    def match(self, uri: str) -> tuple[Any, tuple[str | None, ...]] | None:
        """The location for ``uri`` and its regex captures, or ``None`` (see :meth:`lookup`)."""
        found = self._find(uri)
        if found is None:
            return None
        loc, m, _ = found
        return loc, (m.groups() if m is not None else ())

    def _find(self, uri: str) -> tuple[Any, re.Match[str] | None, str] | None:
        loc = self.exact.get(uri)
        if loc is not None:
            return loc, None, _EXACT
        best = None
        for p in self.prefixes:
            if uri.startswith(p.match.pattern):
                best = p
                break
        if self.redirects and (best is None or best.match.pattern != uri):
            loc = self.redirects.get(uri)
            if loc is not None:
                return loc, None, _REDIRECT
        found: tuple[Any, re.Match[str] | None, str] | None = None
        if best is not None:
            found = (best, None, _PREFIX)
            if best.children is not None:
                inner = best.children._find(uri)
                if inner is not None:
                    if inner[2] is not _PREFIX:
                        return inner
                    found = inner
            if best.match.kind == "^~":
                return found
        for loc in self.regexes:
            m = loc.match.regex.search(uri)
            if m is not None:
                if loc.children is not None:
                    inner = loc.children._find(uri)
                    if inner is not None:
                        # NGINX: whatever the nested search finds is final (a redirect too).
                        return inner[0], inner[1] or m, _REGEX
                return loc, m, _REGEX
        return found


class ServerSelector:
    """The servers of one listening address, selected by ``Host``.

    Args:
        servers: server plans with ``names`` (lowercased ``server_name`` values, ``""`` for
            a server without ``server_name``), in order.
        default: the ``default_server``, or ``None`` for the first.

    Attributes:
        conflicts: ``(name, server)`` for each name a later server claims in vain.
    """

    def __init__(self, servers: Sequence[Any], default: Any = None) -> None:
        self.default = default if default is not None else servers[0]
        self.exact: dict[str, Any] = {}
        self.head: list[tuple[str, Any]] = []
        self.tail: list[tuple[str, Any]] = []
        self.regexes: list[tuple[re.Pattern[str], Any]] = []
        self.conflicts: list[tuple[str, Any]] = []
        heads: dict[str, Any] = {}
        tails: dict[str, Any] = {}
        for server in servers:
            for name in server.names:
                if name.startswith("~"):
                    self.regexes.append((compile_pcre(name[1:], ignore_case=True), server))
                    continue
                if name.startswith("*."):
                    taken = _claim(heads, name[1:], server)
                elif name.startswith("."):
                    taken = _claim(self.exact, name[1:], server) and _claim(heads, name, server)
                elif name.endswith(".*"):
                    taken = _claim(tails, name[:-1], server)
                else:
                    taken = _claim(self.exact, name, server)
                if not taken:
                    self.conflicts.append((name, server))
        self.head = sorted(heads.items(), key=lambda p: -len(p[0]))
        self.tail = sorted(tails.items(), key=lambda p: -len(p[0]))
        #: the server every Host gets when names cannot choose another (one server on the
        #: address, no regex names), else ``None``: then the Host need not be looked at
        self.single = self.default if (
            not self.regexes and all(s is self.default for s in
                                     (*self.exact.values(), *heads.values(), *tails.values()))) else None

    def __repr__(self) -> str:
        return (f"<ServerSelector exact={len(self.exact)} head={len(self.head)} tail={len(self.tail)} "
                f"regex={len(self.regexes)} default={self.default!r}>")

    def find(self, host: str) -> tuple[Any, re.Match[str] | None]:
        """The server for ``host`` (already lowercased, without port) and, when a regex name
        chose it, the match (its captures are ``$1``... and its named groups variables)."""
        server = self.exact.get(host)
        if server is not None:
            return server, None
        if host:
            for suffix, server in self.head:
                if host.endswith(suffix):
                    return server, None
            for prefix, server in self.tail:
                if host.startswith(prefix):
                    return server, None
            for rx, server in self.regexes:
                m = rx.search(host)
                if m is not None:
                    return server, m
        return self.default, None

    def select(self, host: str) -> Any:
        """The server for ``host`` (already lowercased, without port)."""
        return self.find(host)[0]


def _claim(table: dict[str, Any], key: str, server: Any) -> bool:
    """Give ``key`` to ``server`` unless another server has it; whether it was free (or its own)."""
    owner = table.setdefault(key, server)
    return owner is server


def group_index(m: re.Match[str] | None) -> Mapping[str, int] | None:
    """The named groups of a match (``None`` without match or names), for ``ctx.capture_names``."""
    if m is None:
        return None
    names = m.re.groupindex
    return names if names else None
