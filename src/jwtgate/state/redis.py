"""Shared state in Redis: the connection a running gateway owns, and the ``limit_req`` store.

:class:`RedisConnection` is the one Redis client of a process for one configuration
(``state_redis``): created lazily inside the event loop, closed when the configuration
retires or the gateway stops. Every call is bounded by its ``timeout``; a failure marks the
server unavailable for :data:`RETRY_INTERVAL` (calls fail at once meanwhile, so an outage
never adds latency to every request), is logged at most once per :data:`LOG_INTERVAL`, and
the next call after that interval probes the server again, so service resumes by itself.

:class:`RedisLimitStore` runs one Lua script per request (``lua/limit_req_acquire.lua``):
every bucket is looked up and accounted atomically, with the Redis server's clock, so N
workers on M machines enforce one limit with no clock skew between them.

Keys are ``PREFIX lr:LEN:ZONE:KEY`` for a bucket and ``PREFIX lri:LEN:ZONE`` for a zone's LRU
index, where ``LEN`` is the zone name's length in bytes: two zones can never share a key,
whatever bytes the request keys hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from jwtgate.errors import StateError
from jwtgate.state.store import Bucket, Outcome

__all__ = ["RedisConnection", "RedisLimitStore", "redact_url", "LOG_INTERVAL", "RETRY_INTERVAL"]

log = logging.getLogger("jwtgate.state")

#: Seconds between two error-log lines about the same unavailable server.
LOG_INTERVAL = 10.0
#: Seconds calls fail at once after a failure, before the server is tried again.
RETRY_INTERVAL = 1.0
#: Most connections one process opens to the server.
MAX_CONNECTIONS = 64

_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and errors)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostport}{slash}{tail}"


def check_url(url: str) -> str | None:
    """An error message for a URL ``redis.asyncio`` cannot use, or ``None`` when it is fine."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        return f"invalid Redis URL \"{redact_url(url)}\": {e}"
    if parts.scheme not in _SCHEMES:
        return f"invalid Redis URL \"{redact_url(url)}\": the scheme must be redis://, rediss:// or unix://"
    if parts.scheme != "unix" and not parts.hostname:
        return f"invalid Redis URL \"{redact_url(url)}\": no host"
    return None


