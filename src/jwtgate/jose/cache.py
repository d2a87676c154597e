"""Bounded LRU caches in front of signature verification.

:class:`VerifiedTokenCache` maps the exact token string to its :class:`VerifiedToken`, so a token
is verified once and then only has its ``exp``/``nbf`` re-checked (by the
:class:`~jwtgate.jose.verify.Verifier`, on every hit). A cache belongs to one Verifier, which
belongs to one KeySet: a key change builds a new Verifier, hence an empty cache.

:class:`NegativeCache` maps a token that failed signature verification to its error code, so a
flood of one forged token costs one verification.

Both are plain ``OrderedDict`` LRUs for a single event loop (no locking).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .verify import VerifiedToken

__all__ = ["VerifiedTokenCache", "NegativeCache"]


class VerifiedTokenCache:
    """LRU of token string -> :class:`VerifiedToken`, at most ``maxsize`` entries.

    Args:
        maxsize: entry bound; ``0`` (or less) disables the cache: ``get`` always misses.

    Attributes:
        hits: number of ``get`` calls that found an entry.
        misses: number of ``get`` calls that did not.
    """

    __slots__ = ("maxsize", "hits", "misses", "_data")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(0, maxsize)
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[str, VerifiedToken] = OrderedDict()

    def get(self, token: str) -> VerifiedToken | None:
        """The cached result for exactly ``token``, marking it recently used; ``None`` if absent.

        Time validity is *not* checked here; the caller re-checks ``exp``/``nbf``.
        """
        vt = self._data.get(token)
        if vt is None:
            self.misses += 1
            return None
        self._data.move_to_end(token)
        self.hits += 1
        return vt

    def put(self, token: str, vt: VerifiedToken) -> None:
        """Store ``vt`` for ``token``, evicting the least recently used entry beyond ``maxsize``."""
        if self.maxsize <= 0:
            return
        data = self._data
        data[token] = vt
        data.move_to_end(token)
        if len(data) > self.maxsize:
            data.popitem(last=False)

    def discard(self, token: str) -> None:
        """Forget ``token`` if cached (expired, revoked)."""
        self._data.pop(token, None)

    def clear(self) -> None:
        """Forget every entry (counters are kept)."""
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, token: object) -> bool:
        return token in self._data


class NegativeCache:
    """Small LRU of token string -> :class:`~jwtgate.errors.TokenError` ``code``.

    Only for failures that cost a signature verification (``bad_signature``, ``no_key``).

    Args:
        maxsize: entry bound; ``0`` (or less) disables it.
    """

    __slots__ = ("maxsize", "hits", "_data")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(0, maxsize)
        self.hits = 0
        self._data: OrderedDict[str, str] = OrderedDict()

    def get(self, token: str) -> str | None:
        """The error code recorded for ``token``, or ``None``."""
        code = self._data.get(token)
        if code is not None:
            self._data.move_to_end(token)
            self.hits += 1
        return code

    def put(self, token: str, code: str) -> None:
        """Record that ``token`` was rejected with ``code``."""
        if self.maxsize <= 0:
            return
        data = self._data
        data[token] = code
        data.move_to_end(token)
        if len(data) > self.maxsize:
            data.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
