"""Shared machinery of the end-to-end tests: a recording upstream, the real ``jwtgate``
binary in a subprocess, token minting, and small HTTP clients (http.client and real curl).

Imported by ``tests/e2e/conftest.py`` and ``tests/cli/conftest.py`` (which re-export the
fixtures) and by the test modules for the helpers. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
JWTGATE = str(VENV_BIN / "jwtgate") if (VENV_BIN / "jwtgate").exists() else str(REPO / ".venv/bin/jwtgate")
PYTHON = sys.executable
CURL = "/usr/bin/curl"
EXAMPLES = REPO / "examples" / "reference"
SAMPLE_API = REPO / "examples" / "sample_api.py"

START_DEADLINE = 15.0
STOP_GRACE = 5.0

# -- the reference post's key and token ---------------------------------------------------

POST_SECRET = b"fantasticjwt"
POST_JWKS = {"keys": [{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}]}
POST_TOKEN = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6IjAwMDEifQ."
              "eyJuYW1lIjoiUXVvdGF0aW9uIFN5c3RlbSIsInN1YiI6InF1b3RlcyIsImlzcyI6Ik15IEFQSSBHYXRld2F5In0."
              "ggVOHYnVFB8GVPE-VOIo3jD71gTkLffAY0hQOGXPL2I")


# -- small utilities ----------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_PATTERN_CACHE: dict[int, bytes] = {}


def pattern(n: int) -> bytes:
    """``n`` deterministic pseudo-random bytes (the same for the same ``n``)."""
    data = _PATTERN_CACHE.get(n)
    if data is None:
        data = random.Random(n).randbytes(n)
        if n <= 64 << 20:
            _PATTERN_CACHE[n] = data
    return data


# -- tokens -------------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


_HS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def mint_hs(claims: dict, key: bytes = POST_SECRET, alg: str = "HS256", kid: str | None = "0001",
            header: dict | None = None) -> str:
    """An HMAC-signed JWS in compact form, built by hand (no library)."""
    hdr = {"typ": "JWT", "alg": alg}
    if kid is not None:
        hdr["kid"] = kid
    if header:
        hdr.update(header)
    signing_input = f"{b64url(_json(hdr))}.{b64url(_json(claims))}"
    sig = hmac.new(key, signing_input.encode(), _HS[alg]).digest()
    return f"{signing_input}.{b64url(sig)}"


def unsigned(claims: dict, alg: str = "none", kid: str | None = "0001") -> str:
    hdr = {"typ": "JWT", "alg": alg}
    if kid is not None:
        hdr["kid"] = kid
    return f"{b64url(_json(hdr))}.{b64url(_json(claims))}."


def tamper_signature(token: str) -> str:
    """The token with the first byte of its signature flipped (still valid base64url)."""
    head, payload, sig = token.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[0] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"



def make_cert(subject: str, issuer_key, issuer_name, key, ca: bool, san: list[str] | None = None):
    """An X.509 certificate for ``subject`` (common name) signed by ``issuer_key``, valid from
    five minutes ago for one day; ``ca`` sets BasicConstraints, ``san`` the DNS names."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in san]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())

def now() -> int:
    return int(time.time())


@dataclass
class SigningKey:
    """A generated key for one algorithm: ``public_jwk`` goes into the gateway's key set."""

    alg: str
    kid: str
    key: object  # joserfc key (with the private part)
    public_jwk: dict

    def sign(self, claims: dict, header: dict | None = None) -> str:
        from joserfc import jwt

        hdr = {"typ": "JWT", "alg": self.alg, "kid": self.kid}
        if header:
            hdr.update(header)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return jwt.encode(hdr, claims, self.key, algorithms=[self.alg])


ALGORITHMS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
              "ES256", "ES384", "ES512", "EdDSA"]

_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


