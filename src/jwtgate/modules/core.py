"""The core module: ``http``, ``server``, ``listen``, ``server_name``, ``location``, ``return``,
client limits, main-context directives, and NGINX's core variables (``ngx_http_core_module``).
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.regex import compile_pcre
from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_flag, parse_size, parse_time
from jwtgate.modules.base import Module, Phase

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
          "Number of worker processes. jwtgate currently runs one event loop in one process.",
          default="1", nginx_notes="Values above 1 are accepted and reported by `jwtgate check`; "
          "one process serves."),
    _spec("error_log", Ctx.MAIN | H, 1, 2, "error_log file [level];",
          "Where errors are logged (`stderr` or a file) and from which level.", default="stderr error",
          nginx_notes="One error log per process: main context, or http when main has none; "
                      "server- and location-level error logs are not supported yet."),
    _spec("pid", Ctx.MAIN, 1, 1, "pid file;", "Writes the process ID to a file.", default="none"),
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
    _spec("listen", S, 1, None, "listen [address:]port [default_server];",
          "Address and port the server accepts requests on.", default="*:80", inherit=Inherit.NONE),
    _spec("server_name", S, 1, None, "server_name name ...;",
          "Names of the virtual server: exact, `*.example.com`, `www.example.*`, `~regex`.",
          default='""', inherit=Inherit.NONE),
    _spec("location", SL, 1, 2, "location [ = | ^~ | ~ | ~* ] uri { ... } | location @name { ... }",
          "Configuration for request URIs that match.", block=True, block_ctx=Ctx.LOCATION,
          inherit=Inherit.NONE),
    _spec("return", SL, 1, 2, "return code [text] | return code URL | return URL;",
          "Stops processing and answers with the code (before authentication, as in NGINX's "
          "rewrite phase).", inherit=Inherit.NONE),
    _spec("keepalive_timeout", HSL, 1, 2, "keepalive_timeout timeout;",
          "Idle keep-alive connections are closed after this time.", default="75s"),
    _spec("keepalive_requests", HSL, 1, 1, "keepalive_requests number;",
          "Requests served over one keep-alive connection.", default="1000"),
    _spec("client_header_timeout", HS, 1, 1, "client_header_timeout time;",
          "Time to receive a whole request head.", default="60s"),
    _spec("client_max_body_size", HSL, 1, 1, "client_max_body_size size;",
          "Largest accepted request body; 413 above it. 0 disables the check.", default="1m"),
    _spec("large_client_header_buffers", HS, 2, 2, "large_client_header_buffers number size;",
          "Longest request line (414 above it) and header line; number x size bounds the head.",
          default="4 8k"),
    _spec("server_tokens", HSL, 1, 1, "server_tokens on | off;",
          "jwtgate never sends its version; accepted for compatibility.", default="off"),
    _spec("sendfile", HSL, 1, 1, "sendfile on | off;", _IGNORED_NOTE),
    _spec("tcp_nopush", HSL, 1, 1, "tcp_nopush on | off;", _IGNORED_NOTE),
    _spec("tcp_nodelay", HSL, 1, 1, "tcp_nodelay on | off;", _IGNORED_NOTE),
    _spec("default_type", HSL, 1, 1, "default_type mime-type;", _IGNORED_NOTE),
)


@dataclass(frozen=True, slots=True)
class Listen:
    """One ``listen`` directive: address (``0.0.0.0`` for all), port, ``default_server``."""

    host: str
    port: int
    default_server: bool
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class LocationMatch:
    """How a location matches: ``kind`` is ``=``, ``^~``, ``~``, ``~*``, ``@`` or ``""`` (prefix)."""

    kind: str
    pattern: str
    regex: re.Pattern[str] | None


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
    default = False
    for flag in d.args[1:]:
        if flag in ("default_server", "default"):
            default = True
        elif flag in ("ssl", "http2", "quic", "proxy_protocol"):
            raise build.error(f'the "{flag}" parameter of the "listen" directive is not supported yet', d)
        elif flag not in _LISTEN_FLAGS and not flag.startswith(("backlog=", "rcvbuf=", "sndbuf=", "ipv6only=")):
            raise build.error(f'invalid parameter "{flag}"', d)
    return Listen(host, int(port_s), default, d.file, d.line)


def parse_location(build: Any, d: Any) -> LocationMatch:
    """``location [modifier] uri``; the ``=/x`` form without a space is accepted as NGINX does."""
    args = d.args
    if len(args) == 2:
        kind, pattern = args
        if kind not in ("=", "^~", "~", "~*"):
            raise build.error(f'invalid location modifier "{kind}"', d)
    else:
        pattern = args[0]
        kind = ""
        for mod in ("=", "^~", "~*", "~"):
            if pattern.startswith(mod) and len(pattern) > len(mod):
                kind, pattern = mod, pattern[len(mod):]
                break
        if pattern.startswith("@"):
            kind = "@"
    regex = None
    if kind in ("~", "~*"):
        try:
            regex = compile_pcre(pattern, kind == "~*")
        except re.error as e:
            raise build.error(f'pcre2_compile() failed: {e} in "{pattern}"', d) from None
    return LocationMatch(kind, pattern, regex)


@dataclass(frozen=True, slots=True)
class ReturnSpec:
    """A ``return``: status code and an optional complex value (text or redirect URL)."""

    code: int
    value: Any


def parse_return(build: Any, d: Any) -> ReturnSpec:
    args = d.args
    if len(args) == 1 and not args[0].isdigit():
        if not args[0].startswith(("http://", "https://", "$scheme")):
            raise build.error(f'invalid return code "{args[0]}"', d)
        return ReturnSpec(302, build.complex(args[0], d))
    if not args[0].isdigit() or not 0 < int(args[0]) <= 999:
        raise build.error(f'invalid return code "{args[0]}"', d)
    value = build.complex(args[1], d) if len(args) == 2 else None
    return ReturnSpec(int(args[0]), value)


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
        add = build.variables.add
        for name, getter in _CORE_VARIABLES.items():
            add(name, getter, self.name)
        add("hostname", lambda ctx, _h=socket.gethostname(): _h, self.name)
        add("pid", lambda ctx, _p=str(os.getpid()): _p, self.name)
        build.variables.add_prefix("http_", lambda s: _header_getter(s.lower()), self.name)
        build.variables.add_prefix("arg_", _arg_getter, self.name)
        build.variables.add_prefix("cookie_", _cookie_getter, self.name)

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        name = d.name
        if name == "listen":
            return parse_listen(build, d)
        if name == "server_name":
            for arg in d.args:
                if arg.startswith("~"):
                    try:
                        compile_pcre(arg[1:], True)
                    except re.error as e:
                        raise build.error(f'pcre2_compile() failed: {e} in "{arg[1:]}"', d) from None
            return tuple(a if a.startswith("~") else a.lower() for a in d.args)
        if name == "location":
            level.location = parse_location(build, d)
            if level.parent.ctx is Ctx.LOCATION and level.parent.location.kind == "=":
                raise build.error(f'location "{level.location.pattern}" cannot be inside the exact '
                                  f'location "{level.parent.location.pattern}"', d)
            return level.location
        if name == "return":
            return parse_return(build, d)
        if name in ("keepalive_timeout", "client_header_timeout"):
            return _time(build, d, d.args[0])
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
        if name == "worker_processes":
            arg = d.args[0]
            if arg != "auto" and (not arg.isdigit() or int(arg) < 1):
                raise build.error(f'invalid value "{arg}" in "{name}" directive', d)
            return os.cpu_count() or 1 if arg == "auto" else int(arg)
        if name == "error_log":
            return parse_error_log(build, d)
        return d.args

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        rewrite = [make_body_limit_handler(loc.get("client_max_body_size", DEFAULT_MAX_BODY))]
        ret = loc.own("return")
        if ret:
            rewrite.append(make_return_handler(ret[-1][0]))
        return {Phase.REWRITE: rewrite}


#: NGINX's default ``client_max_body_size``: 1 MiB.
DEFAULT_MAX_BODY = 1024 * 1024


def make_body_limit_handler(limit: int) -> Any:
    """Apply the location's ``client_max_body_size`` (NGINX checks it once the location is
    found, before any other phase): a declared ``Content-Length`` above it is 413 at once,
    a chunked body is cut with 413 when it grows past it."""

    async def body_limit(ctx: Any) -> int | None:
        body = ctx.body
        if body is None:
            return None
        body.limit = limit
        if limit and ((body.length or 0) > limit or body.received > limit):
            ctx.responder.keep_alive = False
            return 413
        return None

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


def make_return_handler(spec: ReturnSpec) -> Any:
    """The rewrite-phase handler of ``return``: answers without running later phases."""
    code, value = spec.code, spec.value
    redirect = code in (301, 302, 303, 307, 308)

    async def handle_return(ctx: Any) -> int:
        headers: list[tuple[bytes, bytes]] = []
        body: bytes | None = None
        if value is not None:
            text = value(ctx)
            if redirect:
                from jwtgate.http.writer import valid_field_value
                raw = text.encode("utf-8")
                if valid_field_value(raw):
                    headers.append((b"Location", raw))
            else:
                body = text.encode("utf-8")
        ctx.responder.send(code, headers, body, content_type=b"text/plain" if body else b"text/html")
        return -1

    return handle_return


# -- variables ----------------------------------------------------------------------------

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _time_local(ctx: Any) -> str:
    t = time.localtime(ctx.start_wall)
    off = t.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d} {sign}{off // 3600:02d}{off % 3600 // 60:02d}")


def _time_iso8601(ctx: Any) -> str:
    t = time.localtime(ctx.start_wall)
    off = t.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f"{sign}{off // 3600:02d}:{off % 3600 // 60:02d}"


def _remote_user(ctx: Any) -> str:
    import base64
    import binascii
    auth = ctx.http.get("authorization", "")
    if auth[:6].lower() != "basic ":
        return ""
    try:
        user = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8").split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return user


def _binary_remote_addr(ctx: Any) -> str:
    addr = ctx.conn.remote_addr
    try:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        return socket.inet_pton(family, addr).decode("latin-1")
    except OSError:
        return addr


def _host(ctx: Any) -> str:
    host = ctx.http.get("host", "")
    if host.startswith("["):
        return host.split("]", 1)[0].lower() + "]"
    host = host.rsplit(":", 1)[0] if ":" in host else host
    return host.lower().rstrip(".") or (ctx.server.primary_name if ctx.server is not None else "")


def _request_id(ctx: Any) -> str:
    if not ctx.request_id:
        ctx.request_id = os.urandom(16).hex()
    return ctx.request_id


def _sep(ctx: Any) -> str:
    return "?" if ctx.args else ""


_CORE_VARIABLES: dict[str, Any] = {
    "remote_addr": lambda ctx: ctx.conn.remote_addr,
    "remote_port": lambda ctx: str(ctx.conn.remote_port),
    "binary_remote_addr": _binary_remote_addr,
    "remote_user": _remote_user,
    "server_addr": lambda ctx: ctx.conn.server_addr,
    "server_port": lambda ctx: str(ctx.conn.server_port),
    "server_name": lambda ctx: ctx.server.primary_name if ctx.server is not None else "",
    "server_protocol": lambda ctx: f"HTTP/{ctx.version}",
    "scheme": lambda ctx: "https" if ctx.conn.https else "http",
    "https": lambda ctx: "on" if ctx.conn.https else "",
    "connection": lambda ctx: str(ctx.conn.number),
    "connection_requests": lambda ctx: str(ctx.conn.requests),
    "request": lambda ctx: f"{ctx.method} {ctx.target} HTTP/{ctx.version}",
    "request_method": lambda ctx: ctx.method,
    "request_uri": lambda ctx: ctx.target,
    "uri": lambda ctx: ctx.uri,
    "document_uri": lambda ctx: ctx.uri,
    "args": lambda ctx: ctx.args,
    "query_string": lambda ctx: ctx.args,
    "is_args": _sep,
    "host": _host,
    "content_length": lambda ctx: ctx.http.get("content_length", ""),
    "content_type": lambda ctx: ctx.http.get("content_type", ""),
    "status": lambda ctx: f"{ctx.status:03d}" if ctx.status else "000",
    "body_bytes_sent": lambda ctx: str(ctx.body_bytes_sent),
    "bytes_sent": lambda ctx: str(ctx.bytes_sent),
    "request_length": lambda ctx: str(ctx.request_length + (ctx.body.received if ctx.body else 0)),
    "request_time": lambda ctx: f"{max(0.0, time.monotonic() - ctx.start):.3f}",
    "msec": lambda ctx: f"{time.time():.3f}",
    "time_local": _time_local,
    "time_iso8601": _time_iso8601,
    "request_id": _request_id,
}


def _header_getter(name: str) -> Any:
    return lambda ctx: ctx.http.get(name, "")


def _arg_getter(name: str) -> Any:
    """``$arg_NAME``: the first ``NAME=`` argument, raw (not decoded), as NGINX."""
    lname = name.lower()

    def get(ctx: Any) -> str:
        args = ctx.args
        if not args:
            return ""
        for part in args.split("&"):
            key, eq, value = part.partition("=")
            if key.lower() == lname:
                return value
        return ""

    return get


def _cookie_getter(name: str) -> Any:
    """``$cookie_NAME``: the value of cookie NAME (case-sensitive name match, as NGINX)."""
    def get(ctx: Any) -> str:
        cookies = ctx.http.get("cookie")
        if not cookies:
            return ""
        for part in cookies.split(";"):
            key, eq, value = part.strip().partition("=")
            if eq and key.lower() == name.lower():
                return value
        return ""

    return get
