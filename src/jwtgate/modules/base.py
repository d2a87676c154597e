"""What a module is: its directives, its variables and what it adds to each location's phases.

As in NGINX, a feature is a module. The core lists modules explicitly (``MODULES`` in
``jwtgate.modules``); nothing registers itself on import.

Phases, in the order a request runs them (NGINX's ``NGX_HTTP_*_PHASE``):

``REWRITE``     ``set``, ``return`` (before authentication, as NGINX's rewrite phase)
``PREACCESS``   limits that need no identity (``limit_req`` keyed on the address)
``ACCESS``      authentication (``auth_jwt``) and its ``auth_jwt_require`` rules
``POSTACCESS``  limits keyed on verified identity (``limit_req`` keyed on ``$jwt_*``)
``CONTENT``     the response: ``proxy_pass``
``LOG``         ``access_log``
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from jwtgate.conf.spec import DirectiveSpec

if TYPE_CHECKING:
    from jwtgate.conf.compiler import Build, Level
    from jwtgate.conf.tree import Directive

__all__ = ["DEFER", "DONE", "Phase", "AccessHandler", "ContentHandler", "LogHandler", "Module", "Resource"]


#: Returned by a handler that has already sent the whole response.
DONE = -1

#: What an access handler's optional synchronous ``check(ctx)`` returns when this request
#: needs the handler's coroutine after all (it must wait for something, e.g. a key fetch).
#: Handlers with a ``check`` spare the common request a coroutine; see Dispatcher.
DEFER = object()


class Phase(enum.IntEnum):
    """Request phases in execution order."""

    REWRITE = 0
    PREACCESS = 1
    ACCESS = 2
    POSTACCESS = 3
    CONTENT = 4
    LOG = 5


#: An access-type handler: ``await h(ctx)`` returns ``None`` to go on, a status code to
#: finish the request with (headers for that answer are put on ``ctx.response_headers``),
#: or :data:`DONE` when it has answered the request itself.
AccessHandler = Callable[[Any], Awaitable[int | None]]
#: The content handler: produces the whole response through ``ctx.responder``.
ContentHandler = Callable[[Any], Awaitable[None]]
#: A log handler: called once per request after the response is sent; must not block.
LogHandler = Callable[[Any], None]


class Resource(Protocol):
    """Something a configuration needs while it serves: log files, a Redis client, zone state.

    Modules list them in :meth:`Module.resources`; the compiled Plan carries them and the
    running gateway drives them: :meth:`open` before the Plan serves (at start, or on reload
    before the new Plan is swapped in), :meth:`flush` when a reload replaces the Plan,
    :meth:`reopen` on ``SIGUSR1``, :meth:`close` when the Plan retires (after a reload, once
    requests in flight are done) or the gateway stops. Compiling a configuration never opens
    anything, so ``jwtgate check`` has no side effects.
    """

    async def open(self, keep: dict[str, Any]) -> None:
        """Acquire what the resource needs.

        Args:
            keep: a dict owned by the running gateway and handed to every Plan it serves, for
                what outlives one configuration (a writer thread, zone states kept across
                reloads as NGINX keeps shared memory zones).

        Raises:
            OSError: the resource cannot be opened (start or reload fails, with the message).
        """
        ...

    def flush(self) -> None:
        """Write out anything buffered (the Plan is being replaced by a reload)."""
        ...

    def reopen(self) -> None:
        """Reopen files (log rotation, ``SIGUSR1``); must not raise."""
        ...

    async def close(self) -> None:
        """Flush and release everything; must not raise."""
        ...


class Module:
    """Base class of every module. Subclasses set ``name`` and ``directives``.

    The compiler calls, in this order: :meth:`declare` once; :meth:`predeclare` for each of
    the module's directives (to declare names other directives may use before their
    definition, as ``map`` variables); :meth:`parse` for each directive; :meth:`finish` once;
    :meth:`handlers` for each location and :meth:`server_handlers` for each server;
    :meth:`resources` once.
    """

    name: str = ""
    directives: tuple[DirectiveSpec, ...] = ()
    #: Whether a location whose content handler this module provides redirects a request for
    #: its name without the trailing ``/`` to it (NGINX's ``auto_redirect``, set by ``proxy_pass``).
    auto_redirect: bool = False

    def declare(self, build: Build) -> None:
        """Register the module's variables in ``build.variables``."""

    def predeclare(self, build: Build, level: Level, d: Directive) -> None:
        """First pass over the module's directives, before any value is compiled."""

    def parse(self, build: Build, level: Level, d: Directive, spec: DirectiveSpec) -> Any:
        """Check and convert one directive; the result is stored on ``level`` under its name.

        Raises:
            ConfigError: located at the directive, for a bad argument.
        """
        return d.args

    def finish(self, build: Build) -> None:
        """After every directive is parsed: build shared objects (upstream groups, zones)."""

    def handlers(self, build: Build, loc: Level) -> dict[Phase, list[Any]]:
        """The handlers this module adds to location ``loc``, by phase."""
        return {}

    def server_handlers(self, build: Build, server: Level) -> dict[Phase, list[Any]]:
        """The handlers this module runs for every request of ``server`` before its location
        is chosen (NGINX's server-rewrite phase; only ``Phase.REWRITE`` is used)."""
        return {}

    def resources(self, build: Build) -> list[Resource]:
        """What the running gateway must open, flush, reopen and close for this module
        (called once, after every location's handlers are built)."""
        return []
