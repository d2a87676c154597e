"""Regular expressions written for NGINX (PCRE) compiled with Python's ``re``.

PCRE's named groups ``(?<name>...)`` and ``(?'name'...)`` become Python's ``(?P<name>...)``;
lookbehinds ``(?<=``/``(?<!`` are left alone. Used by ``location``, ``server_name`` and ``map``.
"""

from __future__ import annotations

import re

__all__ = ["compile_pcre"]

_NAMED = re.compile(r"\(\?(?:<(?![=!])|')([A-Za-z_][A-Za-z0-9_]*)[>']")


def compile_pcre(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile an NGINX regex.

    Raises:
        re.error: the pattern is invalid (callers report it at the directive's file:line).
    """
    return re.compile(_NAMED.sub(r"(?P<\1>", pattern), re.IGNORECASE if ignore_case else 0)
