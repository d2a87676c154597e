"""Python cost of one proxied request, measured in-process without the kernel.

The gateway's real code (configuration, HttpProtocol, phases, auth_jwt, proxy, upstream
client and pool) runs on a uvloop event loop, but both sockets are replaced by in-memory
transports: the client side feeds request bytes into ``HttpProtocol.data_received`` and the
upstream side answers each request with a canned NGINX-like response on the next loop turn.
What remains is the gateway's own Python work per request, which wrk cannot isolate on a
noisy machine (its figures swing by +-20% between runs); this one repeats within a few %.

Not a benchmark of the gateway (no system calls, no network): a profiler's companion for
A/B comparisons of code on the request path. Figures are CPU microseconds per request.

    .venv/bin/python bench/micro.py [--config FILE] [--path /open/x] [--token T]
        [--requests 100000] [--connections 50] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from typing import Any

import uvloop

from jwtgate.errors import ConfigError
from jwtgate.process.gateway import Gateway

try:
    from jwtgate.process.gateway import tune_gc
except ImportError:  # an older tree (A/B runs against a previous commit)
    def tune_gc() -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(2000, 10, 10)
from jwtgate.upstream.client import UpstreamConnection

UPSTREAM_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\n"
                     b"Content-Type: text/plain\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n"
                     b'{"ok":true}')

DEFAULT_CONFIG = """
upstream backend {{ server 127.0.0.1:9; keepalive 64; }}
access_log off;
server {{
    listen 127.0.0.1:{port};
    location /api/ {{
        auth_jwt "api";
        auth_jwt_key_file {jwks};
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
    location /open/ {{
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""


class _Transport:
    """The least of asyncio.Transport the gateway uses."""

    def __init__(self, peer: tuple[str, int], local: tuple[str, int]) -> None:
        self._extra = {"peername": peer, "sockname": local}
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _UpstreamTransport(_Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop, conn: UpstreamConnection) -> None:
        super().__init__(("127.0.0.1", 9), ("127.0.0.1", 40000))
        self._loop, self._conn = loop, conn

    def write(self, data: bytes) -> None:
        # Answer on the next loop turn, as a real upstream would answer on a later epoll.
        self._loop.call_soon(self._conn.data_received, UPSTREAM_RESPONSE)


class _ClientTransport(_Transport):
    def __init__(self, client: "_Client", port: int) -> None:
        super().__init__(("127.0.0.1", 50000), ("127.0.0.1", port))
        self._client = client

    def write(self, data: bytes) -> None:
        self._client.on_write(data)


class _Client:
    """One keep-alive client connection sending ``request`` until ``left`` runs out."""

    def __init__(self, bench: "_Bench", proto: Any, request: bytes) -> None:
        self.bench, self.proto, self.request = bench, proto, request

    def on_write(self, data: bytes) -> None:
        if not data.startswith(b"HTTP/1.1 "):
            raise SystemExit(f"unexpected response bytes: {data[:80]!r}")
        status = int(data[9:12])
        if status != self.bench.expect:
            raise SystemExit(f"expected {self.bench.expect}, got {data[:200]!r}")
        self.bench.done += 1
        if b"\r\nConnection: close\r\n" in data:  # keepalive_requests reached: a new connection
            self.proto.connection_lost(None)
            self.proto = self.bench.connect(self)
        if self.bench.sent < self.bench.total:
            self.bench.sent += 1
            self.bench.loop.call_soon(self.proto.data_received, self.request)
        elif self.bench.done >= self.bench.total and not self.bench.finished.done():
            self.bench.finished.set_result(None)


class _Bench:
    def __init__(self, gw: Gateway, loop: asyncio.AbstractEventLoop, total: int, expect: int) -> None:
        self.gw, self.loop, self.total, self.expect = gw, loop, total, expect
        self.sent = self.done = 0
        self.finished: asyncio.Future[None] = loop.create_future()

    def connect(self, client: "_Client") -> Any:
        addr = self.gw.plan.binds[0]
        proto = self.gw._factory(addr)()
        proto.connection_made(_ClientTransport(client, addr[1]))
        return proto


def _fake_upstreams(gw: Gateway) -> None:
    """Make every pool's new connections in-memory ones."""
    loop = asyncio.get_running_loop()
    for pool in gw.plan.pools:
        async def connect(peer: Any, timeout: float, tls: Any = None) -> UpstreamConnection:
            conn = UpstreamConnection(peer)
            conn.connection_made(_UpstreamTransport(loop, conn))  # type: ignore[arg-type]
            return conn
        pool.connect = connect


async def _run(gw: Gateway, request: bytes, total: int, connections: int, expect: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    bench = _Bench(gw, loop, total, expect)
    clients = []
    for _ in range(connections):
        client = _Client(bench, None, request)
        client.proto = bench.connect(client)
        clients.append(client)
    t0, c0 = time.perf_counter(), time.process_time()
    for client in clients:
        if bench.sent < total:
            bench.sent += 1
            client.proto.data_received(request)
    await bench.finished
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for client in clients:
        client.proto.connection_lost(None)
    return wall, cpu


async def main(args: argparse.Namespace) -> None:
    gw = Gateway(args.config)
    await gw._open_resources(gw.plan)
    _fake_upstreams(gw)
    tune_gc()  # as `jwtgate run` does
    gc_time = [0.0, 0.0, 0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_time[1] = time.process_time()
        else:
            gc_time[0] += time.process_time() - gc_time[1]
            gc_time[2] += 1
    gc.callbacks.append(on_gc)
    headers = b"Host: localhost\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
    if args.token:
        headers += b"Authorization: Bearer " + args.token.encode() + b"\r\n"
    request = b"GET " + args.path.encode() + b" HTTP/1.1\r\n" + headers + b"\r\n"
    await _run(gw, request, min(args.requests, 20000), args.connections, args.expect)  # warm-up
    results = []
    for i in range(args.repeat):
        gc_time[0], gc_time[2] = 0.0, 0
        prof = cProfile.Profile() if args.profile and i == args.repeat - 1 else None
        if prof:
            prof.enable()
        wall, cpu = await _run(gw, request, args.requests, args.connections, args.expect)
        if prof:
            prof.disable()
            pstats.Stats(prof).sort_stats(args.sort).print_stats(35)
        results.append(cpu / args.requests * 1e6)
        print(f"pass {i + 1}: {cpu / args.requests * 1e6:6.2f} us CPU/request, "
              f"{args.requests / wall:,.0f} req/s in-process, of which cycle collector "
              f"{gc_time[0] / args.requests * 1e6:.2f} us ({gc_time[2]} collections)", flush=True)
    print(f"median {statistics.median(results):.2f} us/request (min {min(results):.2f}, max {max(results):.2f})")


def cli() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="configuration (default: /api/ with auth_jwt, /open/ without)")
    p.add_argument("--jwks", default=os.path.expanduser("~/.cache/jwtgate-bench/material/jwks.json"),
                   help="JWK Set for the default configuration")
    p.add_argument("--path", default="/open/x")
    p.add_argument("--token", default="", help="sent as Authorization: Bearer")
    p.add_argument("--expect", type=int, default=200, help="status every response must have")
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="cProfile the last pass")
    p.add_argument("--sort", default="tottime")
    args = p.parse_args()
    made: list[str] = []
    if args.config is None:
        if not os.path.exists(args.jwks):
            # bench/run makes the material (keys, tokens); without it, /open/ still works.
            print(f"micro.py: no JWK set at {args.jwks} (bench/run makes it, or pass --jwks); "
                  "using a throwaway key: /api/ answers 401", file=sys.stderr)
            with tempfile.NamedTemporaryFile("w", suffix=".jwk", delete=False) as jwk:
                json.dump({"keys": [{"kty": "oct", "kid": "micro", "k": "bWljcm8tYmVuY2gta2V5LTMyLWJ5dGVzLWxvbmch"}]}, jwk)
            made.append(jwk.name)
            args.jwks = jwk.name
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
            conf.write(DEFAULT_CONFIG.format(port=18099, jwks=args.jwks))
        made.append(conf.name)
        args.config = conf.name
    try:
        uvloop.run(main(args))
    except ConfigError as e:
        print(f"micro.py: {e}", file=sys.stderr)
        return 2
    finally:
        for path in made:
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
