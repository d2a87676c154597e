"""``auth_jwt_key_request`` against a real local identity-provider stub: keys fetched once and
shared, single flight at start, rotation (a new kid appears, the old one disappears), the
provider going down (stale keys still serve, then stop), a storm of invented kids (the stub
sees at most one fetch per interval), bounded answers, and reloads that fetch nothing."""

from __future__ import annotations

import json
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jwtgate_e2e import bearer, generate_key, mint_hs, now, wait_until, write_jwks


class IdPStub:
    """A JWKS endpoint on 127.0.0.1: serves ``jwks`` at ``/jwks``, counts fetches, can answer
    slowly (``delay``), with an error status (``status``), with ``body`` instead, or go away."""

    def __init__(self, *jwks: dict) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                with stub._lock:
                    stub.fetches += 1
                    stub.paths.append(self.path)
                    answer = stub.body if stub.body is not None else json.dumps({"keys": stub.jwks}).encode()
                    status, delay = stub.status, stub.delay
                if delay:
                    time.sleep(delay)
                self.close_connection = True  # so that "down" really means down
                self.send_response(status)
                self.send_header("Connection", "close")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._lock = threading.Lock()
        self.jwks = list(jwks)
        self.body: bytes | None = None
        self.status = 200
        self.delay = 0.0
        self.fetches = 0
        self.paths: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self._up = True

    def serve(self, *jwks: dict) -> None:
        with self._lock:
            self.jwks = list(jwks)

    def count(self) -> int:
        with self._lock:
            return self.fetches

    def down(self) -> None:
        """Stop listening: connections are refused from now on."""
        if self._up:
            self._up = False
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def idp():
    stub = IdPStub()
    try:
        yield stub
    finally:
        stub.down()


CONF = """
error_log stderr info;
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    location = /_jwks {{
        internal;
        proxy_pass http://127.0.0.1:{idp_port}/jwks;
    }}
    location /products/ {{
        auth_jwt "Products API";
        auth_jwt_key_request /_jwks;
        {extra}
        proxy_pass http://api_server;
        proxy_set_header API-Client $jwt_claim_sub;
    }}
}}
"""


def start(gateway, idp: IdPStub, extra: str = ""):
    return gateway(CONF.format(idp_port=idp.port, extra=extra))


def status(gw, token: str) -> int:
    return gw.get("/products/x", bearer(token)).status


def test_keys_come_from_the_identity_provider_once(gateway, upstream, idp):
    rs, es = generate_key("RS256", "rs-1"), generate_key("ES256", "es-1")
    idp.serve(rs.public_jwk, es.public_jwk)
    gw = start(gateway, idp)
    for i in range(20):
        for key in (rs, es):
            assert status(gw, key.sign({"sub": f"{key.kid}-{i}", "exp": now() + 60})) == 200
    assert upstream.last.values("API-Client") == ["es-1-19"]
    assert idp.count() == 1 and idp.paths == ["/jwks"]
    # the key location is internal: clients cannot reach it
    assert gw.get("/_jwks").status == 404
    assert idp.count() == 1
    # still refused: no token, a forged one, an unknown kid
    assert gw.get("/products/x").status == 401
    assert status(gw, generate_key("RS256", "rs-1").sign({"sub": "forged"})) == 401
    assert len(upstream.requests) == 40


def test_requests_at_start_share_the_single_first_fetch(gateway, upstream, idp):
    rs = generate_key("RS256", "rs-1")
    idp.serve(rs.public_jwk)
    idp.delay = 1.0  # the provider is slow: requests arrive while the first fetch runs
    gw = start(gateway, idp)
    tokens = [rs.sign({"sub": f"c{i}"}) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda t: status(gw, t), tokens))
    assert statuses == [200] * 20
    assert idp.count() == 1


def test_rotation_new_kid_appears_old_kid_disappears(gateway, upstream, idp):
    old, new = generate_key("RS256", "2024"), generate_key("RS256", "2025")
    idp.serve(old.public_jwk)
    gw = start(gateway, idp, "auth_jwt_key_cache 1s; auth_jwt_key_refetch_interval 1s;")
    old_token = old.sign({"sub": "old", "exp": now() + 600})
    new_token = new.sign({"sub": "new", "exp": now() + 600})
    assert status(gw, old_token) == 200  # verified, and now in the verified-token cache
    idp.serve(old.public_jwk, new.public_jwk)  # the provider publishes the next key first
    wait_until(lambda: status(gw, new_token) == 200, timeout=10, interval=0.1, what="the new kid to verify")
    assert status(gw, old_token) == 200
    idp.serve(new.public_jwk)  # then retires the old one
    wait_until(lambda: status(gw, old_token) == 401, timeout=10, interval=0.1,
               what="the old kid to be refused (its cached verification dropped)")
    assert status(gw, new_token) == 200
    assert idp.count() <= 25  # refreshed about once a second, not per request


def test_unknown_kid_refetches_once_then_verifies(gateway, upstream, idp):
    old, new = generate_key("ES256", "a"), generate_key("ES256", "b")
    idp.serve(old.public_jwk)
    gw = start(gateway, idp, "auth_jwt_key_cache 1h; auth_jwt_key_refetch_interval 1s;")
    assert status(gw, old.sign({"sub": "a"})) == 200
    assert idp.count() == 1
    idp.serve(old.public_jwk, new.public_jwk)
    token = new.sign({"sub": "b"})
    # refused while unknown, then the refetch it triggered brings the key (no hour-long wait)
    wait_until(lambda: status(gw, token) == 200, timeout=10, interval=0.2, what="the unknown kid refetch")
    assert 2 <= idp.count() <= 3


