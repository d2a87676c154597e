"""Key and token tooling, in process: :mod:`jwtgate.jose.keygen`, ``issue`` and ``inspect``.

The ``jwtgate jwk``/``jwtgate token`` commands are tested as real subprocesses in
``tests/cli``; the many option combinations are tested here, against the same functions.
"""

from __future__ import annotations

import datetime
import json
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.x509.oid import NameOID
from joserfc import jwe, jws
from joserfc.jwk import ECKey, KeySet as JoseKeySet, OKPKey, RSAKey

from jwtgate.clock import ManualClock
from jwtgate.errors import KeySourceError
from jwtgate.jose.inspect import inspect_token, time_claims
from jwtgate.jose.issue import (
    IssueError,
    TokenSpec,
    generate_jwk,
    issue_token,
    jwk_from_pem,
    jwk_from_secret,
    parse_claim_option,
    parse_time_option,
    public_jwks,
    thumbprint,
    write_jwks_file,
)
from jwtgate.jose.keys import load_jwk_set_file, parse_jwk_set
from jwtgate.jose.verify import Verifier

POST_KEY = {"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}
POST_TOKEN = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6IjAwMDEifQ."
              "eyJuYW1lIjoiUXVvdGF0aW9uIFN5c3RlbSIsInN1YiI6InF1b3RlcyIsImlzcyI6Ik15IEFQSSBHYXRld2F5In0."
              "ggVOHYnVFB8GVPE-VOIo3jD71gTkLffAY0hQOGXPL2I")
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
RFC7638_KEY = {  # RFC 7638 §3.1
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
         "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Qvzq"
         "Y368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
         "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
}
NOW = 1_700_000_000


def b64decode(segment: str) -> bytes:
    import base64
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def algorithms(jwk: dict) -> set[str]:
    return set(parse_jwk_set(json.dumps({"keys": [jwk]}), "test").entries[0].algorithms)


# -- keys -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kty, kw, check, algs", [
    ("oct", {}, {"bits": 256}, {"HS256", "HS384", "HS512"}),
    ("oct", {"alg": "HS512"}, {"bits": 512, "alg": "HS512"}, {"HS512"}),
    ("oct", {"alg": "A128KW"}, {"bits": 128, "alg": "A128KW"}, set()),
    ("RSA", {}, {"bits": 2048}, {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("RSA", {"size": 3072, "alg": "PS384", "use": "sig"}, {"bits": 3072, "alg": "PS384", "use": "sig"}, {"PS384"}),
    ("EC", {}, {"crv": "P-256"}, {"ES256"}),
    ("EC", {"alg": "ES512"}, {"crv": "P-521", "alg": "ES512"}, {"ES512"}),
    ("EC", {"crv": "P-384"}, {"crv": "P-384"}, {"ES384"}),
    ("OKP", {}, {"crv": "Ed25519"}, {"EdDSA", "Ed25519"}),
    ("OKP", {"crv": "Ed448", "alg": "EdDSA"}, {"crv": "Ed448", "alg": "EdDSA"}, {"EdDSA"}),
    ("RSA", {"use": "enc"}, {"bits": 2048, "use": "enc"}, set()),
])
def test_generate(kty, kw, check, algs):
    key = generate_jwk(kty, kid="new", **kw)
    assert key["kty"] == kty and key["kid"] == "new"
    assert "d" in key or "k" in key
    if kty == "oct":
        assert len(b64decode(key["k"])) * 8 == check["bits"]
    if kty == "RSA":
        assert RSAKey.import_key(key).raw_value.key_size == check["bits"]
    for member in ("crv", "alg", "use"):
        assert key.get(member) == check.get(member)
    assert algorithms(key) == algs  # as the gateway loads it


def test_generated_keys_differ_and_list_values_first():
    a, b = generate_jwk("oct", kid="a"), generate_jwk("oct", kid="a")
    assert a["k"] != b["k"]
    assert list(generate_jwk("EC", kid="e", alg="ES256", use="sig")) == ["crv", "x", "y", "d", "kty", "kid", "use", "alg"]


