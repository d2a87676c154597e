"""Static files and error pages: ``root``, ``alias``, ``index``, ``try_files``, ``error_page``.

NGINX's ``ngx_http_static_module``, ``ngx_http_index_module``, ``try_files`` and
``error_page`` of ``ngx_http_core_module``, for what a gateway serves beside its APIs (an
OpenAPI document, a developer portal) and for the pages of its own errors.

Static files. Every location without ``proxy_pass`` gets the static content handler, as in
NGINX: the file is ``root`` + ``$uri`` (``alias`` replaces the location's prefix instead; in
a regex location the ``alias`` value, with its captures, is the whole path). GET and HEAD
only (405 with ``Allow`` otherwise; POST to an existing file 405, to a missing one 404, as
NGINX). A directory URI ending in ``/`` is served by its first ``index`` file (an internal
redirect to ``$uri`` + the name, as NGINX) or 403 (no autoindex); a directory URI without the
``/`` gets a 301 to it. Headers: ``Content-Type`` from a built-in table of extensions (else
``default_type``), ``Last-Modified``, ``ETag`` (NGINX's ``"mtime-size"`` in hex),
``Accept-Ranges``; ``If-None-Match``/``If-Modified-Since`` (exact date, NGINX's default)
answer 304, ``If-Match``/``If-Unmodified-Since`` 412; one byte range answers 206 (with
``If-Range``), an unsatisfiable one 416, several ranges the whole file (200). The body is
sent with ``sendfile(2)`` when it can (``sendfile on`` over plain TCP; see
:meth:`Responder.sendfile`), otherwise read and written 64 KiB at a time with backpressure: memory stays bounded
whatever the file size. Symbolic links are followed (NGINX's ``disable_symlinks off``); a
path that would climb out of its ``alias`` through ``..`` is refused (404).

Error pages. ``error_page code ... [=[response]] uri;`` applies to the statuses the gateway
answers itself (401 and 403 of ``auth_jwt``, 404, 405, 413, 429, 500, 502, 503, 504...): an
internal redirect to ``uri`` (or to a named location ``@name``) of the same server, whose
handlers (rewrite, access, content: static, ``proxy_pass`` or ``return``) make the answer,
with the original code (``=code``: that code; ``=``: the code the page's location answers);
a ``uri`` that is a URL answers a 302 (or the ``=30x`` code) to it. One internal redirect per
error, as NGINX without ``recursive_error_pages``: a second error on the way answers the
plain built-in page of that error. Fields the error came with (``WWW-Authenticate``) are
kept on the page. A redirect target's ``internal`` flag is ignored (internal redirects may
reach ``internal`` locations, as in NGINX).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.errors import HTTPError, UpstreamError
from jwtgate.http.mime import MIME_TYPES, content_type_for
from jwtgate.http.writer import encode_fields, error_body, valid_field_value
from jwtgate.modules import core as _core
from jwtgate.modules.base import Module, Phase
from jwtgate.modules.rewrite import absolute_location, redirect_to_location

__all__ = ["StaticModule", "StaticHandler", "ErrorPages", "MIME_TYPES", "internal_redirect", "send_error_page"]

log = logging.getLogger("jwtgate.static")

SL = Ctx.SERVER | Ctx.LOCATION

DIRECTIVES = (
    DirectiveSpec("root", "static", HSL, 1, 1, default="html",
                  syntax="root path;",
                  doc="The directory static files are served from: the file of a request is "
                      "`root` + `$uri`. May hold variables. A relative path is relative to the "
                      "configuration file's directory.",
                  nginx_notes="NGINX resolves a relative root against its prefix; jwtgate against the "
                              "directory of the main configuration file."),
    DirectiveSpec("alias", "static", Ctx.LOCATION, 1, 1, inherit=Inherit.NONE,
                  syntax="alias path;",
                  doc="Replaces the location's prefix with `path` to find the file "
                      "(`location /docs/ { alias /srv/portal/; }` serves `/docs/a.html` from "
                      "`/srv/portal/a.html`). In a regex location it is the whole path and should "
                      "use the captures.",
                  nginx_notes="A request that would climb out of the alias through `..` (the "
                              "`location /i { alias /data/; }` mistake) is refused with 404."),
    DirectiveSpec("index", "static", HSL, 1, None, inherit=Inherit.ARRAY, default="index.html",
                  syntax="index file ...;",
                  doc="Files tried, in order, for a request whose URI ends with `/`; the first that "
                      "exists is served through an internal redirect to its URI. A last name "
                      "starting with `/` is redirected to unconditionally. Without one the "
                      "answer is 403 (there is no autoindex)."),
    DirectiveSpec("try_files", "static", SL, 2, None,
                  syntax="try_files file ... uri | =code;",
                  doc="Serves the first of the files (`$uri`, `$uri/` for a directory, or any "
                      "value with variables) that exists; else makes an internal redirect to the "
                      "last argument (a URI or `@name`) or answers `=code`.",
                  nginx_notes="Only for locations served by the static handler (not with "
                              "`proxy_pass` in the same location); a server-level `try_files` is "
                              "inherited by the locations that serve static files."),
    DirectiveSpec("error_page", "static", HSL, 2, None, inherit=Inherit.ARRAY,
                  syntax="error_page code ... [=[response]] uri;",
                  doc="For the errors the gateway answers itself (401 and 403 of `auth_jwt`, 404, "
                      "405, 413, 429, 500, 502, 503, 504...): an internal redirect to `uri` or "
                      "`@name` of the same server, answered with the original code, `=code`, or "
                      "(with a bare `=`) the page location's own code; a full URL answers a 302 "
                      "(or `=301`, `=303`, `=307`, `=308`) to it. `WWW-Authenticate` is kept.",
                  nginx_notes="One redirect per error (NGINX's default `recursive_error_pages off`): "
                              "an error while serving the page answers the built-in page. Error "
                              "responses of the upstream are not intercepted "
                              "(`proxy_intercept_errors` is not supported)."),
)

#: Status codes ``error_page`` accepts (NGINX: 300 to 599, but not 499).
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_ALLOW = [("Allow", "GET, HEAD")]
#: NGINX's limit of URI changes for one request ("rewrite or internal redirection cycle").
MAX_URI_CHANGES = 10


# -- internal redirects --------------------------------------------------------------------

def _extra(ctx: Any) -> dict[str, Any]:
    extra = ctx.extra
    if extra is None:
        extra = ctx.extra = {}
    return extra


async def internal_redirect(ctx: Any, target: str) -> None:
    """Serve the request again for ``target`` (``/uri[?args]`` or ``@name``) in its server.

    Runs the server's rewrite script, the new location's rewrite and access handlers (an
    ``internal`` location is reachable) and its content handler, as NGINX's
    ``ngx_http_internal_redirect`` / ``ngx_http_named_location``.

    Raises:
        HTTPError: the status an access handler answered, 404 when no location matches,
            500 after :data:`MAX_URI_CHANGES` redirects.
    """
    extra = _extra(ctx)
    changes = extra.get("uri_changes", 0) + 1
    extra["uri_changes"] = changes
    if changes > MAX_URI_CHANGES:
        log.error('rewrite or internal redirection cycle while internally redirecting to "%s"', target)
        raise HTTPError(500, "internal redirection cycle")
    server = ctx.server
    if target.startswith("@"):
        loc = server.locations.named.get(target)
        if loc is None:
            log.error('could not find named location "%s"', target)
            raise HTTPError(500, "no named location")
    else:
        path, _, args = target.partition("?")
        ctx.uri = path
        ctx.args = args
        if ctx.var_cache is not None:
            ctx.var_cache.clear()
        for handler in server.rewrite:
            status = await handler(ctx)
            if status is not None:
                if status > 0:
                    raise HTTPError(status, "server rewrite")
                return
        found = server.locations.lookup(path)
        if found is None:
            raise HTTPError(404, "no location")
        loc, m, redirect = found
        if m is not None:
            ctx.captures = m.groups()
        if redirect:
            ctx.location = loc
            redirect_to_location(ctx, loc.match.pattern)
            return
    ctx.location = loc
    for handler in loc.access:
        if handler is _core._internal_only:
            continue
        status = await handler(ctx)
        if status is not None:
            if status > 0:
                raise HTTPError(status, "refused after an internal redirect")
            return
    if loc.content is None:
        raise HTTPError(404, "no content")
    await loc.content(ctx)


class _PageResponder:
    """The responder an error page's location writes through: the error's status (or the
    ``=code``) replaces the one the location answers, and the error's own fields
    (``WWW-Authenticate``) are added. Everything else goes to the real responder."""

    def __init__(self, real: Any, ctx: Any, err_status: int | None) -> None:
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "err_status", err_status)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)

    def start(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None,
              own_fields: bool = True) -> None:
        if self.err_status is not None:
            status = self.err_status
        kept = encode_fields(self._ctx.response_headers)
        self._real.start(status, kept + list(headers), length, own_fields)

    def send(self, status: int, headers: list[tuple[bytes, bytes]] | None = None,
             body: bytes | None = None, content_type: bytes = b"text/html") -> None:
        if body is None:
            body = error_body(status) if status >= 400 else b""
        hdrs = list(headers or ())
        if body:
            hdrs.append((b"Content-Type", content_type))
        self.start(status, hdrs, len(body))
        self._real.write(body)
        self._real.end()


class ErrorPages:
    """``error_page`` of one level: ``await pages(ctx, status)`` answers the error through
    its page and returns ``True``, or returns ``False`` (the caller sends the plain page)."""

    __slots__ = ("table",)

    def __init__(self, table: dict[int, tuple[str | int | None, Any]]) -> None:
        self.table = table

    def __repr__(self) -> str:
        return f"<ErrorPages {sorted(self.table)}>"

    async def __call__(self, ctx: Any, status: int) -> bool:
        entry = self.table.get(status)
        if entry is None:
            return False
        extra = _extra(ctx)
        if extra.get("error_page_used"):
            return False
        extra["error_page_used"] = True
        override, value = entry
        target = value(ctx)
        real = ctx.responder
        if not target.startswith(("/", "@")):
            code = override if isinstance(override, int) and override in _REDIRECTS else 302
            raw = absolute_location(ctx, target).encode("utf-8", "surrogateescape")
            headers = encode_fields(ctx.response_headers)
            if valid_field_value(raw):
                headers.append((b"Location", raw))
            real.send(code, headers, error_body(code))
            return True
        err_status = status if override is None else override if isinstance(override, int) else None
        if ctx.method != "HEAD":
            ctx.method = "GET"  # as NGINX's ngx_http_send_error_page
        ctx.responder = _PageResponder(real, ctx, err_status)
        try:
            await internal_redirect(ctx, target)
        except (UpstreamError, HTTPError) as e:
            ctx.responder = real
            _plain(ctx, e.status)
        except asyncio.CancelledError:
            raise
        except Exception:
            ctx.responder = real
            log.exception("unexpected error while serving the error page %s for %d", target, status)
            _plain(ctx, 500)
        finally:
            ctx.responder = real
        return True


def _plain(ctx: Any, status: int) -> None:
    """The built-in page of ``status`` (a second error while serving an error page)."""
    responder = ctx.responder
    if responder.started:
        responder.keep_alive = False
        return
    headers = encode_fields(ctx.response_headers)
    responder.send(status, headers)


def _installer(pages: ErrorPages) -> Any:
    async def install_error_page(ctx: Any) -> None:
        _extra(ctx)["error_page"] = pages
        return None
    return install_error_page


async def send_error_page(ctx: Any, status: int) -> bool:
    """The hook of :class:`~jwtgate.runtime.phases.Dispatcher`: answer ``status`` through the
    ``error_page`` in force for this request, if any; ``True`` when answered."""
    extra = ctx.extra
    pages = extra.get("error_page") if extra is not None else None
    if pages is None:
        return False
    return await pages(ctx, status)


# -- static files --------------------------------------------------------------------------

def _http_date(ts: float) -> str:
    return formatdate(int(ts), usegmt=True)


def _parse_date(text: str) -> int | None:
    try:
        return int(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _etag_match(header: str, etag: str, weak: bool) -> bool:
    """NGINX's ``ngx_http_test_if_match``: ``*`` or one of the listed tags."""
    header = header.strip()
    if header == "*":
        return True
    for tag in header.split(","):
        tag = tag.strip()
        if weak and tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def _range(header: str, size: int) -> tuple[int, int] | None | bool:
    """One ``bytes=`` range → ``(start, end)`` inclusive; ``None``: ignore the header (bad
    syntax or several ranges: the whole file); ``False``: unsatisfiable (416)."""
    if not header.startswith("bytes="):
        return None
    spec = header[6:].strip()
    if "," in spec or "-" not in spec:
        return None
    first, _, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if first == "":
        if not last.isdigit():
            return None
        n = int(last)
        if n == 0 or size == 0:
            return False
        return max(0, size - n), size - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return False
    return start, min(end, size - 1)


