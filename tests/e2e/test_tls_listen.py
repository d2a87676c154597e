"""``listen ... ssl``: certificates, SNI, ``$scheme``/``$https``, plain HTTP to a TLS port,
handshake failures, configuration errors, and TLS with several worker processes."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jwtgate_e2e import POST_TOKEN, curl, make_cert

NAMES = ("api.example.test", "admin.example.test")



@pytest.fixture
def pki(tmp_path):
    """A CA (ca.pem) and, for each of NAMES, NAME.pem / NAME.key signed by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    (tmp_path / "ca.pem").write_bytes(make_cert("test CA", ca_key, ca_name, ca_key, True)
                                      .public_bytes(serialization.Encoding.PEM))
    for name in NAMES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_cert(name, ca_key, ca_name, key, False, [name])
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tmp_path


def _server(name: str, extra: str = "", default: bool = False) -> str:
    return f"""
server {{
    listen 127.0.0.1:{{port}} ssl{" default_server" if default else ""};
    server_name {name};
    ssl_certificate {{tmp}}/{name}.pem;
    ssl_certificate_key {{tmp}}/{name}.key;
    {extra}
    location /products/ {{
        auth_jwt "Products API";
        auth_jwt_key_file {{keys}};
        proxy_pass http://127.0.0.1:{{upstream_port}};
        proxy_set_header X-Scheme $scheme;
        proxy_set_header X-Https $https;
        proxy_set_header X-Server $server_name;
    }}
    location = /whoami {{ return 200 "{name} $scheme $https\\n"; }}
}}
"""


def _client_context(pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext, name: str | None) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            return {"cert": tls.getpeercert(), "version": tls.version()}


def _subject(cert: dict) -> str:
    return dict(x[0] for x in cert["subject"])["commonName"]


def test_tls_gateway_proxies_with_scheme_https(gateway, upstream, pki):
    gw = gateway(_server(NAMES[0], default=True))
    url = f"https://{NAMES[0]}:{gw.port}/products/1"
    args = ("--cacert", str(pki / "ca.pem"), "--resolve", f"{NAMES[0]}:{gw.port}:127.0.0.1")
    r = curl(url, *args, "-H", f"Authorization: Bearer {POST_TOKEN}")
    assert r.status == 200, r.stderr
    rec = upstream.last
    assert rec.values("X-Scheme") == ["https"]
    assert rec.values("X-Https") == ["on"]
    # no token: the gateway's own 401 comes back over TLS too
    assert curl(url, *args).status == 401
    # keep-alive over TLS: several requests on one connection
    r = curl(f"https://{NAMES[0]}:{gw.port}/whoami", *args, "-H", "Connection: keep-alive")
    assert r.body == f"{NAMES[0]} https on\n".encode()


def test_plain_port_has_empty_https(gateway, upstream, post_token_file):
    gw = gateway("""
server {
    listen 127.0.0.1:{port};
    location = /s { return 200 "[$scheme][$https]"; }
}
""")
    assert gw.get("/s").body == b"[http][]"


def test_sni_picks_the_certificate_of_the_server_name(gateway, upstream, pki):
    gw = gateway(_server(NAMES[0], default=True) + _server(NAMES[1]))
    ctx = _client_context(pki)
    for name in NAMES:
        assert _subject(_handshake(gw.port, ctx, name)["cert"]) == name
    # a name no server has, and no SNI at all: the default server's certificate
    loose = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    loose.check_hostname = False
    assert _subject(_handshake(gw.port, loose, "other.example.test")["cert"]) == NAMES[0]
    assert _subject(_handshake(gw.port, loose, None)["cert"]) == NAMES[0]
    # real curl verifies each name against its own certificate, and the right server answers
    for name in NAMES:
        r = curl(f"https://{name}:{gw.port}/whoami", "--cacert", str(pki / "ca.pem"),
                 "--resolve", f"{name}:{gw.port}:127.0.0.1")
        assert r.status == 200 and r.body == f"{name} https on\n".encode(), r.stderr


def test_sni_with_the_second_server_as_default(gateway, upstream, pki):
    gw = gateway(_server(NAMES[0]) + _server(NAMES[1], default=True))
    loose = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    loose.check_hostname = False
    assert _subject(_handshake(gw.port, loose, None)["cert"]) == NAMES[1]
    assert _subject(_handshake(gw.port, _client_context(pki), NAMES[0])["cert"]) == NAMES[0]


