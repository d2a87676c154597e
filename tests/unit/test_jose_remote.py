"""Remote key sets (auth_jwt_key_request) and the key pool: single flight, refresh before
expiry, stale-if-error with a bound, the unknown-kid refetch limit, atomic swaps that flush the
verified-token cache, per-request key files. Time is a manual clock; the fetch is a coroutine
the test controls (the end-to-end suite runs the real subrequest against a real server)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from joserfc.jwk import OctKey

from jwtgate.clock import ManualClock
from jwtgate.errors import KeySourceError, TokenError
from jwtgate.jose.keys import MAX_JWKS_BYTES, KeySet, parse_jwk_set
from jwtgate.jose.remote import REFRESH_AT, RemoteKeySource
from jwtgate.jose.sources import FileKeyCache, KeyPool
from jwtgate.jose.verify import Verifier

NOW = 1_700_000_000.0


def oct_jwk(kid: str, secret: bytes | None = None) -> dict:
    return dict(OctKey.import_key(secret or kid.encode().ljust(32, b"-"), parameters={"kid": kid}).as_dict())


def body(*kids: str) -> bytes:
    return json.dumps({"keys": [oct_jwk(k) for k in kids]}).encode()


def hs256(kid: str, claims: dict | None = None, secret: bytes | None = None) -> str:
    from joserfc import jws

    key = OctKey.import_key(secret or kid.encode().ljust(32, b"-"))
    return jws.serialize_compact({"alg": "HS256", "kid": kid}, json.dumps(claims or {"sub": kid}), key,
                                 algorithms=["HS256"])


class FakeIdP:
    """The fetch coroutine: answers with ``self.answer`` (bytes, or an exception to raise),
    optionally held until ``release`` is set; counts calls."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls = 0
        self.release: asyncio.Event | None = None

    async def __call__(self) -> bytes:
        self.calls += 1
        if self.release is not None:
            await self.release.wait()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer  # type: ignore[no-any-return]


