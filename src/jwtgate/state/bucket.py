"""NGINX's leaky bucket (``ngx_http_limit_req_module.c``), as pure integer arithmetic.

State per key is ``(excess, last)``: the excess in thousandths of a request and the time of
the last accounted request in milliseconds. Rates are in thousandths of a request per second
(``10r/s`` is 10000, ``30r/m`` is 500, ``1r/m`` is 16 as NGINX's ``rate * 1000 / 60``),
bursts and ``delay=`` thresholds in thousandths of a request. No clock and no I/O here:
callers pass ``now`` in milliseconds, so every timeline can be checked by hand.

The Redis backend runs the same arithmetic in Lua (``state/lua/limit_req_acquire.lua``); the
contract tests in ``tests/contract`` hold both to these functions.
"""

from __future__ import annotations

__all__ = ["IDLE_MS", "lookup", "delay_ms", "expired", "ttl_ms"]

#: NGINX forgets an idle state only after a minute (``ngx_http_limit_req_expire``); the Redis
#: backend keeps keys at least this long too.
IDLE_MS = 60_000


def lookup(state: tuple[int, int] | None, now: int, rate: int) -> tuple[int, int]:
    """The state a request at ``now`` would leave: ``(excess, last)``.

    Follows ``ngx_http_limit_req_lookup`` and ``ngx_http_limit_req_account``: the elapsed
    time is ``now - last``, counted as 1 ms when the clock went back more than 60 s and as
    0 when it went back less; ``excess - rate * ms / 1000 + 1000`` floored at 0; ``last``
    moves to ``now`` only when some time passed (so a burst within one millisecond leaks
    nothing). A key without state starts at ``(0, now)``.

    Args:
        state: the stored ``(excess, last)``, or ``None`` for a new key.
        now: current time, ms.
        rate: thousandths of a request per second.

    Returns:
        ``(excess, last)``. The request is over the limit when ``excess`` exceeds the
        burst (thousandths); NGINX then leaves the stored state as it was.
    """
    if state is None:
        return 0, now
    excess, last = state
    ms = now - last
    if ms < -60000:
        ms = 1
    elif ms < 0:
        ms = 0
    new = excess - rate * ms // 1000 + 1000
    if new < 0:
        new = 0
    return new, (now if ms else last)


def delay_ms(excess: int, delay: int, rate: int) -> int:
    """How long an accepted request waits (``ngx_http_limit_req_account``).

    Args:
        excess: the request's excess, thousandths.
        delay: the ``delay=`` threshold in thousandths: 0 by default, ``delay=N`` gives
            ``N * 1000``, ``nodelay`` an unreachable value.
        rate: thousandths of a request per second.

    Returns:
        Milliseconds to wait, 0 when the excess is within ``delay``.
    """
    if excess <= delay:
        return 0
    return (excess - delay) * 1000 // rate


def expired(state: tuple[int, int], now: int, rate: int) -> bool:
    """Whether NGINX may drop a state (``ngx_http_limit_req_expire``): idle for a minute
    and fully leaked."""
    excess, last = state
    ms = abs(now - last)
    return ms >= IDLE_MS and excess - rate * ms // 1000 <= 0


def ttl_ms(state: tuple[int, int], now: int, rate: int) -> int:
    """Milliseconds after ``now`` from which ``state`` acts exactly like no state at all.

    A request then computes an excess of 0 either way (``lookup``), so a store may forget the
    key. Never less than :data:`IDLE_MS`, as NGINX keeps idle states for a minute.
    """
    excess, last = state
    # smallest ms with rate * ms // 1000 >= excess + 1000
    quiet = -(-(excess + 1000) * 1000 // rate)
    return max(IDLE_MS, last - now + quiet)
