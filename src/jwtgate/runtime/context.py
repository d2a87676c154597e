"""The per-request context every handler and variable getter reads.

One :class:`RequestContext` per request, created by the HTTP layer once the request head is
parsed. Plain attributes (no properties, no per-request dicts built ahead of need) keep it
cheap: variables compute their value from these fields when asked.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ConnectionInfo", "RequestContext"]


class ConnectionInfo:
    """What is known about one client connection.

    Attributes:
        remote_addr, remote_port: the client's address and port.
        server_addr, server_port: the local address and port it connected to.
        number: connection serial number in this process (``$connection``).
        requests: requests served on it so far, this one included (``$connection_requests``).
        https: whether TLS is used.
    """

    __slots__ = ("remote_addr", "remote_port", "server_addr", "server_port", "number", "requests", "https")

    def __init__(self, remote: tuple[str, int], local: tuple[str, int], number: int, https: bool = False) -> None:
        self.remote_addr = remote[0]
        self.remote_port = remote[1]
        self.server_addr = local[0]
        self.server_port = local[1]
        self.number = number
        self.requests = 0
        self.https = https


class RequestContext:
    """Everything about one request in flight.

    Attributes:
        conn: the :class:`ConnectionInfo`.
        method: request method, e.g. ``"GET"``.
        target: the request-target exactly as sent (``$request_uri``).
        uri: the decoded, normalised path (``$uri``), used for location matching.
        args: the query string without ``?`` (``$args``).
        version: ``"1.1"`` or ``"1.0"``.
        headers: the request headers as sent, ``[(name, value), ...]`` (bytes).
        http: header values by NGINX variable name (lowercase, ``-`` as ``_``), str.
        server, location: the chosen server and location plans.
        captures: regex captures of the last match, server name, location or map (``$1``...).
        capture_names: the group names of that match (``(?<name>...)``) → index, or ``None``.
        jwt: the verified token (:class:`jwtgate.jose.verify.VerifiedToken`) or ``None``.
        status: the response status (``$status``), 0 until known.
        body_bytes_sent, bytes_sent: bytes of response body and of the whole response.
        response_headers: extra headers for an answer the gateway makes itself
            (``WWW-Authenticate``), ``[(name, value), ...]`` (str).
        upstream_addr, upstream_status: set by the proxy (str).
        upstream_response_time, upstream_connect_time, upstream_header_time: set by the
            proxy, in seconds (float); ``""`` until measured. ``$upstream_*_time`` formats them.
        limit_req_status: ``PASSED``, ``DELAYED``, ``REJECTED`` or ``""``.
        start, start_wall: monotonic and wall-clock seconds when the request head arrived.
        request_length: bytes of the request head and body read.
        responder: the HTTP layer's response writer.
        vars: values of ``set`` variables, by lowercased name; ``None`` until the first ``set``.
        var_cache: cached variable values (:mod:`jwtgate.vars.registry`); ``None`` until used.
        header_filter: ``filter(ctx, status, headers) -> headers``, applied by the responder
            to the response head before it is written (``add_header``), or ``None``.
        sent_headers, sent_length: the header fields and body length of the response head as
            written (``$sent_http_*``); ``None`` until the head is sent.
    """

    __slots__ = (
        "conn", "method", "target", "uri", "args", "version", "headers", "http", "server",
        "location", "captures", "jwt", "status", "body_bytes_sent", "bytes_sent",
        "response_headers", "upstream_addr", "upstream_status", "upstream_response_time",
        "upstream_connect_time", "upstream_header_time",
        "limit_req_status", "start", "start_wall", "request_length", "responder", "body",
        "request_id", "extra", "capture_names", "vars", "var_cache", "header_filter",
        "sent_headers", "sent_length",
    )

    def __init__(self, conn: ConnectionInfo, method: str, target: str, uri: str, args: str,
                 version: str, headers: list[tuple[bytes, bytes]], http: dict[str, str]) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.uri = uri
        self.args = args
        self.version = version
        self.headers = headers
        self.http = http
        self.server: Any = None
        self.location: Any = None
        self.captures: tuple[str | None, ...] = ()
        self.capture_names: Any = None
        self.jwt: Any = None
        self.status = 0
        self.body_bytes_sent = 0
        self.bytes_sent = 0
        self.response_headers: list[tuple[str, str]] = []
        self.upstream_addr = ""
        self.upstream_status = ""
        self.upstream_response_time: float | str = ""
        self.upstream_connect_time: float | str = ""
        self.upstream_header_time: float | str = ""
        self.limit_req_status = ""
        self.start = time.monotonic()
        self.start_wall = time.time()
        self.request_length = 0
        self.responder: Any = None
        self.body: Any = None
        self.request_id = ""
        #: per-module scratch space, keyed by module name; created on first use
        self.extra: dict[str, Any] | None = None
        self.vars: dict[str, str] | None = None
        self.var_cache: dict[str, tuple[Any, str]] | None = None
        self.header_filter: Any = None
        self.sent_headers: list[tuple[bytes, bytes]] | None = None
        self.sent_length: int | None = None

    def capture(self, index: int) -> str:
        """Regex capture ``index`` of the current match (``$1``...), ``''`` when absent."""
        if 0 < index <= len(self.captures):
            return self.captures[index - 1] or ""
        return ""

    def header(self, name: str) -> str:
        """A request header by NGINX variable name (``user_agent``), ``''`` when absent."""
        return self.http.get(name, "")
