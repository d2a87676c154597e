"""In-process state for ``limit_req`` zones: the embedded default backend.

A zone holds at most ``capacity`` keys. As NGINX's shared-memory zone, it drops up to two
states idle for a minute and fully leaked whenever it adds a key, and when it is full it
forgets the least recently used key (``ngx_http_limit_req_expire``). State is per process:
with several worker processes each one enforces a zone's rate on its own.

Everything here is synchronous: a request's buckets are looked up and accounted without
yielding to the event loop, so no other request can slip in between.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from jwtgate.clock import SYSTEM_CLOCK, Clock
from jwtgate.state.bucket import expired, lookup
from jwtgate.state.store import Bucket, Outcome

__all__ = ["MemoryLimitZone", "MemoryLimitStore", "acquire", "peek", "commit", "monotonic_ms"]


def monotonic_ms(clock: Clock = SYSTEM_CLOCK) -> Callable[[], int]:
    """A function returning ``clock``'s monotonic time in whole milliseconds."""
    mono = clock.monotonic
    return lambda: int(mono() * 1000)


class MemoryLimitZone:
    """Leaky-bucket states of one zone, by key; bounded, least recently used first out.

    Args:
        name: the zone name (``zone=name:size``).
        capacity: most keys held (NGINX: about 16,000 per MiB, a state being 64 bytes).
        rate: thousandths of a request per second (for idle expiry).
    """

    __slots__ = ("name", "capacity", "rate", "states")

    def __init__(self, name: str, capacity: int, rate: int) -> None:
        self.name = name
        self.capacity = max(1, capacity)
        self.rate = rate
        #: key -> (excess, last); the most recently used key is last
        self.states: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<MemoryLimitZone {self.name} keys={len(self.states)}/{self.capacity} rate={self.rate}>"

    def __len__(self) -> int:
        return len(self.states)

    def get(self, key: str) -> tuple[int, int] | None:
        """The stored state of ``key``, marking it recently used (NGINX bumps it on lookup)."""
        state = self.states.get(key)
        if state is not None:
            self.states.move_to_end(key)
        return state

    def put(self, key: str, state: tuple[int, int], now: int) -> None:
        """Store ``state`` for ``key``; a new key may expire idle ones or evict the oldest."""
        states = self.states
        if key in states:
            states[key] = state
            states.move_to_end(key)
            return
        # ngx_http_limit_req_expire(ctx, 1): up to two idle, fully leaked states go first
        for _ in range(2):
            if not states:
                break
            oldest = next(iter(states))
            if not expired(states[oldest], now, self.rate):
                break
            del states[oldest]
        if len(states) >= self.capacity:
            # the zone is full: NGINX's expire(ctx, 0) frees the least recently used state
            states.popitem(last=False)
        states[key] = state


Entry = tuple[MemoryLimitZone, str, int]
"""One limit of one request: its zone, its key and its burst (thousandths)."""


def peek(entries: Sequence[Entry], now: int) -> Outcome:
    """Look every entry up, in order, without accounting; stop at the first over its burst."""
    excess: list[int] = []
    for i, (zone, key, burst) in enumerate(entries):
        e = lookup(zone.get(key), now, zone.rate)[0]
        excess.append(e)
        if e > burst:
            return Outcome(i, tuple(excess))
    return Outcome(-1, tuple(excess))


def commit(entries: Sequence[Entry], now: int) -> tuple[int, ...]:
    """Account a request in every entry without checking bursts (``ngx_http_limit_req_account``).

    Returns:
        The excess stored in each entry.
    """
    out = []
    for zone, key, _ in entries:
        state = lookup(zone.get(key), now, zone.rate)
        zone.put(key, state, now)
        out.append(state[0])
    return tuple(out)


def acquire(entries: Sequence[Entry], now: int) -> Outcome:
    """Account a request in every entry, or in none when one is over its burst."""
    if len(entries) == 1:  # the common case, without intermediate tuples
        zone, key, burst = entries[0]
        state = lookup(zone.get(key), now, zone.rate)
        if state[0] > burst:
            return Outcome(0, (state[0],))
        zone.put(key, state, now)
        return Outcome(-1, (state[0],))
    seen = peek(entries, now)
    if seen.rejected >= 0:
        return seen
    return Outcome(-1, commit(entries, now))


class MemoryLimitStore:
    """The memory backend as a :class:`~jwtgate.state.store.LimitStore`: zones by name.

    Args:
        clock: where ``now`` comes from when the caller passes none (monotonic, ms).
    """

    kind = "memory"

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.now = monotonic_ms(clock)
        self.zones: dict[str, MemoryLimitZone] = {}

    def __repr__(self) -> str:
        return f"<MemoryLimitStore zones={sorted(self.zones)}>"

    def zone(self, bucket: Bucket) -> MemoryLimitZone:
        """The zone of ``bucket``, created on first use."""
        zone = self.zones.get(bucket.zone)
        if zone is None:
            zone = self.zones[bucket.zone] = MemoryLimitZone(bucket.zone, bucket.capacity, bucket.rate)
        return zone

    def acquire_now(self, buckets: Sequence[Bucket], keys: Sequence[str], now: int | None = None) -> Outcome:
        """:meth:`acquire`, synchronously."""
        entries = [(self.zone(b), k, b.burst) for b, k in zip(buckets, keys, strict=True)]
        return acquire(entries, self.now() if now is None else now)

    async def acquire(self, buckets: Sequence[Bucket], keys: Sequence[str], now: int | None = None) -> Outcome:
        """See :meth:`jwtgate.state.store.LimitStore.acquire`."""
        return self.acquire_now(buckets, keys, now)
