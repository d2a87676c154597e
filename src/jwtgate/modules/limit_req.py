"""The ``limit_req`` module (``ngx_http_limit_req_module``): leaky-bucket request rate limits.

NGINX semantics: excess in thousandths of a request; requests over the rate are delayed up to
``burst`` (from ``delay=`` on, or never with ``nodelay``), beyond it rejected with
``limit_req_status``; an empty key is not counted; several ``limit_req`` lines all apply, and
a request rejected by one of them spends nothing in the others; ``limit_req_dry_run`` counts
without delaying or rejecting; ``$limit_req_status`` says what happened; rejections are
logged at ``limit_req_log_level``, delays one level lower.

Phase rule: a limit whose key depends on ``$jwt_*`` variables (directly or through a ``map``)
runs after authentication, so only verified tokens are counted and a forged token never
spends another client's budget; every other limit runs before authentication, as in NGINX's
preaccess phase, so floods of bad tokens are throttled too.

State: a zone lives in process memory (:mod:`jwtgate.state.memory`, kept across reloads as
NGINX keeps its shared memory zones) or, with ``sync``, in the ``state_redis`` server
(:mod:`jwtgate.state.redis`), shared by every process that uses the server.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import MIN_ZONE_SIZE, parse_flag, parse_rate, parse_zone
from jwtgate.errors import StateError
from jwtgate.modules.base import Module, Phase, Resource
from jwtgate.modules.state import redis_connection
from jwtgate.observability.errorlog import NOTICE
from jwtgate.state.bucket import delay_ms
from jwtgate.state.memory import MemoryLimitZone, acquire, commit, monotonic_ms, peek
from jwtgate.state.redis import RedisLimitStore
from jwtgate.state.store import Bucket, capacity_of

__all__ = ["LimitReqModule", "LimitReqHandler", "Zone", "LimitReq"]

log = logging.getLogger("jwtgate.limit_req")

#: Largest ``burst=``/``delay=`` accepted: keeps every excess exact in Lua's doubles.
MAX_BURST = 1_000_000_000

_LEVELS = {"info": logging.INFO, "notice": NOTICE, "warn": logging.WARNING, "error": logging.ERROR}
#: NGINX logs delays one level below rejections (``info`` stays ``info``).
_DELAY_LEVELS = {"info": logging.INFO, "notice": logging.INFO, "warn": NOTICE, "error": logging.WARNING}
#: ``$limit_req_status`` values by severity, to combine the limits before and after auth.
_RANK = {"": 0, "PASSED": 1, "DELAYED": 2, "DELAYED_DRY_RUN": 2, "REJECTED": 3, "REJECTED_DRY_RUN": 3}


def _spec(name: str, ctx: Ctx, lo: int, hi: int | None, syntax: str, doc: str, **kw: Any) -> DirectiveSpec:
    return DirectiveSpec(name, "limit_req", ctx, lo, hi, syntax=syntax, doc=doc, **kw)


DIRECTIVES = (
    _spec("limit_req_zone", Ctx.HTTP, 3, 4, "limit_req_zone key zone=name:size rate=rate [sync];",
          "A zone of leaky-bucket states keyed by `key` (a request whose key is empty is not "
          "limited); `rate` in requests per second (`10r/s`) or minute (`30r/m`). A zone holds "
          "about 16,000 keys per megabyte and forgets the least recently used when full. "
          "Without `sync` the state is in the memory of each worker process: a single-process "
          "gateway keeps it across reloads, but under a master (`worker_processes` above 1) a "
          "reload starts new workers with empty zones; with `sync` it is in the `state_redis` "
          "server, shared by every process and every gateway that uses it, and survives both.",
          inherit=Inherit.NONE,
          nginx_notes="`sync` keeps the zone in Redis (`state_redis`) rather than in NGINX Plus's "
                      "`zone_sync`. A zone whose key changes across a reload starts empty (NGINX "
                      "refuses the reload)."),
    _spec("limit_req", HSL, 1, 3, "limit_req zone=name [burst=number] [nodelay | delay=number];",
          "Limits the request rate with the zone. Requests over the rate wait, up to `burst` "
          "excess requests; beyond it they are rejected. `delay=N` lets the first N excess "
          "requests through at once, `nodelay` all of them. Several `limit_req` lines may apply; "
          "a request rejected by one spends nothing in the others. A limit keyed on `$jwt_*` "
          "variables (or a `map` of them) is applied after authentication, every other one "
          "before it.",
          inherit=Inherit.ARRAY,
          nginx_notes="NGINX applies every limit before `auth_jwt`; jwtgate applies limits keyed "
                      "on verified claims after it, so forged tokens spend nobody's budget. "
                      "`burst` and `delay` are at most 1000000000."),
    _spec("limit_req_status", HSL, 1, 1, "limit_req_status code;",
          "Status code of rejected requests (400-599).", default="503"),
    _spec("limit_req_log_level", HSL, 1, 1, "limit_req_log_level info | notice | warn | error;",
          "Log level of rejections; delays are logged one level lower.", default="error"),
    _spec("limit_req_dry_run", HSL, 1, 1, "limit_req_dry_run on | off;",
          "Counts, logs and sets `$limit_req_status`, but never delays or rejects.", default="off"),
)


@dataclass(eq=False)
class Zone:
    """A ``limit_req_zone``.

    Attributes:
        name, key, rate, size: as configured (``rate`` in thousandths of a request per second).
        capacity: most keys (64-byte states in ``size``).
        sync: whether the state is in Redis.
        uses_jwt: whether the key depends on ``$jwt_*`` (then it is applied after auth).
        memory: the in-process state (``None`` with ``sync``); swapped on reload for the
            previous configuration's zone of the same name, key and size.
    """

    name: str
    key: Any
    rate: int
    size: int
    capacity: int
    sync: bool
    uses_jwt: bool
    directive: Any
    memory: MemoryLimitZone | None = None

    def __repr__(self) -> str:
        return (f"<limit_req_zone {self.name} key={self.key.source} rate={self.rate / 1000:g}r/s "
                f"{'redis' if self.sync else 'memory'}>")


@dataclass(frozen=True, slots=True)
class LimitReq:
    """A ``limit_req`` line: zone name, burst and ``delay=`` threshold (thousandths; with
    ``nodelay`` the burst itself, as no accepted request has more excess)."""

    zone: str
    burst: int
    delay: int
    directive: Any


class _Line:
    """One ``limit_req`` line of a handler, resolved at load time."""

    __slots__ = ("zone", "key", "name", "bucket", "delay")

    def __init__(self, zone: Zone, limit: LimitReq) -> None:
        self.zone = zone
        self.key = zone.key
        self.name = zone.name
        self.bucket = Bucket(zone.name, zone.rate, limit.burst, zone.capacity)
        self.delay = limit.delay

    @property
    def memory(self) -> MemoryLimitZone:
        assert self.zone.memory is not None
        return self.zone.memory


class LimitReqModule(Module):
    """``limit_req_zone``, ``limit_req``, ``limit_req_*`` and ``$limit_req_status``."""

    name = "limit_req"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        build.variables.add("limit_req_status", lambda ctx: ctx.limit_req_status, self.name)
        build.shared["limit_req"] = {}

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        if d.name == "limit_req_zone":
            return self._zone(build, d)
        if d.name == "limit_req":
            return self._limit(build, level, d)
        if d.name == "limit_req_status":
            code = d.args[0]
            if not code.isdigit() or not 400 <= int(code) <= 599:
                raise build.error(f'value must be between 400 and 599 in "{code}"', d)
            return int(code)
        if d.name == "limit_req_dry_run":
            try:
                return parse_flag(d.args[0])
            except ValueError:
                raise build.error(f'invalid value "{d.args[0]}" in "limit_req_dry_run" directive, '
                                  'it must be "on" or "off"', d) from None
        if d.name == "limit_req_log_level":
            if d.args[0] not in _LEVELS:
                raise build.error(f'invalid value "{d.args[0]}" in "limit_req_log_level" directive', d)
            return d.args[0]
        return d.args

    def _zone(self, build: Any, d: Any) -> Zone:
        key = build.complex(d.args[0], d)
        name = None
        size = 0
        rate = 0
        sync = False
        for arg in d.args[1:]:
            if arg.startswith("zone="):
                try:
                    name, size = parse_zone(arg[5:])
                except ValueError:
                    raise build.error(f'invalid zone size "{arg}"', d) from None
                if size < MIN_ZONE_SIZE:
                    raise build.error(f'zone "{arg}" is too small', d)
            elif arg.startswith("rate="):
                text = arg[5:]
                try:
                    count = round(parse_rate(text) * (60 if text.endswith("r/m") else 1))
                except ValueError:
                    raise build.error(f'invalid rate "{arg}"', d) from None
                # NGINX: rate * 1000 / scale, in whole thousandths (1r/m is 16)
                rate = count * 1000 // (60 if text.endswith("r/m") else 1)
            elif arg == "sync":
                sync = True
            else:
                raise build.error(f'invalid parameter "{arg}"', d)
        if not name:
            raise build.error('"limit_req_zone" must have "zone" parameter', d)
        if rate <= 0:
            raise build.error('"limit_req_zone" must have "rate" parameter', d)
        zones = build.shared["limit_req"]
        if name in zones:
            raise build.error(f'limit_req_zone "{name}" is already bound to key "{zones[name].key.source}"', d)
        capacity = capacity_of(size)
        zone = Zone(name, key, rate, size, capacity, sync, build.jwt_variable_used(key.variables) is not None, d,
                    None if sync else MemoryLimitZone(name, capacity, rate))
        zones[name] = zone
        return zone

    def _limit(self, build: Any, level: Any, d: Any) -> LimitReq:
        zone = None
        burst = 0
        delay: int | None = 0
        for arg in d.args:
            key, eq, value = arg.partition("=")
            if key == "zone" and eq:
                zone = value
            elif key in ("burst", "delay") and eq:
                if not value.isdigit() or not 0 < int(value) <= MAX_BURST:
                    raise build.error(f'invalid {key} value "{arg}"', d)
                if key == "burst":
                    burst = int(value)
                else:
                    delay = int(value) * 1000
            elif arg == "nodelay":
                delay = None
            else:
                raise build.error(f'invalid parameter "{arg}"', d)
        if not zone:
            raise build.error('"limit_req" must have "zone" parameter', d)
        if any(other.zone == zone for other, _ in level.own("limit_req")):
            raise build.error('"limit_req" directive is duplicate', d)
        # nodelay: NGINX's delay threshold is out of reach; no accepted excess passes the burst
        return LimitReq(zone, burst * 1000, burst * 1000 if delay is None else delay, d)

    def finish(self, build: Any) -> None:
        zones = build.shared["limit_req"]
        synced = [z for z in zones.values() if z.sync]
        conn = redis_connection(build)
        if synced and conn is None:
            raise build.error(f'zone "{synced[0].name}" has the "sync" parameter, which needs '
                              '"state_redis"', synced[0].directive)
        build.shared["limit_req_redis"] = RedisLimitStore(conn) if synced and conn is not None else None
        workers = build.main_values.get("worker_processes")
        if workers is not None and workers[0] > 1:
            for zone in zones.values():
                if not zone.sync:
                    build.warn(f'limit_req_zone "{zone.name}" is kept per worker process: with '
                               f'worker_processes {workers[0]} each worker enforces its rate on its own; '
                               'add "sync" and "state_redis" to share it', zone.directive)

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        limits = loc.get_all("limit_req")
        if not limits:
            return {}
        zones = build.shared["limit_req"]
        pre: list[tuple[Zone, LimitReq]] = []
        post: list[tuple[Zone, LimitReq]] = []
        for limit in limits:
            zone = zones.get(limit.zone)
            if zone is None:
                raise build.error(f'zone "{limit.zone}" is unknown', limit.directive)
            (post if zone.uses_jwt else pre).append((zone, limit))
        kw = dict(status=loc.get("limit_req_status", 503), dry_run=loc.get("limit_req_dry_run", False),
                  log_level=loc.get("limit_req_log_level", "error"), redis=build.shared["limit_req_redis"],
                  now=monotonic_ms(build.clock))
        out: dict[Phase, list[Any]] = {}
        if pre:
            out[Phase.PREACCESS] = [LimitReqHandler(tuple(pre), **kw)]
        if post:
            out[Phase.POSTACCESS] = [LimitReqHandler(tuple(post), **kw)]
        return out

    def resources(self, build: Any) -> list[Resource]:
        memory = [z for z in build.shared["limit_req"].values() if not z.sync]
        return [ZoneStates(memory)] if memory else []




class ZoneStates:
    """The memory zones of a configuration, as a plan resource: on open, a zone takes over the
    state of the running configuration's zone with the same name, key and size (NGINX keeps
    its shared memory zones across reloads)."""

    def __init__(self, zones: list[Zone]) -> None:
        self.zones = zones

    def __repr__(self) -> str:
        return f"<limit_req memory zones {[z.name for z in self.zones]}>"

    async def open(self, keep: dict[str, Any]) -> None:
        previous: dict[str, tuple[str, int, MemoryLimitZone]] = keep.get("limit_req", {})
        current = {}
        for zone in self.zones:
            old = previous.get(zone.name)
            if old is not None and old[:2] == (zone.key.source, zone.capacity):
                old[2].rate = zone.rate
                zone.memory = old[2]
            assert zone.memory is not None
            current[zone.name] = (zone.key.source, zone.capacity, zone.memory)
        keep["limit_req"] = current

    def flush(self) -> None:
        pass

    def reopen(self) -> None:
        pass

    async def close(self) -> None:
        pass


class LimitReqHandler:
    """Applies one phase's ``limit_req`` lines of a location.

    Args:
        limits: ``(zone, line)`` pairs, in configuration order.
        status: ``limit_req_status``.
        dry_run: ``limit_req_dry_run``.
        log_level: ``limit_req_log_level``.
        redis: the store of ``sync`` zones (``None`` when there are none).
        now: the clock of memory zones (ms).
    """

    __slots__ = ("limits", "lines", "status", "dry_run", "limit_level", "delay_level", "redis",
                 "now", "memory_only")

    def __init__(self, limits: tuple[tuple[Zone, LimitReq], ...], status: int, dry_run: bool,
                 log_level: str = "error", redis: RedisLimitStore | None = None,
                 now: Any = None) -> None:
        self.limits = limits
        self.lines = tuple(_Line(zone, limit) for zone, limit in limits)
        self.status = status
        self.dry_run = dry_run
        self.limit_level = _LEVELS[log_level]
        self.delay_level = _DELAY_LEVELS[log_level]
        self.memory_only = not any(zone.sync for zone, _ in limits)
        self.redis = None if self.memory_only else redis
        self.now = now or monotonic_ms()

    def __repr__(self) -> str:
        return f"<LimitReqHandler {[line.name for line in self.lines]} status={self.status}>"

    async def __call__(self, ctx: Any) -> int | None:
        active: list[_Line] = []
        keys: list[str] = []
        for line in self.lines:
            key = line.key(ctx)
            if not key:
                continue
            if len(key) > 65535:
                log.error('the value of the "%s" key is more than 65535 bytes, client: %s',
                          line.key.source, ctx.conn.remote_addr)
                continue
            active.append(line)
            keys.append(key)
        if not active:
            return None
        now = self.now()
        if self.memory_only:
            rejected, excess = acquire([(line.memory, key, line.bucket.burst)
                                        for line, key in zip(active, keys)], now)
        else:
            try:
                rejected, excess = await self._shared(active, keys, now)
            except StateError:
                # logged by the connection (once per interval); the limit fails closed
                return self._set(ctx, "REJECTED_DRY_RUN" if self.dry_run else "REJECTED")
        if rejected >= 0:
            line = active[rejected]
            e = excess[rejected]
            log.log(self.limit_level, 'limiting requests%s, excess: %d.%03d by zone "%s", client: %s, server: %s',
                    ", dry run" if self.dry_run else "", e // 1000, e % 1000, line.name,
                    ctx.conn.remote_addr, _server(ctx))
            _decided_by(ctx, line.name)
            return self._set(ctx, "REJECTED_DRY_RUN" if self.dry_run else "REJECTED")
        # NGINX's max delay: the last limit first, an earlier one only if it waits longer
        wait = 0
        slowest = -1
        for i in range(len(active) - 1, -1, -1):
            line = active[i]
            d = delay_ms(excess[i], line.delay, line.bucket.rate)
            if d > wait:
                wait, slowest = d, i
        if wait == 0:
            self._set(ctx, "PASSED")
            return None
        e = excess[slowest]
        log.log(self.delay_level, 'delaying request%s, excess: %d.%03d, by zone "%s", client: %s, server: %s',
                ", dry run" if self.dry_run else "", e // 1000, e % 1000, active[slowest].name,
                ctx.conn.remote_addr, _server(ctx))
        _decided_by(ctx, active[slowest].name)
        if self.dry_run:
            self._set(ctx, "DELAYED_DRY_RUN")
            return None
        self._set(ctx, "DELAYED")
        await asyncio.sleep(wait / 1000)
        return None

    def _set(self, ctx: Any, status: str) -> int | None:
        """Record ``$limit_req_status`` (the most severe of both phases); the answer to return."""
        if _RANK[status] >= _RANK[ctx.limit_req_status]:
            ctx.limit_req_status = status
        return self.status if status == "REJECTED" else None

    async def _shared(self, active: list[_Line], keys: list[str], now: int) -> tuple[int, list[int]]:
        """Memory zones looked up, then Redis zones acquired, then memory zones accounted:
        a request rejected anywhere spends nothing anywhere.

        Raises:
            StateError: Redis is unavailable and fails closed.
        """
        assert self.redis is not None
        excess = [0] * len(active)
        mem = [i for i, line in enumerate(active) if not line.zone.sync]
        red = [i for i, line in enumerate(active) if line.zone.sync]
        entries = [(active[i].memory, keys[i], active[i].bucket.burst) for i in mem]
        if entries:
            seen = peek(entries, now)
            if seen.rejected >= 0:
                excess[mem[seen.rejected]] = seen.excess[-1]
                return mem[seen.rejected], excess
        if red:
            try:
                got = await self.redis.acquire([active[i].bucket for i in red], [keys[i] for i in red])
            except StateError:
                if not self.redis.conn.fail_open:
                    raise
            else:
                if got.rejected >= 0:
                    excess[red[got.rejected]] = got.excess[-1]
                    return red[got.rejected], excess
                for i, e in zip(red, got.excess):
                    excess[i] = e
        if entries:
            for i, e in zip(mem, commit(entries, self.now())):
                excess[i] = e
        return -1, excess


def _decided_by(ctx: Any, zone: str) -> None:
    """Record which zone delayed or rejected the request (``ctx.extra["limit_req_zone"]``), for
    the per-zone statistics (:mod:`jwtgate.modules.status`); not on the passing path."""
    extra = ctx.extra
    if extra is None:
        extra = ctx.extra = {}
    extra["limit_req_zone"] = zone


def _server(ctx: Any) -> str:
    server = ctx.server
    return (server.primary_name or "_") if server is not None else "_"
