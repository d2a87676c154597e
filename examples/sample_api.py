#!/usr/bin/env python3
"""A small sample upstream API to put behind jwtgate. Standard library only.

    python examples/sample_api.py [--host 127.0.0.1] [--port 9000]

Routes:

    GET  /products/       the product list
    GET  /products/<id>   one product, or 404
    POST /products/       reads the body (Content-Length or chunked) and echoes it back, 201
    GET  /health          200

Every response is JSON with a Content-Length, and includes ``"path"`` (the request target as
received, query string included) and ``"api_client"`` (the ``API-Client`` request header the
gateway set from the token's ``sub`` claim, or null), so you can see what the gateway passed on.
HTTP/1.1 with keep-alive; one log line per request on stderr; SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PRODUCTS = {
    "widget1": {"id": "widget1", "name": "Widget", "price": 9.99},
    "widget2": {"id": "widget2", "name": "Widget Pro", "price": 19.99},
    "gadget1": {"id": "gadget1", "name": "Gadget", "price": 4.50},
}

MAX_BODY = 1 << 20  # bytes accepted in a POST body
IDLE_TIMEOUT = 60  # seconds a keep-alive connection may sit idle


class BadRequest(Exception):
    """The request body is malformed; carries the status to answer with."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT

    def version_string(self) -> str:
        return "sample-api/1.0"

    # -- routes ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._get(send_body=True)

    def do_HEAD(self) -> None:
        self._get(send_body=False)

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except BadRequest as e:
            self.close_connection = True
            self._json(e.status, {"error": str(e)})
            return
        if self._route() != "/products/":
            self._not_found()
            return
        self._json(HTTPStatus.CREATED, {
            "received": body.decode("utf-8", errors="replace"),
            "length": len(body),
            "content_type": self.headers.get("Content-Type"),
        })

    def _get(self, send_body: bool) -> None:
        self._discard_body()  # a GET may carry one; read it so keep-alive stays in step
        route = self._route()
        if route == "/health":
            self._json(HTTPStatus.OK, {"status": "ok"}, send_body)
        elif route == "/products/":
            self._json(HTTPStatus.OK, {"products": list(PRODUCTS.values())}, send_body)
        elif route.startswith("/products/") and route.count("/") == 2:
            product = PRODUCTS.get(route[len("/products/"):])
            if product is None:
                self._not_found(send_body)
            else:
                self._json(HTTPStatus.OK, {"product": product}, send_body)
        else:
            self._not_found(send_body)

    def _method_not_allowed(self) -> None:
        self._discard_body()
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "method not allowed"},
                   extra_headers={"Allow": "GET, HEAD, POST"})

    do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _method_not_allowed

    # -- helpers --------------------------------------------------------------------------

    def _route(self) -> str:
        return urlsplit(self.path).path

    def _not_found(self, send_body: bool = True) -> None:
        self._json(HTTPStatus.NOT_FOUND, {"error": "not found"}, send_body)

    def _json(self, status: HTTPStatus, payload: dict, send_body: bool = True,
              extra_headers: dict[str, str] | None = None) -> None:
        payload = {**payload, "path": self.path, "api_client": self.headers.get("API-Client")}
        data = (json.dumps(payload, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise BadRequest(HTTPStatus.NOT_IMPLEMENTED, f"unsupported Transfer-Encoding: {te}")
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.isdigit():
            raise BadRequest(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        n = int(length)
        if n > MAX_BODY:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        body = self.rfile.read(n)
        if len(body) != n:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise BadRequest(HTTPStatus.BAD_REQUEST, "bad chunk size line")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest(HTTPStatus.BAD_REQUEST, "bad chunk size") from None
            if size < 0 or total + size > MAX_BODY:
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BadRequest(HTTPStatus.BAD_REQUEST, "truncated chunk")
            parts.append(chunk)
            total += size
        while True:  # trailer section, ends with an empty line
            line = self.rfile.readline(8192)
            if not line:
                raise BadRequest(HTTPStatus.BAD_REQUEST, "truncated trailers")
            if line in (b"\r\n", b"\n"):
                break
        return b"".join(parts)

    def _discard_body(self) -> None:
        try:
            self._read_body()
        except BadRequest:
            self.close_connection = True

    # -- logging --------------------------------------------------------------------------

    def log_request(self, code="-", size="-") -> None:  # noqa: ANN001 (stdlib signature)
        code = getattr(code, "value", code)
        headers = getattr(self, "headers", None)
        client = headers.get("API-Client") if headers is not None else None
        self.log_message('"%s" %s api_client=%s', self.requestline, code, client or "-")

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        sys.stderr.write("sample_api %s %s\n" % (self.address_string(), format % args))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sample upstream API for the jwtgate examples.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to listen on (default 9000)")
    args = parser.parse_args(argv)

    if ":" in args.host:
        Server.address_family = socket.AF_INET6
    try:
        server = Server((args.host, args.port), Handler)
    except OSError as e:
        print(f"sample_api: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return, so it must not run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    host, port = server.server_address[:2]
    print(f"sample_api: listening on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("sample_api: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
