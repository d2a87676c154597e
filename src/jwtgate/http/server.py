"""The client-side HTTP/1.1 protocol on asyncio, framed by httptools (llhttp).

One :class:`HttpProtocol` per client connection. It parses request heads, hands each request
to the gateway's handler as a :class:`~jwtgate.runtime.context.RequestContext`, streams the
request body with backpressure (:class:`RequestBody`) and writes the response through
:class:`Responder`. Requests on one connection are answered in order (pipelining); a framing
error answers 400 and closes, so nothing after a malformed message is ever interpreted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

from jwtgate.errors import HTTPError
from jwtgate.http.head import parse_head
from jwtgate.http.tunnel import Tunnel
from jwtgate.http.writer import STATUS_LINES_11, chunk, error_body, http_date, status_line
from jwtgate.runtime.context import ConnectionInfo, RequestContext
from jwtgate.writebatch import batch_for

__all__ = ["HttpLimits", "HttpProtocol", "RequestBody", "Responder"]

log = logging.getLogger("jwtgate.http")

#: ``hook(protocol, opened)`` called when a client connection opens (True) and closes (False);
#: set by the status module (jwtgate.modules.status) while statistics are on, else None.
CONNECTION_HOOK: Callable[[Any, bool], None] | None = None

#: Pause reading the client when this many body bytes wait unread; resume below the low mark.
BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024

#: method names as str, for the usual methods (others are decoded per request)
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class HttpLimits:
    """Client-side limits, with NGINX's directive names and defaults.

    Attributes:
        client_header_timeout: seconds to receive a whole request head (60); also the TLS
            handshake's limit.
        client_body_timeout: longest wait between two reads of a request body (60): 408.
        send_timeout: longest wait for the client to accept more bytes once writing is
            paused (60): the connection is closed.
        client_header_buffer_size: accepted for NGINX compatibility (1 KiB); heads are bounded
            by ``large_client_header_buffers``.
        keepalive_timeout: seconds an idle keep-alive connection stays open (75).
        keepalive_header: ``Keep-Alive: timeout=N`` sent on kept-alive responses (the second
            argument of ``keepalive_timeout``), seconds; ``None``: not sent.
        keepalive_requests: requests served on one connection before it is closed (1000).
        large_client_header_buffers: longest request line and header line, bytes (8 KiB).
        max_header_bytes: the whole head, bytes (32 KiB: NGINX's ``4 8k``).
        max_headers: most header fields in one request (100).
        discard_body_limit: most unread body bytes drained to keep a connection alive (1 MiB).
    """

    __slots__ = ("client_header_timeout", "keepalive_timeout", "keepalive_requests",
                 "large_client_header_buffers", "max_header_bytes", "max_headers",
                 "discard_body_limit", "client_body_timeout", "send_timeout", "client_header_buffer_size",
                 "keepalive_header")

    def __init__(self) -> None:
        self.client_header_timeout = 60.0
        self.client_body_timeout = 60.0
        self.send_timeout = 60.0
        self.client_header_buffer_size = 1024
        self.keepalive_timeout = 75.0
        self.keepalive_requests = 1000
        self.keepalive_header: int | None = None
        self.large_client_header_buffers = 8 * 1024
        self.max_header_bytes = 32 * 1024
        self.max_headers = 100
        self.discard_body_limit = 1024 * 1024


class RequestBody:
    """A request body streamed from the client to its reader (the proxy), with backpressure.

    Attributes:
        length: the ``Content-Length``, or ``None`` when chunked.
        chunked: whether the client sent ``Transfer-Encoding: chunked``.
        complete: the whole body has arrived.
        received: body bytes received so far.
    """

    __slots__ = ("length", "chunked", "complete", "received", "_chunks", "_buffered", "_waiter",
                 "_proto", "discard", "error", "expect_continue", "limit", "_interrupted")

    def __init__(self, proto: HttpProtocol, length: int | None, chunked: bool) -> None:
        self.length = length
        self.chunked = chunked
        self.complete = not chunked and not length
        self.received = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._proto = proto
        self.discard = False
        self.error: Exception | None = None
        #: the client sent ``Expect: 100-continue`` and waits for it before the body
        self.expect_continue = False
        #: largest body accepted, bytes (the location's ``client_max_body_size``); 0: no limit.
        #: ``None`` until the location is known; arriving bytes wait in the buffer meanwhile.
        self.limit: int | None = None
        self._interrupted = False

    @property
    def present(self) -> bool:
        """Whether the request has a body at all."""
        return self.chunked or bool(self.length)

    def feed(self, data: bytes) -> None:
        """Take bytes from the parser.

        Raises:
            HTTPError: 413 when the body grows past ``limit``.
        """
        self.received += len(data)
        if self.limit and self.received > self.limit:
            raise HTTPError(413, "client intended to send too large body")
        if self.discard:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER:
            self._proto.pause_reading("body")
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def abort(self, exc: Exception) -> None:
        self.error = exc
        self._wake()

    def interrupt(self, *_: Any) -> None:
        """Make a waiting (or the next) :meth:`read` return ``b""`` at once, whether or not
        the body is complete: the reader has something else to attend to (its upstream
        answered). A done-callback, hence the ignored arguments."""
        self._interrupted = True
        self._wake()

    def take_buffered(self) -> bytes:
        """What is buffered and unread, at once; the body counts as complete from now on
        (an upgrade: the rest of the client's bytes go through the tunnel)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self.complete = True
        self._proto.resume_reading("body")
        return data

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def read(self) -> bytes:
        """The next chunk of body bytes; ``b""`` once the body is complete.

        Raises:
            HTTPError: 400 when the client closed the connection before the body ended.
        """
        if self.expect_continue:
            # RFC 9110 §10.1.1: answer 100 only once the body is really wanted, so a request
            # refused before (401, 413) never makes the client upload it.
            self.expect_continue = False
            if not self.complete and not self._chunks:
                self._proto.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._proto.body_wanted(self)
        while not self._chunks:
            if self.complete:
                return b""
            if self._interrupted:
                self._interrupted = False
                return b""
            if self.error is not None:
                if isinstance(self.error, HTTPError):
                    raise self.error
                raise HTTPError(400, "client closed the connection during the body")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._buffered < BODY_LOW_WATER:
            self._proto.resume_reading("body")
        return data

    def start_discarding(self) -> None:
        """Drop what is buffered and whatever still arrives (NGINX discards unread bodies)."""
        self.discard = True
        self._chunks.clear()
        self._buffered = 0
        self._proto.resume_reading("body")


class Responder:
    """Writes one response to the client: head, body (framed), end.

    Chooses the framing: ``Content-Length`` when the length is known, chunked for HTTP/1.1
    otherwise, and closing the connection for HTTP/1.0 without a length. ``HEAD`` responses
    get the head only.
    """

    __slots__ = ("_proto", "ctx", "started", "finished", "_chunked", "head_only", "keep_alive",
                 "_remaining", "_out", "upgrade_pending")

    def __init__(self, proto: HttpProtocol, ctx: RequestContext, keep_alive: bool,
                 upgrade: bool = False) -> None:
        self._proto = proto
        self.ctx = ctx
        #: this request asked to switch protocols (Upgrade) and waits for the answer
        self.upgrade_pending = upgrade
        self.started = False
        self.finished = False
        self._chunked = False
        self.head_only = ctx.method == "HEAD"
        self.keep_alive = keep_alive
        self._remaining: int | None = None
        # Bytes produced but not yet written: a head and the body bytes of one upstream read
        # go out in one write(2) (see flush).
        self._out: list[bytes] = []

    def start(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None,
              own_fields: bool = True) -> None:
        """Write the status line and headers.

        Args:
            own_fields: add the gateway's ``Server`` and ``Date``; ``False`` when ``headers``
                carry the upstream's own (``proxy_pass_header Server``/``Date``).
            status: the status code.
            headers: fields to send, already validated and without framing or ``Connection``
                fields (bytes pairs).
            length: the body length in bytes, or ``None`` when unknown.
        """
        if self.started:
            raise RuntimeError("response already started")
        ctx = self.ctx
        ctx.status = status
        self.started = True
        if ctx.header_filter is not None:  # add_header (modules/headers.py)
            headers = ctx.header_filter(ctx, status, headers)
        ctx.sent_headers, ctx.sent_length = headers, length  # $sent_http_*
        no_body = status < 200 or status in (204, 304)
        if no_body:
            self.head_only = True
        line = STATUS_LINES_11.get(status) or status_line(status, "1.1")
        parts = [line, b"Server: jwtgate\r\nDate: ", http_date(), b"\r\n"] if own_fields else [line]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if no_body:
            self._remaining = 0
        elif length is not None:
            parts += (b"Content-Length: ", str(length).encode(), b"\r\n")
            self._remaining = length
        elif ctx.version == "1.1":
            parts.append(b"Transfer-Encoding: chunked\r\n")
            self._chunked = not self.head_only
        else:
            self.keep_alive = False
        if getattr(self._proto, "_closing", False):  # (a timeout, a graceful stop): the last answer
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        else:
            if ctx.version == "1.0":
                parts.append(b"Connection: keep-alive\r\n")
            ka = getattr(self._proto, "keepalive_header", None)
            if ka is not None:
                parts.append(b"Keep-Alive: timeout=%d\r\n" % ka)
        parts.append(b"\r\n")
        head = b"".join(parts)
        ctx.bytes_sent += len(head)
        self._out.append(head)

    def write(self, data: bytes) -> None:
        """Queue body bytes (ignored for ``HEAD``); :meth:`flush` sends them."""
        if self.head_only or not data:
            return
        self.ctx.body_bytes_sent += len(data)
        self.ctx.bytes_sent += len(data)
        self._out.append(chunk(data) if self._chunked else data)

    def flush(self) -> None:
        """Write what is queued, in one call."""
        out = self._out
        if out:
            self._proto.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def end(self) -> None:
        """Finish the body (the last chunk when chunked) and flush."""
        if self.finished:
            return
        self.finished = True
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self.flush()

    async def sendfile(self, file: Any, offset: int, count: int) -> None:
        """Send ``count`` bytes of ``file`` (a binary file object) from ``offset`` as the body,
        after :meth:`start` with that length (NGINX's ``sendfile on``).

        Zero-copy where it can: ``loop.sendfile`` where the loop has it (asyncio's loop, plain
        TCP); under uvloop, which has no ``loop.sendfile``, ``os.sendfile(2)`` straight to the
        socket whenever the transport's own buffer is empty (so bytes stay in order). What the
        socket does not take at once goes as 64 KiB reads written with backpressure, as do TLS
        and chunked bodies, so memory stays bounded.

        Raises:
            OSError: the file shrank while it was being sent.
            ConnectionError: the client closed the connection.
        """
        self.flush()
        self._proto.flush_writes()  # the head must be in the socket before sendfile(2)
        if self.head_only or count <= 0:
            return
        self.ctx.body_bytes_sent += count
        self.ctx.bytes_sent += count
        transport = self._proto.transport
        if transport is None or transport.is_closing():
            raise ConnectionError("client closed")
        sock_fd = -1
        if not self._chunked:
            try:
                await asyncio.get_running_loop().sendfile(transport, file, offset, count, fallback=False)
                return
            except (NotImplementedError, RuntimeError):
                pass  # not available here (SendfileNotAvailableError is a RuntimeError)
            sock = transport.get_extra_info("socket")
            if sock is not None and transport.get_extra_info("ssl_object") is None:
                sock_fd = sock.fileno()
        fd, pos, end = file.fileno(), offset, offset + count
        while pos < end:
            self._proto.flush_writes()  # a short read's bytes must not wait behind sendfile(2)
            if sock_fd >= 0 and transport.get_write_buffer_size() == 0:
                pos += _sendfile_some(sock_fd, fd, pos, end - pos)
                if pos >= end:
                    break
            # The socket is full (or zero-copy is not possible): one read, written through the
            # transport, which tells us when the socket drains.
            data = os.pread(fd, min(65536, end - pos), pos)
            if not data:
                raise OSError("file truncated while sending")
            pos += len(data)
            self._proto.write(chunk(data) if self._chunked else data)
            if self._proto.writing_paused:
                await self._proto.drain()
            if transport.is_closing():
                raise ConnectionError("client closed")

    @property
    def writing_paused(self) -> bool:
        """Whether the client's socket buffer is full (stop producing until resumed)."""
        return self._proto.writing_paused

    def on_writable(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Register callbacks for the client socket's pause/resume (None to clear)."""
        self._proto.flow_listener = (pause, resume)

    def clear_writable(self) -> None:
        self._proto.flow_listener = None

    async def drain(self) -> None:
        """Wait until the client socket accepts more data."""
        await self._proto.drain()

    def switch_protocols(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Write ``101 Switching Protocols`` with ``headers`` (which carry ``Upgrade``)."""
        ctx = self.ctx
        ctx.status = 101
        self.started = self.finished = True
        self.keep_alive = False
        parts = [status_line(101), b"Server: jwtgate\r\nDate: ", http_date(), b"\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"Connection: upgrade\r\n\r\n")
        head = b"".join(parts)
        ctx.bytes_sent += len(head)
        self._out.append(head)
        self.flush()

    def tunnel(self, upstream: Any, upstream_tail: bytes, idle_timeout: float) -> Tunnel:
        """Start copying bytes between the client and ``upstream`` (after :meth:`switch_protocols`)."""
        proto = self._proto
        tunnel = Tunnel(proto, upstream, idle_timeout)
        proto.tunnel = tunnel
        upstream.tunnel = tunnel
        # Backpressure each way: a full socket pauses reading on the other side.
        proto.flow_listener = (upstream.pause_reading, upstream.resume_reading)
        upstream.flow_listener = (lambda: proto.pause_reading("tunnel"), lambda: proto.resume_reading("tunnel"))
        tail, proto.upgrade_tail = proto.upgrade_tail, b""
        body = self.ctx.body
        if body is not None and not body.complete:
            # The upstream switched before the whole body came: the rest of the body and
            # whatever follows it are the tunnel's, in order.
            tail = proto.end_raw_body(body) + tail
        tunnel.start(tail, upstream_tail)
        proto.resume_reading("upgrade")
        upstream.resume_reading()  # (paused if its bytes came before the tunnel was made)
        return tunnel

    def send(self, status: int, headers: list[tuple[bytes, bytes]] | None = None,
             body: bytes | None = None, content_type: bytes = b"text/html") -> None:
        """A whole small response at once; an error page when ``body`` is ``None`` and status >= 400."""
        if body is None:
            body = error_body(status) if status >= 400 else b""
        hdrs = list(headers or ())
        if body:
            hdrs.append((b"Content-Type", content_type))
        self.start(status, hdrs, len(body))
        self.write(body)
        self.end()


def _sendfile_some(sock_fd: int, fd: int, pos: int, count: int) -> int:
    """``sendfile(2)`` from ``fd`` at ``pos`` to the non-blocking socket until it is full or
    ``count`` bytes are sent; returns the bytes sent.

    Raises:
        OSError: the file ended early (``sendfile`` returned 0) or the socket failed.
    """
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sock_fd, fd, pos + sent, count - sent)
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        if n == 0:
            raise OSError("file truncated while sending")
        sent += n
    return sent


Handler = Callable[[RequestContext], Awaitable[None]]

#: NGINX's answer to a plain HTTP request on a TLS port (its internal code 497 becomes 400).
PLAIN_HTTP_REASON = "The plain HTTP request was sent to HTTPS port"
PLAIN_HTTP_BODY = (b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n"
                   b"<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
                   b"<center>The plain HTTP request was sent to HTTPS port</center>\r\n"
                   b"<hr><center>jwtgate</center>\r\n</body>\r\n</html>\r\n")


class HttpProtocol(asyncio.Protocol):
    """One client connection.

    Args:
        handler: ``await handler(ctx)`` produces the response through ``ctx.responder``.
        limits: the :class:`HttpLimits` of the listening socket.
        counter: a one-element list, the process's connection counter (``$connection``).
        https: whether the connection is TLS (``$https``, ``$scheme``).
        plain_on_https: a plain HTTP connection to a TLS port: every request is answered 400
            "The plain HTTP request was sent to HTTPS port", as NGINX does.
        accepted: the loop time (seconds) the connection was accepted, when that was before
            this protocol was made (a TLS listener sniffs and handshakes first); the TLS
            handshake and the first head share one ``client_header_timeout`` from it.
    """

    def __init__(self, handler: Handler, limits: HttpLimits, counter: list[int], https: bool = False,
                 on_close: Callable[[HttpProtocol], None] | None = None, plain_on_https: bool = False,
                 accepted: float | None = None) -> None:
        self._handler = handler
        self._plain_on_https = plain_on_https
        self._limits = limits
        self.keepalive_header = limits.keepalive_header
        self._counter = counter
        self._https = https
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.conn: ConnectionInfo | None = None
        self._parser = httptools.HttpRequestParser(self)
        #: requests read and not yet served: (context or None, framing error, keep-alive, upgrade)
        self._queue: deque[tuple[RequestContext | None, HTTPError | None, bool, bool]] = deque()
        #: the connection's task (see _serve), from its first request on
        self._task: asyncio.Task[None] | None = None
        #: resolved by _next when a request is dispatched while the task waits for one
        self._wakeup: asyncio.Future[None] | None = None
        self._current_body: RequestBody | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._paused: set[str] = set()
        self._closing = False
        self._loop = asyncio.get_running_loop()
        #: loop time of the accept: the first client_header_timeout counts from there (the
        #: TLS listener gives it; connection_made comes after the handshake)
        self._accepted = accepted if accepted is not None else self._loop.time()
        #: this loop's write batch: responses go out together at the end of the loop's turn
        self._batch = batch_for(self._loop)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: read side: client_header_timeout, keepalive_timeout or (``_body_timing``) client_body_timeout
        self._deadline: float | None = None
        self._body_timing = False
        #: write side: send_timeout while writing is paused
        self._send_deadline: float | None = None
        self.writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.flow_listener: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._bad = False
        self._in_head = False
        #: a head began during this feed_data: client_header_timeout starts when it returns
        self._head_new = False
        self.active = False
        #: what followed the head of a request that asks to switch protocols (a tunnel's first bytes)
        self.upgrade_tail = b""
        #: body octets of an upgrading request still to come (llhttp does not parse them)
        self._raw_left = 0
        #: the client half-closed: close once its last request is answered
        self._eof = False
        #: a request's handler has started and not returned (it is waiting on something)
        self._handling = False
        self.tunnel: Tunnel | None = None

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self._counter[0] += 1
        if CONNECTION_HOOK is not None:
            CONNECTION_HOOK(self, True)
        self.conn = ConnectionInfo((str(peer[0]), int(peer[1]) if len(peer) > 1 else 0),
                                   (str(local[0]), int(local[1]) if len(local) > 1 else 0),
                                   self._counter[0], self._https)
        # NGINX: the TLS handshake and the first head share one client_header_timeout.
        self._set_timer(self._limits.client_header_timeout - (self._loop.time() - self._accepted))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        self._send_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._current_body is not None and not self._current_body.complete:
            self._current_body.abort(ConnectionError("client closed"))
        if self._task is not None and not self._task.done():
            self._task.cancel()
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_exception(ConnectionError("client closed"))
        if self.tunnel is not None:
            self.tunnel.close()
        if CONNECTION_HOOK is not None:
            CONNECTION_HOOK(self, False)
        if self._on_close is not None:
            self._on_close(self)

    def eof_received(self) -> bool:
        """The client closed its sending side (a close, or ``shutdown(SHUT_WR)``).

        What is already answered goes out first. A request whose handler is under way (waiting
        for its upstream) is given up, as NGINX does (499, ``proxy_ignore_client_abort off``),
        so a gone client holds no upstream connection; the connection then closes, and
        requests pipelined behind it are not answered. When no handler is under way, requests
        read but not yet started (pipelined before the half-close) are answered, then the
        connection closes. (Pipelined requests pause reading, so the end of input is often
        seen only once a later request is under way.)

        Returns:
            Whether to keep the transport open for those answers (asyncio's protocol rule).
        """
        self._batch.flush()
        self._eof = True
        body = self._current_body
        if body is not None and not body.complete:
            body.abort(ConnectionError("client closed"))
        # Over TLS (asyncio's SSL transport closes regardless) and in a tunnel, close now.
        if (self.active or self._queue) and not self._handling and not self._https \
                and self.tunnel is None:
            return True
        self._closing = True
        return False

    def close(self) -> None:
        """Close the connection once what is written is flushed."""
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self._batch.flush()
            self.transport.close()

    def shutdown_idle(self) -> None:
        """Close now if no request is in progress (graceful stop and reload)."""
        if not self.active and not self._queue:
            self.close()
        else:
            self._closing = True

    # -- timers ---------------------------------------------------------------------------

    # One timer per connection, moved lazily: setting a deadline per request costs a
    # float; the timer fires at most once per timeout and re-arms itself if the deadline moved.

    def _set_timer(self, seconds: float) -> None:
        self._body_timing = False
        when = self._loop.time() + seconds
        self._deadline = when
        self._arm(when)

    def _arm(self, when: float) -> None:
        """Make sure the timer fires no later than ``when``."""
        timer = self._timer
        if timer is None:
            self._timer = self._loop.call_at(when, self._on_timeout)
            self._timer_at = when
        elif when < self._timer_at:
            timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timeout)
            self._timer_at = when

    def _cancel_timer(self) -> None:
        self._deadline = None
        self._body_timing = False

    def body_wanted(self, body: RequestBody) -> None:
        """Start client_body_timeout for ``body`` (the body is read from now on)."""
        if body is self._current_body and not body.complete and not self._closing:
            self._set_timer(self._limits.client_body_timeout)
            self._body_timing = True

    def _on_timeout(self) -> None:
        self._timer = None
        if self._closing and self._send_deadline is None:
            return
        now = self._loop.time()
        send = self._send_deadline
        if send is not None and now >= send:
            self._send_deadline = None
        if send is not None and now >= send and self.writing_paused:
            log.info("client %s timed out (send_timeout) while sending the response",
                     self.conn.remote_addr if self.conn else "?")
            self._closing = True
            if self.transport is not None:
                self.transport.abort()  # close() would wait for the client to read
            return
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            self._deadline = None
            if self._body_timing:
                self._body_timing = False
                if self._paused:
                    # Not the client's fault: we stopped reading (backpressure, pipelining).
                    self._deadline = now + self._limits.client_body_timeout
                    self._body_timing = True
                else:
                    self._body_timed_out()
            elif not self.active:
                self.close()
                return
            elif self._in_head:
                # A pipelined head still incomplete after client_header_timeout: answer the
                # request in flight, then close.
                self._closing = True
                self.pause_reading("timeout")
        nxt = min((t for t in (self._deadline, self._send_deadline) if t is not None), default=None)
        if nxt is not None:
            self._arm(nxt)

    def _body_timed_out(self) -> None:
        """client_body_timeout expired before the body was complete: 408, then close."""
        log.info("client %s timed out (client_body_timeout) while reading the request body",
                 self.conn.remote_addr if self.conn else "?")
        body = self._current_body
        self._bad = True
        self._closing = True
        self.pause_reading("timeout")
        if body is not None and not body.complete:
            body.abort(HTTPError(408, "client timed out"))
        if not self.active and not self._queue:
            self.close()

    # -- flow control ---------------------------------------------------------------------

    def pause_reading(self, reason: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and self.transport is not None and not self._closing:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.writing_paused = True
        when = self._loop.time() + self._limits.send_timeout
        self._send_deadline = when
        self._arm(when)
        if self.flow_listener is not None:
            self.flow_listener[0]()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._send_deadline = None
        if self.flow_listener is not None:
            self.flow_listener[1]()
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def drain(self) -> None:
        if self.writing_paused:
            if self._closing and (self.transport is None or self.transport.is_closing()):
                raise ConnectionError("client closed")
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    def write(self, data: bytes) -> None:
        """Send ``data`` to the client at the end of the loop's turn (see jwtgate.writebatch)."""
        if self.transport is not None and not self.transport.is_closing():
            self._batch.write(self.transport, data)

    def flush_writes(self) -> None:
        """Hand what waits in the write batch to the transport now (before using the socket
        directly, as sendfile does)."""
        self._batch.flush()

    # -- parsing --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self._raw_left:
            self._take_raw_body(data)
            return
        if self._bad:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            # The head asked for another protocol; what follows is not HTTP. Keep it for a
            # tunnel if the upstream agrees (101); otherwise answer and close.
            self._bad = True
            tail = data[int(e.args[0]):] if e.args else b""
            if self._raw_left:
                # llhttp stops right after an upgrading head, even when it declares a body;
                # the body comes first (RFC 9110 §7.8) and goes upstream with the request.
                self._take_raw_body(tail)
            else:
                self.upgrade_tail = tail
                self.pause_reading("upgrade")
            if not self.active and not self._queue:
                self.close()
        except httptools.HttpParserError as e:
            # Our callbacks' own refusals (414, 431, 413...) arrive wrapped by httptools.
            cause = e.__context__
            if isinstance(cause, HTTPError):
                self._reject(cause)
            else:
                if cause is not None:
                    log.error("request parsing failed: %r", cause)
                self._reject(HTTPError(400, f"malformed request: {e}"))
        else:
            if self._head_new:
                self._head_new = False
                # The first head keeps the deadline set at the accept (NGINX), so a client
                # cannot hold a new connection for two timeouts; later ones start theirs now.
                if self._in_head:
                    first = self.conn is not None and self.conn.requests == 0 and self._deadline is not None
                    if not first:
                        self._set_timer(self._limits.client_header_timeout)

    def _take_raw_body(self, data: bytes) -> None:
        """Body bytes of an upgrading request (``Content-Length``), which llhttp leaves
        unparsed: the first ``_raw_left`` octets are the body, the rest is the new protocol's."""
        n = min(len(data), self._raw_left)
        self._raw_left -= n
        if n:
            try:
                self.on_body(data[:n])
            except HTTPError as err:  # 413 once the location's client_max_body_size is known
                self._raw_left = 0
                self._reject(err)
                return
        if self._raw_left:
            return
        self.upgrade_tail += data[n:]
        self.pause_reading("upgrade")
        self.on_message_complete()

    def end_raw_body(self, body: RequestBody) -> bytes:
        """An upgrading request's ``body`` ends where the tunnel begins: take no more raw body
        bytes, stop its client_body_timeout, and return what is buffered and unread (the
        tunnel's first bytes from the client)."""
        self._raw_left = 0
        if self._body_timing:
            self._cancel_timer()
        self._current_body = None
        return body.take_buffered()

    def _reject(self, err: HTTPError) -> None:
        """A framing error: answer it in turn, then close; parse nothing more."""
        self._bad = True
        self.pause_reading("error")
        body = self._current_body
        if body is not None and not body.complete:
            # The body of a request already handed out: its handler answers with this
            # error when it reads the body (or answers what it would anyway); then close.
            body.abort(err)
            self._closing = True
            if not self.active and not self._queue:
                self.close()
            return
        self._queue.append((None, err, False, False))
        self._next()

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        if self.active:
            # A pipelined request: parse what was read, read no more until we catch up.
            self.pause_reading("pipeline")
        # client_header_timeout is armed after this feed_data, and only if the head is still
        # incomplete then: most heads arrive whole, and need no timer at all.
        self._head_new = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.large_client_header_buffers:
            raise HTTPError(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self._limits
        size = len(name) + len(value) + 4
        self._head_bytes += size
        if size > limits.large_client_header_buffers or self._head_bytes > limits.max_header_bytes:
            raise HTTPError(431, "request header too large")
        if len(self._headers) >= limits.max_headers:
            raise HTTPError(431, "too many request header fields")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        if self._plain_on_https:
            raise HTTPError(400, PLAIN_HTTP_REASON)
        parser = self._parser
        assert self.conn is not None
        ctx, body = self._make_context(parser)
        # (whether it asks to upgrade is its own: a request pipelined before it does not)
        upgrade = parser.should_upgrade()
        if upgrade and not body.complete:
            if body.chunked:
                # Its framing would have to be parsed by hand; no upgrade needs one.
                raise HTTPError(400, "a chunked body in a request that asks to upgrade")
            self._raw_left = body.length or 0
        keep_alive = parser.should_keep_alive() and not self._bad
        self._current_body = body
        if not body.complete and not body.expect_continue:
            self._set_timer(self._limits.client_body_timeout)
            self._body_timing = True
        self._queue.append((ctx, None, keep_alive, upgrade))
        self._next()

    def _make_context(self, parser: Any) -> tuple[RequestContext, RequestBody]:
        raw = parser.get_method()
        method, version, target, uri, args, headers, http, length, chunked = parse_head(
            _METHODS.get(raw) or raw.decode("ascii"), parser.get_http_version(),
            self._url.decode("latin-1"), self._headers)
        ctx = RequestContext(self.conn, method, target, uri, args, version, headers, http)  # type: ignore[arg-type]
        ctx.request_length = self._head_bytes + len(self._url)
        body = RequestBody(self, length, chunked)
        if version == "1.1" and "expect" in http and http["expect"].lower() == "100-continue":
            body.expect_continue = True
        ctx.body = body
        return ctx, body

    def on_body(self, data: bytes) -> None:
        body = self._current_body
        if body is None:
            return
        if self._body_timing:
            self._deadline = self._loop.time() + self._limits.client_body_timeout
        body.feed(data)

    def on_message_complete(self) -> None:
        if self._raw_left:
            return  # (an upgrading head: its body is taken raw, see _take_raw_body)
        if self._body_timing:
            self._cancel_timer()
        if self._current_body is not None:
            self._current_body.finish()
            self._current_body = None

    # -- dispatch -------------------------------------------------------------------------

    def _next(self) -> None:
        if self.active or not self._queue or self.transport is None:
            return
        self.active = True
        w = self._wakeup
        if w is not None:
            self._wakeup = None
            w.set_result(None)
        elif self._task is None:
            self._task = self._loop.create_task(self._serve())

    async def _serve(self) -> None:
        """The connection's task: serves its requests in turn, from the first to the close.

        One task per connection rather than per request: creating and registering a task
        cost more than the rest of dispatching a request. Each request runs inline here
        (no coroutine of its own between this loop and the handler's).
        """
        limits = self._limits
        queue = self._queue
        while True:
            if not self.active:
                self._wakeup = w = self._loop.create_future()
                await w
            ctx, err, keep_alive, upgrade = queue.popleft()
            try:
                if ctx is None:
                    assert err is not None
                    self._answer_error(err)  # (closes the connection)
                    return
                conn = ctx.conn
                conn.requests += 1
                if conn.requests >= limits.keepalive_requests or self._closing:
                    keep_alive = False
                responder = Responder(self, ctx, keep_alive, upgrade)
                ctx.responder = responder
                self._handling = True
                try:
                    await self._handler(ctx)
                except Exception:
                    # The handler answers its own errors; one escaping it is a bug: 500 if the
                    # response has not started, and the connection is not reused either way.
                    log.exception("unexpected error while serving %s %s", ctx.method, ctx.uri)
                    responder.keep_alive = False
                    if not responder.started:
                        responder.send(500)
                # (an upgrade that did not happen: what follows its head is not HTTP)
                keep_alive = responder.keep_alive and responder.finished and not upgrade
                body = ctx.body
                if not body.complete:
                    pending = (body.length or 0) - body.received
                    if body.chunked or pending > limits.discard_body_limit or not keep_alive:
                        keep_alive = False
                    else:
                        body.start_discarding()
                if not keep_alive:
                    self.close()
            except asyncio.CancelledError:
                self.close()
                return
            except Exception:
                self._bug()
                return
            finally:
                self.active = False
                self._handling = False
                if ctx is not None:
                    # The context and its responder point at each other: undone here, the
                    # request's objects go with their last reference, not at the next run of
                    # the cycle collector (which then has ~15 fewer objects per request to walk).
                    ctx.responder = None
            if self._closing:
                self.close()
                return
            try:
                self.resume_reading("pipeline")
                if queue:
                    self._next()
                elif self._eof:
                    self.close()  # half-closed: nothing more can come
                    return
                elif not self._in_head:
                    # (a head already begun keeps its client_header_timeout deadline)
                    self._set_timer(limits.keepalive_timeout)
            except Exception:
                self._bug()
                return
            if self._closing:
                return

    def _bug(self) -> None:
        """An error escaped the request's handling: a bug, not the client's doing. This
        connection ends (logged with the traceback); the others go on."""
        log.exception("unexpected error on the connection from %s",
                      self.conn.remote_addr if self.conn else "?")
        self.active = False
        self.close()

    def _answer_error(self, err: HTTPError) -> None:
        """Answer a request that could not be parsed, then close (NGINX closes after 400)."""
        log.info("client %s: %s", self.conn.remote_addr if self.conn else "?", err.reason)
        assert self.conn is not None
        ctx = RequestContext(self.conn, "GET", "", "/", "", "1.1", [], {})
        responder = Responder(self, ctx, keep_alive=False)
        responder.send(err.status, body=PLAIN_HTTP_BODY if err.reason == PLAIN_HTTP_REASON else None)
        self.close()
