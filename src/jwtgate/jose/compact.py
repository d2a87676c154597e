"""Compact serialization pieces shared by JWS and JWE: strict base64url segments and bounded
JSON objects (RFC 7515 §2, §7.1; RFC 7516 §7.1; RFC 8259).

Every function takes hostile input and raises :class:`~jwtgate.errors.TokenError` (code
``malformed``) for anything it does not accept; no other exception leaves it.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from ..errors import TokenError

__all__ = ["MAX_JSON_DEPTH", "MAX_HEADER_CHARS", "b64url_decode", "decode_object"]

#: Deepest JSON nesting accepted in a header or payload (top-level object is depth 1).
MAX_JSON_DEPTH = 32
#: Longest JOSE header segment accepted, in base64url characters (about 6 KiB of JSON).
MAX_HEADER_CHARS = 8192

# Last character allowed for a segment of length % 4 == 2 / 3: the unused bits must be zero.
_CANONICAL_TAIL = {2: "AQgw", 3: "AEIMQUYcgkosw048"}


def b64url_decode(segment: str) -> bytes:
    """Decode a segment already known to be in the base64url alphabet (RFC 7515 §2): no
    padding, canonical trailing bits."""
    rem = len(segment) & 3
    if rem:
        if rem == 1 or segment[-1] not in _CANONICAL_TAIL[rem]:
            raise TokenError("malformed", "invalid base64url segment")
        segment += "=="[: 4 - rem]
    return base64.urlsafe_b64decode(segment)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # RFC 7515 §5.2 step 4 / RFC 7519 §4: we choose to reject
        raise ValueError("duplicate member name")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError("NaN/Infinity are not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_object, parse_constant=_no_constant)


def _too_deep(obj: Any) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(obj: Any) -> bool:
    """Whether any string (key or value) in ``obj`` holds an unpaired UTF-16 surrogate."""
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if any("\ud800" <= ch <= "\udfff" for ch in node):
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def decode_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse ``raw`` as one JSON object (UTF-8, no duplicate members, no NaN), at most
    :data:`MAX_JSON_DEPTH` deep; ``what`` names it in the error.

    A ``\\uD800``-style escape without its pair is refused: it stands for no character and
    cannot be written as UTF-8 (RFC 8259 §8.2), so no claim could reach a header, a log
    line or a rate-limit key faithfully (two different claims could even meet as one key).
    """
    try:
        obj = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise TokenError("malformed", f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise TokenError("malformed", f"{what} is not a JSON object")
    # Fewer brackets than the limit cannot nest deeper than it: skip the walk on normal tokens.
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _too_deep(obj):
        raise TokenError("malformed", f"{what} nests deeper than {MAX_JSON_DEPTH}")
    # Only a surrogate escape can produce one: skip the walk on normal tokens.
    if _SURROGATE_ESCAPE.search(raw) and _lone_surrogate(obj):
        raise TokenError("malformed", f"{what} holds an unpaired UTF-16 surrogate")
    return obj
