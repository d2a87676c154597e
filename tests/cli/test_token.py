"""``jwtgate token sign`` and ``jwtgate token inspect``.

Signed tokens are checked with joserfc and with the gateway's verifier; encrypted ones are
decrypted with joserfc (the gateway does not accept JWE yet: that is another issue, so there
is no gateway round trip for them here).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import warnings

import pytest
from click.testing import CliRunner
from clitools import fails, jwtgate, ok
from joserfc import jwe, jws
from joserfc.jwk import KeySet as JoseKeySet

from jwtgate.cli.main import cli
from jwtgate.jose.issue import TokenSpec, generate_jwk, issue_token, public_jwks, write_jwks_file
from jwtgate.jose.keys import load_jwk_set_file
from jwtgate.jose.verify import Verifier
from jwtgate_e2e import EXAMPLES, POST_TOKEN, b64url_decode

POST_KEY_FILE = str(EXAMPLES / "conf" / "api_secret.jwk")
POST_HEADER = '{"typ":"JWT","alg":"HS256","kid":"0001"}'
POST_CLAIMS = '{"name":"Quotation System","sub":"quotes","iss":"My API Gateway"}'


def parts(token: str) -> tuple[bytes, bytes]:
    head, payload, _ = token.split(".")
    return b64url_decode(head), b64url_decode(payload)


def verify(token: str, key_file: str):
    return Verifier(load_jwk_set_file(key_file), cache_size=0).verify(token)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Files: ec.jwk (private, one key) and ec.pub.jwk, two.jwk (two signing keys), enc.jwk /
    enc.pub.jwk (RSA encryption key), kw.jwk (a 256-bit oct key for A256KW). Made once, in
    process (``jwk generate`` itself is tested in test_jwk.py); the tests only read them."""
    tmp = tmp_path_factory.mktemp("keys")
    sets = {"ec": [generate_jwk("EC", kid="ec1")], "two": [generate_jwk("EC", kid="a"), generate_jwk("OKP", kid="b")],
            "enc": [generate_jwk("RSA", kid="enc1", use="enc")], "kw": [generate_jwk("oct", kid="kw1", alg="A256KW")]}
    sets["ec.pub"] = public_jwks(sets["ec"], "ec")[0]
    sets["enc.pub"] = public_jwks(sets["enc"], "enc")[0]
    files = {}
    for name, jwks in sets.items():
        files[name] = str(tmp / f"{name}.jwk")
        write_jwks_file(files[name], jwks)
    return files


@pytest.mark.parametrize("command", [["token"], ["token", "sign"], ["token", "inspect"]], ids=" ".join)
def test_help_has_an_example(command):
    result = CliRunner().invoke(cli, [*command, "--help"], prog_name="jwtgate")
    assert result.exit_code == 0
    assert "Example" in result.output and "jwtgate token" in result.output.split("Example", 1)[1]


# -- the post's token -------------------------------------------------------------------------

def test_sign_reproduces_the_posts_token_from_its_header_and_payload():
    out = ok("token", "sign", "--key", POST_KEY_FILE, "--header-json", POST_HEADER, "--claims-json", POST_CLAIMS)
    assert out == POST_TOKEN + "\n"


def test_sign_reproduces_the_posts_token_from_options():
    out = ok("token", "sign", "--key", POST_KEY_FILE, "--claim", "name=Quotation System",
             "--sub", "quotes", "--iss", "My API Gateway")
    assert out == POST_TOKEN + "\n"


def test_the_posts_pipeline_end_to_end(tmp_path):
    """from-secret, then sign: the post's key file and quotes.jwt, without openssl."""
    key = tmp_path / "api_secret.jwk"
    ok("jwk", "from-secret", "fantasticjwt", "--kid", "0001", "-o", key)
    claims = tmp_path / "claims.json"
    claims.write_text(POST_CLAIMS + "\n")  # a final newline is not part of the claims
    out = tmp_path / "quotes.jwt"
    printed = ok("token", "sign", "--key", key, "--header-json", "-", "--claims-json", f"@{claims}",
                 "-o", out, input=POST_HEADER + "\n")
    assert printed == ""
    assert out.read_text() == (EXAMPLES / "quotes.jwt").read_text() == POST_TOKEN + "\n"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


# -- claims and headers -----------------------------------------------------------------------

