"""``status_zone`` and ``metrics``: request statistics, the Prometheus endpoint, the API's numbers.

NGINX Plus collects statistics for servers and locations named by ``status_zone`` and serves
them through its REST API (``ngx_http_api_module``). jwtgate does the same, and also serves
them in the Prometheus text format from a location with ``metrics;``::

    server {
        status_zone api_gateway;
        location /products/ { status_zone products; auth_jwt "API"; ... }
        location = /metrics { metrics; allow 127.0.0.1; deny all; }
    }

Zero cost when unused: a configuration with none of ``metrics``, ``api`` (the NGINX Plus API
module) or ``status_zone`` gets no handler from this module and no resource, so nothing on
the request path changes. When one of them is present, every location gets one LOG-phase
handler (:class:`StatsLogger`) that reads what the request already recorded on its context
(status, byte counts, the ``auth_jwt`` outcome, ``$limit_req_status``, ``$upstream_*``) and
updates the metrics of :mod:`jwtgate.observability.metrics`; values kept by other objects
(token caches, key sets, peers, connections) are copied in at most once a second by a
per-configuration :class:`StatusResource`, and before every scrape.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from jwtgate.conf.spec import Ctx, DirectiveSpec, Inherit
from jwtgate.modules.base import Module, Phase, Resource
from jwtgate.observability import metrics, stats
from jwtgate.observability.metrics import (SYNC_INTERVAL, auth_reason, code_class, count_sub, exposition,
                                           get_metrics, write_top_snapshot)

__all__ = ["StatusModule", "StatsLogger", "MetricsHandler", "StatusResource", "enabled"]

log = logging.getLogger("jwtgate.status")

#: A zone name: what NGINX Plus accepts in practice, bounded (it becomes a label and a JSON key).
_ZONE_NAME = re.compile(r"[A-Za-z0-9_.:@\-]{1,64}")
#: The separators of ``$upstream_*`` lists: servers of one group, then internal redirects.
_LIST = re.compile(r", | : ")
#: Directives whose presence turns statistics on.
_TRIGGERS = ("metrics", "api", "status_zone")

DIRECTIVES = (
    DirectiveSpec("status_zone", "status", Ctx.SERVER | Ctx.LOCATION, 1, 1, inherit=Inherit.NONE,
                  syntax="status_zone zone;",
                  doc="Collects request statistics of this server or location under `zone`: requests "
                      "and responses by status, bytes received and sent. They are served by the `api` "
                      "location (`/api/N/http/server_zones`, `/api/N/http/location_zones`) and by "
                      "`metrics`. Several servers (or locations) may share a zone; their numbers add up.",
                  nginx_notes="Not valid inside `if`. `processing` is always 0."),
    DirectiveSpec("metrics", "status", Ctx.LOCATION, 0, 0, inherit=Inherit.NONE,
                  syntax="metrics;",
                  doc="Answers `GET` in this location with the gateway's metrics in the Prometheus text "
                      "format (OpenMetrics when the `Accept` header asks for "
                      "`application/openmetrics-text`), summed over all worker processes: requests by "
                      "zone and status class, `auth_jwt` outcomes by reason, verified-token cache hits "
                      "and misses, key sets, `limit_req` decisions, upstream response times and peer "
                      "health, connections. Protect it with `allow`/`deny` or `auth_jwt`. jwtgate only; "
                      "see docs/observability.md."),
)


def enabled(build: Any) -> bool:
    """Whether the configuration uses ``metrics``, ``api`` or ``status_zone`` anywhere."""
    http = build.http
    if http is None:
        return False
    stack = [http]
    while stack:
        level = stack.pop()
        if any(level.own(name) for name in _TRIGGERS):
            return True
        stack.extend(level.children)
    return False


def _server_zone(loc: Any) -> str:
    level = loc
    while level is not None and level.ctx is not Ctx.SERVER:
        level = level.parent
    own = level.own("status_zone") if level is not None else []
    return own[-1][0] if own else ""


class StatusState:
    """What the handlers of one configuration share: its :class:`Collector` once open."""

    __slots__ = ("collector", "caches")

    def __init__(self) -> None:
        self.collector: Any = None
        #: ``[cache, hits, misses]`` of the static verifiers, synced after every request
        self.caches: list[list[Any]] = []


class StatusModule(Module):
    """``status_zone`` and ``metrics``; statistics for the ``api`` module."""

    name = "status"
    directives = DIRECTIVES
    #: directives that make this module answer the location (the static module steps aside)
    content_directives = ("metrics",)

    def declare(self, build: Any) -> None:
        build.shared["status"] = {"enabled": None, "state": StatusState(), "loaded_at": time.time()}

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        if d.name == "status_zone":
            name = d.args[0]
            if not _ZONE_NAME.fullmatch(name):
                raise build.error(f'invalid zone name "{name}" in "status_zone" directive (1 to 64 '
                                  'letters, digits and "_.:@-")', d)
            return name
        return True

    def _enabled(self, build: Any) -> bool:
        shared = build.shared["status"]
        if shared["enabled"] is None:
            shared["enabled"] = enabled(build)
        return bool(shared["enabled"])

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        if not self._enabled(build):
            return {}
        out: dict[Phase, list[Any]] = {Phase.LOG: [StatsLogger(build, loc)]}
        own = loc.own("metrics")
        if own:
            if loc.own("proxy_pass"):
                raise build.error('"metrics" and "proxy_pass" in one location', own[-1][1])
            out[Phase.CONTENT] = [MetricsHandler(build.shared["status"]["state"])]
        return out

    def resources(self, build: Any) -> list[Resource]:
        if not self._enabled(build):
            return []
        return [StatusResource(build)]


class StatsLogger:
    """The LOG-phase handler of one location: counts the request in the metrics.

    Reads only what the request recorded: ``ctx.status``, ``ctx.request_length``,
    ``ctx.bytes_sent``, the ``auth_jwt`` outcome (``ctx.jwt`` and ``ctx.extra["auth_jwt"]``),
    ``ctx.limit_req_status`` (and ``ctx.extra["limit_req_zone"]``) and ``$upstream_addr``,
    ``$upstream_status``, ``$upstream_response_time``, ``$upstream_header_time``.
    """

    __slots__ = ("server_zone", "location_zone", "auth", "revoked", "limits", "upstream", "state",
                 "_children", "_m")

    def __init__(self, build: Any, loc: Any) -> None:
        self.server_zone = _server_zone(loc)
        # (also built for a server level: the requests that match none of its locations)
        own = loc.own("status_zone") if loc.ctx is Ctx.LOCATION else []
        self.location_zone = own[-1][0] if own else None
        conf = loc.get("auth_jwt")
        self.auth = conf is not None and not getattr(conf, "off", True)
        self.revoked = frozenset(id(v) for rule in (loc.get_all("auth_jwt_require") if self.auth else ())
                                 for v in rule.values if _uses_keyval(build, v))
        zones = build.shared.get("limit_req", {})
        self.limits = tuple((z.name, z.key) for z in (zones.get(li.zone) for li in loc.get_all("limit_req"))
                            if z is not None)
        self.upstream = _upstream_name(build, loc)
        self.state = build.shared["status"]["state"]
        self._children: dict[int, tuple[Any, ...]] = {}
        self._m: Any = None

    def __repr__(self) -> str:
        return f"<StatsLogger server_zone={self.server_zone!r} location_zone={self.location_zone!r}>"

    def _status_children(self, status: int) -> tuple[Any, ...]:
        m = self._m
        cls, code = code_class(status), str(status)
        made = (m.requests.labels(self.server_zone, cls, code), m.received.labels(self.server_zone),
                m.sent.labels(self.server_zone))
        if self.location_zone is not None:
            z = self.location_zone
            made += (m.loc_requests.labels(z, cls, code), m.loc_received.labels(z), m.loc_sent.labels(z))
        self._children[status] = made
        return made

    def __call__(self, ctx: Any) -> None:
        m = self._m
        if m is None:
            m = self._m = get_metrics()
        status = ctx.status
        children = self._children.get(status) or self._status_children(status)
        children[0].inc()
        children[1].inc(ctx.request_length)
        children[2].inc(ctx.bytes_sent)
        if len(children) > 3:
            children[3].inc()
            children[4].inc(ctx.request_length)
            children[5].inc(ctx.bytes_sent)
        extra = ctx.extra
        if self.auth:
            self._auth(ctx, m, extra)
        if self.limits and ctx.limit_req_status:
            self._limit_req(ctx, m, extra)
        if ctx.upstream_addr:
            self._upstream(ctx, m)

    def _auth(self, ctx: Any, m: Any, extra: Any) -> None:
        outcome = extra.get("auth_jwt") if extra is not None else None
        if outcome is not None:
            m.auth.labels(auth_reason(outcome, self.revoked)).inc()
        elif ctx.jwt is not None:
            m.auth.labels("ok").inc()
        if ctx.jwt is not None:
            count_sub(ctx.jwt.claims.get("sub"))
        for entry in self.state.caches:
            cache = entry[0]
            if cache.hits != entry[1] or cache.misses != entry[2]:
                if cache.hits > entry[1]:
                    m.cache_hits.inc(cache.hits - entry[1])
                if cache.misses > entry[2]:
                    m.cache_misses.inc(cache.misses - entry[2])
                entry[1], entry[2] = cache.hits, cache.misses

    def _limit_req(self, ctx: Any, m: Any, extra: Any) -> None:
        decision = ctx.limit_req_status.lower()
        hint = extra.get("limit_req_zone") if extra is not None else None
        active = [name for name, key in self.limits if key(ctx)]
        if not active:
            return
        decider = hint if hint in active else active[0]
        if decision == "passed":
            for name in active:
                m.limit_req.labels(name, "passed").inc()
            return
        m.limit_req.labels(decider, decision).inc()
        if not decision.startswith("rejected"):
            for name in active:
                if name != decider:
                    m.limit_req.labels(name, "passed").inc()

    def _upstream(self, ctx: Any, m: Any) -> None:
        addrs = _LIST.split(ctx.upstream_addr)
        statuses = _LIST.split(ctx.upstream_status) if ctx.upstream_status else []
        group = self.upstream
        if group is None:
            # proxy_pass with variables: the address may come from the request, so it never
            # becomes a label (unbounded series); these requests count under "-".
            group, addrs = "-", ["-"] * len(addrs)
        failed = ctx.extra.get("upstream_failed", ()) if ctx.extra else ()
        for i, addr in enumerate(addrs):
            # "-": an attempt that got no response (connect error, timeout, reset)
            code = "" if i in failed else (statuses[i] if i < len(statuses) else "")
            status = int(code) if code.isdigit() else 0
            m.peer_requests.labels(group, addr, code_class(status), code or "-").inc()
        last = addrs[-1]
        labels = (group, last)
        if len(addrs) - 1 not in failed:  # times of a peer that answered, not of a failed attempt
            seconds = _seconds(ctx.upstream_response_time)
            if seconds is not None:
                m.upstream_time.labels(*labels).observe(seconds)
            header = _seconds(ctx.upstream_header_time)
            if header is not None:
                m.upstream_header.labels(*labels).inc(header)
        m.peer_sent.labels(*labels).inc(ctx.request_length)
        m.peer_received.labels(*labels).inc(ctx.bytes_sent)
        m.peer_selected.labels(*labels).set(time.time())


def _seconds(text: float | str) -> float | None:
    """The last number of an ``$upstream_*_time`` value (``"0.012"``, ``"0.001, 0.004"``),
    or the value itself when the proxy kept it as a float (seconds)."""
    if text.__class__ is float:
        return text  # type: ignore[return-value]
    if not text:
        return None
    last = text.replace(":", ",").rsplit(",", 1)[-1].strip()
    try:
        value = float(last)
    except ValueError:
        return None
    return value if value >= 0 else None


def _upstream_name(build: Any, loc: Any) -> str | None:
    """The upstream group name of the location's static ``proxy_pass``, else ``None``."""
    own = loc.own("proxy_pass")
    if not own:
        return None
    pp = own[-1][0]
    if getattr(pp, "dynamic", None) is not None:
        return None
    groups = build.shared.get("proxy", {}).get("groups", {})
    group = groups.get(pp.host.lower()) or groups.get(f"implicit:{pp.scheme}:{pp.host.lower()}")
    return group.name if group is not None else pp.host


