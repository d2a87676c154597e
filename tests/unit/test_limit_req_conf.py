"""``limit_req_zone``, ``limit_req``, ``limit_req_*`` and ``state_redis``: parsing, NGINX's
messages, and the handler's decisions over several limits (with a manual clock)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from jwtgate.clock import ManualClock
from jwtgate.conf.plan import compile_plan
from jwtgate.errors import ConfigError
from jwtgate.modules.limit_req import LimitReqHandler
from jwtgate.runtime.context import ConnectionInfo, RequestContext

JWK = {"keys": [{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]}


@pytest.fixture
def write(tmp_path):
    (tmp_path / "api_secret.jwk").write_text(json.dumps(JWK))

    def write(http: str, location: str = "") -> str:
        path = tmp_path / "gw.conf"
        path.write_text(f"""{http}
server {{
    listen 127.0.0.1:18997;
    location / {{
        {location}
        return 200;
    }}
}}
""")
        return str(path)
    return write


def error_of(path: str) -> str:
    with pytest.raises(ConfigError) as e:
        compile_plan(path)
    return str(getattr(e.value, "errors", [e.value])[0])


ZONE = "limit_req_zone $http_x_client zone=z:1m rate=10r/s;"


@pytest.mark.parametrize("http, location, message", [
    ("limit_req_zone $x zone=z:1m rate=1r/s;", "", 'unknown "x" variable'),
    ("limit_req_zone $uri zone=z rate=1r/s;", "", 'invalid zone size "zone=z"'),
    ("limit_req_zone $uri zone=z:lots rate=1r/s;", "", 'invalid zone size "zone=z:lots"'),
    ("limit_req_zone $uri zone=z:16k rate=1r/s;", "", 'zone "zone=z:16k" is too small'),
    ("limit_req_zone $uri zone=z:1m rate=fast;", "", 'invalid rate "rate=fast"'),
    ("limit_req_zone $uri zone=z:1m rate=0r/s;", "", 'invalid rate "rate=0r/s"'),
    ("limit_req_zone $uri zone=z:1m rate=1r/h;", "", 'invalid rate "rate=1r/h"'),
    ("limit_req_zone $uri zone=z:1m rate=1r/s what;", "", 'invalid parameter "what"'),
    ("limit_req_zone $uri rate=1r/s sync;", "", '"limit_req_zone" must have "zone" parameter'),
    ("limit_req_zone $uri zone=z:1m rate=1r/s;\nlimit_req_zone $args zone=z:1m rate=1r/s;", "",
     'limit_req_zone "z" is already bound to key "$uri"'),
    ("limit_req_zone $uri zone=z:1m rate=1r/s sync;", "", 'zone "z" has the "sync" parameter, which needs "state_redis"'),
    (ZONE, "limit_req zone=nope;", 'zone "nope" is unknown'),
    (ZONE, "limit_req burst=5;", '"limit_req" must have "zone" parameter'),
    (ZONE, "limit_req zone=z burst=0;", 'invalid burst value "burst=0"'),
    (ZONE, "limit_req zone=z burst=x;", 'invalid burst value "burst=x"'),
    (ZONE, "limit_req zone=z burst=2000000000;", 'invalid burst value "burst=2000000000"'),
    (ZONE, "limit_req zone=z delay=0;", 'invalid delay value "delay=0"'),
    (ZONE, "limit_req zone=z later;", 'invalid parameter "later"'),
    (ZONE, "limit_req zone=z;\nlimit_req zone=z burst=1;", '"limit_req" directive is duplicate'),
    (ZONE, "limit_req_status 302;", 'value must be between 400 and 599 in "302"'),
    (ZONE, "limit_req_log_level debug;", 'invalid value "debug" in "limit_req_log_level" directive'),
    (ZONE, "limit_req_dry_run yes;", 'invalid value "yes" in "limit_req_dry_run" directive'),
    ("state_redis http://x;", "", 'invalid Redis URL "http://x": the scheme must be'),
    ("state_redis redis://:pw@h:1/0 timeout=never;", "", 'invalid timeout "never" in "state_redis"'),
    ("state_redis redis://h fail=maybe;", "", 'invalid parameter "fail=maybe"'),
    ("state_redis redis://h;\nstate_redis redis://h;", "", '"state_redis" directive is duplicate'),
    ("", "state_redis redis://h;", '"state_redis" directive is not allowed here'),
])
def test_errors(write, http, location, message):
    err = error_of(write(http, location))
    assert err.startswith(message), err


def test_redis_url_password_is_not_in_errors(write):
    err = error_of(write("state_redis redis://:hunter2@h:99999999;"))
    assert "hunter2" not in err and "***" in err


def handlers_of(plan, uri="/x"):
    loc, _ = plan.servers[0].locations.match(uri)
    return [h for h in loc.access if isinstance(h, LimitReqHandler)]


def test_zone_parameters(write):
    plan = compile_plan(write("limit_req_zone $uri zone=a:64k rate=30r/m;\n"
                              "limit_req_zone $uri zone=b:10m rate=7r/m;\n"
                              "state_redis rediss://h:6380 timeout=50ms fail=closed prefix=gw1:;\n"
                              "limit_req_zone $uri zone=c:1m rate=1r/s sync;",
                              "limit_req zone=a;\nlimit_req zone=b burst=3 delay=1;\nlimit_req zone=c burst=2 nodelay;"))
    (handler,) = handlers_of(plan)
    zones = {zone.name: (zone.rate, zone.capacity, zone.sync) for zone, _ in handler.limits}
    assert zones == {"a": (500, 1024, False), "b": (116, 163840, False), "c": (1000, 16384, True)}
    assert [(line.bucket.burst, line.delay) for line in handler.lines] == [(0, 0), (3000, 1000), (2000, 2000)]
    conn = handler.redis.conn
    assert (conn.timeout, conn.fail_open, conn.prefix) == (0.05, False, b"gw1:")
    assert [type(r).__name__ for r in plan.resources].count("RedisConnection") == 1


def ctx_with(client: str | None = None) -> RequestContext:
    http = {"x_client": client} if client is not None else {}
    return RequestContext(ConnectionInfo(("127.0.0.1", 5), ("127.0.0.1", 80), 1), "GET", "/x", "/x", "",
                          "1.1", [], http)


@pytest.fixture
def sleeps(monkeypatch):
    waited = []

    async def fake_sleep(seconds):
        waited.append(round(seconds * 1000))
    monkeypatch.setattr("jwtgate.modules.limit_req.asyncio.sleep", fake_sleep)
    return waited


def run(handler, ctx):
    return asyncio.run(handler(ctx))


def test_the_longest_delay_of_several_limits_wins(write, tmp_path, sleeps):
    clock = ManualClock(1000.0)
    plan = compile_plan(write("limit_req_zone $http_x_client zone=fast:1m rate=10r/s;\n"
                              "limit_req_zone $http_x_client zone=slow:1m rate=1r/s;",
                              "limit_req zone=slow burst=5 delay=1;\nlimit_req zone=fast burst=5;"), clock=clock)
    (handler,) = handlers_of(plan)
    statuses = []
    for _ in range(4):
        ctx = ctx_with("a")
        assert run(handler, ctx) is None
        statuses.append(ctx.limit_req_status)
    # excess 0, 1, 2, 3 in both: fast waits 100/200/300 ms, slow (delay=1) 0/1000/2000 ms
    assert statuses == ["PASSED", "DELAYED", "DELAYED", "DELAYED"]
    assert sleeps == [100, 1000, 2000]


def test_rejection_logs_the_refusing_zone_and_spends_nothing(write, sleeps, caplog):
    clock = ManualClock(1000.0)
    plan = compile_plan(write("limit_req_zone $http_x_client zone=wide:1m rate=1r/s;\n"
                              "limit_req_zone $http_x_client zone=narrow:1m rate=1r/s;",
                              "limit_req zone=wide burst=9 nodelay;\nlimit_req zone=narrow;\n"
                              "limit_req_status 429;\nlimit_req_log_level warn;"), clock=clock)
    (handler,) = handlers_of(plan)
    with caplog.at_level(logging.INFO, logger="jwtgate.limit_req"):
        assert run(handler, ctx_with("a")) is None
        results = [run(handler, ctx_with("a")) for _ in range(3)]
    assert results == [429] * 3
    wide = handler.limits[0][0].memory
    assert wide.states["a"][0] == 0  # the three rejections left "wide" alone
    records = [r for r in caplog.records if "limiting" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING] * 3
    assert records[0].getMessage() == ('limiting requests, excess: 1.000 by zone "narrow", client: 127.0.0.1, '
                                       'server: _')
    assert run(handler, ctx_with()) is None  # an empty key: no limit, no status
    clock.advance(1.0)
    assert run(handler, ctx_with("a")) is None


def test_status_is_the_most_severe_of_both_phases(write, sleeps):
    clock = ManualClock(1000.0)
    plan = compile_plan(write("limit_req_zone $http_x_client zone=pre:1m rate=1r/s;\n"
                              "limit_req_zone $jwt_claim_sub zone=post:1m rate=1r/s;",
                              'auth_jwt "x";\nauth_jwt_key_file api_secret.jwk;\n'
                              "limit_req zone=pre burst=5;\nlimit_req zone=post;"), clock=clock)
    pre, post = handlers_of(plan)
    ctx = ctx_with("a")
    run(pre, ctx)
    run(pre, ctx)
    assert ctx.limit_req_status == "DELAYED"
    post._set(ctx, "PASSED")  # an after-auth PASSED does not hide the delay
    assert ctx.limit_req_status == "DELAYED"
    post._set(ctx, "REJECTED")
    assert ctx.limit_req_status == "REJECTED"


def test_memory_and_redis_zones_together(write, redis_server, redis_url, sleeps):
    """A request rejected by a memory zone spends nothing in Redis, and the other way round."""
    clock = ManualClock(1000.0)
    plan = compile_plan(write(f"state_redis {redis_url};\n"
                              "limit_req_zone $http_x_client zone=local:1m rate=1r/m;\n"
                              "limit_req_zone $http_x_client zone=shared:1m rate=1r/m sync;",
                              "limit_req zone=local burst=1 nodelay;\nlimit_req zone=shared burst=2 nodelay;"),
                        clock=clock)
    (handler,) = handlers_of(plan)
    conn = handler.redis.conn

    def shared_excess(key):
        with redis_server.client() as c:
            raw = c.get(b"jwtgate:lr:6:shared:" + key.encode())
        return None if raw is None else int(raw.split(b":")[0])

    async def scenario():
        try:
            got_a = [await handler(ctx_with("a")) for _ in range(3)]
            shared = handler.lines[1].bucket
            for _ in range(3):  # another gateway fills "b" in the shared zone
                await handler.redis.acquire([shared], ["b"])
            got_b = await handler(ctx_with("b"))
            return got_a, got_b
        finally:
            await conn.close()

    got_a, got_b = asyncio.run(scenario())
    local = handler.limits[0][0].memory
    # local (burst=1) rejects the third request before Redis is asked: shared holds 2, not 3
    assert got_a == [None, None, 503]
    assert shared_excess("a") == 1000 and local.states["a"][0] == 1000
    # shared rejects "b": local, looked up first, is not accounted
    assert got_b == 503
    assert "b" not in local.states and shared_excess("b") == 2000


@pytest.mark.parametrize("level, reject, delay", [
    ("error", logging.ERROR, logging.WARNING), ("warn", logging.WARNING, 25), ("notice", 25, logging.INFO),
    ("info", logging.INFO, logging.INFO)])
def test_log_levels(write, sleeps, caplog, level, reject, delay):
    """NGINX: rejections at limit_req_log_level, delays one level lower (info stays info)."""
    plan = compile_plan(write(ZONE, f"limit_req zone=z burst=1;\nlimit_req_log_level {level};"),
                        clock=ManualClock(1000.0))
    (handler,) = handlers_of(plan)
    with caplog.at_level(logging.DEBUG, logger="jwtgate.limit_req"):
        results = [run(handler, ctx_with("a")) for _ in range(3)]
    assert results == [None, None, 503]
    assert [(r.levelno, r.getMessage().split(",")[0]) for r in caplog.records] == [
        (delay, "delaying request"), (reject, "limiting requests")]
