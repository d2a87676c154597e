"""JWE and nested JWT verification: RFC 7516 / RFC 7520 vectors, every accepted algorithm pair,
key binding, and one regression test per refusal (algorithms out of policy, zip, crit, wrong
token type, tampering, keys that must not decrypt)."""

from __future__ import annotations

import base64
import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwe, jws
from joserfc.jwk import ECKey, OctKey, RSAKey

from jwtgate.clock import ManualClock
from jwtgate.errors import TokenError
from jwtgate.jose.jwe import jwe_registry
from jwtgate.jose.keys import JWE_CONTENT_ALGORITHMS, JWE_KEY_ALGORITHMS, KeySet, parse_jwk_set
from jwtgate.jose.verify import Verifier

NOW = 1_700_000_000.0
VECTORS = json.loads((Path(__file__).parent / "jose_vectors" / "rfc7516_rfc7520.json").read_text())
CLAIMS = {"sub": "alice", "iss": "idp", "exp": int(NOW) + 600}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def keyset(*jwks: dict) -> KeySet:
    return parse_jwk_set(json.dumps({"keys": list(jwks)}), "test")


def verifier(ks: KeySet, token_type: str = "encrypted", now: float = NOW, **kw: Any) -> Verifier:
    kw.setdefault("cache_size", 0)
    kw.setdefault("negative_cache_size", 0)
    return Verifier(ks, token_type=token_type, clock=ManualClock(now), **kw)


def code_of(v: Verifier, token: str) -> str:
    with pytest.raises(TokenError) as info:
        v.verify(token)
    return info.value.code


@functools.cache
def rsa(i: int = 0) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": f"rsa-{i}"})


def priv(key: Any, **extra: Any) -> dict:
    return dict(key.as_dict(private=True)) | extra


def oct_key(nbytes: int, kid: str = "oct") -> OctKey:
    return OctKey.import_key(os.urandom(nbytes), parameters={"kid": kid})


