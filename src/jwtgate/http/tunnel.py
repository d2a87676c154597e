"""A tunnel between a client and an upstream after ``101 Switching Protocols`` (WebSocket).

After the upstream agrees to an ``Upgrade``, neither side speaks HTTP any more: bytes are
copied both ways as they arrive, with backpressure each way (a full socket on one side
pauses reading on the other), until either side closes or nothing moves for
``idle_timeout`` seconds (NGINX closes WebSocket connections after ``proxy_read_timeout``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["Tunnel"]


class Tunnel:
    """Bytes both ways between two transports.

    Args:
        client: the client's :class:`~jwtgate.http.server.HttpProtocol`.
        upstream: the :class:`~jwtgate.upstream.client.UpstreamConnection`.
        idle_timeout: seconds without data either way before both are closed.

    Attributes:
        done: resolves when the tunnel is closed.
        to_client, to_upstream: bytes copied each way.
    """

    def __init__(self, client: Any, upstream: Any, idle_timeout: float) -> None:
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.to_client = 0
        self.to_upstream = 0
        #: close() ran (``done`` alone cannot tell: the request's cancellation, when the
        #: client goes, cancels the future its task awaits, which is ``done``)
        self.closed = False
        self._last = time.monotonic()
        self._timer = loop.call_later(idle_timeout, self._check_idle)

    def __repr__(self) -> str:
        return f"<Tunnel up={self.to_upstream} down={self.to_client} closed={self.closed}>"

    def start(self, client_tail: bytes, upstream_tail: bytes) -> None:
        """Begin copying; the tails are bytes each side sent after its HTTP head."""
        if upstream_tail:
            self.from_upstream(upstream_tail)
        if client_tail:
            self.from_client(client_tail)

    def from_client(self, data: bytes) -> None:
        self._last = time.monotonic()
        self.to_upstream += len(data)
        self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        self._last = time.monotonic()
        self.to_client += len(data)
        self.client.write(data)

    def _check_idle(self) -> None:
        idle = time.monotonic() - self._last
        if idle >= self.idle_timeout:
            self.close()
        else:
            self._timer = asyncio.get_running_loop().call_later(self.idle_timeout - idle, self._check_idle)

    def close(self) -> None:
        """Close both sides (each flushes what it was given first)."""
        if self.closed:
            return
        self.closed = True
        self._timer.cancel()
        if not self.done.done():
            self.done.set_result(None)
        self.upstream.close()
        self.client.close()
