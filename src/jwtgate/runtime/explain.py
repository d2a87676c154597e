"""A dry run of one request through a compiled plan: ``jwtgate explain``.

The request is built as the HTTP layer builds it (:func:`jwtgate.http.head.read_head`: the
same target and header rules), then taken through the same steps as
:class:`~jwtgate.runtime.phases.Dispatcher`: server by address and ``Host``, location, the
location's access handlers in order, its content handler. Nothing is sent anywhere and no
socket is opened:

* ``auth_jwt`` runs piece by piece (token extraction, the location's own ``Verifier``,
  each ``auth_jwt_require`` value) so that the verdict comes with its reason, then as a
  whole, so that the status and ``WWW-Authenticate`` are exactly the handler's;
* ``limit_req`` keys are computed and shown, but never counted: zone state is not read
  or written, so explaining spends no client's budget (whether a real request would be
  delayed or refused depends on live traffic);
* the core and rewrite modules' handlers (``client_max_body_size``, ``return``, ``set``) run
  against a recording stand-in for the responder; any other handler is listed, not run;
* ``proxy_pass`` gives the exact upstream request head via
  :meth:`~jwtgate.modules.proxy.ProxyHandler.request_head`; no connection is made.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jwtgate.errors import HTTPError, JwtgateError, TokenError
from jwtgate.http.head import read_head
from jwtgate.jose.inspect import decode_header, describe_entry, verifying_entry
from jwtgate.jose.keygen import IssueError
from jwtgate.modules.auth_jwt import AuthJwtHandler
from jwtgate.modules.limit_req import LimitReqHandler
from jwtgate.modules.proxy import ProxyHandler
from jwtgate.runtime.context import ConnectionInfo, RequestContext
from jwtgate.runtime.phases import _host

__all__ = ["ExplainError", "Explanation", "AuthReport", "LimitReport", "explain_request"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_VAR_NAME = re.compile(r"[A-Za-z0-9_]+")
# Modules whose handlers only read the request, set variables and answer through the
# responder (client_max_body_size, return, set): safe to run against a recording responder.
_PURE_MODULES = frozenset({"jwtgate.modules.core", "jwtgate.modules.rewrite"})
_HANDLER_NAMES = {"body_limit": "client_max_body_size", "handle_return": "return",
                  "rewrite_script": "rewrite"}


class ExplainError(JwtgateError):
    """The request to explain cannot be built: a bad method, URL, header or listen address."""


@dataclass
class AuthReport:
    """What ``auth_jwt`` made of the request.

    Attributes:
        realm: the realm as sent in ``WWW-Authenticate``.
        source: where the token is taken from (``Authorization: Bearer`` or ``$arg_apijwt``).
        token_length: characters of the token found; 0 when none was presented.
        header: the token's JOSE header, decoded and not trusted; ``None`` if undecodable.
        candidates: the keys a JWS header's ``alg`` and ``kid`` select (descriptions); empty for
            a JWE, whose keys are not listed.
        verified_by: the key that verified the token, or ``None``.
        error: why verification failed (``code``, ``detail``), or ``None``.
        requires: one entry per ``auth_jwt_require`` value: ``source``, ``value``, ``ok``, ``code``.
        status: what the handler answers (401/403), ``None`` when it lets the request on.
        challenge: the ``WWW-Authenticate`` value it sends, if any.
    """

    realm: str
    source: str
    token_length: int = 0
    header: dict[str, Any] | None = None
    candidates: list[str] = field(default_factory=list)
    verified_by: str | None = None
    error: TokenError | None = None
    requires: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    challenge: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``error`` as ``{"code", "detail"}``)."""
        return {
            "realm": self.realm, "source": self.source, "token_length": self.token_length,
            "header": self.header, "candidates": self.candidates, "verified_by": self.verified_by,
            "error": {"code": self.error.code, "detail": self.error.detail} if self.error else None,
            "requires": self.requires, "status": self.status, "challenge": self.challenge,
        }