def test_plain_http_to_the_tls_port_is_400(gateway, upstream, pki):
    gw = gateway(_server(NAMES[0], default=True))
    r = gw.get("/whoami")
    assert r.status == 400
    assert b"The plain HTTP request was sent to HTTPS port" in r.body
    assert r.header("Connection") == "close"
    # and TLS still works afterwards
    r = curl(f"https://{NAMES[0]}:{gw.port}/whoami", "--cacert", str(pki / "ca.pem"),
             "--resolve", f"{NAMES[0]}:{gw.port}:127.0.0.1")
    assert r.status == 200


def test_handshake_failures_just_close(gateway, upstream, pki):
    gw = gateway(_server(NAMES[0], default=True) + "error_log stderr info;")
    # a client that does not trust the certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(gw.port, ssl.create_default_context(), NAMES[0])
    # garbage that starts like a TLS record
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
        s.settimeout(10)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        assert b"HTTP/" not in data
    # a client that only allows TLS 1.2 while the server only speaks TLS 1.3
    gw13 = gateway(_server(NAMES[0], extra="ssl_protocols TLSv1.3;", default=True))
    only12 = _client_context(pki)
    only12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        _handshake(gw13.port, only12, NAMES[0])
    assert _handshake(gw13.port, _client_context(pki), NAMES[0])["version"] == "TLSv1.3"
    assert _handshake(gw.port, only12, NAMES[0])["version"] == "TLSv1.2"
    time.sleep(0.2)
    assert "SSL handshake with client 127.0.0.1 failed" in gw.stderr_text()


def test_ciphers_and_prefer_server_ciphers(gateway, upstream, pki):
    gw = gateway(_server(NAMES[0], default=True,
                         extra="ssl_protocols TLSv1.2; ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256; "
                               "ssl_prefer_server_ciphers on; ssl_session_cache shared:SSL:10m; "
                               "ssl_session_timeout 10m; ssl_session_tickets off;"))
    ctx = _client_context(pki)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=NAMES[0]) as tls:
            assert tls.version() == "TLSv1.2"
            assert tls.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    # a client without that cipher cannot connect
    other = _client_context(pki)
    other.maximum_version = ssl.TLSVersion.TLSv1_2
    other.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    with pytest.raises(ssl.SSLError):
        _handshake(gw.port, other, NAMES[0])


def test_tls_with_two_worker_processes(gateway, upstream, pki):
    gw = gateway("worker_processes 2;\n" + _server(NAMES[0], default=True))
    ctx = _client_context(pki)
    for _ in range(20):
        assert _subject(_handshake(gw.port, ctx, NAMES[0])["cert"]) == NAMES[0]
    r = curl(f"https://{NAMES[0]}:{gw.port}/products/x", "--cacert", str(pki / "ca.pem"),
             "--resolve", f"{NAMES[0]}:{gw.port}:127.0.0.1", "-H", f"Authorization: Bearer {POST_TOKEN}")
    assert r.status == 200 and upstream.last.values("X-Scheme") == ["https"]


# -- configuration errors ------------------------------------------------------------------

def _compile(tmp_path, text):
    from jwtgate.conf.plan import compile_plan
    from jwtgate.errors import ConfigError

    path = tmp_path / "tls.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        compile_plan(str(path))
    return str(info.value)


@pytest.mark.parametrize("extra, message, line", [
    ("ssl_protocols TLSv1 TLSv1.2;",
     'the "TLSv1" protocol of the "ssl_protocols" directive is not supported (only TLSv1.2 and TLSv1.3 are)', 6),
    ("ssl_protocols TLSv1.1;", 'the "TLSv1.1" protocol of the "ssl_protocols" directive is not supported', 6),
    ("ssl_protocols TLSv9;", 'invalid value "TLSv9" in "ssl_protocols" directive', 6),
    ("ssl_ciphers NO-SUCH-CIPHER;", 'SSL_CTX_set_cipher_list("NO-SUCH-CIPHER") failed (SSL: no cipher match)', 6),
    ("ssl on;", 'the "ssl" directive is obsolete, use the "listen ... ssl" directive instead', 6),
    ("ssl_session_cache bogus;", 'invalid value "bogus" in "ssl_session_cache" directive', 6),
])
def test_bad_ssl_directives_are_located_errors(tmp_path, pki, extra, message, line):
    text = (f"server {{\n    listen 127.0.0.1:1 ssl;\n"
            f"    ssl_certificate {pki / NAMES[0]}.pem;\n"
            f"    ssl_certificate_key {pki / NAMES[0]}.key;\n\n"
            f"    {extra}\n}}\n")
    out = _compile(tmp_path, text)
    assert message in out
    assert f"tls.conf:{line}" in out


