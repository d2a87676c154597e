"""Inspecting tokens for ``jwtgate token inspect``: decode always, verify only when asked.

Without keys, a token's header and claims are decoded and shown, never trusted. With keys, a
JWS is verified by the gateway's own :class:`~jwtgate.jose.verify.Verifier` over the keys
loaded as ``auth_jwt_key_file`` loads them, so the verdict and its reason (a
:class:`~jwtgate.errors.TokenError` code and detail) are the gateway's. A JWE is decrypted
with joserfc (RFC 7516 §5.2) and a nested JWT's inner JWS (RFC 7519 §5.2) inspected in turn.
Times are seconds since the epoch (RFC 7519 §2 NumericDate).
"""

from __future__ import annotations

import math

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from joserfc import jwe

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import TokenError
from .issue import b64url_decode, parse_json_object
from .keygen import (
    CONTENT_ENCRYPTION_ALGORITHMS,
    KEY_MANAGEMENT_ALGORITHMS,
    IssueError,
    describe_jwk,
    import_jwk,
    is_private_jwk,
    read_jwks_file,
)
from .keys import ALG_MODELS, KeyEntry, KeySet, load_jwk_set_file
from .verify import VerifiedToken, Verifier

__all__ = ["Inspection", "inspect_token", "time_claims", "verifying_entry", "describe_entry",
           "decode_header", "TIME_CLAIMS"]

#: Claims shown as times (RFC 7519 §4.1.4-6, OpenID Connect Core §2 ``auth_time``).
TIME_CLAIMS = ("iat", "nbf", "exp", "auth_time")


