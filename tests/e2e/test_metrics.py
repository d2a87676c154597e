"""Metrics and statistics end to end: a scripted mix of requests against the real gateway, then
the Prometheus exposition of ``metrics;`` and the NGINX Plus API objects must count exactly
that mix; with one process, with two workers (numbers summed over workers), and across a
SIGHUP reload (counters keep their totals)."""

from __future__ import annotations

import json
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jwtgate_e2e import bearer, curl, fetch, mint_hs, now, request, tamper_signature, wait_until

CONF = """
{main}
limit_req_zone $jwt_claim_sub zone=per_sub:1m rate=1r/m;
keyval_zone zone=revoked:1m state={tmp}/revoked.json;
keyval $jwt_claim_jti $jwt_revoked zone=revoked;
map $jwt_revoked $jwt_not_revoked {{
    ""      1;
    default 0;
}}
upstream backend {{
    server 127.0.0.1:{up};
}}
server {{
    listen 127.0.0.1:{{port}};
    status_zone gateway;
    auth_jwt_key_file {tmp}/keys.jwk;

    location /api/ {{
        status_zone api;
        auth_jwt "API";
        auth_jwt_require $jwt_not_revoked;
        proxy_pass http://backend;
        proxy_set_header X-Worker $pid;
    }}
    location /admin/ {{
        auth_jwt "API";
        auth_jwt_require $jwt_claim_admin error=403;
        proxy_pass http://backend;
    }}
    location /limited/ {{
        auth_jwt "API";
        limit_req zone=per_sub;
        proxy_pass http://backend;
    }}
}}
server {{
    listen 127.0.0.1:{{port}};
    server_name stats;
    location = /metrics {{
        metrics;
    }}
    location /api9/ {{
        api;
    }}
}}
"""

