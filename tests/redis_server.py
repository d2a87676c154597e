"""A real ``redis-server`` for the tests: started on a free port in a temporary directory,
stopped by its PID.

Used by the fixtures in ``tests/conftest.py`` (unit, contract and end-to-end tests alike).
``redis-server`` must be installed (``scripts/setup`` installs it); when it is missing the
tests that need it fail with a message saying so, they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

START_DEADLINE = 10.0

MISSING = ("redis-server is not installed (the tests start their own on a free port); "
           "install it with `apt-get install redis-server`, or run `scripts/setup`, which does")


def find_redis_server() -> str:
    """The path of ``redis-server``; fails the calling test when there is none."""
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if path is None:
        pytest.fail(MISSING, pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            if password:
                s.sendall(f"AUTH {password}\r\n".encode())
                s.recv(64)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process: no persistence, 127.0.0.1 only.

    Args:
        directory: its working directory (logs go to ``redis.log`` there).
        port: the port; a free one when ``None``. Kept across :meth:`restart`.
        password: ``requirepass``, or ``None``.
        tls: ``(cert, key, ca)`` files to serve TLS only (``--tls-port``), or ``None``.
    """

    def __init__(self, directory: Path, port: int | None = None, password: str | None = None,
                 tls: tuple[str, str, str] | None = None) -> None:
        self.binary = find_redis_server()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        return f"<RedisServer 127.0.0.1:{self.port} pid={self.proc.pid if self.proc else None}>"

    def start(self) -> RedisServer:
        args = [self.binary, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"),
                "--protected-mode", "no"]
        if self.tls:
            cert, key, ca = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                     "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log")
                pytest.fail(f"redis-server exited with {self.proc.returncode} on port {self.port}:\n"
                            f"{log.read_text() if log.exists() else ''}", pytrace=False)
            if self.tls and self._port_open() or not self.tls and _ping(self.port, self.password):
                return self
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not answer PING on port {self.port} within {START_DEADLINE}s",
                            pytrace=False)
            time.sleep(0.01)

    def _port_open(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server by its PID (SIGKILL after 5 s) and wait until its port is free."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        self.stop(signal.SIGKILL)

    def restart(self) -> RedisServer:
        """Start again on the same port (with no data: there is no persistence)."""
        self.stop()
        return self.start()

    def client(self):
        """A synchronous ``redis.Redis`` client (for test assertions)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def flush(self) -> None:
        with self.client() as c:
            c.flushall()


def make_tls_files(directory: Path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1: ``(cert, key, ca)`` PEM file paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwtgate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "server.crt", directory / "server.key", directory / "ca.crt"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return str(paths[0]), str(paths[1]), str(paths[2])
