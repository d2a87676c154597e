"""``jwtgate revoke`` / ``jwtgate unrevoke`` against a real gateway's API: the revocation
applies to the next request; expiry from ``--for``/``--until``; one-line errors and exit codes."""

from __future__ import annotations

import json
import time

from clitools import fails, jwtgate, ok
from jwtgate_e2e import bearer, free_port, mint_hs, now, request

CONF = """
http {
    keyval_zone zone=revoked:64k timeout=1d;
    keyval $jwt_claim_jti $jwt_revoked zone=revoked;
    keyval_zone zone=revoked_sub:64k;
    keyval $jwt_claim_sub $sub_revoked zone=revoked_sub;
    map $jwt_revoked $valid_jti { "" 1; default 0; }
    map $sub_revoked $valid_sub { "" 1; default 0; }
    map $jwt_claim_role $admin { admin 1; default ""; }
    server {
        listen 127.0.0.1:{port};
        location /api { api write=on; allow 127.0.0.1; deny all; }
        location /ro/api { api; }
        location /secure/api { api write=on; auth_jwt "API"; auth_jwt_key_file {keys}; auth_jwt_require $admin; }
        location /products/ {
            auth_jwt "Products API";
            auth_jwt_key_file {keys};
            auth_jwt_require $valid_jti $valid_sub;
            proxy_pass http://127.0.0.1:{upstream_port};
        }
    }
}
"""


def tok(jti: str, sub: str = "quotes", exp: int | None = None) -> str:
    return mint_hs({"sub": sub, "jti": jti, "exp": exp or now() + 3600})


def get(port: int, token: str) -> int:
    return request(port, "GET", "/products/x", bearer(token)).status


def zone(port: int, name: str) -> dict:
    return json.loads(request(port, "GET", f"/api/9/http/keyvals/{name}").body)


def test_revoke_and_unrevoke_a_jti(gateway):
    gw = gateway(CONF)
    api = f"{gw.url}/api"
    t = tok("cli-1")
    assert get(gw.port, t) == 200
    out = ok("revoke", "--api", api, "--jti", "cli-1", "--for", "1h")
    assert out.startswith('revoked jti "cli-1" in zone "revoked" until ')
    assert get(gw.port, t) == 401
    # revoking again is fine (re-timed through PATCH)
    ok("revoke", "--api", api + "/9", "--jti", "cli-1", "--for", "2h")
    assert zone(gw.port, "revoked") == {"cli-1": "1"}
    assert ok("unrevoke", "--api", api, "--jti", "cli-1").strip() == 'unrevoked jti "cli-1" in zone "revoked"'
    assert get(gw.port, t) == 200
    # unrevoking what is not revoked is not an error, but it says so
    p = jwtgate("unrevoke", "--api", api, "--jti", "cli-1")
    assert p.returncode == 0 and p.stdout.strip() == 'jti "cli-1" was not revoked in zone "revoked": nothing to remove'
    assert "unrevoked" not in p.stdout


def test_revoke_without_an_expiry_notes_the_zone_timeout(gateway):
    gw = gateway(CONF)
    p = jwtgate("revoke", "--api", f"{gw.url}/api", "--jti", "note-1")
    assert p.returncode == 0 and p.stdout.strip() == 'revoked jti "note-1" in zone "revoked"'
    notes = [line for line in p.stderr.splitlines() if line.startswith("jwtgate: note: ")]
    assert len(notes) == 1 and "zone's timeout=" in notes[0] and "--until <the token's exp>" in notes[0]
    p = jwtgate("revoke", "--api", f"{gw.url}/api", "--jti", "note-2", "--for", "1h")
    assert p.returncode == 0 and "note" not in p.stderr


def test_an_api_url_without_the_api_location_gets_a_hint(gateway):
    gw = gateway(CONF)
    for command in ("revoke", "unrevoke"):
        err = fails(command, "--api", gw.url, "--jti", "x")
        assert "404" in err and '--api must be the URL of the "api" location, e.g. http://host/api' in err, err
    assert zone(gw.port, "revoked") == {}


def test_until_a_token_exp_and_expiry(gateway):
    gw = gateway(CONF)
    exp = now() + 2
    t = tok("cli-2", exp=exp + 60)
    ok("revoke", "--api", f"{gw.url}/api", "--jti", "cli-2", "--until", str(exp))
    assert get(gw.port, t) == 401
    deadline = time.monotonic() + 5
    while get(gw.port, t) == 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(gw.port, t) == 200  # the revocation lasted until the given time only
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    ok("revoke", "--api", f"{gw.url}/api", "--jti", "cli-2", "--until", iso)
    assert get(gw.port, t) == 401


def test_revoke_a_subject_in_its_default_zone(gateway):
    gw = gateway(CONF)
    out = ok("revoke", "--api", f"{gw.url}/api", "--sub", "quotes")
    assert out.strip() == 'revoked sub "quotes" in zone "revoked_sub"'
    assert get(gw.port, tok("any", sub="quotes")) == 401
    assert get(gw.port, tok("any", sub="other")) == 200
    # that zone has no timeout: an expiry is refused by the API, said in one line
    err = fails("revoke", "--api", f"{gw.url}/api", "--sub", "x", "--for", "1h")
    assert "400 KeyvalFormatError: keyval timeout is not enabled" in err


