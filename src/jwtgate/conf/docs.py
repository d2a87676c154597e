"""The directive reference, generated from the modules' DirectiveSpecs.

``docs/directives.md`` is this function's output; a test fails when the file is stale.
Regenerate with ``python -m jwtgate.conf.docs > docs/directives.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["render_directives"]


def render_directives(modules: Sequence[Any]) -> str:
    """Markdown: one section per module, one entry per directive, in declaration order: the
    syntax line, contexts, number of arguments, default, inheritance, description and the
    differences from NGINX."""
    out = ["# Directive reference", "",
           "Generated from the directive specifications in `src/jwtgate/modules/` by",
           "`python -m jwtgate.conf.docs`; do not edit by hand.", ""]
    for module in modules:
        if not module.directives:
            continue
        out += [f"## Module `{module.name}`", ""]
        for spec in module.directives:
            out += [f"### `{spec.name}`" + (f" ({spec.contexts.label})" if spec.name in _SHARED_NAMES else ""), ""]
            out += [f"    {spec.syntax}" if spec.syntax else f"    {spec.name} ...;", ""]
            out.append(f"- Context: {spec.contexts.label}")
            out.append(f"- Arguments: {_arguments(spec)}" + (", then a block" if spec.block else ""))
            if spec.default is not None:
                out.append(f"- Default: `{spec.default}`")
            out.append(f"- Inheritance: {spec.inherit.value}" + (f" (group `{spec.group}`)" if spec.group else ""))
            out.append("")
            if spec.doc:
                out += [spec.doc, ""]
            if spec.nginx_notes:
                out += [f"NGINX compatibility: {spec.nginx_notes}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _arguments(spec: Any) -> str:
    """How many arguments ``spec`` takes, in words: ``none``, ``1``, ``1 or 2``, ``1 or more``."""
    lo, hi = spec.min_args, spec.max_args
    if hi is None:
        return f"{lo} or more"
    if lo == hi:
        return "none" if lo == 0 else str(lo)
    if hi == lo + 1:
        return f"{lo} or {hi}"
    return f"{lo} to {hi}"


# Directive names declared in two contexts by two modules (``server``, ``keepalive_timeout``).
_SHARED_NAMES = {"server", "keepalive_timeout", "keepalive_requests"}


if __name__ == "__main__":
    from jwtgate.modules import default_modules

    print(render_directives(default_modules()), end="")
