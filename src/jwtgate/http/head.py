"""A parsed request head as the gateway reads it: target, ``$uri``, header variables, framing.

Sans-io: the HTTP server calls :func:`read_head` once llhttp has framed a request head, and
``jwtgate explain`` calls it on a request typed on the command line, so both see a request
the same way (NGINX's ``ignore_invalid_headers``, ``$http_*`` names, URI normalisation).
"""

from __future__ import annotations

import re

from collections.abc import Iterable
from dataclasses import dataclass

from jwtgate.errors import HTTPError
from jwtgate.http.uri import normalize_path, split_target
from jwtgate.memo import remember

__all__ = ["RequestHead", "parse_head", "read_head"]


#: Fields NGINX accepts once only (ngx_http_process_unique_header_line); a repeat is 400.
_UNIQUE = frozenset({"host", "authorization", "content_length", "transfer_encoding", "expect",
                     "if_modified_since", "if_unmodified_since", "if_range", "content_range"})


_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?")


# What a client sends again on every request, worked out once (jwtgate.memo bounds each in
# entries and key size: under a megabyte in all, whatever clients send).
_MEMO_MAX = 1024
_MEMO_NAME_MAX = 64     # bytes of a field name worth remembering
_MEMO_HOST_MAX = 255    # characters of a Host worth remembering (a DNS name and a port)
_MEMO_TARGET_MAX = 256  # characters of a request-target worth remembering
#: Hosts already found valid (-> True)
_VALID_HOSTS: dict[str, bool] = {}
#: field name -> (``$http_*`` key, kind below)
_KEYS: dict[bytes, tuple[str, int]] = {}
#: request-target -> (host, path, query, uri), split and normalised
_TARGETS: dict[str, tuple[str, str, str, str]] = {}

# What read_head does with a field, by name: keep the first value; refuse a repeat; drop
# the field; or look closer (Content-Length, Transfer-Encoding, Cookie).
_PLAIN, _ONCE, _DROP, _SPECIAL = 0, 1, 2, 3


def _valid_host(host: str) -> bool:
    """A ``Host`` value NGINX would accept: a reg-name or IP literal with an optional port;
    no ``/``, ``\\``, spaces, controls, ``..`` or emptiness."""
    if host in _VALID_HOSTS:
        return True
    ok = bool(host) and ".." not in host and _HOST.fullmatch(host) is not None
    if ok:
        remember(_VALID_HOSTS, host, True, _MEMO_MAX, _MEMO_HOST_MAX)
    return ok


def _key(name: bytes) -> tuple[str, int]:
    """The ``$http_*`` key of a field name (``X-Api-Key`` → ``x_api_key``) and what to do
    with the field; a name holding ``_`` is dropped (NGINX's ``ignore_invalid_headers``)."""
    if b"_" in name or not name:
        entry = ("", _DROP)
    else:
        key = name.decode("latin-1").lower().replace("-", "_")
        kind = (_SPECIAL if key in ("content_length", "transfer_encoding", "cookie")
                else _ONCE if key in _UNIQUE else _PLAIN)
        entry = (key, kind)
    remember(_KEYS, name, entry, _MEMO_MAX, _MEMO_NAME_MAX)
    return entry


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr call per field, per request
class RequestHead:
    """One request head, checked.

    Attributes:
        method: e.g. ``"GET"``.
        version: ``"1.1"`` or ``"1.0"``.
        target: the request-target as sent (``$request_uri``).
        uri: the decoded, normalised path (``$uri``), ``"*"`` for an asterisk-form OPTIONS.
        args: the query string without ``?`` (``$args``).
        headers: the header fields kept, as sent, ``[(name, value), ...]`` (bytes).
        http: header values by NGINX variable name (lowercase, ``-`` as ``_``); the first
            value of a repeated field, except ``cookie`` (joined with ``"; "``); ``host`` from
            an absolute-form target when there is one.
        content_length: the ``Content-Length`` in bytes, or ``None``.
        chunked: whether ``Transfer-Encoding: chunked`` was sent.
    """

    method: str
    version: str
    target: str
    uri: str
    args: str
    headers: list[tuple[bytes, bytes]]
    http: dict[str, str]
    content_length: int | None
    chunked: bool


