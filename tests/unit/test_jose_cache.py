"""Verified-token cache and negative cache: LRU bounds, expiry on hit, one verification per bad token."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import OctKey

from jwtgate.clock import ManualClock
from jwtgate.errors import TokenError
from jwtgate.jose.cache import NegativeCache, VerifiedTokenCache
from jwtgate.jose.keys import KeySet, parse_jwk_set
from jwtgate.jose.verify import VerifiedToken, Verifier

NOW = 1_700_000_000.0


class CountingKeySet(KeySet):
    """A KeySet that counts candidate lookups: one lookup per real verification attempt."""

    def __init__(self, inner: KeySet) -> None:
        super().__init__(inner.entries, inner.source)
        self.lookups = 0

    def candidates(self, alg: str, kid: str | None) -> Any:
        self.lookups += 1
        return super().candidates(alg, kid)


def setup(**kw: Any) -> tuple[OctKey, CountingKeySet, ManualClock, Verifier]:
    key = OctKey.generate_key(256, parameters={"kid": "k"})
    ks = CountingKeySet(parse_jwk_set(json.dumps({"keys": [dict(key.as_dict())]}), "test"))
    clock = ManualClock(NOW)
    return key, ks, clock, Verifier(ks, clock=clock, **kw)


def token(key: OctKey, **claims: Any) -> str:
    return jws.serialize_compact({"alg": "HS256", "kid": "k"}, json.dumps(claims), key, algorithms=["HS256"])


def vt(n: int) -> VerifiedToken:
    return VerifiedToken(header={"alg": "HS256"}, claims={"n": n}, payload=b"{}", kid=None, exp=None, nbf=None)


# --- VerifiedTokenCache ----------------------------------------------------------------


def test_lru_bound_and_order() -> None:
    cache = VerifiedTokenCache(2)
    cache.put("a", vt(1))
    cache.put("b", vt(2))
    assert cache.get("a") == vt(1)  # "a" is now the most recent
    cache.put("c", vt(3))  # evicts "b", the least recently used
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") == vt(1) and cache.get("c") == vt(3)
    assert (cache.hits, cache.misses) == (3, 1)


def test_put_same_token_does_not_grow() -> None:
    cache = VerifiedTokenCache(3)
    for _ in range(10):
        cache.put("a", vt(1))
    assert len(cache) == 1


def test_zero_size_cache_stores_nothing() -> None:
    cache = VerifiedTokenCache(0)
    cache.put("a", vt(1))
    assert len(cache) == 0 and cache.get("a") is None


def test_clear_and_discard() -> None:
    cache = VerifiedTokenCache(5)
    cache.put("a", vt(1))
    cache.put("b", vt(2))
    cache.discard("a")
    cache.discard("missing")
    assert "a" not in cache and "b" in cache
    cache.clear()
    assert len(cache) == 0


def test_negative_cache_bound() -> None:
    neg = NegativeCache(2)
    neg.put("x", "bad_signature")
    neg.put("y", "no_key")
    assert neg.get("x") == "bad_signature"
    neg.put("z", "bad_signature")  # evicts "y"
    assert neg.get("y") is None and neg.get("x") == "bad_signature" and neg.get("z") == "bad_signature"
    assert len(neg) == 2


# --- through the Verifier --------------------------------------------------------------


def test_hit_returns_the_same_result_without_verifying_again() -> None:
    key, ks, _, v = setup()
    t = token(key, sub="alice", exp=NOW + 60)
    first = v.verify(t)
    second = v.verify(t)
    assert second is first and second.claims["sub"] == "alice"
    assert ks.lookups == 1
    assert v.cache is not None and v.cache.hits == 1


def test_cached_token_expires_on_a_later_hit() -> None:
    key, ks, clock, v = setup(leeway=5)
    t = token(key, exp=NOW + 60)
    v.verify(t)
    clock.advance(64.9)
    assert v.verify(t).exp == NOW + 60  # still within exp + leeway
    clock.advance(0.1)  # now == exp + leeway
    with pytest.raises(TokenError) as info:
        v.verify(t)
    assert info.value.code == "expired"
    assert v.cache is not None and t not in v.cache
    assert ks.lookups == 1


def test_expired_and_not_yet_valid_tokens_are_not_cached() -> None:
    key, ks, clock, v = setup()
    expired = token(key, exp=NOW - 1)
    early = token(key, nbf=NOW + 100)
    for t, code in ((expired, "expired"), (early, "not_yet_valid")):
        with pytest.raises(TokenError) as info:
            v.verify(t)
        assert info.value.code == code
    assert v.cache is not None and len(v.cache) == 0
    clock.advance(100)
    assert v.verify(early).nbf == NOW + 100  # becomes valid later: verified, then cached
    assert len(v.cache) == 1


def test_cache_size_bounds_the_verifier_cache() -> None:
    key, _, _, v = setup(cache_size=3)
    tokens = [token(key, n=i) for i in range(5)]
    for t in tokens:
        v.verify(t)
    assert v.cache is not None and len(v.cache) == 3
    assert tokens[0] not in v.cache and tokens[4] in v.cache


def test_cache_size_zero_disables_the_cache() -> None:
    key, ks, _, v = setup(cache_size=0)
    t = token(key)
    v.verify(t)
    v.verify(t)
    assert v.cache is None and ks.lookups == 2


def test_negative_cache_costs_one_verification_per_bad_token() -> None:
    key, ks, _, v = setup()
    forged = token(OctKey.generate_key(256), sub="admin")
    for _ in range(50):
        with pytest.raises(TokenError) as info:
            v.verify(forged)
        assert info.value.code == "bad_signature"
    assert ks.lookups == 1
    assert v.negative_cache is not None and v.negative_cache.hits == 49


def test_negative_cache_keeps_no_key_code() -> None:
    _, ks, _, v = setup()
    other = OctKey.generate_key(256)
    t = jws.serialize_compact({"alg": "HS256", "kid": "zz"}, "{}", other, algorithms=["HS256"])
    codes = set()
    for _ in range(3):
        with pytest.raises(TokenError) as info:
            v.verify(t)
        codes.add(info.value.code)
    assert codes == {"no_key"} and ks.lookups == 1


def test_malformed_tokens_go_in_no_cache() -> None:
    _, _, _, v = setup()
    h = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    for bad in ("a.b", f"{h}.e30.", "x" * 20):
        with pytest.raises(TokenError):
            v.verify(bad)
    assert v.negative_cache is not None and len(v.negative_cache) == 0
    assert v.cache is not None and len(v.cache) == 0


def test_negative_cache_disabled() -> None:
    key, ks, _, v = setup(negative_cache_size=0)
    forged = token(OctKey.generate_key(256))
    for _ in range(3):
        with pytest.raises(TokenError):
            v.verify(forged)
    assert v.negative_cache is None and ks.lookups == 3
