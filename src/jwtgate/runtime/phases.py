"""Running one request through its location's phases.

``handle`` is what the HTTP layer calls for every request: pick the server and the
location on the Plan current when the request arrived, run the access-type handlers in
phase order (the first that answers ends the request), then the content handler, then the
log handlers. Errors become NGINX's status codes; nothing escapes as a traceback to the
client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from jwtgate.errors import HTTPError, UpstreamError

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
        server = plan.select_server(ctx.conn.server_addr, ctx.conn.server_port, _host(ctx))
        ctx.server = server
        loc = None
        try:
            for handler in server.rewrite:
                await handler(ctx)
                return
            found = server.locations.match(ctx.uri)
            if found is None:
                self._error(ctx, _NOT_FOUND)
                return
            loc, ctx.captures = found
            ctx.location = loc
            for handler in loc.access:
                status = await handler(ctx)
                if status is not None:
                    if status > 0:
                        self._error(ctx, status)
                    return
            if loc.content is None:
                self._error(ctx, _NOT_FOUND)
                return
            await loc.content(ctx)
        except (UpstreamError, HTTPError) as e:
            if responder.started:
                responder.keep_alive = False
            else:
                self._error(ctx, e.status)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error while serving %s %s", ctx.method, ctx.uri)
            if responder.started:
                responder.keep_alive = False
            else:
                self._error(ctx, 500)
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
    def _error(ctx: Any, status: int) -> None:
        headers = [(n.encode("latin-1"), v.encode("utf-8")) for n, v in ctx.response_headers]
        ctx.responder.send(status, headers)


def _host(ctx: Any) -> str:
    host = ctx.http.get("host", "")
    if not host:
        return ""
    if host.startswith("["):
        return host.split("]", 1)[0].lower() + "]"
    return host.split(":", 1)[0].lower().rstrip(".")
