"""Compile a directive tree into a frozen :class:`~jwtgate.conf.plan.Plan`.

Steps, as NGINX's configuration cycle: check every directive against its module's spec
(context, arguments, block); let modules declare names (``map`` and ``set`` variables, regex
named captures); parse each directive into a typed value on its level (http, server,
location); merge outer levels into inner ones by each directive's inheritance rule; ask each
module for its handlers per location (:mod:`jwtgate.conf.plan`). Errors are collected rather
than raised at the first: the spec checks, declarations and parses all run before the first
report, so ``jwtgate check`` lists every error of those stages in one run (the later stages
run only on a configuration that passed them, as they need its objects). Nothing here touches a
socket; key files and other static resources are read once, here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

from jwtgate.clock import SYSTEM_CLOCK, Clock
from jwtgate.conf.spec import Ctx, DirectiveSpec, Inherit
from jwtgate.conf.tree import Directive
from jwtgate.errors import ConfigError
from jwtgate.vars.complex import ComplexValue, compile_complex
from jwtgate.vars.registry import VariableRegistry

__all__ = ["Build", "Level", "ConfigErrors", "compile_tree"]

_LEVEL_CTX = (Ctx.HTTP, Ctx.SERVER, Ctx.LOCATION)


class ConfigErrors(ConfigError):
    """Several configuration errors found in one pass; ``errors`` lists them in file order."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.message, first.file, first.line)


class Level:
    """One http, server or location block while it is being compiled.

    Values are stored per directive name as ``(value, directive)`` pairs; :meth:`get` and
    :meth:`get_all` apply NGINX's inheritance (see :class:`~jwtgate.conf.spec.Inherit`).
    """

    def __init__(self, ctx: Ctx, parent: Level | None, directive: Directive | None, build: Build) -> None:
        self.ctx = ctx
        self.parent = parent
        self.directive = directive
        self.build = build
        self.values: dict[str, list[tuple[Any, Directive]]] = {}
        self.groups: set[str] = set()
        self.children: list[Level] = []
        #: filled by the core module for locations: ("=", "/x"), ("", "/p/"), ("~", regex)...
        self.location: Any = None

    def __repr__(self) -> str:
        where = f" {self.directive.file}:{self.directive.line}" if self.directive else ""
        return f"<Level {self.ctx.label}{where}>"

    def store(self, spec: DirectiveSpec, value: Any, d: Directive) -> None:
        self.values.setdefault(spec.name, []).append((value, d))
        self.groups.add(spec.merge_group)

    def own(self, name: str) -> list[tuple[Any, Directive]]:
        """Values set at this very level."""
        return self.values.get(name, [])

    def get(self, name: str, default: Any = None) -> Any:
        """The effective single value of ``name`` here (inner level wins), or ``default``."""
        level: Level | None = self
        while level is not None:
            own = level.values.get(name)
            if own:
                return own[-1][0]
            level = level.parent
        return default

    def get_all(self, name: str) -> list[Any]:
        """The effective list of an array-like directive (NGINX's all-or-nothing inheritance)."""
        group = self.build.spec_group(name)
        level: Level | None = self
        while level is not None:
            if group in level.groups:
                return [v for v, _ in level.values.get(name, [])]
            level = level.parent
        return []

    def where(self, name: str) -> Directive | None:
        """The directive that set the effective value of ``name``, for error messages."""
        level: Level | None = self
        while level is not None:
            own = level.values.get(name)
            if own:
                return own[-1][1]
            level = level.parent
        return None


