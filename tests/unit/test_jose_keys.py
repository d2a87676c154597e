"""Key set loading: JWK Set parsing, algorithm families, candidate selection, key hygiene."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from jwtgate.errors import KeySourceError
from jwtgate.jose.keys import (
    MAX_JWKS_BYTES,
    KeyEntry,
    KeySet,
    hmac_key_warnings,
    load_jwk_set_file,
    parse_jwk_set,
)

REFERENCE_JWK = {"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}


def jwks(*keys: dict) -> str:
    return json.dumps({"keys": list(keys)})


def public(key) -> dict:
    return dict(key.as_dict(private=False))


# --- parsing ---------------------------------------------------------------------------


def test_reference_oct_key_parses_with_hmac_family() -> None:
    ks = parse_jwk_set(jwks(REFERENCE_JWK), "api_secret.jwk")
    assert len(ks) == 1
    (entry,) = ks.entries
    assert (entry.kid, entry.kty, entry.alg, entry.use) == ("0001", "oct", None, None)
    assert entry.algorithms == {"HS256", "HS384", "HS512"}
    assert entry.key.raw_value == b"fantasticjwt"


def test_short_hmac_key_emits_no_warning_but_is_reported() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ks = parse_jwk_set(jwks(REFERENCE_JWK), "x")
    assert caught == []
    assert hmac_key_warnings(ks) == ['HMAC key "0001" is 96 bits, shorter than the 256 bits of HS256']


def test_hmac_key_warnings_respects_alg_and_length() -> None:
    long_enough = OctKey.generate_key(256).as_dict() | {"kid": "ok"}
    hs512_short = OctKey.generate_key(384).as_dict() | {"kid": "big", "alg": "HS512"}
    no_kid = OctKey.generate_key(128).as_dict()
    ks = parse_jwk_set(jwks(long_enough, hs512_short, no_kid), "x")
    assert hmac_key_warnings(ks) == [
        'HMAC key "big" is 384 bits, shorter than the 512 bits of HS512',
        "HMAC key without kid is 128 bits, shorter than the 256 bits of HS256",
    ]


def test_bare_jwk_is_accepted() -> None:
    ks = parse_jwk_set(json.dumps(REFERENCE_JWK), "x")
    assert [e.kid for e in ks.entries] == ["0001"]


def test_bytes_with_utf8_bom_are_accepted() -> None:
    ks = parse_jwk_set(b"\xef\xbb\xbf" + jwks(REFERENCE_JWK).encode(), "x")
    assert len(ks) == 1


def test_unknown_kty_is_skipped_and_noted() -> None:
    ks = parse_jwk_set(jwks({"kty": "AKP", "kid": "pq", "pub": "AAAA"}, REFERENCE_JWK), "x")
    assert [e.kid for e in ks.entries] == ["0001"]
    assert len(ks.skipped) == 1 and "AKP" in ks.skipped[0]


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        "[]",
        '{"keys": {}}',
        '{"keys": [1]}',
        '{"keys": [{"k": "AAAA"}]}',  # no kty
        '{"keys": [{"kty": "oct", "k": "AAAA", "kid": 7}]}',  # kid not a string
        '{"keys": [{"kty": "oct"}]}',  # no k
        '{"keys": [{"kty": "oct", "k": ""}]}',  # empty HMAC key: forgeable
        '{"keys": [{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}]}',
        '{"keys": [{"kty": "oct", "k": "AAAA", "exp": NaN}]}',
    ],
)
def test_invalid_documents_raise_key_source_error_naming_the_source(doc: str) -> None:
    with pytest.raises(KeySourceError, match="conf/keys.jwk"):
        parse_jwk_set(doc, "conf/keys.jwk")


def test_deeply_nested_document_is_a_key_source_error() -> None:
    with pytest.raises(KeySourceError):
        parse_jwk_set("[" * 100_000 + "]" * 100_000, "x")


def test_errors_never_contain_key_material() -> None:
    rsa_jwk = dict(RSAKey.generate_key(2048).as_dict(private=True))
    rsa_jwk["n"] = rsa_jwk["n"][:-8] + "!!!!!!!!"  # corrupt the modulus
    with pytest.raises(KeySourceError) as info:
        parse_jwk_set(jwks(rsa_jwk), "x")
    text = str(info.value)
    for member in ("n", "d", "p", "q"):
        assert rsa_jwk[member][:16] not in text


def test_key_entry_repr_shows_no_key_material() -> None:
    ks = parse_jwk_set(jwks(REFERENCE_JWK), "x")
    text = repr(ks.entries[0]) + repr(ks)
    assert "0001" in text
    assert "ZmFudGFzdGljand0" not in text and "fantasticjwt" not in text


def test_oct_key_that_is_an_rsa_public_pem_is_refused() -> None:
    pem = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    k = OctKey.import_key(b"placeholder-secret").as_dict()
    from joserfc.util import urlsafe_b64encode

    k["k"] = urlsafe_b64encode(pem).decode()
    with pytest.raises(KeySourceError):
        parse_jwk_set(jwks(k), "x")


# --- algorithm families and restrictions -------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (lambda: RSAKey.generate_key(2048), {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
        (lambda: ECKey.generate_key("P-256"), {"ES256"}),
        (lambda: ECKey.generate_key("P-384"), {"ES384"}),
        (lambda: ECKey.generate_key("P-521"), {"ES512"}),
        (lambda: ECKey.generate_key("secp256k1"), {"ES256K"}),
        (lambda: OKPKey.generate_key("Ed25519"), {"EdDSA", "Ed25519"}),
        (lambda: OKPKey.generate_key("Ed448"), {"EdDSA", "Ed448"}),
        (lambda: OKPKey.generate_key("X25519"), set()),
    ],
)
def test_algorithm_family_follows_kty_and_curve(key, expected: set[str]) -> None:
    ks = parse_jwk_set(jwks(public(key())), "x")
    assert ks.entries[0].algorithms == expected


def test_private_asymmetric_jwk_keeps_only_public_half() -> None:
    for key in (RSAKey.generate_key(2048), ECKey.generate_key("P-256"), OKPKey.generate_key("Ed25519")):
        entry = parse_jwk_set(jwks(dict(key.as_dict(private=True))), "x").entries[0]
        assert entry.key.is_private is False
        assert dict(entry.key.as_dict()) == public(key)


def test_jwk_alg_restricts_to_one_algorithm() -> None:
    jwk = public(RSAKey.generate_key(2048)) | {"alg": "RS256"}
    entry = parse_jwk_set(jwks(jwk), "x").entries[0]
    assert (entry.alg, entry.algorithms) == ("RS256", frozenset({"RS256"}))


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (lambda: RSAKey.generate_key(2048), "HS256"),
        (lambda: OctKey.generate_key(256), "RS256"),
        (lambda: ECKey.generate_key("P-384"), "ES256"),
        (lambda: OKPKey.generate_key("Ed448"), "Ed25519"),
    ],
)
def test_jwk_alg_inconsistent_with_key_type_is_refused(key, alg: str) -> None:
    with pytest.raises(KeySourceError, match=alg):
        parse_jwk_set(jwks(public(key()) | {"alg": alg}), "x")


def test_encryption_keys_verify_nothing() -> None:
    enc = public(RSAKey.generate_key(2048)) | {"kid": "e", "use": "enc"}
    oaep = public(RSAKey.generate_key(2048)) | {"kid": "o", "alg": "RSA-OAEP"}
    sign_only = OctKey.generate_key(256).as_dict() | {"kid": "s", "key_ops": ["sign"]}
    ks = parse_jwk_set(jwks(enc, oaep, sign_only), "x")
    assert len(ks) == 3
    assert all(e.algorithms == frozenset() for e in ks.entries)
    for alg in ("RS256", "PS256", "HS256"):
        assert ks.candidates(alg, None) == ()
        for kid in ("e", "o", "s"):
            assert ks.candidates(alg, kid) == ()


def test_use_enc_entry_is_never_a_candidate_even_if_built_by_hand() -> None:
    key = RSAKey.generate_key(2048)
    entry = KeyEntry(kid="e", kty="RSA", alg=None, use="enc", algorithms=frozenset({"RS256"}), key=key)
    assert KeySet([entry]).candidates("RS256", "e") == ()
    assert KeySet([entry]).candidates("RS256", None) == ()


# --- candidate selection (NGINX Plus semantics) ------------------------------------------


def test_candidates_by_kid_and_alg() -> None:
    a = OctKey.generate_key(256).as_dict() | {"kid": "a"}
    b1 = OctKey.generate_key(256).as_dict() | {"kid": "b"}
    b2 = OctKey.generate_key(256).as_dict() | {"kid": "b"}
    r = public(RSAKey.generate_key(2048)) | {"kid": "a"}
    nokid = OctKey.generate_key(256).as_dict()
    ks = parse_jwk_set(jwks(a, b1, b2, r, nokid), "x")
    assert [e.kid for e in ks.candidates("HS256", "b")] == ["b", "b"]
    assert [e.kty for e in ks.candidates("HS256", "a")] == ["oct"]
    assert [e.kty for e in ks.candidates("RS256", "a")] == ["RSA"]
    assert [e.kid for e in ks.candidates("HS384", None)] == ["a", "b", "b", None]
    assert ks.candidates("HS256", "nope") == ()
    assert ks.candidates("ES256", None) == ()


def test_merge_pools_keys_in_order() -> None:
    one = parse_jwk_set(jwks(OctKey.generate_key(256).as_dict() | {"kid": "1"}), "one.jwk")
    two = parse_jwk_set(jwks(OctKey.generate_key(256).as_dict() | {"kid": "2"}), "two.jwk")
    merged = KeySet.merge([one, two])
    assert [e.kid for e in merged.entries] == ["1", "2"]
    assert [e.kid for e in merged.candidates("HS256", None)] == ["1", "2"]
    assert "one.jwk" in merged.source and "two.jwk" in merged.source


# --- files -------------------------------------------------------------------------------


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "api_secret.jwk"
    path.write_text(jwks(REFERENCE_JWK))
    ks = load_jwk_set_file(str(path))
    assert [e.kid for e in ks.entries] == ["0001"] and ks.source == str(path)


def test_load_file_with_no_usable_key_fails(tmp_path: Path) -> None:
    path = tmp_path / "empty.jwk"
    path.write_text(jwks({"kty": "AKP", "pub": "AAAA"}))
    with pytest.raises(KeySourceError, match="no usable keys in .*empty.jwk"):
        load_jwk_set_file(str(path))
    path.write_text('{"keys": []}')
    with pytest.raises(KeySourceError, match="no usable keys"):
        load_jwk_set_file(str(path))
    assert len(parse_jwk_set('{"keys": []}', "x")) == 0  # parsing alone allows an empty set


def test_load_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(KeySourceError, match="cannot read key file"):
        load_jwk_set_file(str(tmp_path / "missing.jwk"))


def test_load_oversized_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "big.jwk"
    path.write_bytes(b" " * (MAX_JWKS_BYTES + 1))
    with pytest.raises(KeySourceError, match="larger than"):
        load_jwk_set_file(str(path))


# --- decryption keys (auth_jwt_type encrypted | nested) ---------------------------------


@pytest.mark.parametrize(
    ("nbytes", "algs", "encs"),
    [
        (16, {"A128KW", "A128GCMKW", "dir"}, {"A128GCM"}),
        (24, {"A192KW", "A192GCMKW", "dir"}, {"A192GCM"}),
        (32, {"A256KW", "A256GCMKW", "dir"}, {"A256GCM", "A128CBC-HS256"}),
        (48, {"dir"}, {"A192CBC-HS384"}),
        (64, {"dir"}, {"A256CBC-HS512"}),
        (12, set(), set()),
    ],
)
def test_oct_key_decrypts_with_what_its_length_fits(nbytes: int, algs: set[str], encs: set[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns about the 12-byte key
        jwk = OctKey.import_key(b"k" * nbytes).as_dict()
    entry = parse_jwk_set(jwks(jwk), "x").entries[0]
    assert entry.decrypt_algorithms == algs and entry.dir_encs == encs
    assert entry.algorithms == {"HS256", "HS384", "HS512"}  # and it still verifies HMAC of any length


def test_rsa_decryption_needs_the_private_half_and_keeps_it_only_for_decryption() -> None:
    key = RSAKey.generate_key(2048)
    entry = parse_jwk_set(jwks(dict(key.as_dict(private=True))), "x").entries[0]
    assert entry.decrypt_algorithms == {"RSA-OAEP", "RSA-OAEP-256", "RSA-OAEP-384", "RSA-OAEP-512"}
    assert entry.key.is_private is False and entry.decrypt_key.is_private is True
    assert key.as_dict(private=True)["d"][:16] not in repr(entry) and "decrypts=" in repr(entry)
    public_entry = parse_jwk_set(jwks(public(key)), "x").entries[0]
    assert public_entry.decrypt_algorithms == frozenset() and public_entry.decrypt_key is None


@pytest.mark.parametrize(
    ("extra", "algs", "sig"),
    [
        ({"use": "enc"}, {"RSA-OAEP", "RSA-OAEP-256", "RSA-OAEP-384", "RSA-OAEP-512"}, set()),
        ({"use": "sig"}, set(), {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
        ({"alg": "RSA-OAEP-256"}, {"RSA-OAEP-256"}, set()),
        ({"alg": "PS256"}, set(), {"PS256"}),
        ({"key_ops": ["decrypt"]}, {"RSA-OAEP", "RSA-OAEP-256", "RSA-OAEP-384", "RSA-OAEP-512"}, set()),
        ({"key_ops": ["verify"]}, set(), {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
        ({"alg": "RSA1_5"}, set(), set()),
    ],
)
def test_use_alg_and_key_ops_bind_an_rsa_key(extra: dict, algs: set[str], sig: set[str]) -> None:
    entry = parse_jwk_set(jwks(dict(RSAKey.generate_key(2048).as_dict(private=True)) | extra), "x").entries[0]
    assert entry.decrypt_algorithms == algs and entry.algorithms == sig


@pytest.mark.parametrize("alg", ["A128KW", "dir", "A256GCM"])
def test_jwe_alg_that_does_not_fit_an_oct_key_is_refused(alg: str) -> None:
    with pytest.raises(KeySourceError, match=alg):
        parse_jwk_set(jwks(OctKey.import_key(b"k" * 20).as_dict() | {"alg": alg}), "x")


def test_ec_and_okp_keys_decrypt_nothing() -> None:
    """ECDH-ES is refused, so no EC or OKP key is ever a decryption key."""
    for key in (ECKey.generate_key("P-256"), OKPKey.generate_key("X25519")):
        entry = parse_jwk_set(jwks(dict(key.as_dict(private=True)) | {"use": "enc"}), "x").entries[0]
        assert entry.decrypt_algorithms == frozenset() and entry.decrypt_key is None


def test_decrypt_candidates_by_kid_alg_and_enc() -> None:
    a = OctKey.import_key(b"a" * 16, parameters={"kid": "a"}).as_dict()
    b = OctKey.import_key(b"b" * 32, parameters={"kid": "b"}).as_dict()
    s = OctKey.import_key(b"s" * 16, parameters={"kid": "s", "use": "sig"}).as_dict()
    ks = parse_jwk_set(jwks(a, b, s), "x")
    assert [e.kid for e in ks.decrypt_candidates("A128KW", "A128GCM", None)] == ["a"]
    assert [e.kid for e in ks.decrypt_candidates("dir", "A128CBC-HS256", None)] == ["b"]
    assert ks.decrypt_candidates("dir", "A128CBC-HS256", "a") == ()
    assert ks.decrypt_candidates("A128KW", "A128GCM", "s") == ()  # use: sig never decrypts
    assert ks.kids == {"a", "b", "s"}


def test_too_many_keys_is_a_key_source_error() -> None:
    from jwtgate.jose.keys import MAX_JWKS_KEYS

    doc = json.dumps({"keys": [REFERENCE_JWK] * (MAX_JWKS_KEYS + 1)})
    with pytest.raises(KeySourceError, match="more than"):
        parse_jwk_set(doc, "x")
