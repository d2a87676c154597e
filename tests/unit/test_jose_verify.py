"""JWT verification: reference vectors, every algorithm, key selection, attacks, claim checks, fuzzing."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from jwtgate.clock import ManualClock
from jwtgate.errors import TokenError
from jwtgate.jose.keys import ALG_MODELS, KeySet, parse_jwk_set
from jwtgate.jose.verify import MAX_JSON_DEPTH, VerifiedToken, Verifier

NOW = 1_700_000_000.0

# --- helpers ---------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def enc(obj: Any) -> str:
    return b64(obj if isinstance(obj, bytes) else json.dumps(obj).encode())


def forge(header: Any, payload: Any, sign: Callable[[bytes], bytes] | None) -> str:
    """Build a compact JWS with any header, signing with any function (an attacker's tool)."""
    signing_input = f"{enc(header)}.{enc(payload)}"
    signature = b64(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


def signer(key: Any, alg: str) -> Callable[[bytes], bytes]:
    return lambda msg: ALG_MODELS[alg].sign(msg, key)


def sign(key: Any, alg: str, claims: dict | None = None, **header: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc flags EdDSA as deprecated (RFC 9864)
        return jws.serialize_compact(
            {"alg": alg, **header}, json.dumps(claims if claims is not None else {"sub": "s"}), key, algorithms=[alg]
        )


def keyset(*keys: Any, **extra: Any) -> KeySet:
    docs = [dict(k.as_dict(private=False)) | extra if not isinstance(k, dict) else k for k in keys]
    return parse_jwk_set(json.dumps({"keys": docs}), "test")


def verifier(ks: KeySet, now: float = NOW, **kw: Any) -> Verifier:
    kw.setdefault("cache_size", 0)
    kw.setdefault("negative_cache_size", 0)
    return Verifier(ks, clock=ManualClock(now), **kw)


def code_of(v: Verifier, token: Any) -> str:
    with pytest.raises(TokenError) as info:
        v.verify(token)
    return info.value.code


@functools.cache
def rsa_key(i: int = 0) -> RSAKey:
    return RSAKey.generate_key(2048)


def new_key(alg: str) -> Any:
    if alg.startswith("HS"):
        return OctKey.generate_key(int(alg[2:]))
    if alg[:2] in ("RS", "PS"):
        return rsa_key()
    return {
        "ES256": lambda: ECKey.generate_key("P-256"),
        "ES384": lambda: ECKey.generate_key("P-384"),
        "ES512": lambda: ECKey.generate_key("P-521"),
        "ES256K": lambda: ECKey.generate_key("secp256k1"),
        "EdDSA": lambda: OKPKey.generate_key("Ed25519"),
        "EdDSA-448": lambda: OKPKey.generate_key("Ed448"),
        "Ed25519": lambda: OKPKey.generate_key("Ed25519"),
        "Ed448": lambda: OKPKey.generate_key("Ed448"),
    }[alg]()


# --- reference material ----------------------------------------------------------------

REFERENCE_JWK = {"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}
REFERENCE_TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6IjAwMDEifQ."
    "eyJuYW1lIjoiUXVvdGF0aW9uIFN5c3RlbSIsInN1YiI6InF1b3RlcyIsImlzcyI6Ik15IEFQSSBHYXRld2F5In0."
    "ggVOHYnVFB8GVPE-VOIo3jD71gTkLffAY0hQOGXPL2I"
)


def test_reference_post_token_verifies() -> None:
    vt = verifier(keyset(REFERENCE_JWK)).verify(REFERENCE_TOKEN)
    assert isinstance(vt, VerifiedToken)
    assert vt.claims == {"name": "Quotation System", "sub": "quotes", "iss": "My API Gateway"}
    assert vt.header == {"typ": "JWT", "alg": "HS256", "kid": "0001"}
    assert vt.payload == b'{"name":"Quotation System","sub":"quotes","iss":"My API Gateway"}'
    assert (vt.kid, vt.exp, vt.nbf) == ("0001", None, None)


def test_reference_token_with_one_flipped_signature_char_fails() -> None:
    tampered = REFERENCE_TOKEN[:-2] + ("A" if REFERENCE_TOKEN[-2] != "A" else "B") + REFERENCE_TOKEN[-1]
    assert code_of(verifier(keyset(REFERENCE_JWK)), tampered) == "bad_signature"


def test_reference_token_with_edited_claims_fails() -> None:
    h, _, s = REFERENCE_TOKEN.split(".")
    forged = f"{h}.{enc({'sub': 'admin'})}.{s}"
    assert code_of(verifier(keyset(REFERENCE_JWK)), forged) == "bad_signature"


# RFC 7515 Appendix A. The payload's exp is 1300819380, so the clock stands just before it.
RFC_PAYLOAD = {"iss": "joe", "exp": 1300819380, "http://example.com/is_root": True}
RFC_NOW = 1300819379.0
RFC_PAYLOAD_B64 = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
RFC_A1_JWK = {"kty": "oct", "k": "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}
RFC_A1_TOKEN = (
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9." + RFC_PAYLOAD_B64 + ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
)
RFC_A2_JWK = {
    "kty": "RSA",
    "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
    "e": "AQAB",
    "d": "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ",
    "p": "4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc",
    "q": "uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc",
    "dp": "BwKfV3Akq5_MFZDFZCnW-wzl-CCo83WoZvnLQwCTeDv8uzluRSnm71I3QCLdhrqE2e9YkxvuxdBfpT_PI7Yz-FOKnu1R6HsJeDCjn12Sk3vmAktV2zb34MCdy7cpdTh_YVr7tss2u6vneTwrA86rZtu5Mbr1C1XsmvkxHQAdYo0",
    "dq": "h_96-mK1R_7glhsum81dZxjTnYynPbZpHziZjeeHcXYsXaaMwkOlODsWa7I9xXDoRwbKgB719rrmI2oKr6N3Do9U0ajaHF-NKJnwgjMd2w9cjz3_-kyNlxAr2v4IKhGNpmM5iIgOS1VZnOZ68m6_pbLBSp3nssTdlqvd0tIiTHU",
    "qi": "IYd7DHOhrWvxkwPQsRM2tOgrjbcrfvtQJipd-DlcxyVuuM9sQLdgjVk2oy26F0EmpScGLq2MowX7fhd_QJQ3ydy5cY7YIBi87w93IKLEdfnbJtoOPLUW0ITrJReOgo1cq9SbsxYawBgfp_gh6A5603k2-ZQwVK0JKSHuLFkuQ3U",
}
RFC_A2_TOKEN = (
    "eyJhbGciOiJSUzI1NiJ9." + RFC_PAYLOAD_B64 + ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7"
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjt"
    "QBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6Lbg"
    "GY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
)
RFC_A3_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    "d": "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI",
}
RFC_A3_TOKEN = (
    "eyJhbGciOiJFUzI1NiJ9." + RFC_PAYLOAD_B64 + ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
)
RFC_A4_JWK = {
    "kty": "EC",
    "crv": "P-521",
    "x": "AekpBQ8ST8a8VcfVOTNl353vSrDCLLJXmPk06wTjxrrjcBpXp5EOnYG_NjFZ6OvLFV1jSfS9tsz4qUxcWceqwQGk",
    "y": "ADSmRA43Z1DSNx_RvcLI87cdL07l6jQyyBXMoxVg_l2Th-x3S1WDhjDly79ajL4Kkd0AZMaZmh9ubmf63e3kyMj2",
}
RFC_A4_TOKEN = (
    "eyJhbGciOiJFUzUxMiJ9.UGF5bG9hZA.AdwMgeerwtHoh-l192l60hp9wAHZFVJbLfD_UxMi70cwnZOYaRI1bKPWROc-mZZqwqT2SI-KGDKB"
    "34XO0aw_7XdtAG8GaSwFKdCAPZgoXD2YBJZCPEX3xKpRwcdOO8KpEHwJjyqOgzDO7iKvU8vcnwNrmxYbSW9ERBXukOXolLzeO_Jn"
)


@pytest.mark.parametrize(
    ("jwk", "token", "alg"),
    [(RFC_A1_JWK, RFC_A1_TOKEN, "HS256"), (RFC_A2_JWK, RFC_A2_TOKEN, "RS256"), (RFC_A3_JWK, RFC_A3_TOKEN, "ES256")],
    ids=["A.1-HS256", "A.2-RS256", "A.3-ES256"],
)
def test_rfc7515_appendix_a_vectors(jwk: dict, token: str, alg: str) -> None:
    vt = verifier(keyset(jwk), now=RFC_NOW).verify(token)
    assert vt.claims == RFC_PAYLOAD and vt.header["alg"] == alg and vt.exp == 1300819380.0
    # the same vectors are expired one second later (now >= exp)
    assert code_of(verifier(keyset(jwk), now=RFC_NOW + 1), token) == "expired"


def test_rfc7515_a4_es512_signature_is_checked_before_the_payload() -> None:
    # A.4's payload is "Payload", not a JWT claims set: with the right key the signature passes
    # and the payload is rejected; with another P-521 key the signature is what fails.
    assert code_of(verifier(keyset(RFC_A4_JWK)), RFC_A4_TOKEN) == "malformed"
    assert code_of(verifier(keyset(ECKey.generate_key("P-521"))), RFC_A4_TOKEN) == "bad_signature"


# --- every algorithm -------------------------------------------------------------------

ALL_ALGS = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "ES256K", "EdDSA", "EdDSA-448", "Ed25519", "Ed448",
]  # fmt: skip


@pytest.mark.parametrize("name", ALL_ALGS)
def test_every_algorithm_verifies_and_rejects_a_wrong_key(name: str) -> None:
    alg = name.split("-")[0]
    key = new_key(name)
    token = sign(key, alg, {"sub": "alice", "exp": NOW + 60}, kid="k1")
    vt = verifier(keyset(key, kid="k1")).verify(token)
    assert vt.claims["sub"] == "alice" and vt.kid == "k1" and vt.header["alg"] == alg

    other = RSAKey.generate_key(2048) if alg[:2] in ("RS", "PS") else new_key(name)
    assert code_of(verifier(keyset(other, kid="k1")), token) == "bad_signature"


def test_kid_selects_the_key() -> None:
    k1, k2 = OctKey.generate_key(256), OctKey.generate_key(256)
    ks = keyset(dict(k1.as_dict()) | {"kid": "one"}, dict(k2.as_dict()) | {"kid": "two"})
    v = verifier(ks)
    assert v.verify(sign(k2, "HS256", kid="two")).kid == "two"
    assert v.verify(sign(k1, "HS256", kid="one")).kid == "one"
    assert code_of(v, sign(k1, "HS256", kid="two")) == "bad_signature"  # kid picks k2 only
    assert code_of(v, sign(k1, "HS256", kid="three")) == "no_key"
    assert v.verify(sign(k2, "HS256")).kid == "two"  # no kid: every HS256 key is tried


def test_same_kid_twice_tries_both_keys() -> None:
    wrong, right = OctKey.generate_key(256), OctKey.generate_key(256)
    ks = keyset(dict(wrong.as_dict()) | {"kid": "dup"}, dict(right.as_dict()) | {"kid": "dup"})
    vt = verifier(ks).verify(sign(right, "HS256", {"sub": "second"}, kid="dup"))
    assert vt.claims["sub"] == "second"


def test_token_kid_does_not_match_keys_without_kid() -> None:
    key = OctKey.generate_key(256)
    v = verifier(keyset(key))
    assert v.verify(sign(key, "HS256")).kid is None
    assert code_of(v, sign(key, "HS256", kid="x")) == "no_key"


# --- attacks (RFC 8725 §2) -------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_rejected(alg: str) -> None:
    v = verifier(keyset(REFERENCE_JWK))
    assert code_of(v, forge({"alg": alg, "kid": "0001"}, {"sub": "admin"}, None)) == "unsupported_alg"
    assert code_of(v, forge({"alg": alg}, {"sub": "admin"}, lambda m: b"sig")) == "unsupported_alg"


def test_unknown_alg_is_rejected() -> None:
    v = verifier(keyset(REFERENCE_JWK))
    for alg in ("HS1", "RS1", "hs256", "ES256 ", ""):
        assert code_of(v, forge({"alg": alg}, {}, lambda m: b"x")) == "unsupported_alg"


def test_alg_confusion_hs256_with_rsa_public_pem_as_secret() -> None:
    rsa = rsa_key()
    pem = rsa.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def hmac_with_pem(msg: bytes) -> bytes:
        return hmac.new(pem, msg, hashlib.sha256).digest()

    forged = forge({"alg": "HS256", "kid": "rsa"}, {"sub": "admin"}, hmac_with_pem)
    forged_nokid = forge({"alg": "HS256"}, {"sub": "admin"}, hmac_with_pem)
    only_rsa = verifier(keyset(rsa, kid="rsa"))
    assert code_of(only_rsa, forged) == "no_key"
    assert code_of(only_rsa, forged_nokid) == "no_key"
    # with an HMAC key also present, the RSA key is still never used as an HMAC secret
    mixed = verifier(keyset(rsa.as_dict(private=False) | {"kid": "rsa"}, OctKey.generate_key(256)))
    assert code_of(mixed, forged_nokid) == "bad_signature"
    # the legitimate RS256 token still verifies
    assert only_rsa.verify(sign(rsa, "RS256", kid="rsa")).kid == "rsa"


def test_embedded_jwk_header_is_never_trusted() -> None:
    attacker = RSAKey.generate_key(2048)
    header = {"alg": "RS256", "jwk": dict(attacker.as_dict(private=False))}
    token = forge(header, {"sub": "admin"}, signer(attacker, "RS256"))
    assert code_of(verifier(keyset(rsa_key())), token) == "bad_signature"
    assert code_of(verifier(keyset(REFERENCE_JWK)), token) == "no_key"


@pytest.mark.parametrize("param", ["jku", "x5u"])
def test_jku_and_x5u_are_ignored(param: str) -> None:
    attacker, ours = OctKey.generate_key(256), OctKey.generate_key(256)
    header = {"alg": "HS256", param: "http://127.0.0.1:1/attacker-keys.json"}
    v = verifier(keyset(ours))
    assert code_of(v, forge(header, {"sub": "admin"}, signer(attacker, "HS256"))) == "bad_signature"
    assert v.verify(forge(header, {"sub": "ok"}, signer(ours, "HS256"))).claims["sub"] == "ok"


def test_x5c_header_is_ignored() -> None:
    ours = OctKey.generate_key(256)
    token = forge({"alg": "HS256", "x5c": ["MIIB"], "x5t": "abc"}, {"sub": "ok"}, signer(ours, "HS256"))
    assert verifier(keyset(ours)).verify(token).claims == {"sub": "ok"}


@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "exp", ["http://example.com/x"]])
def test_unknown_crit_is_rejected(crit: Any) -> None:
    key = OctKey.generate_key(256)
    token = forge({"alg": "HS256", "crit": crit, "exp": 1}, {"sub": "x"}, signer(key, "HS256"))
    assert code_of(verifier(keyset(key)), token) == "crit"


