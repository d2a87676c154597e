"""The proxy module (``ngx_http_proxy_module`` and ``ngx_http_upstream_module``).

``upstream`` groups with round-robin balancing and a keep-alive pool; ``proxy_pass`` with
NGINX's URI rules; ``proxy_set_header`` with NGINX's inheritance, where a header the gateway
sets always replaces the client's header of the same name and an empty value removes it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_flag, parse_size, parse_time
from jwtgate.errors import UpstreamError
from jwtgate.http.uri import escape_path
from jwtgate.http.writer import chunk, valid_field_name, valid_field_value
from jwtgate.modules.base import Module, Phase
from jwtgate.upstream.balancer import Balancer, Peer
from jwtgate.upstream.client import DISCARD, Exchange
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
    _spec("zone", U, 1, 2, "zone name [size];",
          "Names the group's shared state, as NGINX's `zone`: the name the NGINX Plus API "
          "(`/http/upstreams`) reports as the group's `zone`.",
          nginx_notes="Accepted so NGINX Plus configurations load; the size is checked and not "
                      "used (each worker keeps its own peer state)."),
    _spec("least_conn", U, 0, 0, "least_conn;",
          "Balances to the server with the fewest active connections (per unit of weight)."),
    _spec("ip_hash", U, 0, 0, "ip_hash;",
          "Balances by the client address (first three octets of IPv4, all of IPv6)."),
    _spec("hash", U, 1, 2, "hash key [consistent];",
          "Balances by a hash of `key` (which may hold variables); `consistent` uses a ketama ring."),
    _spec("proxy_next_upstream", HSL, 1, None,
          "proxy_next_upstream error | timeout | invalid_header | http_500 | http_502 | http_503 | "
          "http_504 | http_403 | http_404 | http_429 | non_idempotent | off ...;",
          "When a request is passed to the next server of the group. Never once the response "
          "has started; never for a non-idempotent request already sent, unless `non_idempotent`.",
          default="error timeout",
          nginx_notes="Request bodies are streamed, not buffered: a request whose body has begun "
                      "to be sent is not retried."),
    _spec("proxy_next_upstream_tries", HSL, 1, 1, "proxy_next_upstream_tries number;",
          "Most attempts for one request; 0 means no limit but the number of servers.", default="0"),
    _spec("proxy_next_upstream_timeout", HSL, 1, 1, "proxy_next_upstream_timeout time;",
          "Time in which further attempts may start; 0 means no limit.", default="0"),
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
    _spec("proxy_pass_header", HSL, 1, 1, "proxy_pass_header field;",
          "Passes a response header hidden by default (Date, Server, X-Accel-*).",
          inherit=Inherit.ARRAY),
    _spec("proxy_pass_request_body", HSL, 1, 1, "proxy_pass_request_body on | off;",
          "Whether the client's request body is passed upstream.", default="on"),
    _spec("proxy_hide_header", HSL, 1, 1, "proxy_hide_header field;",
          "A response header not passed to the client (beside Date, Server, X-Pad, X-Accel-*).",
          inherit=Inherit.ARRAY),
    _spec("proxy_ssl_verify", HSL, 1, 1, "proxy_ssl_verify on | off;",
          "Verifies the `https://` upstream's certificate (and its name, `proxy_ssl_name`).",
          default="off", nginx_notes="As in NGINX, off by default; `jwtgate check` warns about "
                                     "https upstreams that are not verified."),
    _spec("proxy_ssl_trusted_certificate", HSL, 1, 1, "proxy_ssl_trusted_certificate file;",
          "PEM CA certificates that verify the upstream (required by `proxy_ssl_verify on`)."),
    _spec("proxy_ssl_server_name", HSL, 1, 1, "proxy_ssl_server_name on | off;",
          "Sends the server name (SNI) in the TLS handshake.", default="off",
          nginx_notes="With `proxy_ssl_verify on` the name is always sent (Python ties SNI to "
                      "the name it verifies)."),
    _spec("proxy_ssl_name", HSL, 1, 1, "proxy_ssl_name name;",
          "The name verified and sent as SNI.", default="the host of proxy_pass"),
    _spec("proxy_ssl_protocols", HSL, 1, None, "proxy_ssl_protocols [TLSv1.2] [TLSv1.3];",
          "TLS versions offered to the upstream.", default="TLSv1.2 TLSv1.3"),
    _spec("proxy_ssl_certificate", HSL, 1, 1, "proxy_ssl_certificate file;",
          "Client certificate (PEM) presented to the upstream (mutual TLS)."),
    _spec("proxy_ssl_certificate_key", HSL, 1, 1, "proxy_ssl_certificate_key file;",
          "The key of `proxy_ssl_certificate` (PEM)."),
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
        zone: the ``zone`` name the NGINX Plus API reports (the group name without one).
    """

    name: str
    balancer: Balancer
    pool: ConnectionPool
    hash_key: Any = None
    zone: str = ""

    def balance_key(self, ctx: Any) -> str:
        """The key the balancer hashes: the ``hash`` value, or the client address."""
        if self.hash_key is not None:
            return str(self.hash_key(ctx))
        return ctx.conn.remote_addr if self.balancer.method == "ip_hash" else ""

    def __repr__(self) -> str:
        return f"<UpstreamGroup {self.name} {self.balancer!r} {self.pool!r}>"


