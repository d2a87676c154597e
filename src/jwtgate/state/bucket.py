"""NGINX's leaky bucket (``ngx_http_limit_req_module``), as pure integer arithmetic.

State per key is ``(excess, last)``: the excess in thousandths of a request and the time of
the last accounted request in milliseconds. Rates are in thousandths of a request per second
(``10r/s`` is 10000, ``30r/m`` is 500), bursts in thousandths of a request. No clock and no
I/O here: callers pass ``now`` in milliseconds, so every timeline can be tested by hand.
"""

from __future__ import annotations

__all__ = ["leak", "delay_ms"]


def leak(excess: int, last: int, now: int, rate: int) -> int:
    """The excess a new request would bring, given the stored state.

    Follows ``ngx_http_limit_req_lookup``: ``excess - rate * |now - last| / 1000 + 1000``,
    floored at 0; a clock that jumped back more than 60 s counts as 1 ms.

    Args:
        excess: stored excess, thousandths of a request.
        last: time of the last accounted request, ms.
        now: current time, ms.
        rate: thousandths of a request per second.

    Returns:
        The new excess (thousandths). The request is over the limit when it exceeds
        ``burst * 1000``; then NGINX leaves the stored state unchanged.
    """
    ms = now - last
    if ms < -60000:
        ms = 1
    new = excess - rate * abs(ms) // 1000 + 1000
    return new if new > 0 else 0


def delay_ms(excess: int, delay: int, rate: int) -> int:
    """How long to delay a request accepted with ``excess`` (``ngx_http_limit_req_account``).

    Args:
        excess: the request's excess, thousandths.
        delay: the ``delay=`` threshold in thousandths (0 by default; ``burst*1000`` with
            ``nodelay``).
        rate: thousandths of a request per second.

    Returns:
        Milliseconds to wait, 0 when the excess is within ``delay``.
    """
    if excess <= delay:
        return 0
    return (excess - delay) * 1000 // rate
