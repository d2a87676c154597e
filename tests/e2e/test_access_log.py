"""``log_format`` and ``access_log``: the post's ``jwt`` format and the predefined ``combined``."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest

from jwtgate.conf.plan import compile_plan
from jwtgate_e2e import POST_TOKEN, bearer, curl, mint_hs, post_conf, request, run_cli, wait_until

JWT_FORMAT = """
log_format jwt '$remote_addr - $remote_user [$time_local] "$request" '
               '$status $body_bytes_sent "$http_referer" "$http_user_agent" '
               '$jwt_header_alg $jwt_claim_sub';
"""

TIME_LOCAL = r"\[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]"


def log_lines(path, n: int) -> list[str]:
    """The log's lines once it has at least ``n`` (the gateway writes after responding)."""
    def ready():
        if not path.exists():
            return None
        lines = path.read_text().splitlines()
        return lines if len(lines) >= n else None
    return wait_until(ready, timeout=5, what=f"{n} lines in {path}")


def test_jwt_log_format(gateway, upstream, tmp_path):
    log = tmp_path / "access_jwt.log"
    gw = gateway(post_conf(http_extra=JWT_FORMAT, location_extra=f"access_log {log} jwt;"))
    for _ in range(3):
        r = curl(f"{gw.url}/products/widget1", "-H", f"Authorization: Bearer {POST_TOKEN}",
                 "-A", "test-agent/1.0", "-e", "http://example.com/ref")
        assert r.status == 200
    lines = log_lines(log, 3)
    assert len(lines) == 3
    body_len = len(r.body)
    for line in lines:
        assert line.endswith("HS256 quotes"), line
        assert re.fullmatch(
            r'127\.0\.0\.1 - - ' + TIME_LOCAL + r' "GET /products/widget1 HTTP/1\.1" 200 '
            + str(body_len) + r' "http://example\.com/ref" "test-agent/1\.0" HS256 quotes', line), line
    # a refused request: 401, and "-" for both JWT variables
    r = request(gw.port, "GET", "/products/widget2?x=1", {"User-Agent": "ua"})
    assert r.status == 401
    line = log_lines(log, 4)[3]
    assert re.fullmatch(r'127\.0\.0\.1 - - ' + TIME_LOCAL + r' "GET /products/widget2\?x=1 HTTP/1\.1" 401 '
                        + str(len(r.body)) + r' "-" "ua" - -', line), line
    # a token with a bad signature logs no claims either
    r = request(gw.port, "GET", "/products/widget3", bearer(mint_hs({"sub": "quotes"}, key=b"wrong")))
    assert r.status == 401
    assert log_lines(log, 5)[4].endswith('" 401 %d "-" "-" - -' % len(r.body)), log_lines(log, 5)[4]


def test_combined_log_format(gateway, upstream, tmp_path):
    default = tmp_path / "default.log"
    combined = tmp_path / "combined.log"
    gw = gateway(post_conf(location_extra=f"access_log {default};\naccess_log {combined} combined;"))
    r = curl(f"{gw.url}/products/widget1?q=a%20b", "-H", f"Authorization: Bearer {POST_TOKEN}",
             "-A", 'agent "quoted"', "-e", "http://ref.example/")
    assert r.status == 200
    r401 = request(gw.port, "POST", "/products/", {"User-Agent": "x"}, body=b"{}")
    assert r401.status == 401
    for path in (default, combined):
        lines = log_lines(path, 2)
        assert len(lines) == 2, lines
        assert re.fullmatch(
            r'127\.0\.0\.1 - - ' + TIME_LOCAL + r' "GET /products/widget1\?q=a%20b HTTP/1\.1" 200 '
            + str(len(r.body)) + r' "http://ref\.example/" "agent \\x22quoted\\x22"', lines[0]), lines[0]
        assert re.fullmatch(
            r'127\.0\.0\.1 - - ' + TIME_LOCAL + r' "POST /products/ HTTP/1\.1" 401 '
            + str(len(r401.body)) + r' "-" "x"', lines[1]), lines[1]


