"""Running one request through its location's phases.

The :class:`Dispatcher` is what the HTTP layer calls for every request: pick the server on
the Plan current when the request arrived, run its server-rewrite script (``set``,
``return``), pick the location (or answer NGINX's auto-redirect 301; with no location, the server
level's own handlers), run the location's
access-type handlers in phase order (rewrite, preaccess, access, postaccess; the first that
answers ends the request), then the content handler, then the log handlers. Errors become NGINX's status codes; nothing escapes as a traceback to the
client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from jwtgate.errors import HTTPError, UpstreamError
from jwtgate.http.writer import encode_fields
from jwtgate.modules.base import DEFER
from jwtgate.modules.rewrite import redirect_to_location
from jwtgate.modules.static import send_error_page
from jwtgate.runtime.router import group_index

__all__ = ["Dispatcher"]

log = logging.getLogger("jwtgate.runtime")

_NOT_FOUND = 404


class Dispatcher:
    """Serves requests with the Plan returned by ``current_plan()`` at each request's start.

    Args:
        current_plan: returns the Plan in force (swapped by reloads).
    """

    def __init__(self, current_plan: Callable[[], Any]) -> None:
        self.current_plan = current_plan

    async def __call__(self, ctx: Any) -> None:
        plan = self.current_plan()
        responder = ctx.responder
        conn = ctx.conn
        selector = plan.selector(conn.server_addr, conn.server_port)
        server = selector.single
        if server is None:
            server, m = selector.find(_host(ctx))
            if m is not None:
                ctx.captures, ctx.capture_names = m.groups(), group_index(m)
        ctx.server = server
        loc = None
        try:
            # NGINX's server-rewrite phase: the server's set/return script, before routing.
            for handler in server.rewrite:
                status = await handler(ctx)
                if status is not None:
                    if status > 0:
                        await self._error(ctx, status)
                    return
            found = server.locations.lookup(ctx.uri)
            if found is None:
                # No location: the server level's own handlers (its auth_jwt, root), as NGINX.
                loc = server.unmatched
                if loc is None:
                    await self._error(ctx, _NOT_FOUND)
                    return
                ctx.location = loc
            else:
                loc, m, redirect = found
                ctx.location = loc
                if m is not None:
                    ctx.captures, ctx.capture_names = m.groups(), group_index(m)
                if redirect:
                    redirect_to_location(ctx, loc.match.pattern)
                    return
            for check, handler in loc.steps:
                # A handler that can decide without waiting does so without a coroutine.
                status = check(ctx) if check is not None else DEFER
                if status is DEFER:
                    status = await handler(ctx)
                if status is not None:
                    if status > 0:
                        await self._error(ctx, status)
                    return
            if loc.content is None:
                await self._error(ctx, _NOT_FOUND)
                return
            await loc.content(ctx)
        except (UpstreamError, HTTPError) as e:
            if responder.started:
                responder.keep_alive = False
            else:
                await self._error(ctx, e.status)
        except asyncio.CancelledError:
            if not responder.started:
                ctx.status = 499  # NGINX's "client closed request", for the log phase below
            raise
        except Exception:
            log.exception("unexpected error while serving %s %s", ctx.method, ctx.uri)
            if responder.started:
                responder.keep_alive = False
            else:
                await self._error(ctx, 500)
        finally:
            if not responder.finished and responder.started:
                # A response cut short: the client must not mistake it for a whole one.
                responder.keep_alive = False
            handlers = loc.log if loc is not None else server.log
            for write_log in handlers:
                try:
                    write_log(ctx)
                except Exception:
                    log.exception("access log failed")

    @staticmethod
    async def _error(ctx: Any, status: int) -> None:
        if ctx.extra is not None and await send_error_page(ctx, status):  # error_page
            return
        headers = encode_fields(ctx.response_headers)
        ctx.responder.send(status, headers)


def _host(ctx: Any) -> str:
    host = ctx.http.get("host", "")
    if not host:
        return ""
    if host.startswith("["):
        return host.split("]", 1)[0].lower() + "]"
    return host.split(":", 1)[0].lower().rstrip(".")
