"""``auth_jwt_type encrypted | nested`` through a running gateway: every key management and
content encryption algorithm, nested tokens with each signature family, ``$jwt_payload``, and
the refusals (wrong type, algorithms out of policy, ``zip``, ``crit``, tampering)."""

from __future__ import annotations

import base64
import json
import os
import warnings

import pytest

from jwtgate_e2e import b64url, bearer, generate_key, mint_hs, now, post_conf, request

KEY_ALGS = ["dir", "A128KW", "A192KW", "A256KW", "A128GCMKW", "A192GCMKW", "A256GCMKW",
            "RSA-OAEP", "RSA-OAEP-256", "RSA-OAEP-384", "RSA-OAEP-512"]
ENCS = {"A128CBC-HS256": 32, "A192CBC-HS384": 48, "A256CBC-HS512": 64, "A128GCM": 16, "A192GCM": 24, "A256GCM": 32}


def encrypt(header: dict, plaintext: str, key) -> str:
    from joserfc import jwe

    from jwtgate.jose.jwe import jwe_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwe.encrypt_compact(header, plaintext, key, registry=jwe_registry(header["alg"], header["enc"]))


@pytest.fixture(scope="module")
def keys():
    """One RSA key and one oct key per length, each with a kid, and their JWK Set (private)."""
    from joserfc.jwk import OctKey, RSAKey

    rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-enc", "use": "enc"})
    octs = {n: OctKey.import_key(os.urandom(n), parameters={"kid": f"oct-{n}"}) for n in (16, 24, 32, 48, 64)}
    jwks = [dict(rsa.as_dict(private=True))] + [dict(k.as_dict(private=True)) for k in octs.values()]
    return rsa, octs, jwks


def write_keys(tmp_path, *jwks) -> str:
    path = tmp_path / "enc.jwk"
    path.write_text(json.dumps({"keys": list(jwks)}))
    return str(path)


def key_for(alg: str, enc: str, rsa, octs):
    if alg.startswith("RSA"):
        return rsa
    return octs[ENCS[enc]] if alg == "dir" else octs[int(alg[1:4]) // 8]


def test_every_encryption_algorithm_pair(gateway, upstream, tmp_path, keys):
    rsa, octs, jwks = keys
    gw = gateway(post_conf(keys=write_keys(tmp_path, *jwks),
                           location_extra="auth_jwt_type encrypted;\nproxy_set_header X-Payload $jwt_payload;\n"
                                          "proxy_set_header X-Enc $jwt_header_enc;"))
    n = 0
    for alg in KEY_ALGS:
        for enc in ENCS:
            key = key_for(alg, enc, rsa, octs)
            claims = {"sub": f"{alg}/{enc}", "exp": now() + 60}
            token = encrypt({"alg": alg, "enc": enc, "kid": key.kid}, json.dumps(claims), key)
            r = gw.get("/products/w", bearer(token))
            assert r.status == 200, (alg, enc, r.body)
            n += 1
            assert upstream.last.values("API-Client") == [claims["sub"]]
            assert upstream.last.values("X-Enc") == [enc]
            assert json.loads(upstream.last.values("X-Payload")[0]) == claims
            # the same token with its tag altered
            head, ek, iv, ct, tag = token.split(".")
            raw = bytearray(base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4)))
            raw[0] ^= 1
            bad = ".".join([head, ek, iv, ct, b64url(bytes(raw))])
            r = gw.get("/products/w", bearer(bad))
            assert r.status == 401 and 'error="invalid_token"' in r.header("WWW-Authenticate")
    assert len(upstream.requests) == n == 66


@pytest.mark.parametrize("alg", ["HS256", "RS256", "PS384", "ES512", "EdDSA"])
def test_nested_tokens_inner_signature_verified(gateway, upstream, tmp_path, keys, alg):
    rsa, octs, jwks = keys
    signer = generate_key(alg, f"sig-{alg}")
    gw = gateway(post_conf(keys=write_keys(tmp_path, signer.public_jwk, *jwks),
                           location_extra="auth_jwt_type nested;\nproxy_set_header X-Inner $jwt_payload;\n"
                                          "proxy_set_header X-Alg $jwt_header_alg;"))
    inner = signer.sign({"sub": f"nested-{alg}", "exp": now() + 60})
    token = encrypt({"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT", "kid": "rsa-enc"}, inner, rsa)
    assert gw.get("/products/w", bearer(token)).status == 200
    assert upstream.last.values("API-Client") == [f"nested-{alg}"]
    assert upstream.last.values("X-Inner") == [inner] and upstream.last.values("X-Alg") == [alg]
    # an outsider's signature, encrypted to our (public) key: refused
    outsider = generate_key(alg, f"sig-{alg}")
    forged = encrypt({"alg": "RSA-OAEP", "enc": "A128GCM"}, outsider.sign({"sub": "evil"}), rsa)
    assert gw.get("/products/w", bearer(forged)).status == 401
    # the signed token alone, or the claims encrypted without a signature: wrong type
    assert gw.get("/products/w", bearer(inner)).status == 401
    plain = encrypt({"alg": "A128KW", "enc": "A128GCM"}, json.dumps({"sub": "unsigned"}), octs[16])
    assert gw.get("/products/w", bearer(plain)).status == 401
    # an expired inner token
    old = encrypt({"alg": "dir", "enc": "A256GCM"}, signer.sign({"sub": "old", "exp": now() - 5}), octs[32])
    assert gw.get("/products/w", bearer(old)).status == 401
    assert len(upstream.requests) == 1


