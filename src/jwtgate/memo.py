"""Bounded memos for the request path: results remembered by key, with a bound on entries
and on key size, so that what clients send can never make a worker hold much memory.

Used for what repeats request after request: location lookups by URI, ``$http_*`` keys by
field name, valid Hosts, split request-targets, server selectors by listening address. The
memos stay plain ``dict`` objects (read with ``get``, ``in``, ``[]``): CPython 3.11
specialises those reads for exact dicts only, so a ``dict`` subclass would be slower.
"""

from __future__ import annotations

from typing import Any

__all__ = ["remember"]


def remember(memo: dict[Any, Any], key: Any, value: Any, max_entries: int, max_key: int | None = None) -> None:
    """Store ``value`` under ``key`` in ``memo`` within its bounds.

    Args:
        memo: the memo (a plain ``dict``).
        max_entries: entries held at most; when full, the memo is cleared first (a flood of
            unique keys costs misses, not memory, and the usual keys come back at once).
        max_key: longest key stored (``len()``: bytes or characters); a longer key is not
            stored. ``None`` for keys of bounded size (tuples).
    """
    if max_key is not None and len(key) > max_key:
        return
    if len(memo) >= max_entries:
        memo.clear()
    memo[key] = value
