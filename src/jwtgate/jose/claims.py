"""Rendering and lookup of JWT claims for ``$jwt_claim_*``, ``$jwt_header_*`` and ``auth_jwt_claim_set``.

Rendering follows NGINX Plus: a string is itself, a number its JSON text, a boolean
``true``/``false``, null the empty string, an array its elements (rendered the same way)
joined by commas, an object its compact JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["claim_to_str", "lookup_path"]


def claim_to_str(value: Any) -> str:
    """Render a claim value (anything ``json.loads`` produces) as NGINX Plus does.

    ``"a"`` -> ``a``; ``3`` -> ``3``; ``1.5`` -> ``1.5``; ``True`` -> ``true``; ``None`` -> ``""``;
    ``["a", 1, True]`` -> ``a,1,true``; ``{"a": [1, 2]}`` -> ``{"a":[1,2]}``.
    """
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, list):
        return ",".join(claim_to_str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def lookup_path(obj: Mapping[str, Any], path: Sequence[str]) -> Any | None:
    """Follow ``path`` through nested objects: ``lookup_path(claims, ["a", "b"])`` is ``claims["a"]["b"]``.

    Returns ``None`` when a step is missing or not an object (indistinguishable from a JSON
    null, which NGINX also renders as empty). An empty path returns ``obj`` itself.
    """
    node: Any = obj
    for name in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(name)
        if node is None:
            return None
    return node
