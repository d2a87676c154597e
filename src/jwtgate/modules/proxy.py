"""The proxy module (``ngx_http_proxy_module`` and ``ngx_http_upstream_module``).

``upstream`` groups with round-robin balancing and a keep-alive pool; ``proxy_pass`` with
NGINX's URI rules; ``proxy_set_header`` with NGINX's inheritance, where a header the gateway
sets always replaces the client's header of the same name and an empty value removes it.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_flag, parse_time
from jwtgate.errors import UpstreamError
from jwtgate.http.uri import escape_path
from jwtgate.http.writer import chunk, valid_field_name, valid_field_value
from jwtgate.modules.base import Module, Phase
from jwtgate.upstream.balancer import Balancer, Peer
from jwtgate.upstream.client import Exchange
from jwtgate.upstream.pool import ConnectionPool

__all__ = ["ProxyModule", "UpstreamGroup"]

log = logging.getLogger("jwtgate.proxy")

U = Ctx.UPSTREAM


def _spec(name: str, ctx: Ctx, lo: int, hi: int | None, syntax: str, doc: str, **kw: Any) -> DirectiveSpec:
    return DirectiveSpec(name, "proxy", ctx, lo, hi, syntax=syntax, doc=doc, **kw)


DIRECTIVES = (
    _spec("upstream", Ctx.HTTP, 1, 1, "upstream name { ... }", "A group of servers for `proxy_pass`.",
          block=True, block_ctx=U, inherit=Inherit.NONE),
    _spec("server", U, 1, None, "server address [weight=n] [max_fails=n] [fail_timeout=time] [backup] [down];",
          "A server of an upstream group; a name resolves to all its addresses at load time.",
          inherit=Inherit.NONE),
    _spec("keepalive", U, 1, 1, "keepalive connections;",
          "Idle keep-alive connections kept per server of the group.", default="32",
          nginx_notes="NGINX keeps no upstream connections unless `keepalive` is set; jwtgate keeps "
                      "up to 32 per server by default."),
    _spec("keepalive_timeout", U, 1, 1, "keepalive_timeout timeout;",
          "How long an idle upstream connection is kept.", default="60s"),
    _spec("keepalive_requests", U, 1, 1, "keepalive_requests number;",
          "Requests sent over one upstream connection before it is closed.", default="1000"),
    _spec("proxy_pass", Ctx.LOCATION, 1, 1, "proxy_pass URL;",
          "Proxies the request to `http://upstream_name[/uri]` or `http://host:port[/uri]`.",
          inherit=Inherit.NONE),
    _spec("proxy_set_header", HSL, 2, 2, "proxy_set_header field value;",
          "Sets (or, with an empty value, removes) a header sent upstream; replaces the client's.",
          inherit=Inherit.ARRAY, default="Host $proxy_host; Connection \"\""),
    _spec("proxy_http_version", HSL, 1, 1, "proxy_http_version 1.0 | 1.1;",
          "HTTP version spoken to the upstream.", default="1.1",
          nginx_notes="NGINX defaults to 1.0 with `Connection: close`; jwtgate defaults to 1.1 with "
                      "keep-alive connections."),
    _spec("proxy_connect_timeout", HSL, 1, 1, "proxy_connect_timeout time;",
          "Time to establish an upstream connection (then 504).", default="60s"),
    _spec("proxy_read_timeout", HSL, 1, 1, "proxy_read_timeout time;",
          "Time between two reads from the upstream (then 504).", default="60s"),
    _spec("proxy_send_timeout", HSL, 1, 1, "proxy_send_timeout time;",
          "Time between two writes to the upstream.", default="60s"),
    _spec("proxy_pass_request_headers", HSL, 1, 1, "proxy_pass_request_headers on | off;",
          "Whether the client's headers are passed upstream.", default="on"),
    _spec("proxy_hide_header", HSL, 1, 1, "proxy_hide_header field;",
          "A response header not passed to the client (beside Date, Server, X-Pad, X-Accel-*).",
          inherit=Inherit.ARRAY),
    _spec("proxy_buffering", HSL, 1, 1, "proxy_buffering on | off;",
          "Accepted for compatibility: responses are always streamed as they arrive.", default="on"),
)

# RFC 9110 §7.6.1 hop-by-hop fields, plus framing the gateway redoes itself.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade", b"content-length", b"host", b"expect"})
# NGINX's proxy_hide_header defaults; Date and Server are set by the gateway.
_HIDE_RESPONSE = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                            b"transfer-encoding", b"upgrade", b"content-length", b"date", b"server",
                            b"x-pad", b"x-accel-expires", b"x-accel-redirect", b"x-accel-limit-rate",
                            b"x-accel-buffering", b"x-accel-charset"})


@dataclass(eq=False)
class UpstreamGroup:
    """An ``upstream`` block (or the implicit group of a ``proxy_pass host:port``).

    Attributes:
        name: the group name, which is also ``$proxy_host``.
        balancer: the :class:`Balancer` over its peers.
        pool: its keep-alive :class:`ConnectionPool`.
    """

    name: str
    balancer: Balancer
    pool: ConnectionPool

    def __repr__(self) -> str:
        return f"<UpstreamGroup {self.name} {self.balancer!r} {self.pool!r}>"


@dataclass(frozen=True, slots=True)
class ProxyPass:
    """A parsed ``proxy_pass``: target host part and optional URI part."""

    host: str
    uri: str | None
    directive: Any


def _resolve(build: Any, d: Any, hostport: str) -> tuple[list[tuple[str, int]], str]:
    """``host[:port]`` → ([(ip, port), ...], name) resolved now, as NGINX does at load time."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else "80"
    elif ":" in hostport:
        host, port_s = hostport.rsplit(":", 1)
    else:
        host, port_s = hostport, "80"
    if not port_s.isdigit() or not 0 < int(port_s) < 65536 or not host:
        raise build.error(f'invalid host or port in upstream "{hostport}"', d)
    port = int(port_s)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise build.error(f'host not found in upstream "{hostport}"', d) from None
    addrs: list[tuple[str, int]] = []
    for info in infos:
        addr = (str(info[4][0]), port)
        if addr not in addrs:
            addrs.append(addr)
    return addrs, hostport