@dataclass
class LimitReport:
    """One ``limit_req`` line: its zone, its key for this request, never counted here.

    Attributes:
        zone: the zone name.
        key_source: the key as configured (``$jwt_claim_sub``).
        key: its value for this request; ``""`` means the request is not counted.
        rate: ``"10r/s"`` or ``"30r/m"``.
        burst, delay: the ``limit_req`` parameters, requests.
        after_auth: whether it runs after ``auth_jwt`` (its key uses ``$jwt_*``).
        dry_run: ``limit_req_dry_run on``.
    """

    zone: str
    key_source: str
    key: str
    rate: str
    burst: int
    delay: int
    after_auth: bool
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, with ``counted``: whether a real request would be counted."""
        return {"zone": self.zone, "key_source": self.key_source, "key": self.key, "rate": self.rate,
                "burst": self.burst, "delay": self.delay, "after_auth": self.after_auth,
                "dry_run": self.dry_run, "counted": bool(self.key)}


@dataclass
class Explanation:
    """The gateway's decision for one request, and how it got there.

    Attributes:
        method, target: the request line.
        host: the ``Host`` header sent.
        local: ``(address, port)`` the request is taken to arrive on.
        remote: the client address (``$remote_addr``).
        server, location: where they are defined (``None`` when not reached).
        steps: each handler of the location in order: ``{"handler", "result"}``.
        auth: the ``auth_jwt`` report, if the location has one and it ran.
        limits: the ``limit_req`` keys computed (never counted).
        variables: ``$jwt_*`` values after authentication.
        status: what the gateway answers itself; ``None`` when it proxies the request.
        decided_by: ``proxy_pass``, ``auth_jwt``, ``auth_jwt_require``, ``limit_req``,
            ``return``, ``client_max_body_size``, ``no location``, ``http``...
        answered: the answer is one the configuration gives (``return``), not a refusal.
        decision: one human sentence.
        response_headers: headers the gateway adds to its own answer (``WWW-Authenticate``).
        upstream: ``{"group", "peers"}`` when proxied.
        upstream_head: the exact bytes of the request head sent upstream, when proxied.
        notes: anything explain could not simulate.
    """

    method: str
    target: str
    host: str
    local: tuple[str, int]
    remote: str
    server: str | None = None
    location: str | None = None
    steps: list[dict[str, str]] = field(default_factory=list)
    auth: AuthReport | None = None
    limits: list[LimitReport] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    decided_by: str = ""
    answered: bool = False
    decision: str = ""
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    upstream: dict[str, Any] | None = None
    upstream_head: bytes | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        """The gateway refuses the request itself (not proxied, not a configured answer)."""
        return self.status is not None and not self.answered

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view; the upstream head as text and as exact base64 bytes."""
        head = self.upstream_head
        return {
            "request": {"method": self.method, "target": self.target, "host": self.host,
                        "local": f"{_hostport(*self.local)}", "remote": self.remote},
            "server": self.server, "location": self.location, "steps": self.steps,
            "auth_jwt": self.auth.to_dict() if self.auth else None,
            "limit_req": [lim.to_dict() for lim in self.limits],
            "variables": self.variables,
            "status": self.status, "decided_by": self.decided_by, "decision": self.decision,
            "refused": self.refused,
            "response_headers": [list(h) for h in self.response_headers],
            "upstream": self.upstream,
            "upstream_head": head.decode("utf-8", "replace") if head is not None else None,
            "upstream_head_base64": base64.b64encode(head).decode() if head is not None else None,
            "notes": self.notes,
        }


