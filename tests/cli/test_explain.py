"""``jwtgate explain``: the gateway's decision for one request, as a dry run.

The strongest check is the first one: what explain says goes upstream is what a running
gateway with the same configuration sends, byte for byte in name, value and order.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
from clitools import fails, jwtgate, ok

from click.testing import CliRunner

from jwtgate.cli.main import cli
from jwtgate_e2e import EXAMPLES, POST_JWKS, POST_TOKEN, mint_hs, request, tamper_signature

RICH_CONF = """
limit_req_zone $remote_addr zone=perip:1m rate=100r/s;
limit_req_zone $jwt_claim_sub zone=persub:1m rate=30r/m;
map $jwt_claim_sub $tier { quotes gold; default basic; }
upstream api_server { server 127.0.0.1:{upstream_port}; }
server {
    listen 127.0.0.1:{port};
    location /products/ {
        auth_jwt "Products API";
        auth_jwt_key_file {keys};
        auth_jwt_require $jwt_claim_iss;
        limit_req zone=perip burst=5;
        limit_req zone=persub;
        proxy_pass http://api_server/v1/;
        proxy_set_header API-Client $jwt_claim_sub;
        proxy_set_header X-Tier $tier;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
    location = /health { return 200 "ok"; }
}
"""


def write_conf(tmp_path, text: str = RICH_CONF, port: int = 18099, upstream_port: int = 9) -> str:
    keys = tmp_path / "api_secret.jwk"
    keys.write_text(json.dumps(POST_JWKS))
    path = tmp_path / "gw.conf"
    path.write_text(text.replace("{keys}", str(keys))
                    .replace("{port}", str(port)).replace("{upstream_port}", str(upstream_port)))
    return str(path)


@pytest.fixture
def conf(tmp_path) -> str:
    return write_conf(tmp_path)


def explain_json(*args: str, code: int = 0, **kw) -> dict:
    p = jwtgate("explain", "--json", *args, **kw)
    assert p.returncode == code, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    return json.loads(p.stdout)


def test_help_has_an_example():
    result = CliRunner().invoke(cli, ["explain", "--help"], prog_name="jwtgate")
    assert result.exit_code == 0
    assert "jwtgate explain -c" in result.output.split("Example", 1)[1] and "Exit codes: 0" in result.output
    assert "Usage: jwtgate explain [OPTIONS] METHOD URL" in ok("explain", "--help")


def test_predicts_exactly_what_the_gateway_sends_upstream(gateway, upstream):
    gw = gateway(RICH_CONF)
    headers = [("Authorization", f"Bearer {POST_TOKEN}"), ("X-Custom", "1"), ("API_Client", "evil"),
               ("Accept", "*/*"), ("X-Forwarded-For", "10.9.8.7")]
    assert request(gw.port, "GET", "/products/widget1?x=1", headers).status == 200
    sent = upstream.last
    data = explain_json("-c", gw.conf_path, *[a for n, v in headers for a in ("-H", f"{n}: {v}")],
                        "GET", f"http://127.0.0.1:{gw.port}/products/widget1?x=1")
    head = base64.b64decode(data["upstream_head_base64"]).decode()
    assert head.endswith("\r\n\r\n")
    request_line, *lines = head[:-4].split("\r\n")
    assert request_line == f"{sent.method} {sent.path} HTTP/1.1" == "GET /v1/widget1?x=1 HTTP/1.1"
    assert [tuple(line.split(": ", 1)) for line in lines] == sent.headers
    assert ("API-Client", "quotes") in sent.headers and ("X-Tier", "gold") in sent.headers
    assert ("X-Forwarded-For", "10.9.8.7, 127.0.0.1") in sent.headers
    assert not any(n == "API_Client" for n, _ in sent.headers)  # dropped, as the gateway drops it


def test_the_posts_request_in_words():
    out = ok("explain", "-c", EXAMPLES / "logging_rate_limit.conf", "--token", "-", "GET",
             "http://127.0.0.1:8082/products/widget1", input=POST_TOKEN + "\n")
    lines = out.splitlines()
    assert "request    GET /products/widget1 (Host: 127.0.0.1:8082) from 127.0.0.1 to 127.0.0.1:8082" in lines
    assert f"location   location prefix /products/ at {EXAMPLES}/logging_rate_limit.conf:22" in lines
    assert f'  verdict  verified by key #0 (kid "0001", oct) in {EXAMPLES}/conf/api_secret.jwk' in lines
    assert "  variable $jwt_claim_sub = quotes" in lines
    assert "  variable $jwt_header_alg = HS256" in lines
    assert ('limit_req  zone "10rps_per_client" key "quotes" ($jwt_claim_sub), 10r/s, burst 0, '
            "after auth_jwt; not counted by explain") in lines
    assert "decision   proxied to upstream api_server (127.0.0.1:9000)" in lines
    assert lines[-5:] == ["upstream request head:", "  GET /products/widget1 HTTP/1.1", "  Host: api_server",
                          "  API-Client: quotes",
                          f"  Authorization: Bearer {POST_TOKEN[:8]}...({len(POST_TOKEN)} characters, redacted)"]
    assert POST_TOKEN.split(".")[2] not in out  # the report gets pasted into tickets


def test_tokens_in_the_upstream_head_are_cut_short_in_text_and_exact_in_json(tmp_path):
    # A token forwarded in another header too (a $http_ variable, a claim holding a token):
    # every compact JWS is cut short in the text; the JSON report keeps the exact bytes.
    text = RICH_CONF.replace("proxy_set_header X-Tier $tier;",
                             "proxy_set_header X-Tier $tier; proxy_set_header X-Original $http_x_original;")
    path = write_conf(tmp_path, text)
    out = ok("explain", "-c", path, "--token", POST_TOKEN, "-H", f"X-Original: tok={POST_TOKEN};x",
             "-H", "X-Host: products.example.com", "GET", "/products/a")
    assert POST_TOKEN.split(".")[2] not in out
    assert f"  X-Original: tok={POST_TOKEN[:8]}...({len(POST_TOKEN)} characters, redacted);x" in out.splitlines()
    assert "  X-Host: products.example.com" in out.splitlines()  # dotted names are not tokens
    data = explain_json("-c", path, "--token", POST_TOKEN, "GET", "/products/a")
    assert f"Authorization: Bearer {POST_TOKEN}\r\n" in data["upstream_head"]


def test_json_report(conf):
    data = explain_json("-c", conf, "--token", POST_TOKEN, "--remote-addr", "10.1.2.3", "GET", "/products/a")
    assert data["status"] is None and data["decided_by"] == "proxy_pass" and data["refused"] is False
    assert data["request"]["host"] == "127.0.0.1:18099"
    auth = data["auth_jwt"]
    assert auth["verified_by"].startswith('key #0 (kid "0001", oct) in ') and auth["error"] is None
    assert auth["header"] == {"typ": "JWT", "alg": "HS256", "kid": "0001"}
    assert auth["requires"] == [{"source": "$jwt_claim_iss", "value": "My API Gateway", "ok": True,
                                 "code": 401, "decided": False}]
    assert data["variables"]["$jwt_claim_sub"] == "quotes"
    assert "$jwt_payload" in data["variables"]  # through the plan's own getter, whatever it renders
    assert [(lim["zone"], lim["key"], lim["rate"], lim["burst"], lim["after_auth"]) for lim in data["limit_req"]] == [
        ("perip", "10.1.2.3", "100r/s", 5, False), ("persub", "quotes", "30r/m", 0, True)]
    assert [s["handler"] for s in data["steps"]] == ["client_max_body_size", "limit_req", "auth_jwt", "limit_req"]
    assert data["upstream"] == {"group": "api_server", "peers": ["127.0.0.1:9"]}
    assert "X-Forwarded-For: 10.1.2.3\r\n" in data["upstream_head"]


def test_refusals_say_why_and_exit_1(conf):
    data = explain_json("-c", conf, "GET", "/products/a", code=1)
    assert data["refused"] is True and data["status"] == 401 and data["upstream_head"] is None
    assert data["decision"] == "401: no token (Authorization: Bearer)"
    assert data["response_headers"] == [["WWW-Authenticate", 'Bearer realm="Products API"']]
    p = jwtgate("explain", "-c", conf, "--token", tamper_signature(POST_TOKEN), "GET", "/products/a")
    assert p.returncode == 1
    assert "  verdict  rejected: bad_signature: signature does not verify with any candidate key\n" in p.stdout
    assert ("decision   401: token rejected (bad_signature: signature does not verify with any candidate key)\n"
            '           WWW-Authenticate: Bearer realm="Products API", error="invalid_token"\n') in p.stdout


def test_no_key_lists_no_candidate(conf):
    out = jwtgate("explain", "-c", conf, "--token", mint_hs({"sub": "q"}, kid="nope"), "GET", "/products/a").stdout
    assert "  keys     no key fits this alg and kid" in out and 'kid "nope"' in out


def test_query_token_example():
    out = ok("explain", "-c", EXAMPLES / "query_token.conf", "GET", f"/products/a?apijwt={POST_TOKEN}")
    assert "token from $arg_apijwt" in out and "verified by key #0" in out


def test_revocation_example_shows_the_failing_require():
    p = jwtgate("explain", "-c", EXAMPLES / "revocation.conf", "--token", POST_TOKEN, "GET", "/products/a")
    assert p.returncode == 1
    assert '  require  $jwt_status = "0": FAILS (error=401)' in p.stdout
    assert 'decision   401: auth_jwt_require $jwt_status is "0"' in p.stdout


def test_what_the_gateway_answers_itself(conf):
    p = jwtgate("explain", "-c", conf, "GET", "/products/../../etc")
    assert p.returncode == 1 and "decision   the HTTP layer answers 400: URI climbs above the root\n" in p.stdout
    assert explain_json("-c", conf, "GET", "/health")["decided_by"] == "return"  # configured: exit 0


def test_bad_input_is_one_line(conf):
    assert fails("explain", "-c", conf, "GET", "ftp://host/") == \
        "URL must be http://HOST[:PORT]/PATH or /PATH, not 'ftp://host/'"
    assert fails("explain", "-c", conf, "-H", "no colon", "GET", "/") == 'invalid header "no colon": use -H "Name: value"'
    assert fails("explain", "-c", conf, "--token", "t", "-H", "Authorization: Basic x", "GET", "/") == \
        "give --token or an Authorization header, not both"


def test_configuration_errors_are_reported_like_check(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("server { listen 127.0.0.1:1; foo; }\n")
    p = jwtgate("explain", "-c", bad, "GET", "/")
    assert p.returncode == 1 and f'[emerg] unknown directive "foo" in {bad}:1' in p.stderr
    assert "Traceback" not in p.stderr
    assert jwtgate("explain", "-c", bad, "GET").returncode == 2  # click usage: URL missing


def test_never_opens_a_socket(conf):
    """An audit hook kills the process if any socket is created."""
    hook = (
        "import os, sys\n"
        "def hook(event, args):\n"
        "    if event in ('socket.__new__', 'socket.connect', 'socket.bind', 'socket.sendto'):\n"
        "        os.write(2, ('SOCKET ' + event + '\\n').encode()); os._exit(97)\n"
        "sys.addaudithook(hook)\n"
    )
    control = subprocess.run([sys.executable, "-c", hook + "import socket; socket.socket()"], timeout=30)
    assert control.returncode == 97  # the hook does catch a socket
    run = (f"from jwtgate.cli.main import main\n"
           f"sys.argv = ['jwtgate', 'explain', '-c', {conf!r}, '--token', {POST_TOKEN!r}, 'GET', '/products/a']\n"
           "main()\n")
    p = subprocess.run([sys.executable, "-c", hook + run], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "proxied to upstream api_server" in p.stdout