def test_unencoded_payload_b64_false_is_rejected() -> None:
    key = OctKey.generate_key(256)
    token = forge({"alg": "HS256", "b64": False}, {"sub": "x"}, signer(key, "HS256"))
    assert code_of(verifier(keyset(key)), token) == "crit"


def test_key_with_use_enc_never_verifies() -> None:
    key = rsa_key()
    token = sign(key, "RS256", kid="e")
    assert code_of(verifier(keyset(key, kid="e", use="enc")), token) == "no_key"
    assert verifier(keyset(key, kid="e", use="sig")).verify(token).kid == "e"


def test_jwk_alg_restriction_refuses_another_alg_of_the_same_key() -> None:
    key = rsa_key()
    v = verifier(keyset(key, alg="RS256"))
    assert v.verify(sign(key, "RS256")).header["alg"] == "RS256"
    assert code_of(v, sign(key, "PS256")) == "no_key"


def test_es256_token_against_p384_key() -> None:
    p256, p384 = ECKey.generate_key("P-256"), ECKey.generate_key("P-384")
    assert code_of(verifier(keyset(p384)), sign(p256, "ES256")) == "no_key"
    # and a P-384 signature relabelled as ES256 cannot find a key either
    relabelled = forge({"alg": "ES256"}, {"sub": "x"}, signer(p384, "ES384"))
    assert code_of(verifier(keyset(p384)), relabelled) == "no_key"


