"""``limit_req_zone ... sync`` with ``state_redis``: one limit for every gateway process that
uses the same Redis, and a gateway that keeps serving while Redis is away.

Every test has a real ``redis-server`` of its own or the shared one emptied (``redis_url``).
The zones use ``rate=1r/m`` so that no request leaks during a test: counts are exact."""

from __future__ import annotations

import http.client
import socket
import time

import pytest

from jwtgate_e2e import POST_TOKEN, bearer, mint_hs, post_conf, request, run_cli, wait_until

SLOW = "limit_req_zone $http_x_client zone=shared:1m rate=1r/m{sync};"


def conf(redis: str, limit: str = "limit_req zone=shared burst=4 nodelay;", sync: bool = True,
         http_extra: str = "") -> str:
    return f"""
{redis}
{SLOW.format(sync=" sync" if sync else "")}
{http_extra}
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    location /products/ {{
        proxy_pass http://api_server;
        {limit}
    }}
}}
"""


@pytest.fixture
def request_fixture(request):
    """``request_fixture(name)``: a fixture's value, asked for only by the cases that need it."""
    return request.getfixturevalue


def codes(port: int, n: int, client: str = "a") -> list[int]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return [request(port, "GET", "/products/x", {"X-Client": client}, conn=c).status for _ in range(n)]
    finally:
        c.close()


def test_two_gateways_share_one_limit(gateway, upstream, redis_url):
    text = conf(f"state_redis {redis_url};")
    gw1, gw2 = gateway(text), gateway(text)
    got = []
    for _ in range(5):  # interleaved: 10 requests of one client through two processes
        got += codes(gw1.port, 1) + codes(gw2.port, 1)
    assert got == [200] * 5 + [503] * 5, got  # burst=4 nodelay: 5 in all, not 5 each
    assert codes(gw2.port, 1, client="b") == [200]


def test_memory_zones_are_per_process(gateway, upstream):
    """The contrast: without sync each gateway process keeps its own state."""
    text = conf("", sync=False)
    gw1, gw2 = gateway(text), gateway(text)
    assert codes(gw1.port, 6) == [200] * 5 + [503]
    assert codes(gw2.port, 6) == [200] * 5 + [503]


