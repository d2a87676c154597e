"""``log_format`` and ``access_log``: escaping as NGINX's ngx_http_log_module.c, parameters,
NGINX's messages, and the buffered writer (without a gateway)."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwtgate.conf.plan import compile_plan
from jwtgate.errors import ConfigError
from jwtgate.modules.log import escape_default, escape_json, escape_none
from jwtgate.observability.accesslog import AccessLog

JWK = {"keys": [{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]}


def test_escape_default():
    assert escape_default("") == "-"
    assert escape_default("plain text/1.0 ~!") == "plain text/1.0 ~!"
    assert escape_default('a"b\\c') == "a\\x22b\\x5Cc"
    assert escape_default("\x00\x1f\x7f") == "\\x00\\x1F\\x7F"
    assert escape_default("é") == "\\xC3\\xA9"  # the UTF-8 bytes
    assert escape_default("\udcff") == "\\xFF"  # a byte that was not UTF-8


def test_escape_json():
    assert escape_json("") == ""
    assert escape_json('a"b\\c/') == 'a\\"b\\\\c/'
    assert escape_json("\n\r\t\b\f") == "\\n\\r\\t\\b\\f"
    assert escape_json("\x00\x01\x1f\x7f") == "\\u0000\\u0001\\u001F\x7f"
    assert escape_json("é中") == "é中"


def test_escape_none():
    assert escape_none("") == ""
    assert escape_none('"\x01') == '"\x01'


@given(st.text())
def test_escape_json_is_a_json_string(value):
    assert json.loads(f'"{escape_json(value)}"') == value


@given(st.text())
def test_escape_default_is_printable_ascii(value):
    out = escape_default(value)
    assert out.isascii() and out.isprintable() and '"' not in out


@pytest.fixture
def write(tmp_path):
    (tmp_path / "k.jwk").write_text(json.dumps(JWK))

    def write(http: str, location: str = "") -> str:
        path = tmp_path / "gw.conf"
        path.write_text(f"{http}\nserver {{ listen 127.0.0.1:18998; location / {{ {location} return 200; }} }}\n")
        return str(path)
    return write


def error_of(path: str) -> str:
    with pytest.raises(ConfigError) as e:
        compile_plan(path)
    return str(getattr(e.value, "errors", [e.value])[0])


@pytest.mark.parametrize("http, location, message", [
    ("log_format x escape=xml '$uri';", "", 'unknown log format escaping "xml"'),
    ("log_format x escape=json;", "", 'invalid number of arguments in "log_format" directive'),
    ("log_format combined '$uri';", "", 'duplicate "log_format" name "combined"'),
    ("log_format x '$uri';\nlog_format x '$uri';", "", 'duplicate "log_format" name "x"'),
    ("log_format x '$nope';", "", 'unknown "nope" variable'),
    ("log_format x '$remote' '_addr';", "", 'unknown "remote" variable'),
    ("", "access_log {tmp}/a.log nope;", 'unknown log format "nope"'),
    ("", "access_log off now;", 'invalid parameter "now"'),
    ("", "access_log {tmp}/a.log combined buffer=0;", 'invalid buffer size "0"'),
    ("", "access_log {tmp}/a.log combined buffer=big;", 'invalid buffer size "big"'),
    ("", "access_log {tmp}/a.log combined buffer=4k flush=0;", 'invalid flush time "0"'),
    ("", "access_log {tmp}/a.log combined flush=1s;", 'no buffer is defined for access_log "{tmp}/a.log"'),
    ("", "access_log {tmp}/a.log combined gzip;", 'the "gzip" parameter of "access_log" is not supported'),
    ("", "access_log {tmp}/a.log combined gzip=5 buffer=4k;", 'the "gzip" parameter of "access_log" is not supported'),
    ("", "access_log {tmp}/a.log combined if=$nope;", 'unknown "nope" variable'),
    ("", "access_log {tmp}/a.log combined when=1;", 'invalid parameter "when=1"'),
    ("", "access_log syslog:server=127.0.0.1;", '"syslog:" targets of "access_log" are not supported'),
    ("", "access_log {tmp}/$host.log;", 'variables in "access_log" paths are not supported'),
    ("", "access_log {tmp}/no/such/dir/a.log;", 'open() "{tmp}/no/such/dir/a.log" failed (2: No such file'),
    ("access_log {tmp}/a.log combined buffer=4k;", "access_log {tmp}/a.log combined buffer=8k;",
     'access_log "{tmp}/a.log" already defined with conflicting parameters'),
    ("", "access_log_redact_token yes;", 'invalid value "yes" in "access_log_redact_token" directive'),
])
def test_errors(write, tmp_path, http, location, message):
    err = error_of(write(http.replace("{tmp}", str(tmp_path)), location.replace("{tmp}", str(tmp_path))))
    assert err.startswith(message.replace("{tmp}", str(tmp_path))), err


def test_format_names_and_shared_buffers(write, tmp_path):
    plan = compile_plan(write(f"log_format Mine '$uri';\naccess_log {tmp_path}/a.log mine buffer=4k flush=2s;",
                              f"access_log {tmp_path}/a.log;\naccess_log {tmp_path}/b.log MINE if=$arg_log;"))
    files = {f.path: f for f in plan.resources if isinstance(f, AccessLog)}
    assert files[f"{tmp_path}/a.log"].buffer == 4096 and files[f"{tmp_path}/a.log"].flush_interval == 2.0
    assert files[f"{tmp_path}/b.log"].buffer == 0


def test_writer_buffers_and_flushes(tmp_path):
    path = tmp_path / "w.log"

    async def scenario():
        log = AccessLog(str(path), buffer=40, flush=0.05)
        keep = {}
        await log.open(keep)
        log.write(b"1" * 19 + b"\n")
        log.write(b"2" * 19 + b"\n")           # 40 bytes: still fits
        await asyncio.sleep(0.01)
        before = path.read_bytes()
        log.write(b"3" * 9 + b"\n")            # does not fit: the buffer goes first
        log.write(b"4" * 99 + b"\n")           # longer than the buffer: written at once
        await asyncio.wrap_future(keep["log_writer"].barrier())
        middle = path.read_bytes()
        await asyncio.sleep(0.1)               # flush=50ms writes the rest
        await asyncio.wrap_future(keep["log_writer"].barrier())
        after = path.read_bytes()
        await log.close()
        return before, middle, after

    before, middle, after = asyncio.run(scenario())
    assert before == b""
    assert middle == b"1" * 19 + b"\n" + b"2" * 19 + b"\n" + b"3" * 9 + b"\n" + b"4" * 99 + b"\n" or \
        middle == b"1" * 19 + b"\n" + b"2" * 19 + b"\n" + b"4" * 99 + b"\n"
    assert after.endswith(b"\n") and after.count(b"\n") == 4


def test_reopen_keeps_the_old_file_when_the_new_one_cannot_be_opened(tmp_path, caplog):
    path = tmp_path / "a.log"

    async def scenario():
        log = AccessLog(str(path))
        keep = {}
        await log.open(keep)
        log.write(b"one\n")
        await asyncio.sleep(0)
        path.rename(tmp_path / "a.log.1")
        path.mkdir()  # the new file cannot be opened: a directory is in the way
        log.reopen()
        log.write(b"two\n")
        await log.close()

    asyncio.run(scenario())
    assert (tmp_path / "a.log.1").read_text() == "one\ntwo\n"
    assert any('reopening "%s" failed (21: Is a directory)' % path in r.getMessage() for r in caplog.records)