def enc_key_for(alg: str, enc: str) -> Any:
    if alg.startswith("RSA-OAEP"):
        return rsa()
    if alg == "dir":
        return oct_key(JWE_CONTENT_ALGORITHMS[enc])
    return oct_key(int(alg[1:4]) // 8)


def encrypt(alg: str, enc: str, plaintext: bytes | str, key: Any, **header: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwe.encrypt_compact({"alg": alg, "enc": enc, **header}, plaintext, key,
                                   registry=jwe_registry(alg, enc))


def sign(key: Any, alg: str, claims: dict, **header: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jws.serialize_compact({"alg": alg, **header}, json.dumps(claims), key, algorithms=[alg])


# --- standard vectors --------------------------------------------------------------------


@pytest.mark.parametrize("vec", VECTORS["jwe"], ids=[v["id"] for v in VECTORS["jwe"]])
def test_rfc7516_and_rfc7520_jwe_vectors(vec: dict) -> None:
    """In-scope vectors decrypt to the RFC's plaintext; out-of-scope ones are refused by name
    before any cryptography (RSA1_5, PBES2, ECDH-ES, zip)."""
    from jwtgate.jose.jwe import decrypt_jwe, parse_jwe_header, split_jwe

    token = vec["compact"]
    ks = keyset(vec["key"]) if vec["key"] else KeySet([])
    if vec["expect"] == "ok":
        parts = split_jwe(token)
        assert parts is not None
        plaintext, entry = decrypt_jwe(token, parts, parse_jwe_header(parts[0]), ks)
        assert plaintext.decode() == vec["plaintext"]
        assert entry.kid == vec["key"].get("kid")
        # The plaintext is prose, not a claims set: decrypted, then refused as a JWT.
        assert code_of(verifier(ks), token) == "malformed"
    else:
        assert code_of(verifier(ks), token) == vec["expect"]
        assert code_of(verifier(ks, "nested"), token) == vec["expect"]


@pytest.mark.parametrize("vec", VECTORS["jws"], ids=[v["id"] for v in VECTORS["jws"]])
def test_rfc7520_jws_vectors_verify_before_the_payload_is_read(vec: dict) -> None:
    ks = keyset(vec["key"])
    # The signature verifies: only then is the (prose) payload read and refused as a claims set.
    assert code_of(verifier(ks, "signed"), vec["compact"]) == "malformed"
    head, payload, sig = vec["compact"].split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 1
    assert code_of(verifier(ks, "signed"), f"{head}.{payload}.{b64(bytes(raw))}") == "bad_signature"
    assert base64.urlsafe_b64decode(payload + "==").decode() == VECTORS["jws_payload"]


# --- every accepted algorithm pair ---------------------------------------------------------


@pytest.mark.parametrize("alg", JWE_KEY_ALGORITHMS)
@pytest.mark.parametrize("enc", list(JWE_CONTENT_ALGORITHMS))
def test_every_key_management_and_content_encryption_pair(alg: str, enc: str) -> None:
    key = enc_key_for(alg, enc)
    token = encrypt(alg, enc, json.dumps(CLAIMS), key, kid=key.kid)
    vt = verifier(keyset(priv(key))).verify(token)
    assert vt.claims == CLAIMS and vt.kind == "encrypted" and vt.kid == key.kid
    assert vt.header["alg"] == alg and vt.header["enc"] == enc and vt.jwe_header == vt.header
    assert json.loads(vt.payload) == CLAIMS
    # a key of the same kind that is not in the set
    other = enc_key_for(alg, enc) if not alg.startswith("RSA") else RSAKey.generate_key(2048)
    assert code_of(verifier(keyset(priv(other, kid=key.kid))), token) == "bad_decryption"


def test_rsa_oaep_384_and_512_interoperate_with_an_independent_implementation() -> None:
    """Built by hand with cryptography (RFC 7516 §5.1): proves our RSA-OAEP-384/-512 are the
    registered algorithms, not just self-consistent."""
    key = rsa()
    public = key.get_op_key("encrypt")
    for bits, h in ((384, hashes.SHA384), (512, hashes.SHA512)):
        header = b64(json.dumps({"alg": f"RSA-OAEP-{bits}", "enc": "A256GCM"}).encode())
        cek, iv = os.urandom(32), os.urandom(12)
        ek = public.encrypt(cek, padding.OAEP(mgf=padding.MGF1(h()), algorithm=h(), label=None))
        sealed = AESGCM(cek).encrypt(iv, json.dumps(CLAIMS).encode(), header.encode())
        token = ".".join([header, b64(ek), b64(iv), b64(sealed[:-16]), b64(sealed[-16:])])
        assert verifier(keyset(priv(key))).verify(token).claims == CLAIMS


# --- nested tokens -------------------------------------------------------------------------


def test_nested_token_inner_jws_is_verified_with_the_same_keys() -> None:
    signer = ECKey.generate_key("P-256", parameters={"kid": "sig"})
    enc_key = rsa()
    inner = sign(signer, "ES256", CLAIMS, kid="sig", typ="JWT")
    token = encrypt("RSA-OAEP-256", "A256GCM", inner, enc_key, kid=enc_key.kid, cty="JWT")
    ks = keyset(dict(signer.as_dict(private=False)), priv(enc_key))
    vt = verifier(ks, "nested").verify(token)
    assert vt.claims == CLAIMS and vt.kind == "nested"
    assert vt.header["alg"] == "ES256" and vt.kid == "sig"  # the inner header
    assert vt.jwe_header["alg"] == "RSA-OAEP-256" and vt.payload == inner.encode()
    # without the signing key, decryption alone authenticates nothing
    assert code_of(verifier(keyset(priv(enc_key)), "nested"), token) == "no_key"


def test_nested_token_signed_by_an_outsider_is_refused() -> None:
    """Anyone can encrypt to the gateway's public key: the inner signature is what counts."""
    enc_key = rsa()
    good = ECKey.generate_key("P-256", parameters={"kid": "sig"})
    evil = ECKey.generate_key("P-256", parameters={"kid": "sig"})
    token = encrypt("RSA-OAEP", "A128GCM", sign(evil, "ES256", CLAIMS, kid="sig"), enc_key)
    ks = keyset(dict(good.as_dict(private=False)), priv(enc_key))
    assert code_of(verifier(ks, "nested"), token) == "bad_signature"


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_nested_inner_alg_none_or_confused_is_refused(alg: str) -> None:
    enc_key = rsa()
    rsa_sig = RSAKey.generate_key(2048, parameters={"kid": "sig"})
    body = b64(json.dumps(CLAIMS).encode())
    if alg == "none":
        inner = b64(b'{"alg":"none"}') + "." + body + "."
        expected = "unsupported_alg"
    else:  # HS256 keyed with the RSA public key's PEM
        import hashlib
        import hmac

        pem = rsa_sig.as_pem(private=False)
        signing_input = b64(b'{"alg":"HS256","kid":"sig"}') + "." + body
        mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        inner = f"{signing_input}.{b64(mac)}"
        expected = "no_key"
    token = encrypt("RSA-OAEP", "A256GCM", inner, enc_key)
    ks = keyset(dict(rsa_sig.as_dict(private=False)), priv(enc_key))
    assert code_of(verifier(ks, "nested"), token) == expected


def test_nested_inner_time_claims_are_checked() -> None:
    hs = oct_key(32, "h")
    enc_key = oct_key(16, "w")
    inner = sign(hs, "HS256", {"sub": "x", "exp": int(NOW) - 1}, kid="h")
    token = encrypt("A128KW", "A128GCM", inner, enc_key)
    ks = keyset(priv(hs, alg="HS256"), priv(enc_key, alg="A128KW"))
    assert code_of(verifier(ks, "nested"), token) == "expired"
    assert verifier(ks, "nested", now=NOW - 10).verify(token).claims["sub"] == "x"


# --- wrong type: a token of another kind than auth_jwt_type --------------------------------


def test_each_type_refuses_the_others() -> None:
    hs = oct_key(32, "h")
    wrap = oct_key(32, "w")
    signed = sign(hs, "HS256", CLAIMS, kid="h")
    encrypted = encrypt("A256KW", "A256GCM", json.dumps(CLAIMS), wrap, kid="w")
    nested = encrypt("A256KW", "A256GCM", signed, wrap, kid="w")
    ks = keyset(priv(hs, alg="HS256"), priv(wrap, alg="A256KW"))
    assert verifier(ks, "signed").verify(signed).kind == "signed"
    assert verifier(ks, "encrypted").verify(encrypted).kind == "encrypted"
    assert verifier(ks, "nested").verify(nested).kind == "nested"
    for kind, token in (("signed", encrypted), ("signed", nested), ("encrypted", signed),
                        ("encrypted", nested), ("nested", signed), ("nested", encrypted)):
        assert code_of(verifier(ks, kind), token) == "wrong_type", (kind, token[:20])


# --- refusals -------------------------------------------------------------------------------


def _forge(header: dict, ek: bytes = b"k" * 24, iv: bytes = b"i" * 12, ct: bytes = b"c" * 8, tag: bytes = b"t" * 16) -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(ek), b64(iv), b64(ct), b64(tag)])


@pytest.mark.parametrize("alg", ["RSA1_5", "PBES2-HS256+A128KW", "PBES2-HS512+A256KW", "ECDH-ES",
                                 "ECDH-ES+A128KW", "ECDH-ES+A256KW", "none", "HS256", "RSA-OAEP-1024", "\u0000x"])
def test_key_management_outside_the_list_is_refused_before_decryption(alg: str) -> None:
    key = oct_key(16)
    ks = keyset(priv(key))
    assert code_of(verifier(ks), _forge({"alg": alg, "enc": "A128GCM"})) == "unsupported_alg"


@pytest.mark.parametrize("enc", ["A128CBC", "A512GCM", "none", "", "A128CBC-HS256 "])
def test_content_encryption_outside_the_list_is_refused(enc: str) -> None:
    assert code_of(verifier(keyset(priv(oct_key(16)))), _forge({"alg": "A128KW", "enc": enc})) == "unsupported_alg"


def test_compressed_jwe_is_refused_even_with_the_right_key() -> None:
    key = oct_key(16, "k")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = jwe.encrypt_compact({"alg": "A128KW", "enc": "A128GCM", "zip": "DEF"}, json.dumps(CLAIMS), key,
                                    algorithms=["A128KW", "A128GCM", "DEF"])
    assert code_of(verifier(keyset(priv(key))), token) == "unsupported_alg"


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["urn:example"], []])
def test_crit_header_is_refused(crit: list) -> None:
    key = oct_key(16, "k")
    token = encrypt("A128KW", "A128GCM", json.dumps(CLAIMS), key)
    head, rest = token.split(".", 1)
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    forged = b64(json.dumps(header | {"crit": crit, "urn:example": 1}).encode()) + "." + rest
    assert code_of(verifier(keyset(priv(key))), forged) == "crit"


