"""The Redis backend beyond the shared contract: key layout and expiry, the connection's
bounds (timeout, fail fast while down, one log line per interval, recovery by itself),
passwords and TLS. Against real redis-servers started by the tests."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from jwtgate.errors import StateError
from jwtgate.state import redis as state_redis
from jwtgate.state.redis import RedisConnection, RedisLimitStore, check_url, redact_url
from jwtgate.state.store import Bucket

BUCKET = Bucket("per_client", 10_000, 0, 100)


def run(coro):
    return asyncio.run(coro)


async def acquire_with(conn: RedisConnection, *keys: str, bucket: Bucket = BUCKET, close: bool = True):
    store = RedisLimitStore(conn)
    try:
        return [await store.acquire([bucket], [k]) for k in keys]
    finally:
        if close:
            await conn.close()


def test_keys_layout_and_expiry(redis_server, redis_url):
    got = run(acquire_with(RedisConnection(redis_url), "quotes", "quotes"))
    assert [o.rejected for o in got] == [-1, 0]
    with redis_server.client() as c:
        keys = sorted(c.keys("*"))
        assert keys == [b"jwtgate:lr:10:per_client:quotes", b"jwtgate:lri:10:per_client"]
        excess, last = c.get(keys[0]).split(b":")
        assert excess == b"0" and abs(int(last) - time.time() * 1000) < 5000  # the server's clock
        assert 55_000 < c.pttl(keys[0]) <= 60_000   # kept a minute, as NGINX keeps idle states
        assert 55_000 < c.pttl(keys[1]) <= 60_000
        assert c.zrange(keys[1], 0, -1) == [b"quotes"]


def test_a_long_burst_lives_until_it_has_leaked(redis_server, redis_url):
    slow = Bucket("slow", 16, 1000 * 1000, 10)  # 1r/m, burst=1000
    run(acquire_with(RedisConnection(redis_url), *["k"] * 10, bucket=slow))
    with redis_server.client() as c:
        ttl = c.pttl(b"jwtgate:lr:4:slow:k")
        # 9 excess requests + 1 leak at 16/1000 a second: ceil(10000 * 1000 / 16) ms
        assert 625_000 - 5000 < ttl <= 625_000


def test_prefix_separates_deployments(redis_url):
    async def both():
        a = RedisLimitStore(RedisConnection(redis_url, prefix="a:"))
        b = RedisLimitStore(RedisConnection(redis_url, prefix="b:"))
        try:
            return [(await a.acquire([BUCKET], ["k"])).rejected, (await b.acquire([BUCKET], ["k"])).rejected,
                    (await a.acquire([BUCKET], ["k"])).rejected]
        finally:
            await a.conn.close()
            await b.conn.close()
    assert run(both()) == [-1, -1, 0]


def test_unavailable_server_fails_fast_logs_once_and_recovers(redis_factory, caplog, monkeypatch):
    monkeypatch.setattr(state_redis, "RETRY_INTERVAL", 0.2)
    server = redis_factory()
    server.stop()  # the port is free: connections are refused

    async def scenario():
        conn = RedisConnection(server.url, timeout=0.5)
        store = RedisLimitStore(conn)
        errors, took = [], []
        for _ in range(5):
            start = time.monotonic()
            try:
                await store.acquire([BUCKET], ["k"])
            except StateError as e:
                errors.append(e)
            took.append(time.monotonic() - start)
        server.start()
        await asyncio.sleep(0.25)  # RETRY_INTERVAL: the next call tries the server again
        ok = await store.acquire([BUCKET], ["k"])
        await conn.close()
        return errors, took, ok

    with caplog.at_level(logging.INFO, logger="jwtgate.state"):
        errors, took, ok = run(scenario())
    assert len(errors) == 5
    assert max(took) < 0.5 and sum(took[1:]) < 0.05  # later calls fail without a connection attempt
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert "is unavailable" in failures[0].getMessage() and "fail open" in failures[0].getMessage()
    assert ok.rejected == -1
    assert any("available again" in r.getMessage() for r in caplog.records)


def test_a_server_that_does_not_answer_costs_one_timeout(tmp_path):
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)  # accepts connections (the kernel does), never answers
    try:
        conn = RedisConnection(f"redis://127.0.0.1:{blackhole.getsockname()[1]}/0", timeout=0.1)
        start = time.monotonic()
        with pytest.raises(StateError, match="no answer within 100ms"):
            run(acquire_with(conn, "k"))
        assert time.monotonic() - start < 1.0
    finally:
        blackhole.close()


def test_password(redis_factory):
    server = redis_factory(password="s3cret")
    assert run(acquire_with(RedisConnection(server.url), "k"))[0].rejected == -1
    wrong = server.url.replace("s3cret", "guess")
    with pytest.raises(StateError) as e:
        run(acquire_with(RedisConnection(wrong), "k"))
    assert "guess" not in str(e.value) and "***" in str(e.value)


def test_tls(redis_factory):
    server = redis_factory(tls=True)
    ca = server.tls[2]
    assert run(acquire_with(RedisConnection(f"{server.url}?ssl_ca_certs={ca}"), "k", "k"))[1].rejected == 0
    with pytest.raises(StateError):  # an unknown CA: the certificate is refused
        run(acquire_with(RedisConnection(server.url), "k"))


def test_closed_connection_refuses_calls(redis_url):
    conn = RedisConnection(redis_url)
    run(acquire_with(conn, "k"))
    with pytest.raises(StateError, match="closed"):
        run(acquire_with(conn, "k"))


def test_urls():
    assert redact_url("rediss://user:pw@h:6380/1") == "rediss://user:***@h:6380/1"
    assert redact_url("redis://:pw@h") == "redis://:***@h"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert check_url("redis://127.0.0.1:6379/0") is None
    assert check_url("unix:///run/redis.sock") is None
    assert "scheme" in check_url("http://x")
    assert "no host" in check_url("redis://")
    assert "port" in check_url("redis://h:99999999") or "invalid" in check_url("redis://h:99999999")


def test_a_missing_redis_server_fails_the_tests_it_is_needed_by(monkeypatch):
    """Not a skip: CI installs redis-server, so its absence is a failure with the fix in it."""
    import redis_server

    monkeypatch.setattr(redis_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(redis_server.os.path, "exists", lambda path: False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        redis_server.find_redis_server()
