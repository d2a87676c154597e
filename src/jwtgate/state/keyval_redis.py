"""Keyval zones with ``sync``: kept in the ``state_redis`` server, so every instance sees a write.

Redis layout, per zone (``LEN`` is the zone name's byte length, so names never collide):

``PREFIX kv:LEN:NAME``   a hash, field = key, value = JSON ``[value, expire_epoch_ms]`` (0: never)
``PREFIX kvv:LEN:NAME``  the zone's version, incremented by every write
``PREFIX kvc:LEN:NAME``  the pub/sub channel a write is announced on

A write through the API (:meth:`KeyvalSync.write`) goes to Redis first (one ``MULTI``: the
changed fields, the version, the announcement), then to the instance's own copy
(:class:`~jwtgate.state.keyval.ZoneStore`), so the writing instance answers only once both hold
it. Every process of every instance runs :meth:`KeyvalSync.run`: it listens on the channels and,
on an announcement or at the latest every :data:`INTERVAL` seconds, compares each zone's version
with the one it last applied and, when it differs, reads the hash and replaces its instance's
copy. Requests never wait for Redis: lookups read the local copy. While Redis is unreachable,
the last copy keeps serving, writes through the API are refused (503), the error is logged at
most once per :data:`LOG_INTERVAL`, and synchronisation resumes by itself.

Expiry is by absolute wall-clock time, so instances agree on it without a clock in Redis; expired
fields are removed from the hash by whichever process notices them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from jwtgate.errors import StateError
from jwtgate.state.keyval import Change, Entry, KeyvalError, ZoneStore, apply_change, encode_storable

__all__ = ["KeyvalSync", "INTERVAL", "LOG_INTERVAL"]

log = logging.getLogger("jwtgate.keyval")

#: Longest time, seconds, between two checks of a zone's version.
INTERVAL = 1.0
#: Seconds between two error-log lines about the same unreachable server.
LOG_INTERVAL = 10.0


def _encode(entry: Entry) -> bytes:
    return json.dumps([entry[0], entry[1]], ensure_ascii=False).encode("utf-8", "surrogatepass")


def _decode(raw: bytes) -> Entry | None:
    try:
        value, expire = json.loads(raw.decode("utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(value, str) or not isinstance(expire, int) or isinstance(expire, bool):
        return None
    return value, max(0, expire)


class KeyvalSync:
    """The Redis side of a configuration's ``sync`` zones, in one process.

    Args:
        conn: the ``state_redis`` connection (:class:`~jwtgate.state.redis.RedisConnection`).
        stores: the zones' stores, by zone name.
    """

    def __init__(self, conn: Any, stores: dict[str, ZoneStore]) -> None:
        self.conn = conn
        self.stores = stores
        self._keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        for name in stores:
            raw = name.encode("utf-8", "surrogatepass")
            head = b"%d:%s" % (len(raw), raw)
            p = conn.prefix
            self._keys[name] = (p + b"kv:" + head, p + b"kvv:" + head, p + b"kvc:" + head)
        #: the version of each zone whose content this process last applied
        self.applied: dict[str, int | None] = {name: None for name in stores}
        self._task: asyncio.Task[None] | None = None
        self._next_log = 0.0
        self._suppressed = 0
        self._down = False

    def __repr__(self) -> str:
        return f"<KeyvalSync {sorted(self.stores)} {self.conn.display_url}>"

    # -- logging -------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> StateError:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError) and not str(exc):
            reason = f"no answer within {self.conn.timeout * 1000:g}ms"
        err = StateError(f"Redis {self.conn.display_url} is unavailable ({type(exc).__name__}: {reason})")
        now = asyncio.get_running_loop().time()
        self._down = True
        if now >= self._next_log:
            more = f", {self._suppressed} more failures in the last {LOG_INTERVAL:g}s" if self._suppressed else ""
            log.error("%s while %s; keyval zones keep their last copy%s", err.reason, what, more)
            self._next_log = now + LOG_INTERVAL
            self._suppressed = 0
        else:
            self._suppressed += 1
        return err

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.warning("Redis %s is available again; keyval zones are synchronised", self.conn.display_url)

    # -- writes --------------------------------------------------------------------------

    async def write(self, name: str, change: Change) -> dict[str, Entry]:
        """Apply ``change`` to zone ``name`` in Redis, then in this instance's copy.

        Returns:
            The zone's new content.

        Raises:
            KeyvalError: the change is refused (nothing written).
            StateError: Redis is unavailable (nothing written).
        """
        store = self.stores[name]
        current = store.items()
        now = store.clock()
        new = apply_change(current, change, size=store.size, timeout_ms=store.timeout_ms, now=now)
        if change[0] != "clear":
            encode_storable(new)  # refused before Redis has it, as the local file would refuse it
        hkey, vkey, channel = self._keys[name]
        try:
            async with asyncio.timeout(self.conn.timeout):
                pipe = self.conn.client().pipeline(transaction=True)
                if change[0] == "clear":
                    pipe.delete(hkey)
                else:
                    changed = {k: _encode(e) for k, e in new.items() if current.get(k) != e}
                    removed = [k for k in current if k not in new]
                    if changed:
                        pipe.hset(hkey, mapping=changed)
                    if removed:
                        pipe.hdel(hkey, *removed)
                pipe.incr(vkey)
                pipe.publish(channel, b"1")
                reply = await pipe.execute()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # redis-py errors, OSError, TimeoutError
            raise self._failed(f'writing keyval zone "{name}"', e) from None
        self._recovered()
        version = int(reply[-2])
        try:
            result = store.change(change, version)
        except KeyvalError:
            result = store.items()  # a reconciliation already brought this write in
        if self.applied.get(name) == version - 1:
            self.applied[name] = version  # nobody else wrote in between: our copy is current
        return result

    # -- reconciliation ------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Bring every zone whose Redis version changed up to date (seeding Redis from a
        zone's local copy, e.g. its ``state=`` file, when Redis has never held it).

        Raises:
            StateError: Redis is unavailable.
        """
        client = self.conn.client()
        names = list(self.stores)
        try:
            async with asyncio.timeout(self.conn.timeout):
                versions = await client.mget([self._keys[n][1] for n in names])
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise self._failed("reading keyval versions", e) from None
        for name, raw in zip(names, versions, strict=True):
            version = int(raw) if raw is not None else None
            if version is not None and version == self.applied.get(name):
                continue
            await self._pull(name, version)
        self._recovered()

    async def _pull(self, name: str, version: int | None) -> None:
        store = self.stores[name]
        hkey, vkey, _ = self._keys[name]
        client = self.conn.client()
        try:
            async with asyncio.timeout(self.conn.timeout):
                if version is None:
                    local = store.items()
                    pipe = client.pipeline(transaction=True)
                    if local:
                        pipe.hset(hkey, mapping={k: _encode(e) for k, e in local.items()})
                    pipe.incr(vkey)
                    reply = await pipe.execute()
                    # Redis counts anew: the copy's recorded version restarts too
                    store.change(("replace", local), int(reply[-1]), reset=True)
                    # another process may have seeded it at the same time: read back next round
                    self.applied[name] = None if int(reply[-1]) != 1 else 1
                    return
                pipe = client.pipeline(transaction=True)
                pipe.hgetall(hkey)
                pipe.get(vkey)
                raw, ver = await pipe.execute()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise self._failed(f'reading keyval zone "{name}"', e) from None
        now = store.clock()
        entries: dict[str, Entry] = {}
        expired: list[bytes] = []
        for field, value in raw.items():
            entry = _decode(value)
            if entry is None or (entry[1] and entry[1] <= now):
                expired.append(field)
                continue
            try:
                entries[field.decode("utf-8")] = entry
            except UnicodeDecodeError:
                expired.append(field)
        version = int(ver) if ver is not None else None
        # a version lower than the one this process saw: Redis lost the zone and counts anew
        reset = version is not None and (self.applied.get(name) or 0) > version
        if entries != store.items() or reset:
            try:
                store.change(("replace", entries), version, reset=reset)
            except OSError as e:
                log.error('keyval zone "%s": cannot write %s: %s', name, store.data_path, e)
                return
        self.applied[name] = int(ver) if ver is not None else None
        if expired:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.conn.timeout):
                    await client.hdel(hkey, *expired)

    async def run(self) -> None:
        """Keep the zones in sync until cancelled: pub/sub announcements and a poll every
        :data:`INTERVAL` seconds; never raises (errors are logged and retried)."""
        from redis.asyncio import Redis

        channels = [keys[2] for keys in self._keys.values()]
        sub_client: Any = None
        pubsub: Any = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                started = loop.time()
                try:
                    if pubsub is None:
                        sub_client = Redis.from_url(self.conn.url, socket_connect_timeout=self.conn.timeout,
                                                    socket_timeout=None, client_name="jwtgate-keyval")
                        pubsub = sub_client.pubsub(ignore_subscribe_messages=True)
                        async with asyncio.timeout(self.conn.timeout):
                            await pubsub.subscribe(*channels)
                    await self.reconcile()
                    # wait for an announcement, at most INTERVAL; drain what queued up
                    message = await pubsub.get_message(timeout=INTERVAL)
                    while message is not None:
                        message = await pubsub.get_message(timeout=0)
                except asyncio.CancelledError:
                    raise
                except StateError:
                    pubsub, sub_client = await _drop(pubsub, sub_client)
                    await asyncio.sleep(max(0.0, INTERVAL - (loop.time() - started)))
                except Exception as e:
                    self._failed("listening for keyval changes", e)
                    pubsub, sub_client = await _drop(pubsub, sub_client)
                    await asyncio.sleep(max(0.0, INTERVAL - (loop.time() - started)))
        finally:
            await _drop(pubsub, sub_client)

    def start(self) -> None:
        """Start :meth:`run` as a task of the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="keyval-sync")

    async def stop(self) -> None:
        """Cancel the task and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _drop(pubsub: Any, client: Any) -> tuple[None, None]:
    with contextlib.suppress(Exception):
        if pubsub is not None:
            await pubsub.aclose()
    with contextlib.suppress(Exception):
        if client is not None:
            await client.aclose()
    return None, None