@pytest.mark.parametrize("kty, kw, message", [
    ("RSA", {"size": 1024}, "RSA key size must be"),
    ("oct", {"size": 100}, "multiple of 8"),
    ("oct", {"alg": "HS512", "size": 256}, "at least 512 bits"),
    ("oct", {"alg": "A128KW", "size": 256}, "exactly 128 bits"),
    ("EC", {"crv": "Ed25519"}, "not a EC signature curve"),
    ("EC", {"size": 256}, "--size does not apply"),
    ("RSA", {"crv": "P-256"}, "--crv does not apply"),
    ("oct", {"alg": "RS256"}, "RS256 needs a RSA key"),
    ("EC", {"alg": "ES384", "crv": "P-256"}, "ES384 needs curve P-384"),
    ("RSA", {"alg": "RS256", "use": "enc"}, "signature algorithm"),
    ("RSA", {"alg": "RSA-OAEP-256", "use": "sig"}, "encryption algorithm"),
    ("RSA", {"alg": "RSA1_5"}, "unsupported algorithm RSA1_5"),
    ("DSA", {}, "unsupported key type DSA"),
    ("oct", {"use": "wrap"}, '"use" must be'),
])
def test_generate_refuses(kty, kw, message):
    with pytest.raises(IssueError, match=message.replace("(", r"\(")):
        generate_jwk(kty, kid="k", **kw)


def test_generate_needs_a_kid():
    with pytest.raises(IssueError, match="kid"):
        generate_jwk("oct", kid="")


def test_from_secret_is_the_posts_key():
    assert jwk_from_secret(b"fantasticjwt", kid="0001") == POST_KEY
    assert list(jwk_from_secret(b"fantasticjwt", kid="0001")) == ["k", "kty", "kid"]
    assert jwk_from_secret(b"x" * 32, kid="k", alg="HS256", use="sig")["alg"] == "HS256"
    for secret, kw, message in [(b"", {}, "empty"), (b"x" * 513, {}, "longer than 4096"),
                                (b"s", {"alg": "ES256"}, "ES256 needs a EC key")]:
        with pytest.raises(IssueError, match=message):
            jwk_from_secret(secret, kid="k", **kw)


def _pem(key, private: bool = True, fmt=serialization.PrivateFormat.PKCS8, password: bytes | None = None) -> bytes:
    if not private:
        return key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc)


def test_from_pem_kinds():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwk_from_pem(_pem(rsa_key, fmt=serialization.PrivateFormat.TraditionalOpenSSL), kid="r", alg="PS256")
    assert jwk["alg"] == "PS256" and RSAKey.import_key(jwk).raw_value.private_numbers() == rsa_key.private_numbers()

    ec_key = ec.generate_private_key(ec.SECP384R1())
    public = jwk_from_pem(_pem(ec_key, private=False), kid="e")
    assert public["crv"] == "P-384" and "d" not in public
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ec_key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ec_key, hashes.SHA256()))
    assert jwk_from_pem(cert.public_bytes(serialization.Encoding.PEM), kid="e") == public

    ed = ed448.Ed448PrivateKey.generate()
    jwk = jwk_from_pem(_pem(ed), kid="o")
    assert jwk["crv"] == "Ed448" and "d" in jwk and algorithms(jwk) == {"EdDSA", "Ed448"}

    secp = ec.generate_private_key(ec.SECP256K1())
    assert algorithms(jwk_from_pem(_pem(secp), kid="k")) == {"ES256K"}


def test_from_pem_refuses():
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = _pem(key, password=b"pw")
    assert ECKey.import_key(jwk_from_pem(encrypted, kid="e", password=b"pw")).raw_value.private_numbers() \
        == key.private_numbers()
    for data, kw, message in [
        (encrypted, {}, "encrypted: give its password"),
        (encrypted, {"password": b"no"}, "wrong password"),
        (_pem(key), {"password": b"pw"}, "not encrypted: give no password"),
        (b"-----BEGIN X-----\nAAAA\n-----END X-----\n", {}, "not a PEM"),
        (_pem(key), {"alg": "ES512"}, "ES512 needs curve P-521"),
        (_pem(key), {"alg": "RS256"}, "RS256 needs a RSA key"),
    ]:
        with pytest.raises(IssueError, match=message):
            jwk_from_pem(data, kid="e", **kw)


def test_public_keeps_only_public_values_and_maps_key_ops():
    keys = [generate_jwk("RSA", kid="r", alg="RS256"), generate_jwk("EC", kid="e"),
            generate_jwk("OKP", kid="o", use="sig"), generate_jwk("oct", kid="s"), {"kty": "future", "kid": "f"}]
    keys[0].update(key_ops=["sign"], extra="a private note", x5u="https://issuer/cert")
    public, notes = public_jwks(keys, "set.jwk")
    assert [k["kid"] for k in public] == ["r", "e", "o"]
    assert notes == ['key #3 (kid "s") is a secret (oct) key: left out; share it some other way',
                     'key #4 (kid "f") has an unsupported key type: left out']
    for key in public:
        assert not PRIVATE_MEMBERS & set(key), key
    assert set(public[0]) == {"n", "e", "kty", "kid", "alg", "key_ops", "x5u"} and public[0]["key_ops"] == ["verify"]
    assert public[1]["x"] == ECKey.import_key(keys[1]).as_dict(private=False)["x"]
    assert public[2]["x"] == OKPKey.import_key(keys[2]).as_dict(private=False)["x"] and public[2]["use"] == "sig"
    with pytest.raises(IssueError, match="oct keys are secrets, never published"):
        public_jwks([POST_KEY], "api_secret.jwk")


