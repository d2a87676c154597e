"""Static files go out with sendfile(2) under uvloop too (uvloop has no ``loop.sendfile``).

The gateway runs in this process on a uvloop loop, with its real listening socket and
HTTP layer; ``os.sendfile`` is wrapped (the real call still runs) to count the bytes that
went zero-copy. The client is a real socket reading slowly enough to fill the socket
buffer, so the fallback path (reads written with backpressure) runs as well.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
import uvloop

from jwtgate.conf.plan import compile_plan
from jwtgate.process.gateway import Gateway

from jwtgate_e2e import free_port


def _conf(tmp_path, sendfile: str) -> str:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "small.json").write_bytes(b'{"openapi":"3.1.0"}' * 100)
    (site / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024 + 11))
    port = free_port()
    path = tmp_path / "gw.conf"
    path.write_text(f"server {{ listen 127.0.0.1:{port}; sendfile {sendfile}; root {site}; location / {{ }} }}\n")
    return str(path), port, site


async def _fetch(port: int, target: str, slow: bool) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = await reader.read(256 * 1024)
        if not chunk:
            break
        data += chunk
        if slow:
            await asyncio.sleep(0.002)  # let the socket buffer fill: the fallback path runs
    writer.close()
    return data


def _serve_and_fetch(path: str, port: int, targets: list[str], slow: bool) -> list[bytes]:
    async def main() -> list[bytes]:
        gw = Gateway(path, compile_plan(path))
        await gw.start()
        try:
            return [await _fetch(port, t, slow) for t in targets]
        finally:
            for server in gw._servers.values():
                server.close()

    return uvloop.run(main())


@pytest.mark.parametrize("slow", [False, True])
def test_static_files_use_sendfile_under_uvloop(tmp_path, monkeypatch, slow):
    path, port, site = _conf(tmp_path, "on")
    zero_copy = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        n = real(out_fd, in_fd, offset, count)
        zero_copy.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", counting)
    small, big = _serve_and_fetch(path, port, ["/small.json", "/big.bin"], slow)
    for answer, name in ((small, "small.json"), (big, "big.bin")):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        expected = (site / name).read_bytes()
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(expected).hexdigest()
    # the small file went out in one sendfile(2); of the big one, a good part did
    small_size = (site / "small.json").stat().st_size
    assert zero_copy[0] == small_size
    assert sum(zero_copy) >= small_size + 256 * 1024


def test_sendfile_off_never_calls_sendfile(tmp_path, monkeypatch):
    path, port, site = _conf(tmp_path, "off")
    calls = []
    monkeypatch.setattr(os, "sendfile", lambda *a: calls.append(a) or 0)
    (answer,) = _serve_and_fetch(path, port, ["/big.bin"], False)
    assert answer.partition(b"\r\n\r\n")[2] == (site / "big.bin").read_bytes()
    assert calls == []


def test_client_gone_mid_file_is_no_error(tmp_path):
    """The client closes while a large file is sent zero-copy: the gateway stays up."""
    path, port, site = _conf(tmp_path, "on")

    async def main() -> bytes:
        gw = Gateway(path, compile_plan(path))
        await gw.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            await r.read(1024)
            w.transport.abort()
            await asyncio.sleep(0.2)
            return (await _fetch(port, "/small.json", False))
        finally:
            for server in gw._servers.values():
                server.close()

    answer = uvloop.run(main())
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.partition(b"\r\n\r\n")[2] == (site / "small.json").read_bytes()
