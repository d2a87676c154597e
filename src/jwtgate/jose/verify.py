"""JWT verification (JWS, JWE, nested): the per-request security boundary.

Follows RFC 7515 §5.2 (JWS validation), RFC 7516 §5.2 (JWE decryption), RFC 7519 §7.2 (JWT
validation), RFC 8725 (JWT BCP) and NGINX Plus ``auth_jwt`` semantics. Every byte of the
token is hostile:

* size first, then strict shape: ``header.payload.signature``, each strict base64url
  (RFC 7515 §2: no padding, no whitespace, canonical trailing bits); 5 parts is a JWE, which
  a ``signed`` Verifier refuses as the wrong type (and an ``encrypted``/``nested`` one a JWS).
* header: a JSON object (no duplicate members, no NaN, nesting <= 32, at most
  :data:`~jwtgate.jose.compact.MAX_HEADER_CHARS`), ``alg`` a supported string (never ``none``,
  RFC 8725 §3.1), no ``crit`` (RFC 7515 §4.1.11: we understand no extension), ``kid`` a string.
  ``jwk``/``jku``/``x5u``/``x5c``/``x5t`` are ignored: keys come only from the configured
  :class:`~jwtgate.jose.keys.KeySet`.
* keys: ``KeySet.candidates(alg, kid)``, each tried with joserfc's algorithm object for exactly
  that ``alg``, which the key was checked against at load time (no algorithm confusion).
  JWE: :mod:`jwtgate.jose.jwe` (its own algorithm allow-list, no ``zip``).
* payload: parsed only after the signature verified (or the JWE decrypted); a JSON object whose
  ``exp``/``nbf`` are numbers; ``now >= exp + leeway`` is expired, ``now < nbf - leeway`` not
  yet valid. A nested token's inner JWS is verified with the same keys and rules.

Anything else raised underneath is turned into :class:`~jwtgate.errors.TokenError`; no other
exception leaves :meth:`Verifier.verify`.
"""

from __future__ import annotations

import math

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import TokenError
from .cache import NegativeCache, VerifiedTokenCache
from .compact import MAX_HEADER_CHARS, MAX_JSON_DEPTH, b64url_decode, decode_object
from .jwe import decrypt_jwe, parse_jwe_header, split_jwe
from .keys import ALG_MODELS, KeySet

__all__ = ["VerifiedToken", "Verifier", "MAX_JSON_DEPTH", "TOKEN_TYPES", "DEFAULT_CACHE_SIZE",
           "DEFAULT_MAX_TOKEN_SIZE"]

#: ``auth_jwt_type`` values.
TOKEN_TYPES = ("signed", "encrypted", "nested")
#: Verified-token cache entries by default (``auth_jwt_cache``).
DEFAULT_CACHE_SIZE = 100_000
#: Longest token accepted by default, in characters (``auth_jwt_max_token_size``).
DEFAULT_MAX_TOKEN_SIZE = 16384

# Three base64url segments; the signature may be empty so that alg "none" reports as such.
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
# An unsupported alg is named in the error log only if it looks like an algorithm name.
_PRINTABLE_ALG = re.compile(r"[A-Za-z0-9+_-]{1,20}")
# Codes worth remembering in the negative cache: the ones that cost a verification attempt.
_NEGATIVE_CODES = frozenset({"bad_signature", "bad_decryption", "no_key"})
_NOT_SET = object()
# Parsed headers by their base64url text: one issuer's tokens share a header, so parse it once.
_HEADER_CACHE_SIZE = 256
# Backwards-compatible names (older callers and tests).
_b64url_decode = b64url_decode
_decode_object = decode_object


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """RFC 7519 §2 NumericDate: a JSON number (not a boolean), as float seconds; None if absent."""
    value = claims.get(name, _NOT_SET)
    if value is _NOT_SET:
        return None
    if type(value) is int or type(value) is float:
        try:
            number = float(value)
        except OverflowError:
            pass
        else:
            if math.isfinite(number):  # 1e400 parses as infinity: never "never expires"
                return number
    raise TokenError("bad_claims", f'"{name}" is not a number')