def test_encrypted_type_refuses_signed_tokens_and_signed_type_refuses_jwe(gateway, upstream, tmp_path, keys):
    rsa, octs, jwks = keys
    path = write_keys(tmp_path, {"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}, *jwks)
    conf = f"""
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    auth_jwt "api";
    auth_jwt_key_file {path};
    proxy_set_header API-Client $jwt_claim_sub;
    location /signed/ {{ proxy_pass http://api_server; }}
    location /encrypted/ {{ auth_jwt_type encrypted; proxy_pass http://api_server; }}
}}
"""
    gw = gateway(conf)
    signed = mint_hs({"sub": "s"})
    encrypted = encrypt({"alg": "RSA-OAEP", "enc": "A256GCM"}, json.dumps({"sub": "e"}), rsa)
    assert gw.get("/signed/x", bearer(signed)).status == 200
    assert gw.get("/encrypted/x", bearer(encrypted)).status == 200
    assert gw.get("/signed/x", bearer(encrypted)).status == 401
    assert gw.get("/encrypted/x", bearer(signed)).status == 401
    assert [r.values("API-Client") for r in upstream.requests] == [["s"], ["e"]]


def _forged(header: dict) -> str:
    return ".".join([b64url(json.dumps(header).encode()), b64url(b"k" * 40), b64url(b"i" * 12),
                     b64url(b"c" * 32), b64url(b"t" * 16)])


@pytest.mark.parametrize("header", [
    {"alg": "RSA1_5", "enc": "A128CBC-HS256"},
    {"alg": "PBES2-HS256+A128KW", "enc": "A128GCM", "p2s": "c2FsdA", "p2c": 10_000_000},
    {"alg": "ECDH-ES", "enc": "A128GCM", "epk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}},
    {"alg": "ECDH-ES+A256KW", "enc": "A128GCM"},
    {"alg": "A128KW", "enc": "A128GCM", "zip": "DEF"},
    {"alg": "A128KW", "enc": "A128GCM", "crit": ["exp"], "exp": 1},
    {"alg": "A128KW", "enc": "A1024GCM"},
    {"alg": "dir", "enc": "A128GCM", "jku": "http://127.0.0.1:1/keys", "jwk": {"kty": "oct", "k": "AAAA"}},
], ids=["rsa1_5", "pbes2", "ecdh-es", "ecdh-es-kw", "zip", "crit", "enc", "jku-jwk"])
def test_refused_jwe_headers(gateway, upstream, tmp_path, keys, header):
    rsa, octs, jwks = keys
    gw = gateway(post_conf(keys=write_keys(tmp_path, *jwks), location_extra="auth_jwt_type encrypted;"))
    r = gw.get("/products/w", bearer(_forged(header)))
    assert r.status == 401 and 'error="invalid_token"' in r.header("WWW-Authenticate")
    assert upstream.requests == []


def test_rfc7516_a3_vector_through_the_gateway(gateway, upstream, tmp_path):
    """RFC 7516 A.3 (A128KW + A128CBC-HS256) decrypts, and its prose plaintext is refused as claims;
    A.2 (RSA1_5) is refused outright."""
    path = write_keys(tmp_path, {"kty": "oct", "kid": "a3", "k": "GawgguFyGrWKav7AX4VKUg"})
    gw = gateway(post_conf(keys=path, location_extra="auth_jwt_type encrypted;"))
    a3 = ("eyJhbGciOiJBMTI4S1ciLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0.6KB707dM9YTIgHtLvtgWQ8mKwboJW3of9locizkDTHzBC2IlrT1oOQ."
          "AxY8DCtDaGlsbGljb3RoZQ.KDlTtXchhZTGufMYmOYGS4HffxPSUrfmqCHXaI9wOGY.U0m_YmjN04DJvceFICbCVQ")
    assert gw.get("/products/w", bearer(a3)).status == 401
    # our own token with the same key and algorithms passes
    from joserfc.jwk import OctKey

    key = OctKey.import_key(base64.urlsafe_b64decode("GawgguFyGrWKav7AX4VKUg=="))
    token = encrypt({"alg": "A128KW", "enc": "A128CBC-HS256"}, json.dumps({"sub": "prosper"}), key)
    assert gw.get("/products/w", bearer(token)).status == 200
    assert upstream.last.values("API-Client") == ["prosper"]
    assert request(gw.port, "GET", "/products/w").status == 401