def test_thumbprint():
    assert thumbprint(RFC7638_KEY) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert len(thumbprint(RFC7638_KEY, "sha512")) == 86
    key = generate_jwk("EC", kid="e")
    assert thumbprint(key) == thumbprint(public_jwks([key], "x")[0][0])
    with pytest.raises(IssueError, match="unsupported digest"):
        thumbprint(key, "md5")


# -- option values ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("now", NOW), ("1h", NOW + 3600), ("+30m", NOW + 1800), ("-5m", NOW - 300), ("1d12h", NOW + 129600),
    ("3600", NOW + 3600), ("@1893456000", 1893456000), ("2030-01-01T00:00:00Z", 1893456000),
    ("2030-01-01T01:00:00+01:00", 1893456000), ("2030-01-01 00:00:00", 1893456000),
])
def test_time_option(text, value):
    assert parse_time_option(text, NOW) == value


@pytest.mark.parametrize("text", ["tomorrow", "1x", "@soon", "2030-13-01", ""])
def test_time_option_refuses(text):
    with pytest.raises(IssueError, match="invalid time"):
        parse_time_option(text, NOW)


@pytest.mark.parametrize("text, pair", [
    ("role=admin", ("role", "admin")), ("n:=1", ("n", 1)), ("s=1", ("s", "1")), ("ok:=true", ("ok", True)),
    ("l:=[1,\"a\"]", ("l", [1, "a"])), ("e=", ("e", "")), ("url=a=b", ("url", "a=b")),
    ("https://x/role=admin", ("https://x/role", "admin")),
])
def test_claim_option(text, pair):
    assert parse_claim_option(text) == pair


@pytest.mark.parametrize("text", ["novalue", "=x", ":=1", "n:={", "n:=NaN"])
def test_claim_option_refuses(text):
    with pytest.raises(IssueError):
        parse_claim_option(text)


# -- tokens -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    sets = {
        "post": [POST_KEY],
        "ec": [generate_jwk("EC", kid="ec1")],
        "two": [generate_jwk("EC", kid="a"), generate_jwk("OKP", kid="b")],
        "enc": [generate_jwk("RSA", kid="enc1", use="enc")],
        "kw": [generate_jwk("oct", kid="kw1", alg="A256KW")],
        "dir": [generate_jwk("oct", kid="dir1", alg="dir")],
        "ecdh": [generate_jwk("EC", kid="x", use="enc")],
    }
    sets["ec.pub"] = public_jwks(sets["ec"], "ec")[0]
    sets["enc.pub"] = public_jwks(sets["enc"], "enc")[0]
    out = {}
    for name, jwks in sets.items():
        out[name] = str(tmp / f"{name}.jwk")
        write_jwks_file(out[name], jwks)
    return out


def verify(token: str, path: str, clock=None):
    keys = load_jwk_set_file(path)
    return Verifier(keys, cache_size=0, **({"clock": clock} if clock else {})).verify(token)


def test_the_posts_token_both_ways(files):
    exact = issue_token(TokenSpec(key=files["post"], header_json='{"typ":"JWT","alg":"HS256","kid":"0001"}',
                                  claims_json='{"name":"Quotation System","sub":"quotes","iss":"My API Gateway"}'))
    built = issue_token(TokenSpec(key=files["post"], claims=[("name", "Quotation System")], sub="quotes",
                                  iss="My API Gateway"))
    assert exact.token == built.token == POST_TOKEN


def test_claims_order_and_types(files):
    clock = ManualClock(NOW + 0.5)
    issued = issue_token(TokenSpec(
        key=files["ec"], claims_json='{"scope":"read","sub":"x"}',
        claims=[("role", "admin"), ("n", 1)], iss="me", aud=("a1", "a2"), exp="1h", nbf="-5m", iat=True,
        jti="auto"), clock)
    header, payload, _ = issued.token.split(".")
    assert b64decode(header) == b'{"typ":"JWT","alg":"ES256","kid":"ec1"}'
    claims = json.loads(b64decode(payload))
    assert list(claims) == ["scope", "sub", "role", "n", "iss", "aud", "exp", "nbf", "iat", "jti"]
    assert claims["aud"] == ["a1", "a2"] and claims["n"] == 1
    assert (claims["exp"], claims["nbf"], claims["iat"]) == (NOW + 3600, NOW - 300, NOW)
    assert len(claims["jti"]) >= 20 and claims == issued.claims
    vt = verify(issued.token, files["ec.pub"], clock)
    assert vt.kid == "ec1" and vt.claims == claims
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pub = JoseKeySet.import_key_set(json.load(open(files["ec.pub"])))
        assert json.loads(jws.deserialize_compact(issued.token, pub).payload) == claims
    assert issue_token(TokenSpec(key=files["ec"], aud=("one",))).claims == {"aud": "one"}