class Build:
    """Everything shared while one configuration compiles.

    Attributes:
        prefix: directory relative paths are resolved against (the main file's directory,
            NGINX's conf prefix).
        variables: the variable registry modules fill.
        shared: per-module objects (upstream groups, zones, log formats), by module name.
        errors, warnings: what ``jwtgate check`` prints.
        clock: the clock handed to runtime objects.
    """

    def __init__(self, modules: Sequence[Any], prefix: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.modules = list(modules)
        self.prefix = prefix
        self.clock = clock
        self.variables = VariableRegistry()
        self.shared: dict[str, Any] = {}
        self.errors: list[ConfigError] = []
        self.warnings: list[ConfigError] = []
        self.specs: dict[str, list[DirectiveSpec]] = {}
        self.owner: dict[int, Any] = {}
        for module in self.modules:
            for spec in module.directives:
                self.specs.setdefault(spec.name, []).append(spec)
                self.owner[id(spec)] = module
        self.http: Level | None = None
        self.main_values: dict[str, tuple[Any, Directive]] = {}

    # -- helpers for modules ---------------------------------------------------------

    def path(self, path: str) -> str:
        """``path`` made absolute against the configuration prefix."""
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(self.prefix, path))

    def complex(self, text: str, d: Directive, **kw: Any) -> ComplexValue:
        """Compile ``text`` (an argument of ``d``) into a complex value; errors located at ``d``."""
        return compile_complex(text, self.variables, d.file, d.line, **kw)

    def error(self, message: str, d: Directive | None) -> ConfigError:
        """A ConfigError located at ``d`` (to raise)."""
        return ConfigError(message, d.file if d else None, d.line if d else None)

    def warn(self, message: str, d: Directive | None) -> None:
        self.warnings.append(self.error(message, d))

    def jwt_variable_used(self, names: Iterable[str]) -> str | None:
        """The first ``$jwt_*`` variable that ``names`` use, directly or through ``map``
        variables (transitively), or ``None``. Decides whether something can only be
        evaluated after authentication (``limit_req``'s phase rule, ``set`` warnings)."""
        deps = self.shared.get("var_deps", {})
        seen: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name.startswith("jwt_"):
                return name
            stack.extend(deps.get(name, ()))
        return None

    def spec_group(self, name: str) -> str:
        specs = self.specs.get(name)
        return specs[0].merge_group if specs else name

    def find_spec(self, d: Directive, ctx: Ctx) -> DirectiveSpec:
        """The spec of ``d`` valid in ``ctx``, with its arguments and block checked.

        Raises:
            ConfigError: NGINX's ``unknown directive``, ``not allowed here``, ``invalid number
                of arguments``, ``has no opening "{"`` or ``is not terminated by ";"``.
        """
        specs = self.specs.get(d.name)
        if not specs:
            raise self.error(f'unknown directive "{d.name}"', d)
        spec = next((s for s in specs if ctx & s.contexts), None)
        if spec is None:
            raise self.error(f'"{d.name}" directive is not allowed here', d)
        if spec.block and d.block is None:
            raise self.error(f'directive "{d.name}" has no opening "{{"', d)
        if not spec.block and d.block is not None:
            raise self.error(f'directive "{d.name}" is not terminated by ";"', d)
        if not spec.arity_ok(len(d.args)):
            raise self.error(f'invalid number of arguments in "{d.name}" directive', d)
        return spec

    def locations(self) -> Iterable[Level]:
        """Every location level, servers' first, depth first."""
        if self.http is None:
            return
        stack = list(reversed(self.http.children))
        while stack:
            level = stack.pop()
            if level.ctx is Ctx.LOCATION:
                yield level
            stack.extend(reversed(level.children))

    def servers(self) -> list[Level]:
        return [c for c in self.http.children if c.ctx is Ctx.SERVER] if self.http else []


def compile_tree(directives: Sequence[Directive], modules: Sequence[Any], prefix: str,
                 clock: Clock = SYSTEM_CLOCK) -> Build:
    """Check and parse ``directives`` (the main context) with ``modules``.

    Returns the :class:`Build` with every level parsed and every module finished; the
    caller (:func:`jwtgate.conf.plan.compile_plan`) turns it into a Plan.

    Raises:
        ConfigErrors: every error found, in order.
    """
    build = Build(modules, prefix, clock)
    for module in build.modules:
        module.declare(build)
    main, http_dirs = _split_main(directives, build)
    build.http = Level(Ctx.HTTP, None, None, build)
    pending: list[tuple[Level, Directive, DirectiveSpec]] = []
    for d in main:
        _collect_main(build, d, pending)
    _collect(build, build.http, http_dirs, pending)
    # Every directive that passed its spec check is predeclared and parsed even when others
    # failed, so that one run reports every error (a directive whose predeclaration failed is
    # not parsed: its parse would only repeat the error).
    failed: set[int] = set()
    for level, d, spec in pending:
        try:
            build.owner[id(spec)].predeclare(build, level, d)
        except ConfigError as e:
            build.errors.append(e)
            failed.add(id(d))
    for level, d, spec in pending:
        if id(d) in failed:
            continue
        if level is not None and level.parent is not None and level.parent.ctx is Ctx.LOCATION \
                and level.parent.location is None and level.directive is d:
            continue  # nested in a location that failed to parse: its checks would be noise
        try:
            value = build.owner[id(spec)].parse(build, level, d, spec)
        except ConfigError as e:
            build.errors.append(e)
            continue
        if level is None:
            build.main_values[spec.name] = (value, d)
        elif not spec.block or spec.block_ctx not in _LEVEL_CTX:
            level.store(spec, value, d)
    _raise_if(build)
    for module in build.modules:
        try:
            module.finish(build)
        except ConfigError as e:
            build.errors.append(e)
    _raise_if(build)
    return build


