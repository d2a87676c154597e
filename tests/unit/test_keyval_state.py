"""keyval zones below the HTTP layer: change semantics, matching by type, the state-file format,
sharing through the file and its generation counter (two stores = two workers), the Redis
synchroniser against a real redis-server, and the configuration rules."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from jwtgate.conf.plan import compile_plan
from jwtgate.errors import ConfigError
from jwtgate.modules.access import AccessHandler, parse_rule
from jwtgate.modules.keyval import keyval_zones
from jwtgate.state.keyval import (ENTRY_OVERHEAD, KeyvalError, ZoneStore, apply_change, decode_state,
                                  encode_state, entry_cost)

sys.path.insert(0, os.path.dirname(__file__))
from inproc import plan_of, serve  # noqa: E402

NOW = 1_700_000_000_000


def change(entries, ch, size=1 << 20, timeout_ms=0, now=NOW):
    return apply_change(entries, ch, size=size, timeout_ms=timeout_ms, now=now)


def test_post_patch_clear_semantics():
    e = change({}, ("post", {"a": ("1", None), "b": ("2", 5000)}), timeout_ms=1000)
    assert e == {"a": ("1", NOW + 1000), "b": ("2", NOW + 5000)}
    with pytest.raises(KeyvalError) as err:
        change(e, ("post", {"a": ("x", None), "c": ("3", None)}))
    assert (err.value.status, err.value.code) == (409, "KeyvalKeyExists")
    e2 = change(e, ("patch", {"a": None, "b": (None, 0), "c": ("3", None)}))
    assert e2 == {"b": ("2", 0), "c": ("3", 0)}  # expire 0: never; an unknown key is set
    with pytest.raises(KeyvalError) as err:
        change(e2, ("patch", {"zz": (None, 100)}))
    assert err.value.code == "KeyvalKeyNotFound"
    assert change(e2, ("clear", {})) == {}
    assert e == {"a": ("1", NOW + 1000), "b": ("2", NOW + 5000)}  # inputs are never modified


def test_expired_entries_are_dropped_and_can_be_posted_again():
    e = {"old": ("1", NOW - 1), "live": ("2", NOW + 1)}
    assert change(e, ("post", {"old": ("3", None)})) == {"old": ("3", 0), "live": ("2", NOW + 1)}


def test_size_bounds_entries():
    size = 10 * (ENTRY_OVERHEAD + 2)
    e = change({}, ("post", {f"k{i}": ("", None) for i in range(10)}), size=size)
    assert len(e) == 10 and sum(entry_cost(k, v) for k, (v, _) in e.items()) == size
    with pytest.raises(KeyvalError) as err:
        change(e, ("post", {"x": ("", None)}), size=size)
    assert (err.value.status, err.value.code) == (507, "KeyvalZoneFull")
    assert len(change(e, ("patch", {"k0": None, "x": ("", None)}), size=size)) == 10


def test_state_format_is_nginx_plus_json():
    entries = {"a": ("1", 0), "b": ("2", NOW), "ü": ("v\"", 0)}
    raw = encode_state(entries)
    assert json.loads(raw) == {"a": "1", "b": {"value": "2", "expire": NOW}, "ü": "v\""}
    assert decode_state(raw) == entries
    assert decode_state(b"") == {}
    for bad in (b"[]", b'{"a": 1}', b'{"a": {"value": 1}}', b'{"a": {"value": "1", "expire": "x"}}', b"{", b"\xff"):
        with pytest.raises((ValueError, UnicodeDecodeError)):
            decode_state(bad)


def test_matching_by_type():
    s = ZoneStore("s", 1 << 20, "string", clock=lambda: NOW)
    s.change(("post", {"abc": ("1", None)}))
    assert s.lookup("abc") == "1" and s.lookup("ABC") == "" and s.lookup("ab") == "" and s.lookup("") == ""
    p = ZoneStore("p", 1 << 20, "prefix", clock=lambda: NOW)
    p.change(("post", {"/a/": ("short", None), "/a/b/": ("long", None)}))
    assert p.lookup("/a/b/c") == "long" and p.lookup("/a/x") == "short" and p.lookup("/b") == ""
    ip = ZoneStore("i", 1 << 20, "ip", clock=lambda: NOW)
    ip.change(("post", {"10.0.0.0/8": ("wide", None), "10.1.0.0/16": ("narrow", None), "10.1.2.3/32": ("host", None),
                        "2001:db8::/32": ("v6", None)}))
    assert ip.lookup("10.1.2.3") == "host" and ip.lookup("10.1.9.9") == "narrow"
    assert ip.lookup("10.9.9.9") == "wide" and ip.lookup("11.0.0.1") == ""
    assert ip.lookup("2001:db8::1") == "v6" and ip.lookup("::1") == "" and ip.lookup("junk") == ""
    assert s.lookup("k" * 5000) == ""


def test_expiry_on_lookup():
    clock = [NOW]
    s = ZoneStore("s", 1 << 20, timeout=1.0, clock=lambda: clock[0])
    s.change(("post", {"a": ("1", None), "b": ("2", 3000)}))
    clock[0] += 1000
    assert s.lookup("a") == "" and s.lookup("b") == "2" and s.count() == 1
    clock[0] += 2000
    assert s.items() == {}


def test_two_processes_share_through_the_file(tmp_path):
    """Two stores on one runtime directory behave as two workers: a write by one is seen by
    the other at its next lookup, through the generation counter."""
    runtime = tmp_path / "rt"
    (runtime / "keyval").mkdir(parents=True)
    a = ZoneStore("z/1", 1 << 20, runtime=str(runtime))
    b = ZoneStore("z/1", 1 << 20, runtime=str(runtime))
    a.open()
    b.open()
    assert b.lookup("k") == ""
    a.change(("post", {"k": ("1", None)}))
    assert b.lookup("k") == "1"
    b.change(("patch", {"k": None, "j": ("2", None)}))
    assert a.lookup("k") == "" and a.lookup("j") == "2"
    assert sorted(os.listdir(runtime / "keyval")) == ["z%2F1.gen", "z%2F1.json", "z%2F1.lock"]
    # a corrupt file written behind their back: lookups keep the last good copy
    (runtime / "keyval" / "z%2F1.json").write_text("{broken")
    with open(runtime / "keyval" / "z%2F1.gen", "r+b") as f:
        f.write((999).to_bytes(8, "little"))
    assert a.lookup("j") == "2"
    # and the next write replaces it
    a.change(("post", {"n": ("3", None)}))
    assert json.loads((runtime / "keyval" / "z%2F1.json").read_text()) == {"n": "3"}
    a.close()
    b.close()


def test_a_write_whose_file_could_not_be_read_back_is_refused(tmp_path, monkeypatch):
    """A zone may be configured up to 1g, and JSON writes a control character of a key as six
    bytes, but a reader takes a file over MAX_FILE_BYTES for corrupt. Such a write was
    accepted: the other workers kept a stale copy, a restart started the zone empty, and the
    next write "overwrote the corrupt file", dropping every revocation. It is refused with 507
    instead, and nothing is lost."""
    import jwtgate.state.keyval as kv

    monkeypatch.setattr(kv, "MAX_FILE_BYTES", 4096)
    runtime = tmp_path / "rt"
    (runtime / "keyval").mkdir(parents=True)
    state = str(tmp_path / "revoked.json")
    a = ZoneStore("z", 1 << 20, state=state, runtime=str(runtime))
    b = ZoneStore("z", 1 << 20, state=state, runtime=str(runtime))
    a.open()
    b.open()
    a.change(("post", {"keep": ("1", None)}))
    refused = 0
    for i in range(40):
        try:
            a.change(("post", {f"k{i}" + "\x00" * 100: ("1", None)}))  # ~600 bytes in the file each
        except KeyvalError as e:
            assert (e.status, e.code) == (507, "KeyvalZoneFull")
            refused += 1
    assert refused, "the file limit was never reached"
    assert os.path.getsize(state) <= 4096
    assert b.lookup("keep") == "1" and b.lookup("k0" + "\x00" * 100) == "1"  # b reads the file
    a.change(("post", {"new": ("1", None)}))
    assert b.lookup("keep") == "1" and b.lookup("new") == "1"  # nothing dropped
    a.close()
    b.close()
    restarted = ZoneStore("z", 1 << 20, state=state, runtime=str(runtime))
    restarted.open()
    assert restarted.lookup("keep") == "1" and restarted.count() == len(a.items())
    restarted.close()
    alone = ZoneStore("y", 1 << 20, state=str(tmp_path / "alone.json"))  # one process, no runtime
    with pytest.raises(KeyvalError):
        alone.change(("post", {"x" * 1000: ("v" * 4000, None)}))
    assert not os.path.exists(tmp_path / "alone.json")


def test_state_file_is_written_atomically_and_read_back(tmp_path):
    state = tmp_path / "one.keyval"
    s = ZoneStore("one", 1 << 20, state=str(state))
    s.open()
    s.change(("post", {"a": ("1", None)}))
    assert json.loads(state.read_text()) == {"a": "1"}
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["one.keyval"]  # no temporary file left
    t = ZoneStore("one", 1 << 20, state=str(state))
    t.open()
    assert t.lookup("a") == "1"
    state.write_text("not json")
    u = ZoneStore("one", 1 << 20, state=str(state))
    u.open()  # logged, empty, no exception
    assert u.items() == {}


def test_configuration(tmp_path):
    plan = plan_of(tmp_path, """