KEYS = {"keys": [{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]}


def good(sub: str = "alice", **claims) -> str:
    return mint_hs({"sub": sub, "exp": now() + 3600, **claims})


def scrape(port: int, accept: str | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/metrics`` by (name, sorted labels); checks the text parses."""
    headers = {"Accept": accept} if accept else None
    r = fetch(port, "/metrics", "stats", headers=headers)
    assert r.status == 200, r.body
    assert r.header("Content-Type").startswith("text/plain; version=")
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(r.body.decode()):
        assert family.name.startswith("jwtgate_"), family.name
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            out[key] = out.get(key, 0.0) + s.value
    return out


def total(samples: dict, name: str, **labels) -> int:
    return int(sum(v for (n, lab), v in samples.items()
                   if n == name and all(dict(lab).get(k) == want for k, want in labels.items())))


def api(port: int, path: str):
    r = fetch(port, f"/api9/9/{path}", "stats")
    assert r.status == 200, (path, r.status, r.body)
    assert r.header("Content-Type").startswith("application/json")
    return json.loads(r.body)


@pytest.fixture
def setup(tmp_path, upstream):
    (tmp_path / "keys.jwk").write_text(json.dumps(KEYS))
    (tmp_path / "revoked.json").write_text(json.dumps({"jti-revoked": "1"}))
    return tmp_path


def run_mix(port: int, n_good: int = 6) -> dict:
    """The scripted mix; returns what every counter must show afterwards."""
    token = good("alice")
    for _ in range(n_good):
        assert request(port, "GET", "/api/x", headers=bearer(token)).status == 200
    assert request(port, "GET", "/api/x", headers=bearer(tamper_signature(token))).status == 401
    expired = mint_hs({"sub": "carol", "exp": now() - 60})
    assert request(port, "GET", "/api/x", headers=bearer(expired)).status == 401
    assert request(port, "GET", "/api/x").status == 401  # missing
    assert request(port, "GET", "/api/x", headers=bearer("not-a-token")).status == 401  # malformed
    not_admin = good("dave")
    assert request(port, "GET", "/admin/x", headers=bearer(not_admin)).status == 403  # require failed
    revoked = good("erin", jti="jti-revoked")
    assert request(port, "GET", "/api/x", headers=bearer(revoked)).status == 401  # revoked
    bob = good("bob")
    assert [request(port, "GET", "/limited/x", headers=bearer(bob)).status for _ in range(3)] == [200, 503, 503]
    # Distinct tokens verified: alice, tampered, expired, not-a-token, dave, erin, bob -> 7
    # misses; alice's later requests and bob's 2 repeats hit.
    return {
        "ok": n_good + 3, "bad_signature": 1, "expired": 1, "missing": 1, "malformed": 1,
        "require_failed": 1, "revoked": 1, "not_yet_valid": 0, "wrong_type": 0, "key_unavailable": 0,
        "hits": (n_good - 1) + 2, "misses": 7,
        "2xx": n_good + 1, "4xx": 6, "5xx": 2, "api_requests": n_good + 5,
        "passed": 1, "rejected": 2, "upstream": n_good + 1,
        "top": [("alice", n_good), ("bob", 3), ("dave", 1), ("erin", 1)],
    }


def check_metrics(samples: dict, want: dict, times: int = 1) -> None:
    for reason in ("ok", "bad_signature", "expired", "missing", "malformed", "require_failed", "revoked",
                   "not_yet_valid", "wrong_type", "key_unavailable"):
        got = total(samples, "jwtgate_auth_jwt_outcomes_total", reason=reason)
        assert got == want[reason] * times, (reason, got)
    assert total(samples, "jwtgate_auth_jwt_token_cache_hits_total") == want["hits"] * times
    assert total(samples, "jwtgate_auth_jwt_token_cache_misses_total") == want["misses"] * times
    for cls in ("2xx", "4xx", "5xx"):
        assert total(samples, "jwtgate_http_requests_total", server_zone="gateway", code_class=cls) \
            == want[cls] * times, cls
    assert total(samples, "jwtgate_http_location_requests_total", location_zone="api") == want["api_requests"] * times
    assert total(samples, "jwtgate_limit_req_decisions_total", zone="per_sub", decision="passed") \
        == want["passed"] * times
    assert total(samples, "jwtgate_limit_req_decisions_total", zone="per_sub", decision="rejected") \
        == want["rejected"] * times
    assert total(samples, "jwtgate_upstream_response_time_seconds_count", upstream="backend") \
        == want["upstream"] * times
    assert total(samples, "jwtgate_upstream_peer_up", upstream="backend") == 1
    assert total(samples, "jwtgate_auth_jwt_keys") == 1


def test_scripted_mix_counts_exactly_in_metrics_and_api(gateway, upstream, setup):
    gw = gateway(CONF.format(main="", tmp=setup, up=upstream.port))
    port = gw.port
    before = scrape(port)
    assert total(before, "jwtgate_auth_jwt_outcomes_total") == 0
    want = run_mix(port)
    samples = scrape(port)
    check_metrics(samples, want)
    # Connections: every request above came on its own connection.
    assert total(samples, "jwtgate_connections_accepted_total") >= 17  # the mix and both scrapes
    assert total(samples, "jwtgate_connections", state="active") >= 1

    # The NGINX Plus API objects, built from the same numbers.
    j = api(port, "jwtgate")
    assert j["auth"]["outcomes"] == {k: want[k] for k in (
        "ok", "missing", "malformed", "bad_signature", "expired", "not_yet_valid", "wrong_type",
        "require_failed", "revoked", "key_unavailable")}
    assert list(j["auth"]["outcomes"]) == ["ok", "missing", "malformed", "bad_signature", "expired",
                                           "not_yet_valid", "wrong_type", "require_failed", "revoked",
                                           "key_unavailable"]
    assert j["token_cache"] == {"hits": want["hits"], "misses": want["misses"]}
    assert [(t["sub"], t["requests"]) for t in j["top_subs"]] == want["top"]
    assert j["revocations"] == {"revoked": 1}
    (ks,) = j["key_sets"]
    assert ks["source"].endswith("keys.jwk") and ks["keys"] == 1 and ks["fetch_failures"] == 0
    assert abs(ks["last_refresh"] - time.time()) < 60 and 0 <= ks["age"] < 60

    zones = api(port, "http/server_zones")
    assert set(zones) == {"gateway"}
    z = zones["gateway"]
    assert set(z) == {"processing", "requests", "responses", "discarded", "received", "sent"}
    assert z["responses"]["2xx"] == want["2xx"] and z["responses"]["4xx"] == want["4xx"]
    assert z["responses"]["codes"]["503"] == 2 and z["responses"]["codes"]["403"] == 1
    assert z["responses"]["total"] == z["requests"] == want["2xx"] + want["4xx"] + want["5xx"]
    assert z["received"] > 0 and z["sent"] > 0
    assert api(port, "http/location_zones/api")["requests"] == want["api_requests"]
    assert api(port, "http/limit_reqs") == {"per_sub": {"passed": 1, "delayed": 0, "rejected": 2,
                                                        "delayed_dry_run": 0, "rejected_dry_run": 0}}
    up = api(port, "http/upstreams/backend")
    assert set(up) == {"peers", "keepalive", "zombies", "zone"}
    (peer,) = up["peers"]
    assert peer["server"] == f"127.0.0.1:{upstream.port}" and peer["state"] == "up"
    assert peer["requests"] == want["upstream"] and peer["responses"]["2xx"] == want["upstream"]
    assert peer["selected"].endswith("Z") and peer["fails"] == 0 and peer["backup"] is False
    for key in ("id", "name", "weight", "active", "sent", "received", "unavail", "downtime",
                "header_time", "response_time", "health_checks"):
        assert key in peer
    nginx = api(port, "nginx")
    assert set(nginx) == {"version", "build", "address", "generation", "load_timestamp", "timestamp", "pid", "ppid"}
    assert nginx["generation"] == 1 and nginx["address"] == "127.0.0.1"
    assert nginx["timestamp"].endswith("Z") and nginx["load_timestamp"] < nginx["timestamp"]
    conns = api(port, "connections")
    assert set(conns) == {"accepted", "dropped", "active", "idle"} and conns["accepted"] >= 17
    reqs = api(port, "http/requests")
    assert set(reqs) == {"total", "current"} and reqs["current"] >= 1
    assert reqs["total"] >= want["2xx"] + want["4xx"] + want["5xx"]
    assert fetch(port, "/api9/9/http/server_zones/nope", "stats").status == 404

    # OpenMetrics when asked for, through real curl.
    res = curl(f"http://127.0.0.1:{port}/metrics", "-H", "Host: stats", "-H", "Accept: application/openmetrics-text")
    assert res.status == 200
    assert res.header("Content-Type").startswith("application/openmetrics-text")
    assert res.body.rstrip().endswith(b"# EOF")
    # Only GET/HEAD.
    assert fetch(port, "/metrics", "stats", method="POST").status == 405


def test_two_workers_sum_and_survive_a_reload(gateway, upstream, setup):
    text = CONF.format(main="worker_processes 2;", tmp=setup, up=upstream.port)
    path, port = gateway.write_conf(text)
    gw = gateway.run_file(path, port)
    # Enough requests on separate connections that both workers serve some.
    token = good("alice")
    workers = set()
    deadline = time.monotonic() + 20
    sent = 0
    while (len(workers) < 2 or sent < 10) and time.monotonic() < deadline:
        assert request(port, "GET", "/api/x", headers=bearer(token)).status == 200
        workers.add(upstream.last.values("X-Worker")[0])
        sent += 1
    assert len(workers) == 2, "both workers must serve"
    # A worker counts a request right after answering it: another worker's scrape may come a
    # moment earlier, so wait for the sums (they must then be exact).
    def settled(expect: dict) -> dict:
        def check():
            try:
                samples = scrape(port)
            except OSError:  # the master's reload gap (old workers closing their sockets)
                return None
            got = {k: total(samples, *k[0:1], **dict(k[1:])) for k in expect}
            return samples if got == expect else None
        return wait_until(check, timeout=5, what=f"the sums {expect}")

    ok = ("jwtgate_auth_jwt_outcomes_total", ("reason", "ok"))
    ok_2xx = ("jwtgate_http_requests_total", ("server_zone", "gateway"), ("code_class", "2xx"))
    misses = ("jwtgate_auth_jwt_token_cache_misses_total",)
    hits = ("jwtgate_auth_jwt_token_cache_hits_total",)
    # Each worker's verified-token cache missed alice's token once.
    settled({ok: sent, ok_2xx: sent, misses: 2, hits: sent - 2})
    # Top talkers merged over workers (snapshots within a second).
    wait_until(lambda: api(port, "jwtgate")["top_subs"] == [{"sub": "alice", "requests": sent}],
               timeout=5, what="merged top_subs")

    # SIGHUP: new workers, the totals stay and keep growing.
    gw.send_signal(signal.SIGHUP)

    def generation() -> int:
        try:
            return api(port, "nginx")["generation"]
        except OSError:
            return 0
    wait_until(lambda: generation() == 2, timeout=10, what="the reload")
    settled({ok: sent, ok_2xx: sent})
    for _ in range(4):
        assert request(port, "GET", "/api/x", headers=bearer(token)).status == 200
    assert request(port, "GET", "/api/x").status == 401
    missing = ("jwtgate_auth_jwt_outcomes_total", ("reason", "missing"))
    final = settled({ok: sent + 4, ok_2xx: sent + 4, missing: 1})
    # Live gauges of the retired workers are gone: the peer is up once (livemin over workers).
    assert total(final, "jwtgate_upstream_peer_up", upstream="backend") == 1
    assert total(final, "jwtgate_connections", state="active") >= 1


def test_single_process_reload_keeps_counters(gateway, upstream, setup):
    gw = gateway(CONF.format(main="", tmp=setup, up=upstream.port))
    port = gw.port
    want = run_mix(port)
    gw.send_signal(signal.SIGHUP)
    wait_until(lambda: api(port, "nginx")["generation"] == 2, timeout=10, what="the reload")
    check_metrics(scrape(port), want)
    token = good("alice")
    for _ in range(3):
        assert request(port, "GET", "/api/x", headers=bearer(token)).status == 200
    # bob stays limited: the zone's state is kept across the reload, as NGINX keeps it.
    assert request(port, "GET", "/limited/x", headers=bearer(good("bob"))).status == 503
    samples = scrape(port)
    assert total(samples, "jwtgate_auth_jwt_outcomes_total", reason="ok") == want["ok"] + 4
    assert total(samples, "jwtgate_limit_req_decisions_total", zone="per_sub", decision="rejected") == 3
    assert total(samples, "jwtgate_http_location_requests_total", location_zone="api") == want["api_requests"] + 3


def test_unused_configuration_serves_no_metrics_endpoint(gateway, upstream, setup):
    text = CONF.format(main="", tmp=setup, up=upstream.port)
    text = text.replace("status_zone gateway;", "").replace("status_zone api;", "") \
        .replace("metrics;", "return 204;").replace("api;", "return 204;")
    gw = gateway(text)
    assert fetch(gw.port, "/metrics", "stats").status == 204


@pytest.mark.parametrize("main", ["", "worker_processes 2;"])
def test_series_known_from_the_configuration_are_there_before_any_event(gateway, upstream, setup, main):
    """Alerts are written ahead: on a fresh, healthy gateway the series whose labels the
    configuration fixes are scraped at 0 (they used to appear only at their first non-zero value)."""
    text = CONF.format(main=main, tmp=setup, up=upstream.port)
    path, port = gateway.write_conf(text)
    gateway.run_file(path, port)
    samples = scrape(port)
    for reason in ("ok", "missing", "malformed", "bad_signature", "expired", "not_yet_valid", "wrong_type",
                   "require_failed", "revoked", "key_unavailable"):
        assert (("jwtgate_auth_jwt_outcomes_total", (("reason", reason),))) in samples, reason
    for decision in ("passed", "delayed", "rejected", "delayed_dry_run", "rejected_dry_run"):
        key = ("jwtgate_limit_req_decisions_total", (("decision", decision), ("zone", "per_sub")))
        assert samples.get(key) == 0, decision
    peer = (("peer", f"127.0.0.1:{upstream.port}"), ("upstream", "backend"))
    assert samples.get(("jwtgate_upstream_peer_fails_total", peer)) == 0
    assert samples.get(("jwtgate_upstream_peer_unavailable_total", peer)) == 0
    assert samples.get(("jwtgate_upstream_peer_up", peer)) == 1
    assert samples.get(("jwtgate_auth_jwt_keys_fetch_failures_total", (("source", f"{setup}/keys.jwk"),))) == 0
    assert total(samples, "jwtgate_auth_jwt_outcomes_total") == 0