def test_certificate_errors(tmp_path, pki):
    # no certificate for an ssl listen: at the listen line
    out = _compile(tmp_path, "server {\n  server_name a;\n  listen 127.0.0.1:1 ssl;\n}\n")
    assert 'no "ssl_certificate" is defined for the "listen ... ssl" directive' in out and "tls.conf:3" in out
    # certificate without key
    out = _compile(tmp_path, f"server {{\n listen 127.0.0.1:1 ssl;\n ssl_certificate {pki}/{NAMES[0]}.pem;\n}}\n")
    assert f'no "ssl_certificate_key" is defined for certificate "{pki}/{NAMES[0]}.pem"' in out
    assert "tls.conf:3" in out
    # missing file
    out = _compile(tmp_path, f"server {{\n listen 127.0.0.1:1 ssl;\n ssl_certificate {pki}/nope.pem;\n"
                             f" ssl_certificate_key {pki}/{NAMES[0]}.key;\n}}\n")
    assert f'cannot load certificate "{pki}/nope.pem"' in out and "tls.conf:3" in out
    # a key that is not the certificate's
    out = _compile(tmp_path, f"server {{\n listen 127.0.0.1:1 ssl;\n ssl_certificate {pki}/{NAMES[0]}.pem;\n"
                             f" ssl_certificate_key {pki}/{NAMES[1]}.key;\n}}\n")
    assert f'cannot load certificate key "{pki}/{NAMES[1]}.key"' in out and "tls.conf:4" in out
    # not PEM at all
    (pki / "junk.pem").write_text("junk\n")
    out = _compile(tmp_path, f"server {{\n listen 127.0.0.1:1 ssl;\n ssl_certificate {pki}/junk.pem;\n"
                             f" ssl_certificate_key {pki}/{NAMES[0]}.key;\n}}\n")
    assert f'cannot load certificate "{pki}/junk.pem"' in out and "tls.conf:3" in out
    # http2 stays refused
    out = _compile(tmp_path, "server {\n listen 127.0.0.1:1 ssl http2;\n}\n")
    assert 'the "http2" parameter of the "listen" directive is not supported yet' in out


def test_http_level_certificate_is_inherited_and_shared(tmp_path, pki):
    from jwtgate.conf.plan import compile_plan

    path = tmp_path / "ok.conf"
    path.write_text(f"""http {{
  ssl_certificate {pki}/{NAMES[0]}.pem;
  ssl_certificate_key {pki}/{NAMES[0]}.key;
  server {{ listen 127.0.0.1:1 ssl; server_name a; }}
  server {{ listen 127.0.0.1:2 ssl; server_name b; }}
  server {{ listen 127.0.0.1:3; }}
}}""")
    plan = compile_plan(str(path))
    assert plan.tls_binds == {("127.0.0.1", 1), ("127.0.0.1", 2)}
    # one context for one setting
    assert plan.tls[("127.0.0.1", 1)] is plan.tls[("127.0.0.1", 2)]
    assert plan.tls_context("127.0.0.1", 3) is None


def test_handshake_and_first_head_share_one_client_header_timeout(gateway, upstream, pki):
    """NGINX times the TLS handshake and the first request head together, from the accept:
    a client that handshakes late and then sends half a head gets one timeout, not two."""
    gw = gateway(_server(NAMES[0], extra="client_header_timeout 2s;", default=True))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        start = time.monotonic()
        time.sleep(1.2)
        with _client_context(pki).wrap_socket(raw, server_hostname=NAMES[0]) as tls:
            tls.sendall(b"GET /whoami HTTP/1.1\r\nHost: a")
            data = b""
            try:
                while chunk := tls.recv(4096):
                    data += chunk
            except (ConnectionResetError, ssl.SSLError):
                pass
            elapsed = time.monotonic() - start
    assert b"HTTP/" not in data
    assert elapsed < 2.9, elapsed
    # a handshake and a whole request in time are served
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        time.sleep(1.0)
        with _client_context(pki).wrap_socket(raw, server_hostname=NAMES[0]) as tls:
            tls.sendall(b"GET /whoami HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")