def test_claims_in_order_and_types(keys):
    before = int(time.time())
    token = ok("token", "sign", "--key", keys["ec"], "--claims-json", '{"scope":"read","sub":"x"}',
               "--claim", "role=admin", "--claim", "n:=1", "--claim", "list:=[1,\"a\"]", "--claim", "s=1",
               "--iss", "me", "--aud", "a1", "--aud", "a2", "--exp", "1h", "--nbf", "-5m", "--iat",
               "--jti", "auto").strip()
    after = int(time.time())
    header, payload = parts(token)
    assert header == b'{"typ":"JWT","alg":"ES256","kid":"ec1"}'
    claims = json.loads(payload)
    assert list(claims) == ["scope", "sub", "role", "n", "list", "s", "iss", "aud", "exp", "nbf", "iat", "jti"]
    assert claims["role"] == "admin" and claims["n"] == 1 and claims["list"] == [1, "a"] and claims["s"] == "1"
    assert claims["aud"] == ["a1", "a2"]
    assert before + 3600 <= claims["exp"] <= after + 3600
    assert before - 300 <= claims["nbf"] <= after - 300
    assert before <= claims["iat"] <= after
    assert len(claims["jti"]) >= 20
    vt = verify(token, keys["ec"])
    assert vt.claims == claims and vt.kid == "ec1"
    # joserfc agrees
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pub = _joserfc_keys(keys["ec.pub"])
        assert jws.deserialize_compact(token, pub).payload == payload


def test_choosing_among_several_keys(keys):
    assert '2 keys that can sign: choose one with --kid ("a", "b")' in fails("token", "sign", "--key", keys["two"])
    token = ok("token", "sign", "--key", keys["two"], "--kid", "b", "--sub", "x").strip()
    assert json.loads(parts(token)[0]) == {"typ": "JWT", "alg": "EdDSA", "kid": "b"}
    # the kid in --header-json chooses the key too
    token = ok("token", "sign", "--key", keys["two"], "--header-json", '{"alg":"ES256","kid":"a"}').strip()
    assert parts(token)[0] == b'{"alg":"ES256","kid":"a"}' and verify(token, keys["two"]).kid == "a"


def test_sign_json_output_and_file(keys, tmp_path):
    out = json.loads(ok("token", "sign", "--key", keys["ec"], "--sub", "x", "--json"))
    assert out["type"] == "signed" and out["kid"] == "ec1" and out["alg"] == "ES256"
    assert out["header"] == {"typ": "JWT", "alg": "ES256", "kid": "ec1"} and out["claims"] == {"sub": "x"}
    assert verify(out["token"], keys["ec"]).claims == {"sub": "x"}
    path = tmp_path / "t.jwt"
    assert ok("token", "sign", "--key", keys["ec"], "--sub", "x", "-o", path) == ""
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_text().count(".") == 2


def test_sign_errors_exit_1_usage_errors_exit_2(keys):
    assert fails("token", "sign", "--key", keys["ec.pub"]) == \
        f'key #0 (kid "ec1") in {keys["ec.pub"]} is a public key: signing needs the private key'
    assert fails("token", "sign", "--key", keys["ec"], "--claim", "sub=a", "--sub", "b") == 'claim "sub" is given twice'
    assert "Invalid value for '--alg'" in fails("token", "sign", "--key", keys["ec"], "--alg", "none", code=2)


# -- encrypted and nested tokens (decrypted with joserfc: the gateway does not take JWE yet) ----

def _joserfc_keys(path: str) -> JoseKeySet:
    return JoseKeySet.import_key_set(json.loads(open(path).read()))


def test_nested_token_decrypts_with_joserfc(keys):
    token = ok("token", "sign", "--key", keys["ec"], "--sub", "quotes", "--encrypt-to", keys["enc.pub"]).strip()
    assert token.count(".") == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = jwe.decrypt_compact(token, _joserfc_keys(keys["enc"]), algorithms=["RSA-OAEP-256", "A256GCM"])
    assert obj.protected == {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "enc1", "cty": "JWT"}
    inner = obj.plaintext.decode()
    vt = verify(inner, keys["ec"])  # the inner JWS is what the gateway verifies
    assert vt.claims == {"sub": "quotes"} and vt.kid == "ec1"


def test_encrypted_token_decrypts_with_joserfc(keys):
    enc_alg, enc = "A256KW", "A128CBC-HS256"
    token = ok("token", "sign", "--type", "encrypted", "--sub", "quotes", "--claim", "n:=1",
               "--encrypt-to", keys["kw"], "--enc", enc).strip()
    obj = jwe.decrypt_compact(token, _joserfc_keys(keys["kw"]), algorithms=[enc_alg, enc])
    assert obj.protected["typ"] == "JWT" and obj.protected["alg"] == enc_alg and obj.protected["enc"] == enc
    assert json.loads(obj.plaintext) == {"sub": "quotes", "n": 1}


