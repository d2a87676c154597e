"""The shipped examples (examples/reference/*.conf) run against examples/sample_api.py.

Each configuration is copied with its conf/ and logs/ neighbours; only its listen port and the
sample API's port are rewritten (the files use 8080-8083 and 9000), so the rest runs as shipped,
relative paths included. The gateway runs from another working directory to show that relative
paths resolve against the configuration file."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from jwtgate_e2e import (
    EXAMPLES, POST_JWKS, POST_TOKEN, PYTHON, SAMPLE_API, bearer, curl, free_port, mint_hs, port_open,
    request, wait_until,
)


@pytest.fixture
def sample_api(tmp_path):
    port = free_port()
    log = open(tmp_path / "sample_api.stderr", "wb")
    proc = subprocess.Popen([PYTHON, str(SAMPLE_API), "--port", str(port)], stdout=log, stderr=log,
                            start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or port_open(port), timeout=15, what="sample_api")
        assert proc.poll() is None, (tmp_path / "sample_api.stderr").read_text()
        yield port
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(5)
        log.close()


@pytest.fixture
def example(tmp_path, gateway, sample_api):
    """``example("gateway.conf") -> (Gateway, directory)``."""
    root = tmp_path / "reference"
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("*.log"))
    (root / "logs").mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def start(name: str):
        path = root / name
        text = path.read_text()
        port = free_port()
        text, n_listen = re.subn(r"listen 127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{port};", text)
        text, n_up = re.subn(r"server 127\.0\.0\.1:9000;", f"server 127.0.0.1:{sample_api};", text)
        assert (n_listen, n_up) == (1, 1), f"{name}: unexpected layout"
        path.write_text(text)
        return gateway.run_file(path, port, cwd=elsewhere), root
    return start


def test_example_files_hold_the_posts_key_and_token():
    assert (EXAMPLES / "quotes.jwt").read_text().strip() == POST_TOKEN
    assert json.loads((EXAMPLES / "conf" / "api_secret.jwk").read_text()) == POST_JWKS


def test_gateway_conf(example):
    gw, root = example("gateway.conf")
    token = (root / "quotes.jwt").read_text().strip()
    r = curl(f"{gw.url}/products/widget1", "-H", f"Authorization: Bearer {token}")
    assert r.status == 200, r.body
    answer = json.loads(r.body)
    assert answer["api_client"] == "quotes"
    assert answer["product"]["id"] == "widget1"
    assert answer["path"] == "/products/widget1"
    r = curl(f"{gw.url}/products/widget1")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Bearer realm="Products API"'
    # POST through the gateway to the sample API's echo
    r = curl(f"{gw.url}/products/", "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
             "--data-binary", '{"id": "widget9"}')
    assert r.status == 201
    assert json.loads(r.body)["received"] == '{"id": "widget9"}'
    assert gw.get("/products/nope", bearer(token)).status == 404


def test_query_token_conf(example):
    gw, root = example("query_token.conf")
    token = (root / "quotes.jwt").read_text().strip()
    r = curl(f"{gw.url}/products/widget1?apijwt={token}")
    assert r.status == 200, r.body
    assert json.loads(r.body)["path"] == f"/products/widget1?apijwt={token}"
    assert curl(f"{gw.url}/products/widget1", "-H", f"Authorization: Bearer {token}").status == 401


def test_logging_rate_limit_conf(example):
    gw, root = example("logging_rate_limit.conf")
    token = (root / "quotes.jwt").read_text().strip()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        codes = [request(gw.port, "GET", "/products/widget1", bearer(token), conn=conn).status for _ in range(20)]
    finally:
        conn.close()
    assert codes[0] == 200 and codes.count(503) >= 10, codes
    other = mint_hs({"sub": "other"})
    r = gw.get("/products/widget1", bearer(other))
    assert r.status == 200 and r.json()["api_client"] == "other"
    log = root / "logs" / "access_jwt.log"
    lines = wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 21 and log.read_text().splitlines(),
                       what="21 access log lines")
    assert len(lines) == 21
    assert all(line.endswith("HS256 quotes") for line in lines[:20]), lines[:3]
    assert lines[-1].endswith("HS256 other")
    assert [int(line.split('"')[2].split()[0]) for line in lines[:20]] == codes


def test_revocation_conf(example):
    gw, root = example("revocation.conf")
    token = (root / "quotes.jwt").read_text().strip()
    r = curl(f"{gw.url}/products/widget1", "-H", f"Authorization: Bearer {token}")
    assert r.status == 401
    assert gw.get("/products/widget1", bearer(mint_hs({"sub": "test"}))).status == 401
    r = gw.get("/products/widget2", bearer(mint_hs({"sub": "partner"})))
    assert r.status == 200
    assert r.json()["product"]["id"] == "widget2"