@dataclass(frozen=True, slots=True)
class ProxyPass:
    """A parsed ``proxy_pass``: target host part and optional URI part."""

    host: str
    uri: str | None
    directive: Any
    scheme: str = "http"
    #: a ``proxy_pass`` with variables: the URL, evaluated per request
    dynamic: Any = None


_TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def upstream_tls(build: Any, loc: Any, pp: ProxyPass, host: str) -> tuple[ssl.SSLContext, str | None]:
    """The client TLS context for an ``https://`` upstream, built once per settings.

    Follows NGINX's ``proxy_ssl_*`` directives: no verification unless ``proxy_ssl_verify
    on`` (which then needs ``proxy_ssl_trusted_certificate``), SNI only with
    ``proxy_ssl_server_name on``.

    Raises:
        ConfigError: verification without CA certificates, or unreadable PEM files.
    """
    verify = loc.get("proxy_ssl_verify", False)
    ca = loc.get("proxy_ssl_trusted_certificate")
    cert = loc.get("proxy_ssl_certificate")
    key = loc.get("proxy_ssl_certificate_key")
    protocols = tuple(loc.get("proxy_ssl_protocols", ("TLSv1.2", "TLSv1.3")))
    name = loc.get("proxy_ssl_name") or host.strip("[]")
    sni = loc.get("proxy_ssl_server_name", False) or verify
    if verify and not ca:
        raise build.error('no "proxy_ssl_trusted_certificate" for "proxy_ssl_verify"', pp.directive)
    if not verify:
        build.warn(f'the certificate of upstream "{pp.host}" is not verified (proxy_ssl_verify off)',
                   pp.directive)
    cache = build.shared["proxy"].setdefault("tls", {})
    cache_key = (verify, ca, cert, key, protocols)
    context = cache.get(cache_key)
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        versions = sorted(_TLS_VERSIONS[p] for p in protocols)
        context.minimum_version, context.maximum_version = versions[0], versions[-1]
        try:
            if verify:
                context.load_verify_locations(ca)
            else:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if cert:
                context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as e:
            raise build.error(f"cannot load TLS certificates for the upstream: {e}", pp.directive) from None
        cache[cache_key] = context
    return context, (name if sni else None)


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class NextUpstream:
    """``proxy_next_upstream`` conditions (``ngx_http_proxy_module``).

    Attributes:
        kinds: failure kinds that pass the request on: ``error``, ``timeout``, ``invalid_header``.
        statuses: response statuses that pass it on (``http_502`` → 502).
        non_idempotent: also retry POST, PATCH, LOCK after they were sent.
    """

    kinds: frozenset[str] = frozenset({"error", "timeout"})
    statuses: frozenset[int] = frozenset()
    non_idempotent: bool = False


_NEXT_STATUSES = {f"http_{c}": c for c in (500, 502, 503, 504, 403, 404, 429)}


def parse_next_upstream(build: Any, d: Any) -> NextUpstream | None:
    """``proxy_next_upstream`` arguments; ``None`` for ``off``."""
    if d.args == ("off",):
        return None
    kinds: set[str] = set()
    statuses: set[int] = set()
    non_idempotent = False
    for arg in d.args:
        if arg in ("error", "timeout", "invalid_header"):
            kinds.add(arg)
        elif arg in _NEXT_STATUSES:
            statuses.add(_NEXT_STATUSES[arg])
        elif arg == "non_idempotent":
            non_idempotent = True
        else:
            raise build.error(f'invalid value "{arg}" in "proxy_next_upstream" directive', d)
    return NextUpstream(frozenset(kinds), frozenset(statuses), non_idempotent)



# On a 101 the Upgrade field goes through; the gateway writes its own Connection.
_HIDE_101 = _HIDE_RESPONSE - {b"upgrade"}