def test_log_only_where_configured(gateway, upstream, tmp_path):
    """``access_log`` in one location logs that location only; http-level logs are inherited."""
    everything = tmp_path / "all.log"
    products = tmp_path / "products.log"
    gw = gateway(f"""
access_log {everything};
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    location /products/ {{
        auth_jwt "Products API";
        auth_jwt_key_file {{keys}};
        proxy_pass http://api_server;
        access_log {products};
    }}
    location /open/ {{
        proxy_pass http://api_server;
    }}
}}
""")
    assert gw.get("/open/a").status == 200
    assert gw.get("/products/b", bearer(POST_TOKEN)).status == 200
    assert gw.get("/open/c").status == 200
    lines = log_lines(everything, 2)
    assert [re.search(r'"GET (\S+)', ln).group(1) for ln in lines] == ["/open/a", "/open/c"]
    lines = log_lines(products, 1)
    assert [re.search(r'"GET (\S+)', ln).group(1) for ln in lines] == ["/products/b"]


# -- escaping, parameters, rotation, several writers ----------------------------------------


def open_conf(http_extra: str, location_extra: str, server_extra: str = "") -> str:
    return f"""
{http_extra}
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    {server_extra}
    location / {{
        proxy_pass http://api_server;
        {location_extra}
    }}
}}
"""


def test_escape_json_writes_json(gateway, upstream, tmp_path):
    """Lines of a JSON-shaped format are JSON, whatever the claims and headers hold."""
    log = tmp_path / "json.log"
    gw = gateway(post_conf(
        http_extra="""log_format j escape=json '{"ua":"$http_user_agent",'
                                   '"ref":"$http_referer","sub":"$jwt_claim_sub",'
                                   '"status":$status,"uri":"$request_uri"}';""",
        location_extra=f"access_log {log} j;"))
    subs = ['plain', 'quote " backslash \\ tab \t', 'newline \n cr \r ctl \x01\x1f del \x7f',
            'utf-8 \u00e9\u4e2d \U0001F600']
    for sub in subs:
        r = gw.get("/products/a?x=%22y", {"User-Agent": 'ua "q" \\', **bearer(mint_hs({"sub": sub}))})
        assert r.status == 200
    assert gw.get("/products/none").status == 401
    lines = log_lines(log, len(subs) + 1)
    records = [json.loads(line) for line in lines]  # every line is valid JSON
    assert [r["sub"] for r in records[:-1]] == subs
    assert all(r["ua"] == 'ua "q" \\' and r["ref"] == "" and r["status"] == 200 for r in records[:-1])
    assert records[0]["uri"] == "/products/a?x=%22y"
    assert records[-1] == {"ua": "", "ref": "", "sub": "", "status": 401, "uri": "/products/none"}
    assert "\\u0001\\u001F" in lines[2]  # NGINX's \u00XX, upper case


def test_escape_default_and_none(gateway, upstream, tmp_path):
    default, none = tmp_path / "default.log", tmp_path / "none.log"
    gw = gateway(post_conf(http_extra="log_format d '[$jwt_claim_sub] [$http_x_empty]';\n"
                                      "log_format n escape=none '[$jwt_claim_sub] [$http_x_empty]';",
                           location_extra=f"access_log {default} d;\naccess_log {none} n;"))
    assert gw.get("/products/", bearer(mint_hs({"sub": 'a "b" \\c\x7f\n\u00e9'}))).status == 200
    assert log_lines(default, 1) == ['[a \\x22b\\x22 \\x5Cc\\x7F\\x0A\\xC3\\xA9] [-]']  # empty: "-"
    assert log_lines(none, 1)[0] == '[a "b" \\c\x7f'  # the raw newline ends the line here...
    assert none.read_text() == '[a "b" \\c\x7f\n\u00e9] []\n'  # ...and an empty value writes nothing


def test_several_strings_are_concatenated(gateway, upstream, tmp_path):
    log = tmp_path / "a.log"
    gw = gateway(open_conf("log_format two '$status' 'x' \"$request_method\";", f"access_log {log} two;"))
    gw.get("/")
    assert log_lines(log, 1) == ["200xGET"]


def test_access_log_off_and_several_per_level(gateway, upstream, tmp_path):
    one, two = tmp_path / "one.log", tmp_path / "two.log"
    gw = gateway(f"""
log_format s '$request_uri';
access_log {one} s;
access_log {two} s;
upstream api_server {{ server 127.0.0.1:{{upstream_port}}; }}
server {{
    listen 127.0.0.1:{{port}};
    location /on/ {{ proxy_pass http://api_server; }}
    location /off/ {{ proxy_pass http://api_server; access_log off; }}
    location /both/ {{ proxy_pass http://api_server; access_log {one} s; access_log off; }}
}}
""")
    for path in ("/on/1", "/off/2", "/both/3", "/on/4"):
        assert gw.get(path).status == 200
    assert log_lines(one, 2) == ["/on/1", "/on/4"]
    assert log_lines(two, 2) == ["/on/1", "/on/4"]