def test_embedded_jwk_and_jku_never_provide_a_key() -> None:
    """A token encrypted to the attacker's own key, pointing at it: never used."""
    attacker = oct_key(16, "mine")
    ours = oct_key(16, "ours")
    header = {"jwk": priv(attacker), "jku": "https://evil.example/keys", "x5u": "https://evil.example/x",
              "kid": "mine"}
    token = encrypt("A128KW", "A128GCM", json.dumps(CLAIMS), attacker, **header)
    assert code_of(verifier(keyset(priv(ours))), token) == "no_key"
    token = encrypt("A128KW", "A128GCM", json.dumps(CLAIMS), attacker, jwk=priv(attacker))
    assert code_of(verifier(keyset(priv(ours))), token) == "bad_decryption"


@pytest.mark.parametrize("part", [0, 1, 2, 3, 4])
def test_tampering_with_any_part_is_refused(part: int) -> None:
    key = oct_key(32, "k")
    token = encrypt("A256GCMKW", "A128CBC-HS256", json.dumps(CLAIMS), key, kid="k")
    parts = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(parts[part] + "=" * (-len(parts[part]) % 4)))
    raw[-1] ^= 1
    parts[part] = b64(bytes(raw))
    code = code_of(verifier(keyset(priv(key))), ".".join(parts))
    assert code in ("bad_decryption", "malformed"), code
    if part != 0:
        assert code == "bad_decryption"


