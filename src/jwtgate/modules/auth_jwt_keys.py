"""Key sources of the ``auth_jwt`` module: ``auth_jwt_key_file`` (static or with variables) and
``auth_jwt_key_request`` (a subrequest to a location of this configuration).

Part of :mod:`jwtgate.modules.auth_jwt` (split out by concept; not a module of its own). The
policy lives in :mod:`jwtgate.jose.sources` and :mod:`jwtgate.jose.remote`; this file binds them
to the configuration:

* a key file whose path holds variables becomes a :class:`DynamicKeyFile`, resolved per
  request (relative paths against the configuration prefix, as NGINX);
* ``auth_jwt_key_request uri`` is resolved, when the configuration compiles, to a location of
  the same server (NGINX's location rules), which must proxy (``proxy_pass``); the key source
  then fetches by running that location's content handler with a request of our own, as
  NGINX runs a subrequest, its answer collected in memory up to
  :data:`~jwtgate.jose.keys.MAX_JWKS_BYTES` (a larger one is cut off and refused). The
  location's access phase is not run (NGINX skips it for subrequests too), so an ``internal``
  location works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jwtgate.conf.spec import Ctx
from jwtgate.errors import HTTPError, KeySourceError, UpstreamError
from jwtgate.jose.keys import MAX_JWKS_BYTES
from jwtgate.modules.base import Phase

__all__ = ["DynamicKeyFile", "KeyRequest", "SubrequestFetch", "resolve_key_request"]


@dataclass(frozen=True, eq=False)
class DynamicKeyFile:
    """An ``auth_jwt_key_file`` whose path holds variables.

    Attributes:
        path: the compiled path.
        prefix: the configuration prefix relative paths are resolved against.
    """

    path: Any
    prefix: str

    def resolve(self, ctx: Any) -> str:
        """The file for this request.

        Raises:
            KeySourceError: the path is empty or holds a NUL byte.
        """
        import os

        value = self.path(ctx)
        if not value or "\x00" in value:
            raise KeySourceError(f'auth_jwt_key_file "{self.path.source}" resolved to an unusable path')
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(self.prefix, value))


@dataclass(frozen=True, eq=False)
class KeyRequest:
    """An ``auth_jwt_key_request uri``, not yet resolved to its location."""

    uri: str
    directive: Any


class _LevelRef:
    """A location :class:`~jwtgate.conf.compiler.Level` seen as the router wants a location."""

    __slots__ = ("level", "match", "children", "auto_redirect")

    def __init__(self, level: Any, children: Any) -> None:
        self.level = level
        self.match = level.location
        self.children = children
        self.auto_redirect = False


def _matcher(levels: list[Any]) -> Any:
    from jwtgate.runtime.router import LocationMatcher

    refs = []
    for level in levels:
        if level.ctx is not Ctx.LOCATION or level.location is None:
            continue
        nested = [c for c in level.children if c.ctx is Ctx.LOCATION]
        refs.append(_LevelRef(level, _matcher(nested) if nested else None))
    return LocationMatcher(refs)


def _server_of(level: Any) -> Any:
    while level is not None and level.ctx is not Ctx.SERVER:
        level = level.parent
    return level


def resolve_key_request(build: Any, loc: Any, request: KeyRequest) -> tuple[Any, Any]:
    """The server level and the content handler that ``auth_jwt_key_request`` fetches through.

    Raises:
        ConfigError: located at the directive: no location of the server matches the URI, or
            it does not proxy.
    """
    d = request.directive
    server = _server_of(loc)
    if server is None:
        raise build.error('"auth_jwt_key_request" needs a server', d)
    shared = build.shared["auth_jwt"].setdefault("matchers", {})
    matcher = shared.get(id(server))
    if matcher is None:
        matcher = shared[id(server)] = _matcher(server.children)
    path = request.uri.partition("?")[0]
    found = matcher.lookup(path)
    if found is None or found[2]:
        raise build.error(f'no location for "auth_jwt_key_request {request.uri}" in this server', d)
    target = found[0].level
    if not target.own("proxy_pass"):
        raise build.error(f'the location of "auth_jwt_key_request {request.uri}" (line '
                          f'{target.directive.line}) has no "proxy_pass"', d)
    handlers = build.shared["auth_jwt"].setdefault("content", {})
    content = handlers.get(id(target))
    if content is None:
        proxy = next((m for m in build.modules if m.name == "proxy"), None)
        found_content = proxy.handlers(build, target).get(Phase.CONTENT) if proxy is not None else None
        if not found_content:
            raise build.error(f'the location of "auth_jwt_key_request {request.uri}" cannot be fetched', d)
        content = handlers[id(target)] = found_content[0]
    return server, content


class _BodyCollector:
    """A responder that keeps the answer in memory, at most ``limit`` body bytes."""

    __slots__ = ("limit", "status", "started", "finished", "keep_alive", "head_only", "_parts", "_size")

    writing_paused = False
    upgrade_pending = False

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.started = self.finished = False
        self.keep_alive = True
        self.head_only = False
        self._parts: list[bytes] = []
        self._size = 0

    def start(self, status: int, headers: Any, length: int | None, own_fields: bool = True) -> None:
        self.status = status
        self.started = True
        if length is not None and length > self.limit:
            raise UpstreamError(502, f"key set response announces {length} bytes, more than {self.limit}")

    def write(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            # Raised inside the upstream parser: the exchange fails and the connection is dropped.
            raise UpstreamError(502, f"key set response larger than {self.limit} bytes")
        self._parts.append(bytes(data))

    def flush(self) -> None: ...

    def end(self) -> None:
        self.finished = True

    def on_writable(self, pause: Any, resume: Any) -> None: ...

    def clear_writable(self) -> None: ...

    async def drain(self) -> None: ...

    def send(self, status: int, headers: Any = None, body: bytes | None = None, content_type: bytes = b"") -> None:
        self.start(status, headers or [], len(body or b""))
        self.write(body or b"")
        self.end()

    def body(self) -> bytes:
        return b"".join(self._parts)


class SubrequestFetch:
    """Fetches a JWK Set through a location's content handler (``auth_jwt_key_request``).

    Args:
        name: for messages, e.g. ``auth_jwt_key_request "/_jwks"``.
        uri: the request URI (path and optional query).
        content: the location's content handler (``await content(ctx)``).
        limit: most body bytes accepted.
    """

    def __init__(self, name: str, uri: str, content: Any, limit: int = MAX_JWKS_BYTES) -> None:
        self.name = name
        self.uri = uri
        self.path, _, self.args = uri.partition("?")
        self.content = content
        self.limit = limit

    def __repr__(self) -> str:
        return f"<SubrequestFetch {self.uri}>"

    async def __call__(self) -> bytes:
        """The body of a ``200`` answer.

        Raises:
            KeySourceError: the upstream failed, answered another status, or sent too much.
        """
        # The request context is the runtime's; imported here, as only a running gateway fetches.
        from jwtgate.runtime.context import ConnectionInfo, RequestContext

        ctx = RequestContext(ConnectionInfo(("127.0.0.1", 0), ("127.0.0.1", 0), 0), "GET", self.uri,
                             self.path, self.args, "1.1", [], {})
        sink = _BodyCollector(self.limit)
        ctx.responder = sink
        try:
            await self.content(ctx)
        except (UpstreamError, HTTPError) as err:
            raise KeySourceError(err.reason) from None
        if sink.status != 200:
            raise KeySourceError(f"the key set location answered {sink.status or 'nothing'}")
        if not sink.finished:
            raise KeySourceError("the key set response was cut short")
        return sink.body()
