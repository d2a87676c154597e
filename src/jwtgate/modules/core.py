"""The core module: ``http``, ``server``, ``listen``, ``server_name``, ``location``, client
limits, main-context directives, and NGINX's core variables (``ngx_http_core_module``).

Location rules checked at load time, with NGINX's messages: ``duplicate location "/x"`` (two
prefix locations, or two ``=`` locations, or two named ones with one name), ``location "/b"
is outside location "/a"`` (a nested location must extend its parent's prefix; inside a regex
location only regex locations can nest), ``location "/x" cannot be inside the exact location
"/y"`` or ``... the named location "@y"``, ``named location "@x" can be on the server level
only``. Named captures of location and ``server_name`` regexes (``(?<id>\\d+)``) become
variables, as in NGINX. The core variables themselves are in :mod:`jwtgate.modules.core_variables`.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.regex import compile_pcre
from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_flag, parse_size, parse_time
from jwtgate.modules.base import Module, Phase
from jwtgate.modules.core_variables import declare_core_variables

__all__ = ["CoreModule", "Listen", "LocationMatch"]

S = Ctx.SERVER
L = Ctx.LOCATION
H = Ctx.HTTP
SL = S | L
HS = H | S


def _spec(name: str, ctx: Ctx, lo: int, hi: int | None, syntax: str, doc: str, **kw: Any) -> DirectiveSpec:
    return DirectiveSpec(name, "core", ctx, lo, hi, syntax=syntax, doc=doc, **kw)


_IGNORED_NOTE = "Accepted so that stock nginx.conf files load; it has no effect in jwtgate."

DIRECTIVES = (
    _spec("worker_processes", Ctx.MAIN, 1, 1, "worker_processes number | auto;",
          "Number of worker processes, each one event loop; above 1 a master process supervises "
          "them (HUP reload, QUIT, TERM, USR1 as NGINX). `JWTGATE_WORKERS` overrides it.",
          default="1", nginx_notes="Workers share each listening port with SO_REUSEPORT; in-memory "
          "state (rate limits without `sync`) is per worker."),
    _spec("error_log", Ctx.MAIN | H, 1, 2, "error_log file [level];",
          "Where errors are logged (`stderr` or a file) and from which level.", default="stderr error",
          nginx_notes="One error log per process: main context, or http when main has none; "
                      "server- and location-level error logs are not supported yet."),
    _spec("pid", Ctx.MAIN, 1, 1, "pid file;", "Writes the process ID to a file.", default="none"),
    _spec("worker_shutdown_timeout", Ctx.MAIN, 1, 1, "worker_shutdown_timeout time;",
          "On a graceful stop or a reload, how long requests in flight may take before the old "
          "worker closes their connections.", default="10s",
          nginx_notes="NGINX waits without limit by default; jwtgate bounds it at 10 s so that a "
                      "reload never leaves old workers behind (WebSocket tunnels included)."),
    _spec("user", Ctx.MAIN, 1, 2, "user user [group];", _IGNORED_NOTE),
    _spec("worker_rlimit_nofile", Ctx.MAIN, 1, 1, "worker_rlimit_nofile number;", _IGNORED_NOTE),
    _spec("events", Ctx.MAIN, 0, 0, "events { ... }", "Accepted and ignored (asyncio chooses the event method).",
          block=True, block_ctx=Ctx.EVENTS, inherit=Inherit.NONE),
    _spec("worker_connections", Ctx.EVENTS, 1, 1, "worker_connections number;", _IGNORED_NOTE),
    _spec("multi_accept", Ctx.EVENTS, 1, 1, "multi_accept on | off;", _IGNORED_NOTE),
    _spec("use", Ctx.EVENTS, 1, 1, "use method;", _IGNORED_NOTE),
    _spec("http", Ctx.MAIN, 0, 0, "http { ... }", "The HTTP configuration.",
          block=True, block_ctx=Ctx.HTTP, inherit=Inherit.NONE),
    _spec("server", H, 0, 0, "server { ... }", "A virtual server.",
          block=True, block_ctx=Ctx.SERVER, inherit=Inherit.NONE),
    _spec("listen", S, 1, None, "listen [address:]port [ssl] [default_server];",
          "Address and port the server accepts requests on; `ssl`: connections are TLS (see the "
          "`ssl` module for certificates).", default="*:80", inherit=Inherit.NONE,
          nginx_notes="`http2`, `quic` and `proxy_protocol` are refused. When any server on an "
                      "address says `ssl`, the address is TLS for all of them, as in NGINX."),
    _spec("server_name", S, 1, None, "server_name name ...;",
          "Names of the virtual server: exact, `*.example.com`, `www.example.*`, `~regex`.",
          default='""', inherit=Inherit.NONE),
    _spec("location", SL, 1, 2, "location [ = | ^~ | ~ | ~* ] uri { ... } | location @name { ... }",
          "Configuration for request URIs that match.", block=True, block_ctx=Ctx.LOCATION,
          inherit=Inherit.NONE),
    _spec("keepalive_timeout", HSL, 1, 2, "keepalive_timeout timeout [header_timeout];",
          "Idle keep-alive connections are closed after this time; 0 disables keep-alive.",
          default="75s", nginx_notes="The server's (or http) value applies to the address; "
          "`header_timeout` is sent as `Keep-Alive: timeout=N` on responses that keep the "
          "connection open."),
    _spec("keepalive_requests", HSL, 1, 1, "keepalive_requests number;",
          "Requests served over one keep-alive connection; the last one is answered with "
          "`Connection: close`.", default="1000",
          nginx_notes="The server's (or http) value applies to the address."),
    _spec("client_header_timeout", HS, 1, 1, "client_header_timeout time;",
          "Time to receive a whole request head.", default="60s"),
    _spec("client_body_timeout", HS, 1, 1, "client_body_timeout time;",
          "Longest wait between two reads of a request body; when it expires before the body is "
          "complete the request is answered 408 and the connection closed.", default="60s",
          nginx_notes="http and server levels only (the address's default server's value applies); "
                      "the timer runs only while jwtgate wants the body (not while it is paused for "
                      "backpressure, nor before `100 Continue` is sent)."),
    _spec("send_timeout", HS, 1, 1, "send_timeout time;",
          "Longest wait for the client to accept more response bytes once its socket buffer is "
          "full; then the connection is closed.", default="60s",
          nginx_notes="http and server levels only (the address's default server's value "
                      "applies). Also applies to upgraded (WebSocket) connections."),
    _spec("client_header_buffer_size", HS, 1, 1, "client_header_buffer_size size;",
          "Size of the first buffer for a request head; longer heads use "
          "`large_client_header_buffers`.", default="1k",
          nginx_notes="Accepted and checked; jwtgate reads heads into growing buffers, so only "
                      "`large_client_header_buffers` limits them (414, 431)."),
    _spec("client_max_body_size", HSL, 1, 1, "client_max_body_size size;",
          "Largest accepted request body; 413 above it. 0 disables the check.", default="1m"),
    _spec("large_client_header_buffers", HS, 2, 2, "large_client_header_buffers number size;",
          "Longest request line (414 above it) and header line; number x size bounds the head.",
          default="4 8k", nginx_notes="A header line or head over the limit is answered 431 "
          "(NGINX: 400 \"Request Header Or Cookie Too Large\"); more than 100 header fields too."),
    _spec("server_tokens", HSL, 1, 1, "server_tokens on | off;",
          "jwtgate never sends its version; accepted for compatibility.", default="off"),
    _spec("sendfile", HSL, 1, 1, "sendfile on | off;",
          "Static files are sent with the event loop's sendfile where it has one (plain TCP), "
          "else by 64 KiB reads and writes; `off` always reads and writes.", default="on",
          nginx_notes="NGINX defaults to `off`. uvloop has no sendfile: there the bytes are copied."),
    _spec("tcp_nopush", HSL, 1, 1, "tcp_nopush on | off;", _IGNORED_NOTE),
    _spec("tcp_nodelay", HSL, 1, 1, "tcp_nodelay on | off;", _IGNORED_NOTE),
    _spec("default_type", HSL, 1, 1, "default_type mime-type;",
          "`Content-Type` of static files whose extension the built-in table does not know.",
          default="text/plain", nginx_notes="There is no `types` block: the extension table is built in."),
    _spec("internal", L, 0, 0, "internal;",
          "The location serves internal requests only (the subrequests of `auth_jwt_key_request`); "
          "a client's request for it gets 404.", inherit=Inherit.NONE),
)


@dataclass(frozen=True, slots=True)
class Listen:
    """One ``listen`` directive: address (``0.0.0.0`` for all), port, ``default_server``."""

    host: str
    port: int
    default_server: bool
    file: str
    line: int
    ssl: bool = False


@dataclass(frozen=True, slots=True)
class LocationMatch:
    """How a location matches: ``kind`` is ``=``, ``^~``, ``~``, ``~*``, ``@`` or ``""`` (prefix)."""

    kind: str
    pattern: str
    regex: re.Pattern[str] | None

    @property
    def label(self) -> str:
        """The location as NGINX names it in messages: ``/x``, ``@x`` or the regex."""
        return self.pattern


_LISTEN_FLAGS = {"default_server", "default", "reuseport", "deferred", "bind", "so_keepalive=on"}


def parse_listen(build: Any, d: Any) -> Listen:
    """``listen [address:]port | address [params]`` (IPv6 in brackets), NGINX's rules."""
    value = d.args[0]
    if value.startswith("unix:"):
        raise build.error(f'unix sockets are not supported in "{value}" of the "listen" directive', d)
    host, port_s = "0.0.0.0", value
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise build.error(f'invalid host in "{value}" of the "listen" directive', d)
        host, rest = value[1:end], value[end + 1:]
        port_s = rest[1:] if rest.startswith(":") else "80"
    elif ":" in value:
        host, port_s = value.rsplit(":", 1)
    elif not value.isdigit():
        host, port_s = value, "80"
    if host == "*":
        host = "0.0.0.0"
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise build.error(f'invalid port in "{value}" of the "listen" directive', d)
    if host not in ("0.0.0.0", "::"):
        try:
            host = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
        except OSError:
            raise build.error(f'host not found in "{value}" of the "listen" directive', d) from None
    default = tls = False
    for flag in d.args[1:]:
        if flag in ("default_server", "default"):
            default = True
        elif flag == "ssl":
            tls = True
        elif flag in ("http2", "quic", "proxy_protocol"):
            raise build.error(f'the "{flag}" parameter of the "listen" directive is not supported yet', d)
        elif flag not in _LISTEN_FLAGS and not flag.startswith(("backlog=", "rcvbuf=", "sndbuf=", "ipv6only=")):
            raise build.error(f'invalid parameter "{flag}"', d)
    return Listen(host, int(port_s), default, d.file, d.line, tls)


