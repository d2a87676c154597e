"""The rewrite module (``ngx_http_rewrite_module``): ``set`` and ``return``.

The directives of one level form a script run in configuration order: ``set $v value;``
stores a value, ``return`` answers and ends the request. A server-level script runs before
the location is chosen (NGINX's server-rewrite phase), a location's when it is chosen (the
rewrite phase); both run before authentication, so ``$jwt_*`` variables are still empty there
(``jwtgate check`` warns). Scripts are not inherited: a location runs only its own.

A ``set`` variable is declared for the whole configuration (it may be read anywhere, also
before or outside the ``set`` that assigns it) and reads as empty until a ``set`` runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from jwtgate.conf.spec import Ctx, DirectiveSpec, Inherit
from jwtgate.http.mime import content_type_for
from jwtgate.http.uri import escape_path
from jwtgate.http.writer import error_body, valid_field_value
from jwtgate.modules.base import DONE, Module, Phase

__all__ = ["RewriteModule", "ReturnSpec", "SetSpec", "make_return_handler", "make_script", "absolute_location"]

SL = Ctx.SERVER | Ctx.LOCATION

DIRECTIVES = (
    DirectiveSpec("return", "rewrite", SL, 1, 2, inherit=Inherit.NONE,
                  syntax="return code [text] | return code URL | return URL;",
                  doc="Stops processing and answers with the code: the text as body, or for 301, 302, "
                      "303, 307 and 308 the URL as `Location`; `444` closes the connection without an "
                      "answer. Runs in the rewrite phase, before authentication, as in NGINX.",
                  nginx_notes="A relative redirect URL is made absolute with the request's host and "
                              "port, as NGINX's default `absolute_redirect on`."),
    DirectiveSpec("set", "rewrite", SL, 2, 2, inherit=Inherit.NONE,
                  syntax="set $variable value;",
                  doc="Sets a variable in the rewrite phase, in order with `return`. The variable may "
                      "be used anywhere in the configuration; it is empty until a `set` runs.",
                  nginx_notes="`set` of a variable another module provides (`$uri`, `$args`, a map's "
                              "variable, `$jwt_*`...) is refused; `if` and `rewrite` are not supported yet."),
)

_NAME = re.compile(r"[A-Za-z0-9_]+\Z")
_REDIRECTS = frozenset((301, 302, 303, 307, 308))


@dataclass(frozen=True, slots=True)
class ReturnSpec:
    """A ``return``: status code, an optional complex value (text or redirect URL), and the
    ``default_type`` in force where it is (the text's ``Content-Type`` when the URI's
    extension names none, as NGINX's ``ngx_http_set_content_type``)."""

    code: int
    value: Any
    default_type: str = "text/plain"


@dataclass(frozen=True, slots=True)
class SetSpec:
    """A ``set``: the variable's key (lowercased name) and its complex value."""

    key: str
    value: Any


def parse_return(build: Any, d: Any) -> ReturnSpec:
    """``return code [text]``, ``return code URL``, ``return URL`` (NGINX's checks and messages)."""
    args = d.args
    if len(args) == 1 and not args[0].isdigit():
        if not args[0].startswith(("http://", "https://", "$scheme")):
            raise build.error(f'invalid return code "{args[0]}"', d)
        return ReturnSpec(302, build.complex(args[0], d))
    if not args[0].isdigit() or not 0 < int(args[0]) <= 999:
        raise build.error(f'invalid return code "{args[0]}"', d)
    value = build.complex(args[1], d) if len(args) == 2 else None
    return ReturnSpec(int(args[0]), value)


def absolute_location(ctx: Any, location: str) -> str:
    """``location`` made absolute when it starts with ``/``, as NGINX's header filter does
    (``absolute_redirect on``, ``server_name_in_redirect off``, ``port_in_redirect on``):
    the request's host (``Host`` without port, or the local address), and the local port
    unless it is the scheme's default."""
    if not location.startswith("/"):
        return location
    conn = ctx.conn
    host = ctx.http.get("host", "")
    if host.startswith("["):
        host = host.split("]", 1)[0] + "]"
    else:
        host = host.rsplit(":", 1)[0] if ":" in host else host
    host = host.lower().rstrip(".")
    if not host:
        host = f"[{conn.server_addr}]" if ":" in conn.server_addr else conn.server_addr
    https = conn.https
    port = conn.server_port
    default = 443 if https else 80
    tail = f":{port}" if port and port != default else ""
    return f"{'https' if https else 'http'}://{host}{tail}{location}"


def redirect_to_location(ctx: Any, name: str) -> None:
    """NGINX's auto-redirect: 301 to the location ``name`` (with the query string)."""
    target = escape_path(name) + ("?" + ctx.args if ctx.args else "")
    raw = absolute_location(ctx, target).encode("utf-8", "surrogateescape")
    headers = [(b"Location", raw)] if valid_field_value(raw) else []
    ctx.responder.send(301, headers, error_body(301), content_type=b"text/html")


def _return_op(spec: ReturnSpec) -> Callable[[Any], int]:
    """The synchronous body of ``return``: answers through ``ctx.responder``, returns DONE."""
    code, value = spec.code, spec.value

    if code == 444:
        def close(ctx: Any) -> int:
            # NGINX's 444: close the connection without an answer (logged as 444).
            ctx.status = 444
            ctx.responder.keep_alive = False
            return DONE
        return close

    if code in _REDIRECTS and value is not None:
        def redirect(ctx: Any) -> int:
            raw = absolute_location(ctx, value(ctx)).encode("utf-8", "surrogateescape")
            headers = [(b"Location", raw)] if valid_field_value(raw) else []
            ctx.responder.send(code, headers, error_body(code), content_type=b"text/html")
            return DONE
        return redirect

    if value is None:
        if code >= 400:
            # the gateway's own error: answered by the dispatcher, through error_page if any
            return lambda ctx: code
        # NGINX's own page for a redirect; nothing for the others
        page = error_body(code) if code in _REDIRECTS else None

        def plain(ctx: Any) -> int:
            ctx.responder.send(code, [], page)
            return DONE
        return plain

    default_type = spec.default_type

    def text(ctx: Any) -> int:
        body = value(ctx).encode("utf-8", "surrogateescape")
        ctype = content_type_for(ctx.uri, default_type)
        ctx.responder.send(code, [], body, content_type=ctype.encode("latin-1", "replace"))
        return DONE
    return text


def _set_op(spec: SetSpec) -> Callable[[Any], None]:
    key, value = spec.key, spec.value

    def set_variable(ctx: Any) -> None:
        result = value(ctx)  # evaluated first: `set $a "x$a"` reads the old value
        store = ctx.vars
        if store is None:
            store = ctx.vars = {}
        store[key] = result
        return None
    return set_variable


def make_return_handler(spec: ReturnSpec) -> Callable[[Any], Any]:
    """The rewrite-phase handler of a lone ``return``: answers without running later phases."""
    op = _return_op(spec)

    async def handle_return(ctx: Any) -> int:
        return op(ctx)

    return handle_return


def make_script(ops: list[SetSpec | ReturnSpec]) -> Callable[[Any], Any] | None:
    """One rewrite-phase handler running ``ops`` in order; ``None`` for no ops.

    Everything after the first ``return`` is unreachable and dropped.
    """
    steps: list[Callable[[Any], int | None]] = []
    for op in ops:
        if isinstance(op, ReturnSpec):
            steps.append(_return_op(op))
            break
        steps.append(_set_op(op))
    if not steps:
        return None
    if len(steps) == 1 and isinstance(ops[0], ReturnSpec):
        return make_return_handler(ops[0])
    frozen = tuple(steps)

    async def rewrite_script(ctx: Any) -> int | None:
        for step in frozen:
            status = step(ctx)
            if status is not None:
                return status
        return None

    return rewrite_script


def _set_getter(key: str) -> Callable[[Any], str]:
    def get(ctx: Any) -> str:
        store = ctx.vars
        return store.get(key, "") if store is not None else ""
    return get




class RewriteModule(Module):
    """``set`` and ``return``, run as one script per level in the rewrite phase."""

    name = "rewrite"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        build.shared[self.name] = {}  # id(level) -> [SetSpec | ReturnSpec, ...] in order

    def predeclare(self, build: Any, level: Any, d: Any) -> None:
        if d.name != "set":
            return
        var = d.args[0]
        if not var.startswith("$") or not _NAME.match(var[1:]):
            raise build.error(f'invalid variable name "{var}"', d)
        name = var[1:]
        owner = build.variables.owner(name)
        if owner is None:
            build.variables.add(name, _set_getter(name.lower()), self.name)
        elif owner != self.name:
            raise build.error(f'the duplicate "{name}" variable', d)

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        if d.name == "set":
            op: SetSpec | ReturnSpec = SetSpec(d.args[0][1:].lower(), build.complex(d.args[1], d))
        else:
            op = parse_return(build, d)
        value = op.value
        if value is not None:
            jwt = build.jwt_variable_used(value.variables)
            if jwt is not None:
                build.warn(f'"${jwt}" is empty in "{d.name}": the rewrite phase runs before '
                           'authentication', d)
        build.shared[self.name].setdefault(id(level), []).append(op)
        return op

    def _script(self, build: Any, level: Any) -> dict[Phase, list[Any]]:
        ops = build.shared[self.name].get(id(level), [])
        default_type = level.get("default_type")
        if default_type:  # known only now: default_type may follow return, or be inherited
            ops = [replace(op, default_type=default_type[0]) if isinstance(op, ReturnSpec) else op
                   for op in ops]
        script = make_script(ops)
        return {Phase.REWRITE: [script]} if script is not None else {}

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        return self._script(build, loc)

    def server_handlers(self, build: Any, server: Any) -> dict[Phase, list[Any]]:
        return self._script(build, server)