def _raise_if(build: Build) -> None:
    if build.errors:
        build.errors.sort(key=lambda e: (e.file or "", e.line or 0))
        raise ConfigErrors(build.errors)


def _split_main(directives: Sequence[Directive], build: Build) -> tuple[list[Directive], list[Directive]]:
    """Main-context directives, and the http-level ones.

    A file with an ``http {}`` block is a full nginx.conf. A file without one holds, as in
    the reference post, the http-level blocks at top level: main-only directives
    (``worker_processes``, ``events``...) stay in main, everything else is http.
    """
    has_http = any(d.name == "http" for d in directives)
    if has_http:
        http_blocks = [d for d in directives if d.name == "http"]
        if len(http_blocks) > 1:
            build.errors.append(build.error('"http" directive is duplicate', http_blocks[1]))
        return [d for d in directives if d.name != "http"], list(http_blocks[0].block or ())
    main, http = [], []
    for d in directives:
        specs = build.specs.get(d.name, [])
        is_main = any(s.contexts & (Ctx.MAIN | Ctx.EVENTS) for s in specs) and not any(
            s.contexts & Ctx.HTTP for s in specs)
        (main if is_main else http).append(d)
    return main, http


def _collect_main(build: Build, d: Directive, pending: list[Any]) -> None:
    try:
        spec = build.find_spec(d, Ctx.MAIN)
    except ConfigError as e:
        build.errors.append(e)
        return
    if d.name == "events":
        for inner in d.block or ():
            try:
                build.find_spec(inner, Ctx.EVENTS)
            except ConfigError as e:
                build.errors.append(e)
        return
    if d.name in build.main_values or any(p[1].name == d.name for p in pending if p[0] is None):
        build.errors.append(build.error(f'"{d.name}" directive is duplicate', d))
        return
    pending.append((None, d, spec))


def _collect(build: Build, level: Level, directives: Sequence[Directive], pending: list[Any]) -> None:
    """Check each directive of ``level``; recurse into server and location blocks."""
    seen: dict[str, Directive] = {}
    for d in directives:
        try:
            spec = build.find_spec(d, level.ctx)
        except ConfigError as e:
            build.errors.append(e)
            continue
        if spec.inherit is Inherit.VALUE and not spec.block:
            if d.name in seen:
                build.errors.append(build.error(f'"{d.name}" directive is duplicate', d))
                continue
            seen[d.name] = d
        if spec.block and spec.block_ctx in _LEVEL_CTX:
            # The block's own directive is parsed with the new level, so the module can
            # describe it (a location's match type and pattern, a server's names).
            child = Level(spec.block_ctx, level, d, build)  # type: ignore[arg-type]
            level.children.append(child)
            pending.append((child, d, spec))
            _collect(build, child, d.block or (), pending)
            continue
        if spec.block and spec.block_ctx is Ctx.UPSTREAM:
            valid = []
            for inner in d.block or ():
                try:
                    build.find_spec(inner, Ctx.UPSTREAM)
                except ConfigError as e:
                    build.errors.append(e)
                else:
                    valid.append(inner)
            if len(valid) != len(d.block or ()):
                # The module parses the block's directives that passed their checks only.
                d = dataclasses.replace(d, block=tuple(valid))
        pending.append((level, d, spec))