_NOT_FOUND_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)


def _os_error_status(e: OSError) -> int:
    if e.errno in _NOT_FOUND_ERRNOS:
        return 404
    if e.errno in (errno.EACCES, errno.EPERM, errno.ELOOP):
        return 403
    return 500


#: Bytes read per step when the body is not sent with sendfile.
CHUNK = 64 * 1024


class StaticHandler:
    """The static content handler of one location.

    Args:
        root: the ``root`` complex value, or ``None`` with ``alias``.
        alias: the ``alias`` complex value, or ``None``.
        prefix: the location's prefix ``alias`` replaces; ``None`` for a regex location
            (the alias is the whole path).
        index: ``index`` names, in order.
        try_files: complex values of ``try_files`` (the last is the fallback), or ``()``.
        default_type: ``default_type``.
        use_sendfile: ``sendfile on``.
    """

    def __init__(self, root: Any, alias: Any, prefix: str | None, index: tuple[Any, ...],
                 try_files: tuple[Any, ...], default_type: str, use_sendfile: bool) -> None:
        self.root = root
        self.alias = alias
        self.prefix = prefix
        self.index = index
        self.try_files = try_files
        self.default_type = default_type
        self.use_sendfile = use_sendfile

    def __repr__(self) -> str:
        where = f"alias {self.alias.source}" if self.alias is not None else f"root {self.root.source}"
        return f"<StaticHandler {where}>"

    def map_uri(self, ctx: Any, uri: str) -> str | None:
        """The file system path of ``uri``; ``None`` when it would climb out of its alias."""
        if self.alias is None:
            root = self.root(ctx)
            path = (root[:-1] if root.endswith("/") else root) + uri
        else:
            alias = self.alias(ctx)
            if self.prefix is None:
                path = alias
            else:
                rest = uri[len(self.prefix):] if uri.startswith(self.prefix) else uri
                path = alias + rest
        if "\x00" in path or "/../" in path + "/" or path.startswith("../"):
            return None
        return path

    async def __call__(self, ctx: Any) -> None:
        method = ctx.method
        if method not in ("GET", "HEAD", "POST"):
            ctx.response_headers.extend(_ALLOW)
            raise HTTPError(405, "method not allowed for a static file")
        if self.try_files:
            done = await self._try_files(ctx)
            if done:
                return
        uri = ctx.uri
        if uri.endswith("/"):
            await self._index(ctx, uri)
            return
        path = self.map_uri(ctx, uri)
        if path is None:
            raise HTTPError(404, "path outside its alias")
        await self._file(ctx, path, uri)

    async def _try_files(self, ctx: Any) -> bool:
        """``try_files``: set ``$uri`` to the first that exists (``False``: go on serving
        it) or answer the fallback (``True``)."""
        *files, last = self.try_files
        for value in files:
            name = value(ctx)
            want_dir = name.endswith("/")
            path = self.map_uri(ctx, name.rstrip("/") if want_dir else name)
            if path is None:
                continue
            try:
                st = os.stat(path)
            except (OSError, ValueError):
                continue
            if want_dir and stat.S_ISDIR(st.st_mode) or not want_dir and stat.S_ISREG(st.st_mode):
                if name != ctx.uri:
                    ctx.uri = name if name.startswith("/") else "/" + name
                    if ctx.var_cache is not None:
                        ctx.var_cache.clear()
                return False
        fallback = last(ctx)
        if fallback.startswith("=") and fallback[1:].isdigit():
            code = int(fallback[1:])
            raise HTTPError(code, "try_files")
        await internal_redirect(ctx, fallback)
        return True

    async def _index(self, ctx: Any, uri: str) -> None:
        base = self.map_uri(ctx, uri)
        if base is None:
            raise HTTPError(404, "path outside its alias")
        for value in self.index:
            name = value(ctx)
            if name.startswith("/"):
                await internal_redirect(ctx, name)
                return
            try:
                st = os.stat(base + name)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno in _NOT_FOUND_ERRNOS:
                    continue
                raise HTTPError(_os_error_status(e), "index") from None
            except ValueError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            await internal_redirect(ctx, uri + name + ("?" + ctx.args if ctx.args else ""))
            return
        try:
            st = os.stat(base)
        except (OSError, ValueError) as e:
            raise HTTPError(_os_error_status(e) if isinstance(e, OSError) else 404, "directory") from None
        if stat.S_ISDIR(st.st_mode):
            raise HTTPError(403, "directory index is forbidden")
        raise HTTPError(404, "not a directory")

    async def _file(self, ctx: Any, path: str, uri: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            status = _os_error_status(e)
            if status == 500:
                log.error('open() "%s" failed: %s', path, e.strerror)
            raise HTTPError(status, "open") from None
        except ValueError:
            raise HTTPError(404, "bad path") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                redirect_to_location(ctx, uri + "/")
                return
            if not stat.S_ISREG(st.st_mode):
                raise HTTPError(404, "not a regular file")
            if ctx.method == "POST":
                ctx.response_headers.extend(_ALLOW)
                raise HTTPError(405, "POST to a static file")
            f = open(fd, "rb", buffering=0, closefd=False)
            await self._send(ctx, f, st, uri)
        finally:
            os.close(fd)

    async def _send(self, ctx: Any, f: Any, st: os.stat_result, uri: str) -> None:
        size = st.st_size
        mtime = int(st.st_mtime)
        etag = f'"{mtime:x}-{size:x}"'
        last_modified = _http_date(mtime)
        ctype = content_type_for(uri, self.default_type)
        responder = ctx.responder
        plain = getattr(responder, "err_status", None) is None  # not the page of an error
        http = ctx.http
        validators = [(b"Last-Modified", last_modified.encode()), (b"ETag", etag.encode())]
        if plain:
            if_match = http.get("if_match")
            ius = http.get("if_unmodified_since")
            if (if_match is not None and not _etag_match(if_match, etag, False)) or (
                    if_match is None and ius is not None and (_parse_date(ius) or 0) < mtime):
                raise HTTPError(412, "precondition failed")
            inm = http.get("if_none_match")
            ims = http.get("if_modified_since")
            if inm is not None or ims is not None:
                fresh = True
                if ims is not None and _parse_date(ims) != mtime:
                    fresh = False
                if inm is not None and not _etag_match(inm, etag, True):
                    fresh = False
                if fresh:
                    responder.start(304, validators, None)
                    responder.end()
                    return
        headers = [(b"Content-Type", ctype.encode()), *validators]
        status, offset, count = 200, 0, size
        if plain:
            headers.append((b"Accept-Ranges", b"bytes"))
            rng = http.get("range")
            if rng is not None:
                if_range = http.get("if_range")
                if if_range is not None:
                    if_range = if_range.strip()
                    if not (if_range == etag or if_range == last_modified):
                        rng = None
                if rng is not None:
                    found = _range(rng.strip(), size)
                    if found is False:
                        ctx.response_headers.append(("Content-Range", f"bytes */{size}"))
                        raise HTTPError(416, "range not satisfiable")
                    if found is not None:
                        start, end = found
                        status, offset, count = 206, start, end - start + 1
                        headers.append((b"Content-Range", f"bytes {start}-{end}/{size}".encode()))
        responder.start(status, headers, count)
        try:
            if self.use_sendfile:
                await responder.sendfile(f, offset, count)
            else:
                await _copy(responder, f, offset, count)
        except (ConnectionError, OSError) as e:
            # the client went away, or the file shrank under us: the response is cut short
            log.info("sending %s stopped: %s", uri, e)
            responder.keep_alive = False
            return
        responder.end()


async def _copy(responder: Any, f: Any, offset: int, count: int) -> None:
    """The body by reads and writes (``sendfile off``), with backpressure."""
    if responder.head_only:
        return
    fd = f.fileno()
    pos, end = offset, offset + count
    while pos < end:
        data = os.pread(fd, min(CHUNK, end - pos), pos)
        if not data:
            raise OSError("file truncated while sending")
        pos += len(data)
        responder.write(data)
        responder.flush()
        if responder.writing_paused:
            await responder.drain()


# -- the module ----------------------------------------------------------------------------

def _parse_error_page(build: Any, d: Any) -> list[tuple[int, str | int | None, Any]]:
    """``error_page code ... [=[response]] uri`` → ``[(code, override, uri), ...]``;
    override ``None`` (the error's code), ``"="`` (the page's code) or a code."""
    args = list(d.args)
    uri = args.pop()
    override: str | int | None = None
    if args and args[-1].startswith("="):
        word = args.pop()[1:]
        if word == "":
            override = "="
        elif word.isdigit() and 100 <= int(word) <= 999:
            override = int(word)
        else:
            raise build.error(f'invalid value "={word}"', d)
    if not args:
        raise build.error('invalid number of arguments in "error_page" directive', d)
    codes = []
    for word in args:
        if not word.isdigit() or not 300 <= int(word) <= 599 or int(word) == 499:
            raise build.error(f'value "{word}" must be between 300 and 599', d)
        codes.append(int(word))
    if uri.startswith("@") and "$" in uri:
        raise build.error(f'invalid named location "{uri}"', d)
    value = build.complex(uri, d)
    return [(code, override, value) for code in codes]


def _pages_table(entries: list[list[tuple[int, Any, Any]]]) -> dict[int, tuple[Any, Any]]:
    table: dict[int, tuple[Any, Any]] = {}
    for group in entries:
        for code, override, value in group:
            table.setdefault(code, (override, value))
    return table


class StaticModule(Module):
    """``root``, ``alias``, ``index``, ``try_files`` and ``error_page``."""

    name = "static"
    directives = DIRECTIVES

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        name = d.name
        if name == "error_page":
            return _parse_error_page(build, d)
        if name in ("root", "alias"):
            other = "alias" if name == "root" else "root"
            if level.ctx is Ctx.LOCATION and level.own(other):
                raise build.error(f'"{name}" directive is duplicate, "{other}" directive was specified '
                                  'earlier', d)
            if level.ctx is Ctx.LOCATION and level.own(name):
                raise build.error(f'"{name}" directive is duplicate', d)
            if name == "alias" and level.location is not None and level.location.kind == "@":
                raise build.error('"alias" directive cannot be used inside the named location', d)
            text = d.args[0]
            value = build.complex(text if text.startswith(("/", "$")) else build.path(text), d)
            return value
        if name == "index":
            values = []
            for i, arg in enumerate(d.args):
                if not arg:
                    raise build.error('index "" in "index" directive is invalid', d)
                if arg.startswith("/") and i != len(d.args) - 1:
                    raise build.error('only the last index in "index" directive should be absolute', d)
                values.append(build.complex(arg, d))
            return tuple(values)
        if name == "try_files":
            return tuple(build.complex(arg, d) for arg in d.args)
        return d.args

    def _pages(self, level: Any, upto: Any) -> dict[Phase, list[Any]]:
        """The installer of ``level``'s error pages when they differ from ``upto``'s."""
        entries = level.get_all("error_page")
        if not entries:
            return {}
        probe = level
        own = False
        while probe is not None and probe is not upto:
            if "error_page" in probe.groups:
                own = True
                break
            probe = probe.parent
        if not own:
            return {}
        return {Phase.REWRITE: [_installer(ErrorPages(_pages_table(entries)))]}

    def server_handlers(self, build: Any, server: Any) -> dict[Phase, list[Any]]:
        return self._pages(server, None)

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        server = loc.parent
        while server is not None and server.ctx is not Ctx.SERVER:
            server = server.parent
        out = self._pages(loc, server)
        if loc.own("proxy_pass"):
            if loc.own("try_files"):
                d = loc.own("try_files")[0][1]
                raise build.error('"try_files" with "proxy_pass" in one location is not supported', d)
            return out
        # Another module answers this location (its ``content_directives``: dashboard, api...).
        if any(loc.own(n) for m in build.modules for n in getattr(m, "content_directives", ())):
            return out
        match = loc.location
        alias = loc.own("alias")
        root = None if alias else loc.get("root")
        if not alias and root is None:
            root = build.complex(build.path("html"), loc.directive)
        prefix = None
        if alias and match is not None and match.kind not in ("~", "~*"):
            prefix = match.pattern
        index = tuple(v for group in loc.get_all("index") for v in group) or (
            build.complex("index.html", loc.directive),)
        default_type = loc.get("default_type")
        sendfile = loc.get("sendfile")
        handler = StaticHandler(root, alias[0][0] if alias else None, prefix, index,
                                loc.get("try_files") or (), default_type[0] if default_type else "text/plain",
                                True if sendfile is None else bool(sendfile))
        out.setdefault(Phase.CONTENT, []).append(handler)
        return out

