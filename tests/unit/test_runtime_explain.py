"""The dry run behind ``jwtgate explain`` (:mod:`jwtgate.runtime.explain`), in process.

``tests/cli/test_explain.py`` runs the command and compares its prediction with what a
running gateway sends upstream; the cases are here.
"""

from __future__ import annotations

import json

import pytest

from jwtgate.conf.plan import compile_plan
from jwtgate.runtime.explain import ExplainError, explain_request
from jwtgate.state.memory import MemoryLimitZone

POST_JWKS = {"keys": [{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]}
POST_TOKEN = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6IjAwMDEifQ."
              "eyJuYW1lIjoiUXVvdGF0aW9uIFN5c3RlbSIsInN1YiI6InF1b3RlcyIsImlzcyI6Ik15IEFQSSBHYXRld2F5In0."
              "ggVOHYnVFB8GVPE-VOIo3jD71gTkLffAY0hQOGXPL2I")
BEARER = [("Authorization", f"Bearer {POST_TOKEN}")]

CONF = """
limit_req_zone $remote_addr zone=perip:1m rate=100r/s;
limit_req_zone $jwt_claim_sub zone=persub:1m rate=30r/m;
map $jwt_claim_sub $tier { quotes gold; default basic; }
upstream api_server { server 127.0.0.1:9; }
server {
    listen 127.0.0.1:18099;
    location /products/ {
        auth_jwt "Products API";
        auth_jwt_key_file KEYS;
        auth_jwt_require $jwt_claim_iss;
        limit_req zone=perip burst=5;
        limit_req zone=persub;
        proxy_pass http://api_server/v1/;
        proxy_set_header API-Client $jwt_claim_sub;
        proxy_set_header X-Tier $tier;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
    location /cookie/ {
        auth_jwt "Cookie" token=$cookie_jwt;
        auth_jwt_key_file KEYS;
        proxy_pass http://api_server;
    }
    location = /health { return 200 "ok"; }
}
server {
    listen 127.0.0.1:18099;
    server_name two.example;
    location /x/ { proxy_pass http://api_server; }
}
"""