def test_dir_with_an_encrypted_key_and_wrap_without_one_are_malformed() -> None:
    key = oct_key(16, "k")
    direct = encrypt("dir", "A128GCM", json.dumps(CLAIMS), key).split(".")
    direct[1] = b64(b"x" * 16)
    assert code_of(verifier(keyset(priv(key))), ".".join(direct)) == "malformed"
    wrapped = encrypt("A128KW", "A128GCM", json.dumps(CLAIMS), key).split(".")
    wrapped[1] = ""
    assert code_of(verifier(keyset(priv(key))), ".".join(wrapped)) == "malformed"


@pytest.mark.parametrize("token", ["a.b.c.d", "a.b.c.d.e.f", "eyJ.e30..e30.e30", "a.b.c.d.e=", "a..b.c.d"])
def test_shapes(token: str) -> None:
    assert code_of(verifier(keyset(priv(oct_key(16)))), token) in ("malformed", "wrong_type")


def test_header_size_and_depth_are_bounded() -> None:
    key = oct_key(16)
    ks = keyset(priv(key))
    assert code_of(verifier(ks), _forge({"alg": "A128KW", "enc": "A128GCM", "pad": "x" * 9000})) == "malformed"
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    assert code_of(verifier(ks), _forge({"alg": "A128KW", "enc": "A128GCM", "d": deep})) == "malformed"


