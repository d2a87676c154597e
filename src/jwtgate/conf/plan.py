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
from jwtgate.errors import ConfigError
from jwtgate.http.server import HttpLimits
from jwtgate.modules.base import Phase
from jwtgate.modules.core import Listen, LocationMatch, make_return_handler
from jwtgate.runtime.router import LocationMatcher, ServerSelector

__all__ = ["Plan", "ServerPlan", "LocationPlan", "compile_plan"]

_ACCESS_PHASES = (Phase.REWRITE, Phase.PREACCESS, Phase.ACCESS, Phase.POSTACCESS)


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
    """

    match: LocationMatch
    access: tuple[Any, ...]
    content: Any
    log: tuple[Any, ...]
    children: LocationMatcher | None
    file: str
    line: int

    def __repr__(self) -> str:
        kind = f"{self.match.kind} " if self.match.kind else ""
        return f"<location {kind}{self.match.pattern} {self.file}:{self.line}>"


@dataclass(eq=False)
class ServerPlan:
    """One virtual server.

    Attributes:
        names: lowercased ``server_name`` values.
        primary_name: the first name (``$server_name``).
        listens: its ``listen`` addresses.
        rewrite: server-level ``return`` handlers (run before location matching).
        locations: its :class:`LocationMatcher`.
        log: log handlers for requests that match no location.
    """

    names: tuple[str, ...]
    primary_name: str
    listens: tuple[Listen, ...]
    rewrite: tuple[Any, ...]
    locations: LocationMatcher
    log: tuple[Any, ...]
    file: str
    line: int

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
        worker_processes, error_log, pid: main-context settings.
        warnings: non-fatal findings for ``jwtgate check``.
        pools, access_logs: resources the running gateway opens and closes.
    """

    path: str
    binds: list[tuple[str, int]]
    selectors: dict[tuple[str, int], ServerSelector]
    limits: dict[tuple[str, int], HttpLimits]
    servers: list[ServerPlan]
    worker_processes: int = 1
    error_log: tuple[str, str] = ("stderr", "error")
    pid: str | None = None
    warnings: list[ConfigError] = field(default_factory=list)
    pools: list[Any] = field(default_factory=list)
    access_logs: list[Any] = field(default_factory=list)
    build: Build | None = None

    def select_server(self, local: str, port: int, host: str) -> ServerPlan:
        """The server for a request that arrived on ``local:port`` with ``Host: host``."""
        selector = self.selectors.get((local, port))
        if selector is None:
            selector = self.selectors.get(("0.0.0.0", port)) or self.selectors.get(("::", port))
            if selector is None:
                selector = next(iter(self.selectors.values()))
        return selector.select(host)


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
    try:
        plan = _plan(build, path)
    except ConfigError as e:
        raise ConfigErrors([e]) from None
    return plan


def _plan(build: Build, path: str) -> Plan:
    servers: list[ServerPlan] = []
    for level in build.servers():
        servers.append(_server(build, level))
    if not servers:
        raise ConfigError("no \"server\" is defined", path, None)
    by_addr: dict[tuple[str, int], list[ServerPlan]] = {}
    defaults: dict[tuple[str, int], ServerPlan] = {}
    for server in servers:
        for listen in server.listens:
            key = (listen.host, listen.port)
            by_addr.setdefault(key, []).append(server)
            if listen.default_server:
                if key in defaults:
                    raise ConfigError(f"a duplicate default server for {listen.host}:{listen.port}",
                                      listen.file, listen.line)
                defaults[key] = server
    selectors = {key: ServerSelector(group, defaults.get(key)) for key, group in by_addr.items()}
    wildcard_ports = {port for host, port in by_addr if host in ("0.0.0.0", "::")}
    binds = [key for key in by_addr if key[0] in ("0.0.0.0", "::") or key[1] not in wildcard_ports]
    limits = {key: _limits(build, selectors[key].default) for key in binds}
    main = build.main_values
    plan = Plan(
        path=path, binds=binds, selectors=selectors, limits=limits, servers=servers,
        worker_processes=main["worker_processes"][0] if "worker_processes" in main else 1,
        error_log=(main["error_log"][0] if "error_log" in main
                   else build.http.get("error_log", ("stderr", "error")) if build.http else ("stderr", "error")),
        pid=build.path(main["pid"][0][0]) if "pid" in main else None,
        warnings=list(build.warnings),
        pools=build.shared["proxy"]["pools"](),
        access_logs=list(build.shared["log"]["files"].values()),
        build=build,
    )
    if plan.worker_processes > 1:
        d = main["worker_processes"][1]
        build.warn(f"worker_processes {plan.worker_processes}: jwtgate serves with one process for "
                   "now; rate-limit state is per process", d)
        plan.warnings = list(build.warnings)
    return plan


def _limits(build: Build, server: ServerPlan) -> HttpLimits:
    level = server._level  # type: ignore[attr-defined]
    limits = HttpLimits()
    limits.client_header_timeout = level.get("client_header_timeout", limits.client_header_timeout)
    ka = level.get("keepalive_timeout")
    if ka is not None:
        limits.keepalive_timeout = ka
    limits.keepalive_requests = level.get("keepalive_requests", limits.keepalive_requests)
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
    for value, _ in level.own("server_name"):
        names.extend(value)
    rewrite = tuple(make_return_handler(v) for v, _ in level.own("return")[-1:])
    locations = LocationMatcher([_location(build, c) for c in level.children if c.ctx is Ctx.LOCATION])
    log = tuple(_log_handlers(build, level))
    plan = ServerPlan(tuple(names), names[0] if names else "", listens, rewrite, locations, log,
                      d.file, d.line)
    plan._level = level  # type: ignore[attr-defined]
    return plan


def _log_handlers(build: Build, level: Level) -> list[Any]:
    for module in build.modules:
        if module.name == "log":
            return list(module.handlers(build, level).get(Phase.LOG, []))
    return []


def _location(build: Build, level: Level) -> LocationPlan:
    d = level.directive
    assert d is not None
    by_phase: dict[Phase, list[Any]] = {}
    for module in build.modules:
        for phase, handlers in module.handlers(build, level).items():
            by_phase.setdefault(phase, []).extend(handlers)
    access = tuple(h for phase in _ACCESS_PHASES for h in by_phase.get(phase, ()))
    content = by_phase.get(Phase.CONTENT, [])
    if len(content) > 1:
        raise ConfigError("more than one content handler (proxy_pass, return...) in location", d.file, d.line)
    children = [c for c in level.children if c.ctx is Ctx.LOCATION]
    return LocationPlan(
        match=level.location,
        access=access,
        content=content[0] if content else None,
        log=tuple(by_phase.get(Phase.LOG, ())),
        children=LocationMatcher([_location(build, c) for c in children]) if children else None,
        file=d.file,
        line=d.line,
    )
