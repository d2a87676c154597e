"""In-process state for ``limit_req`` zones: the embedded default backend.

A zone holds at most ``capacity`` keys and, when full, forgets the least recently used
one, as NGINX does when its shared-memory zone runs out. State is per process.
"""

from __future__ import annotations

from collections import OrderedDict

from jwtgate.state.bucket import leak

__all__ = ["MemoryLimitZone"]


class MemoryLimitZone:
    """Leaky-bucket state by key, bounded, LRU.

    Args:
        name: the zone name (``zone=name:size``).
        capacity: most keys held (NGINX: about 16,000 per MiB, one state being 64 bytes).
        rate: thousandths of a request per second.
    """

    def __init__(self, name: str, capacity: int, rate: int) -> None:
        self.name = name
        self.capacity = max(1, capacity)
        self.rate = rate
        self._states: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<MemoryLimitZone {self.name} keys={len(self._states)}/{self.capacity} rate={self.rate}>"

    def __len__(self) -> int:
        return len(self._states)

    def lookup(self, key: str, now: int) -> int:
        """The excess (thousandths) a request for ``key`` at ``now`` (ms) would have."""
        state = self._states.get(key)
        if state is None:
            return 0
        self._states.move_to_end(key)
        return leak(state[0], state[1], now, self.rate)

    def account(self, key: str, excess: int, now: int) -> None:
        """Store ``excess`` as the state of ``key`` after an accepted request at ``now`` (ms)."""
        states = self._states
        old = states.get(key)
        # NGINX keeps `last` when no time passed, so sub-millisecond bursts leak nothing.
        last = old[1] if old is not None and old[1] == now else now
        states[key] = (excess, last)
        states.move_to_end(key)
        if len(states) > self.capacity:
            states.popitem(last=False)
