"""The headers module (``ngx_http_headers_module``): ``add_header``.

``add_header name value [always];`` adds a field to the response head: to 200, 201, 204,
206, 301, 302, 303, 304, 307 and 308 responses, or to every response with ``always``.
The value is a complex value evaluated when the head is written (so ``$upstream_status``
or ``$request_id`` can be sent back); an empty value adds nothing, as in NGINX. Like NGINX,
a level that has any ``add_header`` does not inherit the outer level's.

The module hands the HTTP layer a header filter (``ctx.header_filter``) in the rewrite phase,
before ``return`` runs, so answers made by ``return`` carry the fields too.
"""

from __future__ import annotations

from typing import Any

from jwtgate.conf.spec import DirectiveSpec, HSL, Inherit
from jwtgate.http.writer import valid_field_name, valid_field_value
from jwtgate.modules.base import Module, Phase

__all__ = ["HeadersModule", "AddHeaders"]

DIRECTIVES = (
    DirectiveSpec("add_header", "headers", HSL, 2, 3, inherit=Inherit.ARRAY,
                  syntax="add_header name value [always];",
                  doc="Adds a response header field to 200, 201, 204, 206, 301, 302, 303, 304, 307 "
                      "and 308 responses, or to every response with `always`. The value may "
                      "contain variables; an empty value adds nothing."),
)

#: NGINX's ``ngx_http_headers_filter`` statuses for fields added without ``always``.
STATUSES = frozenset((200, 201, 204, 206, 301, 302, 303, 304, 307, 308))


class AddHeaders:
    """The header filter of one level: ``filter(ctx, status, headers) -> headers``.

    Args:
        fields: ``(name, complex value, always)`` in configuration order.
    """

    __slots__ = ("fields",)

    def __init__(self, fields: list[tuple[bytes, Any, bool]]) -> None:
        self.fields = tuple(fields)

    def __repr__(self) -> str:
        return f"<AddHeaders {[n.decode('latin-1') for n, _, _ in self.fields]}>"

    def __call__(self, ctx: Any, status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        ok = status in STATUSES
        out = None
        for name, value, always in self.fields:
            if not (ok or always):
                continue
            text = value(ctx)
            if not text:
                continue
            try:
                raw = text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                continue  # not representable as octets: never written
            if not valid_field_value(raw):
                continue  # a value with CR, LF or NUL is never written
            if out is None:
                out = list(headers)
            out.append((name, raw))
        return out if out is not None else headers


def _installer(filt: AddHeaders) -> Any:
    """The rewrite-phase handler that hands ``filt`` to the HTTP layer for this request."""

    async def install_add_header(ctx: Any) -> None:
        ctx.header_filter = filt
        return None

    return install_add_header


class HeadersModule(Module):
    """``add_header``."""

    name = "headers"
    directives = DIRECTIVES

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        name = d.args[0]
        if not valid_field_name(name.encode("latin-1", "replace")):
            raise build.error(f'invalid header name "{name}"', d)
        always = False
        if len(d.args) == 3:
            if d.args[2] != "always":
                raise build.error(f'invalid parameter "{d.args[2]}"', d)
            always = True
        return name.encode("latin-1"), build.complex(d.args[1], d), always

    def _handlers(self, level: Any) -> dict[Phase, list[Any]]:
        fields = level.get_all("add_header")
        if not fields:
            return {}
        return {Phase.REWRITE: [_installer(AddHeaders(fields))]}

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        return self._handlers(loc)

    def server_handlers(self, build: Any, server: Any) -> dict[Phase, list[Any]]:
        return self._handlers(server)
