"""Streaming keeps memory flat: 1 GiB each way through the gateway, RSS growth < 50 MiB.

Not a timed test: it measures the gateway's peak resident memory (VmHWM) only.
"""

from __future__ import annotations

import socket
import threading

from jwtgate_e2e import SocketUpstream

GiB = 1 << 30
CHUNK = b"\xa5" * (256 * 1024)


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status memory field, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not found")


class StreamingUpstream(SocketUpstream):
    """Reads a request body to the end without keeping it, then streams N bytes back."""

    backlog = 4

    def __init__(self) -> None:
        self.received = 0
        super().__init__()

    def serve(self, c: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += c.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = {k.lower(): v for k, v in (ln.split(b": ", 1) for ln in lines[1:])}
        remaining = int(fields.get(b"content-length", b"0")) - len(rest)
        got = len(rest)
        while remaining > 0:
            n = len(c.recv(min(remaining, 1 << 20)))
            if n == 0:
                return
            remaining -= n
            got += n
        self.received = got
        size = int(lines[0].split(b"size=")[1].split()[0]) if b"size=" in lines[0] else 0
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        sent = 0
        while sent < size:
            piece = CHUNK[: size - sent]
            c.sendall(piece)
            sent += len(piece)


def test_one_gib_each_way_with_flat_memory(gateway):
    up = StreamingUpstream()
    try:
        gw = gateway(f"""
server {{
    listen 127.0.0.1:{{port}};
    client_max_body_size 0;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; }}
}}
""")
        pid = gw.proc.pid
        s = socket.create_connection(("127.0.0.1", gw.port))
        # warm up (imports, buffers) before taking the baseline
        s.sendall(b"POST /warm?size=1048576 HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
                  + b"\0" * 1048576)
        _read_response(s)
        s.close()
        baseline = vm(pid, "VmRSS")

        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"POST /both?size=%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (GiB, GiB))
        reader = threading.Thread(target=lambda: result.append(_read_response(s)))
        result: list[int] = []
        reader.start()
        sent = 0
        while sent < GiB:
            s.sendall(CHUNK)
            sent += len(CHUNK)
        reader.join(300)
        s.close()
        assert result == [GiB], "the response body did not arrive whole"
        assert up.received == GiB, "the request body did not arrive whole"
        peak = vm(pid, "VmHWM")
        assert peak - baseline < 50 * (1 << 20), f"RSS grew by {(peak - baseline) >> 20} MiB"
    finally:
        up.close()


def _read_response(s: socket.socket) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return -1
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    got = len(body)
    while got < length:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return got
