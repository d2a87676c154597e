"""Making and handling JSON Web Keys for the CLI: generate, import, publish, fingerprint, store.

Every key operation goes through joserfc (over cryptography); this module only decides
policy (sizes, curves, which members a public key may carry) and the file format. A JWK is
handled here as the plain ``dict`` of its JSON members (RFC 7517 §4), so that files keep
members this code does not know.

Files are JWK Sets (RFC 7517 §5) written as ``{"keys": [JWK, ...]}`` with one compact JWK per
line, the shape of the reference post's ``api_secret.jwk``. A file holding any private
material (an ``oct`` key, or a ``d`` member) is written with mode 0600, always atomically
(a temporary file in the same directory, then ``os.replace``).

Errors are :class:`IssueError`; messages name files and ``kid`` values, never key material.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey, thumbprint as _thumbprint

from ..errors import JwtgateError
from .keys import MAX_JWKS_BYTES, hmac_key_warnings, parse_jwk_set

__all__ = [
    "IssueError",
    "KEY_CLASSES",
    "SIGNATURE_ALGORITHMS",
    "KEY_MANAGEMENT_ALGORITHMS",
    "CONTENT_ENCRYPTION_ALGORITHMS",
    "CURVES",
    "generate_jwk",
    "jwk_from_secret",
    "jwk_from_pem",
    "public_jwks",
    "thumbprint",
    "import_jwk",
    "is_private_jwk",
    "describe_jwk",
    "key_warnings",
    "parse_jwks",
    "read_jwks_file",
    "format_jwks",
    "write_file_atomic",
    "write_jwks_file",
    "add_to_jwks_file",
]


class IssueError(JwtgateError):
    """A key or token could not be made as asked (bad option, unusable key, unreadable file).

    The CLI prints it as one line and exits 1. Never contains key material or token bytes.
    """


#: JWK ``kty`` -> joserfc key class.
KEY_CLASSES: dict[str, Any] = {"oct": OctKey, "RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}

#: JWS algorithms a key can be made for: ``alg`` -> (``kty``, curve or ``None``, oct bits or ``None``).
SIGNATURE_ALGORITHMS: dict[str, tuple[str, str | None, int | None]] = {
    "HS256": ("oct", None, 256), "HS384": ("oct", None, 384), "HS512": ("oct", None, 512),
    **{a: ("RSA", None, None) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", "P-256", None), "ES384": ("EC", "P-384", None), "ES512": ("EC", "P-521", None),
    "EdDSA": ("OKP", None, None), "Ed25519": ("OKP", "Ed25519", None), "Ed448": ("OKP", "Ed448", None),
}
#: JWE key management algorithms (RFC 7518 §4) tokens may be encrypted with. ECDH-ES is
#: left out (the gateway refuses it), as are RSA1_5 (RFC 8725 §3.2) and PBES2.
KEY_MANAGEMENT_ALGORITHMS: dict[str, tuple[str, int | None]] = {
    "RSA-OAEP-256": ("RSA", None), "RSA-OAEP": ("RSA", None),
    "A128KW": ("oct", 128), "A192KW": ("oct", 192), "A256KW": ("oct", 256), "dir": ("oct", None),
}
#: JWE content encryption algorithms (RFC 7518 §5) -> content encryption key bits.
CONTENT_ENCRYPTION_ALGORITHMS: dict[str, int] = {
    "A128GCM": 128, "A192GCM": 192, "A256GCM": 256,
    "A128CBC-HS256": 256, "A192CBC-HS384": 384, "A256CBC-HS512": 512,
}

#: Curves ``generate_jwk`` makes keys on, by key type (RFC 7518 §6.2.1.1, RFC 8037 §2).
CURVES = {"EC": ("P-256", "P-384", "P-521"), "OKP": ("Ed25519", "Ed448")}
_DEFAULT_CURVE = {"EC": "P-256", "OKP": "Ed25519"}
#: Smallest RSA modulus accepted, bits (RFC 7518 §3.3, §4.2).
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384
#: Smallest and largest generated or imported symmetric key, bits.
MIN_OCT_BITS = 128
MAX_OCT_BITS = 4096
# Members kept in a public JWK besides the key's public values (RFC 7517 §4).
_PUBLIC_PARAMS = ("kid", "use", "alg", "key_ops", "x5u", "x5c", "x5t", "x5t#S256")
# key_ops of a private key and what its public half may do instead (RFC 7517 §4.3).
_PUBLIC_OPS = {"sign": "verify", "verify": "verify", "decrypt": "encrypt", "encrypt": "encrypt",
               "unwrapKey": "wrapKey", "wrapKey": "wrapKey"}


def _err(err: BaseException) -> str:
    """A library error as text: joserfc names parameters, never values."""
    return str(err) if isinstance(err, (JoseError, ValueError)) and str(err) else type(err).__name__


def _ordered(jwk: dict[str, Any], kid: str | None = None, alg: str | None = None,
             use: str | None = None) -> dict[str, Any]:
    """Key values first, then ``kty``, ``kid``, ``use``, ``alg``: the post's member order."""
    head = ("kty", "kid", "use", "alg")
    out = {k: v for k, v in jwk.items() if k not in head}
    out["kty"] = jwk["kty"]
    for name, value in (("kid", kid or jwk.get("kid")), ("use", use or jwk.get("use")),
                        ("alg", alg or jwk.get("alg"))):
        if value is not None:
            out[name] = value
    return out