# --- key binding ----------------------------------------------------------------------------


def test_public_rsa_key_and_use_sig_keys_never_decrypt() -> None:
    key = rsa()
    token = encrypt("RSA-OAEP", "A128GCM", json.dumps(CLAIMS), key, kid=key.kid)
    for jwk in (dict(key.as_dict(private=False)), priv(key, use="sig"), priv(key, key_ops=["sign", "verify"]),
                priv(key, alg="RS256"), priv(key, alg="RSA-OAEP-256")):
        assert code_of(verifier(keyset(jwk)), token) == "no_key", jwk.get("use") or jwk.get("alg") or jwk.get("key_ops")
    assert verifier(keyset(priv(key, use="enc", alg="RSA-OAEP"))).verify(token).claims == CLAIMS


def test_jwk_alg_binds_an_oct_key_to_one_algorithm() -> None:
    key = oct_key(32, "k")
    for alg, enc in (("A256KW", "A256GCM"), ("A256GCMKW", "A128GCM"), ("dir", "A256GCM"), ("dir", "A128CBC-HS256")):
        token = encrypt(alg, enc, json.dumps(CLAIMS), key)
        assert verifier(keyset(priv(key))).verify(token).claims == CLAIMS  # no alg: any that fits
        assert verifier(keyset(priv(key, alg=alg))).verify(token).claims == CLAIMS
        other = "A256KW" if alg != "A256KW" else "A256GCMKW"
        assert code_of(verifier(keyset(priv(key, alg=other))), token) == "no_key"
    # a content-encryption alg on a key means dir with that encryption only (RFC 7520 §5.6)
    token = encrypt("dir", "A128CBC-HS256", json.dumps(CLAIMS), key)
    assert code_of(verifier(keyset(priv(key, alg="A256GCM"))), token) == "no_key"


def test_kid_selects_the_decryption_key_and_all_keys_with_it_are_tried() -> None:
    a1, a2, b = oct_key(16, "a"), oct_key(16, "a"), oct_key(16, "b")
    ks = keyset(priv(a1), priv(a2), priv(b))
    token = encrypt("A128KW", "A128GCM", json.dumps(CLAIMS), a2, kid="a")
    assert verifier(ks).verify(token).kid == "a"
    assert code_of(verifier(ks), encrypt("A128KW", "A128GCM", json.dumps(CLAIMS), b, kid="a")) == "bad_decryption"
    # without a kid every fitting key is tried
    assert verifier(ks).verify(encrypt("A128KW", "A128GCM", json.dumps(CLAIMS), b)).kid == "b"


def test_failed_decryption_is_remembered_and_keys_swap_flushes() -> None:
    key, wrong = oct_key(16, "k"), oct_key(16, "k")
    token = encrypt("A128KW", "A128GCM", json.dumps(CLAIMS), key, kid="k")
    v = verifier(keyset(priv(wrong)), cache_size=10, negative_cache_size=10)
    assert code_of(v, token) == "bad_decryption"
    assert v.negative_cache is not None and len(v.negative_cache) == 1
    v.set_keys(keyset(priv(key)))
    assert v.verify(token).claims == CLAIMS


def test_unknown_kid_hook_fires_for_jwe_and_nested() -> None:
    seen: list[str] = []
    key = oct_key(16, "new")
    v = verifier(keyset(priv(oct_key(16, "old"))), on_unknown_kid=seen.append)
    assert code_of(v, encrypt("A128KW", "A128GCM", json.dumps(CLAIMS), key, kid="new")) == "no_key"
    assert seen == ["new"]