def _location_words(args: tuple[str, ...]) -> tuple[str, str]:
    """``(modifier, uri)`` of a ``location``'s arguments, as ``ngx_http_core_location`` reads
    them: two words, or one with the modifier glued on (``=/x``, ``~^/x``, ``~*\\.png``)."""
    if len(args) == 2:
        return args[0], args[1]
    pattern = args[0]
    for mod in ("=", "^~", "~*", "~"):
        if pattern.startswith(mod) and len(pattern) > len(mod):
            return mod, pattern[len(mod):]
    return ("@" if pattern.startswith("@") else ""), pattern


def parse_location(build: Any, d: Any) -> LocationMatch:
    """``location [modifier] uri``; the ``=/x`` form without a space is accepted as NGINX does."""
    kind, pattern = _location_words(d.args)
    if kind not in ("", "@", "=", "^~", "~", "~*"):
        raise build.error(f'invalid location modifier "{kind}"', d)
    regex = None
    if kind in ("~", "~*"):
        try:
            regex = compile_pcre(pattern, kind == "~*")
        except re.error as e:
            raise build.error(f'pcre2_compile() failed: {e} in "{pattern}"', d) from None
    return LocationMatch(kind, pattern, regex)


def check_location_nesting(build: Any, level: Any, d: Any) -> None:
    """NGINX's checks of ``ngx_http_core_location`` and ``ngx_http_init_locations``.

    Raises:
        ConfigError: at ``d``, for a location that cannot be where it is or duplicates a sibling.
    """
    loc: LocationMatch = level.location
    parent = level.parent
    outer: LocationMatch | None = parent.location if parent.ctx is Ctx.LOCATION else None
    if outer is not None:
        if outer.kind == "=":
            raise build.error(f'location "{loc.label}" cannot be inside the exact location '
                              f'"{outer.label}"', d)
        if outer.kind == "@":
            raise build.error(f'location "{loc.label}" cannot be inside the named location '
                              f'"{outer.label}"', d)
        if loc.kind == "@":
            raise build.error(f'named location "{loc.label}" can be on the server level only', d)
        if loc.regex is None and (outer.regex is not None or not loc.pattern.startswith(outer.pattern)):
            raise build.error(f'location "{loc.label}" is outside location "{outer.label}"', d)
    group = _LOCATION_GROUP.get(loc.kind)
    if group is None:
        return  # regex locations may repeat, as in NGINX
    for sibling in parent.children:
        if sibling is level:
            break
        other = sibling.location
        if other is not None and other.pattern == loc.pattern and _LOCATION_GROUP.get(other.kind) == group:
            raise build.error(f'duplicate location "{loc.label}"', d)


