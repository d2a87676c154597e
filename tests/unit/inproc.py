"""Serving one request in process: a compiled Plan, the real Dispatcher and the real Responder
writing into a buffer instead of a socket. For routing, rewrite, map and variable tests that
need no upstream; the end-to-end suite runs the same paths over real sockets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jwtgate.conf.plan import Plan, compile_plan
from jwtgate.http.server import Responder
from jwtgate.http.uri import normalize_path, split_target
from jwtgate.runtime.context import ConnectionInfo, RequestContext
from jwtgate.runtime.phases import Dispatcher
from jwtgate.vars.complex import compile_complex


def plan_of(tmp_path: Path, text: str, name: str = "gw.conf") -> Plan:
    path = tmp_path / name
    path.write_text(text)
    return compile_plan(str(path))


class _Sink:
    """What Responder needs of the protocol: a write() and the flow-control flag."""

    writing_paused = False

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    ctx: Any
    closed: bool

    def header(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "surrogateescape")


def serve(plan: Plan, target: str, headers: list[tuple[str, str]] | dict[str, str] | None = None,
          method: str = "GET", local: tuple[str, int] = ("127.0.0.1", 8080),
          remote: tuple[str, int] = ("192.0.2.7", 40000), version: str = "1.1",
          before: Any = None) -> Answer:
    """Serve one request with ``plan``; ``before(ctx)`` may adjust the context first."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [("Host", "localhost")])
    host, path, query = split_target(target)
    http: dict[str, str] = {}
    for name, value in items:
        key = name.lower().replace("-", "_")
        if key == "cookie" and key in http:
            http[key] += "; " + value
        else:
            http.setdefault(key, value)
    if host:
        http["host"] = host
    conn = ConnectionInfo(remote, local, 1)
    conn.requests = 1
    ctx = RequestContext(conn, method, target, normalize_path(path), query, version,
                         [(n.encode("latin-1"), v.encode("latin-1")) for n, v in items], http)
    # as the HTTP layer counts it: the target and each field with ": " and CRLF
    ctx.request_length = len(target) + sum(len(n) + len(v) + 4 for n, v in items)
    sink = _Sink()
    ctx.responder = Responder(sink, ctx, True)  # type: ignore[arg-type]
    if before is not None:
        before(ctx)
    asyncio.run(Dispatcher(lambda: plan)(ctx))
    closed = not (ctx.responder.keep_alive and ctx.responder.finished)
    if not sink.data:
        return Answer(ctx.status, [], b"", ctx, closed)
    head, _, body = sink.data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    fields = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    return Answer(status, fields, body, ctx, closed)  # type: ignore[arg-type]


def evaluate(plan: Plan, text: str, ctx: Any) -> str:
    """``text`` (with variables) compiled against ``plan``'s variables and evaluated on ``ctx``."""
    assert plan.build is not None
    return compile_complex(text, plan.build.variables)(ctx)
