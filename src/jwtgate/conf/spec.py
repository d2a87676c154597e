"""Directive specifications: the table every module fills and the compiler, docs and tests read.

One :class:`DirectiveSpec` per directive and context set, as NGINX's ``ngx_command_t`` table:
where the directive may appear, how many arguments it takes, whether it opens a block, and how
an inner level inherits it from an outer one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Ctx", "DirectiveSpec", "Inherit"]


class Ctx(enum.Flag):
    """Configuration contexts (NGINX's ``NGX_MAIN_CONF``, ``NGX_HTTP_*_CONF``...)."""

    MAIN = enum.auto()
    EVENTS = enum.auto()
    HTTP = enum.auto()
    SERVER = enum.auto()
    LOCATION = enum.auto()
    UPSTREAM = enum.auto()
    MAP = enum.auto()

    @property
    def label(self) -> str:
        """The context names as NGINX documents them, e.g. ``http, server, location``."""
        return ", ".join(c.name.lower() for c in Ctx if c in self and c.name)


HSL = Ctx.HTTP | Ctx.SERVER | Ctx.LOCATION


class Inherit(enum.Enum):
    """How a directive's value passes from an outer level to an inner one (NGINX merge rules).

    ``VALUE``: the inner level uses the outer value unless it sets its own.
    ``ARRAY``: a list; the inner level inherits the whole outer list only when it sets no
    directive of the same ``group`` (NGINX's rule for ``proxy_set_header``, ``access_log``...).
    ``NONE``: not inherited (block directives, directives that define names).
    """

    VALUE = "value"
    ARRAY = "array"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class DirectiveSpec:
    """One directive as a module declares it.

    Attributes:
        name: the directive name, e.g. ``auth_jwt``.
        module: the owning module's name, e.g. ``auth_jwt``.
        contexts: where it may appear.
        min_args: fewest arguments.
        max_args: most arguments, ``None`` for unbounded.
        block: whether it opens a ``{}`` block (and then ``block_ctx`` is the context inside).
        block_ctx: the context of the directives inside its block.
        inherit: how it merges from outer to inner levels.
        group: for ``Inherit.ARRAY``, directives sharing a group replace the outer list together
            (``auth_jwt_key_file`` and ``auth_jwt_key_request`` share one, as in NGINX Plus).
        syntax: the syntax line for the docs, NGINX style.
        default: the default as NGINX documents it, or ``None``.
        doc: one or two sentences for the generated reference.
        nginx_notes: differences from NGINX worth documenting.
    """

    name: str
    module: str
    contexts: Ctx
    min_args: int
    max_args: int | None
    block: bool = False
    block_ctx: Ctx | None = None
    inherit: Inherit = Inherit.VALUE
    group: str = ""
    syntax: str = ""
    default: str | None = None
    doc: str = ""
    nginx_notes: str = ""

    @property
    def merge_group(self) -> str:
        """The key under which inheritance replaces outer values: ``group`` or the name."""
        return self.group or self.name

    def arity_ok(self, n: int) -> bool:
        """Whether ``n`` arguments are allowed."""
        return n >= self.min_args and (self.max_args is None or n <= self.max_args)
