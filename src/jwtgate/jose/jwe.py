"""JWE Compact decryption (RFC 7516 §5.2) under jwtgate's policy, for ``auth_jwt_type
encrypted | nested``.

Our code decides everything before joserfc does any cryptography:

* shape: five strict base64url parts (RFC 7516 §7.1); the encrypted key is empty exactly for
  ``dir``; initialization vector, ciphertext and tag are never empty.
* header: one JSON object (no duplicate members, bounded depth and size); ``alg`` one of
  :data:`~jwtgate.jose.keys.JWE_KEY_ALGORITHMS` and ``enc`` one of
  :data:`~jwtgate.jose.keys.JWE_CONTENT_ALGORITHMS` (``RSA1_5``, ``PBES2-*`` and ``ECDH-ES*`` are
  refused by name: padding oracles, password guessing and invalid-curve attacks stay out);
  no ``zip`` (RFC 7516 §4.1.3: a small token must not inflate into a large one); no ``crit``
  (RFC 7516 §4.1.13 by way of RFC 7515 §4.1.11: we understand no extension); ``kid`` a string.
  ``jwk``, ``jku``, ``x5u``, ``x5c`` and ``epk`` never find a key.
* keys: :meth:`~jwtgate.jose.keys.KeySet.decrypt_candidates` (by ``kid`` when the token has one),
  each tried with a joserfc registry that allows exactly this token's ``alg`` and ``enc``.

joserfc 1.8 lacks ``RSA-OAEP-384`` and ``RSA-OAEP-512`` (RSAES-OAEP with SHA-384/SHA-512 and MGF1
with the same hash, IANA JOSE registry, W3C WebCrypto); :class:`RsaOaepSha2` adds them, in our
own registry only (joserfc's global registry is left untouched).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwe as joserfc_jwe
from joserfc.errors import DecodeError
from joserfc.jwa import JWE_ALG_MODELS, JWE_ENC_MODELS, JWEKeyEncryption
from joserfc.jwe import JWERegistry

from ..errors import TokenError
from .compact import MAX_HEADER_CHARS, b64url_decode, decode_object
from .keys import JWE_CONTENT_ALGORITHMS, JWE_KEY_ALGORITHMS, KeyEntry, KeySet

__all__ = ["JweHeader", "RsaOaepSha2", "split_jwe", "parse_jwe_header", "decrypt_jwe", "jwe_registry"]

_COMPACT_JWE = re.compile(
    r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_PRINTABLE = re.compile(r"[A-Za-z0-9+_.-]{1,32}")
_REFUSED = ("RSA1_5", "PBES2-", "ECDH-ES")


class RsaOaepSha2(JWEKeyEncryption):
    """``RSA-OAEP-384`` / ``RSA-OAEP-512`` for joserfc.

    Args:
        bits: 384 or 512.
    """

    key_size = 2048
    key_types = ["RSA"]

    def __init__(self, bits: int) -> None:
        algorithm = {384: hashes.SHA384, 512: hashes.SHA512}[bits]
        self.name = f"RSA-OAEP-{bits}"
        self.description = f"RSAES OAEP using SHA-{bits} and MGF1 with SHA-{bits}"
        self.padding = padding.OAEP(mgf=padding.MGF1(algorithm()), algorithm=algorithm(), label=None)
        self.recommended = False

    def encrypt_cek(self, cek: bytes, recipient: Any) -> bytes:
        key = recipient.recipient_key
        self.check_key_type(key)
        return key.get_op_key("encrypt").encrypt(cek, self.padding)  # type: ignore[no-any-return]

    def decrypt_cek(self, recipient: Any) -> bytes:
        key = recipient.recipient_key
        self.check_key_type(key)
        try:
            return key.get_op_key("decrypt").decrypt(recipient.encrypted_key, self.padding)  # type: ignore[no-any-return]
        except ValueError as err:
            raise DecodeError("RSA-OAEP decryption failed") from err


_ALG_MODELS: dict[str, Any] = {m.name: m for m in JWE_ALG_MODELS if m.name in JWE_KEY_ALGORITHMS}
for _bits in (384, 512):
    _ALG_MODELS.setdefault(f"RSA-OAEP-{_bits}", RsaOaepSha2(_bits))
_ENC_MODELS: dict[str, Any] = {m.name: m for m in JWE_ENC_MODELS if m.name in JWE_CONTENT_ALGORITHMS}
assert set(_ALG_MODELS) == set(JWE_KEY_ALGORITHMS) and set(_ENC_MODELS) == set(JWE_CONTENT_ALGORITHMS)


class _PolicyRegistry(JWERegistry):
    """A joserfc registry holding only the algorithms we accept (never ``zip``)."""

    algorithms = {"alg": _ALG_MODELS, "enc": _ENC_MODELS, "zip": {}}  # type: ignore[assignment]
    max_protected_header_length = MAX_HEADER_CHARS
    max_encrypted_key_length = 2048  # an 8192-bit RSA key wraps into 1366 base64url characters


# One registry per (alg, enc): joserfc then refuses anything but this token's own pair.
_REGISTRIES = {(a, e): _PolicyRegistry(algorithms=[a, e], strict_check_header=False)
               for a in JWE_KEY_ALGORITHMS for e in JWE_CONTENT_ALGORITHMS}


def jwe_registry(alg: str, enc: str) -> JWERegistry:
    """The registry allowing exactly ``alg`` and ``enc`` (both must be accepted algorithms);
    also usable to *encrypt* test tokens with ``RSA-OAEP-384``/``-512``."""
    return _REGISTRIES[(alg, enc)]


@dataclass(frozen=True, slots=True)
class JweHeader:
    """A JWE protected header that passed the policy."""

    header: dict[str, Any]
    alg: str
    enc: str
    kid: str | None


def _shown(name: str) -> str:
    return name if _PRINTABLE.fullmatch(name) else "(unprintable)"  # no raw token bytes in logs


def split_jwe(token: str) -> tuple[str, ...] | None:
    """The five parts of a compact JWE, or ``None`` when ``token`` is not shaped as one.

    Raises:
        TokenError: ``malformed`` when a part is not canonical base64url.
    """
    m = _COMPACT_JWE.fullmatch(token)
    if m is None:
        return None
    parts = m.groups()
    for part in parts:
        if part:
            b64url_decode(part)  # canonical trailing bits, as for JWS
    return parts


def parse_jwe_header(header_b64: str) -> JweHeader:
    """Decode and police a JWE protected header.

    Raises:
        TokenError: ``malformed``, ``unsupported_alg`` (an ``alg``/``enc`` outside the lists,
            or ``zip``) or ``crit``.
    """
    if len(header_b64) > MAX_HEADER_CHARS:
        raise TokenError("malformed", f"JWE header longer than {MAX_HEADER_CHARS} characters")
    header = decode_object(b64url_decode(header_b64), "JWE header")
    alg, enc = header.get("alg"), header.get("enc")
    if not isinstance(alg, str):
        raise TokenError("malformed", 'JWE header "alg" is missing or not a string')
    if alg not in JWE_KEY_ALGORITHMS:
        why = "is refused" if alg.startswith(_REFUSED) else "is not supported"
        raise TokenError("unsupported_alg", f"JWE alg {_shown(alg)} {why}")
    if not isinstance(enc, str):
        raise TokenError("malformed", 'JWE header "enc" is missing or not a string')
    if enc not in JWE_CONTENT_ALGORITHMS:
        raise TokenError("unsupported_alg", f"JWE enc {_shown(enc)} is not supported")
    if "zip" in header:
        raise TokenError("unsupported_alg", "compressed JWE (zip) is refused")
    if "crit" in header:
        raise TokenError("crit", "critical header extensions are not supported")
    kid = header.get("kid")
    if "kid" in header and not isinstance(kid, str):
        raise TokenError("malformed", 'JWE header "kid" is not a string')
    return JweHeader(header, alg, enc, kid)


def decrypt_jwe(token: str, parts: tuple[str, ...], head: JweHeader, keys: KeySet) -> tuple[bytes, KeyEntry]:
    """Decrypt a compact JWE whose header passed :func:`parse_jwe_header`.

    Returns:
        The plaintext and the key entry that decrypted it.

    Raises:
        TokenError: ``malformed`` (encrypted key present for ``dir`` or absent otherwise),
            ``no_key`` (no candidate key), ``bad_decryption`` (no candidate key decrypts it:
            wrong key, or ciphertext, tag, IV or header altered).
    """
    if (head.alg == "dir") != (parts[1] == ""):
        raise TokenError("malformed", "JWE encrypted key must be empty exactly for alg dir")
    candidates = keys.decrypt_candidates(head.alg, head.enc, head.kid)
    if not candidates:
        raise TokenError("no_key", f"no key for JWE alg {head.alg}/{head.enc}"
                         + (" and this kid" if head.kid is not None else ""))
    registry = _REGISTRIES[(head.alg, head.enc)]
    for entry in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = joserfc_jwe.decrypt_compact(token, entry.decrypt_key, registry=registry)
        except Exception:  # a wrong key, a bad tag: try the next candidate
            continue
        if obj.plaintext is not None:
            return obj.plaintext, entry
    raise TokenError("bad_decryption", "token does not decrypt with any candidate key")
