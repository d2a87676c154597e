"""NGINX's leaky bucket, against timelines computed by hand from ngx_http_limit_req_module.c.

One limit, as NGINX runs it: at each request ``excess = stored - rate * ms / 1000 + 1000``
(floored at 0, ``ms`` since the last accounted request); over ``burst`` it is rejected and
nothing is stored; otherwise the excess is stored, and the request waits
``(excess - delay) * 1000 / rate`` ms when the excess is over the ``delay=`` threshold (0 by
default, never with ``nodelay``).
"""

from hypothesis import given
from hypothesis import strategies as st

from jwtgate.state.bucket import IDLE_MS, delay_ms, expired, lookup, ttl_ms
from jwtgate.state.memory import MemoryLimitZone, acquire

RATE_10 = 10_000  # 10r/s in thousandths
NODELAY = 2**62


def timeline(times_ms, rate=RATE_10, burst=0, delay=0, state=None):
    """[(accepted, excess, delay_ms)] for requests at ``times_ms`` (one key)."""
    out = []
    for now in times_ms:
        excess, last = lookup(state, now, rate)
        if excess > burst * 1000:
            out.append((False, excess, 0))
            continue
        state = (excess, last)
        out.append((True, excess, delay_ms(excess, delay * 1000 if delay != NODELAY else NODELAY, rate)))
    return out


def test_lookup_formula():
    assert lookup(None, 5, RATE_10) == (0, 5)                 # a new key: no excess
    assert lookup((0, 0), 0, RATE_10) == (1000, 0)            # same ms: +1, `last` kept
    assert lookup((0, 0), 100, RATE_10) == (0, 100)           # 100 ms at 10r/s leaks one request
    assert lookup((1000, 0), 50, RATE_10) == (1500, 50)       # half a request leaked
    assert lookup((5000, 0), 10_000, RATE_10) == (0, 10_000)  # floored at 0
    # the clock went back less than 60 s: no time passed, `last` stays in the future
    assert lookup((1000, 5000), 4000, RATE_10) == (2000, 5000)
    # more than 60 s back: counts as 1 ms, `last` follows the clock
    assert lookup((1000, 70_000), 0, RATE_10) == (1990, 0)


def test_rate_without_burst():
    # 10r/s: one request per 100 ms; the second of the same ms is 1.000 over
    assert timeline([0, 0, 50, 100, 150, 200]) == [
        (True, 0, 0), (False, 1000, 0), (False, 500, 0), (True, 0, 0), (False, 500, 0), (True, 0, 0)]


def test_burst_without_nodelay_delays_each_excess_request():
    # burst=5: six at once are accepted, each one waiting 100 ms more; the seventh is rejected
    assert timeline([0] * 7, burst=5) == [
        (True, 0, 0), (True, 1000, 100), (True, 2000, 200), (True, 3000, 300), (True, 4000, 400),
        (True, 5000, 500), (False, 6000, 0)]


def test_delayed_requests_are_accounted_when_they_arrive():
    # after the burst above, 200 ms have leaked two requests: 5 - 2 + 1 = 4 excess, 400 ms wait
    state = (5000, 0)
    assert lookup(state, 200, RATE_10) == (4000, 200)
    assert timeline([200, 200, 200], burst=5, state=state) == [
        (True, 4000, 400), (True, 5000, 500), (False, 6000, 0)]


def test_burst_nodelay():
    assert timeline([0] * 7, burst=5, delay=NODELAY) == [(True, e, 0) for e in range(0, 6000, 1000)] + [
        (False, 6000, 0)]
    # 1r/s, burst=5 nodelay: six at once, then one per second
    assert [ok for ok, _, _ in timeline([0] * 7 + [999, 1000, 1000], rate=1000, burst=5, delay=NODELAY)] == [
        True] * 6 + [False, False, True, False]


def test_burst_with_delay_threshold():
    # burst=5 delay=2: the first two excess requests pass at once, the next ones wait
    assert timeline([0] * 7, burst=5, delay=2) == [
        (True, 0, 0), (True, 1000, 0), (True, 2000, 0), (True, 3000, 100), (True, 4000, 200),
        (True, 5000, 300), (False, 6000, 0)]


