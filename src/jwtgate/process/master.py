"""The master process: N worker processes, each one event loop, supervised as NGINX does.

``worker_processes N`` (or ``auto``) above 1 runs a master that never serves: it forks the
workers (each binds the listening addresses with ``SO_REUSEPORT``, so the kernel spreads
connections over them), restarts a worker that dies, and handles the signals:

``HUP``   compile the configuration again; if it is valid, start new workers with it and,
          once they listen (each reports it on a pipe; at most READY_TIMEOUT seconds), stop
          the old ones gracefully; if not, log the error and keep the old workers
``QUIT``  graceful stop: workers finish their requests in flight
``TERM``, ``INT``  fast stop
``USR1``  reopen log files (master and workers)

The environment variable ``JWTGATE_WORKERS`` overrides ``worker_processes`` (the benchmark
harness sets it to 1).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time

from jwtgate.conf.plan import Plan, compile_plan
from jwtgate.errors import ConfigError
from jwtgate.observability.errorlog import setup_error_log
from jwtgate.observability.metrics import mark_process_dead

__all__ = ["run_gateway", "run_master", "worker_count"]

log = logging.getLogger("jwtgate")

_SIGNALS = {signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD,
            signal.SIGUSR2, signal.SIGWINCH}
#: Signals whose default action would kill the master and orphan its workers.
_IGNORED = (signal.SIGPIPE, signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGTTIN,
            signal.SIGTTOU)
#: Seconds the master waits for workers to stop before killing them.
STOP_TIMEOUT = 15.0
#: More unexpected worker deaths than this within RESPAWN_WINDOW seconds stops the master.
MAX_RESPAWNS = 10
RESPAWN_WINDOW = 10.0
#: Longest a reload waits for the new workers to listen before stopping the old ones anyway.
READY_TIMEOUT = 10.0
#: Stop signals that end that wait early (they are handled right after it).
_STOPS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}


def worker_count(plan: Plan) -> int:
    """Workers to run: ``JWTGATE_WORKERS`` if set, else the plan's ``worker_processes``."""
    env = os.environ.get("JWTGATE_WORKERS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, plan.worker_processes)


def run_gateway(path: str, plan: Plan) -> int:
    """Serve ``path`` in the foreground: one process, or a master and its workers.

    Returns:
        The exit status (0 after a requested stop).

    Raises:
        BindError: a listening address cannot be bound (checked before any worker starts).
    """
    from jwtgate.process.gateway import run

    workers = worker_count(plan)
    if workers <= 1:
        run(path, plan)
        return 0
    return run_master(path, plan, workers)


def _check_binds(plan: Plan) -> None:
    """Fail early, in the master, when an address cannot be bound."""
    from jwtgate.process.gateway import BindError

    for host, port in plan.binds:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise BindError(f"bind() to {host}:{port} failed ({e.errno}: {e.strerror})") from None


class _Master:
    """The master's state: current workers (by pid) and the ones being retired."""

    def __init__(self, path: str, plan: Plan, workers: int) -> None:
        self.path = path
        self.plan = plan
        self.workers = workers
        self.current: set[int] = set()
        self.retiring: set[int] = set()
        self.deaths: list[float] = []
        self.stopping = False
        #: the read end of each new worker's "listening" pipe, until it reports or is waited for
        self.ready: dict[int, int] = {}

    def spawn(self, plan: Plan) -> int:
        from jwtgate.process.gateway import READY_FD_ENV

        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            status = 1
            try:
                os.close(rfd)
                for fd in self.ready.values():  # the other workers' pipes are the master's
                    os.close(fd)
                os.environ[READY_FD_ENV] = str(wfd)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                for sig in _SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                _die_with_parent()
                from jwtgate.process.gateway import run

                run(self.path, plan, worker=True)
                status = 0
            except BaseException as e:  # a worker reports and exits; the master decides
                log.critical("worker failed: %s", e)
            finally:
                logging.shutdown()
                os._exit(status)
        os.close(wfd)
        self.ready[pid] = rfd
        return pid

    def forget_ready(self, pid: int) -> None:
        """Stop listening for ``pid``'s report (it was not waited for, or it died)."""
        fd = self.ready.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def wait_listening(self, pids: set[int], timeout: float = READY_TIMEOUT) -> None:
        """Wait until every worker of ``pids`` listens (or exited), at most ``timeout`` s, or
        until a stop signal is pending."""
        fds = {self.ready.pop(pid): pid for pid in pids if pid in self.ready}
        deadline = time.monotonic() + timeout
        try:
            while fds:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("new workers %s did not listen within %gs; stopping the old ones anyway",
                                sorted(fds.values()), timeout)
                    return
                if signal.sigpending() & _STOPS:
                    return
                try:
                    readable, _, _ = select.select(list(fds), [], [], min(left, 0.1))
                except InterruptedError:
                    continue
                for fd in readable:
                    try:
                        os.read(fd, 1)  # b"1": listening; b"": exited before it could
                    except OSError:
                        pass
                    del fds[fd]
                    os.close(fd)
        finally:
            for fd in fds:
                os.close(fd)

    def start(self) -> None:
        for _ in range(self.workers):
            pid = self.spawn(self.plan)
            self.current.add(pid)
            self.forget_ready(pid)
        log.info("master %d started %d workers", os.getpid(), self.workers)

    def signal_all(self, sig: int, pids: set[int] | None = None) -> None:
        for pid in list(self.current | self.retiring if pids is None else pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def reload(self) -> None:
        try:
            new = compile_plan(self.path)
        except ConfigError as e:
            log.error("reload failed, the old configuration stays in force: %s", e)
            return
        old = set(self.current)
        self.plan = new
        self.current = {self.spawn(new) for _ in range(worker_count(new))}
        # the old workers accept until the new ones listen: a worker opens its resources (a
        # keyval state file, key sets) before it binds, which may take more than a second
        self.wait_listening(self.current)
        self.retiring |= old
        self.signal_all(signal.SIGQUIT, old)
        log.info("configuration reloaded: %d new workers", len(self.current))

    def reap(self) -> bool:
        """Collect exited workers; restart unexpected deaths. False: give up."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return True
            self.retiring.discard(pid)
            self.forget_ready(pid)
            mark_process_dead(pid)  # its live gauges leave the metrics sums
            if pid in self.current:
                self.current.discard(pid)
                if self.stopping:
                    continue
                log.error("worker %d exited unexpectedly (status %d), starting a new one",
                          pid, os.waitstatus_to_exitcode(status))
                now = time.monotonic()
                self.deaths = [t for t in self.deaths if now - t < RESPAWN_WINDOW] + [now]
                if len(self.deaths) > MAX_RESPAWNS:
                    log.critical("workers keep dying; stopping")
                    return False
                pid = self.spawn(self.plan)
                self.current.add(pid)
                self.forget_ready(pid)

    def stop(self, sig: int) -> None:
        self.stopping = True
        self.signal_all(sig)
        deadline = time.monotonic() + max(STOP_TIMEOUT, self.plan.worker_shutdown_timeout + 5)
        while (self.current or self.retiring) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        if self.current or self.retiring:
            self.signal_all(signal.SIGKILL)
            while self.current or self.retiring:
                try:
                    pid, _ = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                self.current.discard(pid)
                self.retiring.discard(pid)
                mark_process_dead(pid)


def run_master(path: str, plan: Plan, workers: int) -> int:
    """Run a master and ``workers`` worker processes until a stop signal.

    Returns:
        0 after a requested stop, 1 when workers kept dying.

    Raises:
        BindError: a listening address cannot be bound.
    """
    setup_error_log(*plan.error_log)
    _check_binds(plan)
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    master = _Master(path, plan, workers)
    if plan.pid:
        with open(plan.pid, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
    status = 0
    try:
        master.start()
        while True:
            sig = signal.sigwait(_SIGNALS)
            if sig == signal.SIGCHLD:
                if not master.reap():
                    master.stop(signal.SIGTERM)
                    status = 1
                    break
            elif sig == signal.SIGHUP:
                master.reload()
            elif sig in (signal.SIGUSR2, signal.SIGWINCH):
                log.warning("signal %s (binary upgrade) is not supported; ignored", signal.Signals(sig).name)
            elif sig == signal.SIGUSR1:
                setup_error_log(*master.plan.error_log)
                master.signal_all(signal.SIGUSR1)
            elif sig == signal.SIGQUIT:
                log.info("graceful stop")
                master.stop(signal.SIGQUIT)
                break
            else:
                log.info("stopping")
                master.stop(signal.SIGTERM)
                break
    finally:
        if plan.pid:
            try:
                os.unlink(plan.pid)
            except OSError:
                pass
    return status


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if the master dies, instead of serving on unsupervised."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the master's own handling must do
        pass