def _parse_header(header_b64: str) -> tuple[dict[str, Any], str, str | None]:
    """Decode and police a JOSE header (RFC 7515 §4, §5.2; RFC 8725 §3.1).

    Returns ``(header, alg, kid)``; raises :class:`TokenError` for anything we do not accept.
    """
    if len(header_b64) > MAX_HEADER_CHARS:
        raise TokenError("malformed", f"JOSE header longer than {MAX_HEADER_CHARS} characters")
    header = decode_object(b64url_decode(header_b64), "JOSE header")
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
    """A JWT whose signature verified (or, for ``encrypted``, that decrypted).

    Attributes:
        header: the JOSE header (a dict; shared with the cache, treat as read-only): the JWS
            header, or for an ``encrypted`` token the JWE header. For a ``nested`` token it is
            the inner JWS header (the one whose key authenticated the claims).
        claims: the JWT Claims Set (a dict; shared with the cache, treat as read-only).
        payload: the raw payload bytes: the JWS payload; the decrypted claims JSON of an
            ``encrypted`` token; the enclosed JWS text of a ``nested`` one.
        kid: ``kid`` of the key that verified it (``None`` for a key without one).
        exp: ``exp`` in seconds since the epoch, or ``None``.
        nbf: ``nbf`` in seconds since the epoch, or ``None``.
        kind: ``signed``, ``encrypted`` or ``nested``.
        jwe_header: the JWE header of an ``encrypted`` or ``nested`` token, else ``None``.
    """

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    payload: bytes
    kid: str | None
    exp: float | None
    nbf: float | None
    kind: str = "signed"
    jwe_header: Mapping[str, Any] | None = None