def test_storm_of_invented_kids_costs_at_most_one_fetch_per_interval(gateway, upstream, idp):
    real = generate_key("RS256", "real")
    idp.serve(real.public_jwk)
    gw = start(gateway, idp, "auth_jwt_key_cache 1h; auth_jwt_key_refetch_interval 30s;")
    assert status(gw, real.sign({"sub": "ok"})) == 200
    attacker = generate_key("HS256", "x")
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(
            lambda i: status(gw, mint_hs({"sub": "evil"}, key=b"k" * 32, kid=f"invented-{i}-{secrets.token_hex(4)}")),
            range(400)))
    statuses += [status(gw, attacker.sign({"sub": "evil"}, header={"kid": f"rs-{i}"})) for i in range(50)]
    elapsed = time.monotonic() - started
    assert set(statuses) == {401}
    assert elapsed < 30, "the storm must fit in one interval for the bound below"
    assert idp.count() <= 2  # the first fetch, plus at most one refetch in the interval
    assert status(gw, real.sign({"sub": "still-ok"})) == 200


def test_provider_down_stale_keys_serve_then_stop(gateway, upstream, idp):
    key = generate_key("RS256", "k")
    idp.serve(key.public_jwk)
    gw = start(gateway, idp, "auth_jwt_key_cache 1s; auth_jwt_key_refetch_interval 1s; auth_jwt_key_use_stale 3s;")
    assert status(gw, key.sign({"sub": "before"})) == 200
    idp.down()
    # new tokens (never cached) still verify with the keys the gateway holds
    assert status(gw, key.sign({"sub": "during", "jti": "1"})) == 200
    wait_until(lambda: "refresh failed" in gw.stderr_text(), timeout=10, interval=0.1, what="a logged refresh error")
    # past expiry + the stale window: a server error, never an unverified pass
    wait_until(lambda: status(gw, key.sign({"sub": "after"})) == 500, timeout=15, interval=0.2,
               what="keys to leave their stale window")
    assert gw.get("/products/x").status == 401  # no token is still a challenge
    wait_until(lambda: "no longer used" in gw.stderr_text(), timeout=10, interval=0.1, what="the stale-window error")
    served = len(upstream.requests)
    assert status(gw, key.sign({"sub": "late"})) == 500 and len(upstream.requests) == served


def test_first_fetch_failure_is_500_and_not_retried_per_request(gateway, upstream, idp):
    key = generate_key("RS256", "k")
    idp.serve(key.public_jwk)
    idp.status = 503
    gw = start(gateway, idp, "auth_jwt_key_refetch_interval 30s;")
    wait_until(lambda: idp.count() >= 1, timeout=5, what="the first fetch")
    for i in range(20):
        assert status(gw, key.sign({"sub": str(i)})) == 500
    assert idp.count() == 1
    assert "answered 503" in gw.stderr_text()
    assert upstream.requests == []


@pytest.mark.parametrize(("body", "reason"), [
    (b" " * (1024 * 1024 + 10), "more than 1048576"),
    (b"<html>login</html>", "invalid JSON"),
    (json.dumps({"keys": [{"kty": "oct", "k": "AAAA", "kid": str(i)} for i in range(1001)]}).encode(), "more than 1000"),
])
def test_bad_key_set_answers_are_refused(gateway, upstream, idp, body, reason):
    idp.body = body
    gw = start(gateway, idp)
    wait_until(lambda: reason in gw.stderr_text(), timeout=5, what=f"the error {reason!r}")
    assert status(gw, mint_hs({"sub": "x"})) == 500
    assert upstream.requests == []


def test_key_files_and_key_requests_are_pooled(gateway, upstream, idp, tmp_path):
    rs = generate_key("RS256", "remote")
    idp.serve(rs.public_jwk)
    extra = f"auth_jwt_key_file {gateway.keys};"
    gw = start(gateway, idp, extra)
    assert status(gw, rs.sign({"sub": "remote"})) == 200
    assert status(gw, mint_hs({"sub": "file"})) == 200  # the post's key, from the file
    assert [r.values("API-Client") for r in upstream.requests] == [["remote"], ["file"]]


def test_reload_hands_keys_over_without_fetching(gateway, upstream, idp):
    key = generate_key("EdDSA", "ed")
    idp.serve(key.public_jwk)
    gw = start(gateway, idp)
    assert status(gw, key.sign({"sub": "one"})) == 200
    assert idp.count() == 1
    gw.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in gw.stderr_text(), timeout=10, what="the reload")
    assert status(gw, key.sign({"sub": "two"})) == 200
    assert idp.count() == 1
    assert "Traceback" not in gw.stderr_text()


def test_key_material_and_tokens_never_reach_the_log(gateway, upstream, idp, tmp_path):
    hs = generate_key("HS256", "sym")  # a symmetric key in a remote set (its "k" is secret)
    idp.serve(hs.public_jwk)
    gw = start(gateway, idp)
    token = hs.sign({"sub": "x"})
    assert status(gw, token) == 200
    assert status(gw, mint_hs({"sub": "x"}, key=b"y" * 32, kid="unknown")) == 401
    assert gw.stop() == 0
    text = gw.stderr_text()
    assert hs.public_jwk["k"] not in text and token.split(".")[2] not in text
    assert 'auth_jwt_key_request "/_jwks": key set loaded, 1 keys (kids: sym)' in text
    write_jwks(tmp_path / "unused.jwk", hs.public_jwk)  # (keeps the helper import honest)
