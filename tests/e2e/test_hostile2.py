"""Second adversarial pass: the surfaces added after ``test_hostile.py``.

``set``/``return``/``add_header``, access logs (escaping, redaction), ``limit_req`` in Redis,
the CLI tools, routing by ``Host``, and the master with ``worker_processes 2``.

Tests named ``test_defect_*`` document defects found by this review; they fail until the
defect is fixed. The others pin attacks that are already handled.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from jwtgate_e2e import JWTGATE, free_port, port_open, wait_until

pytestmark = pytest.mark.timeout(90)

HOST = "127.0.0.1"
SECRET = b"fantasticjwt"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


# -- helpers ----------------------------------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs_raw(payload: bytes, header: bytes = b'{"alg":"HS256","kid":"0001"}') -> str:
    """An HS256 token over raw JSON bytes (to send escapes such as ``\\ud800`` verbatim)."""
    si = b64u(header) + "." + b64u(payload)
    return si + "." + b64u(hmac.new(SECRET, si.encode(), hashlib.sha256).digest())


def hs(claims: dict) -> str:
    claims = {"exp": int(time.time()) + 3600, **claims}
    return hs_raw(json.dumps(claims).encode())


def raw_get(port: int, target: bytes, host: bytes | None = b"gw.test", extra: bytes = b"",
            timeout: float = 10) -> bytes:
    """One ``GET`` with ``Connection: close`` written as raw bytes; returns all bytes read."""
    head = b"GET " + target + b" HTTP/1.1\r\n"
    if host is not None:
        head += b"Host: " + host + b"\r\n"
    head += b"Connection: close\r\n" + extra + b"\r\n"
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(head)
        out = b""
        while True:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not data:
                break
            out += data
    return out


def status_of(resp: bytes) -> int:
    assert resp, "the gateway closed the connection without answering"
    return int(resp.split(b" ", 2)[1])


def header_of(resp: bytes, name: bytes) -> bytes | None:
    head = resp.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        n, _, v = line.partition(b":")
        if n.strip().lower() == name.lower():
            return v.strip()
    return None


def auth(token: str) -> bytes:
    return b"Authorization: Bearer " + token.encode() + b"\r\n"


def read_log(path: Path, lines: int, timeout: float = 5.0) -> list[str]:
    def ready():
        if not path.exists():
            return None
        got = [x for x in path.read_bytes().decode("utf-8", "replace").split("\n") if x]
        return got if len(got) >= lines else None
    return wait_until(ready, timeout, what=f"{lines} lines in {path}")


class Redis:
    """A private redis-server on a free port, in ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp / f"redis{self.port}"
        self.dir.mkdir()
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port), 10, what="redis-server")
        self.url = f"redis://{HOST}:{self.port}"

    def keys(self) -> list[bytes]:
        with socket.create_connection((HOST, self.port), timeout=5) as s:
            s.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
            time.sleep(0.2)
            data = s.recv(1 << 20)
        return data.split(b"\r\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis(tmp_path):
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("no redis-server")
    r = Redis(tmp_path)
    try:
        yield r
    finally:
        r.close()


def conf(body: str, http: str = "") -> str:
    return f"""
{http}
upstream api {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    auth_jwt_key_file {{keys}};
{body}
}}
"""


def run_cli(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([JWTGATE, *args], input=stdin, capture_output=True, text=True, timeout=60,
                          cwd=cwd)


# -- 1. return / add_header -------------------------------------------------------------------


def test_return_redirect_keeps_encoded_crlf_encoded(gateway):
    gw = gateway(conf("location /r { return 302 $arg_x; }\nlocation /t { return 200 \"v=$arg_x\"; }"))
    r = raw_get(gw.port, b"/r?x=http://a%0d%0aSet-Cookie:%20s=1")
    assert status_of(r) == 302
    assert header_of(r, b"Set-Cookie") is None
    assert header_of(r, b"Location") == b"http://a%0d%0aSet-Cookie:%20s=1"
    r = raw_get(gw.port, b"/t?x=%0d%0aX:1")
    assert r.endswith(b"v=%0d%0aX:1")


def test_add_header_claim_with_crlf_is_not_written(gateway, upstream):
    gw = gateway(conf('location / { auth_jwt "r"; add_header X-Sub $jwt_claim_sub always; proxy_pass http://api; }'))
    r = raw_get(gw.port, b"/a", extra=auth(hs({"sub": "a\r\nSet-Cookie: s=1"})))
    assert status_of(r) == 200
    assert header_of(r, b"Set-Cookie") is None and header_of(r, b"X-Sub") is None


def test_defect_add_header_with_lone_surrogate_claim_answers(gateway, upstream):
    """A verified token whose ``sub`` is the JSON escape ``"\\ud800"`` (a lone surrogate):
    ``add_header X-Sub $jwt_claim_sub`` raises UnicodeEncodeError in the header filter
    (headers.py:59 ``text.encode("utf-8", "surrogateescape")``) while the upstream response
    is read; the client gets the connection closed with no answer at all."""
    gw = gateway(conf('location / { auth_jwt "r"; add_header X-Sub $jwt_claim_sub always; proxy_pass http://api; }'))
    r = raw_get(gw.port, b"/a", extra=auth(hs_raw(b'{"sub":"\\ud800"}')))
    assert r, "connection closed without a response"
    # Fixed by refusing the token: an unpaired surrogate is no character (RFC 8259 §8.2).
    assert status_of(r) == 401


# -- 2. access logs ---------------------------------------------------------------------------


def test_json_log_stays_valid_json_with_hostile_header_and_claim(gateway, upstream, tmp_path):
    log = tmp_path / "j.log"
    gw = gateway(conf(
        f'location / {{ auth_jwt "r"; access_log {log} j; proxy_pass http://api; }}',
        http="log_format j escape=json '{\"ua\":\"$http_user_agent\",\"sub\":\"$jwt_claim_sub\",\"u\":\"$request_uri\"}';"))
    tok = hs({"sub": 'q"\\\r\n}\u2028\x00'})
    r = raw_get(gw.port, b'/a?x="\\', extra=auth(tok) + b'User-Agent: u"\\\t\xc3\xa9\r\n')
    assert status_of(r) == 200
    (line,) = read_log(log, 1)
    rec = json.loads(line)
    assert rec["sub"] == 'q"\\\r\n}\u2028\x00'


def test_defect_lone_surrogate_claim_suppresses_access_log_line(gateway, upstream, tmp_path):
    """Log evasion: a client whose token has ``"sub":"\\ud800"`` is served but never logged.

    ``escape_default``/``escape_json`` keep the lone surrogate and the logger's
    ``(render(ctx) + "\\n").encode("utf-8", "surrogateescape")`` (modules/log.py:408/414)
    raises; the line is dropped ("access log failed (UnicodeEncodeError ...)")."""
    log = tmp_path / "d.log"
    logj = tmp_path / "j.log"
    gw = gateway(conf(
        f'location / {{ auth_jwt "r"; access_log {log} d; access_log {logj} j; proxy_pass http://api; }}',
        http="log_format d '$request_uri $jwt_claim_sub $status';\n"
             "log_format j escape=json '{\"sub\":\"$jwt_claim_sub\"}';"))
    r = raw_get(gw.port, b"/evader", extra=auth(hs_raw(b'{"sub":"\\ud800"}')))
    assert status_of(r) == 401  # refused as malformed, and still logged
    time.sleep(1.0)
    assert log.exists() and "/evader" in log.read_text(errors="replace"), gw.stderr_text()[-500:]
    json.loads(read_log(logj, 1)[0])


def test_defect_escape_default_double_encodes_non_ascii_header_bytes(gateway, upstream, tmp_path):
    """``User-Agent: \\xc3\\xa9`` (two bytes) is logged as ``\\xC3\\x83\\xC2\\xA9``: header
    values are decoded as latin-1 (http/head.py:88) and ``escape_default`` re-encodes the str
    as UTF-8 (modules/log.py:85). NGINX writes the bytes received: ``\\xC3\\xA9``."""
    log = tmp_path / "d.log"
    gw = gateway(conf(f'location / {{ access_log {log} d; proxy_pass http://api; }}',
                      http="log_format d '$http_user_agent';"))
    raw_get(gw.port, b"/a", extra=b"User-Agent: \xc3\xa9\r\n")
    assert read_log(log, 1) == ["\\xC3\\xA9"]


def test_redaction_of_query_token_case_and_repeats(gateway, upstream, tmp_path):
    log = tmp_path / "q.log"
    gw = gateway(conf(
        f'location / {{ auth_jwt "r" token=$arg_apijwt; access_log_redact_token on; access_log {log} d; '
        f'proxy_pass http://api; }}',
        http="log_format d '$request|$request_uri|$args|$arg_apijwt|$query_string';"))
    tok = hs({"sub": "alice"})
    for target in (f"/a?apijwt={tok}", f"/a?APIJWT={tok}", f"/a?x=1&apijwt={tok}&apijwt={tok}",
                   f"/a?&apiJwt={tok}"):
        assert status_of(raw_get(gw.port, target.encode())) == 200
    lines = read_log(log, 4)
    text = "\n".join(lines)
    assert tok not in text and tok.split(".")[2] not in text, text


def test_redaction_of_bearer_any_case(gateway, upstream, tmp_path):
    log = tmp_path / "b.log"
    gw = gateway(conf(f'location / {{ auth_jwt "r"; access_log_redact_token on; access_log {log} d; '
                      f'proxy_pass http://api; }}', http="log_format d '$http_authorization';"))
    tok = hs({"sub": "alice"})
    for scheme in (b"Bearer ", b"bearer ", b"BEARER  "):
        assert status_of(raw_get(gw.port, b"/a", extra=b"Authorization: " + scheme + tok.encode() + b"\r\n")) == 200
    text = "\n".join(read_log(log, 3))
    assert tok.split(".")[2] not in text, text


# -- 3. limit_req in Redis --------------------------------------------------------------------


def redis_limit_conf(redis_url: str) -> str:
    return conf('location / { auth_jwt "r"; limit_req zone=z burst=1 nodelay; proxy_pass http://api; }',
                http=f"state_redis {redis_url} timeout=500ms fail=closed;\n"
                     "limit_req_zone $jwt_claim_sub zone=z:1m rate=1r/m sync;")


def test_defect_lone_surrogate_claim_limit_req_redis_500(gateway, upstream, redis):
    """``"sub":"\\ud800"`` as a Redis ``limit_req`` key: ``key.encode("utf-8",
    "surrogateescape")`` (state/redis.py:233) raises UnicodeEncodeError; the request ends in
    500 ("unexpected error while serving")."""
    gw = gateway(redis_limit_conf(redis.url))
    r = raw_get(gw.port, b"/a", extra=auth(hs_raw(b'{"sub":"\\ud800"}')))
    assert status_of(r) == 401, r[:200]


def test_defect_redis_key_collision_via_surrogateescape(gateway, upstream, redis):
    """Two distinct ``sub`` values share one Redis bucket: the JSON string ``"\\udcc3\\udca9"``
    (two lone surrogates) is encoded with ``surrogateescape`` into the bytes ``C3 A9``, the
    UTF-8 of ``"é"`` (state/redis.py:213/233). A client holding the first token spends the
    budget of the client ``é`` (the in-memory store keys by str and keeps them apart)."""
    gw = gateway(redis_limit_conf(redis.url))
    attacker = hs_raw(b'{"sub":"\\udcc3\\udca9"}')
    victim = hs({"sub": "\u00e9"})
    for _ in range(2):  # burst=1: the attacker's own budget, used up
        raw_get(gw.port, b"/a", extra=auth(attacker))
    r = raw_get(gw.port, b"/a", extra=auth(victim))
    assert status_of(r) == 200, "the victim's first request was refused: budget spent by another sub"


def test_forged_token_does_not_spend_budget(gateway, upstream, redis):
    gw = gateway(redis_limit_conf(redis.url))
    good = hs({"sub": "bob"})
    forged = good.rsplit(".", 1)[0] + "." + b64u(b"\0" * 32)
    for _ in range(5):
        assert status_of(raw_get(gw.port, b"/a", extra=auth(forged))) == 401
    assert status_of(raw_get(gw.port, b"/a", extra=auth(good))) == 200


# -- 4. CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b'{"sub":"\\ud800"}', b'{"exp":1e400}'], ids=["surrogate", "exp-inf"])
def test_defect_token_inspect_hostile_claims_internal_error(payload, tmp_path):
    """``jwtgate token inspect`` (with or without ``--key``) on a token whose claims hold a
    lone surrogate prints ``internal error (UnicodeEncodeError)``; with ``"exp":1e400``
    (Infinity) and ``--key`` it prints ``internal error (OverflowError)``. Expected: the
    report, or a plain error about the claim, never an internal error."""
    keys = tmp_path / "k.jwk"
    keys.write_text('{"keys":[{"k":"ZmFudGFzdGljand0","kty":"oct","kid":"0001"}]}')
    tok = hs_raw(payload)
    for args in ((), ("--key", str(keys)), ("--json",)):
        p = run_cli("token", "inspect", *args, stdin=tok + "\n")
        assert "internal error" not in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_cli_private_keys_0600_and_public_without_private_parts(tmp_path):
    os.umask(0o022)
    for kty, extra in (("RSA", ()), ("EC", ("--crv", "P-256")), ("OKP", ("--crv", "Ed25519"))):
        out = tmp_path / f"{kty}.jwk"
        p = run_cli("jwk", "generate", "--kty", kty, *extra, "--kid", kty, "-o", str(out))
        assert p.returncode == 0, p.stderr
        assert out.stat().st_mode & 0o777 == 0o600
        assert '"d"' not in p.stdout + p.stderr
        pub = run_cli("jwk", "public", str(out))
        assert pub.returncode == 0, pub.stderr
        for k in json.loads(pub.stdout)["keys"]:
            assert not {"d", "p", "q", "dp", "dq", "qi", "k", "oth"} & set(k), k
    sec = tmp_path / "s.jwk"
    assert run_cli("jwk", "from-secret", "x" * 32, "--kid", "s", "-o", str(sec)).returncode == 0
    assert sec.stat().st_mode & 0o777 == 0o600
    pub = run_cli("jwk", "public", str(sec))
    assert pub.returncode != 0 and '"k"' not in pub.stdout


# -- 5. routing / Host ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", [b"evil.example/x", b"evil.example\\x", b"a b", b"..", b""],
                         ids=["slash", "backslash", "space", "dotdot", "empty"])
def test_defect_invalid_host_is_not_rejected(gateway, upstream, host):
    """NGINX (``ngx_http_validate_host``) answers 400 to a Host with ``/``, ``\\``, ``..``,
    whitespace or an empty value. jwtgate never validates Host (http/head.py:111-114) and puts
    it into the auto-redirect ``Location`` (modules/rewrite.py:86-97): ``Host: evil.example/x``
    on ``GET /products`` yields ``Location: http://evil.example/x:PORT/products/``."""
    gw = gateway(conf("location /products/ { proxy_pass http://api; }"))
    r = raw_get(gw.port, b"/products", host=host)
    assert status_of(r) == 400, r.split(b"\r\n\r\n")[0]


def test_named_location_unreachable_from_outside(gateway):
    gw = gateway(conf("location @named { return 200 named; }\nlocation / { return 200 root; }"))
    for target in (b"/@named", b"/%40named"):
        assert raw_get(gw.port, target).endswith(b"root")
    assert status_of(raw_get(gw.port, b"@named")) == 400


# -- 6. master and workers -------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        return set()


@pytest.mark.parametrize("sig", [signal.SIGUSR2], ids=["USR2"])
def test_defect_master_killed_by_unhandled_signal_orphans_workers(gateway, sig):
    """``kill -USR2`` (NGINX's binary-upgrade signal) terminates the master: it only blocks and
    waits for HUP/QUIT/TERM/INT/USR1/CHLD (process/master.py:33), so USR2 keeps its default
    action. The workers stay behind, orphaned, still accepting on the port."""
    gw = gateway("worker_processes 2;\n" + conf("location / { return 200 ok; }"))
    master = gw.proc.pid
    workers = wait_until(lambda: _children(master) if len(_children(master)) >= 2 else None, 10,
                         what="two workers")
    try:
        os.kill(master, sig)
        time.sleep(1.0)
        assert gw.proc.poll() is None, f"master exited with {gw.proc.returncode} on {sig!r}"
    finally:
        if gw.proc.poll() is not None:
            for pid in workers:  # the orphans this test made
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            gw.proc.returncode = 0  # reported above; keep the fixture's teardown quiet


def test_reload_storm_and_worker_kills_keep_master(gateway):
    gw = gateway("worker_processes 2;\n" + conf("location / { return 200 ok; }"))
    master = gw.proc.pid
    wait_until(lambda: len(_children(master)) >= 2, 10, what="two workers")
    for _ in range(15):
        os.kill(master, signal.SIGHUP)
        time.sleep(0.03)
    for _ in range(3):
        kids = _children(master)
        if kids:
            os.kill(next(iter(kids)), signal.SIGKILL)
        os.kill(master, signal.SIGHUP)
    wait_until(lambda: len(_children(master)) == 2, 20, what="two workers after the storm")
    assert gw.proc.poll() is None
    assert raw_get(gw.port, b"/").endswith(b"ok")