def decode_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS or JWE, decoded and not trusted.

    Raises:
        IssueError: the first segment is not base64url of a JSON object.
    """
    return parse_json_object(b64url_decode(token.split(".", 1)[0], "header"), "the header")


@dataclass
class Inspection:
    """What a token says, and (with keys) whether the gateway would accept it.

    Attributes:
        kind: ``"JWS"`` (3 parts) or ``"JWE"`` (5 parts).
        length: characters.
        header: the (protected) JOSE header.
        claims: the claims set, or ``None`` (encrypted and not decrypted, or not a JSON object).
        note: why ``claims`` is ``None``, or what a JWE holds.
        verified: ``None`` (no keys given), ``True`` or ``False``; for a JWE: decrypted.
        key: which key verified or decrypted it, e.g. ``key #0 (kid "0001", oct) in FILE, HS256``.
        error: why it was refused: the gateway's :class:`TokenError` (``code``, ``detail``).
        inner: the JWS inside a decrypted nested JWT.
    """

    kind: str
    length: int
    header: dict[str, Any]
    claims: dict[str, Any] | None = None
    note: str = ""
    verified: bool | None = None
    key: str | None = None
    error: TokenError | None = None
    inner: Inspection | None = None

    @property
    def ok(self) -> bool:
        """No check failed, here or inside (nothing checked counts as ok)."""
        return self.error is None and (self.inner is None or self.inner.ok)

    def to_dict(self, now: float) -> dict[str, Any]:
        """A JSON-ready view; ``times`` as :func:`time_claims`, keyed by claim name."""
        return {
            "type": self.kind, "length": self.length, "header": self.header, "claims": self.claims,
            "note": self.note or None,
            "times": {t["claim"]: t for t in time_claims(self.claims or {}, now)},
            "verified": self.verified, "key": self.key,
            "error": {"code": self.error.code, "detail": self.error.detail} if self.error else None,
            "inner": self.inner.to_dict(now) if self.inner else None,
        }


def _utc(value: float) -> str:
    try:
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
    return " ".join(parts[:2])


def time_claims(claims: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """The time claims of ``claims`` that are numbers, for display.

    Args:
        claims: a claims set.
        now: seconds since the epoch.

    Returns:
        ``[{"claim": "exp", "value": 1700000000, "utc": "2023-11-14 22:13:20 UTC",
        "relative": "in 1h 0m"}, ...]`` in :data:`TIME_CLAIMS` order; ``relative`` is
        ``"... ago"`` for the past, ``"now"`` within a second.
    """
    out = []
    for name in TIME_CLAIMS:
        value = claims.get(name)
        if type(value) is not int and type(value) is not float:
            continue
        assert isinstance(value, (int, float))
        if not math.isfinite(value):  # 1e400: shown, never computed with
            out.append({"claim": name, "value": str(value), "utc": "out of range", "relative": "never"})
            continue
        delta = value - now
        rel = "now" if abs(delta) < 1 else (f"in {_span(delta)}" if delta > 0 else f"{_span(delta)} ago")
        out.append({"claim": name, "value": value, "utc": _utc(value), "relative": rel})
    return out


def verifying_entry(keys: KeySet, token: str, vt: VerifiedToken) -> KeyEntry | None:
    """The entry of ``keys`` that verified ``token`` (the Verifier reports only its ``kid``).

    Args:
        keys: the key set ``vt`` was verified with.
        token: the compact token.
        vt: what :meth:`Verifier.verify` returned for it.

    Returns:
        The key, or ``None`` when no signature key applies (an encrypted, unsigned token).
    """
    kind = getattr(vt, "kind", "signed")
    if kind == "nested":
        token = vt.payload.decode("ascii", "replace")  # the enclosed JWS carries the signature
    elif kind != "signed":
        return None
    alg = vt.header.get("alg")
    kid = vt.header.get("kid")
    if not isinstance(alg, str):
        return None
    candidates = keys.candidates(alg, kid if isinstance(kid, str) else None)
    if len(candidates) > 1:
        signing_input, _, sig = token.rpartition(".")
        signature = b64url_decode(sig, "signature")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for entry in candidates:
                try:
                    if ALG_MODELS[alg].verify(signing_input.encode("ascii"), signature, entry.key):
                        return entry
                except Exception:  # a malformed signature for this key type: not this key
                    continue
    return candidates[0] if candidates else None


def describe_entry(entry: KeyEntry | None, files: Sequence[tuple[str, KeySet]], kid: str | None = None) -> str:
    """``key #0 (kid "0001", oct) in FILE``: where a key of a (merged) key set comes from.

    Args:
        entry: a key of one of the sets (merged sets share their entries), or ``None``.
        files: ``(path, key set)`` of each ``auth_jwt_key_file`` the key may come from.
        kid: the ``kid`` the verifier reported, said when ``entry`` is ``None``.
    """
    if entry is None:
        return f'the key with kid "{kid}"' if kid is not None else "a key"
    shown = f'kid "{entry.kid}", ' if entry.kid is not None else ""
    for path, keys in files:
        for index, e in enumerate(keys.entries):
            if e is entry:
                return f"key #{index} ({shown}{entry.kty}) in {path}"
    return f"a key ({shown}{entry.kty})"


def _decrypt(token: str, header: dict[str, Any], key_files: Sequence[str]) -> tuple[bytes, str]:
    """Decrypt with the first private key of ``key_files`` that fits and works (joserfc)."""
    alg, enc, kid = header.get("alg"), header.get("enc"), header.get("kid")
    if alg not in KEY_MANAGEMENT_ALGORITHMS or enc not in CONTENT_ENCRYPTION_ALGORITHMS:
        raise TokenError("unsupported_alg",
                         f"JWE alg {str(alg)[:20]} with enc {str(enc)[:20]} is not supported")
    kty = KEY_MANAGEMENT_ALGORITHMS[alg][0]
    tried = 0
    for path in key_files:
        for index, jwk in enumerate(read_jwks_file(path)):
            if ((kid is not None and jwk.get("kid") != kid) or jwk.get("use") == "sig"
                    or jwk.get("kty") != kty or not is_private_jwk(jwk)):
                continue
            where = f"{describe_jwk(jwk, index)} in {path}"
            key = import_jwk(jwk, where)
            tried += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    plaintext = jwe.decrypt_compact(token, key, algorithms=[alg, enc]).plaintext
            except Exception:  # wrong key, or tampered: try the next key
                continue
            return plaintext or b"", f"{where}, {alg}, {enc}"
    if not tried:
        raise TokenError("no_key", f"no private {kty} key" + (" with this kid" if kid is not None else "")
                         + " to decrypt it")
    raise TokenError("decrypt_failed", f"no key decrypted it ({tried} tried)")


def inspect_token(token: str, key_files: Sequence[str] = (), *, leeway: float = 0.0,
                  clock: Clock = SYSTEM_CLOCK) -> Inspection:
    """Decode a compact JWS or JWE; verify or decrypt it only when ``key_files`` are given.

    Args:
        token: the token, optionally prefixed with ``Bearer``; surrounding space is ignored.
        key_files: JWK Set files: verification keys (loaded as ``auth_jwt_key_file``) and,
            for a JWE, the private decryption keys.
        leeway: clock skew allowed for ``exp``/``nbf``, seconds (``auth_jwt_leeway``).
        clock: where "now" comes from.

    Raises:
        IssueError: not 3 or 5 dot-separated parts, or a header that is not base64url JSON.
        KeySourceError: a key file the gateway would refuse.
    """
    token = token.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    parts = token.split(".")
    if len(parts) not in (3, 5):
        raise IssueError(f"not a compact JWS (3 parts) or JWE (5 parts): {len(parts)} part(s)")
    header = decode_header(token)
    if len(parts) == 5:
        return _inspect_jwe(token, header, key_files, leeway, clock)
    result = Inspection("JWS", len(token), header)
    _set_claims(result, b64url_decode(parts[1], "payload"))
    if key_files:
        files = [(path, load_jwk_set_file(path)) for path in key_files]
        keys = KeySet.merge(ks for _, ks in files)
        verifier = Verifier(keys, leeway=leeway, clock=clock, cache_size=0, negative_cache_size=0)
        try:
            vt = verifier.verify(token)
        except TokenError as err:
            result.verified, result.error = False, err
        else:
            result.verified = True
            entry = verifying_entry(keys, token, vt)
            result.key = f"{describe_entry(entry, files, vt.kid)}, {vt.header.get('alg')}"
    return result


def _inspect_jwe(token: str, header: dict[str, Any], key_files: Sequence[str], leeway: float,
                 clock: Clock) -> Inspection:
    result = Inspection("JWE", len(token), header, note="encrypted")
    if not key_files:
        return result
    try:
        plaintext, result.key = _decrypt(token, header, key_files)
    except TokenError as err:
        result.verified, result.error = False, err
        return result
    result.verified = True
    cty = header.get("cty")
    if isinstance(cty, str) and cty.upper() == "JWT":
        result.note = "nested: a signed JWT inside"
        result.inner = inspect_token(plaintext.decode("ascii", "replace"), key_files, leeway=leeway,
                                     clock=clock)
    else:
        _set_claims(result, plaintext)
    return result


def _set_claims(result: Inspection, payload: bytes) -> None:
    try:
        result.claims = parse_json_object(payload, "the payload")
        result.note = "" if result.kind == "JWS" else "encrypted claims"
    except IssueError as err:
        result.note = str(err)
