"""NGINX's leaky bucket, against timelines computed by hand from ngx_http_limit_req_module.c."""

from jwtgate.state.bucket import delay_ms, leak
from jwtgate.state.memory import MemoryLimitZone

RATE_10 = 10_000  # 10r/s in thousandths


def run(zone: MemoryLimitZone, key: str, times_ms: list[int], burst: int) -> list[bool]:
    out = []
    for now in times_ms:
        excess = zone.lookup(key, now)
        ok = excess <= burst * 1000
        if ok:
            zone.account(key, excess, now)
        out.append(ok)
    return out


def test_leak_formula():
    assert leak(0, 0, 0, RATE_10) == 1000          # a second request in the same ms
    assert leak(0, 0, 100, RATE_10) == 0           # 100 ms at 10r/s leaks exactly one
    assert leak(1000, 0, 50, RATE_10) == 1500      # half a request leaked
    assert leak(5000, 0, 10_000, RATE_10) == 0     # floored at 0
    assert leak(0, 100_000, 0, RATE_10) == 990     # clock jumped back > 60 s: counts as 1 ms


def test_rate_without_burst_rejects_the_second_request_of_a_millisecond():
    zone = MemoryLimitZone("z", 100, RATE_10)
    assert run(zone, "a", [0, 0, 50, 100, 150, 200], burst=0) == [True, False, False, True, False, True]


def test_burst_nodelay_lets_burst_plus_one_through():
    zone = MemoryLimitZone("z", 100, RATE_10)
    assert run(zone, "a", [0] * 7, burst=5) == [True] * 6 + [False]
    # 200 ms later two requests have leaked away.
    assert run(zone, "a", [200, 200, 200], burst=5) == [True, True, False]


def test_rejected_requests_do_not_change_state():
    zone = MemoryLimitZone("z", 100, RATE_10)
    run(zone, "a", [0], burst=0)
    for _ in range(50):
        run(zone, "a", [10], burst=0)
    assert zone.lookup("a", 100) == 0  # only the accepted one counts


def test_rate_per_minute():
    zone = MemoryLimitZone("z", 100, 500)  # 30r/m
    assert run(zone, "a", [0, 1000, 2000, 2001], burst=0) == [True, False, True, False]


def test_delay():
    # Without nodelay (delay threshold 0) an accepted excess of 1 waits 1/rate.
    assert delay_ms(1000, 0, RATE_10) == 100
    assert delay_ms(3000, 0, RATE_10) == 300
    assert delay_ms(0, 0, RATE_10) == 0
    # nodelay: threshold is the burst itself.
    assert delay_ms(5000, 5000, RATE_10) == 0
    # delay=2 with 10r/s: the 3rd excess request waits 100 ms.
    assert delay_ms(3000, 2000, RATE_10) == 100


def test_keys_are_independent_and_bounded_lru():
    zone = MemoryLimitZone("z", 2, RATE_10)
    assert run(zone, "a", [0], 0) == [True]
    assert run(zone, "b", [0], 0) == [True]
    assert run(zone, "a", [1], 0) == [False]   # a is recent now
    assert run(zone, "c", [1], 0) == [True]    # evicts b, the least recently used
    assert len(zone) == 2
    assert zone.lookup("b", 1) == 0            # b was forgotten
