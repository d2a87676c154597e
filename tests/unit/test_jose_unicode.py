"""Claims that cannot be faithfully carried: unpaired surrogates, non-finite times."""

import base64
import hashlib
import hmac

import pytest

from jwtgate.errors import TokenError
from jwtgate.jose.keys import parse_jwk_set
from jwtgate.jose.verify import Verifier

KEYS = parse_jwk_set('{"keys":[{"k":"ZmFudGFzdGljand0","kty":"oct","kid":"0001"}]}', "test")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(payload: bytes) -> str:
    head = b64(b'{"alg":"HS256","kid":"0001"}') + "." + b64(payload)
    sig = hmac.new(b"fantasticjwt", head.encode(), hashlib.sha256).digest()
    return head + "." + b64(sig)


@pytest.mark.parametrize("payload", [
    b'{"sub":"\\ud800"}', b'{"sub":"\\udcc3\\udca9"}', b'{"a":{"\\uDFFF":1}}', b'{"l":["x","\\ud83d"]}',
])
def test_unpaired_surrogates_are_malformed(payload):
    with pytest.raises(TokenError) as e:
        Verifier(KEYS, cache_size=0).verify(token(payload))
    assert e.value.code == "malformed"


def test_paired_surrogates_are_fine():
    vt = Verifier(KEYS, cache_size=0).verify(token(b'{"sub":"\\ud83d\\ude00"}'))
    assert vt.claims["sub"] == "\U0001F600"


@pytest.mark.parametrize("payload", [b'{"exp":1e400}', b'{"nbf":-1e400}'])
def test_infinite_times_are_bad_claims(payload):
    with pytest.raises(TokenError) as e:
        Verifier(KEYS, cache_size=0).verify(token(payload))
    assert e.value.code == "bad_claims"
