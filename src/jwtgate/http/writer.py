"""Serialising response and request heads, sans-io.

Every header line the gateway writes passes :func:`valid_field_value`: a value holding CR,
LF, NUL or another control character (from a claim, a variable, an upstream) is never
written, so nothing can inject a header line (RFC 9110 §5.5).
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus

__all__ = [
    "status_line", "reason", "error_body", "http_date", "valid_field_value", "valid_field_name",
    "chunk", "encode_fields", "STATUS_LINES_11",
]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
# NGINX's wording for the statuses a gateway answers itself.
_REASONS.update({401: "Unauthorized", 413: "Request Entity Too Large", 414: "Request-URI Too Large",
                 503: "Service Temporarily Unavailable", 429: "Too Many Requests"})
_PAGE_TITLES = {401: "401 Authorization Required", 494: "400 Request Header Or Cookie Too Large"}

_STATUS_LINES: dict[tuple[int, str], bytes] = {}

# RFC 9110 §5.6.2 token, §5.5 field-vchar (obs-text allowed, controls except HTAB refused).
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: octets a field value may not hold (controls other than HTAB), for bytes.translate
_BAD_OCTETS = bytes([*range(0x00, 0x09), *range(0x0a, 0x20), 0x7f])


def reason(status: int) -> str:
    """The reason phrase for ``status`` (``Unknown`` for unregistered codes)."""
    return _REASONS.get(status, "Unknown")


def status_line(status: int, version: str = "1.1") -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``, cached per (status, version)."""
    key = (status, version)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = f"HTTP/{version} {status} {reason(status)}\r\n".encode()
        _STATUS_LINES[key] = line
    return line


#: ``HTTP/1.1`` status lines of every valid code (100-599), by code: looked up directly on
#: the response path, where a call to :func:`status_line` per response would cost more
STATUS_LINES_11: dict[int, bytes] = {code: status_line(code) for code in range(100, 600)}


_ERROR_BODIES: dict[int, bytes] = {}


def error_body(status: int) -> bytes:
    """A small fixed HTML page for an error the gateway answers itself (no version, no trace)."""
    body = _ERROR_BODIES.get(status)
    if body is None:
        title = _PAGE_TITLES.get(status, f"{status} {reason(status)}")
        body = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
                f"<center><h1>{title}</h1></center>\r\n<hr><center>jwtgate</center>\r\n"
                "</body>\r\n</html>\r\n").encode()
        _ERROR_BODIES[status] = body
    return body


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The current IMF-fixdate (RFC 9110 §5.6.7), recomputed at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def valid_field_name(name: bytes) -> bool:
    """Whether ``name`` is an RFC 9110 token."""
    return bool(_TOKEN.match(name))


def valid_field_value(value: bytes) -> bool:
    """Whether ``value`` can be written as a field value: no CR, LF, NUL or other controls
    (RFC 9110 §5.5: HTAB, SP, VCHAR and obs-text only)."""
    # translate() deletes in one C pass with a table: ~15x fewer instructions than a regex
    # character class per octet, and this runs over every response head's values.
    return len(value.translate(None, _BAD_OCTETS)) == len(value)


def encode_fields(fields: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header fields the gateway made as text (``ctx.response_headers``), as bytes to write.

    Values are UTF-8; octets a client sent that are not UTF-8 (kept as surrogate escapes, e.g.
    a realm built from ``$http_*``) go back as they came, other lone surrogates become ``?``.
    A value holding CR, LF, NUL or another control character is dropped, never written.
    """
    out = []
    for name, value in fields:
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "replace")
        if valid_field_value(raw):
            out.append((name.encode("latin-1"), raw))
    return out


def chunk(data: bytes) -> bytes:
    """One chunk of the chunked transfer coding (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
