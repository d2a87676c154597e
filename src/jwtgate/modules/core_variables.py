"""NGINX's core variables (``ngx_http_variables.c``), declared by the core module.

Each is a getter of the request context, computed when read. Costly values that do not change
while a request runs are declared cacheable (:mod:`jwtgate.vars.registry`); values that do
change (``$status``, ``$request_time``, ``$bytes_sent``...) are not, as NGINX flags them
``NOCACHEABLE``; plain field reads are not either, a cache would cost more than they do.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
import time
from typing import Any

from jwtgate.vars.registry import VariableRegistry

__all__ = ["declare_core_variables", "CORE_VARIABLES"]


def declare_core_variables(variables: VariableRegistry, module: str) -> None:
    """Declare every core variable in ``variables``, owned by ``module``."""
    for name, getter in CORE_VARIABLES.items():
        variables.add(name, getter, module, cacheable=name in _CACHEABLE)
    variables.add("hostname", lambda ctx, _h=socket.gethostname(): _h, module)
    variables.add("pid", lambda ctx: str(os.getpid()), module)  # per worker, after fork
    variables.add_prefix("http_", lambda s: _header_getter(s.lower()), module)
    variables.add_prefix("arg_", _arg_getter, module, cacheable=True)
    variables.add_prefix("cookie_", _cookie_getter, module, cacheable=True)
    variables.add_prefix("sent_http_", _sent_header_getter, module)


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
    """The user name of ``Authorization: Basic`` (not checked against anything)."""
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


def _request_length(ctx: Any) -> str:
    """Request line, head and body bytes read (NGINX's ``$request_length``).

    The HTTP layer counts the target and the header fields (name, value, ``: `` and CRLF);
    the method, the spaces, the version with its CRLF and the blank line are added here.
    """
    line = len(ctx.method) + 1 + 1 + len("HTTP/1.1\r\n")
    body = ctx.body.received if ctx.body is not None else 0
    return str(ctx.request_length + line + 2 + body)


#: Computed at most once per request (costly and stable while the request runs); NGINX
#: caches every variable but those flagged NOCACHEABLE, for which a cache makes no difference
#: here but costs a lookup.
_CACHEABLE = frozenset(("binary_remote_addr", "remote_user", "time_local", "time_iso8601"))

CORE_VARIABLES: dict[str, Any] = {
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
    "request_length": _request_length,
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
    """``$cookie_NAME``: the value of the first cookie NAME (ASCII case-insensitive name, as
    NGINX's ``ngx_http_parse_multi_header_lines``)."""
    lname = name.lower()

    def get(ctx: Any) -> str:
        cookies = ctx.http.get("cookie")
        if not cookies:
            return ""
        for part in cookies.split(";"):
            key, eq, value = part.strip().partition("=")
            if eq and key.lower() == lname:
                return value
        return ""

    return get


def _sent_header_getter(name: str) -> Any:
    """``$sent_http_NAME``: a field of the response head as sent (``_`` for ``-``), several
    values joined with ``, ``; ``$sent_http_content_length`` is the framed length."""
    field = name.replace("_", "-").lower().encode("latin-1", "replace")

    if field == b"content-length":
        def length(ctx: Any) -> str:
            return str(ctx.sent_length) if ctx.sent_length is not None and ctx.sent_headers is not None else ""
        return length

    def get(ctx: Any) -> str:
        sent = ctx.sent_headers
        if not sent:
            return ""
        values = [v for n, v in sent if n.lower() == field]
        if not values:
            return ""
        return (values[0] if len(values) == 1 else b", ".join(values)).decode("latin-1")

    return get
