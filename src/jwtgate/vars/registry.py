"""The variable registry: every ``$name`` resolved once, at load time, to a getter.

Modules declare plain variables (``$remote_addr``) and prefix variables (``$http_``,
``$jwt_claim_``), as NGINX's ``ngx_http_variable_t`` table with ``NGX_HTTP_VAR_PREFIX``. A
name that no module declares is a configuration error (``unknown "x" variable``), never an
empty value at request time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Getter", "PrefixFactory", "VariableRegistry"]

#: A compiled variable: called with the request context, returns the value ('' when unset).
Getter = Callable[[Any], str]
#: Builds the getter of a prefix variable from the part after the prefix (``sub`` of ``$jwt_claim_sub``).
PrefixFactory = Callable[[str], Getter]


class VariableRegistry:
    """Names of variables and the getters that compute them.

    Names are case-insensitive, as in NGINX (it lowercases them before lookup).
    """

    def __init__(self) -> None:
        self._plain: dict[str, tuple[Getter, str]] = {}
        self._prefixes: list[tuple[str, PrefixFactory, str]] = []

    def add(self, name: str, getter: Getter, module: str) -> None:
        """Declare ``$name``, computed by ``getter``; ``module`` owns it.

        Raises:
            ValueError: when ``name`` is already declared (a programming error, or a ``map``
                redefining a variable, which the map module reports with its location).
        """
        key = name.lower()
        if key in self._plain:
            raise ValueError(f'variable "{name}" already defined by {self._plain[key][1]}')
        self._plain[key] = (getter, module)

    def add_prefix(self, prefix: str, factory: PrefixFactory, module: str) -> None:
        """Declare every ``$prefix*`` variable; ``factory(suffix)`` builds each getter."""
        self._prefixes.append((prefix.lower(), factory, module))
        # Longest prefix first so that `$jwt_claim_` wins over a hypothetical `$jwt_`.
        self._prefixes.sort(key=lambda p: -len(p[0]))

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) is not None

    def resolve(self, name: str) -> Getter | None:
        """The getter of ``$name``, or ``None`` when no module declares it.

        ``$1``..``$9`` resolve to the regex captures of the current location or map match.
        """
        key = name.lower()
        hit = self._plain.get(key)
        if hit is not None:
            return hit[0]
        if key.isdigit():
            index = int(key)
            return lambda ctx: ctx.capture(index)
        for prefix, factory, _ in self._prefixes:
            if key.startswith(prefix) and len(key) > len(prefix):
                return factory(name[len(prefix):])
        return None

    def names(self) -> list[str]:
        """Every declared plain name and every prefix followed by ``*``, sorted (for docs)."""
        return sorted([*self._plain, *(p + "*" for p, _, _ in self._prefixes)])
