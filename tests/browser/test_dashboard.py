"""The live dashboard in a real browser: headless Chromium (Selenium) against a real gateway.

``test_dashboard_live``: the gateway serves ``api``, ``dashboard`` and a protected API while
a background client sends light load (good tokens for two subs and a hostile one, bad
signatures, expired tokens, no token; bounded in time and count). The page must show the
numbers, change them between polls, list the subs as top talkers (the hostile one as text),
show the failure reasons, and a screenshot goes to ``test-artifacts/dashboard.png``.

The others run the page against a small NGINX Plus-style API behind the gateway whose
answers the test controls: the error banner on 401 (and the token form that recovers from
it), 500, garbage and an unreachable API, and the rendering of every panel.
"""

from __future__ import annotations

import http.client
import threading
import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from jwtgate_e2e import free_port, mint_hs, now, request, tamper_signature

HOSTILE_SUB = "<img src=x onerror=alert(1)>"
WAIT = 12.0  # seconds for anything the page shows (it polls once a second)


def wait_for(driver, predicate, what: str, timeout: float = WAIT):
    """Wait until ``predicate(driver)`` is truthy; fail with ``what`` and the page state."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d))
    except Exception as e:  # TimeoutException, with the page state for the failure message
        banner = driver.execute_script("var b=document.getElementById('banner');"
                                       "return b ? (b.hidden ? '(hidden)' : b.textContent) : '(none)';")
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; banner: {banner!r}; "
                             f"browser log: {_console(driver)}") from e


def _console(driver) -> list[str]:
    try:
        return [entry.get("message", "") for entry in driver.get_log("browser")][-10:]
    except Exception:
        return []


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def polls(driver) -> int:
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-polls") or 0)


def banner(driver) -> str | None:
    """The banner's text when it is shown, else ``None``."""
    el = driver.find_element(By.ID, "banner")
    return el.text if el.is_displayed() else None


