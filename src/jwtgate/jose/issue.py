"""Token and key tooling behind ``jwtgate jwk`` and ``jwtgate token sign``: issuing JWTs.

Keys (generate, from a secret, from PEM, public set, RFC 7638 thumbprint, JWK Set files) live
in :mod:`jwtgate.jose.keygen` and are re-exported here; ``token inspect`` lives in
:mod:`jwtgate.jose.inspect` (split by concept, to keep modules small). This module makes tokens:

* a JWS Compact Serialization (RFC 7515 §7.1) of a JWT (RFC 7519 §7.1): the header and the
  payload are the exact bytes given (``--header-json``/``--claims-json``) or compact JSON
  built from options, base64url-encoded, and the signing input is signed with joserfc's
  algorithm object for exactly the key's algorithm (the objects the gateway verifies with);
* a JWE Compact Serialization (RFC 7516 §7.1) with joserfc: an encrypted JWT (the claims are
  the plaintext) or a nested JWT (RFC 7519 §5.2, §7.1 step 5: a JWS inside, ``cty: JWT``).

Times are seconds since the epoch (RFC 7519 §2 NumericDate). Errors are
:class:`~jwtgate.jose.keygen.IssueError` (bad options, unusable keys, unreadable files);
no message contains key material or token bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from joserfc import jwe
from joserfc.errors import JoseError

from ..clock import SYSTEM_CLOCK, Clock
from ..conf.values import parse_time
from .keygen import (
    CONTENT_ENCRYPTION_ALGORITHMS,
    KEY_MANAGEMENT_ALGORITHMS,
    IssueError,
    add_to_jwks_file,
    describe_jwk,
    format_jwks,
    generate_jwk,
    import_jwk,
    is_private_jwk,
    jwk_from_pem,
    jwk_from_secret,
    key_warnings,
    parse_jwks,
    public_jwks,
    read_jwks_file,
    thumbprint,
    write_file_atomic,
    write_jwks_file,
)
from .keys import ALG_MODELS

__all__ = [
    # keys (from keygen)
    "IssueError", "generate_jwk", "jwk_from_secret", "jwk_from_pem", "public_jwks", "thumbprint",
    "key_warnings", "parse_jwks", "read_jwks_file", "format_jwks", "write_jwks_file",
    "add_to_jwks_file", "write_file_atomic",
    # tokens
    "TokenKey", "TokenSpec", "IssuedToken",
    "load_signing_key", "load_encryption_key", "parse_time_option", "parse_claim_option",
    "parse_json_object", "b64url_decode", "sign_compact", "encrypt_compact", "issue_token",
]

_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str, what: str) -> bytes:
    """Decode one base64url segment of a compact token (RFC 7515 §2; padding optional).

    Raises:
        IssueError: not base64url; the message names ``what``.
    """
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise IssueError(f"the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise IssueError(f"the {what} is not base64url") from None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object as strictly as the gateway does (no duplicate names, no NaN).

    Raises:
        IssueError: not UTF-8 JSON, or not an object; the message names ``what``.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise IssueError(f"{what} is not valid JSON: {err.msg} at column {err.colno}") from None
    except (ValueError, RecursionError) as err:
        raise IssueError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise IssueError(f"{what} is not a JSON object")
    return obj


# -- keys for tokens ------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenKey:
    """A key chosen to sign or encrypt, with the algorithm it will be used with.

    Attributes:
        key: the joserfc key (private for signing; the public half for RSA encryption).
        kid: its ``kid`` or ``None``.
        kty: ``oct``, ``RSA``, ``EC`` or ``OKP``.
        alg: the JWS algorithm, or the JWE key management algorithm.
        where: ``key #0 (kid "0001") in FILE``, for messages.
    """

    key: Any = field(repr=False)
    kid: str | None
    kty: str
    alg: str
    where: str


def _signing_alg(jwk: dict[str, Any]) -> str | None:
    """The JWS algorithm a key signs with when none is asked for: its ``alg``, else by type."""
    alg = jwk.get("alg")
    if alg is not None:
        return alg if alg in ALG_MODELS else None
    kty = jwk.get("kty")
    if kty == "oct":
        return "HS256"
    if kty == "RSA":
        return "RS256"
    if kty == "EC":
        return _EC_ALGS.get(jwk.get("crv", ""))
    if kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448"):
        return "EdDSA"
    return None


def _choose(path: str, kid: str | None, what: str, found: list[TokenKey], refused: list[str]) -> TokenKey:
    if len(found) == 1:
        return found[0]
    if found:
        kids = ", ".join(f'"{k.kid}"' if k.kid is not None else "(no kid)" for k in found)
        raise IssueError(f"{path} has {len(found)} keys that can {what}: choose one with --kid ({kids})")
    if len(refused) == 1:
        raise IssueError(refused[0])
    if refused:
        raise IssueError(f"no key in {path} can {what}: " + "; ".join(refused))
    raise IssueError(f'no key with kid "{kid}" in {path}' if kid is not None else f"no keys in {path}")


def load_signing_key(path: str, *, kid: str | None = None, alg: str | None = None) -> TokenKey:
    """The one key of a JWK Set file that can sign, with its algorithm.

    Args:
        path: a JWK Set (or single JWK) file with private keys.
        kid: only keys with this ``kid``.
        alg: the JWS algorithm (default: the key's ``alg`` member, else HS256 for oct, RS256
            for RSA, ES256/ES384/ES512 by curve, EdDSA for Ed25519/Ed448).

    Raises:
        IssueError: no such key, a public or encryption-only key, an ``alg`` that does not fit
            (joserfc's check: type, curve, ``use``, ``alg``), or several keys fit and no ``kid``.
    """
    if alg is not None and alg not in ALG_MODELS:
        raise IssueError(f"unsupported signature algorithm {alg} (one of {', '.join(sorted(ALG_MODELS))})")
    found: list[TokenKey] = []
    refused: list[str] = []
    for index, jwk in enumerate(read_jwks_file(path)):
        if kid is not None and jwk.get("kid") != kid:
            continue
        where = f"{describe_jwk(jwk, index)} in {path}"
        ops = jwk.get("key_ops")
        if jwk.get("use") == "enc":
            refused.append(f"{where} is an encryption key (use enc)")
            continue
        if isinstance(ops, list) and "sign" not in ops:
            refused.append(f'{where} may not sign (its "key_ops")')
            continue
        if not is_private_jwk(jwk):
            refused.append(f"{where} is a public key: signing needs the private key")
            continue
        chosen = alg or _signing_alg(jwk)
        if chosen is None:
            refused.append(f"{where} signs with no supported algorithm")
            continue
        key = import_jwk(jwk, where)
        try:
            ALG_MODELS[chosen].check_key(key)
        except JoseError as err:
            refused.append(f"{where} cannot sign {chosen}: {err.description or err.error}")
            continue
        found.append(TokenKey(key, jwk.get("kid"), jwk["kty"], chosen, where))
    return _choose(path, kid, f"sign {alg}" if alg else "sign", found, refused)


def load_encryption_key(path: str, *, kid: str | None = None, alg: str | None = None) -> TokenKey:
    """The one key of a JWK Set file to encrypt a token to, with its key management algorithm.

    Args:
        path: a JWK Set file: the recipient's public RSA key, or a shared oct key.
        kid: only keys with this ``kid``.
        alg: RSA-OAEP-256 (default for RSA), RSA-OAEP, A128KW/A192KW/A256KW (default for a
            128/192/256-bit oct key) or dir. ECDH-ES is not offered: the gateway refuses it.

    Raises:
        IssueError: no such key, a signature-only key, or an ``alg`` for another key type.
    """
    if alg is not None and alg not in KEY_MANAGEMENT_ALGORITHMS:
        raise IssueError(f"unsupported key management algorithm {alg} "
                         f"(one of {', '.join(KEY_MANAGEMENT_ALGORITHMS)})")
    found: list[TokenKey] = []
    refused: list[str] = []
    for index, jwk in enumerate(read_jwks_file(path)):
        if kid is not None and jwk.get("kid") != kid:
            continue
        where = f"{describe_jwk(jwk, index)} in {path}"
        kty = jwk.get("kty")
        ops = jwk.get("key_ops")
        member = jwk.get("alg")
        if jwk.get("use") == "sig":
            refused.append(f"{where} is a signature key (use sig)")
            continue
        if isinstance(ops, list) and not {"encrypt", "wrapKey"} & set(ops):
            refused.append(f'{where} may not encrypt (its "key_ops")')
            continue
        if member is not None and (member not in KEY_MANAGEMENT_ALGORITHMS or alg not in (None, member)):
            refused.append(f"{where} is bound to {member}")
            continue
        chosen = alg or member
        if chosen is None and kty == "RSA":
            chosen = "RSA-OAEP-256"
        key = import_jwk(jwk, where)
        if chosen is None and kty == "oct":
            bits = len(key.raw_value) * 8
            chosen = f"A{bits}KW" if bits in (128, 192, 256) else None
        if chosen is None:
            why = "ECDH-ES is not supported" if kty in ("EC", "OKP") else "choose one with --enc-alg"
            refused.append(f"{where}: no key management algorithm for a {kty} key ({why})")
            continue
        if KEY_MANAGEMENT_ALGORITHMS[chosen][0] != kty:
            refused.append(f"{where} is a {kty} key: {chosen} needs {KEY_MANAGEMENT_ALGORITHMS[chosen][0]}")
            continue
        if kty == "RSA" and key.is_private:
            key = import_jwk(key.as_dict(private=False), where)  # encrypting needs the public half
        found.append(TokenKey(key, jwk.get("kid"), kty, chosen, where))
    return _choose(path, kid, f"encrypt with {alg}" if alg else "encrypt", found, refused)


# -- option values --------------------------------------------------------------------------

def parse_time_option(text: str, now: float) -> int:
    """A time option (``--exp``, ``--nbf``, ``--iat``) as a NumericDate (RFC 7519 §2).

    Accepts ``now``; a duration from now in NGINX units (``1h``, ``30m``, ``1d12h``, ``3600``
    seconds), negative with ``-`` (``-5m``: five minutes ago); ``@SECONDS`` since the epoch;
    an ISO 8601 date-time (``2030-01-01T00:00:00Z``; UTC when no offset is given).

    Args:
        text: the option value.
        now: the current time, seconds since the epoch.

    Returns:
        Whole seconds since the epoch.

    Raises:
        IssueError: none of those forms.
    """
    value = text.strip()
    try:
        if value == "now":
            return int(now)
        if value.startswith("@"):
            return int(value[1:])
        if _ISO_DATE.match(value):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return int(moment.timestamp())
        sign = -1 if value.startswith("-") else 1
        return int(now + sign * parse_time(value.lstrip("+-"), kind="sec"))
    except (ValueError, OverflowError):
        raise IssueError(f'invalid time "{text}": use now, a duration such as 1h or -5m, '
                         "@SECONDS or an ISO 8601 date-time") from None


def parse_claim_option(text: str) -> tuple[str, Any]:
    """A ``--claim`` value: ``NAME=VALUE`` (a string) or ``NAME:=JSON`` (any JSON value).

    ``role=admin`` gives ``("role", "admin")``; ``admin:=true`` gives ``("admin", True)``;
    ``scope:=["a","b"]`` gives a list.

    Raises:
        IssueError: no ``=``, an empty name, or invalid JSON after ``:=``.
    """
    eq = text.find("=")
    if eq <= 0 or (eq == 1 and text[0] == ":"):
        raise IssueError(f'invalid --claim "{text[:40]}": use NAME=VALUE or NAME:=JSON')
    if text[eq - 1] == ":":
        name, raw = text[:eq - 1], text[eq + 1:]
        try:
            return name, json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise IssueError(f'--claim {name}:= is not followed by valid JSON') from None
    return text[:eq], text[eq + 1:]


# -- making tokens --------------------------------------------------------------------------

def sign_compact(header: bytes, payload: bytes, key: TokenKey) -> str:
    """The JWS Compact Serialization of ``header`` and ``payload`` bytes, exactly as given.

    RFC 7515 §5.1: ``BASE64URL(header) || '.' || BASE64URL(payload)`` is signed with
    ``key.alg`` (joserfc's algorithm object), and the base64url signature appended.

    Raises:
        IssueError: joserfc refused the key.
    """
    signing_input = f"{_b64url(header)}.{_b64url(payload)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EdDSA is deprecated by RFC 9864, still accepted
            signature = ALG_MODELS[key.alg].sign(signing_input.encode("ascii"), key.key)
    except JoseError as err:
        raise IssueError(f"{key.where} cannot sign {key.alg}: {err.description or err.error}") from None
    return f"{signing_input}.{_b64url(signature)}"


def encrypt_compact(plaintext: bytes, key: TokenKey, enc: str = "A256GCM", *, nested: bool) -> str:
    """A JWE Compact Serialization (RFC 7516 §7.1) of ``plaintext``, made by joserfc.

    The protected header is ``alg``, ``enc``, ``kid`` (when the key has one) and either
    ``cty: "JWT"`` (``nested``: the plaintext is a JWS, RFC 7519 §5.2) or ``typ: "JWT"``
    (the plaintext is the claims set).

    Raises:
        IssueError: an unsupported ``enc``, or joserfc refused the key (wrong size for
            ``dir`` or ``AxxxKW``).
    """
    if enc not in CONTENT_ENCRYPTION_ALGORITHMS:
        raise IssueError(f"unsupported content encryption {enc} "
                         f"(one of {', '.join(CONTENT_ENCRYPTION_ALGORITHMS)})")
    header: dict[str, Any] = {} if nested else {"typ": "JWT"}
    header.update(alg=key.alg, enc=enc)
    if key.kid is not None:
        header["kid"] = key.kid
    if nested:
        header["cty"] = "JWT"
    try:
        return jwe.encrypt_compact(header, plaintext, key.key, algorithms=[key.alg, enc])
    except JoseError as err:
        raise IssueError(f"{key.where} cannot encrypt with {key.alg} and {enc}: "
                         f"{err.description or err.error}") from None


@dataclass
class TokenSpec:
    """What ``jwtgate token sign`` was asked for; see :func:`issue_token`.

    Attributes:
        key: the signing JWK Set file (``None`` only for ``type="encrypted"``).
        kid, alg: choose the signing key and algorithm.
        header_json: the JWS header, used byte for byte (it must name the ``alg``).
        claims_json: the claims; byte for byte when no other claim is given.
        claims: ``(name, value)`` pairs from ``--claim``, in order.
        sub, iss, aud, exp, nbf, jti: registered claims; ``exp``/``nbf`` in the forms of
            :func:`parse_time_option`; several ``aud`` make an array; ``jti="auto"`` is random.
        iat: add ``iat`` (now).
        type: ``"signed"``, ``"nested"`` or ``"encrypted"``; ``None``: nested when
            ``encrypt_to`` is set, else signed.
        encrypt_to, enc_kid, enc_alg, enc: the recipient's JWK Set file, its key, the key
            management and the content encryption algorithms.
    """

    key: str | None = None
    kid: str | None = None
    alg: str | None = None
    header_json: str | None = None
    claims_json: str | None = None
    claims: list[tuple[str, Any]] = field(default_factory=list)
    sub: str | None = None
    iss: str | None = None
    aud: tuple[str, ...] = ()
    exp: str | None = None
    nbf: str | None = None
    iat: bool = False
    jti: str | None = None
    type: str | None = None
    encrypt_to: str | None = None
    enc_kid: str | None = None
    enc_alg: str | None = None
    enc: str = "A256GCM"


@dataclass(frozen=True)
class IssuedToken:
    """A token made by :func:`issue_token`.

    Attributes:
        token: the compact serialization.
        type: ``"signed"``, ``"nested"`` or ``"encrypted"``.
        header: the JWS header (signed, nested) or the JWE header (encrypted).
        claims: the claims set.
        signer, recipient: the keys used (``None`` when not used).
    """

    token: str
    type: str
    header: dict[str, Any]
    claims: dict[str, Any]
    signer: TokenKey | None
    recipient: TokenKey | None


def _payload(spec: TokenSpec, now: float) -> tuple[bytes, dict[str, Any]]:
    extra = list(spec.claims)
    registered: list[tuple[str, Any]] = [("sub", spec.sub), ("iss", spec.iss)]
    if spec.aud:
        registered.append(("aud", spec.aud[0] if len(spec.aud) == 1 else list(spec.aud)))
    if spec.exp is not None:
        registered.append(("exp", parse_time_option(spec.exp, now)))
    if spec.nbf is not None:
        registered.append(("nbf", parse_time_option(spec.nbf, now)))
    if spec.iat:
        registered.append(("iat", int(now)))
    if spec.jti is not None:
        registered.append(("jti", secrets.token_urlsafe(16) if spec.jti == "auto" else spec.jti))
    extra += [(n, v) for n, v in registered if v is not None]
    base = parse_json_object(spec.claims_json, "--claims-json") if spec.claims_json is not None else {}
    if spec.claims_json is not None and not extra:
        return spec.claims_json.encode("utf-8"), base  # byte for byte
    seen: set[str] = set()
    for name, value in extra:
        if name in seen:
            raise IssueError(f'claim "{name}" is given twice')
        seen.add(name)
        base[name] = value
    try:
        return json.dumps(base, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), base
    except UnicodeEncodeError:
        raise IssueError("the claims are not valid Unicode") from None


def issue_token(spec: TokenSpec, clock: Clock = SYSTEM_CLOCK) -> IssuedToken:
    """Make the token ``spec`` describes: a JWS, a nested JWT or an encrypted JWT.

    The default header is ``{"typ":"JWT","alg":ALG,"kid":KID}`` (the post's member order;
    ``kid`` only when the key has one); the claims are ``claims_json``'s members, then
    ``--claim`` pairs, then ``sub``, ``iss``, ``aud``, ``exp``, ``nbf``, ``iat``, ``jti``.
    ``header_json`` alone, and ``claims_json`` with no other claim, are used byte for byte.

    Raises:
        IssueError: contradictory options, unusable keys, invalid JSON or times.
        KeySourceError: never (key files are read with :func:`read_jwks_file`).
    """
    kind = spec.type or ("nested" if spec.encrypt_to else "signed")
    if kind not in ("signed", "nested", "encrypted"):
        raise IssueError(f"unknown token type {kind} (signed, nested or encrypted)")
    if kind != "signed" and not spec.encrypt_to:
        raise IssueError(f"a {kind} token needs --encrypt-to FILE (the recipient's key)")
    if kind == "signed" and spec.encrypt_to:
        raise IssueError("--encrypt-to makes a nested or an encrypted token, not --type signed")
    now = clock.wall()
    payload, claims = _payload(spec, now)
    recipient = (load_encryption_key(spec.encrypt_to, kid=spec.enc_kid, alg=spec.enc_alg)
                 if spec.encrypt_to else None)
    if kind == "encrypted":
        if spec.key or spec.header_json or spec.kid or spec.alg:
            raise IssueError("--type encrypted is not signed: give no --key, --kid, --alg or --header-json")
        assert recipient is not None
        token = encrypt_compact(payload, recipient, spec.enc, nested=False)
        header = parse_json_object(b64url_decode(token.split(".", 1)[0], "JWE header"), "the JWE header")
        return IssuedToken(token, kind, header, claims, None, recipient)
    if not spec.key:
        raise IssueError("--key FILE is needed to sign")
    if spec.header_json is not None:
        header = parse_json_object(spec.header_json, "--header-json")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str):
            raise IssueError('--header-json has no "alg"')
        if spec.alg is not None and spec.alg != alg:
            raise IssueError(f'--alg {spec.alg} contradicts "alg" {alg} of --header-json')
        if spec.kid is not None and kid is not None and spec.kid != kid:
            raise IssueError(f'--kid {spec.kid} contradicts "kid" of --header-json')
        signer = load_signing_key(spec.key, kid=spec.kid or (kid if isinstance(kid, str) else None), alg=alg)
        header_bytes = spec.header_json.encode("utf-8")
    else:
        signer = load_signing_key(spec.key, kid=spec.kid, alg=spec.alg)
        header = {"typ": "JWT", "alg": signer.alg}
        if signer.kid is not None:
            header["kid"] = signer.kid
        header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    token = sign_compact(header_bytes, payload, signer)
    if recipient is not None:
        token = encrypt_compact(token.encode("ascii"), recipient, spec.enc, nested=True)
    return IssuedToken(token, kind, header, claims, signer, recipient)
