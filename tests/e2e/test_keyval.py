"""keyval zones and live revocation, end to end: the real gateway, the real API, real curl.

The NGINX Plus revocation pattern (``keyval $jwt_claim_jti $jwt_revoked``, a ``map``,
``auth_jwt_require``) with the verified-token cache on: a token revoked through the API fails on
the very next request, in one process, with two worker processes, and on a second gateway
instance sharing Redis (``sync``); ``state=`` survives a restart; ``timeout=`` and ``expire``
remove entries; a corrupt state file starts the zone empty.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from jwtgate_e2e import curl, mint_hs, now, request, wait_until

API = "/api/9/http/keyvals"


def conf(zone_args: str = "", extra_http: str = "", workers: int = 1, api_extra: str = "",
         zone: str = "revoked", key: str = "$jwt_claim_jti") -> str:
    return f"""
worker_processes {workers};
http {{
    {extra_http}
    keyval_zone zone={zone}:64k {zone_args};
    keyval {key} $jwt_revoked zone={zone};
    map $jwt_revoked $valid_jti {{ "" 1; default 0; }}
    server {{
        listen 127.0.0.1:{{port}};
        location /api {{ api write=on; allow 127.0.0.1; deny all; {api_extra} }}
        location /products/ {{
            auth_jwt "Products API";
            auth_jwt_key_file {{keys}};
            auth_jwt_cache on;
            auth_jwt_require $valid_jti;
            add_header X-Pid $pid always;
            proxy_pass http://127.0.0.1:{{upstream_port}};
        }}
    }}
}}
"""


def token(jti: str = "jti-1", sub: str = "quotes", **claims) -> str:
    return mint_hs({"sub": sub, "jti": jti, "exp": now() + 3600, **claims})


def api(port: int, method: str, path: str, body=None, conn=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    return request(port, method, path, body=data, conn=conn)


def status(port: int, tok: str, conn=None) -> int:
    return request(port, "GET", "/products/x", {"Authorization": f"Bearer {tok}"}, conn=conn).status


class Loop:
    """Clients requesting /products/x with one token as fast as they can, recording
    ``(start, end, status, pid)`` of every request (keep-alive or a connection per request)."""

    def __init__(self, port: int, tok: str, threads: int = 1, keepalive: bool = True) -> None:
        self.port, self.tok, self.keepalive = port, tok, keepalive
        self.records: list[tuple[float, float, int, str]] = []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10) if self.keepalive else None
        headers = {"Authorization": f"Bearer {self.tok}"}
        if not self.keepalive:
            headers["Connection"] = "close"
        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                r = request(self.port, "GET", "/products/x", headers, conn=conn)
                self.records.append((t0, time.monotonic(), r.status, r.header("X-Pid") or ""))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self) -> Loop:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        assert not self.errors, self.errors

    def wait_for(self, n: int, what=lambda r: True, timeout: float = 20.0) -> None:
        wait_until(lambda: sum(1 for r in list(self.records) if what(r)) >= n, timeout=timeout,
                   what=f"{n} requests")


def check_cutover(records, sent: float, answered: float) -> None:
    """Every request that started after the API answered was refused; every one that ended
    before the API request was sent was let through."""
    after = [r for r in records if r[0] > answered]
    before = [r for r in records if r[1] < sent]
    assert before and after, (len(before), len(after))
    assert {r[2] for r in before} == {200}
    assert {r[2] for r in after} == {401}, [r[2] for r in after][:20]


def test_revocation_applies_to_the_next_request_with_the_cache_on(gateway):
    gw = gateway(conf())
    tok = token("loop-1")
    with Loop(gw.port, tok) as loop:
        loop.wait_for(30)
        sent = time.monotonic()
        r = api(gw.port, "POST", f"{API}/revoked", {"loop-1": "1"})
        answered = time.monotonic()
        assert r.status == 201, r.body
        # the very first request after the answer, on a new connection, is refused
        assert status(gw.port, tok) == 401
        loop.wait_for(30, lambda rec: rec[0] > answered)
    check_cutover(loop.records, sent, answered)
    # other tokens are not affected; the refusal says why as NGINX Plus does
    assert status(gw.port, token("other")) == 200
    r = request(gw.port, "GET", "/products/x", {"Authorization": f"Bearer {tok}"})
    assert r.header("WWW-Authenticate") == 'Bearer realm="Products API", error="invalid_token"'
    # and lifting the revocation lets it in again at once
    assert api(gw.port, "PATCH", f"{API}/revoked", {"loop-1": None}).status == 204
    assert status(gw.port, tok) == 200


def test_revocation_reaches_every_worker_before_the_api_answers(gateway):
    gw = gateway(conf(workers=2))
    tok = token("loop-2")
    with Loop(gw.port, tok, threads=4, keepalive=False) as loop:
        loop.wait_for(2, lambda rec: True)
        wait_until(lambda: len({r[3] for r in list(loop.records)}) >= 2, timeout=20,
                   what="both workers serving")
        sent = time.monotonic()
        r = api(gw.port, "POST", f"{API}/revoked", {"loop-2": "1"})
        answered = time.monotonic()
        assert r.status == 201, r.body
        # both workers refuse it from then on
        wait_until(lambda: len({r[3] for r in list(loop.records) if r[0] > answered}) >= 2, timeout=20,
                   what="both workers after the revocation")
        loop.wait_for(40, lambda rec: rec[0] > answered)
    check_cutover(loop.records, sent, answered)
    pids_before = {r[3] for r in loop.records if r[1] < sent}
    pids_after = {r[3] for r in loop.records if r[0] > answered}
    assert len(pids_before) == 2 and len(pids_after) == 2, (pids_before, pids_after)
    # a write through one worker and a read through the other agree
    assert api(gw.port, "GET", f"{API}/revoked?key=loop-2").json() == {"loop-2": "1"}


def test_sync_zone_applies_on_another_instance_within_a_second(gateway, redis_url):
    text = conf("timeout=1h sync", extra_http=f"state_redis {redis_url};")
    gw1, gw2 = gateway(text), gateway(text)
    tok = token("shared-1")
    assert status(gw1.port, tok) == 200 and status(gw2.port, tok) == 200
    r = api(gw1.port, "POST", f"{API}/revoked", {"shared-1": "1"})
    answered = time.monotonic()
    assert r.status == 201, r.body
    assert status(gw1.port, tok) == 401
    wait_until(lambda: status(gw2.port, tok) == 401, timeout=3, interval=0.01, what="the other instance")
    took = time.monotonic() - answered
    assert took < 1.0, took
    assert api(gw2.port, "GET", f"{API}/revoked").json() == {"shared-1": "1"}
    # a deletion on the second instance applies on the first
    assert api(gw2.port, "PATCH", f"{API}/revoked", {"shared-1": None}).status == 204
    wait_until(lambda: status(gw1.port, tok) == 200, timeout=1.0, interval=0.01, what="unrevoked on gw1")
    # and emptying the zone too
    api(gw1.port, "POST", f"{API}/revoked", {"a": "1", "b": "1"})
    wait_until(lambda: api(gw2.port, "GET", f"{API}/revoked").json() == {"a": "1", "b": "1"}, timeout=1.0)
    assert api(gw2.port, "DELETE", f"{API}/revoked").status == 204
    wait_until(lambda: api(gw1.port, "GET", f"{API}/revoked").json() == {}, timeout=1.0)


def test_sync_zone_with_two_workers_each(gateway, redis_url):
    text = conf("sync", extra_http=f"state_redis {redis_url};", workers=2)
    gw1, gw2 = gateway(text), gateway(text)
    tok = token("shared-2")
    assert api(gw1.port, "POST", f"{API}/revoked", {"shared-2": "1"}).status == 201
    time.sleep(1.0)
    codes = {status(gw2.port, tok) for _ in range(20)} | {status(gw1.port, tok) for _ in range(20)}
    assert codes == {401}


def test_sync_survives_a_redis_outage(gateway, redis_factory):
    server = redis_factory()
    text = conf("sync", extra_http=f"state_redis {server.url} timeout=200ms;")
    gw1, gw2 = gateway(text), gateway(text)
    tok = token("outage")
    assert api(gw1.port, "POST", f"{API}/revoked", {"outage": "1"}).status == 201
    wait_until(lambda: status(gw2.port, tok) == 401, timeout=1.0, what="synced")
    server.stop()
    # the last copy keeps serving; writes are refused with a clear error, not a hang
    assert status(gw1.port, tok) == 401 and status(gw2.port, tok) == 401
    t0 = time.monotonic()
    r = api(gw1.port, "POST", f"{API}/revoked", {"other": "1"})
    assert r.status == 503 and r.json()["error"]["code"] == "KeyvalSyncUnavailable", r.body
    assert time.monotonic() - t0 < 2
    assert status(gw1.port, token("ok")) == 200
    server.start()
    # recovers by itself: a write on one instance reaches the other again
    wait_until(lambda: api(gw1.port, "POST", f"{API}/revoked", {"after": "1"}).status == 201, timeout=10,
               interval=0.3, what="writes accepted again")
    wait_until(lambda: status(gw2.port, token("after")) == 401, timeout=3, what="synced after recovery")
    assert "Redis" in gw1.stderr_text() and "Traceback" not in gw1.stderr_text()


def test_state_file_survives_a_restart(gateway, tmp_path):
    state = tmp_path / "revoked.keyval"
    text = conf(f"state={state} timeout=1h")
    gw = gateway(text)
    tok = token("persist-1")
    assert api(gw.port, "POST", f"{API}/revoked", {"persist-1": "1", "forever": {"value": "1", "expire": 0}}).status == 201
    assert status(gw.port, tok) == 401
    saved = json.loads(state.read_text())
    assert saved["persist-1"]["value"] == "1" and saved["persist-1"]["expire"] > time.time() * 1000
    assert saved["forever"] == "1"  # NGINX Plus's plain form for an entry that never expires
    assert gw.stop() == 0
    gw2 = gateway(text, port=gw.port)
    assert status(gw2.port, tok) == 401
    assert api(gw2.port, "GET", f"{API}/revoked").json() == {"persist-1": "1", "forever": "1"}


def test_state_file_survives_a_reload_and_restart_with_workers(gateway, tmp_path):
    import signal

    state = tmp_path / "revoked.keyval"
    gw = gateway(conf(f"state={state}", workers=2))
    tok = token("persist-2")
    assert api(gw.port, "POST", f"{API}/revoked", {"persist-2": "1"}).status == 201
    gw.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert {status(gw.port, tok) for _ in range(10)} == {401}
    gw.stop()
    gw2 = gateway(conf(f"state={state}", workers=2), port=gw.port)
    assert {status(gw2.port, tok) for _ in range(10)} == {401}


def test_zone_without_state_survives_a_reload(gateway):
    import signal

    gw = gateway(conf("timeout=1h"))
    tok = token("reload-1")
    assert api(gw.port, "POST", f"{API}/revoked", {"reload-1": "1"}).status == 201
    gw.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert status(gw.port, tok) == 401


def test_corrupt_state_file_starts_empty(gateway, tmp_path):
    state = tmp_path / "revoked.keyval"
    state.write_text('{"persist": ')
    gw = gateway(conf(f"state={state}"))
    assert status(gw.port, token("persist")) == 200
    assert api(gw.port, "GET", f"{API}/revoked").json() == {}
    assert "corrupt" in gw.stderr_text() and "Traceback" not in gw.stderr_text()
    # the next write replaces it with a valid file
    assert api(gw.port, "POST", f"{API}/revoked", {"persist": "1"}).status == 201
    assert json.loads(state.read_text()) == {"persist": "1"}


def test_timeout_and_expire_remove_entries(gateway):
    gw = gateway(conf("timeout=1s"))
    a, b = token("short"), token("shorter")
    assert api(gw.port, "POST", f"{API}/revoked", {"short": "1", "shorter": {"value": "1", "expire": 300}}).status == 201
    assert status(gw.port, a) == 401 and status(gw.port, b) == 401
    time.sleep(0.5)
    assert status(gw.port, b) == 200  # its own expire (300 ms) overrides the zone's timeout
    assert status(gw.port, a) == 401
    wait_until(lambda: status(gw.port, a) == 200, timeout=2, what="timeout expiry")
    assert api(gw.port, "GET", f"{API}/revoked").json() == {}
    # PATCH with only an expire re-times an entry
    api(gw.port, "POST", f"{API}/revoked", {"short": "1"})
    assert api(gw.port, "PATCH", f"{API}/revoked", {"short": {"expire": 60000}}).status == 204
    time.sleep(1.2)
    assert status(gw.port, a) == 401


def test_revoking_by_subject_and_by_prefix(gateway):
    text = conf("type=prefix", key="$jwt_claim_sub", zone="subs")
    gw = gateway(text)
    assert api(gw.port, "POST", f"{API}/subs", {"team-a/": "1"}).status == 201
    assert status(gw.port, token(sub="team-a/alice")) == 401
    assert status(gw.port, token(sub="team-b/bob")) == 200


def test_ip_zone_with_curl(gateway):
    text = """
