"""Parsers for NGINX's argument value syntaxes: times, sizes, rates and flags.

Each follows the NGINX function named in its docstring (``src/core/ngx_parse.c``,
``src/core/ngx_conf_file.c``, ``ngx_http_limit_req_module.c``) and raises ``ValueError``
on input NGINX rejects; the caller turns that into
``invalid value "x" in "y" directive`` located at the directive.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["parse_time", "parse_size", "parse_zone", "parse_rate", "parse_flag", "MIN_ZONE_SIZE"]

_MAX = 2**63 - 1  # NGX_MAX_INT_T_VALUE / NGX_MAX_SIZE_T_VALUE on 64-bit platforms

# parse_time steps, in the order units must appear (ngx_parse_time's enum).
_START, _YEAR, _MONTH, _WEEK, _DAY, _HOUR, _MIN, _SEC, _MSEC, _LAST = range(10)
_DAY_S = 24 * 60 * 60
# unit -> (step, seconds); "ms" and " " are handled apart.
_UNITS = {
    "y": (_YEAR, 365 * _DAY_S),
    "M": (_MONTH, 30 * _DAY_S),
    "w": (_WEEK, 7 * _DAY_S),
    "d": (_DAY, _DAY_S),
    "h": (_HOUR, 60 * 60),
    "m": (_MIN, 60),
    "s": (_SEC, 1),
}


def parse_time(text: str, *, kind: Literal["sec", "msec"] | None = None) -> float:
    """Parse an NGINX time interval, as ``ngx_parse_time``.

    Units, largest first and each at most once: ``y`` (365 days), ``M`` (30 days), ``w``,
    ``d``, ``h``, ``m``, ``s``, ``ms``; a number without unit counts as seconds;
    combinations such as ``1h30m`` or ``1h 30m`` (spaces after a unit are skipped) add up.
    NGINX quirks are kept: a unit with no number adds nothing (``1hm`` is one hour), a
    bare number may follow the units (``1h30`` is 3630 s), a space ends a bare number of
    seconds.

    Args:
        text: the value, e.g. ``"30s"``, ``"500ms"``, ``"1h30m"``, ``"0"``.
        kind: ``"msec"`` for NGINX's millisecond slots (``ngx_conf_set_msec_slot``:
            ``y`` and ``M`` refused), ``"sec"`` for second slots (``ngx_conf_set_sec_slot``:
            ``ms`` refused), ``None`` (default) to accept every unit.

    Returns:
        The interval in seconds (a multiple of 0.001).

    Raises:
        ValueError: empty, negative, unknown unit, units out of order or repeated, or a
            total beyond 2**63-1 milliseconds (seconds for ``kind="sec"``).
    """
    is_sec = kind == "sec"
    milli = 1 if is_sec else 1000  # integer arithmetic in the slot's own resolution
    step = _MONTH if kind == "msec" else _START
    value = total = 0
    valid = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        i += 1
        if "0" <= c <= "9":
            value = value * 10 + ord(c) - 48
            if value > _MAX:
                raise ValueError(f"invalid time {text!r}: too large")
            valid = True
            continue
        if c == "m" and i < n and text[i] == "s":
            if is_sec or step >= _MSEC:
                raise ValueError(f"invalid time {text!r}")
            i += 1
            step, scale = _MSEC, 1
        elif c == " ":
            if step >= _SEC:
                raise ValueError(f"invalid time {text!r}")
            step, scale = _LAST, milli
        elif c in _UNITS:
            unit_step, seconds = _UNITS[c]
            if step >= unit_step:  # each unit once, larger units first
                raise ValueError(f"invalid time {text!r}")
            step, scale = unit_step, seconds * milli
        else:
            raise ValueError(f"invalid time {text!r}")
        total += value * scale
        if total > _MAX:
            raise ValueError(f"invalid time {text!r}: too large")
        value = 0
        while i < n and text[i] == " ":
            i += 1
    if not valid:
        raise ValueError(f"invalid time {text!r}")
    total += value * milli
    if total > _MAX:
        raise ValueError(f"invalid time {text!r}: too large")
    return float(total) if is_sec else total / 1000


def _digits(text: str) -> int:
    """``ngx_atoi``/``ngx_atosz``: ASCII digits only, not empty, at most 2**63-1."""
    if not text or not all("0" <= c <= "9" for c in text):
        raise ValueError(f"invalid number {text!r}")
    value = int(text)
    if value > _MAX:
        raise ValueError(f"number too large {text!r}")
    return value


_SIZE_UNITS = {"k": 1024, "K": 1024, "m": 1024**2, "M": 1024**2, "g": 1024**3, "G": 1024**3}


def parse_size(text: str) -> int:
    """Parse an NGINX size, as ``ngx_parse_size`` (plus ``g``/``G`` as ``ngx_parse_offset``).

    Args:
        text: digits with an optional single suffix: ``k``/``K`` (×1024), ``m``/``M``
            (×1024²), ``g``/``G`` (×1024³). E.g. ``"1m"`` for a ``limit_req_zone`` zone.

    Returns:
        The size in bytes.

    Raises:
        ValueError: empty, a sign, a fraction, spaces, an unknown suffix, no digits, or a
            result beyond 2**63-1.
    """
    scale = _SIZE_UNITS.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    size = _digits(number) * scale
    if size > _MAX:
        raise ValueError(f"invalid size {text!r}: too large")
    return size


#: Smallest shared memory zone NGINX accepts: 8 pages (``8 * ngx_pagesize``), bytes.
MIN_ZONE_SIZE = 8 * 4096


def parse_zone(text: str) -> tuple[str, int]:
    """Parse the ``name:size`` of a ``zone=`` parameter (``limit_req_zone``, ``keyval_zone``).

    Returns:
        ``(name, size)``: the name (possibly empty; callers that need one check it) and the
        size in bytes (``parse_size``). Whether the size is at least :data:`MIN_ZONE_SIZE` is
        the caller's check, as its message names the directive's own argument.

    Raises:
        ValueError: no ``:``, or a size ``parse_size`` refuses.
    """
    name, colon, size = text.partition(":")
    if not colon:
        raise ValueError(f"invalid zone {text!r}: no size")
    return name, parse_size(size)


def parse_rate(text: str) -> float:
    """Parse a ``limit_req_zone`` rate, as ``ngx_http_limit_req_zone`` (after ``rate=``).

    Args:
        text: ``N r/s`` or ``N r/m`` written without spaces (``"10r/s"``, ``"30r/m"``); a
            bare ``N`` means requests per second, as in NGINX.

    Returns:
        Requests per second, exact (NGINX stores whole requests per 1000 seconds, so
        ``1r/m`` is 0.016 r/s there and 1/60 r/s here).

    Raises:
        ValueError: not a positive integer count, or another unit.
    """
    scale = 1
    number = text
    if text.endswith("r/s"):
        number = text[:-3]
    elif text.endswith("r/m"):
        number, scale = text[:-3], 60
    try:
        rate = _digits(number)
    except ValueError:
        raise ValueError(f"invalid rate {text!r}") from None
    if rate <= 0:
        raise ValueError(f"invalid rate {text!r}")
    return rate / scale


def parse_flag(text: str) -> bool:
    """Parse an NGINX flag, as ``ngx_conf_set_flag_slot``: ``on`` or ``off``, any case.

    Returns:
        ``True`` for ``on``, ``False`` for ``off``.

    Raises:
        ValueError: anything else (NGINX: ``it must be "on" or "off"``).
    """
    lowered = text.lower() if text.isascii() else text  # ngx_strcasecmp is ASCII-only
    if lowered == "on":
        return True
    if lowered == "off":
        return False
    raise ValueError(f'invalid flag {text!r}, it must be "on" or "off"')
