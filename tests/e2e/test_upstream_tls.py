"""https:// upstreams: proxy_ssl_verify, proxy_ssl_trusted_certificate, proxy_ssl_name."""

from __future__ import annotations

import http.server
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jwtgate_e2e import make_cert, request



@pytest.fixture
def pki(tmp_path):
    """A CA, a server certificate for api.internal signed by it, and an unrelated CA."""
    out = {}
    for label in ("ca", "other"):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label} CA")])
        cert = make_cert(f"{label} CA", key, name, key, ca=True)
        (tmp_path / f"{label}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[label] = (key, name)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert("api.internal", out["ca"][0], out["ca"][1], key, ca=False, san=["api.internal"])
    (tmp_path / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tmp_path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b'{"tls":true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def tls_upstream(pki):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


CONF = """
server {{
    listen 127.0.0.1:{{port}};
    location / {{
        proxy_pass https://127.0.0.1:{up};
        {extra}
    }}
}}
"""


def test_https_upstream_without_verification(gateway, tls_upstream):
    gw = gateway(CONF.format(up=tls_upstream, extra=""))
    for _ in range(3):  # kept-alive TLS connections are reused
        r = request(gw.port, "GET", "/x")
        assert r.status == 200 and r.body == b'{"tls":true}'


def test_https_upstream_verified(gateway, tls_upstream, pki):
    extra = (f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki / 'ca.pem'}; "
             "proxy_ssl_name api.internal;")
    gw = gateway(CONF.format(up=tls_upstream, extra=extra))
    assert request(gw.port, "GET", "/x").status == 200


def test_https_upstream_untrusted_or_wrong_name_is_502(gateway, tls_upstream, pki):
    wrong_ca = (f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki / 'other.pem'}; "
                "proxy_ssl_name api.internal;")
    gw = gateway(CONF.format(up=tls_upstream, extra=wrong_ca))
    assert request(gw.port, "GET", "/x").status == 502
    wrong_name = (f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki / 'ca.pem'}; "
                  "proxy_ssl_name evil.example;")
    gw2 = gateway(CONF.format(up=tls_upstream, extra=wrong_name))
    assert request(gw2.port, "GET", "/x").status == 502


def test_verify_without_trusted_certificate_is_a_config_error(tmp_path):
    from jwtgate.conf.plan import compile_plan
    from jwtgate.errors import ConfigError

    path = tmp_path / "gw.conf"
    path.write_text("server { listen 127.0.0.1:1; location / { proxy_pass https://127.0.0.1:9; "
                    "proxy_ssl_verify on; } }")
    with pytest.raises(ConfigError) as e:
        compile_plan(str(path))
    assert 'no "proxy_ssl_trusted_certificate" for "proxy_ssl_verify"' in str(e.value)
