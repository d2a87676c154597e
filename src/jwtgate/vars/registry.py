"""The variable registry: every ``$name`` resolved once, at load time, to a getter.

Modules declare plain variables (``$remote_addr``) and prefix variables (``$http_``,
``$jwt_claim_``), as NGINX's ``ngx_http_variable_t`` table with ``NGX_HTTP_VAR_PREFIX``. A
name that no module declares is a configuration error (``unknown "x" variable``), never an
empty value at request time.

Values are computed lazily: a getter runs only when something reads the variable. A variable
declared ``cacheable`` is computed at most once per request, as NGINX caches every variable
not flagged ``NGX_HTTP_VAR_NOCACHEABLE``: its value goes into ``ctx.var_cache`` (a dict created
on the first cached read, so a request that reads none costs nothing). Each cached value is
tagged with the verified token it was computed under (``ctx.jwt``): a value read before
authentication is computed again after it, so a ``map`` over ``$jwt_claim_sub`` read by a
pre-authentication rate limit and again by ``proxy_set_header`` gives the verified answer the
second time. Variables whose inputs change during a request (``$status``, ``$request_time``,
``$upstream_*``, ``set`` variables) are simply not declared cacheable; cheap field reads
(``$uri``, ``$http_*``) are not either, since a cache lookup would cost more than they do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Getter", "PrefixFactory", "VariableRegistry", "cached"]

#: A compiled variable: called with the request context, returns the value ('' when unset).
Getter = Callable[[Any], str]
#: Builds the getter of a prefix variable from the part after the prefix (``sub`` of ``$jwt_claim_sub``).
PrefixFactory = Callable[[str], Getter]

#: The module name under which regex named captures (``(?<name>...)``) are declared.
CAPTURES = "captures"


def cached(getter: Getter, key: str) -> Getter:
    """``getter`` computed at most once per request (and once more after authentication).

    Args:
        getter: the uncached computation.
        key: the cache key, the variable's lowercased name (two uses of one variable share it).
    """

    def get(ctx: Any) -> str:
        cache = ctx.var_cache
        if cache is None:
            cache = ctx.var_cache = {}
        else:
            hit = cache.get(key)
            if hit is not None and hit[0] is ctx.jwt:
                return hit[1]  # type: ignore[no-any-return]
        value = getter(ctx)
        cache[key] = (ctx.jwt, value)
        return value

    get.__name__ = f"cached_{key}"
    return get


def _capture_getter(name: str) -> Getter:
    """``$name`` for a named capture: the group of that name in the last regex match."""

    def get(ctx: Any) -> str:
        names = ctx.capture_names
        if names is None:
            return ""
        index = names.get(name)
        return ctx.capture(index) if index is not None else ""

    return get


class VariableRegistry:
    """Names of variables and the getters that compute them.

    Names are case-insensitive, as in NGINX (it lowercases them before lookup).
    """

    def __init__(self) -> None:
        self._plain: dict[str, tuple[Getter, str, bool]] = {}
        self._prefixes: list[tuple[str, PrefixFactory, str, bool]] = []

    def add(self, name: str, getter: Getter, module: str, *, cacheable: bool = False) -> None:
        """Declare ``$name``, computed by ``getter``; ``module`` owns it.

        Args:
            cacheable: compute it at most once per request (see the module docstring); for
                values that are costly and do not change while the request runs.

        Raises:
            ValueError: when ``name`` is already declared (a programming error, or a ``map``
                redefining a variable, which the map module reports with its location).
        """
        key = name.lower()
        if key in self._plain:
            raise ValueError(f'variable "{name}" already defined by {self._plain[key][1]}')
        self._plain[key] = (cached(getter, key) if cacheable else getter, module, cacheable)

    def add_prefix(self, prefix: str, factory: PrefixFactory, module: str, *, cacheable: bool = False) -> None:
        """Declare every ``$prefix*`` variable; ``factory(suffix)`` builds each getter."""
        self._prefixes.append((prefix.lower(), factory, module, cacheable))
        # Longest prefix first so that `$jwt_claim_` wins over a hypothetical `$jwt_`.
        self._prefixes.sort(key=lambda p: -len(p[0]))

    def add_capture(self, name: str) -> None:
        """Declare ``$name`` for a regex named capture ``(?<name>...)`` (NGINX does the same for
        ``location``, ``server_name`` and ``map`` regexes); several regexes may share a name.

        Raises:
            ValueError: ``name`` is a variable of a module (NGINX: ``the duplicate "x" variable``).
        """
        key = name.lower()
        hit = self._plain.get(key)
        if hit is not None:
            if hit[1] == CAPTURES:
                return
            raise ValueError(f'variable "{name}" already defined by {hit[1]}')
        self._plain[key] = (_capture_getter(name), CAPTURES, False)

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) is not None

    def owner(self, name: str) -> str | None:
        """The module that declares ``$name`` (plain or by prefix), or ``None``."""
        key = name.lower()
        hit = self._plain.get(key)
        if hit is not None:
            return hit[1]
        for prefix, _, module, _ in self._prefixes:
            if key.startswith(prefix) and len(key) > len(prefix):
                return module
        return None

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
        for prefix, factory, _, cacheable in self._prefixes:
            if key.startswith(prefix) and len(key) > len(prefix):
                getter = factory(name[len(prefix):])
                return cached(getter, key) if cacheable else getter
        return None

    def names(self) -> list[str]:
        """Every declared plain name and every prefix followed by ``*``, sorted (for docs)."""
        return sorted([*self._plain, *(p + "*" for p, _, _, _ in self._prefixes)])
