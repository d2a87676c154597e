"""``jwtgate check -c FILE`` (like ``nginx -t``) and ``jwtgate run`` on configurations that
do not load: one line per error with file:line, exit 1, never a traceback."""

from __future__ import annotations

import json
import socket

import pytest

from jwtgate_e2e import EXAMPLES, POST_JWKS, REPO, post_conf, run_cli

EXAMPLE_CONFS = sorted(p.name for p in EXAMPLES.glob("*.conf"))


def output(p) -> str:
    return p.stdout + p.stderr


def write(tmp_path, text: str, name: str = "gw.conf", **subs) -> str:
    keys = tmp_path / "api_secret.jwk"
    if not keys.exists():
        keys.write_text(json.dumps(POST_JWKS))
    values = {"port": 18080, "upstream_port": 9000, "keys": keys, "tmp": tmp_path, **subs}
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def line_of(path: str, needle: str) -> int:
    lines = open(path).read().splitlines()
    hits = [i + 1 for i, line in enumerate(lines) if needle in line]
    assert len(hits) == 1, hits
    return hits[0]


def test_examples_are_found():
    assert {"gateway.conf", "query_token.conf", "logging_rate_limit.conf", "revocation.conf"} <= set(EXAMPLE_CONFS)


@pytest.mark.parametrize("name", EXAMPLE_CONFS)
def test_check_examples(name):
    path = EXAMPLES / name
    p = run_cli("check", "-c", str(path), cwd=REPO)
    assert p.returncode == 0, output(p)
    assert f"configuration file {path} test is successful" in output(p)
    assert "syntax is ok" in output(p)
    assert "[emerg]" not in output(p)
    # from another directory, with a relative path
    p = run_cli("check", "-c", f"examples/reference/{name}", cwd=REPO)
    assert p.returncode == 0, output(p)
    assert "test is successful" in output(p)


def test_check_warns_about_the_short_hmac_key_but_succeeds(tmp_path):
    path = write(tmp_path, post_conf())
    p = run_cli("check", "-c", path)
    assert p.returncode == 0, output(p)
    assert "[warn]" in output(p)
    assert "test is successful" in output(p)


def test_unknown_directive_names_file_and_line(tmp_path):
    path = write(tmp_path, post_conf().replace("proxy_pass http", "proxy_passs http"))
    line = line_of(path, "proxy_passs")
    p = run_cli("check", "-c", path)
    assert p.returncode == 1
    assert f'[emerg] unknown directive "proxy_passs" in {path}:{line}' in output(p), output(p)
    assert f"configuration file {path} test failed" in output(p)
    assert "test is successful" not in output(p)
    assert "Traceback" not in output(p)


def test_unknown_directive_in_an_included_file(tmp_path):
    inc = write(tmp_path, "\n# the products API\n\nlocation /products/ {\n    auth_jwt \"Products API\";\n"
                          "    auth_jwt_key_file {keys};\n    proxy_pas http://api_server;\n}\n",
                name="conf.d/products.inc")
    path = write(tmp_path, """
upstream api_server { server 127.0.0.1:9000; }
server {
    listen 127.0.0.1:18080;
    include conf.d/*.inc;
}
""")
    p = run_cli("check", "-c", path)
    assert p.returncode == 1
    assert f'[emerg] unknown directive "proxy_pas" in {inc}:7' in output(p), output(p)


def test_unknown_variable(tmp_path):
    path = write(tmp_path, post_conf(location_extra="proxy_set_header X-Foo $foo;"))
    p = run_cli("check", "-c", path)
    assert p.returncode == 1
    assert 'unknown "foo" variable' in output(p), output(p)
    assert "Traceback" not in output(p)


def test_missing_key_file(tmp_path):
    missing = tmp_path / "no-such-dir" / "api_secret.jwk"
    path = write(tmp_path, post_conf(keys=str(missing)))
    p = run_cli("check", "-c", path)
    assert p.returncode == 1
    assert str(missing) in output(p), output(p)
    assert "[emerg]" in output(p)
    assert "Traceback" not in output(p)


@pytest.mark.parametrize("content", ["not json", '{"keys": "nope"}', '{"keys": [{"kty": "oct"}]}', ""])
def test_invalid_key_file(tmp_path, content):
    keys = tmp_path / "bad.jwk"
    keys.write_text(content)
    path = write(tmp_path, post_conf(keys=str(keys)))
    p = run_cli("check", "-c", path)
    assert p.returncode == 1, output(p)
    assert str(keys) in output(p), output(p)
    assert "Traceback" not in output(p)