http {
    keyval_zone zone=revoked:64k timeout=1h state=revoked.json;
    keyval $jwt_claim_jti $jwt_revoked zone=revoked;
    keyval "$arg_a:$arg_b" $pair zone=revoked;
    map $jwt_revoked $valid_jti { "" 1; default 0; }
    server { listen 127.0.0.1:9; location / { return 200 "[$pair]"; } }
}""")
    build = plan.build
    assert build.keyval_variables == {"jwt_revoked", "pair"}
    assert build.jwt_variable_used(["valid_jti"]) is not None
    assert build.jwt_variable_used(["pair"]) is None
    z = keyval_zones(build)["revoked"]
    assert z.state == str(tmp_path / "revoked.json") and z.timeout == 3600 and z.kind == "string"
    z.store.change(("post", {"x:y": ("hit", None)}))
    assert serve(plan, "/?a=x&b=y").text == "[hit]"
    assert serve(plan, "/?a=x&b=z").text == "[]"


@pytest.mark.parametrize("text, message", [
    ("keyval_zone zone=a:64k; keyval_zone zone=a:64k;", 'duplicate zone "a"'),
    ("keyval $arg_a $v zone=nope;", 'zone "nope" is unknown'),
    ("keyval_zone zone=a:64k; keyval $arg_a v zone=a;", 'invalid variable name "v"'),
    ("keyval_zone zone=a:64k; keyval $arg_a $v zone;", 'invalid parameter "zone"'),
    ("keyval_zone zone=a:64k; keyval $arg_a $uri zone=a;", 'the duplicate "uri" variable'),
    ("keyval_zone zone=a:64k sync;", '"sync" parameter, which needs "state_redis"'),
    ("keyval_zone zone=a:4k;", 'zone "a" is too small'),
    ("keyval_zone zone=a:64k type=x;", 'invalid parameter "type=x"'),
    ("keyval_zone state=/tmp/x;", '"keyval_zone" must have "zone" parameter'),
    ("keyval_zone zone=a:64k state=s.json; keyval_zone zone=b:64k state=s.json;", "share the state file"),
    ("keyval_zone zone=a:64k state=nodir/s.json;", "nodir/s.json\" failed (2: No such file or directory)"),
    ("keyval_zone zone=a:64k state=gw.conf/s.json;", "gw.conf/s.json\" failed (20: Not a directory)"),
    ("keyval_zone zone=a:64k state=.;", "failed (21: Is a directory)"),
])
def test_configuration_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        plan_of(tmp_path, f"http {{ {text} server {{ listen 127.0.0.1:9; }} }}")
    assert message in str(err.value)


def test_a_state_directory_that_is_not_writable_fails_the_configuration(tmp_path, monkeypatch):
    # the write would fail at the first revocation (500 KeyvalStateError); NGINX fails at load
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path / "ro")
                        else real_access(p, mode, **kw))
    (tmp_path / "ro").mkdir()
    with pytest.raises(ConfigError) as err:
        plan_of(tmp_path, "http { keyval_zone zone=a:64k state=ro/a.json; server { listen 127.0.0.1:9; } }")
    assert f'open() "{tmp_path}/ro/a.json" failed (13: Permission denied)' in str(err.value)
    assert err.value.line == 1


def test_a_state_file_that_cannot_be_parsed_is_a_warning(tmp_path):
    (tmp_path / "bad.json").write_text('{"k": [1]}')
    (tmp_path / "good.json").write_text('{"k": "1"}')
    plan = plan_of(tmp_path, """http {
    keyval_zone zone=a:64k state=good.json;
    keyval_zone zone=b:64k state=bad.json;
    server { listen 127.0.0.1:9; } }""")
    assert len(plan.warnings) == 1
    warning = plan.warnings[0]
    assert f'state file "{tmp_path}/bad.json" of keyval zone "b" cannot be parsed' in str(warning)
    assert "start empty" in str(warning) and warning.line == 3


def test_access_rules_compile_and_cost_nothing_where_unused(tmp_path):
    plan = plan_of(tmp_path, """
