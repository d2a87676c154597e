"""Remote JWK Sets (``auth_jwt_key_request``), fetched safely.

One :class:`RemoteKeySource` holds the key set of one remote source and keeps it fresh, with
no network I/O on the request path except the very first fetch:

* **single flight**: at most one fetch runs at a time; requests that arrive while no key is
  known yet wait for that one fetch (never start their own);
* **background refresh**: a task refetches at 80% of the key set's lifetime (``ttl``,
  ``auth_jwt_key_cache``; at most once a second), so keys are renewed before they expire;
  after a failed fetch it retries every ``min_interval``;
* **stale if error**: when a refresh fails (the identity provider is down, answers 5xx, sends
  garbage), the keys already held keep serving for up to ``stale`` seconds after their expiry,
  with an error logged on every failed attempt; past that window the source fails
  (:class:`~jwtgate.errors.KeySourceError`, HTTP 500) rather than trust keys forever;
* **unknown kid**: a token naming a ``kid`` that no key has may trigger one refetch in the
  background, at most once per ``min_interval`` and never twice for the same ``kid`` between
  regular refreshes, so invented ``kid`` values cannot make the gateway hammer the identity
  provider; the token itself is refused at once;
* **bounded**: the body is at most :data:`~jwtgate.jose.keys.MAX_JWKS_BYTES` (enforced by the
  fetcher and again by the parser), at most :data:`~jwtgate.jose.keys.MAX_JWKS_KEYS` keys, a fetch
  lasts at most ``timeout`` seconds; failed fetches are retried no faster than ``min_interval``;
* **atomic swap**: a new :class:`~jwtgate.jose.keys.KeySet` is built whole, then assigned in one
  step; listeners (the key pool, whose Verifier then flushes its caches) are told. A body equal
  to the last one changes nothing, so a periodic refresh does not empty the token cache.

Time comes from ``clock.monotonic()``; the decisions (:meth:`RemoteKeySource.next_refresh_delay`,
:meth:`RemoteKeySource.may_fetch`...) are plain methods, tested with a manual clock; asyncio only
drives them. The source is a :class:`~jwtgate.modules.base.Resource`: the running gateway opens
it (the refresher starts) and closes it; compiling a configuration fetches nothing. Across a
reload the last good key set is handed over through the gateway's ``keep`` dict, so a reload
costs no fetch and a key set keeps its age.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import KeySourceError
from .keys import KeySet, hmac_key_warnings, parse_jwk_set

__all__ = ["RemoteKeySource", "DEFAULT_TTL", "DEFAULT_MIN_INTERVAL", "DEFAULT_STALE", "DEFAULT_TIMEOUT"]

log = logging.getLogger("jwtgate.auth_jwt")

#: Lifetime of a fetched key set when ``auth_jwt_key_cache`` is not set, seconds.
DEFAULT_TTL = 300.0
#: Shortest time between two fetches of one source (``auth_jwt_key_refetch_interval``), seconds.
DEFAULT_MIN_INTERVAL = 30.0
#: How long after expiry keys still serve while refreshes fail (``auth_jwt_key_use_stale``), seconds.
DEFAULT_STALE = 3600.0
#: Longest a fetch may take, seconds.
DEFAULT_TIMEOUT = 10.0
#: Refresh when this fraction of the lifetime has passed.
REFRESH_AT = 0.8
#: Scheduled refreshes are never closer together than this, seconds.
MIN_PERIOD = 1.0
# Distinct unknown kids remembered between two regular refreshes.
_KID_MISSES = 1024

def _printable(kid: str) -> str:
    """A ``kid`` as it may appear in the error log: printable ASCII, at most 64 characters
    (a remote key set is not trusted to write log lines)."""
    return "".join(ch if " " < ch < "\x7f" else "?" for ch in kid[:64])


#: Fetches the JWK Set document: returns the body, raises KeySourceError.
Fetch = Callable[[], Awaitable[bytes]]


class RemoteKeySource:
    """The key set of one ``auth_jwt_key_request`` source.

    Args:
        name: how logs name it, e.g. ``auth_jwt_key_request "/_jwks"``.
        fetch: coroutine function returning the JWK Set body (at most MAX_JWKS_BYTES), raising
            :class:`KeySourceError` on any failure.
        ttl: lifetime of a fetched key set, seconds (> 0).
        min_interval: shortest time between two fetch attempts, seconds.
        stale: how long past expiry keys still serve while refreshes fail, seconds.
        timeout: longest one fetch may take, seconds.
        clock: monotonic time source.
        keep_key: name under which the last good key set is handed over across reloads.

    Attributes:
        keys: the current :class:`KeySet`, or ``None`` before the first successful fetch.
        generation: incremented on every key set change.
        fetches: fetch attempts started (successful or not).
        last_error: why the last attempt failed, or ``None`` after a success.
    """

    def __init__(self, name: str, fetch: Fetch, *, ttl: float = DEFAULT_TTL,
                 min_interval: float = DEFAULT_MIN_INTERVAL, stale: float = DEFAULT_STALE,
                 timeout: float = DEFAULT_TIMEOUT, clock: Clock = SYSTEM_CLOCK, keep_key: Any = None) -> None:
        self.name = name
        self._fetch = fetch
        self.ttl = ttl if ttl > 0 else DEFAULT_TTL
        self.min_interval = max(0.1, min_interval)  # never a busy loop
        self.stale = max(0.0, stale)
        self.timeout = timeout
        self._now = clock.monotonic
        self.keep_key = keep_key if keep_key is not None else name
        self.keys: KeySet | None = None
        self.generation = 0
        self.fetches = 0
        #: failed fetch attempts (statistics)
        self.failures = 0
        self.fetched_at: float | None = None
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        self._body: bytes | None = None
        self._listeners: list[Callable[[], None]] = []
        self._kid_misses: OrderedDict[str, int] = OrderedDict()
        self._inflight: asyncio.Task[bool] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._keep: dict[str, Any] | None = None
        self._opened = False
        self._stale_logged = False

    def __repr__(self) -> str:
        n = len(self.keys) if self.keys is not None else 0
        return f"<RemoteKeySource {self.name} keys={n} generation={self.generation} fetches={self.fetches}>"

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every key set change."""
        self._listeners.append(fn)

    # -- decisions (pure functions of the clock) -------------------------------------------

    def expires_at(self) -> float | None:
        return None if self.fetched_at is None else self.fetched_at + self.ttl

    def fresh(self, now: float | None = None) -> bool:
        """Keys are known and not expired."""
        exp = self.expires_at()
        return exp is not None and (self._now() if now is None else now) < exp

    def usable(self, now: float | None = None) -> bool:
        """Keys are known and at most ``stale`` seconds past their expiry."""
        exp = self.expires_at()
        return exp is not None and (self._now() if now is None else now) < exp + self.stale

    def may_fetch(self, now: float | None = None) -> bool:
        """Whether a fetch may start now (none running, ``min_interval`` since the last one)."""
        if self._inflight is not None and not self._inflight.done():
            return False
        if self.last_attempt is None:
            return True
        return (self._now() if now is None else now) - self.last_attempt >= self.min_interval

    def next_refresh_delay(self, now: float | None = None) -> float:
        """Seconds until the background task should fetch again: at 80% of the key set's
        lifetime (never more often than once a second), or ``min_interval`` after a failure."""
        now = self._now() if now is None else now
        if self.last_attempt is None:
            return 0.0
        if self.last_error is not None or self.fetched_at is None:
            return max(0.0, self.last_attempt + self.min_interval - now)  # failing: retry slowly
        return max(0.0, self.fetched_at + max(self.ttl * REFRESH_AT, MIN_PERIOD) - now)

    # -- the request path -------------------------------------------------------------------

    def current(self) -> KeySet:
        """The keys to use now, without waiting.

        Raises:
            KeySourceError: no keys yet, or the stale window has passed.
        """
        keys = self.keys
        if keys is None:
            raise KeySourceError(f"{self.name}: no keys yet ({self.last_error or 'not fetched'})")
        if not self.usable():
            raise KeySourceError(f"{self.name}: keys expired {self.ttl + self.stale:.0f}s after they were "
                                 f"fetched and could not be refreshed ({self.last_error or 'no answer'})")
        return keys

    def needs_wait(self) -> bool:
        """Whether a request must :meth:`ensure` before :meth:`current` (no keys yet)."""
        return self.keys is None

    async def ensure(self) -> KeySet:
        """The keys, waiting for the single in-flight fetch when none are known yet.

        Raises:
            KeySourceError: the source is not open (a dry run), or the fetch failed, or failed
                less than ``min_interval`` ago (then without fetching again).
        """
        if self.keys is not None:
            return self.current()
        if not self._opened:
            raise KeySourceError(f"{self.name}: not loaded (the gateway is not running)")
        task = self._inflight
        if task is None or task.done():
            if not self.may_fetch():
                raise KeySourceError(f"{self.name}: {self.last_error or 'no keys'}")
            task = self._start_fetch()
        await asyncio.shield(task)
        return self.current()

    def unknown_kid(self, kid: str) -> None:
        """A token named ``kid`` and no key has it: maybe refetch, in the background.

        At most one fetch per ``min_interval``; a ``kid`` still unknown after a fetch it
        triggered does not trigger another until the key set changes.
        """
        if not self._opened:
            return
        misses = self._kid_misses
        seen = misses.get(kid)
        if seen is not None and seen < self.fetches:
            return  # already looked for after it was first seen: an invented kid
        if not self.may_fetch():
            return
        misses[kid] = self.fetches
        misses.move_to_end(kid)
        while len(misses) > _KID_MISSES:
            misses.popitem(last=False)
        log.info("%s: token with an unknown kid, refetching the key set", self.name)
        self._start_fetch()

    # -- fetching ---------------------------------------------------------------------------

    def _start_fetch(self) -> asyncio.Task[bool]:
        task = self._inflight
        if task is None or task.done():
            task = self._inflight = asyncio.get_running_loop().create_task(self.refresh_now())
        return task

    async def refresh(self) -> bool:
        """Fetch now unless a fetch is running (then wait for that one); the result of it."""
        task = self._inflight
        if task is None or task.done():
            task = self._start_fetch()
        return await asyncio.shield(task)

    async def refresh_now(self) -> bool:
        """One fetch attempt: returns whether it succeeded. Never raises (but cancellation)."""
        self.fetches += 1
        self.last_attempt = self._now()
        try:
            body = await asyncio.wait_for(self._fetch(), self.timeout)
            changed = self._accept(body)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            self._failed(f"no answer within {self.timeout:g}s")
            return False
        except KeySourceError as err:
            self._failed(str(err))
            return False
        except Exception as err:  # never let a refresh crash the refresher
            self._failed(f"unexpected {type(err).__name__}")
            return False
        self.last_error = None
        self._stale_logged = False
        if changed:
            self._announce()
        return True

    def _accept(self, body: bytes) -> bool:
        """Take a fetched body; returns whether the key set changed.

        Raises:
            KeySourceError: the body is not a JWK Set with at least one usable key.
        """
        now = self._now()
        if self._body is not None and body == self._body and self.keys is not None:
            self.fetched_at = now
            self._save()
            return False
        keys = parse_jwk_set(body, "the answer")  # errors are logged under self.name
        if not keys.entries:
            raise KeySourceError("the key set holds no usable key")
        for warning in hmac_key_warnings(keys):
            log.warning("%s: %s", self.name, warning)
        self.keys = keys  # the swap: one assignment
        self._body = body
        self.fetched_at = now
        self.generation += 1
        self._kid_misses.clear()
        self._save()
        log.info("%s: key set loaded, %d keys (kids: %s)", self.name, len(keys),
                 ", ".join(sorted(_printable(k) for k in keys.kids)[:20]) or "none")
        return True

    def _failed(self, reason: str) -> None:
        self.last_error = reason
        self.failures += 1
        if self.keys is None:
            log.error("%s: cannot load keys: %s", self.name, reason)
        elif self.fresh():
            log.error("%s: refresh failed: %s; the current keys stay in use", self.name, reason)
        elif self.usable():
            left = (self.expires_at() or 0.0) + self.stale - self._now()
            log.error("%s: refresh failed: %s; serving expired keys for at most %.0fs more",
                      self.name, reason, left)
        elif not self._stale_logged:
            self._stale_logged = True
            log.error("%s: refresh failed: %s; the keys are past their stale window and no longer "
                      "used (requests get 500)", self.name, reason)

    def _announce(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:
                log.exception("%s: key set listener failed", self.name)

    # -- across reloads ---------------------------------------------------------------------

    def _save(self) -> None:
        if self._keep is not None and self.keys is not None and self.fetched_at is not None:
            self._keep.setdefault("auth_jwt_key_request", {})[self.keep_key] = (
                self._body, self.fetched_at, self.keys)

    def _restore(self) -> None:
        saved = (self._keep or {}).get("auth_jwt_key_request", {}).get(self.keep_key)
        if saved is None:
            return
        body, fetched_at, keys = saved
        if self._now() >= fetched_at + self.ttl + self.stale:
            return
        self._body, self.fetched_at, self.keys = body, fetched_at, keys
        self.last_attempt = fetched_at
        self.generation += 1
        self._announce()

    # -- Resource protocol (driven by the running gateway) ----------------------------------

    async def open(self, keep: dict[str, Any]) -> None:
        """Start the background refresher (the first fetch starts at once unless a reload
        handed over keys)."""
        self._keep = keep
        self._restore()
        self._opened = True
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            delay = self.next_refresh_delay()
            if delay > 0:
                await asyncio.sleep(delay)
            # A scheduled refresh (the operator's auth_jwt_key_cache) is not held back by
            # min_interval, which bounds what clients can trigger; one runs at a time.
            await self.refresh()

    def flush(self) -> None:
        """A reload replaces this configuration: stop refreshing (the new configuration's source
        took the keys over); requests still in flight keep the keys they have."""
        task = self._loop_task
        if task is not None and not task.done():
            task.cancel()

    def reopen(self) -> None:
        """No files to reopen."""

    async def close(self) -> None:
        """Stop the refresher and any fetch in flight."""
        self._opened = False
        for task in (self._loop_task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._loop_task = self._inflight = None
