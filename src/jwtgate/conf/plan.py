"""The frozen result of loading a configuration: servers, locations and their handlers.

:func:`compile_plan` is the one entry point from configuration text to something that can
serve: ``load`` (parse + includes) → ``compile_tree`` (check, parse, merge) → a
:class:`Plan`. A reload builds a new Plan beside the old one; requests in flight keep the
Plan they started with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jwtgate.clock import SYSTEM_CLOCK, Clock
from jwtgate.conf.compiler import Build, ConfigErrors, Level, compile_tree
from jwtgate.conf.loader import load
from jwtgate.conf.spec import Ctx
from jwtgate.conf.values import parse_time
from jwtgate.errors import ConfigError
from jwtgate.memo import remember
from jwtgate.http.server import HttpLimits
from jwtgate.modules.base import Phase
from jwtgate.modules.core import Listen, LocationMatch
from jwtgate.modules.tls import listen_contexts
from jwtgate.runtime.router import LocationMatcher, ServerSelector

__all__ = ["Plan", "ServerPlan", "LocationPlan", "compile_plan"]

_ACCESS_PHASES = (Phase.REWRITE, Phase.PREACCESS, Phase.ACCESS, Phase.POSTACCESS)
_WILDCARDS = ("0.0.0.0", "::")


@dataclass(eq=False)
class LocationPlan:
    """One location, ready to serve.

    Attributes:
        match: how it matches (:class:`~jwtgate.modules.core.LocationMatch`).
        access: handlers of the rewrite, preaccess, access and postaccess phases, in order.
        content: the content handler, or ``None`` (then 404).
        log: log-phase handlers.
        children: nested locations, or ``None``.
        file, line: where it is defined.
        auto_redirect: a request for the name without its trailing ``/`` gets a 301 to it
            (NGINX does this for locations whose content handler is ``proxy_pass``).
    """

    match: LocationMatch
    access: tuple[Any, ...]
    content: Any
    log: tuple[Any, ...]
    children: LocationMatcher | None
    file: str
    line: int
    auto_redirect: bool = False
    #: ``(check or None, handler)`` for each of ``access``: a handler's synchronous ``check``
    #: when it has one (see :data:`jwtgate.modules.base.DEFER`)
    steps: tuple[tuple[Any, Any], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.steps = tuple((getattr(h, "check", None), h) for h in self.access)

    def __repr__(self) -> str:
        kind = f"{self.match.kind} " if self.match.kind not in ("", "@") else ""
        return f"<location {kind}{self.match.pattern} {self.file}:{self.line}>"


@dataclass(eq=False)
class ServerPlan:
    """One virtual server.

    Attributes:
        names: lowercased ``server_name`` values (regexes as written, ``~...``); ``("",)``
            for a server without ``server_name``, as NGINX.
        primary_name: the first name (``$server_name``).
        listens: its ``listen`` addresses.
        rewrite: server-level rewrite-phase handlers (``set``, ``return``, the ``add_header``
            filter), run before the location is chosen; each returns as an access handler.
        locations: its :class:`LocationMatcher`.
        log: log handlers for requests that match no location.
        unmatched: what serves a request that matches no location: the server level's own
            handlers (``limit_req``, ``auth_jwt``, ``allow``/``deny``, a ``root``), as NGINX
            runs a request without a location with the server's configuration; ``None`` when
            a module reported an error for it.
    """

    names: tuple[str, ...]
    primary_name: str
    listens: tuple[Listen, ...]
    rewrite: tuple[Any, ...]
    locations: LocationMatcher
    log: tuple[Any, ...]
    file: str
    line: int
    unmatched: LocationPlan | None = None

    def __repr__(self) -> str:
        return f"<server {self.primary_name or '_'} {self.file}:{self.line}>"


@dataclass(eq=False)
class Plan:
    """A compiled configuration.

    Attributes:
        path: the main configuration file.
        binds: addresses to listen on, ``[(host, port), ...]``.
        selectors: server selection by ``(local address, port)``; ``0.0.0.0`` for wildcards.
        limits: :class:`HttpLimits` by bound address.
        tls: the TLS context of each ``listen ... ssl`` address (selector key); see
            :meth:`tls_context`.
        tls_binds: the bound addresses that are TLS.
        worker_processes, error_log, pid: main-context settings.
        warnings: non-fatal findings for ``jwtgate check``.
        pools: upstream connection pools the running gateway closes.
        resources: what modules need while this Plan serves (access logs, the Redis client,
            zone state), see :class:`~jwtgate.modules.base.Resource`.
    """

    path: str
    binds: list[tuple[str, int]]
    selectors: dict[tuple[str, int], ServerSelector]
    limits: dict[tuple[str, int], HttpLimits]
    servers: list[ServerPlan]
    worker_processes: int = 1
    error_log: tuple[str, str] = ("stderr", "error")
    pid: str | None = None
    #: seconds requests in flight get on a graceful stop or reload (``worker_shutdown_timeout``)
    worker_shutdown_timeout: float = 10.0
    tls: dict[tuple[str, int], Any] = field(default_factory=dict)
    tls_binds: frozenset[tuple[str, int]] = frozenset()
    warnings: list[ConfigError] = field(default_factory=list)
    pools: list[Any] = field(default_factory=list)
    resources: list[Any] = field(default_factory=list)
    build: Build | None = None
    _selector_memo: dict[tuple[str, int], ServerSelector] = field(default_factory=dict, repr=False)

    def select_server(self, local: str, port: int, host: str) -> ServerPlan:
        """The server for a request that arrived on ``local:port`` with ``Host: host``."""
        return self.find_server(local, port, host)[0]

    def find_server(self, local: str, port: int, host: str) -> tuple[ServerPlan, Any]:
        """The server for ``local:port`` and ``host`` (lowercased, without port), and the
        regex match of its ``server_name`` when a regex chose it (else ``None``).

        The servers listening on exactly ``local:port`` are considered first, then those on
        the wildcard address of ``port``, as NGINX does.
        """
        return self.selectors[self._selector_key(local, port)].find(host)  # type: ignore[no-any-return]

    def selector(self, local: str, port: int) -> Any:
        """The :class:`~jwtgate.runtime.router.ServerSelector` for a connection accepted on
        ``local:port`` (remembered: the same few addresses serve every request)."""
        key = (local, port)
        selector = self._selector_memo.get(key)
        if selector is None:
            selector = self.selectors[self._selector_key(local, port)]
            remember(self._selector_memo, key, selector, 256)
        return selector

    def _selector_key(self, local: str, port: int) -> tuple[str, int]:
        key = (local, port)
        if key in self.selectors:
            return key
        if local.startswith("::ffff:") and (local[7:], port) in self.selectors:
            return local[7:], port
        for host in (("::", "0.0.0.0") if ":" in local else ("0.0.0.0", "::")):
            if (host, port) in self.selectors:
                return host, port
        return next(iter(self.selectors))

    def tls_context(self, local: str, port: int) -> Any:
        """The TLS context a connection accepted on ``local:port`` starts its handshake with
        (its servers' certificates are then chosen by SNI), or ``None``."""
        return self.tls.get(self._selector_key(local, port))


def compile_plan(path: str, modules: Sequence[Any] | None = None, clock: Clock = SYSTEM_CLOCK) -> Plan:
    """Load, check and compile the configuration in ``path``.

    Raises:
        ConfigError: a syntax error (one), or :class:`ConfigErrors` with every error found.
    """
    from jwtgate.modules import default_modules

    path = os.path.abspath(path)
    directives = load(path)
    build = compile_tree(directives, modules if modules is not None else default_modules(),
                         os.path.dirname(path), clock)
    plan = _plan(build, path)
    if build.errors:
        build.errors.sort(key=lambda e: (e.file or "", e.line or 0))
        raise ConfigErrors(build.errors)
    return plan


def _plan(build: Build, path: str) -> Plan:
    """The Plan; every error found is added to ``build.errors`` (the caller raises)."""
    servers: list[ServerPlan] = []
    for level in build.servers():
        servers.append(_server(build, level))
    if not servers:
        build.errors.append(ConfigError("no \"server\" is defined", path, None))
        return Plan(path=path, binds=[], selectors={}, limits={}, servers=[], build=build)
    by_addr: dict[tuple[str, int], list[ServerPlan]] = {}
    defaults: dict[tuple[str, int], ServerPlan] = {}
    for server in servers:
        for listen in server.listens:
            key = (listen.host, listen.port)
            group = by_addr.setdefault(key, [])
            if server in group:
                build.errors.append(ConfigError(f"a duplicate listen {_addr_text(key)}", listen.file, listen.line))
                continue
            group.append(server)
            if listen.default_server:
                if key in defaults:
                    build.errors.append(ConfigError(f"a duplicate default server for {_addr_text(key)}",
                                                    listen.file, listen.line))
                    continue
                defaults[key] = server
    selectors = {key: ServerSelector(group, defaults.get(key)) for key, group in by_addr.items()}
    for key, selector in selectors.items():
        for name, server in selector.conflicts:
            where = server._name_where.get(name, (server.file, server.line))  # type: ignore[attr-defined]
            build.warnings.append(ConfigError(f'conflicting server name "{name}" on {_addr_text(key)}, ignored',
                                              *where))
    if build.errors:
        return Plan(path=path, binds=[], selectors=selectors, limits={}, servers=servers, build=build)
    # NGINX binds "*:port" only when a server listens there, and selects by the accepting
    # socket's local address afterwards; per address family, as [::] does not cover IPv4.
    wildcards = {(":" in host, port) for host, port in by_addr if host in _WILDCARDS}
    binds = [key for key in by_addr if key[0] in _WILDCARDS or (":" in key[0], key[1]) not in wildcards]
    limits = {key: _limits(build, selectors[key].default) for key in binds}
    # `listen ... ssl` on any server of an address makes the address TLS, as in NGINX. A
    # wildcard bind accepts TLS when one of the addresses it serves is TLS; each connection
    # then follows its local address (plan.tls_context), as NGINX does.
    ssl_addrs = {key for key, group in by_addr.items()
                 if any(li.ssl and (li.host, li.port) == key for s in group for li in s.listens)}
    tls = listen_contexts(build, by_addr, selectors, ssl_addrs)
    tls_binds = frozenset(key for key in binds if any(
        a == key or (key[0] in _WILDCARDS and a[1] == key[1] and (":" in a[0]) == (":" in key[0]))
        for a in ssl_addrs))
    main = build.main_values
    plan = Plan(
        path=path, binds=binds, selectors=selectors, limits=limits, servers=servers,
        worker_processes=main["worker_processes"][0] if "worker_processes" in main else 1,
        error_log=(main["error_log"][0] if "error_log" in main
                   else build.http.get("error_log", ("stderr", "error")) if build.http else ("stderr", "error")),
        pid=build.path(main["pid"][0][0]) if "pid" in main else None,
        worker_shutdown_timeout=(main["worker_shutdown_timeout"][0] if "worker_shutdown_timeout" in main
                                 else 10.0),
        tls=tls, tls_binds=tls_binds,
        warnings=list(build.warnings),
        pools=build.shared["proxy"]["pools"](),
        resources=[r for module in build.modules for r in module.resources(build)],
        build=build,
    )
    build.plan = plan  # for handlers that report on the whole Plan (the api module's statistics)
    return plan


def _addr_text(key: tuple[str, int]) -> str:
    """An address as NGINX prints it: ``0.0.0.0:80``, ``[::1]:8080``."""
    host, port = key
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _limits(build: Build, server: ServerPlan) -> HttpLimits:
    level = server._level  # type: ignore[attr-defined]
    limits = HttpLimits()
    limits.client_header_timeout = level.get("client_header_timeout", limits.client_header_timeout)
    ka = level.get("keepalive_timeout")
    if ka is not None:
        limits.keepalive_timeout = ka
    lv = level
    while lv is not None:  # the level whose keepalive_timeout is in force gives its header_timeout
        own = lv.own("keepalive_timeout")
        if own:
            args = own[-1][1].args
            if len(args) > 1:
                limits.keepalive_header = int(parse_time(args[1]))  # checked by the core module
            break
        lv = lv.parent
    limits.keepalive_requests = level.get("keepalive_requests", limits.keepalive_requests)
    if limits.keepalive_timeout <= 0:
        limits.keepalive_requests = 1  # keepalive_timeout 0: every answer closes
    limits.client_body_timeout = level.get("client_body_timeout", limits.client_body_timeout)
    limits.send_timeout = level.get("send_timeout", limits.send_timeout)
    limits.client_header_buffer_size = level.get("client_header_buffer_size", limits.client_header_buffer_size)
    buffers = level.get("large_client_header_buffers")
    if buffers is not None:
        limits.large_client_header_buffers = buffers[1]
        limits.max_header_bytes = buffers[0] * buffers[1]
    return limits


def _server(build: Build, level: Level) -> ServerPlan:
    d = level.directive
    assert d is not None
    listens = tuple(v for v, _ in level.own("listen")) or (Listen("0.0.0.0", 80, False, d.file, d.line),)
    names: list[str] = []
    where: dict[str, tuple[str, int]] = {}
    for value, sd in level.own("server_name"):
        names.extend(value)
        for name in value:
            where.setdefault(name, (sd.file, sd.line))
    rewrite: list[Any] = []
    server_rewriters: set[str] = set()
    for module in build.modules:
        try:
            found = module.server_handlers(build, level).get(Phase.REWRITE, ())
        except ConfigError as e:
            build.errors.append(e)
            continue
        if found:
            server_rewriters.add(module.name)
            rewrite.extend(found)
    locations = LocationMatcher([loc for c in level.children if c.ctx is Ctx.LOCATION
                                 for loc in [_location(build, c)] if loc is not None])
    log = tuple(_log_handlers(build, level))
    plan = ServerPlan(tuple(names) or ("",), names[0] if names else "", listens, tuple(rewrite), locations,
                      log, d.file, d.line, _unmatched(build, level, server_rewriters, log))
    plan._level = level  # type: ignore[attr-defined]
    plan._name_where = where  # type: ignore[attr-defined]
    return plan


def _unmatched(build: Build, level: Level, server_rewriters: set[str], log: tuple[Any, ...]) -> LocationPlan | None:
    """The handlers for requests of server ``level`` that match none of its locations.

    NGINX serves such a request with the server level's configuration: its ``auth_jwt``
    answers 401 before the 404, its ``root`` serves files. Rewrite handlers of modules that
    already ran in the server-rewrite phase are left out (they would run twice).
    """
    d = level.directive
    assert d is not None
    by_phase: dict[Phase, list[Any]] = {}
    known = {str(e) for e in build.errors}
    for module in build.modules:
        if module.name == "log":
            continue
        try:
            handlers = module.handlers(build, level)
        except ConfigError as e:
            if str(e) not in known:  # inherited settings were reported at the locations already
                build.errors.append(e)
            return None
        for phase, items in handlers.items():
            if phase is Phase.REWRITE and module.name in server_rewriters:
                continue
            by_phase.setdefault(phase, []).extend(items)
    content = by_phase.get(Phase.CONTENT, [])
    return LocationPlan(
        match=LocationMatch("", "", None),
        access=tuple(h for phase in _ACCESS_PHASES for h in by_phase.get(phase, ())),
        content=content[0] if len(content) == 1 else None,
        log=log + tuple(by_phase.get(Phase.LOG, ())),
        children=None,
        file=d.file,
        line=d.line,
    )


def _log_handlers(build: Build, level: Level) -> list[Any]:
    for module in build.modules:
        if module.name == "log":
            return list(module.handlers(build, level).get(Phase.LOG, []))
    return []


def _location(build: Build, level: Level) -> LocationPlan | None:
    """The plan of one location (and its nested ones); ``None`` when a module reported an
    error for it (added to ``build.errors``, the other locations are still built)."""
    d = level.directive
    assert d is not None
    by_phase: dict[Phase, list[Any]] = {}
    auto_redirect = False
    failed = False
    for module in build.modules:
        try:
            handlers = module.handlers(build, level)
        except ConfigError as e:
            build.errors.append(e)
            failed = True
            continue
        for phase, items in handlers.items():
            by_phase.setdefault(phase, []).extend(items)
        if handlers.get(Phase.CONTENT) and getattr(module, "auto_redirect", False):
            auto_redirect = True
    content = by_phase.get(Phase.CONTENT, [])
    if len(content) > 1:
        build.errors.append(ConfigError("more than one content handler in location", d.file, d.line))
        failed = True
    children = [loc for c in level.children if c.ctx is Ctx.LOCATION for loc in [_location(build, c)]
                if loc is not None]
    if failed:
        return None
    match: LocationMatch = level.location
    return LocationPlan(
        match=match,
        access=tuple(h for phase in _ACCESS_PHASES for h in by_phase.get(phase, ())),
        content=content[0] if content else None,
        log=tuple(by_phase.get(Phase.LOG, ())),
        children=LocationMatcher(children) if children else None,
        file=d.file,
        line=d.line,
        auto_redirect=auto_redirect and match.kind in ("", "^~", "=") and match.pattern.endswith("/"),
    )