def parse_server(build: Any, d: Any) -> list[Peer]:
    """An upstream ``server address [params]`` → one :class:`Peer` per resolved address."""
    params = {"weight": 1, "max_fails": 1, "fail_timeout": 10.0, "backup": False, "down": False}
    for p in d.args[1:]:
        key, eq, value = p.partition("=")
        try:
            if key in ("weight", "max_fails") and eq:
                params[key] = int(value)
                if key == "weight" and params[key] < 1:
                    raise ValueError
            elif key == "fail_timeout" and eq:
                params[key] = parse_time(value)
            elif key in ("backup", "down") and not eq:
                params[key] = True
            else:
                raise ValueError
        except ValueError:
            raise build.error(f'invalid parameter "{p}"', d) from None
    addr = d.args[0]
    if addr.startswith(("http://", "unix:")):
        raise build.error(f'invalid address "{addr}" of the "server" directive', d)
    addrs, name = _resolve(build, d, addr)
    return [Peer(ip, port, name, **params) for ip, port in addrs]  # type: ignore[arg-type]


class ProxyModule(Module):
    """``upstream`` groups and ``proxy_*`` directives."""

    name = "proxy"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        add = build.variables.add
        add("upstream_addr", lambda ctx: ctx.upstream_addr, self.name)
        add("upstream_status", lambda ctx: ctx.upstream_status, self.name)
        add("upstream_response_time", lambda ctx: ctx.upstream_response_time, self.name)
        add("proxy_host", lambda ctx: _proxy_state(ctx, 0), self.name)
        add("proxy_port", lambda ctx: _proxy_state(ctx, 1), self.name)
        add("proxy_add_x_forwarded_for", _x_forwarded_for, self.name)
        build.shared["proxy"] = {"groups": {}}

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        name = d.name
        if name == "upstream":
            return self._parse_upstream(build, d)
        if name == "proxy_pass":
            url = d.args[0]
            if "$" in url:
                raise build.error('variables in "proxy_pass" are not supported yet', d)
            if url.startswith("https://"):
                raise build.error('"https://" upstreams are not supported yet', d)
            if not url.startswith("http://"):
                raise build.error(f'invalid URL prefix in "{url}"', d)
            rest = url[len("http://"):]
            host, slash, path = rest.partition("/")
            if not host:
                raise build.error(f'no host in "{url}" of the "proxy_pass" directive', d)
            uri = "/" + path if slash else None
            loc = level.location
            if uri is not None and loc is not None and loc.kind in ("~", "~*", "@"):
                raise build.error('"proxy_pass" cannot have URI part in location given by regular '
                                  'expression, or inside named location', d)
            return ProxyPass(host, uri, d)
        if name == "proxy_set_header":
            field_name = d.args[0]
            if not valid_field_name(field_name.encode("latin-1", "replace")):
                raise build.error(f'invalid header name "{field_name}"', d)
            return field_name, build.complex(d.args[1], d)
        if name == "proxy_hide_header":
            return d.args[0].lower().encode("latin-1")
        if name == "proxy_http_version":
            if d.args[0] not in ("1.0", "1.1"):
                raise build.error(f'invalid value "{d.args[0]}" in "{name}" directive', d)
            return d.args[0]
        if name in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"):
            try:
                return parse_time(d.args[0])
            except ValueError:
                raise build.error(f'invalid value "{d.args[0]}" in "{name}" directive', d) from None
        if name in ("proxy_pass_request_headers", "proxy_buffering"):
            try:
                return parse_flag(d.args[0])
            except ValueError:
                raise build.error(f'invalid value "{d.args[0]}" in "{name}" directive, it must be '
                                  '"on" or "off"', d) from None
        return d.args

    def _parse_upstream(self, build: Any, d: Any) -> UpstreamGroup:
        groups = build.shared["proxy"]["groups"]
        name = d.args[0]
        if name.lower() in groups:
            raise build.error(f'duplicate upstream "{name}"', d)
        peers: list[Peer] = []
        max_idle, idle_timeout, max_requests = 32, 60.0, 1000
        for inner in d.block or ():
            try:
                if inner.name == "server":
                    peers.extend(parse_server(build, inner))
                elif inner.name == "keepalive":
                    if not inner.args[0].isdigit():
                        raise ValueError
                    max_idle = int(inner.args[0])
                elif inner.name == "keepalive_timeout":
                    idle_timeout = parse_time(inner.args[0])
                elif inner.name == "keepalive_requests":
                    if not inner.args[0].isdigit():
                        raise ValueError
                    max_requests = int(inner.args[0])
            except ValueError:
                raise build.error(f'invalid value "{inner.args[0]}" in "{inner.name}" directive', inner) from None
        if not peers:
            raise build.error(f'no servers are inside upstream "{name}"', d)
        group = UpstreamGroup(name, Balancer(peers, build.clock),
                              ConnectionPool(max_idle, idle_timeout, max_requests))
        groups[name.lower()] = group
        return group

    def _group_for(self, build: Any, pp: ProxyPass) -> UpstreamGroup:
        groups = build.shared["proxy"]["groups"]
        group = groups.get(pp.host.lower())
        if group is not None:
            return group
        key = "implicit:" + pp.host.lower()
        group = groups.get(key)
        if group is None:
            addrs, name = _resolve(build, pp.directive, pp.host)
            peers = [Peer(ip, port, name) for ip, port in addrs]
            group = UpstreamGroup(pp.host, Balancer(peers, build.clock), ConnectionPool())
            groups[key] = group
        return group

    def finish(self, build: Any) -> None:
        build.shared["proxy"]["pools"] = lambda: [g.pool for g in build.shared["proxy"]["groups"].values()]

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        own = loc.own("proxy_pass")
        if not own:
            return {}
        pp: ProxyPass = own[-1][0]
        group = self._group_for(build, pp)
        return {Phase.CONTENT: [ProxyHandler(build, loc, pp, group)]}


