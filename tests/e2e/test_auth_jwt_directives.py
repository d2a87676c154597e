"""The other ``auth_jwt*`` directives through a running gateway: ``auth_jwt_claim_set`` /
``auth_jwt_header_set``, key files with variables and ``auth_jwt_key_cache``, ``auth_jwt_leeway``,
``auth_jwt_cache``, ``auth_jwt_max_token_size``, realms with variables, ``internal``, Ed448, and
the header limits of signed tokens (``crit``, ``jku``/``x5u``/``jwk`` never used)."""

from __future__ import annotations

import json
import os

import pytest

from jwtgate_e2e import POST_TOKEN, b64url, bearer, generate_key, mint_hs, now, post_conf


def test_claim_set_and_header_set_reach_the_upstream(gateway, upstream):
    http = ("auth_jwt_claim_set $jwt_tenant org tenant id;\n"
            "auth_jwt_claim_set $jwt_groups groups;\n"
            "auth_jwt_claim_set $jwt_org org;\n"
            "auth_jwt_header_set $jwt_typ typ;\n")
    extra = ("proxy_set_header X-Tenant $jwt_tenant;\nproxy_set_header X-Groups $jwt_groups;\n"
             "proxy_set_header X-Org $jwt_org;\nproxy_set_header X-Typ $jwt_typ;\n"
             "proxy_set_header X-Exp $jwt_claim_exp;")
    gw = gateway(post_conf(http_extra=http, location_extra=extra))
    exp = now() + 600
    claims = {"sub": "c", "exp": exp, "groups": ["eng", "ops"], "org": {"tenant": {"id": "t-42"}, "n": 1}}
    assert gw.get("/products/x", bearer(mint_hs(claims))).status == 200
    rec = upstream.last
    assert rec.values("X-Tenant") == ["t-42"] and rec.values("X-Groups") == ["eng,ops"]
    assert json.loads(rec.values("X-Org")[0]) == claims["org"] and rec.values("X-Typ") == ["JWT"]
    assert rec.values("X-Exp") == [str(exp)]
    # absent claims: the header is not sent at all (NGINX drops empty proxy_set_header values)
    assert gw.get("/products/x", bearer(mint_hs({"sub": "d"}))).status == 200
    assert upstream.last.values("X-Tenant") == [] and upstream.last.values("X-Groups") == []


def test_key_file_with_variables_per_tenant(gateway, upstream, tmp_path):
    (tmp_path / "tenants").mkdir()
    secrets = {"acme": b"a" * 32, "globex": b"g" * 32}
    for name, secret in secrets.items():
        from joserfc.jwk import OctKey

        jwk = dict(OctKey.import_key(secret, parameters={"kid": name}).as_dict())
        (tmp_path / "tenants" / f"{name}.jwk").write_text(json.dumps({"keys": [jwk]}))
    http = "map $http_x_tenant $tenant_keys { acme tenants/acme.jwk; globex tenants/globex.jwk; default none; }"
    gw = gateway(post_conf(http_extra=http, keys="$tenant_keys"))
    acme = mint_hs({"sub": "acme-user"}, key=secrets["acme"], kid="acme")
    assert gw.get("/products/x", bearer(acme) | {"X-Tenant": "acme"}).status == 200
    assert upstream.last.values("API-Client") == ["acme-user"]
    assert gw.get("/products/x", bearer(acme) | {"X-Tenant": "globex"}).status == 401
    assert gw.get("/products/x", bearer(acme) | {"X-Tenant": "other"}).status == 500  # no such file
    # files are read per request (auth_jwt_key_cache 0): a rotated file applies at once
    new_secret = b"n" * 32
    from joserfc.jwk import OctKey

    (tmp_path / "tenants" / "acme.jwk").write_text(json.dumps(
        {"keys": [dict(OctKey.import_key(new_secret, parameters={"kid": "acme"}).as_dict())]}))
    assert gw.get("/products/x", bearer(acme) | {"X-Tenant": "acme"}).status == 401
    fresh = mint_hs({"sub": "acme-2"}, key=new_secret, kid="acme")
    assert gw.get("/products/x", bearer(fresh) | {"X-Tenant": "acme"}).status == 200


def test_key_cache_keeps_key_files_with_variables(gateway, upstream, tmp_path):
    gw = gateway(post_conf(keys="$http_x_keys", location_extra="auth_jwt_key_cache 1h;"))
    headers = bearer(POST_TOKEN) | {"X-Keys": str(gateway.keys)}
    assert gw.get("/products/x", headers).status == 200
    os.unlink(gateway.keys)
    assert gw.get("/products/x", headers).status == 200  # cached for an hour
    assert gw.get("/products/x", bearer(POST_TOKEN) | {"X-Keys": str(gateway.keys) + ".other"}).status == 500


def test_leeway(gateway, upstream):
    gw = gateway(post_conf(location_extra="auth_jwt_leeway 120s;"))
    t = now()
    assert gw.get("/products/x", bearer(mint_hs({"sub": "a", "exp": t - 60}))).status == 200
    assert gw.get("/products/x", bearer(mint_hs({"sub": "a", "nbf": t + 60}))).status == 200
    assert gw.get("/products/x", bearer(mint_hs({"sub": "a", "exp": t - 300}))).status == 401
    assert gw.get("/products/x", bearer(mint_hs({"sub": "a", "nbf": t + 300}))).status == 401
    assert gw.get("/products/x", bearer(mint_hs({"sub": "a", "exp": "tomorrow"}))).status == 401
    assert gw.get("/products/x", bearer(mint_hs({"sub": "a", "nbf": True}))).status == 401


