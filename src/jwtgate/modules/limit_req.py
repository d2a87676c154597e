"""The ``limit_req`` module (``ngx_http_limit_req_module``): leaky-bucket request rate limits.

Phase rule: a limit whose key depends on ``$jwt_*`` variables (directly or through a
``map``) runs after authentication, so only verified tokens are counted and a forged token
never spends another client's budget; every other limit runs before authentication, as in
NGINX's preaccess phase, so floods of bad tokens are throttled too. An empty key is not
counted. Rejected requests get ``limit_req_status`` (503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_flag, parse_rate, parse_size
from jwtgate.modules.base import Module, Phase
from jwtgate.state.bucket import delay_ms
from jwtgate.state.memory import MemoryLimitZone

__all__ = ["LimitReqModule", "LimitReqHandler"]

log = logging.getLogger("jwtgate.limit_req")

#: NGINX: "One megabyte zone can keep about 16 thousand 64-byte states."
STATE_BYTES = 64


def _spec(name: str, ctx: Ctx, lo: int, hi: int | None, syntax: str, doc: str, **kw: Any) -> DirectiveSpec:
    return DirectiveSpec(name, "limit_req", ctx, lo, hi, syntax=syntax, doc=doc, **kw)


DIRECTIVES = (
    _spec("limit_req_zone", Ctx.HTTP, 3, 4, "limit_req_zone key zone=name:size rate=rate;",
          "A zone of leaky-bucket states keyed by `key` (`rate` in r/s or r/m).",
          inherit=Inherit.NONE),
    _spec("limit_req", HSL, 1, 3, "limit_req zone=name [burst=number] [nodelay | delay=number];",
          "Limits the request rate of the location with the zone; excess requests up to `burst` "
          "are delayed (or not, with `nodelay`), beyond it rejected.", inherit=Inherit.ARRAY),
    _spec("limit_req_status", HSL, 1, 1, "limit_req_status code;",
          "Status code of rejected requests (400-599).", default="503"),
    _spec("limit_req_log_level", HSL, 1, 1, "limit_req_log_level info | notice | warn | error;",
          "Log level of rejections; delays log one level lower.", default="error"),
    _spec("limit_req_dry_run", HSL, 1, 1, "limit_req_dry_run on | off;",
          "Counts and logs, but never delays or rejects.", default="off"),
)


@dataclass(eq=False)
class Zone:
    """A ``limit_req_zone``: key, rate (thousandths of r/s) and its state store."""

    name: str
    key: Any
    rate: int
    store: MemoryLimitZone
    uses_jwt: bool
    directive: Any


@dataclass(frozen=True, slots=True)
class LimitReq:
    """A ``limit_req`` line: zone name, burst and delay (thousandths), from the directive."""

    zone: str
    burst: int
    delay: int
    directive: Any


class LimitReqModule(Module):
    """``limit_req_zone``, ``limit_req`` and ``$limit_req_status``."""

    name = "limit_req"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        build.variables.add("limit_req_status", lambda ctx: ctx.limit_req_status, self.name)
        build.shared["limit_req"] = {}

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        if d.name == "limit_req_zone":
            return self._zone(build, d)
        if d.name == "limit_req":
            return self._limit(build, d)
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
            if d.args[0] not in ("info", "notice", "warn", "error"):
                raise build.error(f'invalid value "{d.args[0]}" in "limit_req_log_level" directive', d)
            return d.args[0]
        return d.args

    def _zone(self, build: Any, d: Any) -> Zone:
        key = build.complex(d.args[0], d)
        name = size = None
        rate = 0.0
        for arg in d.args[1:]:
            if arg.startswith("zone="):
                name, _, size_s = arg[5:].partition(":")
                try:
                    size = parse_size(size_s)
                except ValueError:
                    raise build.error(f'invalid zone size "{arg}"', d) from None
                if not name:
                    raise build.error(f'invalid zone name "{arg}"', d)
            elif arg.startswith("rate="):
                try:
                    rate = parse_rate(arg[5:])
                except ValueError:
                    raise build.error(f'invalid rate "{arg}"', d) from None
            elif arg == "sync":
                raise build.error('the "sync" parameter of "limit_req_zone" needs shared state, '
                                  'which is not supported yet', d)
            else:
                raise build.error(f'invalid parameter "{arg}"', d)
        if name is None or size is None:
            raise build.error('"limit_req_zone" must have "zone" parameter', d)
        if rate <= 0:
            raise build.error('"limit_req_zone" must have "rate" parameter', d)
        zones = build.shared["limit_req"]
        if name in zones:
            raise build.error(f'duplicate zone "{name}"', d)
        rate_milli = max(1, int(rate * 1000))
        uses_jwt = _depends_on_jwt(build, key.variables)
        zone = Zone(name, key, rate_milli, MemoryLimitZone(name, size // STATE_BYTES, rate_milli), uses_jwt, d)
        zones[name] = zone
        return zone

    def _limit(self, build: Any, d: Any) -> LimitReq:
        zone = None
        burst = 0
        delay: int | None = None
        for arg in d.args:
            key, eq, value = arg.partition("=")
            if key == "zone" and eq and value:
                zone = value
            elif key == "burst" and eq and value.isdigit():
                burst = int(value)
            elif key == "delay" and eq and value.isdigit():
                delay = int(value)
            elif arg == "nodelay":
                delay = -1
            else:
                raise build.error(f'invalid parameter "{arg}"', d)
        if zone is None:
            raise build.error('"limit_req" must have "zone" parameter', d)
        # nodelay: no accepted request waits (NGINX stores delay = burst then).
        delay_milli = burst * 1000 if delay == -1 else (delay or 0) * 1000
        return LimitReq(zone, burst * 1000, delay_milli, d)

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
        status = loc.get("limit_req_status", 503)
        dry_run = loc.get("limit_req_dry_run", False)
        out: dict[Phase, list[Any]] = {}
        if pre:
            out[Phase.PREACCESS] = [LimitReqHandler(tuple(pre), status, dry_run)]
        if post:
            out[Phase.POSTACCESS] = [LimitReqHandler(tuple(post), status, dry_run)]
        return out


def _depends_on_jwt(build: Any, names: tuple[str, ...]) -> bool:
    """Whether any of ``names`` is a ``$jwt_*`` variable or a map over one (transitively)."""
    deps = build.shared.get("var_deps", {})
    seen: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.startswith("jwt_"):
            return True
        stack.extend(deps.get(name, ()))
    return False


class LimitReqHandler:
    """Applies one phase's ``limit_req`` lines of a location.

    Every limit is looked up first; only when all accept is each one accounted, so a
    request rejected by one zone spends nothing in the others (NGINX rolls them back).
    """

    __slots__ = ("limits", "status", "dry_run")

    def __init__(self, limits: tuple[tuple[Zone, LimitReq], ...], status: int, dry_run: bool) -> None:
        self.limits = limits
        self.status = status
        self.dry_run = dry_run

    async def __call__(self, ctx: Any) -> int | None:
        now = int(time.monotonic() * 1000)
        accepted: list[tuple[Zone, str, int]] = []
        wait = 0
        for zone, limit in self.limits:
            key = zone.key(ctx)
            if not key:
                continue
            if len(key) > 65535:
                log.error('limit_req key is too long (%d bytes) in zone "%s"', len(key), zone.name)
                continue
            excess = zone.store.lookup(key, now)
            if excess > limit.burst:
                if self.dry_run:
                    ctx.limit_req_status = "REJECTED_DRY_RUN"
                    return None
                ctx.limit_req_status = "REJECTED"
                log.warning('limiting requests, excess: %d.%03d by zone "%s", client: %s',
                            excess // 1000, excess % 1000, zone.name, ctx.conn.remote_addr)
                return self.status
            accepted.append((zone, key, excess))
            wait = max(wait, delay_ms(excess, limit.delay, zone.rate))
        for zone, key, excess in accepted:
            zone.store.account(key, excess, now)
        if not accepted:
            return None
        if wait > 0:
            if self.dry_run:
                ctx.limit_req_status = "DELAYED_DRY_RUN"
                return None
            ctx.limit_req_status = "DELAYED"
            await asyncio.sleep(wait / 1000)
        else:
            ctx.limit_req_status = "PASSED"
        return None
