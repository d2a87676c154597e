"""``limit_req_zone`` / ``limit_req``: the post's per-client rate limit keyed by the JWT ``sub``,
and the ordering rules around authentication.

Bursts go over one keep-alive connection so that 30 requests take a few tens of
milliseconds; at 10 r/s that leaks well under one request."""

from __future__ import annotations

import concurrent.futures
import http.client
import re
import time

import pytest

from jwtgate_e2e import POST_TOKEN, bearer, mint_hs, post_conf, request, run_cli, wait_until

ZONE = "limit_req_zone $jwt_claim_sub zone=10rps_per_client:1m rate=10r/s;"


def burst(port: int, n: int, headers: dict, path: str = "/products/widget1") -> tuple[list[int], float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    start = time.monotonic()
    try:
        codes = [request(port, "GET", path, headers, conn=conn).status for _ in range(n)]
    finally:
        conn.close()
    return codes, time.monotonic() - start


def test_per_client_rate_limit(gateway, upstream):
    gw = gateway(post_conf(http_extra=ZONE, location_extra="limit_req zone=10rps_per_client;"))
    codes, elapsed = burst(gw.port, 30, bearer(POST_TOKEN))
    other = gw.get("/products/widget1", bearer(mint_hs({"sub": "other", "iss": "My API Gateway"})))
    assert elapsed < 1.0, f"the burst took {elapsed:.2f}s, too slow to test a 10 r/s limit"
    assert codes[0] == 200, codes
    assert codes.count(503) >= 15, codes
    assert set(codes) <= {200, 503}, codes
    assert other.status == 200
    assert upstream.last.values("API-Client") == ["other"]
    assert len(upstream.requests) == codes.count(200) + 1


def test_limited_client_recovers(gateway, upstream):
    gw = gateway(post_conf(http_extra=ZONE, location_extra="limit_req zone=10rps_per_client;"))
    codes, _ = burst(gw.port, 5, bearer(POST_TOKEN))
    assert codes[0] == 200 and 503 in codes, codes
    time.sleep(0.25)  # 10 r/s: after 250 ms the bucket has room again
    assert gw.get("/products/widget1", bearer(POST_TOKEN)).status == 200


def test_forged_tokens_do_not_spend_the_real_clients_budget(gateway, upstream):
    gw = gateway(post_conf(http_extra=ZONE, location_extra="limit_req zone=10rps_per_client;"))
    forged = mint_hs({"name": "Quotation System", "sub": "quotes", "iss": "My API Gateway"}, key=b"guessed")
    codes, _ = burst(gw.port, 30, bearer(forged))
    assert codes == [401] * 30, codes
    r = gw.get("/products/widget1", bearer(POST_TOKEN))
    assert r.status == 200
    assert upstream.last.values("API-Client") == ["quotes"]


def test_revoked_or_refused_tokens_are_not_counted_after_the_fact(gateway, upstream):
    """A key that depends on $jwt_* through a map is also evaluated after authentication."""
    http_extra = ZONE.replace("$jwt_claim_sub", "$client") + """
map $jwt_claim_sub $client { default $jwt_claim_sub; }
"""
    gw = gateway(post_conf(http_extra=http_extra, location_extra="limit_req zone=10rps_per_client;"))
    forged = mint_hs({"sub": "quotes"}, key=b"guessed")
    codes, _ = burst(gw.port, 20, bearer(forged))
    assert codes == [401] * 20, codes
    assert gw.get("/products/widget1", bearer(POST_TOKEN)).status == 200
    codes, _ = burst(gw.port, 20, bearer(POST_TOKEN))
    assert codes.count(503) >= 15, codes


def test_address_limit_applies_before_authentication(gateway, upstream):
    gw = gateway(post_conf(http_extra="limit_req_zone $binary_remote_addr zone=per_ip:1m rate=10r/s;",
                           location_extra="limit_req zone=per_ip;"))
    bad = mint_hs({"sub": "quotes"}, key=b"guessed")
    codes, elapsed = burst(gw.port, 30, bearer(bad))
    assert elapsed < 1.0, elapsed
    assert codes[0] == 401, codes
    assert codes.count(503) >= 15, codes
    assert set(codes) <= {401, 503}, codes
    # the address is limited, whatever token it brings
    assert gw.get("/products/widget1", bearer(POST_TOKEN)).status == 503
    assert upstream.requests == []


def test_burst_nodelay_lets_six_through_at_once(gateway, upstream):
    gw = gateway(post_conf(http_extra="limit_req_zone $jwt_claim_sub zone=slow:1m rate=1r/s;",
                           location_extra="limit_req zone=slow burst=5 nodelay;"))
    codes, elapsed = burst(gw.port, 12, bearer(POST_TOKEN))
    assert elapsed < 0.5, f"{elapsed:.2f}s: nodelay must not delay"
    assert codes == [200] * 6 + [503] * 6, codes
    assert len(upstream.requests) == 6


def test_burst_without_nodelay_delays(gateway, upstream):
    gw = gateway(post_conf(http_extra=ZONE, location_extra="limit_req zone=10rps_per_client burst=2;"))
    codes, elapsed = burst(gw.port, 3, bearer(POST_TOKEN))
    assert codes == [200, 200, 200], codes
    # the 2nd and 3rd requests wait for the 10 r/s bucket: about 100 ms each
    assert elapsed >= 0.15, f"{elapsed:.3f}s: excess requests were not delayed"


def test_limit_req_status(gateway, upstream):
    gw = gateway(post_conf(http_extra=ZONE, location_extra="limit_req zone=10rps_per_client;\n"
                                                          "limit_req_status 429;"))
    codes, _ = burst(gw.port, 10, bearer(POST_TOKEN))
    assert codes[0] == 200 and codes.count(429) >= 5 and 503 not in codes, codes


# -- one test per parameter and directive, NGINX's semantics ------------------------------

STATUS_LOG = "log_format st '$status $limit_req_status $http_x_client';\n"


def concurrent_latencies(port: int, n: int, headers: dict, path: str = "/products/widget1"):
    """``n`` requests sent at once on ``n`` connections: [(status, seconds)] sorted by time."""
    def one(_):
        start = time.monotonic()
        r = request(port, "GET", path, headers)
        return r.status, time.monotonic() - start
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return sorted(pool.map(one, range(n)), key=lambda x: x[1])


def open_conf(http_extra: str, location_extra: str) -> str:
    """A location without authentication, limited by ``location_extra``."""
    return f"""
{http_extra}
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    location /products/ {{
        proxy_pass http://api_server;
        {location_extra}
    }}
}}
"""


def test_delay_parameter_lets_the_first_excess_requests_through(gateway, upstream):
    """burst=5 delay=2 at 5r/s: 3 at once, then waits of about 200, 400, 600 ms; the 7th rejected.

    (Lower bounds only: requests that reach the gateway a little apart have leaked a little.)"""
    gw = gateway(open_conf("limit_req_zone $http_x_client zone=c:1m rate=5r/s;",
                           "limit_req zone=c burst=5 delay=2;"))
    got = concurrent_latencies(gw.port, 7, {"X-Client": "a"})
    assert sorted(s for s, _ in got) == [200] * 6 + [503], got
    waits = [t for s, t in got if s == 200]
    assert waits[2] < 0.15, got
    for expected, took in zip((0.2, 0.4, 0.6), waits[3:]):
        assert expected - 0.1 <= took < expected + 1.0, got


def test_burst_without_nodelay_queues_excess_requests(gateway, upstream):
    gw = gateway(open_conf("limit_req_zone $http_x_client zone=c:1m rate=5r/s;", "limit_req zone=c burst=3;"))
    got = concurrent_latencies(gw.port, 5, {"X-Client": "a"})
    assert sorted(s for s, _ in got) == [200] * 4 + [503], got
    waits = [t for s, t in got if s == 200]
    for expected, took in zip((0, 0.2, 0.4, 0.6), waits):
        assert expected - 0.1 <= took < expected + 1.0, got


def test_empty_key_is_not_limited(gateway, upstream, tmp_path):
    log = tmp_path / "st.log"
    gw = gateway(open_conf("limit_req_zone $http_x_client zone=c:1m rate=1r/m;\n" + STATUS_LOG,
                           f"limit_req zone=c;\naccess_log {log} st;"))
    codes, _ = burst(gw.port, 5, {})
    assert codes == [200] * 5
    codes, _ = burst(gw.port, 3, {"X-Client": "a"})
    assert codes == [200, 503, 503]
    lines = wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 8 and log.read_text().splitlines())
    assert lines == ["200 - -"] * 5 + ["200 PASSED a", "503 REJECTED a", "503 REJECTED a"]


