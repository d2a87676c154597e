"""auth_jwt through a running gateway: the post's configuration, its token, and the ways a
token must be refused (RFC 6750 challenges, signature, time claims, algorithm confusion)."""

from __future__ import annotations

import json
import re

import pytest

from jwtgate_e2e import (
    ALGORITHMS, POST_TOKEN, bearer, curl, generate_key, mint_hs, now, post_conf, request,
    tamper_signature, unsigned, write_jwks,
)

REALM_ONLY = 'Bearer realm="Products API"'


def www_authenticate(r) -> str:
    values = r.values("WWW-Authenticate")
    assert len(values) == 1, f"expected one WWW-Authenticate, got {values!r}"
    return values[0]


def test_post_token_accepted_with_curl_and_api_client_set(gateway, upstream, post_token_file):
    gw = gateway(post_conf())
    # the post's step 5, with real curl
    r = curl(f"{gw.url}/products/widget1", "-H", f"Authorization: Bearer {post_token_file.read_text().strip()}")
    assert r.returncode == 0, r.stderr
    assert r.status == 200, r.body
    assert json.loads(r.body)["path"] == "/products/widget1"
    assert len(upstream.requests) == 1
    assert upstream.last.path == "/products/widget1"
    assert upstream.last.values("API-Client") == ["quotes"]
    # the token itself is passed on untouched (NGINX forwards Authorization)
    assert upstream.last.values("Authorization") == [f"Bearer {POST_TOKEN}"]


def test_no_token_is_401_with_realm_and_no_error(gateway, upstream):
    gw = gateway(post_conf())
    r = gw.get("/products/widget1")
    assert r.status == 401
    assert www_authenticate(r) == REALM_ONLY
    assert upstream.requests == []
    # an Authorization header of another scheme is no token either
    r = gw.get("/products/widget1", {"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status == 401
    assert www_authenticate(r) == REALM_ONLY
    # nor is "Bearer" with nothing after it
    r = gw.get("/products/widget1", {"Authorization": "Bearer "})
    assert r.status == 401
    assert "error=" not in www_authenticate(r)
    assert upstream.requests == []


def test_token_signed_by_another_key_is_401_invalid_token(gateway, upstream):
    gw = gateway(post_conf())
    forged = mint_hs({"sub": "quotes", "iss": "My API Gateway"}, key=b"not-fantasticjwt")
    r = gw.get("/products/widget1", bearer(forged))
    assert r.status == 401
    assert www_authenticate(r) == 'Bearer realm="Products API", error="invalid_token"'
    assert upstream.requests == []


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda t: t.rsplit(".", 1)[0] + ".", id="signature-cut-off"),
    pytest.param(lambda t: t.rsplit(".", 1)[0], id="two-parts"),
    pytest.param(lambda t: t[:-4], id="signature-truncated"),
    pytest.param(tamper_signature, id="signature-bit-flipped"),
    pytest.param(lambda t: "not-a-jwt", id="garbage"),
    pytest.param(lambda t: t + ".extra", id="four-parts"),
])
def test_damaged_token_is_401(gateway, upstream, mangle):
    gw = gateway(post_conf())
    r = gw.get("/products/widget1", bearer(mangle(POST_TOKEN)))
    assert r.status == 401
    assert 'error="invalid_token"' in www_authenticate(r)
    assert upstream.requests == []


def test_time_claims(gateway, upstream):
    gw = gateway(post_conf())
    t = now()
    ok = gw.get("/products/w", bearer(mint_hs({"sub": "fresh", "exp": t + 300, "nbf": t - 60, "iat": t - 60})))
    assert ok.status == 200
    assert upstream.last.values("API-Client") == ["fresh"]
    expired = gw.get("/products/w", bearer(mint_hs({"sub": "quotes", "exp": t - 60})))
    assert expired.status == 401
    assert 'error="invalid_token"' in www_authenticate(expired)
    early = gw.get("/products/w", bearer(mint_hs({"sub": "quotes", "nbf": t + 300})))
    assert early.status == 401
    assert 'error="invalid_token"' in www_authenticate(early)
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_401(gateway, upstream, alg):
    gw = gateway(post_conf())
    r = gw.get("/products/widget1", bearer(unsigned({"sub": "quotes", "iss": "My API Gateway"}, alg=alg)))
    assert r.status == 401
    assert upstream.requests == []