def source(idp: FakeIdP, clock: ManualClock, **kw: Any) -> RemoteKeySource:
    kw.setdefault("ttl", 100.0)
    kw.setdefault("min_interval", 10.0)
    kw.setdefault("stale", 50.0)
    return RemoteKeySource('auth_jwt_key_request "/jwks"', idp, clock=clock, **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def settle() -> None:
    """Let started tasks run their first steps (a fetch under wait_for takes a few)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def opened(src: RemoteKeySource) -> RemoteKeySource:
    """Mark the source open without its background task (the tests drive every fetch)."""
    src._opened = True  # noqa: SLF001 - the refresher loop is tested separately
    return src


# --- single flight and the first fetch -------------------------------------------------------


def test_concurrent_first_requests_share_one_fetch() -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(body("a"))
        idp.release = asyncio.Event()
        src = await opened(source(idp, clock))
        waiters = [asyncio.create_task(src.ensure()) for _ in range(50)]
        await settle()
        assert idp.calls == 1
        idp.release.set()
        results = await asyncio.gather(*waiters)
        assert all(r is results[0] for r in results) and idp.calls == 1
        assert src.keys is not None and src.keys.kids == {"a"} and src.generation == 1

    run(scenario())


def test_failed_first_fetch_is_not_retried_before_the_interval() -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(KeySourceError("connect() failed"))
        src = await opened(source(idp, clock))
        for _ in range(20):
            with pytest.raises(KeySourceError, match="connect"):
                await src.ensure()
        assert idp.calls == 1
        clock.advance(10.0)
        idp.answer = body("a")
        assert (await src.ensure()).kids == {"a"} and idp.calls == 2

    run(scenario())


def test_a_source_that_is_not_open_never_fetches() -> None:
    """``jwtgate explain`` and ``check`` run handlers without a gateway: no network."""
    async def scenario() -> None:
        idp = FakeIdP(body("a"))
        src = source(idp, ManualClock(NOW))
        with pytest.raises(KeySourceError, match="not loaded"):
            await src.ensure()
        src.unknown_kid("x")
        assert idp.calls == 0

    run(scenario())


# --- refresh schedule, stale window --------------------------------------------------------


def test_refresh_is_due_before_expiry_and_retries_at_the_minimum_interval() -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(body("a"))
        src = await opened(source(idp, clock, ttl=100.0, min_interval=10.0))
        assert src.next_refresh_delay() == 0.0
        assert await src.refresh()
        assert src.next_refresh_delay() == pytest.approx(100.0 * REFRESH_AT)
        clock.advance(80.0)
        idp.answer = KeySourceError("503")
        assert not await src.refresh()
        assert src.next_refresh_delay() == pytest.approx(10.0)
        # the schedule follows the key set's lifetime, not the client-facing minimum interval,
        # but never faster than once a second
        quick = await opened(source(FakeIdP(body("a")), clock, ttl=2.0, min_interval=10.0))
        await quick.refresh()
        assert quick.next_refresh_delay() == pytest.approx(1.6)
        tiny = await opened(source(FakeIdP(body("a")), clock, ttl=0.01, min_interval=10.0))
        await tiny.refresh()
        assert tiny.next_refresh_delay() == pytest.approx(1.0)

    run(scenario())


def test_stale_keys_serve_for_a_bounded_window_with_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(body("a"))
        src = await opened(source(idp, clock, ttl=100.0, stale=50.0))
        await src.refresh()
        idp.answer = KeySourceError("upstream timed out")
        with caplog.at_level(logging.ERROR, logger="jwtgate.auth_jwt"):
            clock.advance(90.0)
            assert not await src.refresh()
            assert src.current().kids == {"a"}  # fresh still
            clock.advance(40.0)  # 130: expired, within the stale window
            assert not await src.refresh()
            assert src.current().kids == {"a"}
            clock.advance(30.0)  # 160: past ttl + stale
            assert not await src.refresh()
            with pytest.raises(KeySourceError, match="could not be refreshed"):
                src.current()
        text = caplog.text
        assert "the current keys stay in use" in text and "serving expired keys" in text
        assert "no longer used" in text and "upstream timed out" in text
        # the provider comes back: keys are current again
        idp.answer = body("a")
        clock.advance(10.0)
        assert await src.refresh()
        assert src.current().kids == {"a"}

    run(scenario())


def test_an_unchanged_body_keeps_the_key_set_and_the_cache() -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(body("a"))
        src = await opened(source(idp, clock))
        changes: list[int] = []
        src.add_listener(lambda: changes.append(src.generation))
        await src.refresh()
        first = src.keys
        clock.advance(80.0)
        await src.refresh()
        assert src.keys is first and changes == [1]
        idp.answer = body("a", "b")
        clock.advance(80.0)
        await src.refresh()
        assert src.keys is not first and src.keys.kids == {"a", "b"} and changes == [1, 2]

    run(scenario())


@pytest.mark.parametrize("answer", [b"not json", b'{"keys": []}', b'{"keys": [{"kty": "oct"}]}',
                                    b" " * (MAX_JWKS_BYTES + 1), json.dumps({"keys": [oct_jwk("a")] * 1001}).encode()])
def test_a_bad_body_keeps_the_previous_keys(answer: bytes) -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(body("a"))
        src = await opened(source(idp, clock))
        await src.refresh()
        keys = src.keys
        idp.answer = answer
        clock.advance(80.0)
        assert not await src.refresh()
        assert src.keys is keys and src.last_error

    run(scenario())


def test_a_fetch_that_hangs_times_out() -> None:
    async def scenario() -> None:
        idp = FakeIdP(body("a"))
        idp.release = asyncio.Event()  # never set
        src = await opened(source(idp, ManualClock(NOW), timeout=0.05))
        assert not await src.refresh()
        assert "no answer within" in (src.last_error or "")

    run(scenario())


# --- unknown kids ------------------------------------------------------------------------------


def test_unknown_kid_storm_triggers_at_most_one_fetch_per_interval() -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(body("a"))
        src = await opened(source(idp, clock, min_interval=10.0))
        await src.refresh()
        clock.advance(10.0)
        for i in range(1000):
            src.unknown_kid(f"invented-{i}")
            await settle()
        assert idp.calls == 2
        clock.advance(5.0)
        for i in range(1000, 1100):
            src.unknown_kid(f"invented-{i}")
        await settle()
        assert idp.calls == 2
        # the same invented kid, after the interval, was already looked for: no fetch
        clock.advance(10.0)
        src.unknown_kid("invented-0")
        await settle()
        assert idp.calls == 2
        # a new kid after the interval may fetch once more
        src.unknown_kid("new")
        await settle()
        assert idp.calls == 3

    run(scenario())


def test_unknown_kid_refetch_finds_a_rotated_key() -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(body("old"))
        src = await opened(source(idp, clock))
        pool = KeyPool([], [src], lambda ks, dyn: Verifier(ks, clock=clock))
        await src.refresh()
        token = hs256("new")
        idp.answer = body("new")
        clock.advance(10.0)
        with pytest.raises(TokenError) as info:
            pool.verifier_for().verify(token)
        assert info.value.code == "no_key"
        await settle()
        assert idp.calls == 2  # the unknown kid started a refetch by itself
        await src.refresh()  # joins it (or finds it done)
        assert pool.verifier_for().verify(token).claims["sub"] == "new"  # negative cache was flushed

    run(scenario())


# --- the pool: swaps flush the verified-token cache -------------------------------------------


def test_rotation_swaps_keys_atomically_and_flushes_cached_tokens() -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(body("k1"))
        src = await opened(source(idp, clock))
        static = parse_jwk_set(json.dumps({"keys": [oct_jwk("static")]}), "static.jwk")
        pool = KeyPool([static], [src], lambda ks, dyn: Verifier(ks, clock=clock))
        verifier = pool.verifier
        assert pool.waiting() == [src]
        await src.ensure()
        assert pool.waiting() == []
        k1 = hs256("k1")
        assert verifier.verify(k1).kid == "k1"
        assert verifier.cache is not None and k1 in verifier.cache
        assert verifier.verify(hs256("static")).kid == "static"
        idp.answer = body("k2")  # k1 removed
        clock.advance(80.0)
        await src.refresh()
        assert pool.verifier_for() is verifier  # same object, new keys
        assert k1 not in verifier.cache
        with pytest.raises(TokenError):
            verifier.verify(k1)
        assert verifier.verify(hs256("k2")).kid == "k2"
        assert verifier.verify(hs256("static")).kid == "static"

    run(scenario())


def test_pool_refuses_when_a_remote_is_past_its_stale_window() -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        idp = FakeIdP(body("a"))
        src = await opened(source(idp, clock, ttl=10.0, stale=5.0))
        pool = KeyPool([], [src], lambda ks, dyn: Verifier(ks, clock=clock))
        await src.refresh()
        clock.advance(14.0)
        pool.verifier_for()
        clock.advance(2.0)
        with pytest.raises(KeySourceError):
            pool.verifier_for()

    run(scenario())


# --- reloads and the background task -----------------------------------------------------------


def test_reload_hands_the_key_set_over_without_a_fetch() -> None:
    async def scenario() -> None:
        clock = ManualClock(NOW)
        keep: dict[str, Any] = {}
        idp = FakeIdP(body("a"))
        old = source(idp, clock, keep_key="k")
        await old.open(keep)
        await old.ensure()
        await old.close()
        assert idp.calls == 1
        new = source(idp, clock, keep_key="k")
        await new.open(keep)
        assert new.keys is not None and new.keys.kids == {"a"}
        await settle()
        assert idp.calls == 1  # the refresher waits for the handed-over set to age
        await new.close()
        # an expired hand-over is not used
        clock.advance(1000.0)
        late = source(idp, clock, keep_key="k")
        await late.open(keep)
        assert late.keys is None
        await late.close()

    run(scenario())


def test_open_starts_the_refresher_and_close_stops_it() -> None:
    async def scenario() -> None:
        idp = FakeIdP(body("a"))
        src = RemoteKeySource("remote", idp, ttl=0.2, min_interval=0.1, stale=10.0)
        await src.open({})
        for _ in range(200):
            if idp.calls >= 2:
                break
            await asyncio.sleep(0.01)
        assert idp.calls >= 2 and src.keys is not None  # fetched at once, then refreshed
        await src.close()
        calls = idp.calls
        await asyncio.sleep(0.3)
        assert idp.calls == calls

    run(scenario())


# --- per-request key files ---------------------------------------------------------------------


def test_file_key_cache_reads_per_use_or_per_ttl(tmp_path) -> None:
    clock = ManualClock(NOW)
    path = tmp_path / "k.jwk"
    path.write_bytes(body("a"))
    every = FileKeyCache(0.0, clock)
    first = every.get(str(path))
    assert every.get(str(path)) is first  # re-read, same bytes: same set (and Verifier cache)
    path.write_bytes(body("b"))
    assert every.get(str(path)).kids == {"b"}
    cached = FileKeyCache(60.0, clock)
    assert cached.get(str(path)).kids == {"b"}
    path.write_bytes(body("c"))
    assert cached.get(str(path)).kids == {"b"}
    clock.advance(60.0)
    assert cached.get(str(path)).kids == {"c"}
    path.unlink()
    with pytest.raises(KeySourceError, match="cannot read"):
        every.get(str(path))


def test_file_key_cache_is_bounded(tmp_path) -> None:
    cache = FileKeyCache(60.0, ManualClock(NOW), max_entries=4)
    for i in range(10):
        p = tmp_path / f"{i}.jwk"
        p.write_bytes(body(f"k{i}"))
        cache.get(str(p))
    assert len(cache) == 4


def test_pool_builds_one_verifier_per_key_file_combination(tmp_path) -> None:
    clock = ManualClock(NOW)
    for name in ("a", "b"):
        (tmp_path / f"{name}.jwk").write_bytes(body(name))
    made: list[bool] = []

    def make(ks: KeySet, dyn: bool) -> Verifier:
        made.append(dyn)
        return Verifier(ks, clock=clock)

    pool = KeyPool([], [], make, FileKeyCache(0.0, clock))
    va = pool.verifier_for((str(tmp_path / "a.jwk"),))
    assert pool.verifier_for((str(tmp_path / "a.jwk"),)) is va
    vb = pool.verifier_for((str(tmp_path / "b.jwk"),))
    assert vb is not va and made == [False, True, True]
    assert va.verify(hs256("a")).kid == "a"
    with pytest.raises(TokenError):
        va.verify(hs256("b"))
