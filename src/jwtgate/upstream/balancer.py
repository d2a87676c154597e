"""Choosing an upstream server: NGINX's smooth weighted round robin with passive health.

Sans-io and synchronous: :meth:`Balancer.pick` decides, the caller does the I/O and reports
back with :meth:`Balancer.failed` or :meth:`Balancer.succeeded`, so a cancelled request never
leaves the balancer half-updated. Semantics follow ``ngx_http_upstream_round_robin.c``:
a server that fails ``max_fails`` times within ``fail_timeout`` seconds is skipped for
``fail_timeout`` seconds; ``backup`` servers are used only when every primary is down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from jwtgate.clock import SYSTEM_CLOCK, Clock

__all__ = ["Peer", "Balancer"]


@dataclass(eq=False)
class Peer:
    """One upstream server address.

    Attributes:
        host: IP address (resolved at load time) or host name.
        port: TCP port.
        name: as written in the configuration (``127.0.0.1:9000``, ``localhost:9000``).
        weight: NGINX ``weight=`` (1).
        max_fails: NGINX ``max_fails=`` (1; 0 disables accounting).
        fail_timeout: NGINX ``fail_timeout=``, seconds (10).
        backup: NGINX ``backup``.
        down: NGINX ``down``.
    """

    host: str
    port: int
    name: str
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    backup: bool = False
    down: bool = False
    current_weight: int = field(default=0, repr=False)
    fails: int = field(default=0, repr=False)
    checked: float = field(default=0.0, repr=False)
    accessed: float = field(default=0.0, repr=False)

    @property
    def address(self) -> str:
        """``host:port`` as ``$upstream_addr`` shows it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def available(self, now: float) -> bool:
        if self.down:
            return False
        if self.max_fails and self.fails >= self.max_fails and now - self.checked <= self.fail_timeout:
            return False
        return True


class Balancer:
    """Smooth weighted round robin over primary peers, then backup peers.

    Args:
        peers: the group's servers, in configuration order.
        clock: monotonic time source.
    """

    def __init__(self, peers: Sequence[Peer], clock: Clock = SYSTEM_CLOCK) -> None:
        self.primary = [p for p in peers if not p.backup]
        self.backup = [p for p in peers if p.backup]
        self.clock = clock

    def __repr__(self) -> str:
        return f"<Balancer primary={[p.name for p in self.primary]} backup={[p.name for p in self.backup]}>"

    def __len__(self) -> int:
        return len(self.primary) + len(self.backup)

    def pick(self, exclude: Sequence[Peer] = ()) -> Peer | None:
        """The next peer to try, skipping ``exclude`` (already tried) and unavailable ones.

        When every peer is down, NGINX resets their failure state and tries again rather
        than failing forever; so does this.
        """
        now = self.clock.monotonic()
        for group in (self.primary, self.backup):
            peer = self._pick(group, exclude, now)
            if peer is not None:
                return peer
        candidates = [p for p in self.primary if p not in exclude and not p.down]
        if candidates:
            for p in self.primary:
                p.fails = 0
            return self._pick(self.primary, exclude, now)
        return None

    @staticmethod
    def _pick(group: list[Peer], exclude: Sequence[Peer], now: float) -> Peer | None:
        best: Peer | None = None
        total = 0
        for p in group:
            if p in exclude or not p.available(now):
                continue
            p.current_weight += p.weight
            total += p.weight
            if best is None or p.current_weight > best.current_weight:
                best = p
        if best is not None:
            best.current_weight -= total
            if now - best.checked > best.fail_timeout:
                best.checked = now
        return best

    def failed(self, peer: Peer) -> None:
        """Report a failed attempt on ``peer`` (connect error, timeout, invalid response)."""
        now = self.clock.monotonic()
        peer.fails += 1
        peer.accessed = now
        peer.checked = now

    def succeeded(self, peer: Peer) -> None:
        """Report a successful exchange; failures recorded before ``fail_timeout`` expire stay."""
        now = self.clock.monotonic()
        if peer.accessed < peer.checked or now - peer.checked > peer.fail_timeout:
            peer.fails = 0