# Locations that share NGINX's static tree node: two of one group with one name are duplicates.
_LOCATION_GROUP = {"=": "exact", "": "prefix", "^~": "prefix", "@": "named"}


def _declare_captures(build: Any, d: Any, pattern: str) -> None:
    try:
        names = compile_pcre(pattern).groupindex
    except re.error:
        return  # reported when the directive is parsed
    for name in names:
        try:
            build.variables.add_capture(name)
        except ValueError:
            raise build.error(f'the duplicate "{name}" variable', d) from None


def parse_server_name(build: Any, d: Any) -> tuple[str, ...]:
    """``server_name name ...``: exact names and wildcards lowercased, regexes kept (``~...``).

    Raises:
        ConfigError: NGINX's ``server name "x" is invalid`` (a ``*`` anywhere but a leading
            ``*.`` or a trailing ``.*``), ``empty regex in server name "~"`` or a regex error.
    """
    names: list[str] = []
    for arg in d.args:
        if arg.startswith("~"):
            if len(arg) == 1:
                raise build.error(f'empty regex in server name "{arg}"', d)
            try:
                compile_pcre(arg[1:], True)
            except re.error as e:
                raise build.error(f'pcre2_compile() failed: {e} in "{arg[1:]}"', d) from None
            names.append(arg)
            continue
        core = arg[2:] if arg.startswith("*.") else arg[:-2] if arg.endswith(".*") else arg
        if "*" in core or arg == "*":
            raise build.error(f'server name "{arg}" is invalid', d)
        names.append(arg.lower())
    return tuple(names)