def test_shared_zone_with_delays(gateway, upstream, redis_url):
    """Delays come from the shared excess too: 2r/s, burst=2, two gateways."""
    text = f"""
state_redis {redis_url};
limit_req_zone $http_x_client zone=fast:1m rate=2r/s sync;
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{ listen 127.0.0.1:{{port}}; location / {{ proxy_pass http://api_server; limit_req zone=fast burst=2; }} }}
"""
    gw1, gw2 = gateway(text), gateway(text)
    start = time.monotonic()
    assert codes(gw1.port, 1) == [200]
    took = time.monotonic()
    assert codes(gw2.port, 1) == [200]  # excess 1 (minus the time in between): waits up to 500 ms
    assert time.monotonic() - took >= 0.2, "the second gateway did not see the first one's request"
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_reference_post_logging_and_rate_limit(gateway, upstream, tmp_path, request_fixture, backend):
    """The post's logging and rate-limit example: in one process (memory), or in two gateways
    sharing the zone through Redis (``sync``)."""
    log = tmp_path / "access_jwt.log"
    redis = f"state_redis {request_fixture('redis_url')};" if backend == "redis" else ""
    http_extra = f"""
{redis}
log_format jwt '$remote_addr - $remote_user [$time_local] "$request" '
               '$status $body_bytes_sent "$http_referer" "$http_user_agent" '
               '$jwt_header_alg $jwt_claim_sub';
limit_req_zone $jwt_claim_sub zone=10rps_per_client:1m rate=10r/s{" sync" if redis else ""};
"""
    text = post_conf(http_extra=http_extra, location_extra=f"limit_req zone=10rps_per_client;\naccess_log {log} jwt;")
    gw1 = gateway(text)
    gw2 = gateway(text) if redis else gw1
    c1 = http.client.HTTPConnection("127.0.0.1", gw1.port, timeout=10)
    c2 = http.client.HTTPConnection("127.0.0.1", gw2.port, timeout=10)
    try:
        got = []
        for _ in range(10):
            got.append(request(gw1.port, "GET", "/products/widget1", bearer(POST_TOKEN), conn=c1).status)
            got.append(request(gw2.port, "GET", "/products/widget1", bearer(POST_TOKEN), conn=c2).status)
    finally:
        c1.close()
        c2.close()
    assert got[0] == 200 and got.count(503) >= 10, got
    other = gw2.get("/products/widget1", bearer(mint_hs({"sub": "other", "iss": "My API Gateway"})))
    assert other.status == 200 and upstream.last.values("API-Client") == ["other"]
    lines = wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 21 and log.read_text().splitlines())
    assert all(line.endswith("HS256 quotes") for line in lines[:-1])
    assert lines[-1].endswith("HS256 other")
    # forged tokens are refused before the limit and spend nothing of it
    forged = mint_hs({"sub": "other", "iss": "My API Gateway"}, key=b"guessed")
    time.sleep(0.1)  # one request leaks at 10r/s
    assert [gw1.get("/products/widget1", bearer(forged)).status for _ in range(5)] == [401] * 5
    assert gw1.get("/products/widget1", bearer(mint_hs({"sub": "other"}))).status == 200


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_redis_killed_and_restarted(gateway, upstream, redis_factory, tmp_path, fail):
    redis = redis_factory()
    error_log = tmp_path / "error.log"
    gw = gateway(conf(f"state_redis {redis.url} timeout=300ms fail={fail};",
                      http_extra=f"error_log {error_log} warn;",
                      limit="limit_req zone=shared burst=2 nodelay;"))
    assert codes(gw.port, 4) == [200, 200, 200, 503]
    redis.kill()
    start = time.monotonic()
    during = codes(gw.port, 6)
    assert time.monotonic() - start < 1.5, "an outage must not slow every request down"
    assert during == ([200] * 6 if fail == "open" else [503] * 6), during
    redis.start()  # the same port, no data (no persistence)
    # the gateway tries the server again within a second and counts from zero
    probes = iter(range(100))
    wait_until(lambda: codes(gw.port, 4, client=f"probe{next(probes)}") == [200, 200, 200, 503],
               timeout=5, interval=0.2, what="limits enforced again")
    assert codes(gw.port, 4, client="z") == [200, 200, 200, 503]
    assert gw.get("/products/x").status == 200  # no key: never limited
    gw.stop()
    text = error_log.read_text()
    unavailable = [ln for ln in text.splitlines() if "is unavailable" in ln]
    assert len(unavailable) == 1, text  # once per 10 s, however many requests failed
    assert f"fail {fail}" in unavailable[0] and f"127.0.0.1:{redis.port}" in unavailable[0]
    assert "available again" in text


def test_timeout_bounds_every_request(gateway, upstream, tmp_path):
    """A Redis that accepts connections but never answers costs at most `timeout`."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    try:
        gw = gateway(conf(f"state_redis redis://127.0.0.1:{blackhole.getsockname()[1]} timeout=150ms;"))
        start = time.monotonic()
        assert codes(gw.port, 1) == [200]
        first = time.monotonic() - start
        assert 0.14 <= first < 1.0, first
        start = time.monotonic()
        assert codes(gw.port, 5) == [200] * 5  # within the retry interval: no waiting at all
        assert time.monotonic() - start < 0.5
    finally:
        blackhole.close()


def test_state_redis_with_tls_and_password(gateway, upstream, redis_factory):
    redis = redis_factory(password="s3cret", tls=True)
    url = f"{redis.url}?ssl_ca_certs={redis.tls[2]}"
    assert url.startswith("rediss://:s3cret@")
    text = conf(f"state_redis {url} fail=closed;", limit="limit_req zone=shared;")
    gw1, gw2 = gateway(text), gateway(text)
    assert codes(gw1.port, 1) + codes(gw2.port, 1) == [200, 503]  # fail=closed: Redis did answer
    assert "s3cret" not in gw1.stderr_text()


def test_check_states_per_process_zones(tmp_path):
    from jwtgate.conf.plan import compile_plan

    path = tmp_path / "w.conf"
    body = conf("", sync=False).replace("{upstream_port}", "9").replace("{port}", "18123")
    path.write_text("worker_processes 4;\n" + body)
    p = run_cli("check", "-c", str(path))
    assert p.returncode == 0, p.stderr
    assert ('[warn] limit_req_zone "shared" is kept per worker process: with worker_processes 4 each worker '
            'enforces its rate on its own; add "sync" and "state_redis" to share it') in p.stderr, p.stderr
    path.write_text("worker_processes 4;\nstate_redis redis://127.0.0.1:1;\n" + conf("").replace(
        "{upstream_port}", "9").replace("{port}", "18123"))
    assert not any("kept per worker process" in str(w) for w in compile_plan(str(path)).warnings)