def test_several_limits_a_rejected_request_spends_nothing(gateway, upstream, tmp_path):
    """NGINX looks every limit up and accounts them only when all accept."""
    error_log = tmp_path / "error.log"
    gw = gateway(open_conf(
        f"error_log {error_log} info;\n"
        "limit_req_zone $binary_remote_addr zone=per_ip:1m rate=1r/m;\n"
        "limit_req_zone $http_x_client zone=per_client:1m rate=1r/m;\n",
        "limit_req zone=per_ip burst=2 nodelay;\nlimit_req zone=per_client;"))
    assert burst(gw.port, 4, {"X-Client": "a"})[0] == [200, 503, 503, 503]
    # the three rejections (by per_client) spent nothing of per_ip: two more clients pass
    assert burst(gw.port, 1, {"X-Client": "b"})[0] == [200]
    assert burst(gw.port, 1, {"X-Client": "c"})[0] == [200]
    assert burst(gw.port, 1, {"X-Client": "d"})[0] == [503]  # per_ip: 3 accepted, burst=2 is full
    gw.stop()
    text = error_log.read_text()
    assert text.count('limiting requests, excess: 1.000 by zone "per_client", client: 127.0.0.1') == 3
    assert text.count('limiting requests, excess: 3.000 by zone "per_ip"') == 1