class Verifier:
    """Verifies compact JWTs of one ``auth_jwt_type`` against one :class:`KeySet`.

    Args:
        keys: the keys tokens may be signed with (or encrypted to).
        token_type: ``signed`` (JWS), ``encrypted`` (JWE whose plaintext is the claims) or
            ``nested`` (a JWS inside a JWE, RFC 7519 §5.2); a token of another type is refused.
        leeway: clock skew tolerance for ``exp``/``nbf``, seconds (``auth_jwt_leeway``).
        max_token_size: longest token accepted, in characters (``auth_jwt_max_token_size``).
        clock: where "now" comes from (``clock.wall()``, seconds since the epoch).
        cache_size: verified-token cache entries; 0 disables it (``auth_jwt_cache``).
        negative_cache_size: failed-token cache entries; 0 disables it.
        on_unknown_kid: called with the ``kid`` of a token for which no key has that ``kid``
            (a remote key source may refetch, rate-limited); must not raise and never waits.
    """

    __slots__ = ("keys", "token_type", "leeway", "max_token_size", "cache", "negative_cache", "on_unknown_kid",
                 "_wall", "_headers")

    def __init__(
        self,
        keys: KeySet,
        *,
        token_type: str = "signed",
        leeway: float = 0.0,
        max_token_size: int = DEFAULT_MAX_TOKEN_SIZE,
        clock: Clock = SYSTEM_CLOCK,
        cache_size: int = DEFAULT_CACHE_SIZE,
        negative_cache_size: int = 1024,
        on_unknown_kid: Callable[[str], None] | None = None,
    ) -> None:
        if token_type not in TOKEN_TYPES:
            raise ValueError(f"token_type must be one of {TOKEN_TYPES}")
        self.keys = keys
        self.token_type = token_type
        self.leeway = float(leeway)
        self.max_token_size = max_token_size
        self.cache = VerifiedTokenCache(cache_size) if cache_size > 0 else None
        self.negative_cache = NegativeCache(negative_cache_size) if negative_cache_size > 0 else None
        self.on_unknown_kid = on_unknown_kid
        self._wall = clock.wall
        self._headers: dict[str, tuple[dict[str, Any], str, str | None]] = {}

    def __repr__(self) -> str:
        size = self.cache.maxsize if self.cache is not None else 0
        return f"<Verifier {self.token_type} {self.keys!r} cache={size}>"

    def set_keys(self, keys: KeySet) -> None:
        """Swap in a new key set (a remote JWKS changed): one assignment, then both caches are
        flushed, so no token verified by a key that left the set is served from the cache."""
        self.keys = keys
        if self.cache is not None:
            self.cache.clear()
        if self.negative_cache is not None:
            self.negative_cache.clear()

    def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` (the compact text, without ``Bearer``) and its ``exp``/``nbf``.

        Returns:
            The :class:`VerifiedToken`, possibly from the cache (time claims re-checked).

        Raises:
            TokenError: with ``code`` one of ``too_large``, ``malformed``, ``wrong_type``,
                ``unsupported_alg``, ``crit``, ``no_key``, ``bad_signature``,
                ``bad_decryption``, ``bad_claims``, ``expired``, ``not_yet_valid``. Nothing
                else escapes.
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
        keys = self.keys
        try:
            vt = self._verify_signed(token, keys) if self.token_type == "signed" else self._verify_encrypted(token, keys)
        except TokenError as err:
            # Only remember the failure if the keys did not change meanwhile (set_keys flushed).
            # An unknown kid is not remembered when a remote source may still learn it: the
            # hook (rate-limited there) must see the token again; no_key costs no cryptography.
            if (negative is not None and err.code in _NEGATIVE_CODES and keys is self.keys
                    and not (err.code == "no_key" and self.on_unknown_kid is not None)):
                negative.put(token, err.code)
            raise
        except Exception as err:  # fail closed on anything unforeseen; never leak it upward
            raise TokenError("malformed", f"token could not be processed ({type(err).__name__})") from None
        self.check_times(vt)
        if cache is not None and keys is self.keys:  # only tokens valid right now are cached
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

    def _unknown_kid(self, kid: str | None) -> None:
        hook = self.on_unknown_kid
        if hook is not None and kid is not None:
            try:
                hook(kid)
            except Exception:  # a hook never decides a request
                pass

    def _verify_signed(self, token: str, keys: KeySet) -> VerifiedToken:
        """Shape, header policy, signature and claim types of a JWS; not the time checks."""
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

        candidates = keys.candidates(alg, kid)
        if not candidates:
            self._unknown_kid(kid)
            raise TokenError("no_key", f"no key for alg {alg}" + (" and this kid" if kid is not None else ""))
        if not sig_b64:
            raise TokenError("bad_signature", "empty signature")
        signature = b64url_decode(sig_b64)
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

        payload = b64url_decode(payload_b64)
        claims = decode_object(payload, "JWT payload")
        return VerifiedToken(
            header=header,
            claims=claims,
            payload=payload,
            kid=entry.kid,
            exp=_numeric_date(claims, "exp"),
            nbf=_numeric_date(claims, "nbf"),
        )

    def _verify_encrypted(self, token: str, keys: KeySet) -> VerifiedToken:
        """A JWE (``encrypted``) or a JWS inside a JWE (``nested``); not the time checks."""
        parts = split_jwe(token)
        if parts is None:
            n = token.count(".") + 1
            if n == 3:
                raise TokenError("wrong_type", f"a signed JWT where an {self.token_type} one is expected")
            raise TokenError("malformed", f"a compact JWE has 5 parts, this token has {n}"
                             if n != 5 else "token parts are not base64url")
        head = parse_jwe_header(parts[0])
        try:
            plaintext, entry = decrypt_jwe(token, parts, head, keys)
        except TokenError as err:
            if err.code == "no_key":
                self._unknown_kid(head.kid)
            raise
        inner = _COMPACT.fullmatch(plaintext.decode("ascii", "replace")) if plaintext[:2] == b"ey" else None
        if self.token_type == "encrypted":
            if inner is not None:
                raise TokenError("wrong_type", "a nested JWT where an encrypted one is expected")
            claims = decode_object(plaintext, "JWE payload")
            return VerifiedToken(header=head.header, claims=claims, payload=plaintext, kid=entry.kid,
                                 exp=_numeric_date(claims, "exp"), nbf=_numeric_date(claims, "nbf"),
                                 kind="encrypted", jwe_header=head.header)
        if inner is None:
            raise TokenError("wrong_type", "the JWE does not enclose a signed JWT (nested expected)")
        vt = self._verify_signed(inner.group(0), keys)
        return replace(vt, payload=plaintext, kind="nested", jwe_header=head.header)
