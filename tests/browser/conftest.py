"""Fixtures of the real-browser tests: headless Chromium driven by Selenium.

- ``browser``: a Selenium ``webdriver.Chrome`` on Debian's ``chromium`` with the system
  ``/usr/bin/chromedriver`` (nothing is downloaded at test time), headless, one per module.
  When Chromium or its driver is missing the test fails with the command that installs them
  (``scripts/setup`` does); it is never skipped.
- ``fake_api``: a small NGINX Plus-style API on 127.0.0.1 (canned JSON of the documented
  shapes) whose answers the test switches (``ok``, ``401`` unless a token is sent, ``500``,
  ``garbage``), for the dashboard's error banner and recovery.
- The gateway fixtures of the end-to-end suite (``gateway``, ``upstream``, ``free_port``).
- ``ARTIFACTS``: ``test-artifacts/`` at the repository root, where screenshots go.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e"))

from jwtgate_e2e import REPO, gateway, upstream  # noqa: E402,F401

CHROMIUM = os.environ.get("JWTGATE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("JWTGATE_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts"
INSTALL = "apt-get install -y chromium chromium-driver (or run scripts/setup)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium under Selenium; quits at the end of the module."""
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"{what} not found at {path}: {INSTALL}", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: .venv/bin/pip install -e '.[test]'", pytrace=False)
    # Selenium Manager would look for (and download) drivers; the system ones are given instead.
    os.environ.setdefault("SE_OFFLINE", "true")
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--metrics-recording-only", "--mute-audio",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log_path = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log_path))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(15)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot():
    """``screenshot(driver, name) -> Path``: a PNG of the page in ``test-artifacts/<name>``."""
    def save(driver, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        assert driver.save_screenshot(str(path)), f"screenshot {path} failed"
        return path
    return save


# -- a controllable NGINX Plus-style API ----------------------------------------------------

HOSTILE_SUB = "<img src=x onerror=alert(1)>"

CANNED = {
    "http/requests": {"total": 1234, "current": 2},
    "http/server_zones": {"gateway": {"processing": 1, "requests": 1200, "discarded": 0,
                                      "received": 1, "sent": 1,
                                      "responses": {"1xx": 0, "2xx": 1000, "3xx": 0, "4xx": 190,
                                                    "5xx": 10, "codes": {"200": 1000}, "total": 1200}}},
    "http/limit_reqs": {"perclient": {"passed": 900, "delayed": 0, "rejected": 37,
                                      "delayed_dry_run": 0, "rejected_dry_run": 0}},
    "http/upstreams": {"api_server": {"zone": "api_server", "keepalive": 0, "zombies": 0, "peers": [
        {"id": 0, "server": "127.0.0.1:9000", "name": "127.0.0.1:9000", "backup": False, "weight": 1,
         "state": "up", "active": 0, "requests": 1000, "responses": {"5xx": 10, "total": 1000},
         "sent": 1, "received": 1, "fails": 0, "unavail": 0, "downtime": 0, "response_time": 3},
        {"id": 1, "server": "127.0.0.1:9001", "name": "127.0.0.1:9001", "backup": True, "weight": 1,
         "state": "unavail", "active": 0, "requests": 0, "responses": {"5xx": 0, "total": 0},
         "sent": 0, "received": 0, "fails": 3, "unavail": 1, "downtime": 5000}]}},
    "http/keyvals": {"revoked": {"jti-1": "1", "jti-2": "1"}},
    "jwtgate": {
        "auth": {"outcomes": {"ok": 1000, "missing": 5, "malformed": 1, "bad_signature": 42,
                              "expired": 3, "not_yet_valid": 0, "wrong_type": 0,
                              "require_failed": 0, "revoked": 2, "key_unavailable": 0}},
        "token_cache": {"hits": 900, "misses": 100},
        "key_sets": [{"source": "conf/api_secret.jwk", "keys": 1, "last_refresh": 1700000000,
                      "age": 42, "fetch_failures": 0}],
        "top_subs": [{"sub": "alice", "requests": 600}, {"sub": HOSTILE_SUB, "requests": 400}],
        "revocations": {"revoked": 2},
    },
}


#: JSON of the wrong shapes, for every endpoint: the page must neither break nor inject.
WEIRD = {
    "http/requests": {"total": "NaN", "current": None},
    "http/server_zones": {"z": None, "<b>zone</b>": {"responses": [1, 2], "requests": -1}},
    "http/limit_reqs": [],
    "http/upstreams": {"u": {"peers": [None, 5, {"state": "<b>bold</b>", "server": 7, "backup": "yes"}]},
                       "v": {"peers": "none"}},
    "http/keyvals": "nope",
    "jwtgate": {"auth": [], "token_cache": {"hits": "1", "misses": None},
                "key_sets": "x", "revocations": [1, 2],
                "top_subs": [{"sub": {"x": 1}, "requests": "9"}, 5, None, {"sub": "<script>window.__pwned=1</script>"}]},
}


class FakeApi:
    """An NGINX Plus-style API answering ``/api/9/<path>`` with :data:`CANNED`.

    ``mode``: ``"ok"``; ``"auth"`` (401 unless ``Authorization: Bearer <token>``); ``"500"``;
    ``"garbage"`` (200 with a body that is not JSON); ``"weird"`` (JSON of the wrong
    shapes, :data:`WEIRD`); ``"down"`` after :meth:`close`. ``hits`` counts requests; ``bump()``
    makes the counters grow, as live ones would.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.token = "let-me-in"
        self.hits = 0
        self.authorized = 0
        self.data = json.loads(json.dumps(CANNED))
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if api.mode == "down":  # a kept-alive connection after close(): hang up
                    self.close_connection = True
                    return
                api.hits += 1
                path = self.path.split("?", 1)[0]
                prefix = "/api/9/"
                status, body = 404, b'{"error":{"status":404,"text":"path not found","code":"PathNotFound"}}'
                if api.mode == "auth" and self.headers.get("Authorization") != f"Bearer {api.token}":
                    status, body = 401, b"<html>401</html>"
                elif api.mode == "500":
                    status, body = 500, b"<html>500</html>"
                elif api.mode == "garbage":
                    status, body = 200, b"<html>not json"
                elif api.mode == "weird" and path[len(prefix):] in WEIRD:
                    status, body = 200, json.dumps(WEIRD[path[len(prefix):]]).encode()
                elif path.startswith(prefix) and path[len(prefix):] in api.data:
                    if api.mode == "auth":
                        api.authorized += 1
                    status, body = 200, json.dumps(api.data[path[len(prefix):]]).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bump(self) -> None:
        d = self.data
        d["http/requests"]["total"] += 50
        d["jwtgate"]["auth"]["outcomes"]["ok"] += 40
        d["jwtgate"]["auth"]["outcomes"]["bad_signature"] += 5

    def close(self) -> None:
        """Stop listening; connections the gateway keeps alive are hung up on their next request."""
        self.mode = "down"
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    api = FakeApi()
    try:
        yield api
    finally:
        api.close()