def _uses_keyval(build: Any, value: Any) -> bool:
    """Whether a complex value depends on a keyval variable, directly or through ``map``."""
    keyval = getattr(build, "keyval_variables", None) or set()
    if not keyval:
        return False
    deps = build.shared.get("var_deps", {})
    seen: set[str] = set()
    stack = [n.lower() for n in getattr(value, "variables", ())]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in keyval:
            return True
        stack.extend(deps.get(name, ()))
    return False


class MetricsHandler:
    """The content handler of ``metrics;``: the Prometheus exposition of every metric.

    ``GET`` and ``HEAD`` only (405 with ``Allow`` otherwise, as NGINX's API answers).
    """

    __slots__ = ("state",)

    def __init__(self, state: StatusState) -> None:
        self.state = state

    async def __call__(self, ctx: Any) -> None:
        if ctx.method not in ("GET", "HEAD"):
            ctx.responder.send(405, [(b"Allow", b"GET, HEAD")])
            return
        collector = self.state.collector
        if collector is not None:
            collector.sync(force=True)  # this worker's copies are fresh; the others' within a second
        try:
            body, content_type = exposition(ctx.http.get("accept", ""))
        except Exception:
            log.exception("metrics exposition failed")
            ctx.responder.send(500)
            return
        ctx.responder.send(200, [(b"Cache-Control", b"no-cache")], body=body,
                           content_type=content_type.encode("ascii"))