def _proxy_state(ctx: Any, index: int) -> str:
    state = ctx.extra.get("proxy") if ctx.extra else None
    return state[index] if state else ""


def _x_forwarded_for(ctx: Any) -> str:
    xff = ctx.http.get("x_forwarded_for")
    return f"{xff}, {ctx.conn.remote_addr}" if xff else ctx.conn.remote_addr


class ProxyHandler:
    """The content handler of one location with ``proxy_pass``.

    Everything that can be is decided here, at load time: the request-line template, the
    header templates, the set of client headers not to forward.
    """

    def __init__(self, build: Any, loc: Any, pp: ProxyPass, group: UpstreamGroup) -> None:
        self.group = group
        self.uri = pp.uri
        match = loc.location
        self.prefix = match.pattern if match is not None and match.kind in ("", "^~", "=") else None
        host = group.name
        port = "80"
        if ":" in host and not host.endswith("]"):
            host, port = host.rsplit(":", 1)
        self.proxy_host = group.name if port != "80" else host
        self.proxy_port = port
        self.version = loc.get("proxy_http_version", "1.1")
        self.keep_alive = self.version == "1.1"
        self.connect_timeout = loc.get("proxy_connect_timeout", 60.0)
        self.read_timeout = loc.get("proxy_read_timeout", 60.0)
        self.send_timeout = loc.get("proxy_send_timeout", 60.0)
        self.pass_headers = loc.get("proxy_pass_request_headers", True)
        sets = loc.get_all("proxy_set_header")
        defaults = [("Host", build.complex("$proxy_host", pp.directive)),
                    ("Connection", build.complex("" if self.keep_alive else "close", pp.directive))]
        names = {n.lower() for n, _ in sets}
        # NGINX's defaults apply unless the configuration sets the same field itself.
        self.set_headers = [(n.encode("latin-1"), v) for n, v in
                            [*(dv for dv in defaults if dv[0].lower() not in names), *sets]]
        self.skip = _HOP_BY_HOP | {n.lower() for n, _ in self.set_headers}
        self.hide = _HIDE_RESPONSE | frozenset(loc.get_all("proxy_hide_header"))
        self.request_line_tail = f" HTTP/{self.version}\r\n".encode()

    def upstream_uri(self, ctx: Any) -> str:
        """The request-target sent upstream (NGINX's rules for a URI part in ``proxy_pass``)."""
        if self.uri is None or self.prefix is None:
            return ctx.target if ctx.target.startswith("/") else escape_path(ctx.uri) + (
                "?" + ctx.args if ctx.args else "")
        rest = ctx.uri[len(self.prefix):] if ctx.uri.startswith(self.prefix) else ctx.uri
        path = escape_path(self.uri + rest)
        return path + ("?" + ctx.args if ctx.args else "")

    def request_head(self, ctx: Any) -> bytes:
        if ctx.extra is None:
            ctx.extra = {}
        ctx.extra["proxy"] = (self.proxy_host, self.proxy_port)
        parts = [ctx.method.encode("latin-1"), b" ", self.upstream_uri(ctx).encode("utf-8"),
                 self.request_line_tail]
        for name, value in self.set_headers:
            raw = value(ctx).encode("utf-8")
            if not raw:
                continue
            if not valid_field_value(raw):
                # A claim or variable holding CR/LF/NUL never becomes a header line.
                log.warning('upstream header "%s" not sent: its value holds control characters',
                            name.decode("latin-1"))
                continue
            parts += (name, b": ", raw, b"\r\n")
        if self.pass_headers:
            skip = self.skip
            conn_tokens = ctx.http.get("connection")
            if conn_tokens:
                skip = skip | {t.strip().lower().encode("latin-1") for t in conn_tokens.split(",")}
            for name, value in ctx.headers:
                if name.lower() not in skip:
                    parts += (name, b": ", value, b"\r\n")
        body = ctx.body
        if body is not None and body.present:
            if body.length is not None:
                parts += (b"Content-Length: ", str(body.length).encode(), b"\r\n")
            else:
                parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def __call__(self, ctx: Any) -> None:
        head = self.request_head(ctx)
        balancer = self.group.balancer
        pool = self.group.pool
        responder = ctx.responder
        body = ctx.body
        has_body = body is not None and body.present
        tried: list[Peer] = []
        start = time.monotonic()
        stale_retries = 2

        def on_head(status: int, headers: list[tuple[bytes, bytes]], length: int | None) -> Any:
            ctx.upstream_status = str(status)
            out = []
            hide = self.hide
            for name, value in headers:
                if name.lower() not in hide and valid_field_value(value):
                    out.append((name, value))
            responder.start(status, out, length)
            return responder

        while True:
            peer = balancer.pick(tried)
            if peer is None:
                raise UpstreamError(502, f'no live upstreams while connecting to upstream "{self.group.name}"')
            conn = pool.acquire(peer)
            reused = conn is not None
            if conn is None:
                try:
                    conn = await pool.connect(peer, self.connect_timeout)
                except UpstreamError as e:
                    log.error("%s, upstream: %s", e.reason, peer.address)
                    balancer.failed(peer)
                    tried.append(peer)
                    ctx.upstream_addr = _append(ctx.upstream_addr, peer.address)
                    ctx.upstream_status = _append(ctx.upstream_status, str(e.status))
                    if len(tried) < len(balancer):
                        continue
                    raise
            ex = Exchange(on_head, ctx.method == "HEAD", self.read_timeout)
            conn.begin(ex)
            conn.write(head)
            body_sent = True
            try:
                if has_body:
                    body_sent = await self._send_body(ctx, conn, ex)
                await ex.done
            except UpstreamError as e:
                ex.abandoned = True
                conn.abort()
                pool.release(conn, False)
                if ex.head_seen:
                    # The response has started: the runner cuts the client connection.
                    log.error("%s while sending to client, upstream: %s", e.reason, peer.address)
                    raise
                if reused and ex.received == 0 and not has_body and stale_retries > 0:
                    # A kept-alive connection the upstream had already closed: not a failure.
                    stale_retries -= 1
                    continue
                log.error("%s, upstream: %s", e.reason, peer.address)
                balancer.failed(peer)
                tried.append(peer)
                ctx.upstream_addr = _append(ctx.upstream_addr, peer.address)
                ctx.upstream_status = _append(ctx.upstream_status, str(e.status))
                if not has_body and e.status == 502 and len(tried) < len(balancer):
                    continue
                raise
            except BaseException:
                ex.abandoned = True
                conn.abort()
                pool.release(conn, False)
                raise
            ctx.upstream_addr = _append(ctx.upstream_addr, peer.address)
            ctx.upstream_response_time = f"{time.monotonic() - start:.3f}"
            pool.release(conn, self.keep_alive and ex.keep_alive and ex.complete and body_sent)
            balancer.succeeded(peer)
            responder.end()
            return

    async def _send_body(self, ctx: Any, conn: Any, ex: Exchange) -> bool:
        """Stream the client's body upstream; ``False`` when the upstream answered first.

        An upstream may answer before the whole body is sent (an early 413 or 401): like
        NGINX, stop sending and pass that answer on; the connection is then not reused.

        Raises:
            UpstreamError: the upstream closed the connection without answering.
        """
        body = ctx.body
        chunked = body.length is None
        while True:
            if ex.head_seen:
                return False
            data = await body.read()
            if ex.head_seen:
                return False
            if conn.closed:
                raise UpstreamError(502, "upstream prematurely closed connection while sending request body")
            if not data:
                break
            conn.write(chunk(data) if chunked else data)
            try:
                await conn.drain()
            except UpstreamError:
                if ex.head_seen:
                    return False
                raise
        if chunked:
            conn.write(b"0\r\n\r\n")
        return True


def _append(prev: str, value: str) -> str:
    return f"{prev}, {value}" if prev else value
