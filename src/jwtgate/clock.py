"""Clocks, injected wherever time matters so tests never sleep on the wall clock.

``wall()`` is seconds since the Unix epoch (float; JWT ``exp``/``nbf``, log timestamps);
``monotonic()`` is seconds from an arbitrary origin (float; rate-limit buckets, timeouts).
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "ManualClock", "SYSTEM_CLOCK"]


class Clock(Protocol):
    """What jwtgate needs of a clock."""

    def wall(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary, never-decreasing origin."""
        ...


class SystemClock:
    """The real clocks: ``time.time`` and ``time.monotonic``."""

    wall = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)


class ManualClock:
    """A clock for tests: starts at ``start`` seconds and moves only by :meth:`advance`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        self.now += seconds


SYSTEM_CLOCK: Clock = SystemClock()
