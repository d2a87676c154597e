"""The store interface behind ``limit_req`` zones, shared by the memory and Redis backends.

A request under several ``limit_req`` lines asks its store once, with every bucket it touches:
:meth:`LimitStore.acquire` looks every key up and, only when none is over its burst, accounts
all of them. That is NGINX's rule for several limits (a request rejected by one zone spends
nothing in the others), made atomic: the memory backend runs it without yielding to the event
loop, the Redis backend in one Lua script.

Both backends implement :class:`LimitStore` and pass one contract suite
(``tests/contract/test_limit_store.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from jwtgate.errors import StateError

__all__ = ["Bucket", "Outcome", "LimitStore", "StateError", "STATE_BYTES", "capacity_of"]

#: NGINX: "One megabyte zone can keep about 16 thousand 64-byte states."
STATE_BYTES = 64


def capacity_of(size: int) -> int:
    """The number of keys a zone of ``size`` bytes holds (NGINX's 64-byte states)."""
    return max(1, size // STATE_BYTES)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One ``limit_req`` line as a store sees it; built once, at load time.

    Attributes:
        zone: the zone name (``zone=name:size``); states of different zones never mix.
        rate: thousandths of a request per second.
        burst: thousandths of a request (``burst=N`` is ``N * 1000``).
        capacity: most keys the zone holds; the least recently used key goes first.
    """

    zone: str
    rate: int
    burst: int
    capacity: int


class Outcome(NamedTuple):
    """What :meth:`LimitStore.acquire` decided.

    Attributes:
        rejected: index of the first bucket whose excess is over its burst, or -1 when every
            bucket accepted the request (and was accounted).
        excess: the excess (thousandths) of each bucket looked at, in order; when rejected,
            it ends with the refusing bucket's.
    """

    rejected: int
    excess: tuple[int, ...]


class LimitStore(Protocol):
    """Leaky-bucket states by zone and key."""

    #: ``"memory"`` or ``"redis"``, for logs and reprs.
    kind: str

    async def acquire(self, buckets: Sequence[Bucket], keys: Sequence[str],
                      now: int | None = None) -> Outcome:
        """Account one request in every bucket, or in none.

        Args:
            buckets: the request's limits, in configuration order.
            keys: the key of each bucket (non-empty; at most 65535 bytes).
            now: the time in ms, for tests; ``None`` uses the store's clock (the memory
                backend's injected clock, the Redis server's ``TIME``).

        Returns:
            The :class:`Outcome`.

        Raises:
            StateError: the backend could not be reached in time (Redis only).
        """
        ...
