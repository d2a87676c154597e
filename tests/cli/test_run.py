"""``jwtgate run -c FILE``: serves in the foreground and stops cleanly on signals."""

from __future__ import annotations

import http.client
import signal
import time

import pytest

from jwtgate_e2e import POST_TOKEN, bearer, port_open, post_conf, request


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=lambda s: s.name)
def test_stops_cleanly(gateway, upstream, sig):
    gw = gateway(post_conf(http_extra="error_log stderr info;"))
    assert gw.get("/products/widget1", bearer(POST_TOKEN)).status == 200
    start = time.monotonic()
    assert gw.stop(sig) == 0, gw.stderr_text()
    assert time.monotonic() - start < 5
    assert not port_open(gw.port)
    err = gw.stderr_text()
    assert "Traceback" not in err, err
    assert "listening on" in err


def test_stops_with_idle_keep_alive_clients(gateway, upstream):
    gw = gateway(post_conf())
    conns = []
    try:
        for _ in range(3):
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            assert request(gw.port, "GET", "/products/a", bearer(POST_TOKEN), conn=c).status == 200
            conns.append(c)
        start = time.monotonic()
        assert gw.stop(signal.SIGTERM) == 0, gw.stderr_text()
        assert time.monotonic() - start < 5
        # the idle connections were closed by the gateway
        for c in conns:
            c.sock.settimeout(5)
            assert c.sock.recv(1) == b""
    finally:
        for c in conns:
            c.close()
    assert "Traceback" not in gw.stderr_text()


def test_stderr_is_quiet_at_the_default_level(gateway, upstream):
    """Without error_log, only errors are logged: a normal request and a 401 log nothing."""
    gw = gateway(post_conf())
    assert gw.get("/products/a", bearer(POST_TOKEN)).status == 200
    assert gw.get("/products/a").status == 401
    assert gw.stop() == 0
    assert gw.stderr_text().strip() == ""
