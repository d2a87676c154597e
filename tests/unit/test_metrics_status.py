"""Statistics in process: the status module's directives, zero cost when unused, the LOG-phase
counting through the real Dispatcher, the NGINX Plus API objects, the top-talker structure, and
prometheus-client's multiprocess sums (in forked processes, as workers are)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inproc import plan_of, serve
from jwtgate.errors import ConfigError
from jwtgate.modules.status import MetricsHandler, StatsLogger, StatusResource
from jwtgate.observability import metrics, stats

SECRET_JWKS = {"keys": [{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]}
# The reference post's token (sub "quotes", no exp).
POST_TOKEN = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6IjAwMDEifQ."
              "eyJuYW1lIjoiUXVvdGF0aW9uIFN5c3RlbSIsInN1YiI6InF1b3RlcyIsImlzcyI6Ik15IEFQSSBHYXRld2F5In0."
              "ggVOHYnVFB8GVPE-VOIo3jD71gTkLffAY0hQOGXPL2I")


def zone() -> str:
    """A zone name no other test uses (the ordinary registry lives as long as the process)."""
    return "z" + uuid.uuid4().hex[:12]


def all_handlers(plan):
    """Every log and content handler of every server and location of ``plan``."""
    for server in plan.servers:
        yield from server.log
        for loc in _locations(server.locations):
            yield from loc.log
            if loc.content is not None:
                yield loc.content


def _locations(matcher):
    found = [*matcher.exact.values(), *matcher.prefixes, *matcher.regexes, *matcher.named.values()]
    for loc in list(found):
        if loc.children is not None:
            found.extend(_locations(loc.children))
    return found


PLAIN = """
server {
    listen 127.0.0.1:8080;
    location / { return 200 "x"; }
    location /p/ { proxy_pass http://127.0.0.1:9; }
}
"""


def test_no_metrics_api_or_status_zone_adds_nothing(tmp_path):
    plan = plan_of(tmp_path, PLAIN)
    assert not any(isinstance(h, (StatsLogger, MetricsHandler)) for h in all_handlers(plan))
    assert not any(isinstance(r, StatusResource) for r in plan.resources)


@pytest.mark.parametrize("trigger", ["status_zone s;", "location = /m { metrics; }"])
def test_any_trigger_counts_every_location(tmp_path, trigger):
    text = PLAIN.replace('location / {', trigger + '\n    location / {')
    plan = plan_of(tmp_path, text)
    loggers = [h for h in all_handlers(plan) if isinstance(h, StatsLogger)]
    assert len(loggers) >= 2
    assert sum(isinstance(r, StatusResource) for r in plan.resources) == 1


@pytest.mark.parametrize("text, message", [
    ('server { listen 127.0.0.1:8080; status_zone "bad zone"; }', 'invalid zone name "bad zone"'),
    ('server { listen 127.0.0.1:8080; status_zone ""; }', 'invalid zone name ""'),
    ('server { listen 127.0.0.1:8080; location / { metrics on; } }', 'invalid number of arguments in "metrics"'),
    ('status_zone x; server { listen 127.0.0.1:8080; }', '"status_zone" directive is not allowed here'),
    ('server { listen 127.0.0.1:8080; location / { metrics; proxy_pass http://127.0.0.1:9; } }',
     '"metrics" and "proxy_pass" in one location'),
])
def test_bad_configuration_is_refused(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        plan_of(tmp_path, text)
    assert message in str(e.value)


def auth_conf(tmp_path, server_zone: str, loc_zone: str, limit_zone: str) -> str:
    (tmp_path / "keys.jwk").write_text(json.dumps(SECRET_JWKS))
    return f"""
limit_req_zone $jwt_claim_sub zone={limit_zone}:1m rate=1r/m;
server {{
    listen 127.0.0.1:8080;
    status_zone {server_zone};
    location /m {{
        status_zone {loc_zone};
        auth_jwt "x";
        auth_jwt_key_file keys.jwk;
        auth_jwt_require $jwt_claim_admin;
        metrics;
    }}
    location /l {{
        auth_jwt "x";
        auth_jwt_key_file keys.jwk;
        limit_req zone={limit_zone};
        metrics;
    }}
}}
"""


def outcome(reason: str) -> float:
    for family in text_string_to_metric_families(metrics.exposition()[0].decode()):
        for s in family.samples:
            if s.name == "jwtgate_auth_jwt_outcomes_total" and s.labels["reason"] == reason:
                return s.value
    return 0.0


def test_requests_are_counted_from_the_log_phase(tmp_path):
    sz, lz, rz = zone(), zone(), zone()
    plan = plan_of(tmp_path, auth_conf(tmp_path, sz, lz, rz))
    before = {r: outcome(r) for r in metrics.AUTH_REASONS}
    bearer = {"Host": "localhost", "Authorization": f"Bearer {POST_TOKEN}"}
    assert serve(plan, "/m").status == 401                                   # missing
    assert serve(plan, "/m", {"Host": "x", "Authorization": "Bearer a.b"}).status == 401  # malformed
    assert serve(plan, "/m", bearer).status == 401  # require failed: the post's token has no "admin"
    assert serve(plan, "/l", bearer).status == 200                           # ok, limit passed
    assert serve(plan, "/l", bearer).status == 503                           # ok, limit rejected
    after = {r: outcome(r) for r in metrics.AUTH_REASONS}
    delta = {r: after[r] - before[r] for r in after}
    assert delta == {**{r: 0 for r in metrics.AUTH_REASONS}, "missing": 1, "malformed": 1,
                     "require_failed": 1, "ok": 2}

    zones = stats.api_get(plan, ("http", "server_zones"))
    assert set(zones) == {sz}
    z = zones[sz]
    assert z["requests"] == 5 and z["responses"]["4xx"] == 3 and z["responses"]["2xx"] == 1
    assert z["responses"]["5xx"] == 1 and z["responses"]["codes"] == {"200": 1, "401": 3, "503": 1}
    assert z["received"] > 0 and z["sent"] > 0 and z["discarded"] == 0 and z["processing"] == 0
    assert stats.api_get(plan, ("http", "location_zones", lz))["requests"] == 3
    # A request that matches no location counts in its server's zone (NGINX serves it with the
    # server level's configuration), in no location zone.
    assert serve(plan, "/nowhere").status == 404
    z = stats.api_get(plan, ("http", "server_zones", sz))
    assert z["requests"] == 6 and z["responses"]["codes"]["404"] == 1
    assert stats.api_get(plan, ("http", "location_zones", lz))["requests"] == 3
    assert stats.api_get(plan, ("http", "location_zones", "nope")) is None
    assert stats.api_get(plan, ("http", "limit_reqs", rz)) == {
        "passed": 1, "delayed": 0, "rejected": 1, "delayed_dry_run": 0, "rejected_dry_run": 0}
    j = stats.api_get(plan, ("jwtgate",))
    assert set(j) == {"auth", "token_cache", "key_sets", "top_subs", "revocations"}
    assert {"sub": "quotes", "requests": 3} in j["top_subs"]
    (ks,) = j["key_sets"]
    assert ks["source"].endswith("keys.jwk") and set(ks) == {"source", "keys", "last_refresh", "age",
                                                             "fetch_failures"}


def test_require_failure_reason(tmp_path):
    # The post's token has no "admin" claim: auth_jwt_require refuses it (401).
    plan = plan_of(tmp_path, auth_conf(tmp_path, zone(), zone(), zone()))
    before = outcome("require_failed")
    answer = serve(plan, "/m", {"Host": "localhost", "Authorization": f"Bearer {POST_TOKEN}"})
    assert answer.status == 401
    assert outcome("require_failed") == before + 1


def test_unknown_api_paths_are_none(tmp_path):
    plan = plan_of(tmp_path, PLAIN.replace("location / {", "status_zone s;\n    location / {"))
    for parts in [(), ("nope",), ("http",), ("http", "nope"), ("http", "requests", "x"),
                  ("http", "upstreams", "nope"), ("nginx", "x"), ("http", "server_zones", "s", "x")]:
        assert stats.api_get(plan, parts) is None, parts
    nginx = stats.api_get(plan, ("nginx",))
    assert set(nginx) == {"version", "build", "address", "generation", "load_timestamp", "timestamp", "pid", "ppid"}
    up = stats.api_get(plan, ("http", "upstreams"))
    (group,) = up.values()
    assert group["peers"][0]["server"] == "127.0.0.1:9" and group["peers"][0]["state"] == "up"
    json.dumps(stats.api_get(plan, ("jwtgate",)))  # serialisable


def test_auth_reasons_and_classes():
    assert metrics.auth_reason("bad_signature") == "bad_signature"
    assert metrics.auth_reason("no_key") == "bad_signature"
    assert metrics.auth_reason("too_large") == "malformed"
    assert metrics.auth_reason("something new") == "malformed"
    assert metrics.auth_reason("key_unavailable") == "key_unavailable"
    value = object()
    assert metrics.auth_reason(value) == "require_failed"
    assert metrics.auth_reason(value, frozenset({id(value)})) == "revoked"
    assert [metrics.code_class(s) for s in (101, 200, 304, 404, 503, 0, 600)] == \
        ["1xx", "2xx", "3xx", "4xx", "5xx", "other", "other"]
    assert stats.iso_time(0.1234) == "1970-01-01T00:00:00.123Z"


def test_space_saving_is_bounded_and_keeps_heavy_hitters():
    # 6,750 items: anything counted more than 6750 / 20 times is guaranteed to be kept.
    top = metrics.SpaceSaving(capacity=20)
    for i in range(5000):
        top.add(f"noise{i}")
        if i % 4 == 0:
            top.add("heavy")
        if i % 10 == 0:
            top.add("medium")
    assert len(top.counts) == 20
    ranked = top.top(2)
    assert [sub for sub, _ in ranked] == ["heavy", "medium"]
    assert ranked[0][1] >= 1250  # counts are upper bounds


def test_revoked_when_require_depends_on_keyval(tmp_path):
    (tmp_path / "keys.jwk").write_text(json.dumps(SECRET_JWKS))
    (tmp_path / "revoked.json").write_text(json.dumps({"quotes": "1"}))
    text = f"""
keyval_zone zone=rv{uuid.uuid4().hex[:6]}:1m state={tmp_path}/revoked.json;
keyval $jwt_claim_sub $is_revoked zone=ZONE;
map $is_revoked $not_revoked {{ "" 1; default 0; }}
server {{
    listen 127.0.0.1:8080;
    status_zone {zone()};
    location /m {{ auth_jwt "x"; auth_jwt_key_file keys.jwk; auth_jwt_require $not_revoked; metrics; }}
}}
"""
    name = text.split("zone=")[1].split(":")[0]
    plan = plan_of(tmp_path, text.replace("ZONE", name))

    async def open_zones():  # the keyval zone reads its state file when it opens
        for resource in plan.resources:
            if not isinstance(resource, StatusResource):
                await resource.open({})
    asyncio.run(open_zones())
    before = outcome("revoked")
    assert serve(plan, "/m", {"Host": "localhost", "Authorization": f"Bearer {POST_TOKEN}"}).status == 401
    assert outcome("revoked") == before + 1


MULTIPROCESS = textwrap.dedent("""
    import os, sys, json
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from jwtgate.observability import metrics
    pids = []
    for n in (3, 4):
        pid = os.fork()
        if pid == 0:
            m = metrics.get_metrics()
            m.auth.labels("ok").inc(n)
            m.connections.labels("active").set(n)
            for _ in range(n):
                metrics.count_sub("alice")
            metrics.count_sub("bob" if n == 3 else "carol")
            metrics.write_top_snapshot()
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    samples = metrics.collect_samples()
    out = {"ok": sum(v for l, v in samples["jwtgate_auth_jwt_outcomes_total"] if l["reason"] == "ok"),
           "active": sum(v for l, v in samples["jwtgate_connections"] if l["state"] == "active"),
           "top": metrics.top_subs()}
    metrics.mark_process_dead(pids[0])
    samples = metrics.collect_samples()
    out["ok_after"] = sum(v for l, v in samples["jwtgate_auth_jwt_outcomes_total"] if l["reason"] == "ok")
    out["active_after"] = sum(v for l, v in samples["jwtgate_connections"] if l["state"] == "active")
    # A dead process's snapshot under this process's (reused) pid is adopted, not overwritten.
    with open(os.path.join(sys.argv[1], f"topsubs_{os.getpid()}.json"), "w") as f:
        json.dump({"old": 5}, f)
    metrics.count_sub("new")
    metrics.write_top_snapshot()
    with open(os.path.join(sys.argv[1], f"topsubs_{os.getpid()}.json")) as f:
        out["adopted"] = json.load(f)
    out["top_after"] = metrics.top_subs()
    print(json.dumps(out))
""")


def test_multiprocess_sums_over_forked_processes(tmp_path):
    d = tmp_path / "metrics"
    d.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", MULTIPROCESS, str(d)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["ok"] == 7 and got["active"] == 7
    assert got["top"][0] == {"sub": "alice", "requests": 7}
    assert {"sub": "bob", "requests": 1} in got["top"] and {"sub": "carol", "requests": 1} in got["top"]
    # A dead worker's counters stay (a reload must not lower totals); its live gauges go.
    assert got["ok_after"] == 7 and got["active_after"] == 4
    assert got["adopted"] == {"old": 5, "new": 1}
    assert {"sub": "old", "requests": 5} in got["top_after"] and {"sub": "new", "requests": 1} in got["top_after"]
    assert got["top_after"][0] == {"sub": "alice", "requests": 7}


RETIRE = textwrap.dedent("""
    import os, sys, json
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from jwtgate.observability import metrics
    for n in range(60):  # sixty workers retired by reloads, each with its own clients
        pid = os.fork()
        if pid == 0:
            metrics.get_metrics()
            for _ in range(3):
                metrics.count_sub("alice")
            for i in range(10):
                metrics.count_sub(f"w{n}-c{i}")
            metrics.write_top_snapshot()
            os._exit(0)
        os.waitpid(pid, 0)
        metrics.mark_process_dead(pid)  # what the master does when it reaps a worker
    names = sorted(n for n in os.listdir(sys.argv[1]) if n.startswith("topsubs_"))
    with open(os.path.join(sys.argv[1], "topsubs_retired.json")) as f:
        retired = json.load(f)
    print(json.dumps({"files": names, "top": metrics.top_subs(), "retired": len(retired)}))
""")


def test_dead_workers_snapshots_are_folded_not_kept_one_file_each(tmp_path):
    """Every reload left one top-talker snapshot per worker, and ``/api/9/jwtgate`` (polled
    every second by the dashboard) read and parsed all of them in the worker's event loop: with
    2,000 retired workers one call took a second. The master folds a dead worker's snapshot
    into one retired file of at most TOP_CAPACITY clients; the top counts are unchanged."""
    d = tmp_path / "metrics"
    d.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", RETIRE, str(d)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["files"] == ["topsubs_retired.json"]
    assert got["retired"] == metrics.TOP_CAPACITY
    assert got["top"][0] == {"sub": "alice", "requests": 180}


def sample(name: str, **labels: str) -> float:
    return sum(v for lab, v in metrics.collect_samples().get(name, [])
               if all(lab.get(k) == want for k, want in labels.items()))


def test_collector_copies_key_sources_and_peer_health():
    from types import SimpleNamespace

    from jwtgate.errors import KeySourceError
    from jwtgate.jose.remote import RemoteKeySource
    from jwtgate.upstream.balancer import Balancer, Peer
    from jwtgate.upstream.pool import ConnectionPool

    answers = [KeySourceError("connection refused"), json.dumps(SECRET_JWKS).encode()]

    async def fetch() -> bytes:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    name = f'auth_jwt_key_request "/{zone()}"'
    remote = RemoteKeySource(name, fetch)
    peer = Peer("127.0.0.1", 9, "127.0.0.1:9", max_fails=1)
    backup = Peer("127.0.0.1", 10, "127.0.0.1:10", backup=True)  # a lone server never goes unavailable
    group = SimpleNamespace(name=zone(), balancer=Balancer([peer, backup]), pool=ConnectionPool())
    build = SimpleNamespace(shared={"auth_jwt": {"verifiers": {}, "keysets": {}, "remotes": {"r": remote}},
                                    "proxy": {"groups": {"g": group}}})
    collector = metrics.Collector(build)
    assert asyncio.run(remote.refresh_now()) is False
    collector.sync(force=True)
    assert sample("jwtgate_auth_jwt_keys_fetch_failures_total", source=name) == 1
    assert sample("jwtgate_auth_jwt_keys", source=name) == 0
    assert sample("jwtgate_upstream_peer_up", upstream=group.name, peer=peer.address) == 1
    assert asyncio.run(remote.refresh_now()) is True
    group.balancer.failed(peer)
    collector.sync(force=True)
    collector.sync(force=True)  # copies deltas: a second copy adds nothing
    assert sample("jwtgate_auth_jwt_keys", source=name) == 1
    assert sample("jwtgate_auth_jwt_keys_fetch_failures_total", source=name) == 1
    assert abs(sample("jwtgate_auth_jwt_keys_last_refresh_timestamp_seconds", source=name) - time.time()) < 5
    assert sample("jwtgate_upstream_peer_up", upstream=group.name, peer=peer.address) == 0
    assert sample("jwtgate_upstream_peer_fails_total", upstream=group.name, peer=peer.address) == 1
    assert sample("jwtgate_upstream_peer_unavailable_total", upstream=group.name, peer=peer.address) == 1
    peer_obj = stats._upstream(stats._Samples(), group)["peers"][0]
    assert peer_obj["state"] == "unavail" and peer_obj["fails"] == 1 and peer_obj["unavail"] == 1


def precreate_conf(tmp_path, upstream: str, limit_zone: str) -> str:
    (tmp_path / "keys.jwk").write_text(json.dumps(SECRET_JWKS))
    return f"""
upstream {upstream} {{ server 127.0.0.1:9 max_fails=1; server 127.0.0.1:10 backup; }}
limit_req_zone $jwt_claim_sub zone={limit_zone}:1m rate=1r/m;
server {{
    listen 127.0.0.1:8080;
    status_zone s;
    location /p/ {{
        auth_jwt "x";
        auth_jwt_key_file keys.jwk;
        limit_req zone={limit_zone};
        proxy_pass http://{upstream};
    }}
}}
"""


def _open_status_resource(plan) -> None:
    async def run():
        for resource in plan.resources:
            if isinstance(resource, StatusResource):
                await resource.open({})
                await resource.close()
    asyncio.run(run())


def test_series_known_from_the_configuration_exist_at_zero(tmp_path):
    """Alerts must be writable ahead: series whose label values the configuration fixes are
    exported at 0 before anything happens (they were missing until their first non-zero value)."""
    upstream, limit_zone = zone(), zone()
    plan = plan_of(tmp_path, precreate_conf(tmp_path, upstream, limit_zone))
    _open_status_resource(plan)
    found = {}
    for family in text_string_to_metric_families(metrics.exposition()[0].decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name, **labels):
        return found.get((name, tuple(sorted(labels.items()))))

    for reason in metrics.AUTH_REASONS:
        assert value("jwtgate_auth_jwt_outcomes_total", reason=reason) is not None, reason
    for decision in metrics.LIMIT_REQ_DECISIONS:
        assert value("jwtgate_limit_req_decisions_total", zone=limit_zone, decision=decision) == 0, decision
    for peer in ("127.0.0.1:9", "127.0.0.1:10"):
        assert value("jwtgate_upstream_peer_fails_total", upstream=upstream, peer=peer) == 0
        assert value("jwtgate_upstream_peer_unavailable_total", upstream=upstream, peer=peer) == 0
        assert value("jwtgate_upstream_peer_up", upstream=upstream, peer=peer) == 1
    assert value("jwtgate_auth_jwt_keys_fetch_failures_total", source=str(tmp_path / "keys.jwk")) == 0


PRECREATE_MULTIPROCESS = textwrap.dedent("""
    import asyncio, os, sys, json
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from jwtgate.conf.plan import compile_plan
    from jwtgate.modules.status import StatusResource
    from jwtgate.observability import metrics
    pids = []
    for n in (0, 2):  # two workers of one configuration; the second counts two failures
        pid = os.fork()
        if pid == 0:
            plan = compile_plan(sys.argv[2])
            async def run():
                for resource in plan.resources:
                    if isinstance(resource, StatusResource):
                        await resource.open({})
                        await resource.close()
            asyncio.run(run())
            if n:
                metrics.get_metrics().peer_fails.labels(sys.argv[3], "127.0.0.1:9").inc(n)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    print(json.dumps({"text": metrics.exposition()[0].decode(), "samples": metrics.collect_samples()}))
""")


def test_precreated_series_in_multiprocess_mode(tmp_path):
    d = tmp_path / "metrics"
    d.mkdir()
    upstream, limit_zone = zone(), zone()
    conf = tmp_path / "gw.conf"
    conf.write_text(precreate_conf(tmp_path, upstream, limit_zone))
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", PRECREATE_MULTIPROCESS, str(d), str(conf), upstream],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    text, samples = got["text"], got["samples"]
    for name in ("jwtgate_upstream_peer_fails_total", "jwtgate_upstream_peer_unavailable_total",
                 "jwtgate_auth_jwt_keys_fetch_failures_total", "jwtgate_limit_req_decisions_total",
                 "jwtgate_auth_jwt_outcomes_total"):
        base = name.removesuffix("_total")
        assert f"# HELP {name}" in text or f"# HELP {base}" in text, name
        assert f"# TYPE {name}" in text or f"# TYPE {base} counter" in text, name

    def rows(name, **labels):
        return [v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]

    # summed over the two workers: exact (the zero entries add nothing)
    assert rows("jwtgate_upstream_peer_fails_total", upstream=upstream, peer="127.0.0.1:9") == [2]
    assert rows("jwtgate_upstream_peer_fails_total", upstream=upstream, peer="127.0.0.1:10") == [0]
    assert rows("jwtgate_upstream_peer_unavailable_total", upstream=upstream, peer="127.0.0.1:9") == [0]
    assert sorted(lab["reason"] for lab, _ in samples["jwtgate_auth_jwt_outcomes_total"]) == \
        sorted(metrics.AUTH_REASONS)
    assert all(v == 0 for _, v in samples["jwtgate_auth_jwt_outcomes_total"])
    assert sorted(lab["decision"] for lab, _ in samples["jwtgate_limit_req_decisions_total"]) == \
        sorted(metrics.LIMIT_REQ_DECISIONS)
    assert rows("jwtgate_auth_jwt_keys_fetch_failures_total", source=str(tmp_path / "keys.jwk")) == [0]
