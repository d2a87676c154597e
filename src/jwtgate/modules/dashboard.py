"""The live dashboard page: ``dashboard [api_uri];`` in a location.

NGINX Plus ships its live activity monitor as a static page (``dashboard.html``, served with
``root /usr/share/nginx/html``) that polls the NGINX Plus REST API of the ``api`` location.
jwtgate ships its own page in the package (``jwtgate/dashboard/``: ``index.html``,
``dashboard.css``, ``dashboard.js``) and serves it with one directive, so nothing has to be
copied to the file system and the page always matches the gateway's API::

    location /api/       { api; allow 127.0.0.1; deny all; }
    location /dashboard/ { dashboard; allow 127.0.0.1; deny all; }

``api_uri`` is the URI of the ``api`` location the page polls (default ``/api/``); the page
adds the API version (``9/``) and the endpoint. It may be a full ``http://`` or ``https://``
URL of another gateway (that API must then allow the page's origin; jwtgate's does not send
CORS headers).

The location answers ``GET``/``HEAD`` (405 with ``Allow`` otherwise): a URI ending in ``/``
or naming ``index.html``/``dashboard.html`` gets the page, ``dashboard.css`` and
``dashboard.js`` the assets, anything else 404. The page references its assets relatively, so
it belongs in a prefix location (``location /dashboard/``); ``/dashboard`` is redirected to
``/dashboard/`` (NGINX's auto-redirect). The three files are read from the package once per
configuration load (a missing file is a configuration error), with a strong ``ETag``
(``If-None-Match`` answers 304), ``Cache-Control: no-cache`` and a strict
``Content-Security-Policy`` (scripts, styles and API calls from this origin or the API's
only), so even a value the page failed to escape could not run a script.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from jwtgate.conf.spec import Ctx, DirectiveSpec, Inherit
from jwtgate.errors import HTTPError
from jwtgate.modules.base import Module, Phase

__all__ = ["DashboardModule", "DashboardHandler", "DashboardAssets", "load_assets", "DEFAULT_API_URI"]

#: The ``api`` location the page polls unless the directive names another.
DEFAULT_API_URI = "/api/"
#: What may appear in ``api_uri``: printable ASCII without quotes, spaces, ``<>``, ``\\``.
_API_URI = re.compile(r"[!#-&(-;=?-\[\]-~]{1,1024}")
#: A host[:port] of an http(s) ``api_uri`` (it goes into the Content-Security-Policy).
_NETLOC = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
#: The placeholder of ``index.html`` replaced by the (escaped) API URI at load time.
_PLACEHOLDER = "__JWTGATE_API__"
_ASSET_TYPES = {
    "index.html": b"text/html; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "dashboard.js": b"application/javascript; charset=utf-8",
}
_PAGE_NAMES = frozenset(("", "index.html", "dashboard.html"))

DIRECTIVES = (
    DirectiveSpec("dashboard", "dashboard", Ctx.LOCATION, 0, 1, inherit=Inherit.NONE,
                  syntax="dashboard [api_uri];",
                  doc="Serves jwtgate's live dashboard (a page shipped in the package, like NGINX "
                      "Plus's `dashboard.html`) from this location: the page at `.../` (or "
                      "`index.html`, `dashboard.html`) and its `dashboard.css` and `dashboard.js`. "
                      "It polls the `api` location at `api_uri` (default `/api/`) every second "
                      "and shows request rates and status codes, auth failures by reason, the "
                      "verified-token cache, top clients by `sub`, key set freshness, rate-limit "
                      "rejections, upstream peers and revocations. Use a prefix location such "
                      "as `location /dashboard/`; protect it like the `api` location.",
                  nginx_notes="NGINX Plus serves `dashboard.html` as a static file with `root`; "
                              "jwtgate serves its own page from the package with this directive. "
                              "See docs/dashboard.md."),
)


@dataclass(frozen=True, slots=True)
class Asset:
    """One file the dashboard location serves: its bytes, ``Content-Type`` and strong ETag."""

    body: bytes
    content_type: bytes
    etag: bytes


@dataclass(frozen=True, slots=True)
class DashboardAssets:
    """The page and its assets for one ``api_uri``, ready to send.

    Attributes:
        page: ``index.html`` with the API URI filled in.
        files: ``{"dashboard.css": Asset, "dashboard.js": Asset}``.
        csp: the ``Content-Security-Policy`` field value sent with every file (bytes).
    """

    page: Asset
    files: dict[str, Asset]
    csp: bytes


def _asset(body: bytes, name: str) -> Asset:
    return Asset(body, _ASSET_TYPES[name], b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"')


def _read(name: str) -> bytes:
    return resources.files("jwtgate").joinpath("dashboard", name).read_bytes()


def check_api_uri(value: str) -> str:
    """Validate the ``api_uri`` argument of ``dashboard`` and end it with ``/``.

    Args:
        value: a path (``/api/``) or an ``http://``/``https://`` URL of an ``api`` location.

    Returns:
        The URI with a trailing ``/``.

    Raises:
        ValueError: with the reason, for an empty value, characters that do not belong in a
            URI (spaces, quotes, ``<>``, controls, non-ASCII), or anything that is neither an
            absolute path nor an http(s) URL with a host.
    """
    if not _API_URI.fullmatch(value):
        raise ValueError("it must be a URI of printable ASCII without spaces, quotes or \"<>\\\"")
    if value.startswith("//"):
        raise ValueError("a scheme-relative URI is not accepted: give a path or an http(s) URL")
    if not value.startswith("/"):
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("it must be an absolute path or an http:// or https:// URL")
        if not _NETLOC.fullmatch(parts.netloc):
            raise ValueError(f'"{parts.netloc}" is not a host[:port]')
    if "?" in value or "#" in value:
        raise ValueError("it must not hold a query or a fragment")
    return value if value.endswith("/") else value + "/"


def load_assets(api_uri: str) -> DashboardAssets:
    """Read the dashboard files from the package and bind the page to ``api_uri``.

    Args:
        api_uri: the API URI as :func:`check_api_uri` returns it.

    Returns:
        The assets, with ETags and the Content-Security-Policy.

    Raises:
        OSError: a file is missing from the installed package.
    """
    page = _read("index.html").decode("utf-8")
    page = page.replace(_PLACEHOLDER, html.escape(api_uri, quote=True))
    files = {name: _asset(_read(name), name) for name in ("dashboard.css", "dashboard.js")}
    connect = "'self'"
    if not api_uri.startswith("/"):
        parts = urlsplit(api_uri)
        connect += f" {parts.scheme}://{parts.netloc}"
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
           f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return DashboardAssets(_asset(page.encode("utf-8"), "index.html"), files, csp.encode("ascii"))


def _etag_matches(header: str, etag: bytes) -> bool:
    tag = etag.decode("ascii")
    for item in header.split(","):
        item = item.strip()
        if item == "*" or item == tag or item == "W/" + tag:
            return True
    return False


class DashboardHandler:
    """The content handler of a ``dashboard`` location.

    Args:
        assets: what :func:`load_assets` read for this location.

    ``await handler(ctx)`` answers through ``ctx.responder``: 200 with the file, 304 when
    ``If-None-Match`` matches its ETag, 404 for a name that is not one of the dashboard's,
    405 (with ``Allow: GET, HEAD``) for another method.

    Raises:
        HTTPError: 404 or 405, answered by the dispatcher (and ``error_page``).
    """

    __slots__ = ("assets",)

    def __init__(self, assets: DashboardAssets) -> None:
        self.assets = assets

    def __repr__(self) -> str:
        return "<DashboardHandler>"

    async def __call__(self, ctx: Any) -> None:
        if ctx.method not in ("GET", "HEAD"):
            ctx.response_headers.append(("Allow", "GET, HEAD"))
            raise HTTPError(405, "dashboard: method not allowed")
        name = ctx.uri.rpartition("/")[2]
        if name in _PAGE_NAMES:
            asset = self.assets.page
        else:
            found = self.assets.files.get(name)
            if found is None:
                raise HTTPError(404, "dashboard: no such file")
            asset = found
        headers = [(b"ETag", asset.etag), (b"Cache-Control", b"no-cache"),
                   (b"X-Content-Type-Options", b"nosniff"), (b"Referrer-Policy", b"no-referrer"),
                   (b"Content-Security-Policy", self.assets.csp)]
        inm = ctx.http.get("if_none_match")
        responder = ctx.responder
        if inm and _etag_matches(inm, asset.etag):
            responder.start(304, headers, 0)
            responder.end()
            return
        headers.append((b"Content-Type", asset.content_type))
        responder.start(200, headers, len(asset.body))
        responder.write(asset.body)
        responder.end()


def _server_has_api(loc: Any) -> bool:
    """Whether a location of the server that ``loc`` (a location
    :class:`~jwtgate.conf.compiler.Level`) belongs to has ``api``, at any nesting depth.

    A ``dashboard`` whose ``api_uri`` is a local path polls its own server; without an ``api``
    location there, every poll fails (NGINX Plus's ``dashboard.html`` likewise needs ``api``).
    """
    server = loc
    while server.parent is not None and server.ctx is not Ctx.SERVER:
        server = server.parent
    stack = list(server.children)
    while stack:
        level = stack.pop()
        if level.own("api"):
            return True
        stack.extend(level.children)
    return False


class DashboardModule(Module):
    """``dashboard [api_uri];``: serves the live dashboard page from the package."""

    name = "dashboard"
    directives = DIRECTIVES
    #: ``/dashboard`` is redirected to ``/dashboard/`` (NGINX's auto-redirect).
    auto_redirect = True
    #: Directives that give a location its content handler (the static module then adds none).
    content_directives = ("dashboard",)

    def __init__(self) -> None:
        self._loaded: dict[str, DashboardAssets] = {}

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        if level.own("dashboard"):
            raise build.error('"dashboard" directive is duplicate', d)
        value = d.args[0] if d.args else DEFAULT_API_URI
        try:
            return check_api_uri(value)
        except ValueError as e:
            raise build.error(f'invalid api_uri "{value}" in "dashboard" directive: {e}', d) from None

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        own = loc.own("dashboard")
        if not own:
            return {}
        api_uri, d = own[-1]
        if loc.own("proxy_pass"):
            raise build.error('"dashboard" and "proxy_pass" in one location', d)
        if api_uri.startswith("/") and not _server_has_api(loc):
            build.warn(f'"dashboard" polls the API at "{api_uri}", but no location of this server has '
                       '"api": the page will show only errors', d)
        assets = self._loaded.get(api_uri)
        if assets is None:
            try:
                assets = self._loaded[api_uri] = load_assets(api_uri)
            except OSError as e:
                raise build.error(f"the dashboard files are missing from the jwtgate package: {e}", d) from None
        return {Phase.CONTENT: [DashboardHandler(assets)]}