def hs256(claims: dict, kid: str = "0001") -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"typ": "JWT", "alg": "HS256", "kid": kid}, separators=(",", ":")).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(b"fantasticjwt", f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    keys = tmp / "api_secret.jwk"
    keys.write_text(json.dumps(POST_JWKS))
    conf = tmp / "gw.conf"
    conf.write_text(CONF.replace("KEYS", str(keys)))
    return compile_plan(str(conf))


def test_proxied(plan):
    ex = explain_request(plan, "GET", "http://127.0.0.1:18099/products/widget1?x=1",
                         [*BEARER, ("API_Client", "evil"), ("X-Forwarded-For", "10.0.0.1")], remote_addr="10.1.2.3")
    assert ex.status is None and not ex.refused and ex.decided_by == "proxy_pass"
    assert ex.auth.verified_by.startswith('key #0 (kid "0001", oct) in ') and ex.auth.error is None
    assert ex.auth.requires == [{"source": "$jwt_claim_iss", "value": "My API Gateway", "ok": True, "code": 401,
                                 "decided": False}]
    assert ex.variables["$jwt_claim_sub"] == "quotes" and ex.variables["$jwt_header_kid"] == "0001"
    assert [(lim.zone, lim.key, lim.rate, lim.burst, lim.after_auth) for lim in ex.limits] == [
        ("perip", "10.1.2.3", "100r/s", 5, False), ("persub", "quotes", "30r/m", 0, True)]
    assert [s["handler"] for s in ex.steps] == ["client_max_body_size", "limit_req", "auth_jwt", "limit_req"]
    assert ex.upstream == {"group": "api_server", "peers": ["127.0.0.1:9"]}
    assert ex.upstream_head == (
        b"GET /v1/widget1?x=1 HTTP/1.1\r\nHost: api_server\r\nAPI-Client: quotes\r\nX-Tier: gold\r\n"
        b"X-Forwarded-For: 10.0.0.1, 10.1.2.3\r\nAuthorization: Bearer " + POST_TOKEN.encode() + b"\r\n\r\n")
    data = ex.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-ready
    assert data["request"] == {"method": "GET", "target": "/products/widget1?x=1", "host": "127.0.0.1:18099",
                               "local": "127.0.0.1:18099", "remote": "10.1.2.3"}


@pytest.mark.parametrize("headers, decision, challenge", [
    ([], "401: no token (Authorization: Bearer)", 'Bearer realm="Products API"'),
    ([("Authorization", f"Bearer {POST_TOKEN[:-4]}AAAA")],
     "401: token rejected (bad_signature: signature does not verify with any candidate key)",
     'Bearer realm="Products API", error="invalid_token"'),
    ([("Authorization", f"Bearer {hs256({'sub': 'q', 'iss': 'x'}, kid='0002')}")],
     "401: token rejected (no_key: no key for alg HS256 and this kid)", None),
    ([("Authorization", f"Bearer {hs256({'sub': 'q', 'iss': 'x', 'exp': 1})}")],
     "401: token rejected (expired: token has expired)", None),
    ([("Authorization", f"Bearer {hs256({'sub': 'q'})}")], '401: auth_jwt_require $jwt_claim_iss is ""',
     'Bearer realm="Products API", error="invalid_token"'),
])
def test_refused_by_auth_jwt(plan, headers, decision, challenge):
    ex = explain_request(plan, "GET", "/products/a", headers)
    assert ex.refused and ex.status == 401 and ex.decision == decision
    assert ex.upstream_head is None
    if challenge:
        assert ex.response_headers == [("WWW-Authenticate", challenge)] and ex.auth.challenge == challenge
    assert ex.steps[-1] == {"handler": "limit_req", "result": "not reached"}
    assert [lim.zone for lim in ex.limits] == ["perip"]  # the limit after auth_jwt is never reached


def test_no_candidate_key(plan):
    ex = explain_request(plan, "GET", "/products/a", [("Authorization", f"Bearer {hs256({}, kid='nope')}")])
    assert ex.auth.candidates == [] and ex.auth.header["kid"] == "nope"


def test_token_from_a_cookie(plan):
    ex = explain_request(plan, "GET", "/cookie/a", [("Cookie", "a=b"), ("Cookie", f"jwt={POST_TOKEN}")])
    assert ex.auth.source == "$cookie_jwt" and ex.auth.verified_by and not ex.refused


@pytest.mark.parametrize("method, url, headers, status, decision", [
    ("GET", "/elsewhere", [], 404, 'no location matches "/elsewhere": 404'),
    ("GET", "/products/../../etc", [], 400, "the HTTP layer answers 400: URI climbs above the root"),
    ("GET", "/products/%zz", [], 400, "the HTTP layer answers 400: invalid percent-encoding in URI"),
    ("POST", "/products/a", [("Content-Length", "x")], 400, "the HTTP layer answers 400: invalid Content-Length"),
    ("POST", "/products/a", [("Transfer-Encoding", "gzip")], 501, "the HTTP layer answers 501: unsupported Transfer-Encoding"),
    ("POST", "/products/a", [("Content-Length", "1"), ("Transfer-Encoding", "chunked")], 400,
     "the HTTP layer answers 400: both Content-Length and Transfer-Encoding"),
    ("POST", "/products/a", [*BEARER, ("Content-Length", "2000000")], 413, "413: refused by client_max_body_size"),
    ("GET", "*", [], 400, "the HTTP layer answers 400: asterisk-form outside OPTIONS"),
])
def test_what_the_gateway_answers_itself(plan, method, url, headers, status, decision):
    ex = explain_request(plan, method, url, headers)
    assert (ex.status, ex.decision, ex.refused) == (status, decision, True)


def test_a_configured_return_is_an_answer_not_a_refusal(plan):
    ex = explain_request(plan, "GET", "/health")
    assert (ex.status, ex.decided_by, ex.refused) == (200, "return", False)


def test_a_declared_body_is_declared_upstream(plan):
    ex = explain_request(plan, "POST", "/products/a", [*BEARER, ("Content-Length", "5")])
    assert ex.upstream_head.endswith(b"Content-Length: 5\r\n\r\n")
    ex = explain_request(plan, "POST", "/products/a", [*BEARER, ("Transfer-Encoding", "chunked")])
    assert ex.upstream_head.endswith(b"Transfer-Encoding: chunked\r\n\r\n")


def test_servers_by_host_and_listen(plan):
    two = explain_request(plan, "GET", "http://two.example:18099/x/y")
    assert two.server.startswith("server two.example at ") and two.host == "two.example:18099"
    assert two.upstream_head.startswith(b"GET /x/y HTTP/1.1\r\nHost: api_server\r\n")
    other = explain_request(plan, "GET", "/x/y", [("Host", "other.example")])
    assert other.server.startswith("server _ at ") and other.status == 404
    by_listen = explain_request(plan, "GET", "http://two.example/x/", listen="127.0.0.1:18099")
    assert by_listen.host == "two.example" and by_listen.local == ("127.0.0.1", 18099)
    assert by_listen.server.startswith("server two.example")
    origin = explain_request(plan, "GET", "/x/")
    assert origin.host == "127.0.0.1:18099" and origin.local == ("127.0.0.1", 18099)


@pytest.mark.parametrize("method, url, headers, kw, message", [
    ("GET", "ftp://host/", [], {}, "URL must be"),
    ("G ET", "/", [], {}, "invalid method"),
    ("GET", "/", [("Bad Name", "x")], {}, "invalid header name"),
    ("GET", "/", [("X", "a\r\nY: b")], {}, "CR, LF or NUL"),
    ("GET", "http://h:99999/", [], {}, "invalid port"),
    ("GET", "http://[::1/", [], {}, "invalid URL"),
    ("GET", "/", [], {"listen": "127.0.0.1:x"}, "invalid port in listen address"),
])
def test_bad_input(plan, method, url, headers, kw, message):
    with pytest.raises(ExplainError, match=message):
        explain_request(plan, method, url, headers, **kw)


def test_explaining_spends_no_rate_limit_budget(plan):
    zones = plan.build.shared["limit_req"]
    for zone in zones.values():  # give each zone the in-process state a running gateway gives it
        if getattr(zone, "memory", None) is None:
            zone.memory = MemoryLimitZone(zone.name, 100, zone.rate)
    for _ in range(50):
        ex = explain_request(plan, "GET", "/products/a", BEARER)
        assert [lim.key for lim in ex.limits] == ["127.0.0.1", "quotes"] and not ex.refused
    assert {name: len(zone.memory) for name, zone in zones.items()} == {"perip": 0, "persub": 0}