def test_limit_req_status_variable(gateway, upstream, tmp_path):
    log = tmp_path / "st.log"
    gw = gateway(open_conf("limit_req_zone $http_x_client zone=c:1m rate=2r/s;\n" + STATUS_LOG,
                           f"limit_req zone=c burst=1;\naccess_log {log} st;"))
    got = concurrent_latencies(gw.port, 3, {"X-Client": "a"})
    assert sorted(s for s, _ in got) == [200, 200, 503]
    lines = wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 3 and log.read_text().splitlines())
    # in the order they ended: the delayed one (about 500 ms) last
    assert lines[2] == "200 DELAYED a", lines
    assert sorted(lines) == ["200 DELAYED a", "200 PASSED a", "503 REJECTED a"]


def test_dry_run(gateway, upstream, tmp_path):
    log = tmp_path / "st.log"
    error_log = tmp_path / "error.log"
    gw = gateway(open_conf(f"error_log {error_log} info;\nlimit_req_zone $http_x_client zone=c:1m rate=1r/m;\n"
                           + STATUS_LOG, f"limit_req zone=c burst=1;\nlimit_req_dry_run on;\naccess_log {log} st;"))
    codes, elapsed = burst(gw.port, 4, {"X-Client": "a"})
    assert codes == [200] * 4 and elapsed < 1, (codes, elapsed)
    lines = wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 4 and log.read_text().splitlines())
    # counted as NGINX counts: the DELAYED_DRY_RUN one was accounted, the rejected ones not
    assert lines == ["200 PASSED a", "200 DELAYED_DRY_RUN a", "200 REJECTED_DRY_RUN a", "200 REJECTED_DRY_RUN a"]
    assert len(upstream.requests) == 4
    gw.stop()
    text = error_log.read_text()
    assert 'delaying request, dry run, excess: 1.000, by zone "c"' in text
    assert text.count('limiting requests, dry run, excess: 2.000 by zone "c"') == 2