def test_api_behind_auth_jwt_with_header(gateway):
    gw = gateway(CONF)
    admin = mint_hs({"sub": "ops", "role": "admin", "exp": now() + 600})
    err = fails("revoke", "--api", f"{gw.url}/secure/api", "--jti", "h-1")
    assert err.startswith("the API refused the revocation: 401")
    assert admin not in err
    ok("revoke", "--api", f"{gw.url}/secure/api", "--jti", "h-1", "-H", f"Authorization: Bearer {admin}")
    assert zone(gw.port, "revoked") == {"h-1": "1"}


def test_errors_are_one_line_with_exit_codes(gateway):
    gw = gateway(CONF)
    err = fails("revoke", "--api", f"{gw.url}/ro/api", "--jti", "x")
    assert "405 MethodDisabled: method disabled" in err and "write=on" in err
    err = fails("revoke", "--api", f"{gw.url}/api", "--jti", "x", "--zone", "nope")
    assert "404 KeyvalNotFound" in err
    err = fails("revoke", "--api", f"http://127.0.0.1:{free_port()}/api", "--jti", "x")
    assert "cannot reach the API" in err
    assert "already passed" in fails("revoke", "--api", f"{gw.url}/api", "--jti", "x", "--until", "1000")
    assert "invalid --for" in fails("revoke", "--api", f"{gw.url}/api", "--jti", "x", "--for", "soon")
    assert "invalid --until" in fails("revoke", "--api", f"{gw.url}/api", "--jti", "x", "--until", "tomorrow")
    assert "not both" in fails("revoke", "--api", f"{gw.url}/api", "--jti", "x", "--for", "1h", "--until", "9999999999")
    assert "--api must be" in fails("revoke", "--api", "ftp://x/api", "--jti", "x")
    assert "--header" in fails("revoke", "--api", f"{gw.url}/api", "--jti", "x", "-H", "no colon")
    p = jwtgate("revoke", "--api", f"{gw.url}/api", "--jti", "a", "--sub", "b")
    assert p.returncode == 2 and "exactly one of --jti and --sub" in p.stderr
    p = jwtgate("unrevoke", "--api", f"{gw.url}/api")
    assert p.returncode == 2
    assert zone(gw.port, "revoked") == {}


def test_explain_reads_the_state_file(tmp_path):
    """``jwtgate explain`` (no running gateway) sees the revocations kept in a ``state=`` file."""
    import json as _json

    from jwtgate_e2e import POST_JWKS

    keys = tmp_path / "keys.jwk"
    keys.write_text(_json.dumps(POST_JWKS))
    state = tmp_path / "revoked.json"
    conf = tmp_path / "gw.conf"
    conf.write_text(f"""
http {{
    keyval_zone zone=revoked:64k state={state} timeout=1h;
    keyval $jwt_claim_jti $jwt_revoked zone=revoked;
    map $jwt_revoked $valid_jti {{ "" 1; default 0; }}
    server {{ listen 127.0.0.1:9; location / {{ auth_jwt "x"; auth_jwt_key_file {keys};
        auth_jwt_require $valid_jti; proxy_pass http://127.0.0.1:9; }} }}
}}""")
    t = tok("ex-1")
    ok("explain", "-c", conf, "--token", t, "GET", "http://127.0.0.1:9/x")
    state.write_text(_json.dumps({"ex-1": {"value": "1", "expire": int(time.time() * 1000) + 60000}}))
    p = jwtgate("explain", "-c", conf, "--token", t, "GET", "http://127.0.0.1:9/x")
    assert p.returncode == 1 and 'auth_jwt_require $valid_jti is "0"' in p.stdout, p.stdout + p.stderr


def test_odd_until_and_api_values_are_usage_errors_not_internal_errors():
    """``--until`` digits other than ASCII (``str.isdigit`` accepts "²" and Arabic-Indic digits)
    and an ``--api`` URL that ``urlsplit`` rejects were "internal error (ValueError)" or taken
    as a time; they are one-line input errors, and nothing is sent."""
    for until in ("\u00b2", "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660"):
        err = fails("revoke", "--api", f"http://127.0.0.1:{free_port()}/api", "--jti", "x", "--until", until)
        assert "invalid --until" in err and "internal error" not in err
    for api in ("http://[::1", "http://127.0.0.1:notaport/api", "http://127.0.0.1:99999/api"):
        err = fails("revoke", "--api", api, "--jti", "x")
        assert "--api must be" in err and "internal error" not in err, err
        err = fails("unrevoke", "--api", api, "--jti", "x")
        assert "--api must be" in err, err


def test_a_redirect_is_not_followed_and_the_header_stays_home():
    """A 302 from the API URL was followed by urllib, which replayed ``-H 'Authorization: ...'``
    to the redirect's host (and turned the POST into a GET): the admin token went elsewhere."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PATCH = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    other = HTTPServer(("127.0.0.1", 0), Elsewhere)
    target = f"http://127.0.0.1:{other.server_address[1]}/steal"

    class Redirector(Elsewhere):
        def do_POST(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PATCH = do_GET = do_POST  # noqa: N815

    api = HTTPServer(("127.0.0.1", 0), Redirector)
    for server in (other, api):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{api.server_address[1]}/api"
        err = fails("revoke", "--api", url, "--jti", "x", "-H", "Authorization: Bearer ADMIN-SECRET")
        assert "302" in err and "redirect" in err and "ADMIN-SECRET" not in err
        err = fails("unrevoke", "--api", url, "--jti", "x", "-H", "Authorization: Bearer ADMIN-SECRET")
        assert "302" in err
        assert seen == []
    finally:
        for server in (other, api):
            server.shutdown()
            server.server_close()
