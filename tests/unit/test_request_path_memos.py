"""What the request path decides once and remembers: each memo gives the answer the full
computation gives, stays bounded whatever clients send, and the proxy's header template
keeps NGINX's order and skip rules."""

from __future__ import annotations

import pytest
from inproc import plan_of, serve

from jwtgate.errors import HTTPError
from jwtgate.http import head as head_mod
from jwtgate.http.head import read_head
from jwtgate.memo import remember
from jwtgate.modules.proxy import seconds_text
from jwtgate.modules.status import _seconds
from jwtgate.runtime.context import ConnectionInfo, RequestContext
from jwtgate.runtime.router import _MEMO_MAX, LocationMatcher


def _fresh(monkeypatch, *names: str) -> None:
    """Empty head.py memos for the length of a test."""
    for name in names:
        monkeypatch.setattr(head_mod, name, {})


def test_memo_clears_when_full_and_never_keeps_long_keys():
    memo: dict = {}
    for key in ("a", "b", "c"):
        remember(memo, key, key.upper(), 3, 4)
    assert memo == {"a": "A", "b": "B", "c": "C"}
    remember(memo, "d", "D", 3, 4)  # full: cleared first, then kept
    assert memo == {"d": "D"}
    remember(memo, "long!", 1, 3, 4)
    assert "long!" not in memo and len(memo) == 1
    remember(memo, ("x" * 100, 1), True, 3)  # no key bound
    assert ("x" * 100, 1) in memo


def _matcher(tmp_path, locations: str) -> LocationMatcher:
    plan = plan_of(tmp_path, "server { listen 127.0.0.1:18996; %s }" % locations)
    return plan.servers[0].locations


def test_location_memo_matches_the_full_lookup_and_stays_bounded(tmp_path):
    m = _matcher(tmp_path, "location /a/ { return 200 a; } location = /x { return 200 x; } "
                           "location ~ ^/r/(\\d+)$ { return 200 r; } location /p/ { proxy_pass http://127.0.0.1:9; }")
    uris = ["/a/1", "/x", "/r/42", "/r/x", "/p", "/p/", "/nothing"]
    first = [m.lookup(u) for u in uris]
    assert first == [m.lookup(u) for u in uris]  # served from the memo
    fresh = []
    for u in uris:
        found = m._find(u)
        fresh.append(None if found is None else (found[0], found[1].groups() if found[1] else None,
                                                 found[2] == "redirect"))
    assert [None if f is None else (f[0], f[1].groups() if f[1] else None, f[2]) for f in first] == fresh
    assert first[4][2] is True  # /p auto-redirects to /p/
    for i in range(_MEMO_MAX * 2 + 7):
        m.lookup(f"/a/{i}")
    assert len(m._memo) <= _MEMO_MAX
    assert m.lookup("/r/7")[1].group(1) == "7"


def test_single_server_selector_skips_host_only_when_names_cannot_choose(tmp_path):
    one = plan_of(tmp_path, "server { listen 127.0.0.1:18996; server_name a.example; return 200; }")
    sel = one.selector("127.0.0.1", 18996)
    assert sel.single is one.servers[0]
    two = plan_of(tmp_path, "server { listen 127.0.0.1:18996; server_name a.example; return 200 a; } "
                            "server { listen 127.0.0.1:18996; server_name b.example; return 200 b; }")
    assert two.selector("127.0.0.1", 18996).single is None
    assert serve(two, "/", {"Host": "b.example"}, local=("127.0.0.1", 18996)).text == "b"
    assert serve(two, "/", {"Host": "zzz"}, local=("127.0.0.1", 18996)).text == "a"
    rx = plan_of(tmp_path, "server { listen 127.0.0.1:18996; server_name ~^(?<sub>\\w+)\\.ex$; "
                           "return 200 $1-$sub; }")
    assert rx.selector("127.0.0.1", 18996).single is None  # its captures are variables
    assert serve(rx, "/", {"Host": "api.ex"}, local=("127.0.0.1", 18996)).text == "api-api"


def test_header_key_memo_is_bounded_and_still_drops_underscored_names(monkeypatch):
    _fresh(monkeypatch, "_KEYS")
    fields = [(b"Host", b"h"), (b"X_Api", b"1"), (b"X-Api", b"2")]
    for _ in range(2):  # the second time from the memo
        head = read_head("GET", "1.1", "/", fields)
        assert head.http == {"host": "h", "x_api": "2"}
        assert head.headers == [(b"Host", b"h"), (b"X-Api", b"2")]
    many = [(b"X-N%d" % i, b"v") for i in range(3000)]
    head = read_head("GET", "1.1", "/", [(b"Host", b"h"), *many])
    assert len(head_mod._KEYS) <= head_mod._MEMO_MAX
    assert head.http["x_n2999"] == "v" and len(head.headers) == 3001


def test_host_memo_remembers_only_valid_hosts_and_is_bounded(monkeypatch):
    _fresh(monkeypatch, "_VALID_HOSTS")
    for bad in ("a/b", "..", "a b", ""):
        with pytest.raises(HTTPError):
            read_head("GET", "1.1", "/", [(b"Host", bad.encode())])
    assert head_mod._VALID_HOSTS == {}
    for i in range(3000):
        read_head("GET", "1.1", "/", [(b"Host", b"h%d.example" % i)])
    assert len(head_mod._VALID_HOSTS) <= head_mod._MEMO_MAX
    with pytest.raises(HTTPError):
        read_head("GET", "1.1", "/", [(b"Host", b"h1.example/..")])


