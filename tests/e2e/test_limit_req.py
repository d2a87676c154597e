"""``limit_req_zone`` / ``limit_req``: the post's per-client rate limit keyed by the JWT ``sub``,
and the ordering rules around authentication.

Bursts go over one keep-alive connection so that 30 requests take a few tens of
milliseconds; at 10 r/s that leaks well under one request."""

from __future__ import annotations

import http.client
import time

from jwtgate_e2e import POST_TOKEN, bearer, mint_hs, post_conf, request

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