def test_if_condition(gateway, upstream, tmp_path):
    log = tmp_path / "errors.log"
    gw = gateway(open_conf("map $status $loggable { ~^[23] 0; default 1; }\nlog_format s '$status $request_uri';",
                           f"access_log {log} s if=$loggable;"))
    for path in ("/ok", "/status/404", "/status/204", "/status/500"):
        gw.get(path)
    assert log_lines(log, 2) == ["404 /status/404", "500 /status/500"]
    time.sleep(0.1)
    assert len(log.read_text().splitlines()) == 2


def test_buffer_and_flush(gateway, upstream, tmp_path):
    log = tmp_path / "buffered.log"
    gw = gateway(open_conf("log_format s '$request_uri';", f"access_log {log} s buffer=64k flush=1s;"))
    start = time.monotonic()
    gw.get("/1")
    gw.get("/2")
    time.sleep(0.1)
    if time.monotonic() - start < 0.8:
        assert not log.exists() or log.read_text() == ""  # still in the buffer
    assert log_lines(log, 2) == ["/1", "/2"]
    assert time.monotonic() - start >= 0.9  # written by the flush timer, a second after the first line


def test_buffer_full(gateway, upstream, tmp_path):
    log = tmp_path / "buffered.log"
    gw = gateway(open_conf("log_format s '$request_uri';", f"access_log {log} s buffer=100;"))
    paths = [f"/{i:02d}{'x' * 20}" for i in range(10)]  # 24 bytes a line: 4 fill the buffer
    for p in paths:
        gw.get(p)
    written = log_lines(log, 8)  # two full buffers; the last lines wait in the third
    assert written == paths[:8], written
    assert gw.stop() == 0
    assert log.read_text().splitlines() == paths  # flushed on stop


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1])
def test_buffer_is_flushed_on_stop_reload_and_reopen(gateway, upstream, tmp_path, sig):
    log = tmp_path / "buffered.log"
    gw = gateway(open_conf("error_log stderr info;\nlog_format s '$request_uri';", f"access_log {log} s buffer=64k;"))
    for i in range(3):
        gw.get(f"/{i}")
    time.sleep(0.1)
    assert not log.exists() or log.read_text() == ""
    if sig in (signal.SIGTERM, signal.SIGQUIT):
        assert gw.stop(sig) == 0
    else:
        gw.send_signal(sig)
    assert log_lines(log, 3) == ["/0", "/1", "/2"]


def test_reopen_after_rotation(gateway, upstream, tmp_path):
    log = tmp_path / "access.log"
    error_log = tmp_path / "error.log"
    pid = tmp_path / "jwtgate.pid"
    gw = gateway(f"pid {pid};\n" + open_conf(f"error_log {error_log} info;\nlog_format s '$request_uri';",
                                              f"access_log {log} s;"))
    wait_until(lambda: pid.exists(), what="the pid file")
    gw.get("/before")
    assert log_lines(log, 1) == ["/before"]
    os.rename(log, tmp_path / "access.log.1")
    os.rename(error_log, tmp_path / "error.log.1")
    gw.get("/after-rename")  # still written to the renamed file, as with NGINX
    p = run_cli("-s", "reopen", "-c", str(gw.conf_path))
    assert p.returncode == 0, p.stderr
    wait_until(lambda: log.exists(), what="the reopened access log")
    gw.get("/after-reopen")
    gw.send_signal(signal.SIGUSR1)
    gw.get("/after-sigusr1")
    assert log_lines(log, 2) == ["/after-reopen", "/after-sigusr1"]
    assert (tmp_path / "access.log.1").read_text().splitlines() == ["/before", "/after-rename"]
    p = run_cli("-s", "quit", "-c", str(gw.conf_path))  # a graceful stop, through the pid file
    assert p.returncode == 0, p.stderr
    assert gw.proc.wait(5) == 0
    assert "stopping" in error_log.read_text()        # the error log was reopened too
    assert "listening on" in (tmp_path / "error.log.1").read_text()