class _Responder:
    """Stands in for the HTTP layer's responder: records what a handler would answer."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = self.finished = False
        self.keep_alive = True

    def send(self, status: int, headers: list[tuple[bytes, bytes]] | None = None,
             body: bytes | None = None, content_type: bytes = b"text/html") -> None:
        self.status = status
        self.headers = list(headers or ())
        self.started = self.finished = True


class _DeclaredBody:
    """The body a request declares (``Content-Length``/chunked); explain sends no body."""

    def __init__(self, length: int | None, chunked: bool) -> None:
        self.length = length
        self.chunked = chunked
        self.received = 0
        self.limit: int | None = None

    @property
    def present(self) -> bool:
        return self.chunked or bool(self.length)


def _drive(awaitable: Any) -> int | None:
    """Run a handler coroutine that never waits (the ones explain runs do not); its status."""
    try:
        awaitable.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    awaitable.close()
    raise ExplainError("a handler wanted to wait: not simulated")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_hostport(text: str, default_port: int, what: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ExplainError(f"invalid {what} {text!r}")
        port_s = rest[1:]
    else:
        host, _, port_s = text.partition(":")
    if not host:
        raise ExplainError(f"no host in {what} {text!r}")
    if not port_s:
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ExplainError(f"invalid port in {what} {text!r}")
    return host, int(port_s)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _parse_url(url: str) -> tuple[str | None, int, str, bool]:
    """``URL`` -> (authority host or None, port, request-target, https)."""
    if url.startswith("/") or url == "*":
        return None, 80, url, False
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ExplainError(f"URL must be http://HOST[:PORT]/PATH or /PATH, not {url[:80]!r}")
    https = scheme.lower() == "https"
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:].split("#", 1)[0]
    authority = authority.rpartition("@")[2]  # curl sends userinfo as Authorization, not Host
    host, port = _split_hostport(authority, 443 if https else 80, "URL")
    if not target.startswith("/"):
        target = "/" + target
    return host, port, target, https


def _local_address(plan: Any, host: str | None, port: int, listen: str | None) -> tuple[str, int]:
    if listen is not None:
        return _split_hostport(listen, 80, "listen address")
    if host is not None and _is_ip(host):
        return host, port
    binds = list(plan.binds) or [("0.0.0.0", 80)]
    same_port = [b for b in binds if b[1] == port] if host is not None else []
    addr, bport = (same_port or binds)[0]
    if addr == "0.0.0.0":
        addr = "127.0.0.1"
    elif addr == "::":
        addr = "::1"
    return addr, bport


def _fields(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise ExplainError(f"invalid header name {name[:40]!r}")
        if any(c in value for c in "\r\n\0"):
            raise ExplainError(f'header "{name}" has a CR, LF or NUL in its value')
        out.append((name.encode("ascii"), value.strip(" \t").encode("utf-8")))
    return out


def explain_request(plan: Any, method: str, url: str, headers: Sequence[tuple[str, str]] = (),
                    *, remote_addr: str = "127.0.0.1", listen: str | None = None) -> Explanation:
    """What the gateway running ``plan`` would do with one request, without doing it.

    Args:
        plan: a compiled :class:`~jwtgate.conf.plan.Plan`.
        method: the request method.
        url: ``http://HOST[:PORT]/PATH?QUERY`` (then ``Host`` is ``HOST[:PORT]``, as curl
            sends it) or an origin-form ``/PATH?QUERY`` (then ``Host`` is the listen address
            unless a ``Host`` header is given).
        headers: ``(name, value)`` request headers, in order.
        remote_addr: the client address (``$remote_addr``).
        listen: ``ADDR:PORT`` the request arrives on; default: the URL's address when it is an
            IP address, else the first ``listen`` of the configuration on the URL's port,
            else the first ``listen``.

    Returns:
        The :class:`Explanation`. Errors the HTTP layer would answer (400, 501, 505) are
        part of it (``decided_by == "http"``), not exceptions.

    Raises:
        ExplainError: a method that is not a token, a URL or header that cannot be sent.
    """
    if not _TOKEN.fullmatch(method):
        raise ExplainError(f"invalid method {method[:20]!r}")
    url_host, port, target, https = _parse_url(url)
    local = _local_address(plan, url_host, port, listen)
    fields = _fields(headers)
    if not any(n.lower() == b"host" for n, _ in fields):
        if url_host is not None:
            default = 443 if https else 80
            shown = f"[{url_host}]" if ":" in url_host else url_host
            host_value = shown if port == default else f"{shown}:{port}"
        else:
            host_value = _hostport(*local)
        fields.insert(0, (b"Host", host_value.encode("ascii", "replace")))
    host_header = next(v for n, v in fields if n.lower() == b"host").decode("latin-1")
    ex = Explanation(method, target, host_header, local, remote_addr)
    try:
        head = read_head(method, "1.1", target, fields)
    except HTTPError as err:
        return _decide(ex, err.status, "http", f"the HTTP layer answers {err.status}: {err.reason}")
    conn = ConnectionInfo((remote_addr, 0), local, 1, https=https)
    conn.requests = 1
    ctx = RequestContext(conn, head.method, head.target, head.uri, head.args, head.version,
                         head.headers, head.http)
    ctx.body = _DeclaredBody(head.content_length, head.chunked)
    ctx.responder = _Responder()
    _route(plan, ctx, ex)
    return ex


def _decide(ex: Explanation, status: int | None, by: str, decision: str) -> Explanation:
    ex.status, ex.decided_by, ex.decision = status, by, decision
    return ex


def _route(plan: Any, ctx: RequestContext, ex: Explanation) -> None:
    server = plan.select_server(ctx.conn.server_addr, ctx.conn.server_port, _host(ctx))
    ctx.server = server
    ex.server = f"server {server.primary_name or '_'!s} at {server.file}:{server.line}"
    for handler in server.rewrite:
        status = _drive(handler(ctx))
        if status is not None:
            _decide(ex, ctx.responder.status or status, _name(handler),
                    f"{_name(handler)} in the server block answers {ctx.responder.status or status}")
            ex.answered = status < 0
            return
    found = server.locations.match(ctx.uri)
    if found is None:
        _decide(ex, 404, "no location", f'no location matches "{ctx.uri}": 404')
        return
    loc, ctx.captures = found
    ctx.location = loc
    kind = loc.match.kind or "prefix"
    ex.location = f"location {kind} {loc.match.pattern} at {loc.file}:{loc.line}"
    for i, handler in enumerate(loc.access):
        name, status = _access(handler, ctx, ex, plan)
        if status is not None:
            answered = ctx.responder.status
            if status > 0:
                by, why = _refusal(name, ex.auth)
                _decide(ex, status, by, f"{status}: {why}")
            else:
                _decide(ex, answered, name, f"{name} answers {answered}")
                ex.answered = True
            ex.steps.append({"handler": name, "result": str(ex.status)})
            ex.steps.extend({"handler": _name(h), "result": "not reached"} for h in loc.access[i + 1:])
            ex.response_headers = list(ctx.response_headers)
            return
        ex.steps.append({"handler": name, "result": "passed" if name != "limit_req" else "key computed, not counted"})
    content = loc.content
    if content is None:
        _decide(ex, 404, "no content", "the location has no content handler (proxy_pass, return): 404")
    elif isinstance(content, ProxyHandler):
        ex.upstream_head = content.request_head(ctx)
        balancer = content.group.balancer
        peers = [*getattr(balancer, "primary", ()), *getattr(balancer, "backup", ())]
        ex.upstream = {"group": content.group.name, "peers": [p.address for p in peers]}
        _decide(ex, None, "proxy_pass", f"proxied to upstream {content.group.name} "
                f"({', '.join(ex.upstream['peers'])})")
    else:
        ex.notes.append(f"content handler {_name(content)} is not simulated")
        _decide(ex, None, _name(content), f"answered by {_name(content)} (not simulated)")


def _refusal(name: str, auth: AuthReport | None) -> tuple[str, str]:
    """Who refused, and why, in words."""
    if name != "auth_jwt" or auth is None:
        return name, f"refused by {name}"
    if not auth.token_length:
        return name, f"no token ({auth.source})"
    if auth.error is not None:
        return name, f"token rejected ({auth.error.code}: {auth.error.detail})"
    failed = next((r for r in auth.requires if r["decided"]), None)
    if failed is not None:
        return "auth_jwt_require", f'auth_jwt_require {failed["source"]} is "{failed["value"]}"'
    return name, "refused by auth_jwt"


def _name(handler: Any) -> str:
    if isinstance(handler, AuthJwtHandler):
        return "auth_jwt"
    if isinstance(handler, LimitReqHandler):
        return "limit_req"
    name = getattr(handler, "__name__", type(handler).__name__)
    return _HANDLER_NAMES.get(name, name)


def _pure(handler: Any) -> bool:
    return getattr(handler, "__module__", None) in _PURE_MODULES


def _access(handler: Any, ctx: RequestContext, ex: Explanation, plan: Any) -> tuple[str, int | None]:
    """Explain one access-type handler; returns its name and its status (as the Dispatcher sees it)."""
    name = _name(handler)
    if isinstance(handler, AuthJwtHandler):
        return name, _auth(handler, ctx, ex, plan)
    if isinstance(handler, LimitReqHandler):
        for zone, limit in handler.limits:
            rate = zone.rate
            ex.limits.append(LimitReport(
                zone=zone.name, key_source=zone.key.source, key=zone.key(ctx),
                rate=f"{rate // 1000}r/s" if rate % 1000 == 0 else f"{rate * 60 / 1000:g}r/m",
                burst=limit.burst // 1000, delay=limit.delay // 1000, after_auth=zone.uses_jwt,
                dry_run=handler.dry_run))
        return name, None
    if _pure(handler):
        return name, _drive(handler(ctx))
    ex.notes.append(f"handler {name} is not simulated (assumed to let the request on)")
    return name, None


def _auth(handler: AuthJwtHandler, ctx: RequestContext, ex: Explanation, plan: Any) -> int | None:
    report = AuthReport(realm=handler.realm(ctx),
                        source=handler.token.source if handler.token is not None else "Authorization: Bearer")
    ex.auth = report
    token = handler.extract(ctx)
    report.token_length = len(token)
    keys = handler.verifier.keys
    build = plan.build
    files = list(build.shared["auth_jwt"]["keysets"].items()) if build is not None else []
    if token:
        try:
            report.header = decode_header(token)
        except IssueError:
            report.header = None
        alg = (report.header or {}).get("alg")
        kid = (report.header or {}).get("kid")
        if isinstance(alg, str) and token.count(".") == 2:  # a JWS: the keys its header selects
            cands = keys.candidates(alg, kid if isinstance(kid, str) else None)
            report.candidates = [describe_entry(e, files) for e in cands]
        try:
            vt = handler.verifier.verify(token)
        except TokenError as err:
            report.error = err
        else:
            report.verified_by = describe_entry(verifying_entry(keys, token, vt), files, vt.kid)
    status = _drive(handler(ctx))  # the handler itself decides: status and WWW-Authenticate
    report.status = status
    for name, value in ctx.response_headers:
        if name.lower() == "www-authenticate":
            report.challenge = value
    if ctx.jwt is not None:
        if build is not None:
            ex.variables = _jwt_variables(ctx, build.variables.resolve)
        failed = False
        for rule in handler.requires:
            for value in rule.values:
                v = value(ctx)
                ok = bool(v) and v != "0"
                report.requires.append({"source": value.source, "value": v, "ok": ok, "code": rule.code,
                                        "decided": not ok and not failed})
                failed = failed or not ok
    return status


def _jwt_variables(ctx: RequestContext, resolve: Any) -> dict[str, str]:
    """``$jwt_header_*``, ``$jwt_claim_*`` and ``$jwt_payload``, through the plan's own getters.

    Members whose names cannot be written as a variable name are left out.
    """
    out: dict[str, str] = {}
    jwt = ctx.jwt
    names = [("jwt_header_" + m) for m in jwt.header] + [("jwt_claim_" + m) for m in jwt.claims]
    for name in [*names, "jwt_payload"]:
        if _VAR_NAME.fullmatch(name):
            getter = resolve(name)
            if getter is not None:
                out["$" + name] = getter(ctx)
    return out