@pytest.mark.parametrize("broken,needle", [
    ('server {\n    listen 127.0.0.1:18080;\n    location / {\n        return 200;\n', "unexpected end of file"),
    ('server {\n    listen 127.0.0.1:18080\n}\n', "unexpected"),
    ('server {\n    listen 127.0.0.1:18080;\n    location / { return "200; }\n}\n', None),
    ('server {\n    listen 127.0.0.1:18080;\n    auth_jwt;\n}\n', "invalid number of arguments"),
    ('limit_req_zone $jwt_claim_sub zone=a:1m rate=ten;\n', None),
])
def test_syntax_errors(tmp_path, broken, needle):
    path = write(tmp_path, broken)
    p = run_cli("check", "-c", path)
    assert p.returncode == 1, output(p)
    assert "[emerg]" in output(p)
    assert f"in {path}:" in output(p), output(p)
    if needle:
        assert needle in output(p), output(p)
    assert "Traceback" not in output(p)


def test_missing_configuration_file(tmp_path):
    p = run_cli("check", "-c", str(tmp_path / "nope.conf"))
    assert p.returncode == 1
    assert str(tmp_path / "nope.conf") in output(p)
    assert "Traceback" not in output(p)


def test_python_dash_m(tmp_path):
    path = write(tmp_path, post_conf())
    p = run_cli("check", "-c", path, python_module=True)
    assert p.returncode == 0, output(p)
    assert f"configuration file {path} test is successful" in output(p)
    bad = write(tmp_path, post_conf().replace("proxy_pass http", "proxy_passs http"), name="bad.conf")
    p = run_cli("check", "-c", bad, python_module=True)
    assert p.returncode == 1
    assert f'unknown directive "proxy_passs" in {bad}:' in output(p)


def test_run_on_a_bad_configuration_exits_1(tmp_path):
    path = write(tmp_path, post_conf().replace("proxy_pass http", "proxy_passs http"))
    line = line_of(path, "proxy_passs")
    p = run_cli("run", "-c", path, timeout=20)
    assert p.returncode == 1
    assert f'[emerg] unknown directive "proxy_passs" in {path}:{line}' in output(p), output(p)
    assert "Traceback" not in output(p)
    missing = tmp_path / "missing.jwk"
    path = write(tmp_path, post_conf(keys=str(missing)), name="gw2.conf")
    p = run_cli("run", "-c", path, timeout=20)
    assert p.returncode == 1
    assert str(missing) in output(p)
    assert "Traceback" not in output(p)


def test_run_when_the_port_is_taken_exits_1(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        path = write(tmp_path, post_conf(), port=port)
        p = run_cli("run", "-c", path, timeout=20)
    assert p.returncode == 1
    assert f"bind() to 127.0.0.1:{port} failed" in output(p), output(p)
    assert "Traceback" not in output(p)


GOLDEN = REPO / "tests" / "golden"


def test_check_reports_every_error_in_one_run(tmp_path):
    """Spec checks, parse errors and errors found while the plan is built, all at once, as
    ``[emerg] MESSAGE in FILE:LINE`` lines in file order (the golden folder's expectation)."""
    conf = GOLDEN / "invalid" / "plan_stage.conf"
    p = run_cli("check", "-c", str(conf))
    assert p.returncode == 1
    expected = (GOLDEN / "invalid" / "plan_stage.err").read_text().replace("{dir}", str(conf.parent))
    emerg = [line.removeprefix("jwtgate: ") for line in p.stderr.splitlines() if "[emerg]" in line]
    assert emerg == expected.splitlines() and len(emerg) == 5
    path = write(tmp_path, "server {\n listen 127.0.0.1:1;\n nope;\n location / { return 200 $x; }\n"
                           " location /a/ { auth_jwt a; proxy_pass http://127.0.0.1:9; }\n}\n")
    p = run_cli("check", "-c", path)
    assert p.returncode == 1
    # the plan stage needs a configuration that passed the spec checks: two errors first
    assert [line.split("] ", 1)[1] for line in p.stderr.splitlines() if "[emerg]" in line] == [
        f'unknown directive "nope" in {path}:3', f'unknown "x" variable in {path}:4']


def test_check_prints_warnings_and_succeeds(tmp_path):
    conf = GOLDEN / "valid" / "warnings.conf"
    p = run_cli("check", "-c", str(conf))
    assert p.returncode == 0, output(p)
    assert f'[warn] conflicting server name "a.example" on 127.0.0.1:8084, ignored in {conf}:9' in p.stderr
    assert "is empty in \"set\"" in p.stderr
    assert "test is successful" in p.stderr


def test_check_dump_prints_the_configuration_with_includes(tmp_path):
    """``--dump`` prints each file once, in the order read, like ``nginx -T``."""
    conf = GOLDEN / "valid" / "nginx_conf.conf"
    p = run_cli("check", "-c", str(conf), "--dump")
    assert p.returncode == 0, output(p)
    parts = conf.parent / "parts"
    expected = "".join(f"# configuration file {f}:\n{f.read_text()}\n" for f in [
        conf, parts / "10-api.conf", parts / "20-www.conf"])
    assert p.stdout == expected
    assert "test is successful" in p.stderr
    # nothing is dumped from a configuration that does not load
    bad = GOLDEN / "invalid" / "include_error.conf"
    p = run_cli("check", "-c", str(bad), "--dump")
    assert p.returncode == 1 and p.stdout == ""