def test_hs256_signed_with_rsa_public_key_pem_is_401(gateway, upstream, tmp_path):
    """The classic algorithm confusion: an RSA key set must never verify an HMAC token."""
    rsa = generate_key("RS256", "rsa-1")
    jwks = write_jwks(tmp_path / "rsa.jwk", rsa.public_jwk)
    gw = gateway(post_conf(keys=jwks))
    good = gw.get("/products/w", bearer(rsa.sign({"sub": "rsa-client"})))
    assert good.status == 200  # the key set works for a real RS256 token
    pem = rsa.key.as_pem(private=False)
    for secret in (pem, pem.strip()):
        for kid in ("rsa-1", None):
            forged = mint_hs({"sub": "quotes"}, key=secret, alg="HS256", kid=kid)
            r = gw.get("/products/w", bearer(forged))
            assert r.status == 401, (kid, secret[-20:])
    assert [rec.values("API-Client") for rec in upstream.requests] == [["rsa-client"]]


def test_client_api_client_header_is_replaced(gateway, upstream):
    gw = gateway(post_conf())
    r = request(gw.port, "GET", "/products/widget1",
                [("Authorization", f"Bearer {POST_TOKEN}"), ("API-Client", "admin"),
                 ("api-client", "root"), ("X-Other", "kept")])
    assert r.status == 200
    rec = upstream.last
    api = [(n, v) for n, v in rec.headers if n.lower() == "api-client"]
    assert api == [("API-Client", "quotes")]
    assert rec.values("X-Other") == ["kept"]


def test_underscore_header_never_reaches_upstream(gateway, upstream):
    gw = gateway(post_conf())
    r = request(gw.port, "GET", "/products/widget1",
                [("Authorization", f"Bearer {POST_TOKEN}"), ("API_Client", "admin"), ("X_Custom", "1")])
    assert r.status == 200
    names = [n for n, _ in upstream.last.headers]
    assert not [n for n in names if "_" in n], names
    api = [(n, v) for n, v in upstream.last.headers if n.lower().replace("_", "-") == "api-client"]
    assert api == [("API-Client", "quotes")]


def test_underscore_header_cannot_stand_in_for_a_set_header(gateway, upstream):
    """Without a valid token API-Client is empty and NGINX drops the header; an API_Client sent
    by the client must not take its place either."""
    gw = gateway(post_conf(auth='auth_jwt off;'))
    r = request(gw.port, "GET", "/products/widget1", [("API_Client", "admin")])
    assert r.status == 200
    assert [n for n, _ in upstream.last.headers if n.lower().replace("_", "-") == "api-client"] == []


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_bearer_scheme_is_case_insensitive(gateway, upstream, scheme):
    gw = gateway(post_conf())
    r = gw.get("/products/widget1", {"Authorization": f"{scheme} {POST_TOKEN}"})
    assert r.status == 200
    assert upstream.last.values("API-Client") == ["quotes"]


def test_token_is_never_logged(gateway, upstream, tmp_path):
    log_path = tmp_path / "access.log"
    jwt_log = tmp_path / "access_jwt.log"
    http_extra = ("error_log stderr info;\n"
                  "log_format jwt '$remote_addr - $remote_user [$time_local] \"$request\" '\n"
                  "               '$status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" '\n"
                  "               '$jwt_header_alg $jwt_claim_sub';\n")
    gw = gateway(post_conf(http_extra=http_extra,
                           location_extra=f"access_log {log_path};\naccess_log {jwt_log} jwt;\n"
                                          "auth_jwt_require $jwt_claim_ok;"))
    t = now()
    tokens = {
        "valid": mint_hs({"sub": "quotes", "ok": "yes", "exp": t + 600}),
        "refused-by-require": POST_TOKEN,  # no "ok" claim
        "wrong-key": mint_hs({"sub": "quotes", "ok": "yes"}, key=b"another-secret"),
        "expired": mint_hs({"sub": "quotes", "ok": "yes", "exp": t - 10}),
        "not-yet": mint_hs({"sub": "quotes", "ok": "yes", "nbf": t + 600}),
        "cut": POST_TOKEN.rsplit(".", 1)[0] + ".",
        "alg-none": unsigned({"sub": "quotes", "ok": "yes"}),
        "bad-json": "eyJub3QganNvbg.eyJzdWIiOiJxdW90ZXMifQ.c2lnbmF0dXJlc2lnbmF0dXJl",
    }
    expected = {"valid": 200}
    for name, token in tokens.items():
        r = gw.get("/products/widget1", bearer(token))
        assert r.status == expected.get(name, 401), name
    assert gw.stop() == 0
    stderr = gw.stderr_text()
    access = log_path.read_text()
    access_jwt = jwt_log.read_text()
    assert len(access.splitlines()) == len(tokens)
    assert len(access_jwt.splitlines()) == len(tokens)
    assert stderr.strip(), "error_log stderr info wrote nothing at all"
    for name, token in tokens.items():
        pieces = [token] + [p for p in token.split(".") if len(p) >= 16]
        for where, text in (("stderr", stderr), ("access_log", access), ("access_log jwt", access_jwt)):
            for piece in pieces:
                assert piece not in text, f"{name} token piece {piece[:20]}... found in {where}:\n{text}"