def _check_alg_use(kty: str, alg: str | None, use: str | None, crv: str | None = None) -> None:
    if use is not None and use not in ("sig", "enc"):
        raise IssueError(f'"use" must be "sig" or "enc", not "{use}"')
    if alg is None:
        return
    if alg in SIGNATURE_ALGORITHMS:
        want_kty, want_crv, _ = SIGNATURE_ALGORITHMS[alg]
        if use == "enc":
            raise IssueError(f'{alg} is a signature algorithm: it does not go with "use": "enc"')
    elif alg in KEY_MANAGEMENT_ALGORITHMS:
        want_kty, want_crv = KEY_MANAGEMENT_ALGORITHMS[alg][0], None
        if use == "sig":
            raise IssueError(f'{alg} is an encryption algorithm: it does not go with "use": "sig"')
    else:
        known = ", ".join([*SIGNATURE_ALGORITHMS, *KEY_MANAGEMENT_ALGORITHMS])
        raise IssueError(f"unsupported algorithm {alg} (one of {known})")
    if want_kty != kty:
        raise IssueError(f"{alg} needs a {want_kty} key, not {kty}")
    if want_crv is not None and crv is not None and crv != want_crv:
        raise IssueError(f"{alg} needs curve {want_crv}, not {crv}")


def _check_kid(kid: str) -> None:
    if not kid:
        raise IssueError("the kid must not be empty")


def generate_jwk(kty: str, *, kid: str, size: int | None = None, crv: str | None = None,
                 alg: str | None = None, use: str | None = None) -> dict[str, Any]:
    """A new private key as a JWK (RFC 7517 §4), made by joserfc from the system's CSPRNG.

    Args:
        kty: ``"oct"``, ``"RSA"``, ``"EC"`` or ``"OKP"``.
        kid: the ``kid`` member (RFC 7517 §4.5), not empty.
        size: bits, for ``oct`` (default: what ``alg`` needs, else 256; RFC 7518 §3.2 wants at
            least the hash size for HS*) and ``RSA`` (default 2048, at least 2048, RFC 7518 §3.3).
        crv: ``P-256``/``P-384``/``P-521`` for EC, ``Ed25519``/``Ed448`` for OKP (RFC 8037);
            default: what ``alg`` needs, else P-256 / Ed25519.
        alg: a JWS algorithm or a JWE key management algorithm to bind the key to (``alg``
            member), or ``None``.
        use: ``"sig"``, ``"enc"`` or ``None`` (``use`` member).

    Returns:
        The JWK with its private members, key values first, then kty, kid, use, alg.

    Raises:
        IssueError: an unknown kty or curve, a size out of range, or ``alg``/``use`` that do
            not fit the key.
    """
    _check_kid(kid)
    if kty not in KEY_CLASSES:
        raise IssueError(f"unsupported key type {kty} (one of oct, RSA, EC, OKP)")
    want_crv = None
    if alg in SIGNATURE_ALGORITHMS:
        want_crv = SIGNATURE_ALGORITHMS[alg][1]
    _check_alg_use(kty, alg, use, crv)
    if kty in ("EC", "OKP"):
        if size is not None:
            raise IssueError(f"--size does not apply to {kty} keys: choose a curve with --crv")
        crv = crv or want_crv or _DEFAULT_CURVE[kty]
        if crv not in CURVES[kty]:
            raise IssueError(f"curve {crv} is not a {kty} signature curve (one of {', '.join(CURVES[kty])})")
        key = KEY_CLASSES[kty].generate_key(crv)
    else:
        if crv is not None:
            raise IssueError(f"--crv does not apply to {kty} keys: choose a size with --size")
        if kty == "RSA":
            size = MIN_RSA_BITS if size is None else size
            if not MIN_RSA_BITS <= size <= MAX_RSA_BITS or size % 8:
                raise IssueError(f"RSA key size must be a multiple of 8 from {MIN_RSA_BITS} to "
                                 f"{MAX_RSA_BITS} bits, not {size}")
            key = RSAKey.generate_key(size)
        else:
            size = _oct_size(size, alg)
            key = OctKey.generate_key(size)
    return _ordered(key.as_dict(private=True), kid, alg, use)


