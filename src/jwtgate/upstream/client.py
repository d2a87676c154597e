"""The upstream side of a proxied request: one HTTP/1.1 connection, framed by httptools.

An :class:`UpstreamConnection` carries one :class:`Exchange` at a time. The response head is
handed synchronously to the exchange's ``on_head`` callback (which starts the client's
response) and body bytes go straight to the client's writer as they arrive; when the
client's socket is full, reading from the upstream pauses, so a response of any size passes
with flat memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import httptools

from jwtgate.errors import UpstreamError
from jwtgate.writebatch import batch_for

__all__ = ["DISCARD", "Sink", "Exchange", "UpstreamConnection"]


class Sink(Protocol):
    """Where a response body goes (the client's :class:`~jwtgate.http.server.Responder`)."""

    writing_paused: bool

    def write(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def end(self) -> None: ...
    def on_writable(self, pause: Callable[[], None], resume: Callable[[], None]) -> None: ...
    def clear_writable(self) -> None: ...


#: ``on_head(status, headers, content_length) -> sink``: start the client response.
HeadCallback = Callable[[int, list[tuple[bytes, bytes]], "int | None"], Sink]


class _Discard:
    """The sink for a response set aside for a retry (``proxy_next_upstream http_503``...):
    nothing of it reaches the client, and it is not read to its end (see
    :meth:`UpstreamConnection.on_headers_complete`)."""

    writing_paused = False

    def write(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def end(self) -> None: ...
    def on_writable(self, pause: Any, resume: Any) -> None: ...
    def clear_writable(self) -> None: ...


#: what an exchange's ``on_head`` returns to drop the response and close the connection
DISCARD = _Discard()


class Exchange:
    """One request/response on an upstream connection.

    Args:
        on_head: called once with the final response head; returns the body sink.
        head_only: the request was ``HEAD``: the response has no body whatever it says.
        read_timeout: seconds allowed between two reads from the upstream
            (``proxy_read_timeout``).
        loop: the running event loop (given by the caller: looking it up costs a ``getpid``
            system call per request on Python 3.11).

    Attributes:
        done: resolves to ``None`` when the response is complete, or raises
            :class:`UpstreamError`.
        status: the response status, 0 before the head.
        head_seen: the head was handed to ``on_head`` (the client response has started).
        received: bytes read from the upstream for this exchange.
        keep_alive: the upstream allows reusing the connection.
    """

    __slots__ = ("on_head", "head_only", "read_timeout", "done", "status", "headers", "head_seen",
                 "received", "keep_alive", "sink", "complete", "length", "chunked", "last_read",
                 "abandoned", "upgrade_tail", "parsed")

    def __init__(self, on_head: HeadCallback, head_only: bool, read_timeout: float,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.on_head = on_head
        self.head_only = head_only
        self.read_timeout = read_timeout
        self.done: asyncio.Future[None] = (loop or asyncio.get_running_loop()).create_future()
        #: the proxy gave up on this exchange (client gone, body failed): no one awaits ``done``
        self.abandoned = False
        #: after a 101, the bytes the upstream sent behind the head (the tunnel's first bytes)
        self.upgrade_tail = b""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_seen = False
        self.received = 0
        self.keep_alive = False
        self.sink: Sink | None = None
        self.complete = False
        #: the parser saw the end of the response message (not just ``complete``)
        self.parsed = False
        self.length: int | None = None
        self.chunked = False
        self.last_read = 0.0  # set when the exchange begins on a connection

    def fail(self, err: UpstreamError) -> None:
        if not self.done.done() and not self.abandoned:
            self.done.set_exception(err)

    def finish(self) -> None:
        self.complete = True
        if self.sink is not None:
            self.sink.clear_writable()
        if not self.done.done():
            self.done.set_result(None)


class UpstreamConnection(asyncio.Protocol):
    """A keep-alive connection to one upstream peer.

    Args:
        peer: the :class:`~jwtgate.upstream.balancer.Peer` it is connected to.
    """

    def __init__(self, peer: Any, max_head: int = 32 * 1024) -> None:
        self.peer = peer
        #: most bytes of status line and header fields accepted (``proxy_buffer_size``)
        self.max_head = max_head
        self._head_bytes = 0
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        #: this loop's write batch: requests go out together at the end of the loop's turn
        self._batch = batch_for(self.loop)
        self.closed = False
        self.requests = 0
        self.exchange: Exchange | None = None
        self._parser: Any = None
        self._timer: asyncio.TimerHandle | None = None
        #: the delay (seconds) the pending timer was armed with: an upper bound on when it fires
        self._timer_for = 0.0
        #: reading is paused because the client does not take the response: not the
        #: upstream's silence, so proxy_read_timeout does not run (the client's send_timeout does)
        self._held = False
        #: the request body is still being sent: proxy_read_timeout has not started
        self._sending = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        #: set once the connection carries a WebSocket (or other upgraded) tunnel
        self.tunnel: Any = None
        #: which TLS settings the connection was made with (pool key; id(None) for plain TCP)
        self.tls_key = id(None)
        #: called on pause_writing/resume_writing while tunnelling
        self.flow_listener: tuple[Callable[[], None], Callable[[], None]] | None = None
        #: what a response's sink calls when the client stops/starts taking bytes (made once:
        #: two bound methods per response cost more than the rest of the hand-over)
        self._flow = (self._pause_reading, self._resume_reading)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self.exchange else "idle")
        return f"<UpstreamConnection {self.peer.address} {state} requests={self.requests}>"

    # -- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self.tunnel is not None:
            self.tunnel.close()
        ex = self.exchange
        if ex is not None and not ex.complete:
            if ex.head_seen and ex.length is None and not ex.chunked and not ex.head_only:
                ex.finish()  # a body delimited by the connection's end (RFC 9112 §6.3 item 8)
            else:
                ex.fail(UpstreamError(502, "upstream prematurely closed connection"))
        w = self._drain
        if w is not None and not w.done():
            w.set_exception(UpstreamError(502, "upstream closed connection while sending"))

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.flow_listener is not None:
            self.flow_listener[0]()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.flow_listener is not None:
            self.flow_listener[1]()
        w = self._drain
        if w is not None and not w.done():
            w.set_result(None)

    # -- one exchange ---------------------------------------------------------------------

    def begin(self, exchange: Exchange) -> None:
        """Start ``exchange`` on this connection (before the request is written)."""
        self.exchange = exchange
        self.requests += 1
        self._head_bytes = 0
        if self._parser is None:
            # A parser is reused only after it saw a whole message (llhttp then expects the
            # next one); making one per request cost more than the rest of begin().
            self._parser = httptools.HttpResponseParser(self)
        exchange.last_read = time.monotonic()
        timeout = exchange.read_timeout
        # Re-armed lazily by _check_timeout from last_read: no timer churn per request, unless
        # the pending timer (left by an exchange with a longer proxy_read_timeout) could fire
        # after this exchange's deadline.
        if self._timer is None or timeout < self._timer_for:
            self._arm(timeout)

    def end(self) -> None:
        """Detach the finished exchange (the connection may then go back to the pool)."""
        ex = self.exchange
        self.exchange = None
        self._held = self._sending = False  # (the pool resumes reading on release)
        if ex is None or not ex.parsed:
            # Mid-message (a HEAD answer's announced body, an abandoned exchange): a new
            # exchange needs a fresh parser.
            self._parser = None

    def hold_read_timer(self, held: bool) -> None:
        """Stop (``True``) or start again (``False``) proxy_read_timeout for the exchange,
        while its request body is being sent (NGINX starts the timer once the request is)."""
        self._sending = held
        ex = self.exchange
        if not held and ex is not None:
            ex.last_read = time.monotonic()

    def write(self, data: bytes) -> None:
        """Send request bytes (at the end of the loop's turn, see jwtgate.writebatch)."""
        if self.transport is not None and not self.closed:
            self._batch.write(self.transport, data)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the upstream socket accepts more request bytes.

        Args:
            timeout: seconds the upstream may stay unwritable (``proxy_send_timeout``).

        Raises:
            UpstreamError: 504 when ``timeout`` passes, 502 when the connection closes.
        """
        if self._write_paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._drain, timeout)
            except asyncio.TimeoutError:
                raise UpstreamError(504, "upstream timed out while sending request to upstream") from None

    def close(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self._batch.flush()
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent data (a failed or cancelled exchange)."""
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._check_timeout)
        self._timer_for = delay

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        ex = self.exchange
        self._timer = None
        if ex is None or ex.complete:
            return
        if self._held or self._sending:
            self._arm(ex.read_timeout)
            return
        idle = time.monotonic() - ex.last_read
        if idle >= ex.read_timeout:
            if not ex.head_seen:
                ex.fail(UpstreamError(504, "upstream timed out while reading response header"))
            else:
                ex.fail(UpstreamError(504, "upstream timed out while reading response body"))
            self.abort()
            return
        self._arm(ex.read_timeout - idle)

    # -- httptools callbacks ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)
            return
        ex = self.exchange
        if ex is not None and ex.status == 101 and ex.complete:
            # The upstream switched protocols and speaks first; the tunnel is not made yet:
            # keep its bytes for it (reading no more than a buffer's worth meanwhile).
            ex.upgrade_tail += data
            if len(ex.upgrade_tail) > 65536:
                self._pause_reading()
            return
        if ex is None or self._parser is None:
            # Bytes from an idle upstream connection: it is out of step; never reuse it.
            self.abort()
            return
        ex.last_read = time.monotonic()
        ex.received += len(data)
        try:
            self._parser.feed_data(data)
            if ex.sink is not None:
                ex.sink.flush()
        except httptools.HttpParserUpgrade as e:
            if ex.status == 101 and ex.head_seen:
                # The head went to the client; the rest belongs to the tunnel.
                ex.upgrade_tail = data[int(e.args[0]):] if e.args else b""
                ex.finish()
            else:
                ex.fail(UpstreamError(502, "upstream switched protocols unasked"))
                self.abort()
        except httptools.HttpParserError as e:
            cause = e.__context__
            ex.fail(cause if isinstance(cause, UpstreamError)
                    else UpstreamError(502, f"upstream sent an invalid response: {e}", "invalid_header"))
            if ex.complete and ex.sink is not None:
                ex.sink.flush()  # the response itself was whole; only what followed it is bad
            self.abort()

    def on_message_begin(self) -> None:
        ex = self.exchange
        if ex is not None and ex.head_seen:
            # A second response to one request: the connection is out of step; drop it.
            raise UpstreamError(502, "upstream sent more data after the response", "invalid_header")

    # Status line and fields count against max_head: NGINX's "upstream sent too big header"
    # (proxy_buffer_size). Counted inline: these run for every line of every response.

    def on_status(self, status: bytes) -> None:
        self._head_bytes += len(status)
        if self._head_bytes > self.max_head:
            raise UpstreamError(502, "upstream sent too big header", "invalid_header")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.exchange.headers  # type: ignore[union-attr]
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head:
            raise UpstreamError(502, "upstream sent too big header", "invalid_header")
        if len(headers) >= 200:
            raise UpstreamError(502, "upstream sent too many header fields", "invalid_header")
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            raise UpstreamError(502, f"upstream sent an invalid status {status}", "invalid_header")
        if status < 200 and status != 101:
            # Interim responses (100 Continue, 103) are not forwarded; the final one follows.
            ex.headers = []
            self._head_bytes = 0
            return
        ex.status = status
        for name, value in ex.headers:
            n = len(name)  # only two names matter here; most fields are ruled out by length
            if n == 14 and name.lower() == b"content-length":
                if not value.isdigit():
                    raise UpstreamError(502, "upstream sent an invalid Content-Length")
                ex.length = int(value)
            elif n == 17 and name.lower() == b"transfer-encoding":
                ex.chunked = b"chunked" in value.lower()
        if ex.chunked:
            ex.length = None
        ex.keep_alive = self._parser.should_keep_alive()
        ex.head_seen = True
        # A HEAD answer keeps the length the upstream announced (RFC 9110 §9.3.2); the
        # responder sends no body for HEAD, 204 and 304 whatever the length says.
        sink = ex.on_head(status, ex.headers, ex.length)
        ex.sink = sink
        if sink is DISCARD:
            # As NGINX does before trying the next server: close, without waiting for the
            # body (which may be large, or never end).
            ex.finish()
            self.abort()
            return
        sink.on_writable(*self._flow)
        if sink.writing_paused:
            self._pause_reading()
        if ex.head_only:
            ex.finish()

    def on_body(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None or ex.complete or ex.sink is None:
            return
        ex.sink.write(data)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None or not ex.head_seen:
            return  # the end of an interim 1xx response
        ex.parsed = True
        if not ex.complete:
            if ex.sink is not None:
                ex.sink.end()
            ex.finish()

    def pause_reading(self) -> None:
        """Stop reading from the upstream (the other side of a tunnel is full)."""
        self._pause_reading()

    def resume_reading(self) -> None:
        self._resume_reading()

    def _pause_reading(self) -> None:
        self._held = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._held:
            self._held = False
            ex = self.exchange
            if ex is not None:
                ex.last_read = time.monotonic()  # the upstream's silence counts from now
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