server { listen 127.0.0.1:9;
    location /open/ { proxy_pass http://127.0.0.1:1; }
    location /closed/ { deny all; proxy_pass http://127.0.0.1:1; }
}""")
    by_path = {loc.match.pattern: loc for loc in plan.servers[0].locations.prefixes}
    assert not any(isinstance(h, AccessHandler) for h in by_path["/open/"].access)
    assert sum(isinstance(h, AccessHandler) for h in by_path["/closed/"].access) == 1
    (rule, warning) = parse_rule(False, "10.1.2.3/8")
    assert rule == (False, 4, 10 << 24, 0xFF000000) and "meaningless" in warning
    h = AccessHandler((parse_rule(True, "::ffff:0:0/96")[0], parse_rule(False, "10.0.0.0/8")[0],
                       parse_rule(True, "all")[0]))
    assert h.decide("10.2.3.4") == 403 and h.decide("::ffff:10.2.3.4") is None and h.decide("11.0.0.1") is None
    h = AccessHandler((parse_rule(False, "10.0.0.0/8")[0],))
    assert h.decide("::ffff:10.2.3.4") == 403  # an IPv4 rule matches an IPv4-mapped client


def test_redis_sync_between_two_instances(redis_url, tmp_path):
    """Two synchronisers on one Redis, each with its own store: a write through one reaches
    the other by its next reconciliation; a state-file zone seeds an empty Redis."""
    from jwtgate.state.keyval_redis import KeyvalSync
    from jwtgate.state.redis import RedisConnection

    state = tmp_path / "seed.json"
    state.write_text('{"seeded": "1"}')

    async def main():
        c1, c2 = RedisConnection(redis_url, timeout=1.0), RedisConnection(redis_url, timeout=1.0)
        s1 = ZoneStore("z", 1 << 20, state=str(state))
        s2 = ZoneStore("z", 1 << 20)
        s1.open()
        s2.open()
        k1, k2 = KeyvalSync(c1, {"z": s1}), KeyvalSync(c2, {"z": s2})
        try:
            await k1.reconcile()  # Redis has never seen the zone: seeded from the state file
            await k2.reconcile()
            assert s2.lookup("seeded") == "1"
            await k1.write("z", ("post", {"a": ("1", None)}))
            assert s1.lookup("a") == "1"
            await k2.reconcile()
            assert s2.lookup("a") == "1"
            await k2.write("z", ("patch", {"a": None}))
            await k1.reconcile()
            assert s1.lookup("a") == "" and json.loads(state.read_text()) == {"seeded": "1"}
            with pytest.raises(KeyvalError):
                await k1.write("z", ("post", {"seeded": ("2", None)}))
            await k1.write("z", ("clear", {}))
            await k2.reconcile()
            assert s2.items() == {}
        finally:
            await c1.close()
            await c2.close()

    asyncio.run(main())


def test_check_has_no_side_effects(tmp_path):
    state = tmp_path / "never.json"
    (tmp_path / "gw.conf").write_text(
        f"http {{ keyval_zone zone=a:64k state={state}; server {{ listen 127.0.0.1:9; }} }}")
    compile_plan(str(tmp_path / "gw.conf"))
    assert not state.exists()
    assert not Path(tmp_path / "keyval").exists()


def test_an_older_redis_snapshot_never_undoes_a_newer_write(tmp_path):
    """A reconciliation that read Redis before a write (version 4) and applies after it
    (version 5 already in the copy) is skipped; a reset (Redis lost the zone) is not."""
    runtime = tmp_path / "rt"
    (runtime / "keyval").mkdir(parents=True)
    a = ZoneStore("z", 1 << 20, runtime=str(runtime))
    b = ZoneStore("z", 1 << 20, runtime=str(runtime))
    a.open()
    b.open()
    a.change(("post", {"new": ("1", None)}), 5)
    b.change(("replace", {"old": ("1", 0)}), 4)  # the other worker's stale snapshot
    assert a.lookup("new") == "1" and a.lookup("old") == ""
    b.change(("replace", {"fresh": ("1", 0)}), 6)
    assert a.items() == {"fresh": ("1", 0)}
    b.change(("replace", {"after-flush": ("1", 0)}), 1, reset=True)
    assert a.items() == {"after-flush": ("1", 0)}
    a.change(("replace", {"x": ("1", 0)}), 2)
    assert b.lookup("x") == "1"
    m = ZoneStore("m", 1 << 20)  # the same rule in one process
    m.change(("post", {"new": ("1", None)}), 5)
    m.change(("replace", {}), 4)
    assert m.lookup("new") == "1"