def test_jwtgate_s_needs_a_pid_file(gateway, upstream, tmp_path):
    gw = gateway(open_conf("", ""))
    p = run_cli("-s", "reopen", "-c", str(gw.conf_path))
    assert p.returncode == 1 and 'has no "pid" directive' in p.stderr
    conf = tmp_path / "p.conf"
    conf.write_text(f"pid {tmp_path}/nope.pid;\n" + gw.conf_path.read_text())
    p = run_cli("-s", "reopen", "-c", str(conf))
    assert p.returncode == 1 and "nope.pid" in p.stderr and "Traceback" not in p.stderr


def test_several_processes_write_one_file_without_losing_or_mixing_lines(gateway, upstream, tmp_path):
    log = tmp_path / "shared.log"
    text = open_conf("log_format big '$http_x_n $http_x_pad end';", f"access_log {log} big;")
    gws = [gateway(text), gateway(text)]
    pad = "p" * 6000
    n = 60

    def client(k):
        gw = gws[k % 2]
        for i in range(n):
            assert gw.get("/", {"X-N": f"{k}-{i}", "X-Pad": pad}).status == 200

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for gw in gws:
        assert gw.stop() == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * n
    assert all(re.fullmatch(rf"\d-\d+ {pad} end", line) for line in lines)
    assert sorted(line.split()[0] for line in lines) == sorted(f"{k}-{i}" for k in range(4) for i in range(n))


def test_token_redaction(gateway, upstream, tmp_path):
    plain, redacted = tmp_path / "plain.log", tmp_path / "redacted.log"
    fmt = "log_format t '$request|$request_uri|$args|$arg_apijwt|$jwt_claim_sub';"
    gw = gateway(post_conf(auth='auth_jwt "Products API" token=$arg_apijwt;', http_extra=fmt,
                           location_extra=f"access_log {redacted} t;\naccess_log {plain} combined;\n"
                                          "access_log_redact_token on;"))
    assert gw.get(f"/products/w?a=1&apijwt={POST_TOKEN}&b=2").status == 200
    assert gw.get("/products/w?apijwt=").status == 401
    line = log_lines(redacted, 2)
    assert line[0] == ("GET /products/w?a=1&apijwt=REDACTED&b=2 HTTP/1.1|/products/w?a=1&apijwt=REDACTED&b=2|"
                       "a=1&apijwt=REDACTED&b=2|REDACTED|quotes")
    assert POST_TOKEN not in plain.read_text() and "apijwt=REDACTED" in log_lines(plain, 1)[0]
    # what the upstream received is untouched
    assert upstream.last.path == f"/products/w?a=1&apijwt={POST_TOKEN}&b=2"


def test_bearer_token_redaction(gateway, upstream, tmp_path):
    log = tmp_path / "auth.log"
    gw = gateway(post_conf(http_extra="log_format a '$http_authorization';",
                           location_extra=f"access_log {log} a;\naccess_log_redact_token on;"))
    gw.get("/products/w", bearer(POST_TOKEN))
    assert log_lines(log, 1) == ["Bearer REDACTED"]


def test_check_warns_about_tokens_in_logs(tmp_path):
    keys = tmp_path / "k.jwk"
    keys.write_text(json.dumps({"keys": [{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]}))
    base = post_conf(auth='auth_jwt "Products API" token=$arg_apijwt;', keys=str(keys),
                     location_extra=f"access_log {tmp_path}/a.log;{{more}}")
    base = base.replace("{upstream_port}", "9").replace("{port}", "18124")
    path = tmp_path / "w.conf"
    path.write_text(base.replace("{more}", ""))
    p = run_cli("check", "-c", str(path))
    assert p.returncode == 0
    assert ('[warn] access_log "%s/a.log" with format "combined" writes the JWT that "auth_jwt" takes from '
            'token=$arg_apijwt in location "/products/" to the log through $request; set '
            '"access_log_redact_token on"' % tmp_path) in p.stderr, p.stderr
    path.write_text(base.replace("{more}", "\naccess_log_redact_token on;"))
    assert not any("writes the JWT" in str(w) for w in compile_plan(str(path)).warnings)
    # a Bearer token logged through $http_authorization, a cookie through $http_cookie
    path.write_text("log_format h '$http_authorization';\n" + base.replace('token=$arg_apijwt', '').replace(
        "{more}", "").replace(f"access_log {tmp_path}/a.log;", f"access_log {tmp_path}/a.log h;"))
    assert [str(w).split(" in location")[0] for w in compile_plan(str(path)).warnings if "writes the JWT" in str(w)] == [
        f'access_log "{tmp_path}/a.log" with format "h" writes the JWT that "auth_jwt" takes from the '
        'Authorization header']