class StatusResource:
    """The statistics of one configuration while it serves: creates the metrics, installs the
    connection hook, copies values kept elsewhere once a second, writes the top-talker snapshot.
    """

    def __init__(self, build: Any) -> None:
        self.build = build
        self.state: StatusState = build.shared["status"]["state"]
        self.loaded_at: float = build.shared["status"]["loaded_at"]
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return "<status statistics>"

    async def open(self, keep: dict[str, Any]) -> None:
        from jwtgate.http import server  # (the layer above modules: only when statistics start)

        m = get_metrics()
        self.build.loaded_at = self.loaded_at
        collector = metrics.Collector(self.build)
        self.state.caches = [[c, c.hits, c.misses] for c in collector.caches()]
        collector.per_request = {id(entry[0]) for entry in self.state.caches}  # StatsLogger copies these
        self.state.collector = collector
        stats.CURRENT.update(build=self.build, collector=collector, loaded_at=self.loaded_at)
        # Generations: distinct configuration loads of this instance (a master's workers
        # share one load; their plan was compiled before the fork).
        generations = keep.setdefault("status_generations", set())
        generations.add(self.loaded_at)
        m.generation.set(metrics.config_generation(self.loaded_at, len(generations)))
        server.CONNECTION_HOOK = metrics.connection_hook  # stays on once on: a few calls per connection
        collector.create_series()
        collector.sync(force=True)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                self.state.collector.sync()
            except Exception:  # statistics never take a worker down
                log.exception("statistics update failed")

    def flush(self) -> None:
        collector = self.state.collector
        if collector is not None:
            try:
                collector.sync(force=True)
            except Exception:
                log.exception("statistics update failed")

    def reopen(self) -> None:
        pass

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self.flush()
        write_top_snapshot(force=True)