def read_head(method: str, version: str, target: str,
              fields: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """Check a framed request head and derive what routing and variables need.

    Args:
        method: the method token.
        version: ``"1.1"``, ``"1.0"`` (anything else is refused).
        target: the request-target, latin-1 decoded.
        fields: the header fields in order, names and values as bytes.

    Returns:
        The :class:`RequestHead`. Fields whose name holds ``_`` are dropped (NGINX's
        ``ignore_invalid_headers``: ``API_Client`` could alias ``API-Client`` upstream).

    Raises:
        HTTPError: 505 for another version; 400 for a bad target, URI, ``Content-Length``,
            both ``Content-Length`` and ``Transfer-Encoding``, ``Transfer-Encoding`` in
            HTTP/1.0, a repeated unique field (``Host``, ``Authorization``...), or HTTP/1.1
            without ``Host``;
            501 for a ``Transfer-Encoding`` other than ``chunked``.
    """
    return RequestHead(*parse_head(method, version, target, fields))


def parse_head(method: str, version: str, target: str, fields: Iterable[tuple[bytes, bytes]]) -> tuple[
        str, str, str, str, str, list[tuple[bytes, bytes]], dict[str, str], int | None, bool]:
    """:func:`read_head` as a plain tuple, for the HTTP server, which copies the fields into
    its request context at once (a :class:`RequestHead` would only be built to be copied).

    Returns:
        ``(method, version, target, uri, args, headers, http, content_length, chunked)``:
        :class:`RequestHead`'s fields, in its order.

    Raises:
        HTTPError: as :func:`read_head` (505, 400 or 501).
    """
    if version not in ("1.1", "1.0"):
        raise HTTPError(505, "HTTP version not supported")
    split = _TARGETS.get(target)
    if split is None:
        host, path, query = split_target(target)
        uri = normalize_path(path) if path != "*" else "*"
        remember(_TARGETS, target, (host, path, query, uri), _MEMO_MAX, _MEMO_TARGET_MAX)
    else:
        host, path, query, uri = split
    if path == "*" and method != "OPTIONS":
        raise HTTPError(400, "asterisk-form outside OPTIONS")
    headers: list[tuple[bytes, bytes]] = []
    http: dict[str, str] = {}
    content_length: int | None = None
    chunked = False
    keys = _KEYS
    for name, value in fields:
        entry = keys.get(name)
        key, kind = entry if entry is not None else _key(name)
        # Values: UTF-8 where they are; other octets kept as surrogate escapes, so that logs
        # and upstream headers give back exactly the bytes the client sent.
        if kind == _PLAIN:
            if key not in http:
                http[key] = value.decode("utf-8", "surrogateescape")
        elif kind == _ONCE:
            if key in http:
                # Two Authorization or Host fields: which one would the upstream believe?
                raise HTTPError(400, f"client sent duplicate header line: {name.decode('latin-1')}")
            http[key] = value.decode("utf-8", "surrogateescape")
        elif kind == _DROP:
            continue
        elif key == "cookie":
            sval = value.decode("utf-8", "surrogateescape")
            old = http.get(key)
            http[key] = sval if old is None else old + "; " + sval
        else:
            if key in http:
                raise HTTPError(400, f"client sent duplicate header line: {name.decode('latin-1')}")
            if key == "content_length":
                if not value.isdigit():
                    raise HTTPError(400, "invalid Content-Length")
                content_length = int(value)
            elif value.strip().lower() != b"chunked":
                raise HTTPError(501, "unsupported Transfer-Encoding")
            else:
                chunked = True
            http[key] = value.decode("utf-8", "surrogateescape")
        headers.append((name, value))
    if chunked and content_length is not None:
        raise HTTPError(400, "both Content-Length and Transfer-Encoding")
    if chunked and version == "1.0":
        # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if host:
        http["host"] = host
    elif version == "1.1" and "host" not in http:
        raise HTTPError(400, "missing Host header")
    if "host" in http and not _valid_host(http["host"]):
        # ngx_http_validate_host: the Host picks the server and may be echoed in a Location.
        raise HTTPError(400, "client sent invalid host header")
    return method, version, target, uri, query, headers, http, content_length, chunked