def _oct_size(size: int | None, alg: str | None) -> int:
    need = None
    if alg in SIGNATURE_ALGORITHMS:
        need = SIGNATURE_ALGORITHMS[alg][2]
    elif alg in KEY_MANAGEMENT_ALGORITHMS:
        need = KEY_MANAGEMENT_ALGORITHMS[alg][1]
    if size is None:
        return need or 256
    if size % 8 or not MIN_OCT_BITS <= size <= MAX_OCT_BITS:
        raise IssueError(f"oct key size must be a multiple of 8 from {MIN_OCT_BITS} to {MAX_OCT_BITS} "
                         f"bits, not {size}")
    if alg is not None and alg.endswith("KW") and size != need:
        raise IssueError(f"{alg} needs a key of exactly {need} bits, not {size}")
    if alg in SIGNATURE_ALGORITHMS and need is not None and size < need:
        raise IssueError(f"{alg} needs a key of at least {need} bits (RFC 7518 §3.2), not {size}")
    return size


def jwk_from_secret(secret: bytes, *, kid: str, alg: str | None = None,
                    use: str | None = None) -> dict[str, Any]:
    """The ``oct`` JWK of a shared secret: ``k`` is the base64url of its bytes (RFC 7518 §6.4).

    This is the post's ``echo -n fantasticjwt | base64 | tr '+/' '-_' | tr -d '='``:
    ``jwk_from_secret(b"fantasticjwt", kid="0001")`` is
    ``{"k": "ZmFudGFzdGljand0", "kty": "oct", "kid": "0001"}``. Short secrets are allowed
    (the post's is 96 bits); :func:`key_warnings` reports them.

    Raises:
        IssueError: an empty secret or kid, one over 4096 bits, or an ``alg`` for another key type.
    """
    _check_kid(kid)
    if not secret:
        raise IssueError("the secret is empty")
    if len(secret) * 8 > MAX_OCT_BITS:
        raise IssueError(f"the secret is longer than {MAX_OCT_BITS} bits")
    _check_alg_use("oct", alg, use)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc's SecurityWarning on short keys
        key = OctKey.import_key(secret)
    return _ordered(key.as_dict(private=True), kid, alg, use)