def test_inspect_decrypts_a_nested_token_and_verifies_the_inside(keys):
    token = ok("token", "sign", "--key", keys["ec"], "--sub", "quotes", "--encrypt-to", keys["enc.pub"])
    out = ok("token", "inspect", "--key", keys["enc"], "--key", keys["ec"], input=token)
    assert 'decrypted: yes, by key #0 (kid "enc1") in' in out and "RSA-OAEP-256, A256GCM" in out
    assert "inner JWT:" in out and '  verified:  yes, by key #0 (kid "ec1", EC)' in out
    assert '"sub": "quotes"' in out
    # without the decryption key: the header only, and no verdict
    out = ok("token", "inspect", input=token)
    assert "JWE (encrypted)" in out and "give --key with the decryption key" in out
    # with the wrong private key: refused, exit 1
    p = jwtgate("token", "inspect", "--key", keys["kw"], input=token)
    assert p.returncode == 1 and "NO: no_key" in p.stdout


# -- inspect ----------------------------------------------------------------------------------

def test_inspect_without_a_key_never_verifies_and_never_prints_the_token():
    tampered = POST_TOKEN[:-4] + "AAAA"
    p = jwtgate("token", "inspect", input=tampered + "\n")
    assert p.returncode == 0, p.stderr
    assert '"sub": "quotes"' in p.stdout and "JWS (signed), 186 characters" in p.stdout
    assert "verified:  not checked (give --key FILE)" in p.stdout
    assert tampered.split(".")[2] not in p.stdout + p.stderr and tampered not in p.stdout + p.stderr


def test_inspect_with_the_key_says_which_key_verified_it():
    out = ok("token", "inspect", "--key", POST_KEY_FILE, input=POST_TOKEN)
    assert f'verified:  yes, by key #0 (kid "0001", oct) in {POST_KEY_FILE}, HS256' in out
    # as an argument, with "Bearer " pasted along
    assert "verified:  yes" in ok("token", "inspect", "--key", POST_KEY_FILE, f"Bearer {POST_TOKEN}")


def test_inspect_says_exactly_why_a_token_is_refused():
    p = jwtgate("token", "inspect", "--key", POST_KEY_FILE, input=POST_TOKEN[:-4] + "AAAA")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stdout.endswith("verified:  NO: bad_signature: signature does not verify with any candidate key\n")


def test_inspect_times_in_utc_and_leeway():
    expired = issue_token(TokenSpec(key=POST_KEY_FILE, sub="q", exp="@1700000000", iat=True)).token
    p = jwtgate("token", "inspect", "--key", POST_KEY_FILE, input=expired)
    assert p.returncode == 1 and "verified:  NO: expired: token has expired" in p.stdout
    assert "exp:       1700000000 = 2023-11-14 22:13:20 UTC (" in p.stdout and " ago)" in p.stdout
    assert re.search(r"iat:       \d+ = [-\d]+ [:\d]+ UTC \((now|\d+s ago)\)", p.stdout)  # loaded machines are slow
    recent = issue_token(TokenSpec(key=POST_KEY_FILE, sub="q", exp="-1m")).token
    assert "verified:  yes" in ok("token", "inspect", "--key", POST_KEY_FILE, "--leeway", "5m", input=recent)
    future = issue_token(TokenSpec(key=POST_KEY_FILE, sub="q", nbf="1h")).token
    p = jwtgate("token", "inspect", "--key", POST_KEY_FILE, input=future)
    assert p.returncode == 1 and "not_yet_valid" in p.stdout and re.search(r"UTC \(in (1h|59m \d+s)\)", p.stdout)
    assert fails("token", "inspect", "--leeway", "soon", input=recent) == 'invalid --leeway "soon"'


def test_inspect_json():
    data = json.loads(ok("token", "inspect", "--json", "--key", POST_KEY_FILE, input=POST_TOKEN))
    assert data["type"] == "JWS" and data["verified"] is True and data["error"] is None
    assert data["header"] == json.loads(POST_HEADER) and data["claims"] == json.loads(POST_CLAIMS)
    assert data["key"].startswith('key #0 (kid "0001", oct)')
    p = jwtgate("token", "inspect", "--json", "--key", POST_KEY_FILE, input=POST_TOKEN[:-1] + "A")
    assert p.returncode == 1
    assert json.loads(p.stdout)["error"]["code"] == "bad_signature"
    data = json.loads(ok("token", "inspect", "--json", input=POST_TOKEN))
    assert data["verified"] is None and data["times"] == {}


@pytest.mark.parametrize("token, message", [
    ("", "no token: give TOKEN or pipe one in on stdin"),
    ("abc", "not a compact JWS (3 parts) or JWE (5 parts): 1 part(s)"),
])
def test_inspect_malformed_is_one_line(token, message):
    assert fails("token", "inspect", input=token) == message


def test_inspect_with_an_unloadable_key_file(tmp_path):
    bad = tmp_path / "bad.jwk"
    bad.write_text('{"keys": [{"kty": "RSA", "n": "x"}]}')
    assert "invalid RSA key" in fails("token", "inspect", "--key", bad, input=POST_TOKEN)
