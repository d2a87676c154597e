"""``map`` over JWT claims and ``auth_jwt_require``: the post's revocation example and its
``error=`` variant."""

from __future__ import annotations

from jwtgate_e2e import POST_TOKEN, bearer, mint_hs, post_conf

REVOCATION_MAP = """
map $jwt_claim_sub $jwt_status {
    "quotes" 0;
    "test"   0;
    default  1;
}
"""


def test_revocation_example(gateway, upstream):
    gw = gateway(post_conf(http_extra=REVOCATION_MAP, location_extra="auth_jwt_require $jwt_status;"))
    r = gw.get("/products/widget1", bearer(POST_TOKEN))
    assert r.status == 401
    assert r.header("WWW-Authenticate").startswith('Bearer realm="Products API"')
    assert gw.get("/products/widget1", bearer(mint_hs({"sub": "test"}))).status == 401
    assert upstream.requests == []
    r = gw.get("/products/widget1", bearer(mint_hs({"sub": "other", "iss": "My API Gateway"})))
    assert r.status == 200
    assert upstream.last.values("API-Client") == ["other"]
    # a token without "sub" maps to the default, 1: valid and not revoked
    assert gw.get("/products/widget1", bearer(mint_hs({"iss": "My API Gateway"}))).status == 200
    # the map is not a way around the signature
    assert gw.get("/products/widget1", bearer(mint_hs({"sub": "other"}, key=b"wrong"))).status == 401
    # and without any token the answer is the plain challenge
    r = gw.get("/products/widget1")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Bearer realm="Products API"'
    assert len(upstream.requests) == 2


def test_require_error_403(gateway, upstream):
    http_extra = """
map $jwt_claim_role $is_admin {
    admin   1;
    default 0;
}
"""
    gw = gateway(post_conf(http_extra=http_extra, location_extra="auth_jwt_require $is_admin error=403;"))
    assert gw.get("/products/a", bearer(mint_hs({"sub": "boss", "role": "admin"}))).status == 200
    r = gw.get("/products/a", bearer(mint_hs({"sub": "clerk", "role": "user"})))
    assert r.status == 403
    assert gw.get("/products/a", bearer(POST_TOKEN)).status == 403  # no role claim
    # authentication failures stay 401
    assert gw.get("/products/a").status == 401
    assert gw.get("/products/a", bearer(mint_hs({"sub": "boss", "role": "admin"}, key=b"x"))).status == 401
    assert [rec.values("API-Client") for rec in upstream.requests] == [["boss"]]


def test_require_several_values_and_directives(gateway, upstream):
    http_extra = """
map $jwt_claim_iss $trusted_issuer {
    "My API Gateway" 1;
    default          "";
}
map $jwt_claim_scope $can_read {
    ~\\bread\\b 1;
}
"""
    gw = gateway(post_conf(http_extra=http_extra,
                           location_extra="auth_jwt_require $trusted_issuer $jwt_claim_sub;\n"
                                          "auth_jwt_require $can_read error=403;"))
    ok = {"sub": "a", "iss": "My API Gateway", "scope": "write read"}
    assert gw.get("/products/x", bearer(mint_hs(ok))).status == 200
    assert gw.get("/products/x", bearer(mint_hs({**ok, "iss": "Someone"}))).status == 401
    assert gw.get("/products/x", bearer(mint_hs({k: v for k, v in ok.items() if k != "sub"}))).status == 401
    assert gw.get("/products/x", bearer(mint_hs({**ok, "scope": "write"}))).status == 403
    assert gw.get("/products/x", bearer(mint_hs({**ok, "scope": "readonly"}))).status == 403
    assert len(upstream.requests) == 1
