"""The running gateway: listening sockets, the current Plan, signals, reload and shutdown.

One process, one event loop (uvloop when available). Signals follow NGINX: ``HUP``
reloads (the new configuration is compiled first; if it fails, the error is logged and the
old one keeps serving), ``QUIT`` stops gracefully (in-flight requests finish), ``TERM`` and
``INT`` stop fast, ``USR1`` reopens the log files.

Modules' resources (access logs, the Redis client, zone state; see
:class:`~jwtgate.modules.base.Resource`) are opened before a Plan serves, flushed when a
reload replaces it, closed when it retires, and reopened on ``USR1``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from typing import Any

from jwtgate.conf.plan import Plan, compile_plan
from jwtgate.errors import ConfigError, JwtgateError
from jwtgate.http.server import HttpProtocol
from jwtgate.observability.errorlog import reopen_error_log, setup_error_log
from jwtgate.runtime.phases import Dispatcher

__all__ = ["Gateway", "BindError", "run", "READY_FD_ENV"]

log = logging.getLogger("jwtgate")

#: The environment variable a master sets in a worker it forks: the file descriptor of a pipe
#: on which the worker reports that it listens (see :mod:`jwtgate.process.master`).
READY_FD_ENV = "JWTGATE_READY_FD"

#: Seconds in-flight requests get to finish on a graceful stop (``worker_shutdown_timeout``).
SHUTDOWN_TIMEOUT = 10.0  # the default of worker_shutdown_timeout


class BindError(JwtgateError):
    """A listening socket could not be bound (``bind() to ADDR failed``)."""


class Gateway:
    """Serves a configuration file until stopped.

    Args:
        path: the main configuration file.
        plan: an already compiled Plan for ``path`` (compiled here when ``None``).
    """

    def __init__(self, path: str, plan: Plan | None = None, worker: bool = False) -> None:
        #: a worker of a master (process/master.py): shares its ports with the other workers
        #: (SO_REUSEPORT), leaves reloads and the pid file to the master
        self.worker = worker
        self.path = path
        self.plan = plan if plan is not None else compile_plan(path)
        self.dispatcher = Dispatcher(lambda: self.plan)
        self.connections: set[HttpProtocol] = set()
        self._servers: dict[tuple[str, int], asyncio.AbstractServer | TlsListener] = {}
        self._counter = [0]
        self._stopped: asyncio.Future[None] | None = None
        self._old_plans: list[Plan] = []
        #: handed to every Plan's resources: what outlives one configuration
        self._keep: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Gateway {self.path} listening={list(self._servers)} connections={len(self.connections)}>"

    # -- sockets ----------------------------------------------------------------------

    def _factory(self, addr: tuple[str, int], https: bool = False, plain_on_https: bool = False,
                 accepted: float | None = None) -> Any:
        def make() -> HttpProtocol:
            proto = HttpProtocol(self.dispatcher, self.plan.limits.get(addr) or next(iter(self.plan.limits.values())),
                                 self._counter, https=https, on_close=self.connections.discard,
                                 plain_on_https=plain_on_https, accepted=accepted)
            self.connections.add(proto)
            return proto
        return make

    async def _listen(self, addr: tuple[str, int], tls: bool = False) -> None:
        host, port = addr
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.worker:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(511)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise BindError(f"bind() to {host}:{port} failed ({e.errno}: {e.strerror})") from None
        loop = asyncio.get_running_loop()
        if tls:
            self._servers[addr] = TlsListener(self, addr, sock)
        else:
            self._servers[addr] = await loop.create_server(self._factory(addr), sock=sock)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the plan's resources and bind every listening address of the plan.

        Raises:
            BindError: an address is in use or not available.
            OSError: an access log cannot be opened.
        """
        await self._open_resources(self.plan)
        for addr in self.plan.binds:
            await self._listen(addr, addr in self.plan.tls_binds)
        for addr in self.plan.binds:
            log.info("listening on %s:%d%s", *addr, " (ssl)" if addr in self.plan.tls_binds else "")

    async def _open_resources(self, plan: Plan) -> None:
        opened = []
        try:
            for resource in plan.resources:
                await resource.open(self._keep)
                opened.append(resource)
        except BaseException:
            for resource in opened:
                await resource.close()
            raise

    async def reload(self) -> bool:
        """Compile the configuration again and switch to it if it is valid.

        Returns:
            Whether the new configuration is now in force.
        """
        try:
            new = compile_plan(self.path)
            await self._open_resources(new)
        except (ConfigError, OSError) as e:
            log.error("reload failed, the old configuration stays in force: %s", e)
            return False
        old = self.plan
        try:
            for addr in new.binds:
                server = self._servers.get(addr)
                if server is not None and isinstance(server, TlsListener) != (addr in new.tls_binds):
                    # The address switches between TLS and plain HTTP: listen anew.
                    self._servers.pop(addr).close()
                    server = None
                if server is None:
                    await self._listen(addr, addr in new.tls_binds)
        except BindError as e:
            log.error("reload failed, the old configuration stays in force: %s", e)
            for resource in new.resources:
                await resource.close()
            return False
        self.plan = new
        if not self.worker and new.worker_processes > 1:
            # Only a master forks workers; this process was started without one. An error, not a
            # warning: the default error_log level would hide a setting silently not applied.
            log.error("worker_processes %d takes effect at the next start; this gateway was "
                      "started as a single process and stays one", new.worker_processes)
        for addr in list(self._servers):
            if addr not in new.binds:
                self._servers.pop(addr).close()
        setup_error_log(*new.error_log)
        for resource in old.resources:
            resource.flush()
        # Requests in flight still hold the old plan; its pools and resources close once idle.
        self._old_plans.append(old)
        loop = asyncio.get_running_loop()
        loop.call_later(old.worker_shutdown_timeout, lambda: loop.create_task(self._retire(old)))
        log.info("configuration reloaded")
        return True

    async def _retire(self, plan: Plan) -> None:
        if plan in self._old_plans:
            self._old_plans.remove(plan)
        elif plan is not self.plan:
            return  # already retired (by a stop before its reload timer fired)
        for pool in plan.pools:
            pool.close_all()
        for resource in plan.resources:
            await resource.close()

    def reopen_logs(self) -> None:
        """Reopen the error log and the resources' files (after log rotation, ``SIGUSR1``)."""
        reopen_error_log()
        for plan in (*self._old_plans, self.plan):
            for resource in plan.resources:
                resource.reopen()

    async def stop(self, graceful: bool) -> None:
        """Stop listening, let in-flight requests finish (when ``graceful``), close everything."""
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        for conn in list(self.connections):
            if graceful:
                conn.shutdown_idle()
            else:
                conn.close()
        if graceful:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.plan.worker_shutdown_timeout
            while any(c.active for c in self.connections) and loop.time() < deadline:
                await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        for old in list(self._old_plans):
            await self._retire(old)
        await self._retire(self.plan)

    async def serve(self) -> None:
        """Start, then serve until a stop signal; handles HUP, QUIT, TERM, INT, USR1."""
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        await self.start()
        _report_listening()
        mode: dict[str, bool] = {"graceful": False}

        def stop(graceful: bool) -> None:
            mode["graceful"] = graceful
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(None)

        loop.add_signal_handler(signal.SIGTERM, stop, False)
        loop.add_signal_handler(signal.SIGINT, stop, False)
        loop.add_signal_handler(signal.SIGQUIT, stop, True)
        if not self.worker:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        pid_path = None if self.worker else self.plan.pid
        if pid_path:
            with open(pid_path, "w", encoding="ascii") as f:
                f.write(f"{os.getpid()}\n")
        try:
            await self._stopped
        finally:
            log.info("stopping (%s)", "graceful" if mode["graceful"] else "fast")
            await self.stop(mode["graceful"])
            if pid_path:
                try:
                    os.unlink(pid_path)
                except OSError:
                    pass