def _resolve(build: Any, d: Any, hostport: str, default_port: str = "80") -> tuple[list[tuple[str, int]], str]:
    """``host[:port]`` → ([(ip, port), ...], name) resolved now, as NGINX does at load time."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else default_port
    elif ":" in hostport:
        host, port_s = hostport.rsplit(":", 1)
    else:
        host, port_s = hostport, default_port
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
    auto_redirect = True  # NGINX: "location /x/ { proxy_pass ...; }" redirects "/x" to "/x/"

    def declare(self, build: Any) -> None:
        add = build.variables.add
        add("upstream_addr", lambda ctx: ctx.upstream_addr, self.name)
        add("upstream_status", lambda ctx: ctx.upstream_status, self.name)
        add("upstream_response_time", lambda ctx: seconds_text(ctx.upstream_response_time), self.name)
        add("upstream_connect_time", lambda ctx: seconds_text(ctx.upstream_connect_time), self.name)
        add("upstream_header_time", lambda ctx: seconds_text(ctx.upstream_header_time), self.name)
        add("proxy_host", lambda ctx: _proxy_state(ctx, 0), self.name)
        add("proxy_port", lambda ctx: _proxy_state(ctx, 1), self.name)
        add("proxy_add_x_forwarded_for", _x_forwarded_for, self.name)
        build.shared["proxy"] = {"groups": {}}

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        name = d.name
        if name == "upstream":
            return self._parse_upstream(build, d)
        if name == "proxy_pass":
            if level.own("proxy_pass"):
                raise build.error('"proxy_pass" directive is duplicate', d)
            url = d.args[0]
            if "$" in url:
                if not url.lower().startswith(("http://", "https://", "$")):
                    raise build.error(f'invalid URL prefix in "{url}"', d)
                return ProxyPass("", None, d, "http", build.complex(url, d))
            scheme, sep, rest = url.partition("://")
            if not sep or scheme.lower() not in ("http", "https"):
                raise build.error(f'invalid URL prefix in "{url}"', d)
            host, slash, path = rest.partition("/")
            if not host:
                raise build.error(f'no host in "{url}" of the "proxy_pass" directive', d)
            uri = "/" + path if slash else None
            loc = level.location
            if uri is not None and loc is not None and loc.kind in ("~", "~*", "@"):
                raise build.error('"proxy_pass" cannot have URI part in location given by regular '
                                  'expression, or inside named location', d)
            return ProxyPass(host, uri, d, scheme.lower())
        if name == "proxy_set_header":
            field_name = d.args[0]
            if not valid_field_name(field_name.encode("latin-1", "replace")):
                raise build.error(f'invalid header name "{field_name}"', d)
            return field_name, build.complex(d.args[1], d)
        if name in ("proxy_hide_header", "proxy_pass_header"):
            return d.args[0].lower().encode("latin-1")
        if name == "proxy_http_version":
            if d.args[0] not in ("1.0", "1.1"):
                raise build.error(f'invalid value "{d.args[0]}" in "{name}" directive', d)
            return d.args[0]
        if name == "proxy_next_upstream":
            return parse_next_upstream(build, d)
        if name == "proxy_next_upstream_tries":
            if not d.args[0].isdigit():
                raise build.error(f'invalid value "{d.args[0]}" in "{name}" directive', d)
            return int(d.args[0])
        if name in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout",
                    "proxy_next_upstream_timeout"):
            try:
                return parse_time(d.args[0])
            except ValueError:
                raise build.error(f'invalid value "{d.args[0]}" in "{name}" directive', d) from None
        if name in ("proxy_ssl_trusted_certificate", "proxy_ssl_certificate", "proxy_ssl_certificate_key"):
            path = build.path(d.args[0])
            if not os.path.isfile(path):
                raise build.error(f'open() "{path}" failed (2: No such file or directory)', d)
            return path
        if name == "proxy_ssl_name":
            return d.args[0]
        if name == "proxy_ssl_protocols":
            for p in d.args:
                if p not in _TLS_VERSIONS:
                    raise build.error(f'invalid value "{p}" in "{name}" directive', d)
            return d.args
        if name in ("proxy_pass_request_headers", "proxy_pass_request_body", "proxy_buffering", "proxy_ssl_verify",
                    "proxy_ssl_server_name"):
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
        method, hash_key = "round_robin", None
        zone: str | None = None
        for inner in d.block or ():
            try:
                if inner.name in ("least_conn", "ip_hash", "hash"):
                    if method != "round_robin":
                        raise build.error("load balancing method redefined", inner)
                    method = inner.name
                    if inner.name == "hash":
                        hash_key = build.complex(inner.args[0], inner)
                        if len(inner.args) == 2:
                            if inner.args[1] != "consistent":
                                raise build.error(f'invalid parameter "{inner.args[1]}"', inner)
                            method = "hash_consistent"
                elif inner.name == "server":
                    peers.extend(parse_server(build, inner))
                elif inner.name == "keepalive":
                    if not inner.args[0].isdigit():
                        raise ValueError
                    max_idle = int(inner.args[0])
                elif inner.name == "keepalive_timeout":
                    idle_timeout = parse_time(inner.args[0])
                elif inner.name == "zone":
                    if zone is not None:
                        raise build.error('"zone" directive is duplicate', inner)
                    zone = inner.args[0]
                    if len(inner.args) == 2:
                        try:
                            parse_size(inner.args[1])
                        except ValueError:
                            raise build.error(f'invalid zone size "{inner.args[1]}"', inner) from None
                elif inner.name == "keepalive_requests":
                    if not inner.args[0].isdigit():
                        raise ValueError
                    max_requests = int(inner.args[0])
            except ValueError:
                raise build.error(f'invalid value "{inner.args[0]}" in "{inner.name}" directive', inner) from None
        if not peers:
            raise build.error(f'no servers are inside upstream "{name}"', d)
        if method in ("ip_hash", "hash", "hash_consistent") and any(p.backup for p in peers):
            raise build.error(f'"backup" parameter cannot be used with "{method.split("_")[0]}"', d)
        group = UpstreamGroup(name, Balancer(peers, build.clock, method),
                              ConnectionPool(max_idle, idle_timeout, max_requests), hash_key)
        group.zone = zone or name
        groups[name.lower()] = group
        return group

    def _group_for(self, build: Any, pp: ProxyPass) -> UpstreamGroup:
        groups = build.shared["proxy"]["groups"]
        group = groups.get(pp.host.lower())
        if group is not None:
            return group
        key = f"implicit:{pp.scheme}:{pp.host.lower()}"
        group = groups.get(key)
        if group is None:
            addrs, name = _resolve(build, pp.directive, pp.host, "443" if pp.scheme == "https" else "80")
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
        if pp.dynamic is not None:
            return {Phase.CONTENT: [DynamicProxyHandler(build, loc, pp)]}
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
        default_port = "443" if pp.scheme == "https" else "80"
        port = default_port
        if ":" in host and not host.endswith("]"):
            host, port = host.rsplit(":", 1)
        self.proxy_host = group.name if port != default_port else host
        self.proxy_port = port
        #: TLS towards the upstream: (SSLContext, server_hostname or None), or None for http
        self.tls = upstream_tls(build, loc, pp, host) if pp.scheme == "https" else None
        self.version = loc.get("proxy_http_version", "1.1")
        self.keep_alive = self.version == "1.1"
        self.connect_timeout = loc.get("proxy_connect_timeout", 60.0)
        self.read_timeout = loc.get("proxy_read_timeout", 60.0)
        self.send_timeout = loc.get("proxy_send_timeout", 60.0)
        self.pass_headers = loc.get("proxy_pass_request_headers", True)
        self.next_upstream: NextUpstream | None = loc.get("proxy_next_upstream", NextUpstream())
        self.next_tries = loc.get("proxy_next_upstream_tries", 0)
        self.next_timeout = loc.get("proxy_next_upstream_timeout", 0.0)
        sets = loc.get_all("proxy_set_header")
        defaults = [("Host", build.complex("$proxy_host", pp.directive)),
                    ("Connection", build.complex("" if self.keep_alive else "close", pp.directive))]
        names = {n.lower() for n, _ in sets}
        # NGINX's defaults apply unless the configuration sets the same field itself.
        self.set_headers = [(n.encode("latin-1"), v) for n, v in
                            [*(dv for dv in defaults if dv[0].lower() not in names), *sets]]
        self.skip = _HOP_BY_HOP | {n.lower() for n, _ in self.set_headers}
        self._head_template = self._template()
        self.hide = ((_HIDE_RESPONSE | frozenset(loc.get_all("proxy_hide_header")))
                     - (frozenset(loc.get_all("proxy_pass_header")) - _HOP_BY_HOP))
        self.pass_body = loc.get("proxy_pass_request_body", True)
        # With Server or Date passed from the upstream, the gateway adds neither of its own.
        self.own_fields = not ({b"server", b"date"} & frozenset(loc.get_all("proxy_pass_header")))
        if not self.own_fields:
            self.hide = self.hide - {b"server", b"date"}  # both come from the upstream then
        self.request_line_tail = f" HTTP/{self.version}\r\n".encode()
        self.retry_statuses = self.next_upstream.statuses if self.next_upstream else frozenset()
        self.keyed = group.balancer.method not in ("round_robin", "least_conn")

    def _template(self) -> list[Any]:
        """The header lines of ``set_headers`` as written per request: runs of lines whose
        value is fixed for this handler (a constant, or exactly ``$proxy_host``) joined into
        one ``bytes`` at load time; the others kept as ``(name, value)`` to evaluate."""
        out: list[Any] = []
        for name, value in self.set_headers:
            if value.constant is not None:
                fixed: str | None = value.constant
            elif value.source == "$proxy_host":
                fixed = self.proxy_host
            else:
                fixed = None
            raw = fixed.encode("utf-8", "surrogateescape") if fixed is not None else b""
            if fixed is None or not valid_field_value(raw):
                out.append((name, value))  # evaluated (and refused if bad) per request
            elif raw:
                line = name + b": " + raw + b"\r\n"
                if out and out[-1].__class__ is bytes:
                    out[-1] += line
                else:
                    out.append(line)
        return out

    def upstream_uri(self, ctx: Any) -> str:
        """The request-target sent upstream (NGINX's rules for a URI part in ``proxy_pass``)."""
        override = ctx.extra.get("proxy_uri") if ctx.extra else None
        if override:
            return override  # a proxy_pass with variables and a URI part: passed as is
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
        parts = [ctx.method.encode("latin-1"), b" ", self.upstream_uri(ctx).encode("utf-8", "surrogateescape"),
                 self.request_line_tail]
        for item in self._head_template:
            if item.__class__ is bytes:
                parts.append(item)
                continue
            name, value = item
            try:
                # surrogateescape gives back raw octets kept in $uri (a %FF in the path)
                raw = value(ctx).encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate from a claim's JSON escape
                raw = b"\x00"
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
        if body is not None and body.present and self.pass_body:
            if body.length is not None:
                parts += (b"Content-Length: ", str(body.length).encode(), b"\r\n")
            else:
                parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _may_retry(self, ctx: Any, tried: list[Peer], start: float, sent: bool, body_started: bool) -> bool:
        """Whether another attempt may start (NGINX's proxy_next_upstream limits)."""
        nu = self.next_upstream
        if nu is None or body_started:
            return False
        if sent and not nu.non_idempotent and ctx.method not in _IDEMPOTENT:
            return False
        if self.next_tries and len(tried) >= self.next_tries:
            return False
        if self.next_timeout and time.monotonic() - start >= self.next_timeout:
            return False
        return self.group.balancer.has_more(tried)

    async def __call__(self, ctx: Any) -> None:
        head = self.request_head(ctx)
        group = self.group
        balancer = group.balancer
        pool = group.pool
        responder = ctx.responder
        body = ctx.body
        has_body = body is not None and body.present and self.pass_body
        key = group.balance_key(ctx) if self.keyed else ""
        tried: list[Peer] = []
        start = time.monotonic()
        stale_retries = 2
        # $upstream_{response,connect,header}_time of the attempts already over, as NGINX
        # writes them ("0.001, -"); None while this is the first attempt (the usual case,
        # whose times stay floats until read)
        times: list[str] | None = None

        while True:
            peer = balancer.pick(tried, key)
            if peer is None:
                raise UpstreamError(502, f'no live upstreams while connecting to upstream "{group.name}"')
            # $upstream_connect_time, $upstream_header_time count from here
            attempt = time.monotonic() if tried or stale_retries < 2 else start
            tried.append(peer)
            conn = pool.acquire(peer, self.tls)
            reused = conn is not None
            if reused:
                ct = 0.0  # a kept-alive connection: nothing to wait for
            else:
                try:
                    conn = await pool.connect(peer, self.connect_timeout, self.tls)
                except UpstreamError as e:
                    self._failed(ctx, peer, e)
                    times = _attempt_over(ctx, times, time.monotonic() - attempt, None, None)
                    if self.next_upstream and e.kind in self.next_upstream.kinds and \
                            self._may_retry(ctx, tried, start, sent=False, body_started=False):
                        continue
                    raise
                ct = time.monotonic() - attempt
            # (the first attempt's times inline, without _this_attempt: this runs per request)
            if times is None:
                ctx.upstream_connect_time = ct
            else:
                ctx.upstream_connect_time = _later(times[1], ct)
                ctx.upstream_header_time = times[2]
            head_cb = _Attempt(self, ctx, tried, start, has_body, attempt, times)

            ex = Exchange(head_cb, ctx.method == "HEAD", self.read_timeout, conn.loop)
            conn.begin(ex)
            conn.write(head)
            peer.active += 1
            body_sent = True
            try:
                if has_body:
                    body_sent = await self._send_body(ctx, conn, ex)
                await ex.done
            except UpstreamError as e:
                ex.abandoned = True
                conn.abort()
                pool.release(conn, False)
                if ex.head_seen and not head_cb.retried and responder.started:
                    # The response has started: the runner cuts the client connection.
                    log.error("%s while reading response from upstream, upstream: %s", e.reason, peer.address)
                    ctx.upstream_addr = _append(ctx.upstream_addr, peer.address)  # it answered
                    ctx.upstream_response_time = _this_attempt(times, 0, time.monotonic() - attempt)
                    raise
                if reused and ex.received == 0 and not has_body and stale_retries > 0 \
                        and e.kind == "error":
                    # A kept-alive connection the upstream had already closed: not a failure.
                    # (Only a close or reset: a timeout is the peer's, whatever the connection.)
                    stale_retries -= 1
                    tried.pop()
                    continue
                self._failed(ctx, peer, e)
                times = _attempt_over(ctx, times, time.monotonic() - attempt, ct, head_cb.ht)
                if self.next_upstream and e.kind in self.next_upstream.kinds and \
                        self._may_retry(ctx, tried, start, sent=True, body_started=has_body):
                    continue
                raise
            except BaseException:
                # The client went (cancelled: NGINX's 499), or a bug: the attempt is listed
                # all the same, with "-" for the status it never got, as NGINX lists it.
                ex.abandoned = True
                conn.abort()
                pool.release(conn, False)
                if not ex.head_seen:
                    _list_unanswered(ctx, peer, "-")
                else:
                    if head_cb.retried:  # (listed by on_head otherwise)
                        ctx.upstream_status = _append(ctx.upstream_status, str(head_cb.retried))
                    ctx.upstream_addr = _append(ctx.upstream_addr, peer.address)
                ctx.upstream_response_time = _this_attempt(times, 0, time.monotonic() - attempt)
                raise
            finally:
                peer.active -= 1
            ctx.upstream_addr = _append(ctx.upstream_addr, peer.address)
            if ex.status == 101:
                # WebSocket (or other Upgrade): copy bytes both ways until either side closes.
                balancer.succeeded(peer)
                tunnel = responder.tunnel(conn, ex.upgrade_tail, self.read_timeout)
                peer.active += 1
                try:
                    await tunnel.done
                finally:
                    peer.active -= 1
                    tunnel.close()
                    # NGINX: an upgraded connection's response time runs until it closes.
                    ctx.upstream_response_time = _this_attempt(times, 0, time.monotonic() - attempt)
                return
            retried = head_cb.retried
            if retried:
                # An http_5xx answer passed on to the next server; 403/404/429 are not failures.
                pool.release(conn, self.keep_alive and ex.keep_alive and ex.complete and body_sent)
                ctx.upstream_status = _append(ctx.upstream_status, str(retried))
                times = _attempt_over(ctx, times, time.monotonic() - attempt, ct, head_cb.ht)
                if retried >= 500:
                    balancer.failed(peer)
                continue
            rt = time.monotonic() - attempt
            ctx.upstream_response_time = rt if times is None else _later(times[0], rt)
            pool.release(conn, self.keep_alive and ex.keep_alive and ex.complete and body_sent)
            balancer.succeeded(peer)
            if not responder.finished:  # (usually ended already, by the message's end)
                responder.end()
            return

    def _failed(self, ctx: Any, peer: Peer, e: UpstreamError) -> None:
        log.error("%s, upstream: %s", e.reason, peer.address)
        self.group.balancer.failed(peer)
        # (its $upstream_status is the gateway's own 502/504)
        _list_unanswered(ctx, peer, str(e.status))

    async def _send_body(self, ctx: Any, conn: Any, ex: Exchange) -> bool:
        """Stream the client's body upstream; ``False`` when the upstream answered first.

        An upstream may answer before the whole body is sent (an early 413 or 401): like
        NGINX, stop sending and pass that answer on; the connection is then not reused.

        Raises:
            UpstreamError: the upstream closed the connection without answering.
        """
        body = ctx.body
        chunked = body.length is None
        # An answer must not wait for the client's next bytes (a 101 is a tunnel to start).
        ex.done.add_done_callback(body.interrupt)
        # NGINX's proxy_read_timeout runs once the request is sent: a client sending its
        # body slowly is client_body_timeout's business, not a silent upstream.
        conn.hold_read_timer(True)
        try:
            while True:
                if ex.head_seen:
                    return False
                data = await body.read()
                if ex.head_seen:
                    if data and ex.status == 101 and not conn.closed:
                        conn.write(data)  # the upstream switched: the rest is its, in order
                    return False
                if ex.done.done():
                    ex.done.result()  # the exchange failed meanwhile: its own error
                if conn.closed:
                    raise UpstreamError(502, "upstream prematurely closed connection while sending request body")
                if not data:
                    break
                conn.write(chunk(data) if chunked else data)
                try:
                    await conn.drain(self.send_timeout)
                except UpstreamError:
                    if ex.head_seen:
                        return False
                    raise
            if chunked:
                conn.write(b"0\r\n\r\n")
            return True
        finally:
            conn.hold_read_timer(False)
            ex.done.remove_done_callback(body.interrupt)


def seconds_text(value: float | str) -> str:
    """An ``$upstream_*_time`` value as NGINX writes it: seconds with millisecond
    resolution (``"0.004"``); ``""`` when not measured. The proxy keeps the float and
    formats it only when a log or header reads it."""
    return value if value.__class__ is str else f"{value:.3f}"  # type: ignore[return-value]


class _Attempt:
    """What one attempt does with its response head: the :class:`Exchange`'s ``on_head``.

    Decides between passing the response on (start the client response, return it as the
    body sink), retrying it (``proxy_next_upstream http_5xx...``: return the discarding sink)
    and refusing it (an unasked 101). An object rather than a closure in
    :meth:`ProxyHandler.__call__`: a closure there made a dozen cells per request.

    Attributes:
        ht: seconds from the attempt's start to its head (``$upstream_header_time``), or
            ``None`` before the head.
        retried: the status of a response set aside for a retry, else 0.
    """

    __slots__ = ("handler", "ctx", "tried", "start", "has_body", "attempt", "times", "ht", "retried")

    def __init__(self, handler: ProxyHandler, ctx: Any, tried: list[Peer], start: float,
                 has_body: bool, attempt: float, times: list[str] | None) -> None:
        self.handler = handler
        self.ctx = ctx
        self.tried = tried
        self.start = start
        self.has_body = has_body
        self.attempt = attempt
        self.times = times
        self.ht: float | None = None
        self.retried = 0

    def __call__(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None) -> Any:
        handler = self.handler
        ctx = self.ctx
        responder = ctx.responder
        times = self.times
        self.ht = ht = time.monotonic() - self.attempt
        if status in handler.retry_statuses and handler._may_retry(
                ctx, self.tried, self.start, sent=True, body_started=self.has_body):
            self.retried = status
            return DISCARD
        if status == 101 and not responder.upgrade_pending:
            # An invalid answer, like a bad header: 502, counted against the peer and
            # retried under proxy_next_upstream invalid_header; nothing was sent yet.
            raise UpstreamError(502, "upstream switched protocols unasked", "invalid_header")
        ctx.upstream_header_time = ht if times is None else _later(times[2], ht)
        ctx.upstream_status = _append(ctx.upstream_status, str(status))
        if status == 101:
            responder.switch_protocols([(n, v) for n, v in headers if n.lower() not in _HIDE_101
                                        and valid_field_value(v)])
            return responder
        hide = handler.hide
        # One scan of all values (the check is per octet, so joining is exact).
        if valid_field_value(b"".join([v for _, v in headers])):
            out = [f for f in headers if f[0].lower() not in hide]
        else:
            out = [(n, v) for n, v in headers if n.lower() not in hide and valid_field_value(v)]
        responder.start(status, out, length, handler.own_fields)
        return responder


def _this_attempt(times: list[str] | None, i: int, value: float | None) -> float | str:
    """The ``i``-th ``$upstream_*_time`` (0 response, 1 connect, 2 header) once this attempt
    measured ``value`` seconds (``None``: not reached): the float itself on a first attempt
    (formatted when read), else appended to the earlier attempts' list."""
    if times is None:
        return "" if value is None else value
    return _later(times[i], value)


def _later(prev: str, value: float | None) -> str:
    """``prev`` (earlier attempts' times, formatted) followed by this attempt's ``value``."""
    return f"{prev}, {'-' if value is None else f'{value:.3f}'}"


def _attempt_over(ctx: Any, times: list[str] | None, rt: float, ct: float | None,
                  ht: float | None) -> list[str]:
    """Fold one finished attempt's times (seconds; ``None`` when not reached: ``-``) into the
    lists NGINX keeps per attempt, like ``$upstream_addr``, and show them on ``ctx``.

    Returns:
        ``[response, connect, header]`` times so far, each ``"0.003, -"``-style text.
    """
    if times is None:
        times = [seconds_text(rt), "-" if ct is None else seconds_text(ct),
                 "-" if ht is None else seconds_text(ht)]
    else:
        times = [_later(times[0], rt), _later(times[1], ct), _later(times[2], ht)]
    ctx.upstream_response_time, ctx.upstream_connect_time, ctx.upstream_header_time = times
    return times


def _list_unanswered(ctx: Any, peer: Peer, status: str) -> None:
    """List an attempt that got no response of its own in ``$upstream_addr`` and
    ``$upstream_status`` (``status``: the gateway's 502/504, or ``-``), and mark it in
    ``ctx.extra["upstream_failed"]`` (attempt indexes), so that the statistics count it as a
    request to the peer, not as one of its responses."""
    if ctx.extra is None:
        ctx.extra = {}
    ctx.extra.setdefault("upstream_failed", set()).add(ctx.upstream_addr.count(", ") + 1
                                                      if ctx.upstream_addr else 0)
    ctx.upstream_addr = _append(ctx.upstream_addr, peer.address)
    ctx.upstream_status = _append(ctx.upstream_status, status)


def _append(prev: str, value: str) -> str:
    return f"{prev}, {value}" if prev else value


class DynamicProxyHandler:
    """``proxy_pass`` with variables (``proxy_pass http://$backend;``), NGINX's rules.

    The URL is evaluated per request. Its host must name an ``upstream`` group or be an IP
    address: with no ``resolver``, NGINX cannot resolve other names at request time either
    (502, ``no resolver defined to resolve ...``). A URI part, if present, replaces the
    request URI as it is; without one the client's request URI is passed. One
    :class:`ProxyHandler` per distinct target is built on first use and kept (bounded).
    """

    MAX_TARGETS = 256

    def __init__(self, build: Any, loc: Any, pp: ProxyPass) -> None:
        self.build = build
        self.loc = loc
        self.pp = pp
        self.url = pp.dynamic
        self.targets: dict[tuple[str, str], ProxyHandler] = {}

    def _target(self, scheme: str, hostport: str) -> ProxyHandler:
        key = (scheme, hostport.lower())
        handler = self.targets.get(key)
        if handler is not None:
            return handler
        groups = self.build.shared["proxy"]["groups"]
        group = groups.get(hostport.lower())
        if group is None:
            host, port = _split_hostport(hostport, "443" if scheme == "https" else "80")
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise UpstreamError(502, f'no resolver defined to resolve {host}') from None
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise UpstreamError(502, f'invalid port in upstream "{hostport}"')
            group = UpstreamGroup(hostport, Balancer([Peer(host, int(port), hostport)], self.build.clock),
                                  ConnectionPool())
        if len(self.targets) >= self.MAX_TARGETS:
            old = self.targets.pop(next(iter(self.targets)))
            old.group.pool.close_all()
        handler = ProxyHandler(self.build, self.loc, ProxyPass(hostport, None, self.pp.directive, scheme), group)
        self.targets[key] = handler
        return handler

    async def __call__(self, ctx: Any) -> None:
        url = self.url(ctx)
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in ("http", "https") or not rest:
            log.error('invalid URL prefix in "%s"', url[:200])
            raise UpstreamError(500, "invalid proxy_pass URL")
        hostport, slash, path = rest.partition("/")
        if not hostport or any(c in hostport for c in " \t\r\n@?#"):
            raise UpstreamError(502, "invalid host in proxy_pass URL")
        if slash:
            if ctx.extra is None:
                ctx.extra = {}
            target = "/" + path
            if not valid_field_value(target.encode("utf-8", "surrogateescape")) or " " in target:
                raise UpstreamError(500, "invalid URI in proxy_pass URL")
            ctx.extra["proxy_uri"] = target
        try:
            handler = self._target(scheme, hostport)
        except UpstreamError as e:
            log.error("%s", e.reason)
            raise
        await handler(ctx)


def _split_hostport(hostport: str, default_port: str) -> tuple[str, str]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, (rest[1:] if rest.startswith(":") else default_port)
    if ":" in hostport:
        host, port = hostport.rsplit(":", 1)
        return host, port
    return hostport, default_port