http {
    keyval_zone zone=blocked:64k type=ip;
    keyval $remote_addr $blocked zone=blocked;
    server {
        listen 127.0.0.1:{port};
        location /api { api write=on; }
        location / { return 200 "blocked=[$blocked]\\n"; }
    }
}
"""
    gw = gateway(text)
    assert curl(f"{gw.url}/").body.strip() == b"blocked=[]"
    r = curl(f"{gw.url}{API}/blocked", "-X", "POST", "-d", '{"127.0.0.0/8": "loopback", "10.0.0.1/32": "x"}')
    assert r.status == 201
    r = curl(f"{gw.url}/")
    assert r.body.strip() == b"blocked=[loopback]"
    r = curl(f"{gw.url}{API}/blocked", "-X", "POST", "-d", '{"not-an-ip": "1"}')
    assert r.status == 400 and json.loads(r.body)["error"]["code"] == "KeyvalFormatError"


@pytest.mark.parametrize("bad", ["zone=x", "zone=x:1k", "zone=x:64k timeout=0", "zone=x:64k type=hash",
                                 "zone=x:64k sync", "zone=x:64k bogus"])
def test_bad_keyval_zone_is_refused(tmp_path, bad):
    from jwtgate_e2e import JWTGATE
    import subprocess

    path = tmp_path / "bad.conf"
    path.write_text(f"http {{ keyval_zone {bad}; keyval $arg_a $b zone=x; "
                    "server { listen 127.0.0.1:9; location / { return 200; } } }")
    r = subprocess.run([JWTGATE, "check", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "[emerg]" in r.stderr and "Traceback" not in r.stderr


def test_concurrent_writes_through_several_workers_lose_nothing(gateway):
    gw = gateway(conf(workers=2))
    errors: list = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                r = request(gw.port, "POST", f"{API}/revoked", {"Connection": "close"},
                            body=json.dumps({f"w{n}-{i}": "1"}).encode())
                assert r.status == 201, r.body
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(api(gw.port, "GET", f"{API}/revoked").json()) == 200
