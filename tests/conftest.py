"""Fixtures shared by every test folder: a real ``redis-server`` (see ``tests/redis_server.py``).

- ``redis_server``: one server for the whole session, started on first use.
- ``redis_url``: that server emptied (``FLUSHALL``), its URL; for tests that only need a Redis.
- ``redis_factory``: ``redis_factory(password=..., tls=...) -> RedisServer`` starts private
  servers (to kill and restart them, or with a password or TLS); all stopped at teardown.

When ``redis-server`` is missing, these fixtures fail the test with the install command.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from redis_server import RedisServer, make_tls_files  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis_factory(tmp_path):
    started: list[RedisServer] = []

    def start(password: str | None = None, tls: bool = False) -> RedisServer:
        n = len(started)
        tls_files = make_tls_files(tmp_path / f"redis-tls{n}") if tls else None
        server = RedisServer(tmp_path / f"redis{n}", password=password, tls=tls_files).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
