"""Complex values: strings with variables (``"$jwt_claim_sub:$remote_addr"``) compiled once.

Follows NGINX's script syntax (``ngx_http_script.c``): ``$name`` where the name is letters,
digits and ``_``; ``${name}`` to end a name before more letters; ``$1``..``$9`` for regex
captures. A literal ``$`` that does not start a valid name is an error, as in NGINX.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jwtgate.errors import ConfigError
from jwtgate.vars.registry import Getter, VariableRegistry

__all__ = ["ComplexValue", "compile_complex", "variable_names"]

_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


@dataclass(frozen=True, slots=True)
class ComplexValue:
    """A compiled string with variables.

    Attributes:
        source: the text as written in the configuration.
        variables: the variable names it uses, lowercased, in order.
        constant: the value when ``variables`` is empty, else ``None``.
        evaluate: ``evaluate(ctx) -> str``, the value for one request.
    """

    source: str
    variables: tuple[str, ...]
    constant: str | None
    evaluate: Callable[[Any], str]

    def __call__(self, ctx: Any) -> str:
        return self.evaluate(ctx)

    def uses_prefix(self, prefix: str) -> bool:
        """Whether any variable used starts with ``prefix`` (e.g. ``jwt_``)."""
        return any(v.startswith(prefix) for v in self.variables)


def variable_names(text: str) -> list[str]:
    """The variable names in ``text`` (lowercased), without resolving them."""
    return [(m.group(1) or m.group(2)).lower() for m in _VAR.finditer(text)]


def compile_complex(
    text: str,
    registry: VariableRegistry,
    file: str | None = None,
    line: int | None = None,
    *,
    escape: Callable[[str], str] | None = None,
) -> ComplexValue:
    """Compile ``text`` into one function of the request context.

    Args:
        text: the configuration string.
        registry: where variable names are resolved.
        file, line: where ``text`` was written, for errors.
        escape: applied to each variable's value (not to literal text); ``log_format``'s
            ``escape=`` parameter uses it.

    Raises:
        ConfigError: ``unknown "x" variable`` or ``invalid variable name in "..."``.
    """
    parts: list[str | Getter] = []
    names: list[str] = []
    pos = 0
    for m in _VAR.finditer(text):
        literal = text[pos:m.start()]
        _check_stray_dollar(literal, text, file, line)
        if literal:
            parts.append(literal)
        name = m.group(1) or m.group(2)
        getter = registry.resolve(name)
        if getter is None:
            raise ConfigError(f'unknown "{name}" variable', file, line)
        if escape is not None:
            getter = _escaped(getter, escape)
        parts.append(getter)
        names.append(name.lower())
        pos = m.end()
    tail = text[pos:]
    _check_stray_dollar(tail, text, file, line)
    if tail:
        parts.append(tail)
    return _build(text, parts, tuple(names))


def _check_stray_dollar(literal: str, text: str, file: str | None, line: int | None) -> None:
    if "$" in literal:
        raise ConfigError(f'invalid variable name in "{text}"', file, line)


def _escaped(getter: Getter, escape: Callable[[str], str]) -> Getter:
    return lambda ctx: escape(getter(ctx))


def _build(text: str, parts: list[str | Getter], names: tuple[str, ...]) -> ComplexValue:
    if not names:
        return ComplexValue(text, (), text, lambda ctx: text)
    if len(parts) == 1:
        only = parts[0]
        assert callable(only)
        return ComplexValue(text, names, None, only)
    frozen = tuple(parts)

    def evaluate(ctx: Any) -> str:
        return "".join([p if isinstance(p, str) else p(ctx) for p in frozen])

    return ComplexValue(text, names, None, evaluate)
