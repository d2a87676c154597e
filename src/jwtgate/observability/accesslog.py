"""Access-log files: buffering in the event loop, writing in a thread of their own.

The event loop only formats lines and appends them to a list. Unbuffered files hand what a
loop turn produced to the process's :class:`LogWriter` at the end of that turn; buffered
files (``buffer=``) when the buffer is full, when ``flush=`` expires, on reload, on reopen
and on stop, as NGINX does. The writer thread does every ``open``, ``write`` and ``close``,
so a slow disk never stalls the loop; it runs the operations in the order they were queued.

Files are opened with ``O_APPEND`` and every batch goes out in one ``write(2)`` made of whole
lines, so several worker processes can share one file: no line is split or interleaved.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

__all__ = ["AccessLog", "LogWriter"]

log = logging.getLogger("jwtgate.log")

#: NGINX reports a failing access-log write at most once a minute.
ERROR_INTERVAL = 60.0

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class LogWriter:
    """The thread that writes every access log of a process, in queue order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, Any, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="jwtgate-access-log", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<LogWriter alive={self._thread.is_alive()}>"

    def submit(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in the writer thread, after everything queued before."""
        self._queue.put((fn, args, None))

    def barrier(self) -> Future[None]:
        """A future done once everything queued so far has run."""
        done: Future[None] = Future()
        self._queue.put((None, (), done))
        return done

    def _run(self) -> None:
        get = self._queue.get
        while True:
            fn, args, done = get()
            if done is not None:
                done.set_result(None)
                continue
            try:
                fn(*args)
            except Exception:  # never let one bad write stop the thread
                log.exception("access log writer failed")


class AccessLog:
    """One access-log file of one configuration, shared by every ``access_log`` naming it.

    A plan resource (:class:`~jwtgate.modules.base.Resource`): the running gateway opens,
    flushes, reopens and closes it.

    Args:
        path: absolute path.
        buffer: ``buffer=`` in bytes, 0 for unbuffered.
        flush: ``flush=`` in seconds, 0 for none (then a buffer is written only when full).
    """

    def __init__(self, path: str, buffer: int = 0, flush: float = 0.0) -> None:
        self.path = path
        self.buffer = buffer
        self.flush_interval = flush
        self.fd = -1
        self._lines: list[bytes] = []
        self._size = 0
        self._writer: LogWriter | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._error_time = 0.0
        self._closed = False

    def __repr__(self) -> str:
        mode = f" buffer={self.buffer}" if self.buffer else ""
        return f"<AccessLog {self.path}{mode} fd={self.fd}>"

    # -- the event loop's side ----------------------------------------------------------

    def write(self, line: bytes) -> None:
        """Queue one line (with its newline)."""
        if not self.buffer:
            self._lines.append(line)
            if not self._scheduled:
                self._scheduled = True
                try:
                    asyncio.get_running_loop().call_soon(self._end_of_turn)
                except RuntimeError:  # no loop (a direct call): write at once
                    self._end_of_turn()
            return
        size = len(line)
        if self._size + size > self.buffer:
            self._submit()
            if size > self.buffer:  # NGINX writes a line longer than the buffer directly
                self._hand_over(line)
                return
        if not self._lines and self.flush_interval:
            self._arm_timer()
        self._lines.append(line)
        self._size += size

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self._submit()

    def _arm_timer(self) -> None:
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._submit()

    def _submit(self) -> None:
        lines = self._lines
        if not lines:
            return
        self._lines = []
        self._size = 0
        self._hand_over(lines[0] if len(lines) == 1 else b"".join(lines))

    def _hand_over(self, data: bytes) -> None:
        if self._writer is not None:
            self._writer.submit(self._write_now, data)
        elif self._closed:  # a late line of a retired configuration: open, write, close
            self._write_now(data)
            self._close_now()
        else:  # never opened by a gateway (a direct use): write at once
            self._write_now(data)

    # -- the plan-resource protocol -----------------------------------------------------

    async def open(self, keep: dict[str, Any]) -> None:
        """Open the file (errors surface here, at start or reload) and join the writer thread.

        Raises:
            OSError: the file cannot be opened.
        """
        self.fd = os.open(self.path, _FLAGS, 0o644)
        self._closed = False
        writer = keep.get("log_writer")
        if writer is None:
            writer = keep["log_writer"] = LogWriter()
        self._writer = writer

    def flush(self) -> None:
        """Hand everything buffered to the writer now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._submit()

    def reopen(self) -> None:
        """Flush, then reopen the file (log rotation); on failure the old file stays in use."""
        self.flush()
        if self._writer is not None:
            self._writer.submit(self._reopen_now)
        else:
            self._reopen_now()

    async def close(self) -> None:
        """Flush, wait until everything is written, close the file."""
        self.flush()
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.submit(self._close_now)
            await asyncio.wrap_future(writer.barrier())
        else:
            self._close_now()

    # -- the writer thread's side ------------------------------------------------------

    def _write_now(self, data: bytes) -> None:
        try:
            if self.fd < 0:
                self.fd = os.open(self.path, _FLAGS, 0o644)
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            now = time.monotonic()
            if now - self._error_time >= ERROR_INTERVAL or not self._error_time:
                self._error_time = now
                log.error('write() to "%s" failed (%d: %s)', self.path, e.errno or 0, e.strerror)

    def _reopen_now(self) -> None:
        try:
            fd = os.open(self.path, _FLAGS, 0o644)
        except OSError as e:
            log.error('reopening "%s" failed (%d: %s)', self.path, e.errno or 0, e.strerror)
            return
        old, self.fd = self.fd, fd
        if old >= 0:
            os.close(old)

    def _close_now(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