class TlsListener:
    """Accepts connections on an address with ``listen ... ssl``.

    Each accepted socket is peeked at (``MSG_PEEK``, nothing consumed): a TLS record
    (``0x16``, or ``0x80`` for an SSLv2-style hello) starts the handshake with the context of
    the socket's local address (the current Plan's, so a reload renews certificates); anything
    else is a plain HTTP request, answered 400 "The plain HTTP request was sent to HTTPS port"
    as NGINX does. The first byte must come within ``client_header_timeout``, and so must the
    end of the handshake; a failed handshake closes the connection (logged at info).
    """

    def __init__(self, gateway: Gateway, addr: tuple[str, int], sock: socket.socket) -> None:
        self._gateway = gateway
        self._addr = addr
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[socket.socket, asyncio.TimerHandle] = {}
        #: loop time of each accept: the handshake and the first head share one
        #: client_header_timeout from there (NGINX)
        self._accept_times: dict[socket.socket, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._accept)

    def __repr__(self) -> str:
        return f"<TlsListener {self._addr[0]}:{self._addr[1]}>"

    def _limits(self) -> Any:
        limits = self._gateway.plan.limits
        return limits.get(self._addr) or next(iter(limits.values()))

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE, ECONNABORTED...
                log.error("accept() failed: %s", e)
                return
            conn.setblocking(False)
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            timer = self._loop.call_later(self._limits().client_header_timeout, self._drop, conn)
            self._waiting[conn] = timer
            self._accept_times[conn] = self._loop.time()
            self._loop.add_reader(conn.fileno(), self._sniff, conn, str(peer[0]))

    def _drop(self, conn: socket.socket) -> None:
        """Nothing arrived within client_header_timeout (or the listener closes)."""
        timer = self._waiting.pop(conn, None)
        self._accept_times.pop(conn, None)
        if timer is not None:
            timer.cancel()
        try:
            self._loop.remove_reader(conn.fileno())
        except (ValueError, OSError):
            pass
        conn.close()

    def _sniff(self, conn: socket.socket, peer: str) -> None:
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        timer = self._waiting.pop(conn, None)
        accepted = self._accept_times.pop(conn, self._loop.time())
        if timer is not None:
            timer.cancel()
        self._loop.remove_reader(conn.fileno())
        if not first:
            conn.close()
            return
        task = self._loop.create_task(self._start(conn, peer, first[0] in (0x16, 0x80), accepted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, conn: socket.socket, peer: str, tls: bool, accepted: float) -> None:
        # NGINX decides per local address: a plain address under a TLS wildcard bind is
        # served plain; a TLS address answers plain HTTP with 400.
        address_context = self._gateway.plan.tls_context(*self._local(conn))
        context = address_context if tls else None
        plain_on_https = address_context is not None and not tls
        factory = self._gateway._factory(self._addr, https=context is not None, plain_on_https=plain_on_https,
                                         accepted=accepted)
        try:
            if context is None:
                await self._loop.connect_accepted_socket(factory, conn)
            else:
                left = self._limits().client_header_timeout - (self._loop.time() - accepted)
                await self._loop.connect_accepted_socket(
                    factory, conn, ssl=context, ssl_handshake_timeout=max(0.001, left))
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            log.info("SSL handshake with client %s failed: %s", peer, e)
            conn.close()

    @staticmethod
    def _local(conn: socket.socket) -> tuple[str, int]:
        try:
            local = conn.getsockname()
            return str(local[0]), int(local[1])
        except OSError:
            return "", 0

    def close(self) -> None:
        """Stop accepting; drop the connections still waiting for their first byte or handshake."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.remove_reader(self._sock.fileno())
        except (ValueError, OSError):
            pass
        self._sock.close()
        for conn in list(self._waiting):
            self._drop(conn)
        for task in list(self._tasks):
            task.cancel()


def _report_listening() -> None:
    """Tell the master (when there is one) that this worker's sockets accept connections: one
    byte on the pipe named by :data:`READY_FD_ENV`. A reload stops the old workers only then,
    so no connection is refused while the new ones open their resources (a keyval state file of
    many entries takes a second to read)."""
    value = os.environ.pop(READY_FD_ENV, None)
    if value is None:
        return
    try:
        fd = int(value)
    except ValueError:
        return
    try:
        os.write(fd, b"1")
    except OSError:  # the master stopped waiting (EPIPE)
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def tune_gc() -> None:
    """Set the cycle collector up for serving: what exists now (the plan, the modules) is
    frozen out of it, and young collections run a little less often than the default.

    Older generations run as often as by default: a large gen1 threshold made rare 70 ms
    pauses (the p99 of a benchmark run).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(2000, 10, 10)


def run(path: str, plan: Plan | None = None, worker: bool = False) -> None:
    """Run the gateway for ``path`` in the foreground until a stop signal.

    Args:
        worker: run as one worker of a master (see :mod:`jwtgate.process.master`).

    Raises:
        ConfigError: the configuration is invalid.
        BindError: a listening address cannot be bound.
    """
    gateway = Gateway(path, plan, worker)
    setup_error_log(*gateway.plan.error_log)
    tune_gc()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(gateway.serve())
    else:
        uvloop.run(gateway.serve())