def table_rows(driver, table_id: str) -> list[list[str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
        ".map(function (tr) { return Array.from(tr.cells).map(function (c) { return c.textContent; }); });",
        table_id)


def outcome(driver, reason: str) -> int:
    """The total of one auth outcome row (``data-reason``), as an int."""
    value = driver.execute_script(
        "var c = document.querySelector('#auth-outcomes td[data-reason=\"' + arguments[0] + '\"]');"
        "return c ? c.parentNode.cells[2].textContent : null;", reason)
    assert value is not None, f"no auth outcome row {reason}"
    return int(value.replace(",", ""))


def no_injected_elements(driver) -> None:
    """The hostile ``sub`` created no element and ran nothing."""
    assert driver.execute_script("return document.querySelectorAll('img, script:not([src])').length") == 0
    assert driver.execute_script("return window.__pwned === undefined")


# -- against a controlled API ------------------------------------------------------------

FAKE_CONF = """
events {}
http {
    server {
        listen 127.0.0.1:{port};
        location /api/ { proxy_pass http://127.0.0.1:{api_port}; }
        location /dashboard/ { dashboard; }
        location /unreachable/ { dashboard http://127.0.0.1:{dead_port}/api/; }
    }
}
"""


def test_dashboard_renders_every_panel_and_escapes(browser, gateway, fake_api):
    gw = gateway(FAKE_CONF, api_port=fake_api.port, dead_port=free_port())
    browser.get(gw.url + "/dashboard/")
    assert browser.title == "jwtgate dashboard"
    wait_for(browser, lambda d: polls(d) >= 1, "a first successful poll")
    assert banner(browser) is None
    assert text(browser, "conn") == "live"
    assert text(browser, "api-base") == "/api/9/"
    assert text(browser, "req-total") == "1,234"
    assert text(browser, "req-current") == "2"
    assert text(browser, "cache-ratio") == "90.0 %"
    assert text(browser, "cache-hits") == "900" and text(browser, "cache-misses") == "100"
    assert text(browser, "limit-rejected") == "37"
    assert text(browser, "revoked-total") == "2"
    assert outcome(browser, "bad_signature") == 42 and outcome(browser, "revoked") == 2
    zones = table_rows(browser, "server-zones")
    assert zones[0][0] == "gateway" and zones[0][2] == "1,200" and zones[0][7] == "190"
    peers = table_rows(browser, "upstreams")
    assert [p[1] for p in peers] == ["127.0.0.1:9000", "127.0.0.1:9001 (backup)"]
    assert [p[2] for p in peers] == ["up", "unavail"]
    states = browser.find_elements(By.CSS_SELECTOR, "#upstreams td.state-unavail")
    assert len(states) == 1
    keys = table_rows(browser, "key-sets")
    assert keys[0][0] == "conf/api_secret.jwk" and keys[0][1] == "1" and keys[0][3] == "42 s"
    assert table_rows(browser, "limit-reqs")[0][:4] == ["perclient", "900", "0", "37"]
    revs = table_rows(browser, "revocations")
    assert revs == [["revoked", "2", "jti-1, jti-2"]]
    subs = table_rows(browser, "top-subs")
    assert [s[0] for s in subs] == ["alice", HOSTILE_SUB]
    no_injected_elements(browser)

    # the counters grow: rates appear and the totals change between two polls
    seen = polls(browser)
    fake_api.bump()
    wait_for(browser, lambda d: text(d, "req-total") == "1,284", "the new total")
    assert polls(browser) > seen
    wait_for(browser, lambda d: outcome(d, "bad_signature") == 47, "the new bad_signature count")


def test_dashboard_banner_on_401_500_garbage_and_recovers(browser, gateway, fake_api):
    gw = gateway(FAKE_CONF, api_port=fake_api.port, dead_port=free_port())
    fake_api.mode = "auth"
    browser.get(gw.url + "/dashboard/")
    wait_for(browser, lambda d: banner(d) and "401" in banner(d), "the 401 banner")
    assert text(browser, "conn") == "HTTP 401"
    form = browser.find_element(By.ID, "token-form")
    assert form.is_displayed()
    assert polls(browser) == 0

    # a token typed into the form is sent from then on, and the page recovers
    browser.find_element(By.ID, "token-input").send_keys(fake_api.token)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_for(browser, lambda d: polls(d) >= 1 and banner(d) is None, "recovery with the token")
    assert fake_api.authorized > 0
    assert text(browser, "req-total") == "1,234"

    fake_api.mode = "500"
    wait_for(browser, lambda d: banner(d) and "HTTP 500" in banner(d), "the 500 banner")
    assert text(browser, "req-total") == "1,234"  # the last good numbers stay

    fake_api.mode = "garbage"
    wait_for(browser, lambda d: banner(d) and "not JSON" in banner(d), "the garbage banner")

    fake_api.mode = "weird"  # JSON of the wrong shapes: shown as zeros and text, no banner
    seen = polls(browser)
    wait_for(browser, lambda d: polls(d) >= seen + 2 and banner(d) is None, "polls of odd JSON")
    assert text(browser, "req-total") == "0"
    assert "<b>bold</b>" in [row[2] for row in table_rows(browser, "upstreams")]
    assert "<script>window.__pwned=1</script>" in [row[0] for row in table_rows(browser, "top-subs")]
    no_injected_elements(browser)
    assert browser.execute_script("return document.querySelectorAll('b').length") == 0

    fake_api.mode = "ok"
    wait_for(browser, lambda d: banner(d) is None and text(d, "req-total") == "1,234", "recovery")

    fake_api.close()  # the gateway now answers 502 for the API
    wait_for(browser, lambda d: banner(d) and "HTTP 502" in banner(d), "the 502 banner")
    assert text(browser, "conn") == "HTTP 502"


def test_dashboard_unreachable_api(browser, gateway, fake_api):
    gw = gateway(FAKE_CONF, api_port=fake_api.port, dead_port=free_port())
    browser.get(gw.url + "/unreachable/")
    wait_for(browser, lambda d: banner(d) and "unreachable" in banner(d), "the unreachable banner")
    assert text(browser, "conn") == "offline"
    assert polls(browser) == 0


# -- live: the real API of a gateway under load ------------------------------------------

LIVE_CONF = """
worker_processes {workers};
events {}
http {
    keyval_zone zone=revoked:1m;
    keyval $jwt_claim_jti $jwt_revoked zone=revoked;
    map $jwt_revoked $valid_jti { "" 1; default 0; }
    limit_req_zone $jwt_claim_sub zone=perclient:1m rate=5r/s;
    upstream api_server { server 127.0.0.1:{upstream_port}; }

    server {
        listen 127.0.0.1:{port};
        status_zone gateway;

        location /products/ {
            auth_jwt "Products API";
            auth_jwt_key_file {keys};
            auth_jwt_require $valid_jti;
            limit_req zone=perclient burst=10 nodelay;
            proxy_pass http://api_server;
        }
        location /api/ { api write=on; }
        location /dashboard/ { dashboard; }
    }
}
"""


class Load(threading.Thread):
    """Light background load, bounded in count and time: cycles through ``plan`` (a list of
    ``Authorization`` values, ``None`` for no header) on keep-alive connections, a new one
    every ``per_connection`` requests (so that several workers serve)."""

    def __init__(self, port: int, plan: list[str | None], max_requests: int = 3000,
                 max_seconds: float = 40.0, pause: float = 0.005, per_connection: int = 16) -> None:
        super().__init__(daemon=True)
        self.port, self.plan = port, plan
        self.max_requests, self.max_seconds, self.pause = max_requests, max_seconds, pause
        self.per_connection = per_connection
        self.stop_event = threading.Event()
        self.statuses: dict[int, int] = {}
        self.sent = 0
        self.errors = 0

    def run(self) -> None:
        end = time.monotonic() + self.max_seconds
        conn = None
        while not self.stop_event.is_set() and self.sent < self.max_requests and time.monotonic() < end:
            auth = self.plan[self.sent % len(self.plan)]
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/products/widget", headers={"Authorization": auth} if auth else {})
                r = conn.getresponse()
                r.read()
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                if r.getheader("Connection", "").lower() == "close" or self.sent % self.per_connection == 0:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            self.sent += 1
            self.stop_event.wait(self.pause)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


@pytest.mark.parametrize("workers", [1, 2])
def test_dashboard_live(browser, gateway, screenshot, workers):
    """With two workers the API sums them (and a revocation reaches both): the page is the same."""
    exp = now() + 3600
    good = {sub: mint_hs({"sub": sub, "exp": exp, "jti": f"jti-{sub}"}) for sub in ("alice", "bob")}
    hostile = mint_hs({"sub": HOSTILE_SUB, "exp": exp, "jti": "jti-hostile"})
    revoked = mint_hs({"sub": "mallory", "exp": exp, "jti": "jti-revoked"})
    expired = mint_hs({"sub": "alice", "exp": now() - 600, "jti": "jti-old"})
    plan = [f"Bearer {t}" for t in (good["alice"], good["alice"], good["bob"], hostile,
                                    tamper_signature(good["bob"]), expired, revoked)] + [None]
    gw = gateway(LIVE_CONF, workers=workers)
    r = request(gw.port, "POST", "/api/9/http/keyvals/revoked", body=b'{"jti-revoked": "1"}',
                headers={"Content-Type": "application/json"})
    assert r.status == 201, r.body

    load = Load(gw.port, plan)
    load.start()
    try:
        browser.get(gw.url + "/dashboard/")
        wait_for(browser, lambda d: polls(d) >= 2, "two successful polls")
        assert banner(browser) is None and text(browser, "conn") == "live"

        # the numbers appear ...
        wait_for(browser, lambda d: outcome(d, "ok") > 0 and outcome(d, "bad_signature") > 0,
                 "ok and bad-signature outcomes")
        total = int(text(browser, "req-total").replace(",", ""))
        assert total > 0
        # ... and change between polls
        ok_before, seen = outcome(browser, "ok"), polls(browser)
        wait_for(browser, lambda d: polls(d) >= seen + 2, "two more polls")
        assert outcome(browser, "ok") > ok_before
        assert int(text(browser, "req-total").replace(",", "")) > total
        wait_for(browser, lambda d: text(d, "req-rate") not in ("\u2013", "0.0"), "a request rate")
        wait_for(browser, lambda d: text(d, "auth-fail-rate") not in ("\u2013", "0.0"), "an auth failure rate")

        # auth failures by reason
        wait_for(browser, lambda d: outcome(d, "expired") > 0 and outcome(d, "missing") > 0
                 and outcome(d, "revoked") > 0, "expired, missing and revoked outcomes")
        failures = browser.find_elements(By.CSS_SELECTOR, "#auth-outcomes td.nonzero")
        assert failures, "no failure reason is highlighted"

        # top talkers by sub, the hostile one as text
        def subs(d):
            return [row[0] for row in table_rows(d, "top-subs")]
        wait_for(browser, lambda d: {"alice", "bob", HOSTILE_SUB} <= set(subs(d)), "the three subs in top talkers")
        top = subs(browser)
        assert top.index("alice") < top.index("bob"), top  # alice sends twice as much
        cells = browser.find_elements(By.CSS_SELECTOR, "#top-subs td.sub")
        assert HOSTILE_SUB in [c.get_attribute("textContent") for c in cells]
        no_injected_elements(browser)

        # the other panels
        wait_for(browser, lambda d: any(r[0] == "gateway" for r in table_rows(d, "server-zones")), "the server zone")
        peers = table_rows(browser, "upstreams")
        assert any(p[0] == "api_server" and p[2] == "up" for p in peers), peers
        keys = table_rows(browser, "key-sets")
        assert keys and keys[0][1] == "1", keys
        wait_for(browser, lambda d: text(d, "limit-rejected") not in ("\u2013", "0"), "rate-limit rejections")
        wait_for(browser, lambda d: text(d, "revoked-total") == "1", "one revocation")
        assert table_rows(browser, "revocations")[0][:2] == ["revoked", "1"]
        assert text(browser, "cache-ratio").endswith("%")

        path = screenshot(browser, "dashboard.png" if workers == 1 else f"dashboard-{workers}-workers.png")
        assert path.stat().st_size > 10_000
    finally:
        load.stop()

    # once the load stops, the page shows exactly what the API says (the page's own API calls
    # are not authenticated, so the auth numbers stand still)
    def matches_api(d) -> bool:
        api = request(gw.port, "GET", "/api/9/jwtgate").json()
        page_subs = {row[0]: int(row[1].replace(",", "")) for row in table_rows(d, "top-subs")}
        return (all(outcome(d, reason) == n for reason, n in api["auth"]["outcomes"].items())
                and page_subs == {e["sub"]: e["requests"] for e in api["top_subs"]})
    wait_for(browser, matches_api, "the page to match /api/9/jwtgate")
    expected_ok = sum(n for status, n in load.statuses.items() if status in (200, 503))
    assert outcome(browser, "ok") == expected_ok, load.statuses
    assert not load.is_alive()
    assert load.sent <= load.max_requests
    assert load.statuses.get(200, 0) > 0 and load.statuses.get(401, 0) > 0, load.statuses


PROTECTED_CONF = """
events {}
http {
    server {
        listen 127.0.0.1:{port};
        location /api/ {
            auth_jwt "Gateway API";
            auth_jwt_key_file {keys};
            api;
        }
        location /closed/ { deny all; api; }
        location /dashboard/ { dashboard; }
        location /dashboard403/ { dashboard /closed/; }
    }
}
"""


def test_dashboard_with_a_protected_api(browser, gateway):
    """The real ``api`` behind ``auth_jwt``: 401 banner, a token typed in, recovery; behind
    ``deny all``: a 403 banner without the token field."""
    gw = gateway(PROTECTED_CONF)
    browser.get(gw.url + "/dashboard403/")
    wait_for(browser, lambda d: banner(d) and "HTTP 403" in banner(d), "the 403 banner")
    assert not browser.find_element(By.ID, "token-form").is_displayed()

    browser.get(gw.url + "/dashboard/")
    browser.execute_script("window.sessionStorage.clear();")
    wait_for(browser, lambda d: banner(d) and "HTTP 401" in banner(d), "the 401 banner")
    assert polls(browser) == 0
    admin = mint_hs({"sub": "ops", "exp": now() + 600})
    browser.find_element(By.ID, "token-input").send_keys(admin)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_for(browser, lambda d: polls(d) >= 1 and banner(d) is None, "recovery with the token")
    # the page's own authenticated API calls are counted: the sub shows among top talkers
    wait_for(browser, lambda d: outcome(d, "ok") > 0, "the page's own ok outcomes")
    wait_for(browser, lambda d: "ops" in [r[0] for r in table_rows(d, "top-subs")], "the ops sub")