def generate_key(alg: str, kid: str) -> SigningKey:
    """A fresh key for ``alg`` (joserfc generates it; the public JWK has no private part)."""
    from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

    params = {"kid": kid}
    if alg.startswith("HS"):
        key = OctKey.import_key(os.urandom(int(alg[2:]) // 8), parameters=params)
        jwk = key.as_dict(private=True)
    else:
        if alg[:2] in ("RS", "PS"):
            key = RSAKey.generate_key(2048, parameters=params)
        elif alg.startswith("ES"):
            key = ECKey.generate_key(_CURVES[alg], parameters=params)
        elif alg == "EdDSA":
            key = OKPKey.generate_key("Ed25519", parameters=params)
        else:
            raise ValueError(alg)
        jwk = key.as_dict(private=False)
        assert "d" not in jwk
    return SigningKey(alg, kid, key, jwk)


def write_jwks(path: str | os.PathLike, *jwks: dict) -> str:
    Path(path).write_text(json.dumps({"keys": list(jwks)}))
    return str(path)


# -- the recording upstream ---------------------------------------------------------------

@dataclass
class Recorded:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client_port: int
    server_port: int

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        return [v for n, v in self.headers if n.lower() == name.lower()]


CHUNKED_PARTS = [f"chunk {i:03d} ".encode() * (i + 1) for i in range(64)]
CHUNKED_BODY = b"".join(CHUNKED_PARTS)
CLOSE_BODY = pattern(300_000)


class _Truncated(Exception):
    """A request body that ended before its framing said it would."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "recording-upstream/1.0"
    disable_nagle_algorithm = True  # head and body are separate writes

    def log_message(self, *args) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding")
        if te is not None and te.strip().lower() == "chunked":
            parts = []
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _Truncated(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    while True:
                        trailer = self.rfile.readline(65537)
                        if not trailer:
                            raise _Truncated("no end of trailers")
                        if trailer in (b"\r\n", b"\n"):
                            break
                    break
                data = self.rfile.read(size)
                if len(data) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise _Truncated("truncated chunk")
                parts.append(data)
            return b"".join(parts)
        length = self.headers.get("Content-Length")
        if length:
            data = self.rfile.read(int(length))
            if len(data) != int(length):
                raise _Truncated(f"{len(data)} of {length} body bytes")
            return data
        return b""

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream-Port", str(self.server.server_address[1]))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except _Truncated as e:
            # the gateway gave up on this request mid-body: note it, answer nothing
            self.server.recorder.aborted.append((self.command, self.path, str(e)))
            self.close_connection = True
            return
        rec = Recorded(self.command, self.path, list(self.headers.items()), body,
                       self.client_address[1], self.server.server_address[1])
        self.server.recorder.record(rec)
        # the behaviour is chosen by the first keyword segment of the path, wherever it is:
        # /big/N, /products/big/N, /v1/chunked ... (anything else: 200 JSON)
        path = urlsplit(self.path).path
        segments = path.strip("/").split("/")
        parts = [""]
        for i, seg in enumerate(segments):
            if seg in ("big", "chunked", "close", "echo", "status"):
                parts = segments[i:]
                break
        if parts[0] == "big" and len(parts) > 1 and parts[1].isdigit():
            n = int(parts[1])
            data = pattern(n)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            view = memoryview(data)
            for i in range(0, n, 1 << 20):
                self.wfile.write(view[i:i + (1 << 20)])
        elif parts[0] == "chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in CHUNKED_PARTS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif parts[0] == "close":
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            view = memoryview(CLOSE_BODY)
            for i in range(0, len(CLOSE_BODY), 65536):
                self.wfile.write(view[i:i + 65536])
                self.wfile.flush()
        elif parts[0] == "echo":
            self._send(200, _json({"length": len(body), "sha256": sha256(body), "path": self.path}))
        elif parts[0] == "status" and len(parts) > 1 and parts[1].isdigit():
            self._send(int(parts[1]), _json({"status": int(parts[1]), "path": self.path}))
        else:
            self._send(200, _json({"ok": True, "path": self.path}))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True



def recv_head(c: socket.socket) -> bytes | None:
    """Read from ``c`` until a whole HTTP head has arrived: the bytes read (the head, its
    blank line and whatever came with them), or ``None`` if the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data


def recv_until(s: socket.socket, suffix: bytes = b"") -> bytes:
    """Read from ``s`` until what was read ends with ``suffix`` (when given) or the peer
    closes; returns every byte read."""
    data = b""
    while not (suffix and data.endswith(suffix)):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def recv_request(c: socket.socket) -> tuple[bytes, bytes, bytes] | None:
    """Read one request with its ``Content-Length`` body (0 without one) from ``c``:
    ``(head, body, rest)``, the head without its blank line, ``rest`` whatever came after
    the body; ``None`` if the peer closed first."""
    data = recv_head(c)
    if data is None:
        return None
    head, _, rest = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length: *(\d+)\r?$", head)
    length = int(m.group(1)) if m else 0
    while len(rest) < length:
        chunk = c.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head, rest[:length], rest[length:]


class SocketUpstream:
    """A raw-socket upstream on 127.0.0.1 for tests that need byte-level control: a thread
    accepts connections and runs :meth:`serve` for each in its own thread. Subclasses
    implement ``serve(conn)``; ``port`` is the bound port; :meth:`close` stops accepting."""

    backlog = 8

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(self.backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c:
            self.serve(c)

    def serve(self, c: socket.socket) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class RecordingUpstream:
    """A real HTTP/1.1 server on 127.0.0.1 that records every request it receives."""

    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.recorder = self
        self.port = self.server.server_address[1]
        self.requests: list[Recorded] = []
        self.aborted: list[tuple[str, str, str]] = []  # requests whose body never completed
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    @property
    def last(self) -> Recorded:
        assert self.requests, "the upstream received no request"
        return self.requests[-1]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the gateway --------------------------------------------------------------------------

class Gateway:
    """``jwtgate run -c FILE`` in a subprocess, in its own session."""

    def __init__(self, conf_path: Path, port: int, stderr_path: Path, cwd: Path | None = None) -> None:
        self.conf_path = conf_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen([JWTGATE, "run", "-c", str(conf_path)], stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=self._stderr, start_new_session=True,
                                     cwd=str(cwd or conf_path.parent))
        self.returncode: int | None = None

    def wait_ready(self, deadline: float = START_DEADLINE) -> None:
        end = time.monotonic() + deadline
        while True:
            if self.proc.poll() is not None:
                self._stderr.close()
                pytest.fail(f"jwtgate exited with {self.proc.returncode} before listening on "
                            f"{self.port}; stderr:\n{self.stderr_text()}\nconfig:\n{self.conf_path.read_text()}")
            if port_open(self.port):
                return
            if time.monotonic() > end:
                self.stop()
                pytest.fail(f"jwtgate did not listen on {self.port} within {deadline}s; "
                            f"stderr:\n{self.stderr_text()}")
            time.sleep(0.02)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def send_signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` to the gateway's PID; SIGKILL after 5 s. Returns the exit code."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()
        self.returncode = self.proc.returncode
        return self.proc.returncode

    # convenience
    def get(self, path: str, headers: dict | None = None, **kw) -> "Response":
        return request(self.port, "GET", path, headers=headers, **kw)


def post_conf(location_extra: str = "", http_extra: str = "", auth: str = 'auth_jwt "Products API";',
              keys: str = "{keys}", set_header: bool = True, server_extra: str = "") -> str:
    """The post's gateway configuration with placeholders for the ports and the key file."""
    header = "proxy_set_header API-Client $jwt_claim_sub;" if set_header else ""
    return f"""
{http_extra}
upstream api_server {{
    server 127.0.0.1:{{upstream_port}};
}}

server {{
    listen 127.0.0.1:{{port}};
    {server_extra}

    location /products/ {{
        {auth}
        auth_jwt_key_file {keys};
        proxy_pass http://api_server;
        {header}
        {location_extra}
    }}
}}
"""


class GatewayFactory:
    """Starts gateways from configuration text; stops them all at the end."""

    def __init__(self, tmp_path: Path, upstream: RecordingUpstream | None) -> None:
        self.tmp = tmp_path
        self.upstream = upstream
        self.started: list[Gateway] = []
        self.keys = tmp_path / "api_secret.jwk"
        self.keys.write_text(json.dumps(POST_JWKS))
        self._n = 0

    def write_conf(self, text: str, port: int | None = None, **subs) -> tuple[Path, int]:
        port = port or free_port()
        values = {"port": port, "keys": self.keys, "tmp": self.tmp,
                  "upstream_port": self.upstream.port if self.upstream else free_port()}
        values.update(subs)
        for k, v in values.items():
            text = text.replace("{" + k + "}", str(v))
        self._n += 1
        path = self.tmp / f"gateway{self._n}.conf"
        path.write_text(text)
        return path, port

    def __call__(self, text: str, port: int | None = None, **subs) -> Gateway:
        path, port = self.write_conf(text, port, **subs)
        return self.run_file(path, port)

    def run_file(self, path: Path, port: int, cwd: Path | None = None) -> Gateway:
        """Run an existing configuration file that listens on ``port``."""
        self._n += 1
        gw = Gateway(Path(path), port, self.tmp / f"gateway{self._n}.stderr", cwd=cwd)
        self.started.append(gw)
        gw.wait_ready()
        return gw

    def close(self) -> list[str]:
        """Stop every gateway; returns the problems seen (exit code, tracebacks)."""
        problems = []
        for gw in self.started:
            rc = gw.stop()
            err = gw.stderr_text()
            if rc != 0:
                problems.append(f"{gw.conf_path.name}: exit code {rc} after SIGTERM\n{err[-2000:]}")
            if "Traceback" in err:
                problems.append(f"{gw.conf_path.name}: traceback in stderr\n{err[-4000:]}")
        return problems


# -- HTTP clients -------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    conn_reused: bool = False

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, headers: dict | list | None = None,
            body: bytes | None = None, conn: http.client.HTTPConnection | None = None,
            timeout: float = 30) -> Response:
    """One request with http.client (a new connection unless ``conn`` is given).

    ``headers`` may be a list of (name, value) to send repeated or oddly named fields.
    """
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for k, v in items:
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        data = r.read()
        return Response(r.status, r.getheaders(), data)
    finally:
        if own:
            c.close()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` as is on a new connection and return every byte read until the gateway
    closes it (for requests http.client refuses to send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def fetch(port: int, path: str, host: str, method: str = "GET", headers: dict | None = None) -> Response:
    """One request with exactly this ``Host`` field (:func:`request` lets http.client add its
    own, so a ``Host`` passed there is sent twice, which the gateway refuses)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        c.putheader("Host", host)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        c.close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class CurlResult:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: str
    returncode: int

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


def curl(url: str, *args: str, out: str | os.PathLike | None = None, timeout: float = 60) -> CurlResult:
    """Real curl: returns the final status, the response headers and the body.

    With ``out``, the body goes to that file (``curl -o``) and ``body`` is empty.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="curl-") as d:
        hdr = os.path.join(d, "headers")
        body_path = str(out) if out is not None else os.path.join(d, "body")
        cmd = [CURL, "-sS", "--noproxy", "*", "--max-time", str(int(timeout)), "-D", hdr,
               "-o", body_path, "-w", "%{http_code}", *args, url]
        p = subprocess.run(cmd, capture_output=True, timeout=timeout + 10)
        headers: list[tuple[str, str]] = []
        if os.path.exists(hdr):
            # the last header block (after any 100 Continue)
            blocks = [b for b in open(hdr, "rb").read().decode("latin-1").split("\r\n\r\n") if b.strip()]
            if blocks:
                for line in blocks[-1].split("\r\n")[1:]:
                    if ":" in line:
                        n, v = line.split(":", 1)
                        headers.append((n.strip(), v.strip()))
        body = b""
        if out is None and os.path.exists(body_path):
            body = open(body_path, "rb").read()
        code = p.stdout.decode().strip()
        return CurlResult(int(code) if code.isdigit() else 0, headers, body,
                          p.stderr.decode(errors="replace"), p.returncode)


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture
def upstream():
    up = RecordingUpstream()
    try:
        yield up
    finally:
        up.close()


@pytest.fixture
def upstream2():
    up = RecordingUpstream()
    try:
        yield up
    finally:
        up.close()


@pytest.fixture
def gateway(tmp_path, upstream):
    """``gateway(conf_text, **placeholders) -> Gateway``; ``{port}``, ``{upstream_port}``,
    ``{keys}`` (the post's JWK Set) and ``{tmp}`` are filled in."""
    factory = GatewayFactory(tmp_path, upstream)
    try:
        yield factory
    finally:
        problems = factory.close()
    if problems:
        pytest.fail("gateway stopped badly:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def post_token_file(tmp_path) -> Path:
    p = tmp_path / "quotes.jwt"
    p.write_text(POST_TOKEN + "\n")
    return p


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 30,
            python_module: bool = False) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "jwtgate", *args] if python_module else [JWTGATE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL)