def _time(build: Any, d: Any, text: str) -> float:
    try:
        return parse_time(text)
    except ValueError:
        raise build.error(f'invalid value "{text}" in "{d.name}" directive', d) from None


def _size(build: Any, d: Any, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError:
        raise build.error(f'invalid value "{text}" in "{d.name}" directive', d) from None


class CoreModule(Module):
    """NGINX's core: servers, locations, listen sockets, ``return``, client limits, variables."""

    name = "core"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        declare_core_variables(build.variables, self.name)

    def predeclare(self, build: Any, level: Any, d: Any) -> None:
        """Named captures of regex locations and server names become variables."""
        if d.name == "location":
            kind, pattern = _location_words(d.args)
            if kind in ("~", "~*"):
                _declare_captures(build, d, pattern)
        elif d.name == "server_name":
            for arg in d.args:
                if arg.startswith("~"):
                    _declare_captures(build, d, arg[1:])

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        name = d.name
        if name == "listen":
            return parse_listen(build, d)
        if name == "server_name":
            return parse_server_name(build, d)
        if name == "location":
            level.location = parse_location(build, d)
            check_location_nesting(build, level, d)
            return level.location
        if name in ("keepalive_timeout", "client_header_timeout", "client_body_timeout", "send_timeout"):
            if name == "keepalive_timeout" and len(d.args) > 1:
                _time(build, d, d.args[1])
            return _time(build, d, d.args[0])
        if name == "client_header_buffer_size":
            return _size(build, d, d.args[0])
        if name == "keepalive_requests":
            if not d.args[0].isdigit():
                raise build.error(f'invalid value "{d.args[0]}" in "{name}" directive', d)
            return int(d.args[0])
        if name == "client_max_body_size":
            return _size(build, d, d.args[0])
        if name == "large_client_header_buffers":
            if not d.args[0].isdigit() or int(d.args[0]) < 1:
                raise build.error(f'invalid value "{d.args[0]}" in "{name}" directive', d)
            return int(d.args[0]), _size(build, d, d.args[1])
        if name in ("server_tokens", "sendfile", "tcp_nopush", "tcp_nodelay", "multi_accept"):
            try:
                return parse_flag(d.args[0])
            except ValueError:
                raise build.error(f'invalid value "{d.args[0]}" in "{name}" directive, it must be '
                                  '"on" or "off"', d) from None
        if name == "worker_shutdown_timeout":
            return _time(build, d, d.args[0])
        if name == "worker_processes":
            arg = d.args[0]
            if arg != "auto" and (not arg.isdigit() or int(arg) < 1):
                raise build.error(f'invalid value "{arg}" in "{name}" directive', d)
            return os.cpu_count() or 1 if arg == "auto" else int(arg)
        if name == "error_log":
            return parse_error_log(build, d)
        return d.args

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        body_limit = make_body_limit_handler(loc.get("client_max_body_size", DEFAULT_MAX_BODY))
        if loc.own("internal"):
            return {Phase.REWRITE: [_internal_only, body_limit]}
        return {Phase.REWRITE: [body_limit]}


async def _internal_only(ctx: Any) -> int | None:
    """``internal``: a client request never reaches the location (NGINX answers 404); the
    subrequests of ``auth_jwt_key_request`` run its content handler directly."""
    return 404


#: NGINX's default ``client_max_body_size``: 1 MiB.
DEFAULT_MAX_BODY = 1024 * 1024


def make_body_limit_handler(limit: int) -> Any:
    """Apply the location's ``client_max_body_size`` (NGINX checks it once the location is
    found, before any other phase): a declared ``Content-Length`` above it is 413 at once,
    a chunked body is cut with 413 when it grows past it."""

    def check(ctx: Any) -> int | None:
        body = ctx.body
        if body is None:
            return None
        body.limit = limit
        if limit and ((body.length or 0) > limit or body.received > limit):
            ctx.responder.keep_alive = False
            return 413
        return None

    async def body_limit(ctx: Any) -> int | None:
        return check(ctx)

    body_limit.check = check  # type: ignore[attr-defined]  # never waits: see modules.base.DEFER
    return body_limit


_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


def parse_error_log(build: Any, d: Any) -> tuple[str, str]:
    """``error_log file [level]`` → (absolute path or ``stderr``, level name)."""
    target = d.args[0]
    level = d.args[1] if len(d.args) > 1 else "error"
    if level not in _LEVELS:
        raise build.error(f'invalid value "{level}" in "error_log" directive', d)
    if target.startswith("syslog:"):
        raise build.error('"syslog:" targets of the "error_log" directive are not supported', d)
    if target != "stderr":
        target = build.path(target)
    return target, level
