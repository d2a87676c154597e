"""One contract for every ``limit_req`` store: the memory backend and Redis (a real
``redis-server``), held to the pure arithmetic of ``jwtgate.state.bucket``.

Every test runs once per backend, with explicit times (``now`` in ms) so that no test sleeps:
the Redis script takes ``now`` from its caller when given one, and the server's ``TIME``
otherwise (the last test).
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jwtgate.state.bucket import lookup
from jwtgate.state.memory import MemoryLimitStore
from jwtgate.state.redis import RedisConnection, RedisLimitStore
from jwtgate.state.store import Bucket, Outcome

RATE_10 = 10_000


class SyncStore:
    """A store driven from synchronous tests, on an event loop of its own."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.loop = asyncio.new_event_loop()
        if kind == "memory":
            self.store = MemoryLimitStore()
            self.conn = None
        else:
            self.conn = RedisConnection(url, timeout=2.0)
            self.store = RedisLimitStore(self.conn)

    def acquire(self, buckets, keys, now=None) -> Outcome:
        return self.loop.run_until_complete(self.store.acquire(buckets, keys, now))

    def take(self, bucket: Bucket, key: str, now: int | None) -> bool:
        return self.acquire([bucket], [key], now).rejected < 0

    def close(self) -> None:
        if self.conn is not None:
            self.loop.run_until_complete(self.conn.close())
        self.loop.close()


@pytest.fixture(params=["memory", "redis"])
def store(request):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    s = SyncStore(request.param, url)
    try:
        yield s
    finally:
        s.close()


def b(zone="z", rate=RATE_10, burst=0, capacity=1000) -> Bucket:
    return Bucket(zone, rate, burst * 1000, capacity)


def test_a_new_key_passes_with_no_excess(store):
    assert store.acquire([b()], ["k"], 0) == Outcome(-1, (0,))


def test_rate_and_burst_follow_nginx(store):
    bucket = b(burst=2)
    got = [store.acquire([bucket], ["k"], t) for t in (0, 0, 0, 0, 99, 100, 100)]
    assert got == [Outcome(-1, (0,)), Outcome(-1, (1000,)), Outcome(-1, (2000,)), Outcome(0, (3000,)),
                   Outcome(0, (2010,)), Outcome(-1, (2000,)), Outcome(0, (3000,))]


def test_rejected_requests_spend_nothing(store):
    bucket = b()
    assert store.take(bucket, "k", 0)
    for t in range(1, 100, 7):
        assert not store.take(bucket, "k", t)
    assert store.acquire([bucket], ["k"], 100) == Outcome(-1, (0,))


def test_several_buckets_all_or_nothing(store):
    wide, narrow = b("wide", burst=5), b("narrow")
    assert store.acquire([wide, narrow], ["k", "k"], 0) == Outcome(-1, (0, 0))
    # narrow is over its rate: nothing is accounted, not even in wide
    assert store.acquire([wide, narrow], ["k", "k"], 0) == Outcome(1, (1000, 1000))
    assert store.acquire([wide, narrow], ["k", "k"], 0) == Outcome(1, (1000, 1000))
    # the first bucket over its burst stops the lookups
    assert store.acquire([narrow, wide], ["k", "k"], 0) == Outcome(0, (1000,))
    # wide alone still holds a single request
    assert store.acquire([wide], ["k"], 0) == Outcome(-1, (1000,))


def test_zones_and_keys_never_collide(store):
    # zone "a" key "b:c" and zone "a:b" key "c" would share "a:b:c" without the length prefix
    assert store.take(b("a"), "b:c", 0)
    assert store.take(b("a:b"), "c", 0)
    assert store.take(b("a"), "b", 0)
    assert store.take(b("b"), "b", 0)
    assert not store.take(b("a"), "b:c", 0)


@pytest.mark.parametrize("key", ["\x7f\x00\x01\xff", "clé ünïcödé", "k" * 65535, "a\udcff"])
def test_any_key(store, key):
    assert store.take(b(), key, 0)
    assert not store.take(b(), key, 1)
    assert store.take(b(), key + "x", 1)


def test_full_zone_forgets_the_least_recently_used_key(store):
    bucket = b(capacity=2)
    assert store.take(bucket, "a", 0) and store.take(bucket, "b", 0)
    assert not store.take(bucket, "a", 1)   # a is used (even though rejected): b is older now
    assert store.take(bucket, "c", 1)       # a third key: b goes
    assert not store.take(bucket, "a", 2)   # a is remembered
    assert store.take(bucket, "b", 2)       # b was forgotten: it starts over (and c goes)
    assert store.take(bucket, "c", 2)


def test_clock_going_back(store):
    bucket = b(burst=5)
    store.acquire([bucket], ["k"], 100_000)
    assert store.acquire([bucket], ["k"], 99_000).excess == (1000,)   # < 60 s back: no time passed
    # `last` stayed at 100000: 50 ms leak half a request
    assert store.acquire([bucket], ["k"], 100_050).excess == (1500,)
    assert store.acquire([bucket], ["k"], 0).excess == (2490,)        # > 60 s back: counts as 1 ms


def test_rate_per_minute(store):
    bucket = b(rate=16)  # 1r/m
    assert store.take(bucket, "k", 0)
    assert store.acquire([bucket], ["k"], 60_000) == Outcome(0, (40,))
    assert store.take(bucket, "k", 62_500)


EXAMPLES = itertools.count()
steps = st.lists(st.tuples(st.integers(0, 250), st.sampled_from("abc"), st.booleans()), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps, rate=st.sampled_from([16, 500, 1000, 10_000, 123_456]), burst=st.integers(0, 4))
def test_matches_the_arithmetic(store, steps, rate, burst):
    """Random timelines over two zones agree with ``bucket.lookup``, request by request."""
    n = next(EXAMPLES)  # fresh zones per example: the store outlives hypothesis's examples
    zone1, zone2 = b(f"one{n}", rate, burst), b(f"two{n}", rate * 2, burst + 1)
    model: dict[tuple[str, str], tuple[int, int]] = {}
    now = 0
    for dt, key, both in steps:
        now += dt
        buckets = [zone1, zone2] if both else [zone1]
        expect_excess = []
        rejected = -1
        for i, bucket in enumerate(buckets):
            state = lookup(model.get((bucket.zone, key)), now, bucket.rate)
            expect_excess.append(state[0])
            if state[0] > bucket.burst:
                rejected = i
                break
        if rejected < 0:
            for bucket, e in zip(buckets, expect_excess):
                model[(bucket.zone, key)] = lookup(model.get((bucket.zone, key)), now, bucket.rate)
        assert store.acquire(buckets, [key] * len(buckets), now) == Outcome(rejected, tuple(expect_excess))


def test_the_stores_own_clock(store):
    """Without ``now``, the memory store reads its clock and Redis its ``TIME``."""
    bucket = b(rate=16)  # 1r/m: two calls a few ms apart leak nothing
    assert store.acquire([bucket], ["k"]) == Outcome(-1, (0,))
    assert store.acquire([bucket], ["k"]) == Outcome(0, (1000,))
