"""JWS Compact JWT verification: the per-request security boundary.

Follows RFC 7515 §5.2 (validation), RFC 7519 §7.2 (JWT validation), RFC 8725 (JWT BCP) and
NGINX Plus ``auth_jwt`` semantics. Every byte of the token is hostile:

* size first, then strict shape: ``header.payload.signature``, each strict base64url
  (RFC 7515 §2: no padding, no whitespace, canonical trailing bits); 5 parts is a JWE.
* header: a JSON object (no duplicate members, no NaN, nesting <= 32), ``alg`` a supported
  string (never ``none``, RFC 8725 §3.1), no ``crit`` (RFC 7515 §4.1.11: we understand no
  extension), ``kid`` a string. ``jwk``/``jku``/``x5u``/``x5c``/``x5t`` are ignored: keys come
  only from the configured :class:`~jwtgate.jose.keys.KeySet`.
* keys: ``KeySet.candidates(alg, kid)``, each tried with joserfc's algorithm object for exactly
  that ``alg``, which the key was checked against at load time (no algorithm confusion).
* payload: parsed only after the signature verified; a JSON object whose ``exp``/``nbf`` are
  numbers; ``now >= exp + leeway`` is expired, ``now < nbf - leeway`` not yet valid.

Anything else raised underneath is turned into :class:`~jwtgate.errors.TokenError`; no other
exception leaves :meth:`Verifier.verify`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import TokenError
from .cache import NegativeCache, VerifiedTokenCache
from .keys import ALG_MODELS, KeySet

__all__ = ["VerifiedToken", "Verifier", "MAX_JSON_DEPTH"]

#: Deepest JSON nesting accepted in a header or payload (top-level object is depth 1).
MAX_JSON_DEPTH = 32

# Three base64url segments; the signature may be empty so that alg "none" reports as such.
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
# Last character allowed for a segment of length % 4 == 2 / 3: the unused bits must be zero.
_CANONICAL_TAIL = {2: "AQgw", 3: "AEIMQUYcgkosw048"}
# An unsupported alg is named in the error log only if it looks like an algorithm name.
_PRINTABLE_ALG = re.compile(r"[A-Za-z0-9+_-]{1,20}")
# Codes worth remembering in the negative cache: the ones that cost a verification attempt.
_NEGATIVE_CODES = frozenset({"bad_signature", "no_key"})
_NOT_SET = object()
# Parsed headers by their base64url text: one issuer's tokens share a header, so parse it once.
_HEADER_CACHE_SIZE = 256


def _b64url_decode(segment: str) -> bytes:
    """Decode a segment already known to be in the base64url alphabet (RFC 7515 §2)."""
    rem = len(segment) & 3
    if rem:
        if rem == 1 or segment[-1] not in _CANONICAL_TAIL[rem]:
            raise TokenError("malformed", "invalid base64url segment")
        segment += "=="[: 4 - rem]
    return base64.urlsafe_b64decode(segment)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # RFC 7515 §5.2 step 4 / RFC 7519 §4: we choose to reject
        raise ValueError("duplicate member name")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError("NaN/Infinity are not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_object, parse_constant=_no_constant)


def _too_deep(obj: Any) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _decode_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse ``raw`` as a JSON object (RFC 8259, UTF-8), bounded in depth."""
    try:
        obj = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise TokenError("malformed", f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise TokenError("malformed", f"{what} is not a JSON object")
    # Fewer brackets than the limit cannot nest deeper than it: skip the walk on normal tokens.
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _too_deep(obj):
        raise TokenError("malformed", f"{what} nests deeper than {MAX_JSON_DEPTH}")
    return obj


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """RFC 7519 §2 NumericDate: a JSON number (not a boolean), as float seconds; None if absent."""
    value = claims.get(name, _NOT_SET)
    if value is _NOT_SET:
        return None
    if type(value) is int or type(value) is float:
        try:
            return float(value)
        except OverflowError:
            pass
    raise TokenError("bad_claims", f'"{name}" is not a number')


def _parse_header(header_b64: str) -> tuple[dict[str, Any], str, str | None]:
    """Decode and police a JOSE header (RFC 7515 §4, §5.2; RFC 8725 §3.1).

    Returns ``(header, alg, kid)``; raises :class:`TokenError` for anything we do not accept.
    """
    header = _decode_object(_b64url_decode(header_b64), "JOSE header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenError("malformed", 'header "alg" is missing or not a string')
    if alg not in ALG_MODELS:
        if alg.lower() == "none":
            raise TokenError("unsupported_alg", 'alg "none" is never accepted')
        shown = alg if _PRINTABLE_ALG.fullmatch(alg) else "(unprintable)"  # no raw token bytes in logs
        raise TokenError("unsupported_alg", f"alg {shown} is not supported")
    if "crit" in header:  # we implement no extension, so every crit member is unknown to us
        raise TokenError("crit", "critical header extensions are not supported")
    if header.get("b64", True) is not True:  # RFC 7797 unencoded payload
        raise TokenError("crit", "unencoded payload (b64) is not supported")
    kid = header.get("kid")
    if "kid" in header and not isinstance(kid, str):
        raise TokenError("malformed", 'header "kid" is not a string')
    # jwk, jku, x5u, x5c, x5t are deliberately ignored: keys come only from the KeySet.
    return header, alg, kid


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A JWT whose signature verified.

    Attributes:
        header: the JOSE header (a dict; shared with the cache, treat as read-only).
        claims: the JWT Claims Set (a dict; shared with the cache, treat as read-only).
        payload: the raw decoded payload bytes (``$jwt_payload``).
        kid: ``kid`` of the key that verified it (``None`` for a key without one).
        exp: ``exp`` in seconds since the epoch, or ``None``.
        nbf: ``nbf`` in seconds since the epoch, or ``None``.
    """

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    payload: bytes
    kid: str | None
    exp: float | None
    nbf: float | None


class Verifier:
    """Verifies compact JWS JWTs against one :class:`KeySet`.

    Args:
        keys: the keys tokens may be signed with.
        leeway: clock skew tolerance for ``exp``/``nbf``, seconds (``auth_jwt_leeway``).
        max_token_size: longest token accepted, in characters.
        clock: where "now" comes from (``clock.wall()``, seconds since the epoch).
        cache_size: verified-token cache entries; 0 disables it.
        negative_cache_size: failed-token cache entries; 0 disables it.
    """

    __slots__ = ("keys", "leeway", "max_token_size", "cache", "negative_cache", "_wall", "_headers")

    def __init__(
        self,
        keys: KeySet,
        *,
        leeway: float = 0.0,
        max_token_size: int = 16384,
        clock: Clock = SYSTEM_CLOCK,
        cache_size: int = 100_000,
        negative_cache_size: int = 1024,
    ) -> None:
        self.keys = keys
        self.leeway = float(leeway)
        self.max_token_size = max_token_size
        self.cache = VerifiedTokenCache(cache_size) if cache_size > 0 else None
        self.negative_cache = NegativeCache(negative_cache_size) if negative_cache_size > 0 else None
        self._wall = clock.wall
        self._headers: dict[str, tuple[dict[str, Any], str, str | None]] = {}

    def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` (the compact JWS text, without ``Bearer``) and its ``exp``/``nbf``.

        Returns:
            The :class:`VerifiedToken`, possibly from the cache (time claims re-checked).

        Raises:
            TokenError: with ``code`` one of ``too_large``, ``malformed``, ``wrong_type``,
                ``unsupported_alg``, ``crit``, ``no_key``, ``bad_signature``, ``bad_claims``,
                ``expired``, ``not_yet_valid``. Nothing else escapes.
        """
        if type(token) is not str:
            raise TokenError("malformed", "token is not text")
        if len(token) > self.max_token_size:
            raise TokenError("too_large", f"token longer than {self.max_token_size} characters")
        cache = self.cache
        if cache is not None:
            vt = cache.get(token)
            if vt is not None:
                try:
                    self.check_times(vt)
                except TokenError:
                    cache.discard(token)
                    raise
                return vt
        negative = self.negative_cache
        if negative is not None:
            code = negative.get(token)
            if code is not None:
                raise TokenError(code, "token rejected earlier (negative cache)")
        try:
            vt = self._verify_signed(token)
        except TokenError as err:
            if negative is not None and err.code in _NEGATIVE_CODES:
                negative.put(token, err.code)
            raise
        except Exception as err:  # fail closed on anything unforeseen; never leak it upward
            raise TokenError("malformed", f"token could not be processed ({type(err).__name__})") from None
        self.check_times(vt)
        if cache is not None:  # only tokens valid right now are cached
            cache.put(token, vt)
        return vt

    def check_times(self, vt: VerifiedToken) -> None:
        """Reject ``vt`` if expired or not yet valid at ``clock.wall()`` (RFC 7519 §4.1.4-5).

        Raises:
            TokenError: ``expired`` when ``now >= exp + leeway``; ``not_yet_valid`` when
                ``now < nbf - leeway``.
        """
        now = self._wall()
        if vt.exp is not None and now >= vt.exp + self.leeway:
            raise TokenError("expired", "token has expired")
        if vt.nbf is not None and now < vt.nbf - self.leeway:
            raise TokenError("not_yet_valid", "token is not valid yet")

    def _verify_signed(self, token: str) -> VerifiedToken:
        """Shape, header policy, signature and claim types; not the time checks."""
        m = _COMPACT.fullmatch(token)
        if m is None:
            parts = token.count(".") + 1
            if parts == 5:
                raise TokenError("wrong_type", "5-part token: a JWE where a signed JWT is expected")
            if parts != 3:
                raise TokenError("malformed", f"a compact JWS has 3 parts, this token has {parts}")
            raise TokenError("malformed", "token parts are not base64url")
        header_b64, payload_b64, sig_b64 = m.groups()

        parsed = self._headers.get(header_b64)
        if parsed is None:
            parsed = _parse_header(header_b64)
            if len(self._headers) >= _HEADER_CACHE_SIZE:
                self._headers.clear()  # crude bound: distinct headers are few in real traffic
            self._headers[header_b64] = parsed
        header, alg, kid = parsed
        model = ALG_MODELS[alg]

        candidates = self.keys.candidates(alg, kid)
        if not candidates:
            raise TokenError("no_key", f"no key for alg {alg}" + (" and this kid" if kid is not None else ""))
        if not sig_b64:
            raise TokenError("bad_signature", "empty signature")
        signature = _b64url_decode(sig_b64)
        signing_input = token[: m.end(2)].encode("ascii")  # RFC 7515 §5.2 step 8
        for entry in candidates:
            if alg not in entry.algorithms:  # invariant of candidates(); kept as a second lock
                continue
            try:
                if model.verify(signing_input, signature, entry.key):
                    break
            except Exception:  # a malformed signature for this key type is just a mismatch
                continue
        else:
            raise TokenError("bad_signature", "signature does not verify with any candidate key")

        payload = _b64url_decode(payload_b64)
        claims = _decode_object(payload, "JWT payload")
        return VerifiedToken(
            header=header,
            claims=claims,
            payload=payload,
            kid=entry.kid,
            exp=_numeric_date(claims, "exp"),
            nbf=_numeric_date(claims, "nbf"),
        )
