"""Request-target parsing and URI normalisation, as NGINX's ``ngx_http_parse_complex_uri``.

Sans-io: strings in, strings out. The normalised path (``$uri``) is what locations match, so
``/products/../admin``, ``//admin`` and ``/products%2F..%2Fadmin`` all become ``/admin``
before routing, and a path that climbs above the root is refused (400).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from jwtgate.errors import HTTPError

__all__ = ["split_target", "normalize_path", "escape_path"]

_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


def split_target(target: str) -> tuple[str, str, str]:
    """Split a request-target into ``(host, path, query)`` (RFC 9112 §3.2).

    Origin form ``/p?q`` gives ``("", "/p", "q")``; absolute form ``http://h:80/p`` gives the
    host without port, lowercased; ``*`` gives ``("", "*", "")``.

    Raises:
        HTTPError: 400 for any other form.
    """
    host = ""
    if not target.startswith("/"):
        if target == "*":
            return "", "*", ""
        lower = target[:8].lower()
        if lower.startswith("http://") or lower.startswith("https://"):
            rest = target.split("://", 1)[1]
            slash = rest.find("/")
            authority, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
            if "?" in authority:
                authority, q = authority.split("?", 1)
                target = "/?" + q
            host = _host_of(authority)
        else:
            raise HTTPError(400, "invalid request-target")
    path, sep, query = target.partition("?")
    if "#" in path:
        raise HTTPError(400, "fragment in request-target")
    return host, path, query


def _host_of(authority: str) -> str:
    if "@" in authority:
        raise HTTPError(400, "userinfo in request-target")
    if authority.startswith("["):
        return authority.split("]", 1)[0].lower() + "]"
    return authority.split(":", 1)[0].lower()


def normalize_path(path: str) -> str:
    """Decode percent-escapes, merge slashes and resolve ``.`` and ``..`` segments.

    Args:
        path: the path part of a request-target, starting with ``/``.

    Returns:
        The normalised path (``$uri``); a trailing slash is kept.

    Raises:
        HTTPError: 400 for a bad escape, a decoded NUL, or a ``..`` above the root
            (NGINX answers 400 to all three).
    """
    if "%" in path:
        if "%" in _PCT.sub("", path):
            raise HTTPError(400, "invalid percent-encoding in URI")
        raw = _PCT.sub(lambda m: chr(int(m.group(1), 16)), path)
        # Decoded octets are bytes of UTF-8; undecodable ones are kept as surrogate escapes,
        # so escape_path gives back exactly the octets the client sent (%FF stays %FF).
        path = raw.encode("latin-1").decode("utf-8", "surrogateescape")
    if "\x00" in path:
        raise HTTPError(400, "NUL in URI")
    if "//" not in path and "/." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments[1:], 1):
        last = i == len(segments) - 1
        if seg == "" and not last:
            continue
        if seg == ".":
            if last:
                out.append("")
            continue
        if seg == "..":
            if not out:
                raise HTTPError(400, "URI climbs above the root")
            out.pop()
            if last:
                out.append("")
            continue
        out.append(seg)
    return "/" + "/".join(out)


_SAFE = "/!$&'()*+,;=:@-._~"


def escape_path(path: str) -> str:
    """Percent-encode a decoded path for sending upstream (RFC 3986 §3.3 pchar kept)."""
    return quote(path.encode("utf-8", "surrogateescape"), safe=_SAFE)
