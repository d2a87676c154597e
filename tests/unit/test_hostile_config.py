"""Hostile configurations through the real CLI: ``python -m jwtgate check -c FILE``.

Whatever the input (broken syntax, binary garbage, include loops, huge files, bad values),
``check`` must print exactly one located ``[emerg]`` line and exit 1, never a traceback.
Tests named ``test_defect_*`` document defects found by the adversarial review; they fail
until the defect is fixed. Self-contained: no fixtures from elsewhere.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

KEY = '{"keys": [{"k":"ZmFudGFzdGljand0","kty":"oct","kid":"0001"}]}'

#: A valid base: ``%(loc)s`` goes inside ``location /products/``, ``%(srv)s`` into the server.
BASE = """upstream api_server { server 127.0.0.1:9; }
server {
    listen 127.0.0.1:18080;
    %(srv)s
    location /products/ {
        auth_jwt "x";
        auth_jwt_key_file api_secret.jwk;
        proxy_pass http://api_server;
        %(loc)s
    }
}
"""


def base(loc: str = "", srv: str = "") -> str:
    return BASE % {"loc": loc, "srv": srv}


def check(tmp_path: Path, data: bytes | str, name: str = "t.conf") -> tuple[int, list[str]]:
    (tmp_path / "api_secret.jwk").write_text(KEY)
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    p = subprocess.run([sys.executable, "-m", "jwtgate", "check", "-c", str(path)],
                       capture_output=True, timeout=60, cwd=str(tmp_path))
    text = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    return p.returncode, text.splitlines()


def assert_one_located_emerg(rc: int, lines: list[str], located: bool = True) -> str:
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    assert rc == 1, "\n".join(lines)
    emerg = [line for line in lines if "[emerg]" in line]
    assert len(emerg) == 1, "\n".join(lines)
    pattern = r"\[emerg\] .+ in \S+:\d+$" if located else r"\[emerg\] .+"
    assert re.search(pattern, emerg[0]), emerg[0]
    return emerg[0]


SYNTAX = {
    "unterminated double quote": 'server { listen 127.0.0.1:1; server_name "abc; }\n',
    "unterminated single quote": "server { server_name 'abc; }\n",
    "quote left open mid file": 'server {\n server_name "abc;\n' + "x " * 3000 + '\n}\n',
    "unbalanced open brace": "server { location / {\n",
    "unbalanced close brace": "server { }\n}\n",
    "lone semicolon": ";\n",
    "lone brace": "{\n",
    "backslash at eof": "server \\",
    "directive without semicolon at eof": "server { listen 127.0.0.1:1",
    "invalid utf-8": b"server { listen 127.0.0.1:1; }\n\xff\xfe\n",
    "utf-8 surrogate": b"server_name \xed\xa0\x80;\n",
    "NUL byte": "server { listen 127.0.0.1:1\x00; }\n",
    "too long word": "server_name " + "a" * 5000 + ";\n",
    "too long comment": "#" + "x" * 5000 + "\nserver { listen 127.0.0.1:18081; }\n",
    "deep nesting": "http {" * 200 + "}" * 200,
    "unknown directive": "foo bar;\n",
    "block for a simple directive": "server { listen 127.0.0.1:18081 { } }\n",
    "missing block": "server;\n",
    "directive in wrong context": "proxy_pass http://x;\n",
    "regex error": base(srv="location ~ ( { return 200; }"),
    "bad listen port": base().replace("127.0.0.1:18080", "127.0.0.1:99999"),
    "bad timeout": base(loc="proxy_read_timeout 99999999999999999999999d;"),
    "bad size": base(loc="client_max_body_size 999999999999999999999999999999g;"),
    "unknown variable": base(loc="proxy_set_header X $nosuchvar;"),
    "unterminated variable": base(loc="proxy_set_header X ${jwt_claim_sub;"),
    "bad header name": base(loc='proxy_set_header "X A" 1;'),
    "key file missing": base().replace("api_secret.jwk", "nope.jwk"),
    "key file is a directory": base().replace("api_secret.jwk", "/tmp"),
    "key file is /dev/zero": base().replace("api_secret.jwk", "/dev/zero"),
    "auth_jwt without key": "server { listen 127.0.0.1:18081; location / { auth_jwt x; proxy_pass http://127.0.0.1:9; } }\n",
    "include loop": "include loop_a.conf;\n",
    "include missing": "include /nonexistent/x.conf;\n",
    "include a directory": "include /tmp;\n",
}


@pytest.mark.parametrize("name", list(SYNTAX))
def test_malformed_config_is_one_located_emerg(tmp_path: Path, name: str) -> None:
    (tmp_path / "loop_a.conf").write_text("include loop_b.conf;\n")
    (tmp_path / "loop_b.conf").write_text("include loop_a.conf;\n")
    rc, lines = check(tmp_path, SYNTAX[name])
    assert_one_located_emerg(rc, lines)


def test_binary_garbage_config(tmp_path: Path) -> None:
    for seed in range(20):
        data = bytes((i * 7919 + seed * 104729) % 256 for i in range(3000))
        rc, lines = check(tmp_path, data)
        assert_one_located_emerg(rc, lines)


def test_binary_key_file(tmp_path: Path) -> None:
    (tmp_path / "garbage.jwk").write_bytes(os.urandom(500) + b"\xff")
    (tmp_path / "deep.jwk").write_text("[" * 100000 + "]" * 100000)
    for key in ("garbage.jwk", "deep.jwk"):
        rc, lines = check(tmp_path, base().replace("api_secret.jwk", key))
        assert_one_located_emerg(rc, lines)


def test_huge_config_is_refused(tmp_path: Path) -> None:
    rc, lines = check(tmp_path, b"# pad\n" * (3 * 1024 * 1024))
    assert_one_located_emerg(rc, lines, located=False)


def test_valid_base_passes(tmp_path: Path) -> None:
    rc, lines = check(tmp_path, base())
    assert rc == 0, "\n".join(lines)


def test_defect_duplicate_exact_location_is_an_error(tmp_path: Path) -> None:
    """DEFECT: two ``location = /e`` blocks are accepted and the LAST one silently serves
    (runtime/router.py:41 overwrites the dict entry), so a later unauthenticated copy disables
    auth_jwt of the first: a request to /e reached the upstream without a token. NGINX:
    ``[emerg] duplicate location "/e"``."""
    conf = base(srv='location = /e { auth_jwt x; auth_jwt_key_file api_secret.jwk; proxy_pass http://api_server; }\n'
                    '    location = /e { proxy_pass http://api_server; }')
    rc, lines = check(tmp_path, conf)
    line = assert_one_located_emerg(rc, lines)
    assert 'duplicate location "/e"' in line


def test_defect_duplicate_prefix_location_is_an_error(tmp_path: Path) -> None:
    """DEFECT: two ``location /products/`` blocks are accepted (the first serves, the second is
    dead configuration nobody is told about). NGINX: ``[emerg] duplicate location``."""
    conf = base(srv="location /products/ { proxy_pass http://api_server; }")
    rc, lines = check(tmp_path, conf)
    line = assert_one_located_emerg(rc, lines)
    assert 'duplicate location "/products/"' in line


def test_defect_duplicate_proxy_pass_is_an_error(tmp_path: Path) -> None:
    """DEFECT (low): two ``proxy_pass`` in one location are accepted and the last wins
    (modules/proxy.py ``own[-1]``; the duplicate check in conf/compiler.py only covers
    Inherit.VALUE directives). NGINX: ``[emerg] "proxy_pass" directive is duplicate``."""
    conf = base(loc="proxy_pass http://127.0.0.1:10;")
    rc, lines = check(tmp_path, conf)
    line = assert_one_located_emerg(rc, lines)
    assert '"proxy_pass" directive is duplicate' in line
