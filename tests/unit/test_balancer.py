"""Balancing methods and passive health, with an injected clock (ngx_http_upstream_*.c)."""

from collections import Counter

from jwtgate.clock import ManualClock
from jwtgate.upstream.balancer import Balancer, Peer


def peers(*weights, backup=()):
    out = [Peer("127.0.0.1", 9000 + i, f"s{i}", weight=w) for i, w in enumerate(weights)]
    out += [Peer("127.0.0.1", 9100 + i, f"b{i}", backup=True) for i in range(len(backup))]
    return out


def test_smooth_weighted_round_robin_sequence():
    b = Balancer(peers(5, 1, 1))
    # NGINX's documented sequence for weights 5,1,1: a a b a c a a
    assert [b.pick().name for _ in range(7)] == ["s0", "s0", "s1", "s0", "s2", "s0", "s0"]


def test_failed_peer_skipped_for_fail_timeout_then_returns():
    clock = ManualClock()
    ps = peers(1, 1)
    b = Balancer(ps, clock)
    b.failed(ps[0])  # max_fails=1
    assert {b.pick().name for _ in range(4)} == {"s1"}
    clock.advance(10.5)  # fail_timeout=10s
    assert "s0" in {b.pick().name for _ in range(4)}


def test_backup_only_when_primaries_down():
    clock = ManualClock()
    ps = peers(1, backup=(1,))
    b = Balancer(ps, clock)
    assert b.pick().name == "s0"
    b.failed(ps[0])
    assert b.pick().name == "b0"


def test_single_server_is_never_unavailable():
    """NGINX: with one server in a group, max_fails and fail_timeout are ignored."""
    clock = ManualClock()
    (only,) = ps = peers(1)
    b = Balancer(ps, clock)
    for _ in range(5):
        b.failed(only)
    assert only.available(clock.monotonic())
    assert (only.fails, only.total_fails, only.unavail) == (0, 0, 0)
    assert b.pick() is only
    # with a backup the primary is not "single": failures count as usual
    ps = peers(1, backup=(1,))
    b = Balancer(ps, clock)
    b.failed(ps[0])
    assert not ps[0].available(clock.monotonic()) and ps[0].unavail == 1


def test_all_down_resets_and_tries_again():
    clock = ManualClock()
    ps = peers(1, 1)
    b = Balancer(ps, clock)
    b.failed(ps[0])
    b.failed(ps[1])
    assert b.pick() is not None


def test_exclude_and_has_more():
    ps = peers(1, 1)
    b = Balancer(ps)
    first = b.pick()
    second = b.pick([first])
    assert second is not first
    assert not b.has_more([first, second])
    assert b.pick([first, second]) is None or b.pick([first, second]) in ps  # reset path


def test_least_conn_prefers_idle_peer():
    ps = peers(1, 1, 1)
    b = Balancer(ps, method="least_conn")
    ps[0].active = 5
    ps[1].active = 1
    ps[2].active = 3
    assert b.pick().name == "s1"


def test_ip_hash_is_sticky_per_slash24():
    b = Balancer(peers(1, 1, 1, 1), method="ip_hash")
    a = b.pick(key="192.0.2.10").name
    assert all(b.pick(key="192.0.2.99").name == a for _ in range(5))
    spread = {b.pick(key=f"10.0.{i}.1").name for i in range(64)}
    assert len(spread) > 1


def test_hash_is_sticky_and_spreads():
    b = Balancer(peers(1, 1, 1), method="hash")
    assert len({b.pick(key="user-42").name for _ in range(10)}) == 1
    counts = Counter(b.pick(key=f"user-{i}").name for i in range(600))
    assert len(counts) == 3 and min(counts.values()) > 100


def test_consistent_hash_moves_few_keys_when_a_peer_goes():
    clock = ManualClock()
    ps = peers(1, 1, 1, 1)
    b = Balancer(ps, clock, method="hash_consistent")
    before = {k: b.pick(key=f"k{k}") for k in range(400)}
    b.failed(ps[3])
    after = {k: b.pick(key=f"k{k}") for k in range(400)}
    moved = [k for k in before if before[k] is not after[k]]
    # only the keys of the failed peer move
    assert moved and all(before[k] is ps[3] for k in moved)