LEVELS_CONF = ("limit_req_zone $http_x_delay zone=d:1m rate=2r/s;\n"
               "limit_req_zone $http_x_reject zone=r:1m rate=1r/m;\n")


def delay_then_reject(port: int) -> list[int]:
    """One request delayed by zone d (about 500 ms), one rejected by zone r."""
    return [request(port, "GET", "/products/x", h).status
            for h in ({"X-Delay": "a"}, {"X-Delay": "a"}, {"X-Reject": "b"}, {"X-Reject": "b"})]


@pytest.mark.parametrize("level, reject, delay", [("warn", "warn", "notice"), ("info", "info", "info")])
def test_limit_req_log_level(gateway, upstream, tmp_path, level, reject, delay):
    """Rejections at limit_req_log_level, delays one level lower (every level: test_limit_req_conf)."""
    error_log = tmp_path / "error.log"
    gw = gateway(open_conf(f"error_log {error_log} info;\n" + LEVELS_CONF,
                           f"limit_req zone=d burst=1;\nlimit_req zone=r;\nlimit_req_log_level {level};"))
    assert delay_then_reject(gw.port) == [200, 200, 200, 503]
    gw.stop()
    text = error_log.read_text()
    assert re.search(rf'\[{reject}\] \d+#0: limiting requests, excess: \d\.\d{{3}} by zone "r", '
                     r'client: 127\.0\.0\.1, server: _', text), text
    assert re.search(rf'\[{delay}\] \d+#0: delaying request, excess: \d\.\d{{3}}, by zone "d"', text), text


def test_limit_req_log_level_hides_below_error_log_level(gateway, upstream, tmp_path):
    error_log = tmp_path / "error.log"
    gw = gateway(open_conf(f"error_log {error_log} warn;\n" + LEVELS_CONF,
                           "limit_req zone=d burst=1;\nlimit_req zone=r;\nlimit_req_log_level notice;"))
    assert delay_then_reject(gw.port) == [200, 200, 200, 503]
    gw.stop()
    assert "limiting" not in error_log.read_text() and "delaying" not in error_log.read_text()


def test_limits_before_and_after_authentication_together(gateway, upstream, tmp_path):
    """$limit_req_status combines both phases: the more severe outcome is kept."""
    log = tmp_path / "st.log"
    gw = gateway(post_conf(
        http_extra=ZONE + "limit_req_zone $binary_remote_addr zone=per_ip:1m rate=1r/m;\n"
                   "log_format st2 '$status $limit_req_status';",
        location_extra=f"limit_req zone=per_ip burst=10 nodelay;\nlimit_req zone=10rps_per_client;\n"
                       f"access_log {log} st2;"))
    codes, _ = burst(gw.port, 3, bearer(POST_TOKEN))
    assert codes == [200, 503, 503]
    lines = wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 3 and log.read_text().splitlines())
    assert lines == ["200 PASSED", "503 REJECTED", "503 REJECTED"]


def test_zone_state_survives_reload(gateway, upstream, tmp_path):
    """As NGINX's shared memory zones, a zone keeps its state when the configuration reloads."""
    gw = gateway(f"pid {tmp_path}/gw.pid;\n" + open_conf(
        "error_log stderr info;\nlimit_req_zone $http_x_client zone=c:1m rate=1r/m;", "limit_req zone=c;"))
    assert burst(gw.port, 1, {"X-Client": "a"})[0] == [200]
    wait_until(lambda: (tmp_path / "gw.pid").exists(), what="the pid file")
    p = run_cli("-s", "reload", "-c", str(gw.conf_path))
    assert p.returncode == 0, p.stderr
    wait_until(lambda: "configuration reloaded" in gw.stderr_text(), what="the reload")
    assert burst(gw.port, 2, {"X-Client": "a"})[0] == [503, 503]
    assert burst(gw.port, 1, {"X-Client": "b"})[0] == [200]
