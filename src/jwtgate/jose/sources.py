"""All key sources of one ``auth_jwt`` configuration, pooled behind one Verifier.

NGINX Plus pools the keys of every ``auth_jwt_key_file`` and ``auth_jwt_key_request`` of a
location. Here:

* static key files (no variable in the path) are loaded once, when the configuration is
  compiled (a missing or invalid one fails ``jwtgate check``);
* key files whose path holds variables are read when a request needs them and kept for
  ``auth_jwt_key_cache`` seconds (:class:`FileKeyCache`); a file that cannot be loaded then is
  a :class:`~jwtgate.errors.KeySourceError` (HTTP 500);
* remote key sets (:class:`~jwtgate.jose.remote.RemoteKeySource`) are refreshed in the
  background; when one changes, the pool's Verifier gets the new merged set (and flushes its
  verified-token cache).

:class:`KeyPool` gives the request path a Verifier without waiting in the common case: the
handler asks :meth:`KeyPool.waiting` (the remote sources with no key yet, usually none), awaits
their single-flight first fetch, then takes :meth:`KeyPool.verifier_for`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import KeySourceError
from .keys import KeySet, parse_jwk_set, read_key_file
from .remote import RemoteKeySource
from .verify import Verifier

__all__ = ["FileKeyCache", "KeyPool"]

#: Distinct per-request key files (resolved paths) kept at once.
MAX_FILES = 64
#: Distinct per-request key-set combinations with their own Verifier (and token cache).
MAX_DYNAMIC_VERIFIERS = 32


class FileKeyCache:
    """Key files read at request time (``auth_jwt_key_file`` with variables), by resolved path.

    Args:
        ttl: seconds a loaded file is used without being read again (``auth_jwt_key_cache``);
            0 reads it on every use (NGINX's default), keeping the parsed set while the bytes
            are unchanged.
        clock: monotonic time source.
        max_entries: most paths remembered (least recently used first out).
    """

    def __init__(self, ttl: float = 0.0, clock: Clock = SYSTEM_CLOCK, max_entries: int = MAX_FILES) -> None:
        self.ttl = ttl
        self._now = clock.monotonic
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes, KeySet]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> KeySet:
        """The key set in ``path``.

        Raises:
            KeySourceError: the file cannot be read, is too large, invalid or has no usable key.
        """
        now = self._now()
        entries = self._entries
        hit = entries.get(path)
        if hit is not None and self.ttl > 0 and now - hit[0] < self.ttl:
            entries.move_to_end(path)
            return hit[2]
        data = read_key_file(path)
        if hit is not None and hit[1] == data:
            keys = hit[2]  # unchanged: the same object, so its Verifier (and cache) stays
        else:
            keys = parse_jwk_set(data, path)
            if not keys.entries:
                raise KeySourceError(f"no usable keys in {path}")
        entries[path] = (now, data, keys)
        entries.move_to_end(path)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        return keys


class KeyPool:
    """Static key sets, per-request key files and remote key sets of one configuration.

    Args:
        static: key sets loaded at configuration time, in configuration order.
        remotes: remote sources, in configuration order.
        make_verifier: builds a Verifier over a key set (type, leeway, limits, cache size and
            the unknown-kid hook are decided by the caller); called with ``dynamic=True`` for
            the per-request key-file combinations (which get smaller caches).
        files: the cache of per-request key files, when some ``auth_jwt_key_file`` has variables.
    """

    def __init__(self, static: Sequence[KeySet], remotes: Sequence[RemoteKeySource],
                 make_verifier: Callable[[KeySet, bool], Verifier], files: FileKeyCache | None = None) -> None:
        self.static = tuple(static)
        self.remotes = tuple(remotes)
        self.files = files
        self._make = make_verifier
        self._dynamic: OrderedDict[tuple[int, ...], tuple[tuple[KeySet, ...], Verifier]] = OrderedDict()
        self.verifier = self._new_verifier(self._merged(()), False)
        for remote in self.remotes:
            remote.add_listener(self._remote_changed)

    def __repr__(self) -> str:
        return (f"<KeyPool static={len(self.static)} remotes={len(self.remotes)} "
                f"files={'yes' if self.files is not None else 'no'}>")

    def _new_verifier(self, keys: KeySet, per_request: bool) -> Verifier:
        verifier = self._make(keys, per_request)
        if self.remotes:
            verifier.on_unknown_kid = self.unknown_kid  # a remote source may learn the kid
        return verifier

    def _merged(self, extra: Sequence[KeySet]) -> KeySet:
        sets = [*self.static, *(r.keys for r in self.remotes if r.keys is not None), *extra]
        if len(sets) == 1:
            return sets[0]
        return KeySet.merge(sets)

    def _remote_changed(self) -> None:
        self.verifier.set_keys(self._merged(()))  # flushes the verified-token cache
        self._dynamic.clear()

    def unknown_kid(self, kid: str) -> None:
        """The Verifier's hook: let every remote source consider a refetch."""
        for remote in self.remotes:
            remote.unknown_kid(kid)

    def waiting(self) -> list[RemoteKeySource]:
        """Remote sources a request must await (:meth:`RemoteKeySource.ensure`) first: those
        with no key yet. Usually empty."""
        return [r for r in self.remotes if r.needs_wait()] if self.remotes else []

    def verifier_for(self, paths: Sequence[str] = ()) -> Verifier:
        """The Verifier for a request whose per-request key files resolved to ``paths``.

        Raises:
            KeySourceError: a remote source is past its stale window (or has no key), or a
                key file cannot be loaded.
        """
        for remote in self.remotes:
            remote.current()  # raises when it may no longer be used
        if not paths or self.files is None:
            return self.verifier
        sets = tuple(self.files.get(p) for p in paths)
        key = tuple(id(s) for s in sets)
        hit = self._dynamic.get(key)
        # The sets themselves are kept with the Verifier, so an id is never reused meanwhile.
        if hit is not None and all(a is b for a, b in zip(hit[0], sets)):
            self._dynamic.move_to_end(key)
            return hit[1]
        verifier = self._new_verifier(self._merged(sets), True)
        self._dynamic[key] = (sets, verifier)
        while len(self._dynamic) > MAX_DYNAMIC_VERIFIERS:
            self._dynamic.popitem(last=False)
        return verifier
