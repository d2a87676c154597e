"""Choosing an upstream server: NGINX's balancing methods with passive health.

Methods, as the ``upstream`` directives that select them: smooth weighted round robin (the
default), ``least_conn``, ``ip_hash`` and ``hash $key [consistent]``.

Sans-io and synchronous: :meth:`Balancer.pick` decides, the caller does the I/O and reports
back with :meth:`Balancer.failed` or :meth:`Balancer.succeeded`, so a cancelled request never
leaves the balancer half-updated. Semantics follow ``ngx_http_upstream_round_robin.c``:
a server that fails ``max_fails`` times within ``fail_timeout`` seconds is skipped for
``fail_timeout`` seconds; ``backup`` servers are used only when every primary is down.
"""

from __future__ import annotations

import bisect
import ipaddress
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

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
    active: int = field(default=0, repr=False)
    fails: int = field(default=0, repr=False)
    checked: float = field(default=0.0, repr=False)
    accessed: float = field(default=0.0, repr=False)
    #: failed attempts ever, and times ``max_fails`` was reached (statistics; never reset)
    total_fails: int = field(default=0, repr=False)
    unavail: int = field(default=0, repr=False)

    @cached_property
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
    """Picks peers: primaries by ``method``, then backups by round robin.

    Args:
        peers: the group's servers, in configuration order.
        clock: monotonic time source.
        method: ``round_robin``, ``least_conn``, ``ip_hash``, ``hash`` or ``hash_consistent``.
    """

    def __init__(self, peers: Sequence[Peer], clock: Clock = SYSTEM_CLOCK, method: str = "round_robin") -> None:
        self.primary = [p for p in peers if not p.backup]
        self.backup = [p for p in peers if p.backup]
        self.clock = clock
        self.method = method
        #: one server and no backup: NGINX never marks it unavailable (max_fails and
        #: fail_timeout are ignored, "such a server will never be considered unavailable")
        self.single = len(self.primary) == 1 and not self.backup
        self._total_weight = sum(p.weight for p in self.primary)
        self._ring: list[tuple[int, Peer]] = []
        if method == "hash_consistent":
            # NGINX's ketama-like ring: 160 points per unit of weight.
            for p in self.primary:
                base = f"{p.host}\0{p.port}".encode()
                prev = 0
                for _ in range(160 * p.weight):
                    prev = zlib.crc32(base + prev.to_bytes(4, "little"))
                    self._ring.append((prev, p))
            self._ring.sort(key=lambda point: point[0])
            self._ring_keys = [h for h, _ in self._ring]

    def has_more(self, exclude: Sequence[Peer]) -> bool:
        """Whether a peer not in ``exclude`` could still be tried (no state changes)."""
        now = self.clock.monotonic()
        return any(p not in exclude and p.available(now) for p in (*self.primary, *self.backup))

    def __repr__(self) -> str:
        return f"<Balancer primary={[p.name for p in self.primary]} backup={[p.name for p in self.backup]}>"

    def __len__(self) -> int:
        return len(self.primary) + len(self.backup)

    def pick(self, exclude: Sequence[Peer] = (), key: str = "") -> Peer | None:
        """The next peer to try, skipping ``exclude`` (already tried) and unavailable ones.

        Args:
            exclude: peers already tried for this request.
            key: the ``hash`` key or the client address for ``ip_hash``.

        When every peer is down, NGINX resets their failure state and tries again rather
        than failing forever; so does this.
        """
        now = self.clock.monotonic()
        if self.single and not exclude:
            # The usual case, decided as the general path below would decide it.
            p = self.primary[0]
            if p.available(now):
                if now - p.checked > p.fail_timeout:
                    p.checked = now
                return p
        method = self.method
        if method == "least_conn":
            peer = self._least_conn(exclude, now)
        elif method == "ip_hash":
            peer = self._by_weight_point(_ip_hash(key), exclude, now, key)
        elif method == "hash":
            peer = self._by_weight_point(zlib.crc32(key.encode()), exclude, now, key)
        elif method == "hash_consistent":
            peer = self._consistent(key, exclude, now)
        else:
            peer = self._pick(self.primary, exclude, now)
        if peer is None:
            peer = self._pick(self.backup, exclude, now)
        if peer is not None:
            return peer
        candidates = [p for p in self.primary if p not in exclude and not p.down]
        if candidates:
            for p in self.primary:
                p.fails = 0
            return self._pick(self.primary, exclude, now)
        return None

    def _least_conn(self, exclude: Sequence[Peer], now: float) -> Peer | None:
        """Fewest active connections per unit of weight; ties by round robin (NGINX)."""
        best: list[Peer] = []
        best_load = 0.0
        for p in self.primary:
            if p in exclude or not p.available(now):
                continue
            load = p.active / p.weight
            if not best or load < best_load:
                best, best_load = [p], load
            elif load == best_load:
                best.append(p)
        if len(best) <= 1:
            return best[0] if best else None
        return self._pick(best, (), now)

    def _by_weight_point(self, h: int, exclude: Sequence[Peer], now: float, key: str) -> Peer | None:
        """``hash``/``ip_hash``: the peer owning point ``h % total weight``; rehash on a miss
        up to 20 times, then round robin (ngx_http_upstream_get_hash_peer)."""
        total = self._total_weight
        if total:
            for attempt in range(20):
                w = h % total
                for p in self.primary:
                    w -= p.weight
                    if w < 0:
                        break
                if p not in exclude and p.available(now):
                    return p
                h = zlib.crc32(f"{attempt + 1}{key}".encode())
        return self._pick(self.primary, exclude, now)

    def _consistent(self, key: str, exclude: Sequence[Peer], now: float) -> Peer | None:
        """``hash ... consistent``: the first ring point at or after the key's hash."""
        ring = self._ring
        if not ring:
            return None
        start = bisect.bisect_left(self._ring_keys, zlib.crc32(key.encode()))
        for i in range(len(ring)):
            p = ring[(start + i) % len(ring)][1]
            if p not in exclude and p.available(now):
                return p
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
        """Report a failed attempt on ``peer`` (connect error, timeout, invalid response).

        Ignored for a group's only server (:attr:`single`), as NGINX does."""
        if self.single:
            return
        now = self.clock.monotonic()
        peer.fails += 1
        peer.total_fails += 1
        if peer.fails == peer.max_fails:
            peer.unavail += 1
        peer.accessed = now
        peer.checked = now

    def succeeded(self, peer: Peer) -> None:
        """Report a successful exchange; failures recorded before ``fail_timeout`` expire stay."""
        now = self.clock.monotonic()
        if peer.accessed < peer.checked or now - peer.checked > peer.fail_timeout:
            peer.fails = 0


def _ip_hash(addr: str) -> int:
    """NGINX's ``ip_hash``: the first three octets of an IPv4 address, or all of an IPv6 one."""
    try:
        packed = ipaddress.ip_address(addr).packed
    except ValueError:
        packed = addr.encode()
    octets = packed[:3] if len(packed) == 4 else packed
    h = 89
    for b in octets:
        h = (h * 113 + b) % 6271
    return h
