"""The auth_jwt module in process: every directive compiled from configuration text and one
request served through the real Dispatcher (a location without content answers 404 once
authentication let the request through). The end-to-end suite repeats the important paths with
real sockets, a real upstream and a real identity-provider stub."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from inproc import evaluate, plan_of, serve
from joserfc import jwe
from joserfc.jwk import OctKey, RSAKey

from jwtgate.errors import ConfigError
from jwtgate.jose.remote import RemoteKeySource
from jwtgate.modules.auth_jwt import AuthJwtHandler

SECRET = b"fantasticjwt"
KEY = {"kty": "oct", "kid": "0001", "k": "ZmFudGFzdGljand0"}  # the reference post's 12-byte key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs(claims: dict, kid: str = "0001", secret: bytes = SECRET, **header: Any) -> str:
    """An HS256 JWS built by hand (any header member)."""
    signing_input = _b64(json.dumps({"alg": "HS256", "kid": kid, **header}).encode()) + "." + \
        _b64(json.dumps(claims).encode())
    return signing_input + "." + _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def encrypt(header: dict, plaintext: str, key: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwe.encrypt_compact(header, plaintext, key, algorithms=[header["alg"], header["enc"]])


def conf(tmp_path: Path, location: str, http: str = "", server: str = "", keys: str = "keys.jwk") -> str:
    (tmp_path / "keys.jwk").write_text(json.dumps({"keys": [KEY]}))
    return f"""
{http}
upstream idp {{ server 127.0.0.1:9; }}
server {{
    listen 127.0.0.1:8080;
    {server}
    location = /_jwks {{ internal; proxy_pass http://idp/keys; }}
    location /api/ {{
        {location}
    }}
}}
"""


def auth(tmp_path: Path, extra: str = "", http: str = "", auth_line: str = 'auth_jwt "api";',
         keys: str = "auth_jwt_key_file keys.jwk;", server: str = "") -> Any:
    return plan_of(tmp_path, conf(tmp_path, f"{auth_line}\n{keys}\n{extra}", http, server))


def bearer(token: str) -> dict:
    return {"Host": "localhost", "Authorization": f"Bearer {token}"}


def handler_of(plan: Any, path: str = "/api/x") -> AuthJwtHandler:
    loc = plan.servers[0].locations.lookup(path)[0]
    return next(h for h in loc.access if isinstance(h, AuthJwtHandler))


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        plan_of(tmp_path, text)
    return [str(e) for e in getattr(info.value, "errors", [info.value])]


# --- auth_jwt: realm, token source, off ------------------------------------------------------


def test_realm_with_variables_and_empty_realm(tmp_path: Path) -> None:
    plan = auth(tmp_path, auth_line='auth_jwt "api $host";')
    r = serve(plan, "/api/x", {"Host": "example.org"})
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Bearer realm="api example.org"'
    plan = auth(tmp_path, auth_line='auth_jwt "";')
    r = serve(plan, "/api/x", bearer(hs({"sub": "a"}, secret=b"wrong")))
    assert r.header("WWW-Authenticate") == 'Bearer realm="", error="invalid_token"'


def test_token_variable_is_the_whole_value_and_authorization_is_ignored(tmp_path: Path) -> None:
    plan = auth(tmp_path, auth_line='auth_jwt "api" token=$http_x_token;')
    good = hs({"sub": "a"})
    assert serve(plan, "/api/x", {"Host": "h", "X-Token": good}).status == 404
    assert serve(plan, "/api/x", {"Host": "h", "X-Token": "Bearer " + good}).status == 401
    assert serve(plan, "/api/x", bearer(good)).status == 401


def test_auth_jwt_off_in_an_inner_location(tmp_path: Path) -> None:
    text = conf(tmp_path, 'location /api/open/ { auth_jwt off; }', server='auth_jwt "api"; auth_jwt_key_file keys.jwk;')
    plan = plan_of(tmp_path, text)
    assert serve(plan, "/api/x", {"Host": "h"}).status == 401
    assert serve(plan, "/api/open/x", {"Host": "h"}).status == 404


# --- auth_jwt_claim_set / auth_jwt_header_set / $jwt_* ----------------------------------------


CLAIMS = {"sub": "alice", "n": 3, "f": 1.5, "ok": True, "roles": ["a", "b", 1], "nested": {"x": {"y": "deep"}},
          "obj": {"k": [1, 2]}, "dotted.name": "d"}


def test_claim_and_header_set_follow_paths_and_render_as_nginx_plus(tmp_path: Path) -> None:
    http = ("auth_jwt_claim_set $deep nested x y;\n"
            "auth_jwt_claim_set $roles roles;\n"
            "auth_jwt_claim_set $obj obj;\n"
            "auth_jwt_claim_set $dotted dotted.name;\n"
            "auth_jwt_claim_set $missing nested nope;\n"
            "auth_jwt_header_set $hkid kid;\n"
            "auth_jwt_header_set $hx x5 a;\n")
    plan = auth(tmp_path, http=http)
    r = serve(plan, "/api/x", bearer(hs(CLAIMS, x5={"a": "hdr"})))
    assert r.status == 404
    ctx = r.ctx
    values = {v: evaluate(plan, f"${v}", ctx) for v in
              ("deep", "roles", "obj", "dotted", "missing", "hkid", "hx", "jwt_claim_n", "jwt_claim_f",
               "jwt_claim_ok", "jwt_claim_roles", "jwt_claim_nested", "jwt_header_alg")}
    assert values == {"deep": "deep", "roles": "a,b,1", "obj": '{"k":[1,2]}', "dotted": "d", "missing": "",
                      "hkid": "0001", "hx": "hdr", "jwt_claim_n": "3", "jwt_claim_f": "1.5",
                      "jwt_claim_ok": "true", "jwt_claim_roles": "a,b,1",
                      "jwt_claim_nested": '{"x":{"y":"deep"}}', "jwt_header_alg": "HS256"}
    # without a verified token they are empty
    r = serve(plan, "/api/x", bearer(hs(CLAIMS, secret=b"wrong")))
    assert r.status == 401 and evaluate(plan, "$deep$hkid$jwt_payload", r.ctx) == ""


def test_claim_set_variable_can_drive_require_and_limits(tmp_path: Path) -> None:
    http = "auth_jwt_claim_set $role auth role;\nmap $role $is_admin { admin 1; default 0; }\n"
    plan = auth(tmp_path, http=http, extra="auth_jwt_require $is_admin error=403;")
    assert serve(plan, "/api/x", bearer(hs({"auth": {"role": "admin"}}))).status == 404
    assert serve(plan, "/api/x", bearer(hs({"auth": {"role": "user"}}))).status == 403
    deps = plan.build.shared["var_deps"]
    assert deps["role"] == {"jwt_claim_auth"}


@pytest.mark.parametrize(("text", "message"), [
    ('server { listen 1; auth_jwt_claim_set $a b; }', '"auth_jwt_claim_set" directive is not allowed here'),
    ('auth_jwt_claim_set a b; server { listen 1; }', 'invalid variable name "a"'),
    ('auth_jwt_claim_set $a; server { listen 1; }', 'invalid number of arguments in "auth_jwt_claim_set"'),
    ('auth_jwt_claim_set $host b; server { listen 1; }', 'the duplicate "host" variable'),
    ('auth_jwt_header_set $a b; auth_jwt_claim_set $a c; server { listen 1; }', 'the duplicate "a" variable'),
])
def test_claim_set_errors(tmp_path: Path, text: str, message: str) -> None:
    assert any(message in e for e in errors(tmp_path, text)), errors(tmp_path, text)


# --- auth_jwt_type ------------------------------------------------------------------------------


def _enc_keys(tmp_path: Path) -> tuple[RSAKey, str]:
    key = RSAKey.generate_key(2048, parameters={"kid": "enc"})
    jwk = dict(key.as_dict(private=True)) | {"use": "enc"}
    (tmp_path / "enc.jwk").write_text(json.dumps({"keys": [jwk]}))
    return key, "auth_jwt_key_file keys.jwk; auth_jwt_key_file enc.jwk;"


def test_encrypted_and_nested_types_and_jwt_payload(tmp_path: Path) -> None:
    key, keys = _enc_keys(tmp_path)
    claims = {"sub": "alice", "exp": int(time.time()) + 60}
    encrypted = encrypt({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "enc"}, json.dumps(claims), key)
    inner = hs(claims)
    nested = encrypt({"alg": "RSA-OAEP-256", "enc": "A128CBC-HS256", "cty": "JWT"}, inner, key)
    plan_e = auth(tmp_path, keys=keys, extra="auth_jwt_type encrypted;")
    r = serve(plan_e, "/api/x", bearer(encrypted))
    assert r.status == 404
    assert json.loads(evaluate(plan_e, "$jwt_payload", r.ctx)) == claims
    assert evaluate(plan_e, "$jwt_claim_sub $jwt_header_alg", r.ctx) == "alice RSA-OAEP-256"
    plan_n = auth(tmp_path, keys=keys, extra="auth_jwt_type nested;")
    r = serve(plan_n, "/api/x", bearer(nested))
    assert r.status == 404
    assert evaluate(plan_n, "$jwt_payload", r.ctx) == inner
    assert evaluate(plan_n, "$jwt_claim_sub $jwt_header_alg $jwt_header_kid", r.ctx) == "alice HS256 0001"
    plan_s = auth(tmp_path, keys=keys)
    for plan, token in ((plan_s, encrypted), (plan_s, nested), (plan_e, inner), (plan_e, nested),
                        (plan_n, inner), (plan_n, encrypted)):
        r = serve(plan, "/api/x", bearer(token))
        assert r.status == 401 and 'error="invalid_token"' in r.header("WWW-Authenticate")


def test_type_errors_and_warnings(tmp_path: Path) -> None:
    assert any('invalid value "jwe" in "auth_jwt_type"' in e
               for e in errors(tmp_path, conf(tmp_path, 'auth_jwt "a"; auth_jwt_key_file keys.jwk; auth_jwt_type jwe;')))
    plan = auth(tmp_path, extra="auth_jwt_type encrypted;")  # only a 12-byte HMAC key
    assert any("no key can decrypt" in str(w) for w in plan.warnings)


# --- auth_jwt_key_file with variables, auth_jwt_key_cache --------------------------------------


def test_key_file_path_with_variables_is_read_per_request(tmp_path: Path) -> None:
    (tmp_path / "tenants").mkdir()
    for tenant in ("a", "b"):
        jwk = {"kty": "oct", "kid": tenant, "k": OctKey.import_key(tenant.encode() * 32).as_dict()["k"]}
        (tmp_path / "tenants" / f"{tenant}.jwk").write_text(json.dumps({"keys": [jwk]}))
    http = 'map $http_x_tenant $tenant { a a; b b; default none; }'
    plan = auth(tmp_path, http=http, keys="auth_jwt_key_file tenants/$tenant.jwk;")
    token_a = hs({"sub": "a"}, kid="a", secret=b"a" * 32)
    token_b = hs({"sub": "b"}, kid="b", secret=b"b" * 32)
    assert serve(plan, "/api/x", bearer(token_a) | {"X-Tenant": "a"}).status == 404
    assert serve(plan, "/api/x", bearer(token_b) | {"X-Tenant": "b"}).status == 404
    assert serve(plan, "/api/x", bearer(token_a) | {"X-Tenant": "b"}).status == 401
    # a file that cannot be loaded at request time is a server error, not a client one
    assert serve(plan, "/api/x", bearer(token_a) | {"X-Tenant": "zzz"}).status == 500
    os.unlink(tmp_path / "tenants" / "a.jwk")
    assert serve(plan, "/api/x", bearer(token_a) | {"X-Tenant": "a"}).status == 500  # auth_jwt_key_cache 0
    # no token is still the plain challenge, whatever the keys
    assert serve(plan, "/api/x", {"Host": "h", "X-Tenant": "zzz"}).status == 401


def test_key_cache_keeps_a_file_with_variables(tmp_path: Path) -> None:
    (tmp_path / "k.jwk").write_text(json.dumps({"keys": [KEY]}))
    plan = auth(tmp_path, keys='auth_jwt_key_file $http_x_keys;', extra="auth_jwt_key_cache 1h;")
    headers = bearer(hs({"sub": "a"})) | {"X-Keys": "k.jwk"}
    assert serve(plan, "/api/x", headers).status == 404
    os.unlink(tmp_path / "k.jwk")
    assert serve(plan, "/api/x", headers).status == 404  # served from the key cache


def test_static_key_file_errors_fail_check(tmp_path: Path) -> None:
    (tmp_path / "bad.jwk").write_text("{nope")
    errs = errors(tmp_path, conf(tmp_path, 'auth_jwt "a"; auth_jwt_key_file bad.jwk;'))
    assert any("invalid JSON in" in e for e in errs)
    errs = errors(tmp_path, conf(tmp_path, 'auth_jwt "a"; auth_jwt_key_file missing.jwk;'))
    assert any("cannot read key file" in e for e in errs)


# --- auth_jwt_key_request --------------------------------------------------------------------


def test_key_request_resolves_to_a_proxying_location_and_fetches_nothing_at_compile(tmp_path: Path) -> None:
    plan = auth(tmp_path, keys="auth_jwt_key_request /_jwks;")
    remotes = [r for r in plan.resources if isinstance(r, RemoteKeySource)]
    assert len(remotes) == 1 and remotes[0].fetches == 0 and remotes[0].keys is None
    # not running: the keys cannot be loaded, which is a 500 (never a silent pass)
    assert serve(plan, "/api/x", bearer(hs({"sub": "a"}))).status == 500
    assert serve(plan, "/api/x", {"Host": "h"}).status == 401
    # internal: a client cannot fetch the key location itself
    assert serve(plan, "/_jwks", {"Host": "h"}).status == 404


def test_key_request_sources_are_shared_and_pooled_with_files(tmp_path: Path) -> None:
    text = conf(tmp_path, 'auth_jwt "a"; auth_jwt_key_request /_jwks; auth_jwt_key_file keys.jwk;\n'
                          'location /api/v2/ { auth_jwt "b"; auth_jwt_key_request /_jwks; auth_jwt_key_file keys.jwk; }')
    plan = plan_of(tmp_path, text)
    assert len([r for r in plan.resources if isinstance(r, RemoteKeySource)]) == 1
    h1, h2 = handler_of(plan, "/api/x"), handler_of(plan, "/api/v2/x")
    assert h1.pool is h2.pool and h1.verifier is h2.verifier


@pytest.mark.parametrize(("keys", "message"), [
    ("auth_jwt_key_request /nowhere;", 'no location for "auth_jwt_key_request /nowhere"'),
    ("auth_jwt_key_request /api/x;", 'has no "proxy_pass"'),
    ("auth_jwt_key_request $uri;", 'variables in "auth_jwt_key_request" are not supported'),
    ("auth_jwt_key_request jwks;", 'invalid URI "jwks"'),
    ("auth_jwt_key_request /_jwks; auth_jwt_key_refetch_interval 10ms;", "must be at least 100ms"),
    ("auth_jwt_key_request /_jwks; auth_jwt_key_cache forever;", 'invalid value "forever"'),
])
def test_key_request_errors(tmp_path: Path, keys: str, message: str) -> None:
    text = conf(tmp_path, f'auth_jwt "a"; {keys}').replace("location /api/ {", "location /api/ {", 1)
    if "/nowhere" in keys:
        text = text.replace("location = /_jwks", "location = /_jwks_other")
    errs = errors(tmp_path, text)
    assert any(message in e for e in errs), errs


# --- inheritance ------------------------------------------------------------------------------


def test_inner_key_source_replaces_the_outer_list(tmp_path: Path) -> None:
    other = {"kty": "oct", "kid": "other", "k": OctKey.import_key(b"o" * 32).as_dict()["k"]}
    (tmp_path / "other.jwk").write_text(json.dumps({"keys": [other]}))
    text = conf(tmp_path, 'location /api/inner/ { auth_jwt_key_file other.jwk; }\n'
                          'location /api/req/ { auth_jwt_key_request /_jwks; }',
                server='auth_jwt "a"; auth_jwt_key_file keys.jwk; auth_jwt_require $jwt_claim_ok;')
    plan = plan_of(tmp_path, text)
    post = hs({"sub": "a", "ok": 1})
    mine = hs({"sub": "a", "ok": 1}, kid="other", secret=b"o" * 32)
    assert serve(plan, "/api/x", bearer(post)).status == 404
    assert serve(plan, "/api/x", bearer(mine)).status == 401
    assert serve(plan, "/api/inner/x", bearer(mine)).status == 404
    assert serve(plan, "/api/inner/x", bearer(post)).status == 401
    assert handler_of(plan, "/api/req/x").pool is not None
    assert handler_of(plan, "/api/req/x").pool.static == ()  # the request replaced the file


def test_inner_require_replaces_the_outer_list(tmp_path: Path) -> None:
    text = conf(tmp_path, 'location /api/inner/ { auth_jwt_require $jwt_claim_b; }',
                server='auth_jwt "a"; auth_jwt_key_file keys.jwk; auth_jwt_require $jwt_claim_a error=403;')
    plan = plan_of(tmp_path, text)
    assert serve(plan, "/api/x", bearer(hs({"b": 1}))).status == 403
    assert serve(plan, "/api/inner/x", bearer(hs({"b": 1}))).status == 404
    assert serve(plan, "/api/inner/x", bearer(hs({"a": 1}))).status == 401


# --- leeway, cache, size ---------------------------------------------------------------------


def test_leeway(tmp_path: Path) -> None:
    now = int(time.time())
    plan = auth(tmp_path, extra="auth_jwt_leeway 1m;")
    assert serve(plan, "/api/x", bearer(hs({"exp": now - 30}))).status == 404
    assert serve(plan, "/api/x", bearer(hs({"nbf": now + 30}))).status == 404
    assert serve(plan, "/api/x", bearer(hs({"exp": now - 90}))).status == 401
    assert serve(plan, "/api/x", bearer(hs({"nbf": now + 90}))).status == 401
    assert serve(plan, "/api/x", bearer(hs({"exp": str(now + 90)}))).status == 401  # not a number


@pytest.mark.parametrize(("value", "size"), [("off", 0), ("on", 100_000), ("5000", 5000), (None, 100_000)])
def test_cache_directive(tmp_path: Path, value: str | None, size: int) -> None:
    plan = auth(tmp_path, extra=f"auth_jwt_cache {value};" if value else "")
    verifier = handler_of(plan).verifier
    if size:
        assert verifier.cache is not None and verifier.cache.maxsize == size
        assert verifier.negative_cache is not None
    else:
        assert verifier.cache is None and verifier.negative_cache is None
    token = hs({"sub": "a"})
    assert serve(plan, "/api/x", bearer(token)).status == 404
    assert serve(plan, "/api/x", bearer(token)).status == 404
    if size:
        assert token in verifier.cache


def test_cache_directive_errors(tmp_path: Path) -> None:
    errs = errors(tmp_path, conf(tmp_path, 'auth_jwt "a"; auth_jwt_key_file keys.jwk; auth_jwt_cache lots;'))
    assert any('invalid value "lots" in "auth_jwt_cache"' in e for e in errs)


def test_max_token_size(tmp_path: Path) -> None:
    plan = auth(tmp_path, extra="auth_jwt_max_token_size 200;")
    assert serve(plan, "/api/x", bearer(hs({"sub": "a"}))).status == 404
    assert serve(plan, "/api/x", bearer(hs({"sub": "a" * 200}))).status == 401
    assert handler_of(auth(tmp_path)).verifier.max_token_size == 16384
    for bad in ("0", "2m", "big"):
        errs = errors(tmp_path, conf(tmp_path, f'auth_jwt "a"; auth_jwt_key_file keys.jwk; auth_jwt_max_token_size {bad};'))
        assert any('in "auth_jwt_max_token_size" directive' in e for e in errs)