def test_rate_per_minute():
    # 30r/m is 500 thousandths a second: one request per 2 s
    assert [ok for ok, _, _ in timeline([0, 1000, 2000, 2001], rate=500)] == [True, False, True, False]
    # 1r/m is 16 (NGINX: 1 * 1000 / 60): a full request leaks after 62.5 s, not 60 s
    assert timeline([0, 60_000, 62_500], rate=16) == [(True, 0, 0), (False, 40, 0), (True, 0, 0)]


def test_sub_millisecond_bursts_leak_nothing():
    # `last` does not move while no time passes: 99 ms later only 0.990 has leaked
    assert timeline([0, 0, 0, 99, 100], burst=2) == [
        (True, 0, 0), (True, 1000, 100), (True, 2000, 200), (False, 2010, 0), (True, 2000, 200)]


def test_delay_ms():
    assert delay_ms(0, 0, RATE_10) == 0
    assert delay_ms(1000, 0, RATE_10) == 100
    assert delay_ms(1500, 1000, RATE_10) == 50
    assert delay_ms(5000, NODELAY, RATE_10) == 0
    assert delay_ms(1000, 0, 16) == 62_500  # 1r/m


def test_expired_is_ngx_http_limit_req_expire():
    assert not expired((0, 0), 59_999, RATE_10)   # idle less than a minute
    assert expired((0, 0), 60_000, RATE_10)
    assert not expired((10**9, 0), 60_000, RATE_10)  # still 999,400 over after a minute
    assert expired((0, 60_000), 0, RATE_10)       # NGINX uses |now - last| here


@given(excess=st.integers(0, 10**9), last=st.integers(-10**6, 10**6), rate=st.integers(16, 10**7),
       now=st.integers(-10**6, 10**6))
def test_ttl_ms_is_when_a_state_acts_like_none(excess, last, rate, now):
    ttl = ttl_ms((excess, last), now, rate)
    assert ttl >= IDLE_MS
    later = now + ttl
    if later - last >= 0:  # the usual case; a clock far behind `last` is clamped by lookup anyway
        assert lookup((excess, last), later, rate) == lookup(None, later, rate)
    quiet = ttl - (last - now)
    if quiet > 1 and ttl > IDLE_MS:  # one ms earlier some excess is left
        assert lookup((excess, last), last + quiet - 1, rate)[0] > 0


def test_zone_keys_are_independent_and_bounded_lru():
    zone = MemoryLimitZone("z", 2, RATE_10)

    def take(key, now):
        return acquire([(zone, key, 0)], now).rejected < 0

    assert take("a", 0) and take("b", 0)
    assert not take("a", 1)   # a is over its rate, and now the most recently used
    assert take("c", 1)       # the zone is full: b, the least recently used, is forgotten
    assert len(zone) == 2 and set(zone.states) == {"a", "c"}
    assert take("b", 1)       # b starts over


def test_zone_drops_idle_states_when_adding_a_key():
    zone = MemoryLimitZone("z", 100, RATE_10)
    acquire([(zone, "old1", 0)], 0)
    acquire([(zone, "old2", 0)], 0)
    acquire([(zone, "old3", 0)], 0)
    acquire([(zone, "busy", 10**9)], 0)
    for _ in range(20):
        acquire([(zone, "busy", 10**9)], 0)
    acquire([(zone, "new", 0)], 60_000)
    # NGINX drops at most two idle, fully leaked states per new key, oldest first
    assert list(zone.states) == ["old3", "busy", "new"]


def test_several_limits_all_or_nothing():
    a = MemoryLimitZone("a", 10, RATE_10)
    b = MemoryLimitZone("b", 10, RATE_10)
    assert acquire([(a, "k", 5000), (b, "k", 0)], 0) == (-1, (0, 0))
    # b rejects: a is not accounted (NGINX never accounts the earlier limits then)
    out = acquire([(a, "k", 5000), (b, "k", 0)], 0)
    assert out.rejected == 1 and out.excess == (1000, 1000)
    assert a.states["k"] == (0, 0) and b.states["k"] == (0, 0)
    # the first over its burst stops the lookups
    out = acquire([(b, "k", 0), (a, "k", 5000)], 0)
    assert out == (0, (1000,))