@pytest.mark.parametrize("cache", ["off", "on", "10"])
def test_verified_token_cache_setting_never_changes_answers(gateway, upstream, cache):
    gw = gateway(post_conf(location_extra=f"auth_jwt_cache {cache};"))
    good, bad = mint_hs({"sub": "a"}), mint_hs({"sub": "a"}, key=b"wrong")
    expired = mint_hs({"sub": "a", "exp": now() - 1})
    for _ in range(3):
        assert gw.get("/products/x", bearer(good)).status == 200
        assert gw.get("/products/x", bearer(bad)).status == 401
        assert gw.get("/products/x", bearer(expired)).status == 401


def test_max_token_size(gateway, upstream):
    gw = gateway(post_conf(location_extra="auth_jwt_max_token_size 300;"))
    assert gw.get("/products/x", bearer(mint_hs({"sub": "a"}))).status == 200
    r = gw.get("/products/x", bearer(mint_hs({"sub": "a", "pad": "x" * 300})))
    assert r.status == 401 and 'error="invalid_token"' in r.header("WWW-Authenticate")
    # the default is 16 KiB: a 10 KiB token in a query argument passes, a 20 KiB one does not
    gw2 = gateway(post_conf(auth='auth_jwt "api" token=$cookie_t;'))
    assert gw2.get("/products/x", {"Cookie": "t=" + mint_hs({"sub": "a", "pad": "x" * 6000})}).status == 200
    assert gw2.get("/products/x", {"Cookie": "t=" + mint_hs({"sub": "a", "pad": "x" * 13000})}).status in (401, 431)


def test_realm_with_variables_and_empty_realm(gateway, upstream):
    gw = gateway(post_conf(auth='auth_jwt "realm of $http_x_realm";'))
    r = gw.get("/products/x", {"X-Realm": "api.example"})
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Bearer realm="realm of api.example"'
    gw2 = gateway(post_conf(auth='auth_jwt "";'))
    r = gw2.get("/products/x", bearer(mint_hs({"sub": "a"}, key=b"bad")))
    assert r.header("WWW-Authenticate") == 'Bearer realm="", error="invalid_token"'


def test_internal_location_is_not_reachable_from_clients(gateway, upstream):
    conf = post_conf().replace("location /products/ {", "location /internal/ { internal; proxy_pass http://api_server; }\n"
                                                         "    location /products/ {")
    gw = gateway(conf)
    assert gw.get("/internal/keys").status == 404
    assert upstream.requests == []


def test_ed448_and_hmac_of_any_length(gateway, upstream, tmp_path):
    from joserfc import jwt
    from joserfc.jwk import OKPKey

    ed448 = OKPKey.generate_key("Ed448", parameters={"kid": "ed448"})
    path = tmp_path / "keys.jwk"
    path.write_text(json.dumps({"keys": [dict(ed448.as_dict(private=False)),
                                         {"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]}))
    gw = gateway(post_conf(keys=str(path)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for alg in ("EdDSA", "Ed448"):
            token = jwt.encode({"alg": alg, "kid": "ed448"}, {"sub": alg}, ed448, algorithms=[alg])
            assert gw.get("/products/x", bearer(token)).status == 200, alg
            assert upstream.last.values("API-Client") == [alg]
    assert gw.get("/products/x", bearer(POST_TOKEN)).status == 200  # the post's 12-byte key


@pytest.mark.parametrize("header", [
    {"crit": ["exp"], "exp": 1},
    {"crit": []},
    {"b64": False, "crit": ["b64"]},
], ids=["crit", "crit-empty", "b64"])
def test_crit_headers_are_refused(gateway, upstream, header):
    gw = gateway(post_conf())
    assert gw.get("/products/x", bearer(mint_hs({"sub": "a"}, header=header))).status == 401
    assert upstream.requests == []


def test_jku_x5u_x5c_and_jwk_headers_never_find_a_key(gateway, upstream):
    attacker = generate_key("RS256", "0001")
    gw = gateway(post_conf())
    header = {"jku": "http://127.0.0.1:1/jwks.json", "x5u": "http://127.0.0.1:1/cert.pem",
              "jwk": attacker.public_jwk, "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}
    assert gw.get("/products/x", bearer(attacker.sign({"sub": "evil"}, header=header))).status == 401
    assert upstream.requests == []


def test_deeply_nested_and_oversized_headers(gateway, upstream):
    gw = gateway(post_conf())
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    assert gw.get("/products/x", bearer(mint_hs({"sub": "a", "d": deep}))).status == 401
    big_header = b64url(json.dumps({"alg": "HS256", "kid": "0001", "pad": "p" * 7000}).encode())
    token = mint_hs({"sub": "a"}).split(".", 1)[1]
    assert gw.get("/products/x", bearer(big_header + "." + token)).status in (401, 431)
    assert upstream.requests == []