def jwk_from_pem(data: bytes, *, kid: str, alg: str | None = None, use: str | None = None,
                 password: bytes | None = None) -> dict[str, Any]:
    """The JWK of a PEM key: a private key (PKCS#8, PKCS#1, SEC1), a public key or a certificate.

    A private PEM gives a private JWK; a public key or an X.509 certificate gives its public
    JWK. RSA, EC (P-256, P-384, P-521, secp256k1) and Ed25519/Ed448 keys are supported.

    Args:
        data: the PEM text.
        kid, alg, use: members to set, as for :func:`generate_jwk`.
        password: for an encrypted private key.

    Raises:
        IssueError: not PEM, encrypted without (or with a wrong) password, an unsupported key
            type, or ``alg``/``use`` that do not fit.
    """
    _check_kid(kid)
    native: Any
    private = True
    try:
        native = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        raise IssueError("the PEM private key is encrypted: give its password" if password is None
                         else "the PEM private key is not encrypted: give no password") from None
    except ValueError as err:
        if password is not None and "password" in str(err).lower():
            raise IssueError("cannot decrypt the PEM private key: wrong password?") from None
        private = False
        try:
            native = serialization.load_pem_public_key(data)
        except ValueError:
            try:
                native = x509.load_pem_x509_certificate(data).public_key()
            except ValueError:
                raise IssueError("not a PEM private key, public key or certificate") from None
    except Exception as err:  # cryptography's UnsupportedAlgorithm and friends
        raise IssueError(f"cannot read the PEM key: {_err(err)}") from None
    if isinstance(native, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        kty = "RSA"
    elif isinstance(native, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        kty = "EC"
    elif isinstance(native, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey,
                             ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        kty = "OKP"
    else:
        raise IssueError(f"unsupported PEM key type {type(native).__name__.lstrip('_')}")
    if private:
        pem = native.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    else:
        pem = native.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        key = KEY_CLASSES[kty].import_key(pem)
        jwk = key.as_dict(private=private)
    except Exception as err:  # e.g. a curve joserfc does not know
        raise IssueError(f"unsupported {kty} key: {_err(err)}") from None
    _check_alg_use(kty, alg, use, jwk.get("crv"))
    return _ordered(jwk, kid, alg, use)


def import_jwk(jwk: dict[str, Any], where: str) -> Any:
    """The joserfc key of a JWK ``dict``.

    Raises:
        IssueError: an unknown ``kty`` or a JWK joserfc refuses (named by ``where``).
    """
    kty = jwk.get("kty")
    if kty not in KEY_CLASSES:
        raise IssueError(f"{where}: unsupported key type {str(kty)[:16]!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return KEY_CLASSES[kty].import_key(jwk)
    except Exception as err:
        raise IssueError(f"{where}: invalid {kty} key: {_err(err)}") from None


def is_private_jwk(jwk: dict[str, Any]) -> bool:
    """Whether a JWK holds secret material: every ``oct`` key, and any key with ``d``."""
    return jwk.get("kty") == "oct" or "d" in jwk


def describe_jwk(jwk: dict[str, Any], index: int) -> str:
    """``key #0 (kid "0001")``, for messages."""
    kid = jwk.get("kid")
    return f"key #{index}" + (f' (kid "{kid[:64]}")' if isinstance(kid, str) else "")


def public_jwks(jwks: list[dict[str, Any]], source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The public halves of a JWK Set's asymmetric keys: what to hand to a verifier.

    Only the public key values (joserfc's registry of each key type) and the parameters
    ``kid``, ``use``, ``alg``, ``key_ops`` (mapped to their public operations) and ``x5*``
    are kept; unknown members are dropped, so nothing private can leak through them.
    ``oct`` keys are secrets and are left out, as are keys of an unknown type.

    Returns:
        ``(public_jwks, notes)``: notes say which keys were left out and why.

    Raises:
        IssueError: a key that does not import, or no asymmetric key at all.
    """
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    for index, jwk in enumerate(jwks):
        where = describe_jwk(jwk, index)
        kty = jwk.get("kty")
        if kty == "oct":
            notes.append(f"{where} is a secret (oct) key: left out; share it some other way")
            continue
        if kty not in KEY_CLASSES:
            notes.append(f"{where} has an unsupported key type: left out")
            continue
        key = import_jwk(jwk, f"{where} in {source}")
        cls = KEY_CLASSES[kty]
        public_values = {k for k, reg in cls.value_registry.items() if not reg.private}
        full = key.as_dict(private=False)
        pub = {k: v for k, v in full.items() if k in public_values or k == "kty"}
        for name in _PUBLIC_PARAMS:
            if name in jwk:
                pub[name] = jwk[name]
        if "key_ops" in pub:
            ops = pub["key_ops"] if isinstance(pub["key_ops"], list) else []
            mapped = [_PUBLIC_OPS[op] for op in ops if op in _PUBLIC_OPS]
            pub["key_ops"] = list(dict.fromkeys(mapped))
        out.append(_ordered(pub))
    if not out:
        secret = jwks and all(j.get("kty") == "oct" for j in jwks)
        raise IssueError(f"no public keys in {source}: " + ("oct keys are secrets, never published"
                                                             if secret else "it holds no RSA, EC or OKP key"))
    return out, notes


def thumbprint(jwk: dict[str, Any], digest: str = "sha256") -> str:
    """The RFC 7638 thumbprint of a JWK: base64url of the hash of its required members.

    Args:
        jwk: the key (private or public: the result is the same).
        digest: ``"sha256"`` (RFC 7638 §3.1's example), ``"sha384"`` or ``"sha512"``.

    Raises:
        IssueError: an unknown digest or a key that does not import.
    """
    if digest not in ("sha256", "sha384", "sha512"):
        raise IssueError(f"unsupported digest {digest} (sha256, sha384 or sha512)")
    key = import_jwk(jwk, describe_jwk(jwk, 0))
    cls = KEY_CLASSES[key.key_type]
    required = [k for k, reg in cls.value_registry.items() if reg.required] + ["kty"]
    return _thumbprint({k: key.dict_value[k] for k in required}, digest)  # type: ignore[arg-type]


def key_warnings(jwks: list[dict[str, Any]], source: str = "the key") -> list[str]:
    """What ``jwtgate check`` would warn about these keys (short HMAC keys, RFC 7518 §3.2)."""
    try:
        keys = parse_jwk_set(json.dumps({"keys": jwks}), source)
    except JwtgateError as err:
        return [str(err)]
    return hmac_key_warnings(keys)


def parse_jwks(data: bytes, source: str) -> list[dict[str, Any]]:
    """The JWKs of a JWK Set document (or of a single JWK), as ``dict`` objects in order.

    Raises:
        IssueError: larger than 1 MiB, not JSON, or not a JWK Set of JSON objects with a ``kty``.
    """
    if len(data) > MAX_JWKS_BYTES:
        raise IssueError(f"{source} is larger than {MAX_JWKS_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except json.JSONDecodeError as err:  # position only: never echo the document
        raise IssueError(f"invalid JSON in {source}: {err.msg} at line {err.lineno}") from None
    except (ValueError, RecursionError) as err:
        raise IssueError(f"invalid JSON in {source}: {type(err).__name__}") from None
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        jwks = doc["keys"]
    elif isinstance(doc, dict) and "kty" in doc:
        jwks = [doc]
    else:
        raise IssueError(f'{source} is not a JWK Set (an object with "keys") or a JWK')
    out: list[dict[str, Any]] = []
    for index, jwk in enumerate(jwks):
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kty"), str):
            raise IssueError(f'key #{index} in {source} is not a JWK (an object with "kty")')
        out.append(jwk)
    return out


def read_jwks_file(path: str) -> list[dict[str, Any]]:
    """Read a JWK Set file with :func:`parse_jwks` (at most 1 MiB is read).

    Raises:
        IssueError: unreadable, or as :func:`parse_jwks`.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JWKS_BYTES + 1)
    except OSError as err:
        raise IssueError(f"cannot read {path}: {err.strerror or type(err).__name__}") from None
    return parse_jwks(data, path)


def format_jwks(jwks: list[dict[str, Any]]) -> str:
    """``{"keys": [JWK,\\n          JWK]}\\n``: one compact JWK per line, as the post's file."""
    body = ",\n          ".join(json.dumps(j, separators=(",", ":"), ensure_ascii=False) for j in jwks)
    return '{"keys": [' + body + "]}\n"


def write_file_atomic(path: str, data: bytes, mode: int) -> None:
    """Replace ``path`` by a file holding ``data`` with permission bits ``mode``, atomically.

    The data goes to a temporary file in the same directory (created 0600), is flushed to
    disk, gets ``mode``, then replaces ``path`` with ``os.replace``: a reader sees the old
    file or the new one, never a part. A symlink at ``path`` is followed.

    Raises:
        IssueError: the directory is not writable, the disk is full...
    """
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(target) + ".",
                                   suffix=".tmp")
    except OSError as err:
        raise IssueError(f"cannot write {path}: {err.strerror or type(err).__name__}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise IssueError(f"cannot write {path}: {err.strerror or type(err).__name__}") from None


def write_jwks_file(path: str, jwks: list[dict[str, Any]]) -> None:
    """Write a JWK Set file atomically: mode 0600 if any key is private, else 0644."""
    mode = 0o600 if any(is_private_jwk(j) for j in jwks) else 0o644
    write_file_atomic(path, format_jwks(jwks).encode("utf-8"), mode)


def add_to_jwks_file(path: str, jwk: dict[str, Any]) -> int:
    """Append ``jwk`` to the JWK Set in ``path`` (created if absent), atomically.

    Returns:
        The number of keys in the file now.

    Raises:
        IssueError: the file is not a JWK Set, already has a key with this ``kid``, or cannot
            be written.
    """
    jwks = read_jwks_file(path) if os.path.exists(path) else []
    kid = jwk.get("kid")
    if kid is not None and any(j.get("kid") == kid for j in jwks):
        raise IssueError(f'{path} already has a key with kid "{kid}"')
    jwks.append(jwk)
    write_jwks_file(path, jwks)
    return len(jwks)