class RedisConnection:
    """The Redis client of one running configuration (a plan resource).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS (query
            arguments such as ``ssl_ca_certs=/path`` go to redis-py), or ``unix:///path``.
        timeout: seconds any one call may take, connecting included.
        fail_open: whether limits let requests through (``True``) or reject them while the
            server is unavailable.
        prefix: prepended to every key, so deployments can share a server.
    """

    def __init__(self, url: str, timeout: float = 0.2, fail_open: bool = True, prefix: str = "jwtgate:") -> None:
        self.url = url
        self.display_url = redact_url(url)
        self.timeout = timeout
        self.fail_open = fail_open
        self.prefix = prefix.encode("utf-8")
        self._client: Any = None
        self._down_until = 0.0
        self._next_log = 0.0
        self._suppressed = 0
        self._down = False
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "down" if self._down else "up" if self._client else "idle"
        return (f"<RedisConnection {self.display_url} timeout={self.timeout}s "
                f"fail={'open' if self.fail_open else 'closed'} {state}>")

    # -- the client ----------------------------------------------------------------------

    def client(self) -> Any:
        """The ``redis.asyncio.Redis`` client, created on first use (inside the event loop).

        Raises:
            StateError: after :meth:`close`.
        """
        if self._client is None:
            if self._closed:
                raise StateError(f"Redis {self.display_url}: the connection is closed")
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=MAX_CONNECTIONS, timeout=self.timeout,
                socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0), client_name="jwtgate")
            self._client = Redis(connection_pool=pool)
        return self._client

    async def call(self, script: Any, keys: Sequence[bytes], args: Sequence[bytes | str]) -> Any:
        """Run a registered script within ``timeout``.

        Raises:
            StateError: the server is unavailable, failed or answered too late.
        """
        loop = asyncio.get_running_loop()
        if self._down and loop.time() < self._down_until:
            raise StateError(f"Redis {self.display_url} is unavailable")
        client = self.client()
        try:
            async with asyncio.timeout(self.timeout):
                reply = await script(keys=keys, args=args, client=client)
        except Exception as e:  # redis-py's errors, OSError, TimeoutError; a bad URL argument
            raise self._failed(e, loop.time()) from None
        if self._down:
            self._down = False
            log.warning("Redis %s is available again", self.display_url)
        return reply

    def _failed(self, exc: BaseException, now: float) -> StateError:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError) and not str(exc):
            reason = f"no answer within {self.timeout * 1000:g}ms"
        err = StateError(f"Redis {self.display_url} is unavailable ({type(exc).__name__}: {reason})")
        self._down = True
        self._down_until = now + RETRY_INTERVAL
        if now >= self._next_log:
            more = f", {self._suppressed} more failures in the last {LOG_INTERVAL:g}s" if self._suppressed else ""
            log.error("%s; limits in Redis fail %s%s", err.reason, "open" if self.fail_open else "closed", more)
            self._next_log = now + LOG_INTERVAL
            self._suppressed = 0
        else:
            self._suppressed += 1
        return err

    # -- the plan-resource protocol (jwtgate.modules.base.Resource) ---------------------

    async def open(self, keep: dict[str, Any]) -> None:
        """Nothing to do: the client connects on first use, so start never waits for Redis."""

    def flush(self) -> None:
        """Nothing buffered."""

    def reopen(self) -> None:
        """No files."""

    async def close(self) -> None:
        """Close the client and its connections."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
                await client.connection_pool.disconnect()
            except Exception as e:  # a dead server must not stop a reload or a shutdown
                log.info("closing Redis %s: %s", self.display_url, e)


_ACQUIRE_LUA = (files("jwtgate.state") / "lua" / "limit_req_acquire.lua").read_text(encoding="utf-8")


class RedisLimitStore:
    """``limit_req`` buckets in Redis, through a :class:`RedisConnection`."""

    kind = "redis"

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self._scripts: dict[int, Any] = {}
        # per bucket, computed once: (bucket key prefix, index key, rate, burst, capacity)
        self._prepared: dict[Bucket, tuple[bytes, bytes, bytes, bytes, bytes]] = {}

    def __repr__(self) -> str:
        return f"<RedisLimitStore {self.conn.display_url}>"

    def prepare(self, bucket: Bucket) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """The keys and arguments of ``bucket`` that do not depend on the request."""
        prepared = self._prepared.get(bucket)
        if prepared is None:
            zone = bucket.zone.encode("utf-8")
            head = b"%d:%s" % (len(zone), zone)
            prepared = (self.conn.prefix + b"lr:" + head + b":", self.conn.prefix + b"lri:" + head,
                        b"%d" % bucket.rate, b"%d" % bucket.burst, b"%d" % bucket.capacity)
            self._prepared[bucket] = prepared
        return prepared

    def bucket_key(self, bucket: Bucket, key: str) -> bytes:
        """The Redis key holding ``key``'s state in ``bucket``'s zone."""
        return self.prepare(bucket)[0] + key.encode("utf-8", "surrogateescape")

    def _script(self) -> Any:
        client = self.conn.client()
        script = self._scripts.get(id(client))
        if script is None:
            self._scripts.clear()
            script = self._scripts[id(client)] = client.register_script(_ACQUIRE_LUA)
        return script

    async def acquire(self, buckets: Sequence[Bucket], keys: Sequence[str], now: int | None = None) -> Outcome:
        """See :meth:`jwtgate.state.store.LimitStore.acquire`; uses the server's ``TIME``.

        Raises:
            StateError: Redis is unavailable, failed or too slow.
        """
        rkeys: list[bytes] = []
        args: list[bytes | str] = ["" if now is None else str(now)]
        for bucket, key in zip(buckets, keys, strict=True):
            prefix, index, rate, burst, capacity = self.prepare(bucket)
            member = key.encode("utf-8", "surrogateescape")
            rkeys += (prefix + member, index)
            args += (rate, burst, capacity, member)
        reply = await self.conn.call(self._script(), rkeys, args)
        return Outcome(int(reply[0]) - 1, tuple(int(e) for e in reply[1:]))
