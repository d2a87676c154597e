"""The access module (NGINX ``ngx_http_access_module``): ``allow`` and ``deny`` by client address.

Rules are checked in configuration order and the first one that matches the client address
decides: ``deny`` answers 403, ``allow`` lets the request go on to the next handlers (as NGINX's
``satisfy all``: ``auth_jwt`` still runs after it). No rule matching lets the request through.
A level that has any ``allow``/``deny`` replaces the rules of the outer levels entirely (NGINX's
array inheritance). Addresses: IPv4 or IPv6, optionally with a ``/prefix`` (host bits set are
masked, with a warning, as NGINX does), or ``all``. An IPv4 rule also matches an IPv4-mapped
IPv6 client (``::ffff:a.b.c.d``), as in NGINX. ``unix:`` is accepted and matches nothing
(jwtgate listens on TCP only).

The handler runs in the access phase, before ``auth_jwt`` (the module comes first in
``MODULES``); a location without rules gets no handler at all.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from jwtgate.conf.spec import HSL, DirectiveSpec, Inherit
from jwtgate.modules.base import Module, Phase

__all__ = ["AccessModule", "AccessHandler", "Rule", "parse_rule"]

log = logging.getLogger("jwtgate.access")

_FORBIDDEN = 403

DIRECTIVES = tuple(
    DirectiveSpec(name, "access", HSL, 1, 1, inherit=Inherit.ARRAY, group="access",
                  syntax=f"{name} address | CIDR | unix: | all;",
                  doc=("Allows" if name == "allow" else "Denies (403)") +
                      " access for the address, network or `all`. Rules apply in order, the "
                      "first match wins; an inner level with rules replaces the outer rules.",
                  nginx_notes="`unix:` matches nothing: jwtgate listens on TCP only.")
    for name in ("allow", "deny")
)

#: A compiled rule: (allow, version or 0 for all, network int, mask int); version -1: unix:.
Rule = tuple[bool, int, int, int]


def parse_rule(allow: bool, text: str) -> tuple[Rule, str | None]:
    """Compile one ``allow``/``deny`` argument.

    Returns:
        The rule and a warning (``low address bits ... are meaningless``) or ``None``.

    Raises:
        ValueError: not an address, a network, ``unix:`` or ``all``.
    """
    if text == "all":
        return (allow, 0, 0, 0), None
    if text == "unix:":
        return (allow, -1, 0, 0), None
    warning = None
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        net = ipaddress.ip_network(text, strict=False)  # raises ValueError for a non-address
        warning = f'low address bits of {text} are meaningless'
    bits = net.max_prefixlen
    mask = ((1 << net.prefixlen) - 1) << (bits - net.prefixlen) if net.prefixlen else 0
    return (allow, net.version, int(net.network_address), mask), warning


class AccessHandler:
    """The access-phase handler of a location with ``allow``/``deny`` rules.

    Args:
        rules: compiled rules, in order.
    """

    __slots__ = ("rules", "_cache_addr", "_cache_result")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        # the verdict of the last address seen: clients come back on keep-alive connections
        self._cache_addr: str | None = None
        self._cache_result: int | None = None

    def __repr__(self) -> str:
        return f"<AccessHandler {len(self.rules)} rules>"

    def decide(self, addr: str) -> int | None:
        """``None`` (allowed) or 403 for the client address ``addr``."""
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            ip = None
        version = ip.version if ip is not None else -2  # matches no rule but `all` (unix: is -1)
        value = int(ip) if ip is not None else 0
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        for allow, rv, net, mask in self.rules:
            if rv == 0:
                hit = True
            elif rv == version:
                hit = (value & mask) == net
            elif rv == 4 and mapped is not None:
                hit = (int(mapped) & mask) == net
            else:
                hit = False
            if hit:
                return None if allow else _FORBIDDEN
        return None

    async def __call__(self, ctx: Any) -> int | None:
        addr = ctx.conn.remote_addr
        if addr == self._cache_addr:
            result = self._cache_result
        else:
            result = self.decide(addr)
            self._cache_addr, self._cache_result = addr, result
        if result is not None:
            # The request line as sent (NGINX logs r->request_line), never the decoded $uri:
            # "%0d%0a" in it would write forged lines into the error log. No query string: it
            # may hold a token (auth_jwt token=$arg_...).
            log.error('access forbidden by rule, client: %s, server: %s, request: "%s %s HTTP/%s"',
                      addr, (ctx.server.primary_name or "_") if ctx.server is not None else "_",
                      ctx.method, ctx.target.partition("?")[0][:256], ctx.version)
        return result


class AccessModule(Module):
    """``allow`` and ``deny``."""

    name = "access"
    directives = DIRECTIVES

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        try:
            rule, warning = parse_rule(d.name == "allow", d.args[0])
        except ValueError:
            raise build.error(f'invalid parameter "{d.args[0]}"', d) from None
        if warning:
            build.warn(warning, d)
        # parse order is configuration order (includes expanded in place): keep it across
        # the two directive names
        seq = build.shared["access"] = build.shared.get("access", 0) + 1
        return (seq, rule)

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        rules = _ordered(loc)
        if not rules:
            return {}
        return {Phase.ACCESS: [AccessHandler(tuple(rules))]}


def _ordered(loc: Any) -> list[Rule]:
    """The effective ``allow``/``deny`` rules of ``loc`` in configuration order."""
    level = loc
    while level is not None:
        if "access" in level.groups:
            values = sorted(v for v, _ in level.own("allow") + level.own("deny"))
            return [rule for _, rule in values]
        level = level.parent
    return []