def test_oversize_token() -> None:
    v = verifier(keyset(REFERENCE_JWK))
    assert code_of(v, "a" * 16385) == "too_large"
    assert code_of(verifier(keyset(REFERENCE_JWK), max_token_size=100), REFERENCE_TOKEN) == "too_large"
    assert verifier(keyset(REFERENCE_JWK), max_token_size=len(REFERENCE_TOKEN)).verify(REFERENCE_TOKEN)


def _nested(depth: int) -> bytes:
    return b'{"sub":"x","n":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_deeply_nested_json_is_rejected() -> None:
    key = OctKey.generate_key(256)
    v = verifier(keyset(key))
    ok = forge({"alg": "HS256"}, _nested(MAX_JSON_DEPTH), signer(key, "HS256"))
    assert v.verify(ok).claims["sub"] == "x"
    for depth in (MAX_JSON_DEPTH + 1, 3000):  # 3000 is past the interpreter's recursion limit
        token = forge({"alg": "HS256"}, _nested(depth), signer(key, "HS256"))
        assert code_of(v, token) == "malformed"
    deep_header = forge({"alg": "HS256", "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
                        {}, signer(key, "HS256"))  # fmt: skip
    assert code_of(v, deep_header) == "malformed"


@pytest.mark.parametrize(
    "claims",
    [{"exp": "4102444800"}, {"exp": True}, {"exp": None}, {"nbf": [1]}, {"nbf": {"t": 1}}, {"exp": False}],
)
def test_non_numeric_exp_nbf(claims: dict) -> None:
    key = OctKey.generate_key(256)
    assert code_of(verifier(keyset(key)), sign(key, "HS256", claims)) == "bad_claims"


def test_huge_exp_is_bad_claims_not_a_crash() -> None:
    key = OctKey.generate_key(256)
    token = forge({"alg": "HS256"}, b'{"exp":1' + b"0" * 400 + b"}", signer(key, "HS256"))
    assert code_of(verifier(keyset(key)), token) == "bad_claims"


def test_nan_and_infinity_are_not_json() -> None:
    key = OctKey.generate_key(256)
    for raw in (b'{"exp":NaN}', b'{"exp":Infinity}', b'{"nbf":-Infinity}'):
        assert code_of(verifier(keyset(key)), forge({"alg": "HS256"}, raw, signer(key, "HS256"))) == "malformed"


@pytest.mark.parametrize(
    ("claims", "leeway", "now", "code"),
    [
        ({"exp": 1000}, 0, 1000.0, "expired"),
        ({"exp": 1000}, 0, 999.999, None),
        ({"exp": 1000}, 30, 1030.0, "expired"),
        ({"exp": 1000}, 30, 1029.999, None),
        ({"exp": 1000.5}, 0, 1000.5, "expired"),
        ({"nbf": 1000}, 0, 999.999, "not_yet_valid"),
        ({"nbf": 1000}, 0, 1000.0, None),
        ({"nbf": 1000}, 30, 969.999, "not_yet_valid"),
        ({"nbf": 1000}, 30, 970.0, None),
        ({"nbf": 1000, "exp": 2000}, 0, 1500.0, None),
    ],
)
def test_exp_nbf_with_leeway_boundaries(claims: dict, leeway: float, now: float, code: str | None) -> None:
    key = OctKey.generate_key(256)
    v = verifier(keyset(key), now=now, leeway=leeway)
    token = sign(key, "HS256", claims)
    if code is None:
        vt = v.verify(token)
        assert (vt.exp, vt.nbf) == (claims.get("exp"), claims.get("nbf"))
    else:
        assert code_of(v, token) == code


# --- shape -----------------------------------------------------------------------------


def _good() -> tuple[Verifier, str]:
    return verifier(keyset(REFERENCE_JWK)), REFERENCE_TOKEN


@pytest.mark.parametrize("bad", ["+", "/", "=", " ", "\n", "\t", "%", "é", "\x00"])
def test_bad_base64_characters(bad: str) -> None:
    v, token = _good()
    h, p, s = token.split(".")
    for variant in (f"{h}{bad}.{p}.{s}", f"{h}.{p[:10]}{bad}{p[10:]}.{s}", f"{h}.{p}.{s}{bad}"):
        assert code_of(v, variant) == "malformed"


def test_padding_is_rejected() -> None:
    v, token = _good()
    h, p, s = token.split(".")
    assert code_of(v, f"{h}=.{p}.{s}") == "malformed"
    assert code_of(v, f"{h}.{p}.{s}=") == "malformed"


def test_non_canonical_base64url_is_rejected() -> None:
    v, token = _good()
    h, p, s = token.split(".")
    # s has 43 chars (len % 4 == 3): its last char carries 2 unused bits that must be zero
    assert s[-1] == "I"
    assert code_of(v, f"{h}.{p}.{s[:-1]}J") == "malformed"
    assert code_of(v, f"{h}.{p}.{s}AA") == "malformed"  # length % 4 == 1 is impossible


@pytest.mark.parametrize(("parts", "code"), [(1, "malformed"), (2, "malformed"), (4, "malformed"), (5, "wrong_type"), (6, "malformed")])
def test_part_count(parts: int, code: str) -> None:
    v, token = _good()
    segments = token.split(".")
    candidate = ".".join((segments * 2)[:parts])
    assert code_of(v, candidate) == code


def test_jwe_with_empty_encrypted_key_is_wrong_type() -> None:
    v, _ = _good()
    assert code_of(v, "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..aGVsbG8.aGVsbG8.aGVsbG8") == "wrong_type"


def test_empty_parts_and_signature() -> None:
    v, token = _good()
    h, p, s = token.split(".")
    assert code_of(v, f"{h}.{p}.") == "bad_signature"
    assert code_of(v, f".{p}.{s}") == "malformed"
    assert code_of(v, f"{h}..{s}") == "malformed"
    assert code_of(v, "") == "malformed"
    assert code_of(v, "..") == "malformed"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ([1, 2], "malformed"),
        ("HS256", "malformed"),
        ({}, "malformed"),
        ({"alg": 256}, "malformed"),
        ({"alg": None}, "malformed"),
        ({"alg": "HS256", "kid": 1}, "malformed"),
        ({"alg": "HS256", "kid": None}, "malformed"),
        ({"alg": "HS256", "kid": ["0001"]}, "malformed"),
    ],
)
def test_header_shape(header: Any, code: str) -> None:
    v, _ = _good()
    key = OctKey.import_key(b"fantasticjwt-but-longer")
    with pytest.raises(TokenError) as info:
        v.verify(forge(header, {"sub": "x"}, signer(key, "HS256")))
    assert info.value.code == code
    assert "could not be processed" not in info.value.detail  # a deliberate check, not the safety net