def test_query_token_is_not_in_error_log(gateway, upstream):
    gw = gateway(post_conf(auth='auth_jwt "Products API" token=$arg_apijwt;',
                           http_extra="error_log stderr info;"))
    forged = mint_hs({"sub": "quotes"}, key=b"another-secret")
    assert gw.get(f"/products/w?apijwt={forged}").status == 401
    assert gw.get(f"/products/w?apijwt={POST_TOKEN}").status == 200
    assert gw.stop() == 0
    stderr = gw.stderr_text()
    for token in (forged, POST_TOKEN):
        for piece in [token] + token.split(".")[1:]:
            assert piece not in stderr, stderr


def test_claims_reach_upstream_as_headers(gateway, upstream):
    gw = gateway(post_conf(location_extra="proxy_set_header X-Alg $jwt_header_alg;\n"
                                          "proxy_set_header X-Kid $jwt_header_kid;\n"
                                          "proxy_set_header X-Iss $jwt_claim_iss;\n"
                                          "proxy_set_header X-Name $jwt_claim_name;"))
    assert gw.get("/products/widget1", bearer(POST_TOKEN)).status == 200
    rec = upstream.last
    assert rec.values("X-Alg") == ["HS256"]
    assert rec.values("X-Kid") == ["0001"]
    assert rec.values("X-Iss") == ["My API Gateway"]
    assert rec.values("X-Name") == ["Quotation System"]


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_signing_algorithm(gateway, upstream, tmp_path, alg):
    key = generate_key(alg, f"{alg.lower()}-key")
    decoy = generate_key(alg, "decoy")  # same type, not in the key set
    jwks = write_jwks(tmp_path / "keys.jwk", key.public_jwk)
    gw = gateway(post_conf(keys=jwks, location_extra="proxy_set_header X-Alg $jwt_header_alg;"))
    claims = {"sub": f"client-{alg}", "exp": now() + 600}
    r = gw.get("/products/widget1", bearer(key.sign(claims)))
    assert r.status == 200, r.body
    assert upstream.last.values("API-Client") == [f"client-{alg}"]
    assert upstream.last.values("X-Alg") == [alg]
    # the same kid, signed by a key that is not in the set
    wrong = decoy.sign(claims, header={"kid": key.kid})
    assert gw.get("/products/widget1", bearer(wrong)).status == 401
    assert gw.get("/products/widget1", bearer(tamper_signature(key.sign(claims)))).status == 401
    expired = key.sign({"sub": f"client-{alg}", "exp": now() - 60})
    assert gw.get("/products/widget1", bearer(expired)).status == 401
    assert len(upstream.requests) == 1


def test_mixed_key_set_picks_the_key_by_kid(gateway, upstream, tmp_path):
    keys = [generate_key(a, f"k-{a}") for a in ("HS256", "RS256", "ES256", "EdDSA")]
    jwks = write_jwks(tmp_path / "mixed.jwk", *[k.public_jwk for k in keys])
    gw = gateway(post_conf(keys=jwks))
    for k in keys:
        r = gw.get("/products/x", bearer(k.sign({"sub": k.kid})))
        assert r.status == 200, k.alg
        assert upstream.last.values("API-Client") == [k.kid]
    # a token whose kid names a key of another type
    hs, rs = keys[0], keys[1]
    assert gw.get("/products/x", bearer(hs.sign({"sub": "x"}, header={"kid": rs.kid}))).status == 401


def test_full_nginx_conf_layout(gateway, upstream):
    """main context, events {} and http {} as in a stock nginx.conf."""
    gw = gateway("""
worker_processes 1;
events { worker_connections 1024; }
http {
    upstream api_server { server 127.0.0.1:{upstream_port}; }
    server {
        listen 127.0.0.1:{port};
        location /products/ {
            auth_jwt "Products API";
            auth_jwt_key_file {keys};
            proxy_pass http://api_server;
            proxy_set_header API-Client $jwt_claim_sub;
        }
        location / { return 404; }
    }
}
""")
    assert gw.get("/products/widget1", bearer(POST_TOKEN)).status == 200
    assert upstream.last.values("API-Client") == ["quotes"]
    assert gw.get("/products/widget1").status == 401
    assert gw.get("/other").status == 404
    assert re.fullmatch(r"/products/widget1", upstream.last.path)
