"""Keep-alive connections to upstream peers (NGINX's ``keepalive`` in an ``upstream`` block).

Idle connections are kept per peer, most recently used first, up to ``max_idle`` per peer;
they are closed after ``idle_timeout`` seconds or ``max_requests`` requests
(``keepalive_timeout``, ``keepalive_requests``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any
from collections import deque

from jwtgate.errors import UpstreamError
from jwtgate.upstream.balancer import Peer
from jwtgate.upstream.client import UpstreamConnection

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """Idle upstream connections by peer.

    Args:
        max_idle: idle connections kept per peer (NGINX ``keepalive N``); 0 disables reuse.
        idle_timeout: seconds an idle connection is kept (``keepalive_timeout``, 60).
        max_requests: requests per connection before it is closed (``keepalive_requests``, 1000).
    """

    def __init__(self, max_idle: int = 32, idle_timeout: float = 60.0, max_requests: int = 1000) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self._idle: dict[tuple[int, int], deque[UpstreamConnection]] = {}

    def __repr__(self) -> str:
        n = sum(len(q) for q in self._idle.values())
        return f"<ConnectionPool idle={n} max_idle={self.max_idle}>"

    def acquire(self, peer: Peer, tls: Any = None) -> UpstreamConnection | None:
        """An idle, open connection to ``peer`` (over the same ``tls`` settings), or ``None``."""
        q = self._idle.get((id(peer), id(tls)))
        now = time.monotonic()
        while q:
            conn = q.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.close()
        return None

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Give back ``conn`` after an exchange; it is kept only if ``reusable`` and room remains."""
        conn.end()
        if (not reusable or conn.closed or self.max_idle <= 0
                or conn.requests >= self.max_requests):
            conn.close()
            return
        key = (id(conn.peer), conn.tls_key)
        q = self._idle.get(key)
        if q is None:
            q = self._idle[key] = deque()
        if len(q) >= self.max_idle:
            q.popleft().close()
        conn.idle_since = time.monotonic()
        if conn.transport is not None:
            conn.transport.resume_reading()
        q.append(conn)

    async def connect(self, peer: Peer, timeout: float, tls: Any = None) -> UpstreamConnection:
        """A new connection to ``peer``.

        Args:
            timeout: seconds for the TCP and TLS handshakes (``proxy_connect_timeout``).
            tls: ``(ssl.SSLContext, server_hostname or None)`` for an https upstream.

        Raises:
            UpstreamError: 502 when refused, unreachable or the TLS handshake fails
                (a certificate that does not verify), 504 on timeout.
        """
        loop = asyncio.get_running_loop()
        kw: dict[str, Any] = {}
        if tls is not None:
            kw = {"ssl": tls[0], "server_hostname": tls[1] or ""}
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(peer), peer.host, peer.port, **kw), timeout)
        except asyncio.TimeoutError:
            raise UpstreamError(504, f"upstream timed out while connecting to {peer.address}") from None
        except ssl.SSLError as e:
            raise UpstreamError(502, f"SSL_do_handshake() failed while connecting to {peer.address} "
                                     f"({e.reason or e})") from None
        except OSError as e:
            raise UpstreamError(502, f"connect() to {peer.address} failed ({e.strerror or e})") from None
        conn.tls_key = id(tls)
        return conn

    def close_all(self) -> None:
        """Close every idle connection (shutdown, reload)."""
        for q in self._idle.values():
            while q:
                q.pop().close()
        self._idle.clear()
