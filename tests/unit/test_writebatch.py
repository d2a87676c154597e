"""jwtgate.writebatch on real sockets under uvloop: order, the end of the turn, large writes,
closed transports."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from jwtgate.writebatch import MAX_DEFERRED, WriteBatch, batch_for


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    """A transport on one end of a socket pair, the other end as a plain blocking socket."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    theirs.settimeout(5)
    return transport, theirs  # type: ignore[return-value]


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_writes_wait_for_the_end_of_the_turn_and_keep_their_order():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        batch = WriteBatch(loop)
        (t1, s1), (t2, s2) = await _pair(), await _pair()
        batch.write(t1, b"a1")
        batch.write(t2, b"b1")
        batch.write(t1, b"a2")
        s1.setblocking(False)
        try:
            s1.recv(10)
            raise AssertionError("a deferred write reached the socket before the end of the turn")
        except BlockingIOError:
            pass
        s1.settimeout(5)
        await asyncio.sleep(0)  # the turn ends: the batch is flushed
        assert _read(s1, 4) == b"a1a2"
        assert _read(s2, 2) == b"b1"
        t1.close(), t2.close(), s1.close(), s2.close()

    uvloop.run(main())


def test_a_large_write_goes_at_once_behind_what_waits():
    async def main() -> None:
        batch = WriteBatch(asyncio.get_running_loop())
        t, s = await _pair()
        big = b"x" * (MAX_DEFERRED + 1)
        batch.write(t, b"head")
        batch.write(t, big)  # flushes "head" first, then writes directly
        assert _read(s, 4 + len(big)) == b"head" + big
        t.close(), s.close()

    uvloop.run(main())


def test_closed_transports_are_skipped_and_the_others_still_written():
    async def main() -> None:
        batch = WriteBatch(asyncio.get_running_loop())
        (t1, s1), (t2, s2) = await _pair(), await _pair()
        batch.write(t1, b"lost")
        batch.write(t2, b"kept")
        t1.abort()
        batch.flush()
        await asyncio.sleep(0.05)  # let the loop close the aborted socket
        assert _read(s2, 4) == b"kept"
        assert _read(s1, 4) == b""  # the aborted side got nothing, and nothing raised
        t2.close(), s1.close(), s2.close()

    uvloop.run(main())


def test_one_batch_per_loop():
    async def get() -> WriteBatch:
        loop = asyncio.get_running_loop()
        first = batch_for(loop)
        assert batch_for(loop) is first
        return first

    assert uvloop.run(get()) is not uvloop.run(get())
