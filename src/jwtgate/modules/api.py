"""The api module (NGINX Plus ``ngx_http_api_module``): the REST API in a location with ``api``.

``api [write=on|off];`` makes the location answer the NGINX Plus API. Paths are relative to the
location's prefix (``location /api { api; }``):

``/api/``                          the supported versions, ``[1, 2, ..., 9]`` (9 is current)
``/api/N/``                        the root endpoints of version N
``/api/N/http/``                   the http endpoints
``/api/N/http/keyvals/``           every keyval zone: ``{"zone": {"key": "value"}}``
``/api/N/http/keyvals/ZONE``       ``GET`` (``?key=`` for one key), ``POST`` (add keys: 201),
                                   ``PATCH`` (set, re-time or, with ``null``, delete keys: 204),
                                   ``DELETE`` (empty the zone: 204)
``/api/N/nginx``, ``/connections``, ``/http/requests``, ``/http/server_zones``,
``/http/location_zones``, ``/http/upstreams``, ``/http/limit_reqs``, ``/jwtgate``
                                   read-only statistics from :mod:`jwtgate.observability.stats`

Errors are NGINX Plus's error object, ``{"error": {"status", "text", "code"}, "request_id",
"href"}``: 404 ``UnknownVersion``, ``PathNotFound``, ``KeyvalNotFound``, ``KeyvalKeyNotFound``;
405 ``MethodNotSupported``, ``MethodDisabled`` (a write without ``write=on``); 400
``KeyvalFormatError`` (JSON of the wrong shape, bad keys or values, ``expire`` in a zone
without ``timeout``); 415 ``JsonError`` (a body that is not JSON); 409 ``KeyvalKeyExists``; 413
``RequestEntityTooLarge``. ``?fields=a,b`` keeps only those fields of the objects returned.

The location is protected as NGINX's: its ``allow``/``deny`` and ``auth_jwt`` run in the access
phase, before this content handler.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import unquote

from jwtgate.conf.spec import Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_flag
from jwtgate.errors import StateError
from jwtgate.modules.base import Module, Phase
from jwtgate.modules.keyval import KeyvalZone, apply_change_async, keyval_zones
from jwtgate.state.keyval import MAX_VALUE_BYTES, KeyvalError, check_key

__all__ = ["ApiModule", "ApiHandler", "VERSIONS", "CURRENT_VERSION", "MAX_BODY", "HREF"]

log = logging.getLogger("jwtgate.api")

#: The current NGINX Plus API version; 1..9 are accepted, as NGINX Plus R33+ does.
CURRENT_VERSION = 9
VERSIONS = tuple(range(1, CURRENT_VERSION + 1))
#: Largest request body the API reads, bytes (below the location's ``client_max_body_size``
#: when that is smaller); NGINX Plus answers 413 past its body buffer likewise.
MAX_BODY = 256 * 1024
#: Where NGINX Plus's error objects point.
HREF = "https://nginx.org/en/docs/http/ngx_http_api_module.html"

ROOT_ENDPOINTS = ["nginx", "connections", "http", "jwtgate"]
HTTP_ENDPOINTS = ["requests", "server_zones", "location_zones", "limit_reqs", "keyvals", "upstreams"]
#: Collections whose members are named objects: ``fields`` applies to each member.
_COLLECTIONS = {("http", "server_zones"), ("http", "location_zones"), ("http", "upstreams"),
                ("http", "limit_reqs")}
_WRITES = ("POST", "PATCH", "DELETE")
_JSON = b"application/json"

DIRECTIVES = (
    DirectiveSpec(
        "api", "api", Ctx.LOCATION, 0, 1, inherit=Inherit.NONE,
        syntax="api [write=on|off];",
        doc="Turns on the NGINX Plus REST API in this location: `/api/` lists the versions "
            "(1 to 9), `/api/9/http/keyvals/ZONE` reads and (with `write=on`) adds, changes and "
            "deletes keyval entries, `/api/9/nginx`, `/connections`, `/http/requests`, "
            "`/http/server_zones`, `/http/location_zones`, `/http/upstreams`, `/http/limit_reqs` "
            "and `/jwtgate` report statistics. Protect the location with `allow`/`deny` and/or "
            "`auth_jwt`, which run before it.",
        default="write=off",
        nginx_notes="Only the endpoints listed are provided (no `/slabs`, `/stream`, `/resolvers`, "
                    "upstream changes). A body that is not JSON is 415 `JsonError`, JSON of the wrong "
                    "shape 400 `KeyvalFormatError`; a full zone is 507 `KeyvalZoneFull`; a `sync` "
                    "zone whose Redis server is unreachable refuses writes with 503 "
                    "`KeyvalSyncUnavailable`."),
)


class ApiError(Exception):
    """An API error answer (status, NGINX Plus code, text)."""

    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text


def _error_object(ctx: Any, err: ApiError) -> dict[str, Any]:
    if not ctx.request_id:
        ctx.request_id = os.urandom(16).hex()
    return {"error": {"status": err.status, "text": err.text, "code": err.code},
            "request_id": ctx.request_id, "href": HREF}


class ApiHandler:
    """The content handler of a location with ``api``.

    Args:
        write: whether ``POST``/``PATCH``/``DELETE`` are allowed (``write=on``).
        prefix: the location's prefix (stripped from the URI), ``""`` for regex locations.
        build: the configuration's Build (its zones; ``build.plan`` for the statistics).
        max_body: the largest request body read, bytes.
    """

    def __init__(self, write: bool, prefix: str, build: Any, max_body: int) -> None:
        self.write = write
        self.prefix = prefix.rstrip("/")
        self.build = build
        self.max_body = max_body

    def __repr__(self) -> str:
        return f"<ApiHandler {self.prefix or '~'} write={'on' if self.write else 'off'}>"

    async def __call__(self, ctx: Any) -> None:
        try:
            status, obj = await self._route(ctx)
        except ApiError as e:
            status, obj = e.status, _error_object(ctx, e)
        if status in (201, 204):
            ctx.responder.send(status, [], b"")
            return
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        ctx.responder.send(status, [], body, content_type=_JSON)

    # -- routing ---------------------------------------------------------------------------

    def _path(self, ctx: Any) -> list[str]:
        uri = ctx.uri
        if self.prefix and uri.startswith(self.prefix):
            uri = uri[len(self.prefix):]
        return [p for p in uri.split("/") if p]

    async def _route(self, ctx: Any) -> tuple[int, Any]:
        method = ctx.method
        parts = self._path(ctx)
        if not parts:
            if method not in ("GET", "HEAD"):
                raise ApiError(405, "MethodNotSupported", "method not supported")
            return 200, list(VERSIONS)
        version = parts[0]
        if not (version.isdigit() and len(version) <= 2 and int(version) in VERSIONS):
            raise ApiError(404, "UnknownVersion", "unknown version")
        rest = tuple(parts[1:])
        query = _query(ctx.args) if ctx.args else {}
        if method in _WRITES and not self.write:
            raise ApiError(405, "MethodDisabled", "method disabled")
        if rest[:2] == ("http", "keyvals"):
            if len(rest) > 3:
                raise ApiError(404, "PathNotFound", "path not found")
            return await self._keyvals(ctx, rest[2] if len(rest) == 3 else None, query)
        if method not in ("GET", "HEAD"):
            raise ApiError(405, "MethodNotSupported", "method not supported")
        if not rest:
            return 200, list(ROOT_ENDPOINTS)
        if rest == ("http",):
            return 200, list(HTTP_ENDPOINTS)
        obj = self._stats(rest)
        if obj is None:
            raise ApiError(404, "PathNotFound", "path not found")
        fields = query.get("fields")
        if fields is not None:
            obj = _select(obj, fields[-1], rest in _COLLECTIONS)
        return 200, obj

    def _stats(self, parts: tuple[str, ...]) -> Any:
        try:
            from jwtgate.observability import stats  # another module; absent in older trees
        except ImportError:
            return None
        plan = getattr(self.build, "plan", None)
        try:
            return stats.api_get(plan, parts)
        except Exception:
            log.exception("API statistics for /%s failed", "/".join(parts))
            raise ApiError(500, "InternalError", "internal error") from None

    # -- keyvals -----------------------------------------------------------------------------

    async def _keyvals(self, ctx: Any, name: str | None, query: dict[str, list[str]]) -> tuple[int, Any]:
        zones = keyval_zones(self.build)
        method = ctx.method
        if name is None:
            if method not in ("GET", "HEAD"):
                raise ApiError(405, "MethodNotSupported", "method not supported")
            fields = query.get("fields")
            if fields is not None:
                wanted = {f for f in fields[-1].split(",") if f}
                return 200, {n: ({k: v for k, (v, _) in z.store.items().items()} if n in wanted else {})
                             for n, z in zones.items()}
            return 200, {n: {k: v for k, (v, _) in z.store.items().items()} for n, z in zones.items()}
        zone = zones.get(name)
        if zone is None:
            raise ApiError(404, "KeyvalNotFound", "keyval not found")
        if method in ("GET", "HEAD"):
            items = zone.store.items()
            keys = query.get("key")
            if keys is not None:
                key = keys[-1]
                hit = items.get(key)
                if hit is None:
                    raise ApiError(404, "KeyvalKeyNotFound", "keyval key not found")
                return 200, {key: hit[0]}
            return 200, {k: v for k, (v, _) in items.items()}
        if method == "DELETE":
            await self._apply(zone, ("clear", {}))
            return 204, None
        if method not in ("POST", "PATCH"):
            raise ApiError(405, "MethodNotSupported", "method not supported")
        body = await self._read_body(ctx)
        change = _parse_change(body, zone, method == "POST")
        await self._apply(zone, change)
        return (201 if method == "POST" else 204), None

    async def _apply(self, zone: KeyvalZone, change: Any) -> None:
        try:
            await apply_change_async(zone, change)
        except KeyvalError as e:
            raise ApiError(e.status, e.code, e.text) from None
        except StateError as e:
            raise ApiError(503, "KeyvalSyncUnavailable", f"keyval zone is not synchronised: {e.reason}") from None
        except OSError as e:
            log.error('keyval zone "%s": cannot write %s: %s', zone.name, zone.store.data_path, e)
            raise ApiError(500, "KeyvalStateError", "keyval state cannot be written") from None

    async def _read_body(self, ctx: Any) -> bytes:
        body = ctx.body
        if body is None or not body.present:
            return b""
        limit = self.max_body
        if body.length is not None and body.length > limit:
            ctx.responder.keep_alive = False
            body.start_discarding()
            raise ApiError(413, "RequestEntityTooLarge", "request entity too large")
        chunks: list[bytes] = []
        size = 0
        while True:
            data = await body.read()
            if not data:
                break
            size += len(data)
            if size > limit:
                ctx.responder.keep_alive = False
                body.start_discarding()
                raise ApiError(413, "RequestEntityTooLarge", "request entity too large")
            chunks.append(data)
        return b"".join(chunks)


def _parse_change(raw: bytes, zone: KeyvalZone, post: bool) -> Any:
    """The keyval change a POST or PATCH body describes.

    Raises:
        ApiError: 415 ``JsonError`` (not JSON), 400 ``KeyvalFormatError`` (wrong shape).
    """
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(415, "JsonError", "json error") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "KeyvalFormatError", "invalid JSON: an object is expected")
    if not obj:
        raise ApiError(400, "KeyvalFormatError", "key required")
    items: dict[str, Any] = {}
    for key, item in obj.items():
        problem = check_key(key, zone.kind)
        if problem:
            raise ApiError(400, "KeyvalFormatError", problem)
        if item is None:
            if post:
                raise ApiError(400, "KeyvalFormatError", f'invalid value of key "{_short(key)}"')
            items[key] = None
            continue
        value: str | None
        expire: int | None = None
        if isinstance(item, str):
            value = item
        elif isinstance(item, dict):
            unknown = set(item) - {"value", "expire"}
            if unknown:
                raise ApiError(400, "KeyvalFormatError", f'unknown field "{_short(sorted(unknown)[0])}"')
            value = item.get("value")
            if value is not None and not isinstance(value, str):
                raise ApiError(400, "KeyvalFormatError", f'invalid value of key "{_short(key)}"')
            if value is None and post:
                raise ApiError(400, "KeyvalFormatError", f'value required for key "{_short(key)}"')
            if "expire" in item:
                expire = item["expire"]
                if not isinstance(expire, int) or isinstance(expire, bool) or not 0 <= expire <= 2**53:
                    raise ApiError(400, "KeyvalFormatError", f'invalid expire of key "{_short(key)}"')
                if not zone.timeout:
                    raise ApiError(400, "KeyvalFormatError", "keyval timeout is not enabled")
            elif value is None:
                raise ApiError(400, "KeyvalFormatError", f'value required for key "{_short(key)}"')
        else:
            raise ApiError(400, "KeyvalFormatError", f'invalid value of key "{_short(key)}"')
        if value is not None:
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:  # an unpaired surrogate ("\ud800"): not storable text
                raise ApiError(400, "KeyvalFormatError", f'invalid value of key "{_short(key)}"') from None
            if size > MAX_VALUE_BYTES:
                raise ApiError(400, "KeyvalFormatError", f"value is longer than {MAX_VALUE_BYTES} bytes")
        items[key] = (value, expire)
    return ("post" if post else "patch", items)


def _query(args: str) -> dict[str, list[str]]:
    """The query arguments, percent-decoded as NGINX decodes them: a ``+`` stays a ``+``
    (``parse_qs`` made it a space, so ``?key=`` could not find a base64 ``jti`` such as
    ``ab+cd==`` that the zone holds)."""
    out: dict[str, list[str]] = {}
    for part in args.split("&"):
        if part:
            name, _, value = part.partition("=")
            out.setdefault(unquote(name), []).append(unquote(value))
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(text: str) -> str:
    return text[:64]


def _select(obj: Any, fields: str, collection: bool) -> Any:
    """NGINX Plus's ``?fields=``: keep only the named fields (of each member of a collection;
    an empty value leaves a collection's member names only)."""
    wanted = {f for f in fields.split(",") if f}
    if collection and isinstance(obj, dict):
        return {name: ({k: v for k, v in member.items() if k in wanted} if isinstance(member, dict) else member)
                for name, member in obj.items()}
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if k in wanted}
    return obj


class ApiModule(Module):
    """``api``."""

    name = "api"
    directives = DIRECTIVES
    #: the static module serves no files where this module answers
    content_directives = ("api",)

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        write = False
        for arg in d.args:
            key, eq, value = arg.partition("=")
            if key != "write" or not eq:
                raise build.error(f'invalid parameter "{arg}"', d)
            try:
                write = parse_flag(value)
            except ValueError:
                raise build.error(f'invalid parameter "{arg}"', d) from None
        return write

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        own = loc.own("api")
        if not own:
            return {}
        match = loc.location
        kind = getattr(match, "kind", "")
        prefix = getattr(match, "pattern", "") if kind in ("", "=", "^~") else ""
        limit = loc.get("client_max_body_size", MAX_BODY)
        max_body = min(MAX_BODY, limit) if limit else MAX_BODY
        return {Phase.CONTENT: [ApiHandler(own[-1][0], prefix, build, max_body)]}
