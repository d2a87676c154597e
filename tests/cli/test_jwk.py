"""``jwtgate jwk``: generate, from-secret, from-pem, public, thumbprint, as real subprocesses.

What each command writes is loaded the way ``auth_jwt_key_file`` loads it. The option
combinations are covered in process by ``tests/unit/test_jose_issue.py``.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner
from clitools import fails, jwks_of, jwtgate, ok
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey

from jwtgate.cli.main import cli
from jwtgate.jose.issue import generate_jwk, write_jwks_file
from jwtgate.jose.keys import load_jwk_set_file
from jwtgate_e2e import EXAMPLES

POST_KEY_FILE = EXAMPLES / "conf" / "api_secret.jwk"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
RFC7638_KEY = {  # RFC 7638 §3.1
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
         "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Qvzq"
         "Y368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
         "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("command", [["jwk"], ["jwk", "generate"], ["jwk", "from-secret"], ["jwk", "from-pem"],
                                     ["jwk", "public"], ["jwk", "thumbprint"]], ids=" ".join)
def test_help_has_an_example(command):
    result = CliRunner().invoke(cli, [*command, "--help"], prog_name="jwtgate")
    assert result.exit_code == 0
    assert "Example" in result.output and "jwtgate jwk" in result.output.split("Example", 1)[1]
    if len(command) > 1:
        assert "Exit codes: 0" in result.output


def test_help_of_the_real_command():
    out = ok("jwk", "--help")
    assert "Usage: jwtgate jwk" in out and "generate" in out and "thumbprint" in out


# -- from-secret: the post's base64url step ---------------------------------------------------

def test_from_secret_is_the_posts_key():
    p = jwtgate("jwk", "from-secret", "fantasticjwt", "--kid", "0001")
    assert p.returncode == 0, p.stderr
    assert p.stdout == '{"keys": [{"k":"ZmFudGFzdGljand0","kty":"oct","kid":"0001"}]}\n'
    # the post's secret is 96 bits: said, as `jwtgate check` says it, but not refused
    assert p.stderr == 'jwtgate: warning: HMAC key "0001" is 96 bits, shorter than the 256 bits of HS256\n'


def test_from_secret_file_is_the_example_key_file_byte_for_byte(tmp_path):
    out = tmp_path / "api_secret.jwk"
    summary = ok("jwk", "from-secret", "fantasticjwt", "--kid", "0001", "-o", out)
    assert out.read_bytes() == POST_KEY_FILE.read_bytes()
    assert mode(out) == 0o600
    assert "fantasticjwt" not in summary and "ZmFudGFzdGljand0" not in summary  # never printed
    assert summary.startswith(f'{out}: added private oct key "0001" (96 bits), 1 key(s) in the file')


def test_from_secret_reads_stdin_out_of_the_shell_history():
    out = ok("jwk", "from-secret", "-", "--kid", "0001", input="fantasticjwt\n")
    assert jwks_of(out) == [{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]


# -- generate ---------------------------------------------------------------------------------

def test_generate_prints_a_key_the_gateway_loads(tmp_path):
    (key,) = jwks_of(ok("jwk", "generate", "--kty", "EC", "--crv", "P-384", "--alg", "ES384", "--use", "sig",
                        "--kid", "ec1"))
    assert key["kty"] == "EC" and key["crv"] == "P-384" and "d" in key  # asked for on stdout: printed
    f = tmp_path / "k.jwk"
    f.write_text(json.dumps({"keys": [key]}))
    assert load_jwk_set_file(str(f)).entries[0].algorithms == {"ES384"}


def test_generate_appends_atomically_with_mode_0600(tmp_path):
    out = tmp_path / "keys" / "private.jwk"
    out.parent.mkdir()
    first = ok("jwk", "generate", "--kty", "RSA", "--kid", "r1", "-o", out)
    assert '"r1" (2048 bits)' in first and '"d"' not in first  # a summary, never the key
    summary = json.loads(ok("jwk", "generate", "--kty", "OKP", "--kid", "ed1", "-o", out, "--json"))
    assert summary["keys"] == 2 and summary["kid"] == "ed1" and summary["private"] is True
    assert summary["size"] == "Ed25519" and len(summary["thumbprint"]) == 43
    assert mode(out) == 0o600
    assert [e.kid for e in load_jwk_set_file(str(out)).entries] == ["r1", "ed1"]
    before = out.read_bytes()
    assert 'already has a key with kid "r1"' in fails("jwk", "generate", "--kty", "EC", "--kid", "r1", "-o", out)
    assert out.read_bytes() == before
    assert sorted(os.listdir(out.parent)) == ["private.jwk"]  # no temporary file left behind


def test_generate_keeps_what_the_file_already_holds(tmp_path):
    out = tmp_path / "set.jwk"
    old = {"kty": "EC", "crv": "P-256", "kid": "old", "x5u": "https://x/",
           "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
    out.write_text(json.dumps({"keys": [old, {"kty": "future", "kid": "f"}]}))
    out.chmod(0o644)
    ok("jwk", "generate", "--kty", "oct", "--kid", "new", "-o", out)
    keys = jwks_of(out.read_text())
    assert keys[:2] == [old, {"kty": "future", "kid": "f"}] and keys[2]["kid"] == "new"
    assert mode(out) == 0o600  # it holds a secret now


def test_generate_errors_exit_1_usage_errors_exit_2(tmp_path):
    assert fails("jwk", "generate", "--kty", "RSA", "--size", "1024", "--kid", "k") == \
        "RSA key size must be a multiple of 8 from 2048 to 16384 bits, not 1024"
    assert "cannot write" in fails("jwk", "generate", "--kty", "oct", "--kid", "k", "-o", tmp_path / "no" / "f.jwk")
    bad = tmp_path / "bad.jwk"
    bad.write_text("{not json")
    assert "invalid JSON" in fails("jwk", "generate", "--kty", "oct", "--kid", "k", "-o", bad)
    assert "Missing option '--kid'" in fails("jwk", "generate", "--kty", "oct", code=2)
    assert "Invalid value for '--kty'" in fails("jwk", "generate", "--kty", "DSA", "--kid", "k", code=2)


# -- public -----------------------------------------------------------------------------------

@pytest.fixture
def private_set(tmp_path):
    path = tmp_path / "private.jwk"
    write_jwks_file(str(path), [generate_jwk("RSA", kid="r", alg="RS256"), generate_jwk("EC", kid="e"),
                                generate_jwk("OKP", kid="o", crv="Ed448", use="sig"), generate_jwk("oct", kid="s")])
    return path


def test_public_keeps_only_public_values(private_set, tmp_path):
    p = jwtgate("jwk", "public", private_set)
    assert p.returncode == 0, p.stderr
    keys = jwks_of(p.stdout)
    assert [k["kid"] for k in keys] == ["r", "e", "o"]  # the oct secret is left out...
    assert p.stderr == 'jwtgate: warning: key #3 (kid "s") is a secret (oct) key: left out; share it some other way\n'
    for key in keys:
        assert not PRIVATE_MEMBERS & set(key), key
    privs = jwks_of(private_set.read_text())
    assert RSAKey.import_key(privs[0]).as_dict(private=False)["n"] == keys[0]["n"]

    out = tmp_path / "public.jwk"
    assert ok("jwk", "public", private_set, "-o", out) == f'{out}: wrote 3 public key(s) (kid "r", "e", "o")\n'
    assert mode(out) == 0o644 and jwks_of(out.read_text()) == keys
    loaded = load_jwk_set_file(str(out))
    assert [sorted(e.algorithms) for e in loaded.entries] == [["RS256"], ["ES256"], ["Ed448", "EdDSA"]]
    assert jwks_of(ok("jwk", "public", "-", input=private_set.read_text())) == keys


def test_public_refuses_what_has_no_public_key_or_would_destroy_the_input(private_set, tmp_path):
    message = fails("jwk", "public", POST_KEY_FILE)
    assert "no public keys in" in message and "oct keys are secrets, never published" in message
    before = private_set.read_bytes()
    assert "is the input file" in fails("jwk", "public", private_set, "-o", private_set)
    assert private_set.read_bytes() == before
    assert "cannot read" in fails("jwk", "public", tmp_path / "missing.jwk")


# -- from-pem ---------------------------------------------------------------------------------

def test_from_pem(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    (tmp_path / "rsa.pem").write_bytes(pem)
    out = tmp_path / "rsa.jwk"
    ok("jwk", "from-pem", tmp_path / "rsa.pem", "--kid", "r", "--alg", "PS256", "-o", out)
    (jwk,) = jwks_of(out.read_text())
    assert jwk["alg"] == "PS256" and mode(out) == 0o600
    assert RSAKey.import_key(jwk).raw_value.private_numbers() == rsa_key.private_numbers()
    (from_stdin,) = jwks_of(ok("jwk", "from-pem", "-", "--kid", "r", input=pem.decode()))
    assert from_stdin["n"] == jwk["n"] and from_stdin["kid"] == "r"


def test_from_pem_encrypted(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "enc.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"s3cret")))
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    (jwk,) = jwks_of(ok("jwk", "from-pem", pem, "--kid", "e", "--password-file", password))
    assert ECKey.import_key(jwk).raw_value.private_numbers() == key.private_numbers()
    assert fails("jwk", "from-pem", pem, "--kid", "e") == "the PEM private key is encrypted: give its password"
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    assert fails("jwk", "from-pem", junk, "--kid", "e") == "not a PEM private key, public key or certificate"


# -- thumbprint -------------------------------------------------------------------------------

def test_thumbprint(tmp_path, private_set):
    f = tmp_path / "rfc.jwk"
    f.write_text(json.dumps(RFC7638_KEY))
    assert ok("jwk", "thumbprint", f) == RFC7638_THUMBPRINT + "\n"
    rows = json.loads(ok("jwk", "thumbprint", "--json", input=json.dumps({"keys": [RFC7638_KEY]})))
    assert rows == [{"kid": "2011-04-29", "kty": "RSA", "thumbprint": RFC7638_THUMBPRINT}]
    lines = ok("jwk", "thumbprint", private_set).splitlines()
    assert [line.split(" ")[1] for line in lines] == ["r", "e", "o", "s"]
    assert ok("jwk", "thumbprint", private_set, "--kid", "e") == lines[1].split(" ")[0] + "\n"
    assert fails("jwk", "thumbprint", private_set, "--kid", "x") == f'no key with kid "x" in {private_set}'
