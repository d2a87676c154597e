"""The state module: ``state_redis``, the Redis server that shared state lives in.

Zones declared with ``sync`` (``limit_req_zone ... sync``, as NGINX Plus's parameter of that
name) keep their state there, so every worker process of every gateway instance that points
at the same server enforces one limit. The client is a plan resource
(:class:`~jwtgate.state.redis.RedisConnection`): nothing connects while a configuration is
checked; a running gateway connects on first use.

Other modules reach the connection with :func:`redis_connection`.
"""

from __future__ import annotations

from typing import Any

from jwtgate.conf.spec import Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_time
from jwtgate.modules.base import Module, Resource
from jwtgate.state.redis import RedisConnection, check_url

__all__ = ["StateModule", "redis_connection", "DEFAULT_TIMEOUT"]

#: ``timeout=`` by default, seconds: far above a LAN round trip, far below a client's patience.
DEFAULT_TIMEOUT = 0.2

DIRECTIVES = (
    DirectiveSpec(
        "state_redis", "state", Ctx.HTTP, 1, 4, inherit=Inherit.NONE,
        syntax="state_redis URL [timeout=time] [fail=open | closed] [prefix=string];",
        default=None,
        doc="The Redis server that holds shared state: the `limit_req_zone ... sync` zones. "
            "`URL` is `redis://[[user]:password@]host[:port][/db]`, `rediss://...` for TLS "
            "(redis-py query arguments such as `?ssl_ca_certs=/path/ca.pem` configure it) or "
            "`unix:///path/redis.sock`. Every call takes at most `timeout` (default 200ms). "
            "While the server is unreachable, limits in it `fail=open` (the default: requests "
            "pass, unlimited) or `fail=closed` (requests get `limit_req_status`); the error is "
            "logged once per 10 s and the server is tried again every second, so service "
            "recovers by itself. `prefix` (default `jwtgate:`) starts every key, so several "
            "deployments can share a server. Zones with the same name share state wherever "
            "they are declared: declare them identically.",
        nginx_notes="NGINX Plus shares `sync` zones between instances with `zone_sync` in the "
                    "stream module; jwtgate shares them through Redis instead."),
)


def redis_connection(build: Any) -> RedisConnection | None:
    """The configuration's ``state_redis`` connection, or ``None`` when there is none."""
    state = build.shared.get("state")
    return state.get("redis") if state else None


def redis_directive(build: Any) -> Any:
    """The ``state_redis`` directive (for error locations), or ``None``."""
    state = build.shared.get("state")
    return state.get("directive") if state else None


class StateModule(Module):
    """``state_redis``."""

    name = "state"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        build.shared["state"] = {"redis": None, "directive": None}

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        if build.shared["state"]["redis"] is not None:
            raise build.error('"state_redis" directive is duplicate', d)
        url = d.args[0]
        problem = check_url(url)
        if problem:
            raise build.error(problem, d)
        timeout = DEFAULT_TIMEOUT
        fail_open = True
        prefix = "jwtgate:"
        for arg in d.args[1:]:
            name, eq, value = arg.partition("=")
            if name == "timeout" and eq:
                try:
                    timeout = parse_time(value, kind="msec")
                except ValueError:
                    timeout = 0
                if timeout <= 0:
                    raise build.error(f'invalid timeout "{value}" in "state_redis" directive', d)
            elif name == "fail" and eq and value in ("open", "closed"):
                fail_open = value == "open"
            elif name == "prefix" and eq:
                prefix = value
            else:
                raise build.error(f'invalid parameter "{arg}"', d)
        conn = RedisConnection(url, timeout=timeout, fail_open=fail_open, prefix=prefix)
        build.shared["state"] = {"redis": conn, "directive": d}
        return conn

    def resources(self, build: Any) -> list[Resource]:
        conn = redis_connection(build)
        return [conn] if conn is not None else []