def test_duplicate_header_member_is_rejected() -> None:
    key = OctKey.generate_key(256)
    raw_header = b'{"alg":"none","alg":"HS256"}'
    token = forge(raw_header, {"sub": "x"}, signer(key, "HS256"))
    assert code_of(verifier(keyset(key)), token) == "malformed"


@pytest.mark.parametrize("payload", [b"[1]", b'"str"', b"42", b"not json", b"\xff\xfe{}", b'{"a":1}x', b'{"a":1,"a":2}'])
def test_payload_must_be_one_json_object(payload: bytes) -> None:
    key = OctKey.generate_key(256)
    with pytest.raises(TokenError) as info:
        verifier(keyset(key)).verify(forge({"alg": "HS256"}, payload, signer(key, "HS256")))
    assert info.value.code == "malformed"
    assert "JWT payload is not" in info.value.detail  # rejected by the check, not by a crash


def test_non_str_token() -> None:
    v, token = _good()
    assert code_of(v, token.encode()) == "malformed"
    assert code_of(v, None) == "malformed"


# --- fuzzing ---------------------------------------------------------------------------

_FUZZ_VERIFIER = Verifier(
    KeySet.merge([parse_jwk_set(json.dumps({"keys": [REFERENCE_JWK]}), "ref"), keyset(RFC_A3_JWK), keyset(RFC_A2_JWK)]),
    clock=ManualClock(NOW),
    cache_size=16,
    negative_cache_size=16,
)
_B64URL = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=200)


def _only_token_errors(token: str) -> None:
    try:
        result = _FUZZ_VERIFIER.verify(token)
    except TokenError:
        return
    assert isinstance(result, VerifiedToken)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_arbitrary_text(token: str) -> None:
    _only_token_errors(token)


@settings(max_examples=400, deadline=None)
@given(_B64URL, _B64URL, _B64URL)
def test_fuzz_three_base64url_parts(h: str, p: str, s: str) -> None:
    _only_token_errors(f"{h}.{p}.{s}")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["alg", "kid", "crit", "typ", "b64", "jwk", "x"]),
        st.sampled_from(["HS256", "ES256", "RS256", "none", "0001"]) | _JSON,
    ),
    _JSON,
    st.binary(max_size=300),
)
def test_fuzz_structured_headers_and_payloads(header: dict, payload: Any, sig: bytes) -> None:
    _only_token_errors(f"{enc(header)}.{enc(payload)}.{b64(sig)}")