def _head_for(plan, target="/p/x?q=1", headers=((b"Host", b"gw"), (b"X-Client", b"c"))):
    loc = plan.servers[0].locations.lookup(target.split("?")[0])[0]
    conn = ConnectionInfo(("192.0.2.1", 4000), ("127.0.0.1", 18996), 1)
    http = {n.decode().lower().replace("-", "_"): v.decode() for n, v in headers}
    ctx = RequestContext(conn, "GET", target, target.split("?")[0], "q=1", "1.1", list(headers), http)
    return loc.content.request_head(ctx).decode()


def test_proxy_header_template_keeps_order_skips_empty_and_evaluates_variables(tmp_path):
    plan = plan_of(tmp_path, """
upstream backend { server 127.0.0.1:9; }
server {
    listen 127.0.0.1:18996;
    location /p/ {
        proxy_set_header X-One one;
        proxy_set_header X-Addr $remote_addr;
        proxy_set_header X-Two "two";
        proxy_set_header X-Empty "";
        proxy_set_header X-Three three;
        proxy_pass http://backend;
    }
}""")
    # NGINX's defaults first (Host; Connection "" with HTTP/1.1 is not sent), then the
    # configuration's fields in order, the empty one skipped, then the client's own fields.
    assert _head_for(plan) == ("GET /p/x?q=1 HTTP/1.1\r\nHost: backend\r\nX-One: one\r\n"
                               "X-Addr: 192.0.2.1\r\nX-Two: two\r\nX-Three: three\r\n"
                               "X-Client: c\r\n\r\n")


def test_proxy_host_in_the_template_is_the_handlers_own(tmp_path):
    plan = plan_of(tmp_path, """
server {
    listen 127.0.0.1:18996;
    location /p/ { proxy_pass http://127.0.0.1:8080; }
    location /q/ { proxy_set_header Host ${proxy_host}x; proxy_pass http://127.0.0.1:9; }
}""")
    assert "\r\nHost: 127.0.0.1:8080\r\n" in _head_for(plan)  # port kept: not the default 80
    assert "Connection" not in _head_for(plan)  # proxy_http_version 1.1: Connection "" is skipped
    assert "\r\nHost: 127.0.0.1:9x\r\n" in _head_for(plan, "/q/x")


def test_upstream_times_are_kept_as_seconds_and_written_as_nginx_does():
    assert seconds_text("") == ""
    assert seconds_text(0.0123) == "0.012" and seconds_text(2.0) == "2.000"
    assert seconds_text("0.001, 0.004") == "0.001, 0.004"
    assert _seconds(0.25) == 0.25 and _seconds("0.001, 0.004") == 0.004 and _seconds("") is None


def test_memos_hold_little_memory_whatever_clients_send(tmp_path, monkeypatch):
    """Entries are bounded in number and in size: unique, huge field names, Hosts and URIs
    (8 KB each, what large_client_header_buffers admits) must not pile up in a worker."""
    import tracemalloc

    _fresh(monkeypatch, "_KEYS")
    _fresh(monkeypatch, "_VALID_HOSTS")
    _fresh(monkeypatch, "_TARGETS")
    m = _matcher(tmp_path, "location / { return 200; } location ~ ^/r/(.+)$ { return 200 $1; }")
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(3000):
            read_head("GET", "1.1", "/t/%d" % i + "t" * 7000, [(b"Host", b"h%d" % i + b"a" * 7000),
                                                           (b"X-" + b"n" * 7000 + b"%d" % i, b"v")])
            m.lookup("/r/%d" % i + "a" * 8000)
            m.lookup("/s/%d" % i + "b" * 8000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 2_000_000, grown
    for i in range(5000):  # short ones are remembered, up to the entry bound
        read_head("GET", "1.1", "/", [(b"Host", b"h%d" % i), (b"X-N%d" % i, b"v")])
        m.lookup("/p/%d" % i)
    assert len(head_mod._KEYS) <= head_mod._MEMO_MAX and len(head_mod._VALID_HOSTS) <= head_mod._MEMO_MAX
    assert m.lookup("/r/" + "z" * 9000)[1].group(1) == "z" * 9000  # long URIs still route


def test_target_memo_gives_what_splitting_gives_and_keeps_checking_the_method(monkeypatch):
    _fresh(monkeypatch, "_TARGETS")
    for _ in range(2):  # the second time from the memo
        head = read_head("GET", "1.1", "/a/../b//c?x=1&y=%41", [(b"Host", b"h")])
        assert (head.uri, head.args, head.target) == ("/b/c", "x=1&y=%41", "/a/../b//c?x=1&y=%41")
        head = read_head("GET", "1.1", "http://Other.Example:8080/p?q", [(b"Host", b"h")])
        assert (head.http["host"], head.uri, head.args) == ("other.example", "/p", "q")
        assert read_head("OPTIONS", "1.1", "*", [(b"Host", b"h")]).uri == "*"
        with pytest.raises(HTTPError):
            read_head("GET", "1.1", "*", [(b"Host", b"h")])  # asterisk-form outside OPTIONS
        for bad in ("/%zz", "/../x", "/a#b", "x"):
            with pytest.raises(HTTPError):
                read_head("GET", "1.1", bad, [(b"Host", b"h")])
    assert "/%zz" not in head_mod._TARGETS and "/a/../b//c?x=1&y=%41" in head_mod._TARGETS