@pytest.mark.parametrize("spec, message", [
    ({}, "--key FILE is needed to sign"),
    ({"key": "enc.pub"}, "is an encryption key"),
    ({"key": "ec.pub"}, "is a public key: signing needs the private key"),
    ({"key": "ec", "alg": "RS256"}, "cannot sign RS256"),
    ({"key": "ec", "alg": "XX256"}, "unsupported signature algorithm XX256"),
    ({"key": "ec", "kid": "nope"}, 'no key with kid "nope"'),
    ({"key": "two"}, r'2 keys that can sign: choose one with --kid \("a", "b"\)'),
    ({"key": "ec", "header_json": '{"typ":"JWT"}'}, 'has no "alg"'),
    ({"key": "ec", "header_json": '{"alg":"ES256"}', "alg": "ES384"}, "contradicts"),
    ({"key": "ec", "header_json": '{"alg":"ES256","kid":"ec1"}', "kid": "ec2"}, "contradicts"),
    ({"key": "ec", "claims_json": '{"a":1,"a":2}'}, "duplicate member name"),
    ({"key": "ec", "claims_json": "[1]"}, "not a JSON object"),
    ({"key": "ec", "claims_json": "{"}, "not valid JSON"),
    ({"key": "ec", "claims": [("sub", "a")], "sub": "b"}, 'claim "sub" is given twice'),
    ({"key": "ec", "exp": "tomorrow"}, 'invalid time "tomorrow"'),
    ({"key": "ec", "type": "nested"}, "needs --encrypt-to"),
    ({"key": "ec", "type": "sealed"}, "unknown token type"),
    ({"key": "ec", "type": "signed", "encrypt_to": "enc.pub"}, "not --type signed"),
    ({"key": "ec", "type": "encrypted", "encrypt_to": "enc.pub"}, "is not signed"),
    ({"key": "ec", "encrypt_to": "ecdh"}, "ECDH-ES is not supported"),
    ({"key": "ec", "encrypt_to": "kw", "enc_alg": "dir"}, "is bound to A256KW"),
    ({"key": "ec", "encrypt_to": "ec.pub"}, "is a EC key|ECDH-ES"),
    ({"key": "ec", "encrypt_to": "enc.pub", "enc_alg": "A256KW"}, "A256KW needs oct"),
    ({"key": "ec", "encrypt_to": "enc.pub", "enc": "A999GCM"}, "unsupported content encryption"),
    ({"type": "encrypted", "encrypt_to": "dir", "enc": "A128GCM"}, "cannot encrypt with dir and A128GCM"),
    ({"key": "/nonexistent.jwk"}, "cannot read /nonexistent.jwk"),
])
def test_sign_refuses(files, spec, message):
    for name in ("key", "encrypt_to"):
        if name in spec and spec[name] in files:
            spec[name] = files[spec[name]]
    with pytest.raises(IssueError, match=message):
        issue_token(TokenSpec(**spec))


def test_nested_and_encrypted_tokens_decrypt_with_joserfc(files):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private = {n: JoseKeySet.import_key_set(json.load(open(files[n]))) for n in ("enc", "kw", "dir")}
        nested = issue_token(TokenSpec(key=files["ec"], sub="quotes", encrypt_to=files["enc.pub"]))
        assert nested.type == "nested" and nested.recipient.alg == "RSA-OAEP-256"
        obj = jwe.decrypt_compact(nested.token, private["enc"], algorithms=["RSA-OAEP-256", "A256GCM"])
        assert obj.protected == {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "enc1", "cty": "JWT"}
        assert verify(obj.plaintext.decode(), files["ec.pub"]).claims == {"sub": "quotes"}
        for target, enc_alg, enc in [("kw", None, "A128CBC-HS256"), ("dir", None, "A256GCM"),
                                     ("enc.pub", "RSA-OAEP", "A192GCM")]:
            issued = issue_token(TokenSpec(type="encrypted", sub="q", claims=[("n", 1)], encrypt_to=files[target],
                                           enc_alg=enc_alg, enc=enc))
            alg = issued.recipient.alg
            obj = jwe.decrypt_compact(issued.token, private["enc" if target == "enc.pub" else target],
                                      algorithms=[alg, enc])
            assert obj.protected["typ"] == "JWT" and obj.protected["enc"] == enc == issued.header["enc"]
            assert json.loads(obj.plaintext) == {"sub": "q", "n": 1}
        assert issue_token(TokenSpec(type="encrypted", sub="q", encrypt_to=files["kw"])).recipient.alg == "A256KW"


# -- inspect ----------------------------------------------------------------------------------

def test_inspect_without_keys_decodes_only():
    ins = inspect_token("Bearer " + POST_TOKEN[:-4] + "AAAA \n")
    assert ins.kind == "JWS" and ins.verified is None and ins.ok
    assert ins.claims == {"name": "Quotation System", "sub": "quotes", "iss": "My API Gateway"}


@pytest.mark.parametrize("token, code", [
    (POST_TOKEN, None),
    (POST_TOKEN[:-4] + "AAAA", "bad_signature"),
    (POST_TOKEN.replace("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6IjAwMDEifQ",
                        "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6IjAwMDIifQ"), "no_key"),
    ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "unsupported_alg"),
])
def test_inspect_verdicts_are_the_gateways(files, token, code):
    ins = inspect_token(token, [files["post"]])
    assert ins.verified is (code is None) and (ins.error.code if ins.error else None) == code
    if code is None:
        assert ins.key == f'key #0 (kid "0001", oct) in {files["post"]}, HS256'


def test_inspect_names_the_key_among_several_files(files):
    token = issue_token(TokenSpec(key=files["two"], kid="b", sub="x")).token
    ins = inspect_token(token, [files["ec"], files["two"]])
    assert ins.key == f'key #1 (kid "b", OKP) in {files["two"]}, EdDSA'


def test_inspect_times_and_leeway(files):
    clock = ManualClock(NOW)
    token = issue_token(TokenSpec(key=files["post"], sub="q", exp="-1m", iat=True), clock).token
    assert inspect_token(token, [files["post"]], clock=clock).error.code == "expired"
    assert inspect_token(token, [files["post"]], leeway=300, clock=clock).verified is True
    ins = inspect_token(token)
    assert [(t["claim"], t["utc"], t["relative"]) for t in time_claims(ins.claims, NOW)] == [
        ("iat", "2023-11-14 22:13:20 UTC", "now"), ("exp", "2023-11-14 22:12:20 UTC", "1m ago")]
    assert time_claims({"exp": NOW + 90061}, NOW)[0]["relative"] == "in 1d 1h"
    assert time_claims({"exp": 1e300, "nbf": "x"}, NOW) == [
        {"claim": "exp", "value": 1e300, "utc": "out of range", "relative": time_claims({"exp": 1e300}, NOW)[0]["relative"]}]


def test_inspect_nested(files):
    token = issue_token(TokenSpec(key=files["ec"], sub="quotes", encrypt_to=files["enc.pub"])).token
    ins = inspect_token(token, [files["enc"], files["ec.pub"]])
    assert ins.kind == "JWE" and ins.verified and ins.key.startswith('key #0 (kid "enc1") in ')
    assert ins.inner.verified and ins.inner.claims == {"sub": "quotes"} and ins.ok
    assert inspect_token(token).verified is None
    wrong = inspect_token(token, [files["kw"]])
    assert wrong.verified is False and wrong.error.code == "no_key"
    other = str(files["enc"]).replace("enc.jwk", "enc2.jwk")
    write_jwks_file(other, [generate_jwk("RSA", kid="enc1", use="enc")])
    assert inspect_token(token, [other]).error.code == "decrypt_failed"


@pytest.mark.parametrize("token, message", [
    ("abc", r"not a compact JWS \(3 parts\) or JWE \(5 parts\): 1 part"),
    ("a.b.c.d", "4 part"),
    ("!!!.e30.x", "the header is not base64url"),
    ("bm90IGpzb24.e30.x", "the header is not valid JSON"),
])
def test_inspect_malformed(token, message):
    with pytest.raises(IssueError, match=message):
        inspect_token(token)


def test_inspect_with_a_key_file_the_gateway_refuses(tmp_path):
    bad = tmp_path / "bad.jwk"
    bad.write_text('{"keys": [{"kty": "RSA", "n": "x"}]}')
    with pytest.raises(KeySourceError, match="invalid RSA key"):
        inspect_token(POST_TOKEN, [str(bad)])
