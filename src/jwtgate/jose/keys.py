"""Key sets for JWT verification: JWK Sets (RFC 7517 §5) turned into immutable, pre-indexed sets.

A :class:`KeySet` is built once, when a configuration (``auth_jwt_key_file``) is loaded, and is
then only read on the request path. Every key is imported through joserfc, stripped to its
public half when it is asymmetric, and tagged with the exact set of JWS algorithms it may
verify (RFC 8725 §3.1: the algorithm comes from the key, never from the token alone).

Algorithm families (RFC 7518 §3, RFC 8037 §3.1, RFC 8812 §3.2, RFC 9864)::

    oct            HS256 HS384 HS512
    RSA            RS256 RS384 RS512 PS256 PS384 PS512
    EC P-256       ES256          EC P-384  ES384       EC P-521  ES512     EC secp256k1  ES256K
    OKP Ed25519    EdDSA Ed25519  OKP Ed448 EdDSA Ed448 (X25519/X448 sign nothing)

A JWK ``alg`` member narrows the key to that one algorithm; ``use: "enc"`` or a ``key_ops``
without ``"verify"`` leave it with no signature algorithm at all.

Decryption (JWE, RFC 7516; ``auth_jwt_type encrypted | nested``) is bound the same way, by
:func:`_decryption`: an ``oct`` key decrypts with the key-management algorithms its length fits
(16/24/32 bytes: ``A128KW``/``A128GCMKW``...; ``dir`` with every content encryption whose key
is that long), an ``RSA`` key with a private part with ``RSA-OAEP``, ``-256``, ``-384``, ``-512``.
A JWK ``alg`` narrows that to one algorithm (a content encryption ``alg`` such as ``A128GCM``
means ``dir`` with that encryption, RFC 7520 §5.6); ``use: "sig"`` or a ``key_ops`` without
``decrypt``/``unwrapKey`` leave it with none. Only decryption entries keep a private half
(``KeyEntry.decrypt_key``). ``PBES2-*``, ``ECDH-ES*`` and ``RSA1_5`` decrypt nothing here.

Errors are :class:`~jwtgate.errors.KeySourceError`; their messages name the source and the key's
position or ``kid``, never key material.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSAlgModel, JWSRegistry

from ..errors import KeySourceError

__all__ = [
    "KeyEntry",
    "KeySet",
    "parse_jwk_set",
    "load_jwk_set_file",
    "read_key_file",
    "hmac_key_warnings",
    "ALG_MODELS",
    "SUPPORTED_ALGORITHMS",
    "JWE_KEY_ALGORITHMS",
    "JWE_CONTENT_ALGORITHMS",
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
]

#: Largest JWK Set document accepted, in bytes (a file or a remote JWKS body).
MAX_JWKS_BYTES = 1 << 20
#: Most keys accepted in one JWK Set (a file or a remote JWKS body).
MAX_JWKS_KEYS = 1000

#: JWE key management algorithms accepted (RFC 7518 §4.1, RFC 7518 §4.3 with SHA-2 OAEP as
#: registered by W3C WebCrypto): the NGINX Plus list. Everything else (``RSA1_5``, ``PBES2-*``,
#: ``ECDH-ES*``) is refused before any decryption is attempted.
JWE_KEY_ALGORITHMS: tuple[str, ...] = (
    "dir", "A128KW", "A192KW", "A256KW", "A128GCMKW", "A192GCMKW", "A256GCMKW",
    "RSA-OAEP", "RSA-OAEP-256", "RSA-OAEP-384", "RSA-OAEP-512",
)
#: JWE content encryption algorithms accepted (RFC 7518 §5.1) -> content encryption key bytes.
JWE_CONTENT_ALGORITHMS: dict[str, int] = {
    "A128CBC-HS256": 32, "A192CBC-HS384": 48, "A256CBC-HS512": 64,
    "A128GCM": 16, "A192GCM": 24, "A256GCM": 32,
}
# Key-wrapping algorithms -> the key length in bytes they need.
_WRAP_BYTES = {"A128KW": 16, "A192KW": 24, "A256KW": 32, "A128GCMKW": 16, "A192GCMKW": 24, "A256GCMKW": 32}
_RSA_OAEP = ("RSA-OAEP", "RSA-OAEP-256", "RSA-OAEP-384", "RSA-OAEP-512")

_HS = ("HS256", "HS384", "HS512")
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_BY_CURVE = {"P-256": ("ES256",), "P-384": ("ES384",), "P-521": ("ES512",), "secp256k1": ("ES256K",)}
_OKP_BY_CURVE = {"Ed25519": ("EdDSA", "Ed25519"), "Ed448": ("EdDSA", "Ed448")}
_KEY_CLASSES: dict[str, Any] = {"oct": OctKey, "RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}


def _build_alg_models() -> dict[str, JWSAlgModel]:
    names = set(_HS) | set(_RSA)
    for algs in (*_EC_BY_CURVE.values(), *_OKP_BY_CURVE.values()):
        names.update(algs)
    models: dict[str, JWSAlgModel] = {}
    # joserfc warns about "EdDSA" (deprecated by RFC 9864) on every lookup; do it once, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(names):
            if name in JWSRegistry.algorithms:  # skip what this joserfc version lacks
                models[name] = JWSRegistry(algorithms=[name]).get_alg(name)
    return models


#: JWS algorithm name -> joserfc algorithm object. Never contains ``none``.
ALG_MODELS: dict[str, JWSAlgModel] = _build_alg_models()
#: Every JWS ``alg`` a token may carry and still be considered.
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(ALG_MODELS)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One verification key.

    Attributes:
        kid: the JWK ``kid`` (RFC 7517 §4.5), or ``None``.
        kty: ``"oct"``, ``"RSA"``, ``"EC"`` or ``"OKP"``.
        alg: the JWK ``alg`` member, or ``None``.
        use: the JWK ``use`` member (``"sig"``/``"enc"``), or ``None``.
        algorithms: the JWS algorithms this key may verify (empty: it verifies nothing).
        key: the joserfc key object; public-only for asymmetric keys.
        decrypt_algorithms: the JWE key management algorithms this key may decrypt with.
        dir_encs: with ``dir`` in ``decrypt_algorithms``: the content encryptions it fits.
        decrypt_key: the joserfc key that decrypts (with its private half), or ``None``.
    """

    kid: str | None
    kty: str
    alg: str | None
    use: str | None
    algorithms: frozenset[str]
    key: Any = field(repr=False, hash=False)
    decrypt_algorithms: frozenset[str] = frozenset()
    dir_encs: frozenset[str] = frozenset()
    decrypt_key: Any = field(default=None, repr=False, hash=False, compare=False)

    def __repr__(self) -> str:  # never key material
        dec = f", decrypts={sorted(self.decrypt_algorithms)!r}" if self.decrypt_algorithms else ""
        return f"KeyEntry(kid={self.kid!r}, kty={self.kty!r}, algorithms={sorted(self.algorithms)!r}{dec})"


class KeySet:
    """An immutable, pre-indexed set of :class:`KeyEntry`.

    Args:
        entries: the keys, in file order (order decides which key is tried first).
        source: where they came from (file path, URL), for messages.
        skipped: human notes on JWKs that were ignored (unknown ``kty``), for ``jwtgate check``.
    """

    __slots__ = ("entries", "source", "skipped", "_by_alg", "_by_alg_kid", "_dec_by_alg", "_dec_by_alg_kid")

    def __init__(self, entries: Iterable[KeyEntry], source: str = "", *, skipped: Iterable[str] = ()) -> None:
        self.entries: tuple[KeyEntry, ...] = tuple(entries)
        self.source = source
        self.skipped: tuple[str, ...] = tuple(skipped)
        by_alg: dict[str, list[KeyEntry]] = {}
        by_alg_kid: dict[tuple[str, str], list[KeyEntry]] = {}
        for entry in self.entries:
            if entry.use == "enc":  # RFC 7517 §4.2: an encryption key never verifies signatures
                continue
            for alg in entry.algorithms:
                by_alg.setdefault(alg, []).append(entry)
                if entry.kid is not None:
                    by_alg_kid.setdefault((alg, entry.kid), []).append(entry)
        # Precomputed so that candidates() is one dict lookup per request.
        self._by_alg = {alg: tuple(v) for alg, v in by_alg.items()}
        self._by_alg_kid = {k: tuple(v) for k, v in by_alg_kid.items()}
        dec_by_alg: dict[str, list[KeyEntry]] = {}
        dec_by_alg_kid: dict[tuple[str, str], list[KeyEntry]] = {}
        for entry in self.entries:
            if entry.use == "sig" or entry.decrypt_key is None:  # RFC 7517 §4.2
                continue
            for alg in entry.decrypt_algorithms:
                dec_by_alg.setdefault(alg, []).append(entry)
                if entry.kid is not None:
                    dec_by_alg_kid.setdefault((alg, entry.kid), []).append(entry)
        self._dec_by_alg = {alg: tuple(v) for alg, v in dec_by_alg.items()}
        self._dec_by_alg_kid = {k: tuple(v) for k, v in dec_by_alg_kid.items()}

    def candidates(self, alg: str, kid: str | None) -> tuple[KeyEntry, ...]:
        """Keys to try for a token with header ``alg`` and ``kid`` (NGINX Plus semantics).

        With a ``kid``: every key with that ``kid`` that may verify ``alg``; without: every key
        that may verify ``alg``. Keys with ``use == "enc"`` are never returned. Empty tuple if none.
        """
        if kid is None:
            return self._by_alg.get(alg, ())
        return self._by_alg_kid.get((alg, kid), ())

    def decrypt_candidates(self, alg: str, enc: str, kid: str | None) -> tuple[KeyEntry, ...]:
        """Keys to try for a JWE with header ``alg``, ``enc`` and ``kid`` (same rule as
        :meth:`candidates`): keys that may decrypt with ``alg`` (for ``dir``: whose length fits
        ``enc``), with that ``kid`` when the token names one. Never a ``use: "sig"`` key."""
        found = self._dec_by_alg.get(alg, ()) if kid is None else self._dec_by_alg_kid.get((alg, kid), ())
        if alg == "dir" and found:
            return tuple(e for e in found if enc in e.dir_encs)
        return found

    @property
    def kids(self) -> frozenset[str]:
        """Every ``kid`` in the set (for logs: ``kid`` values are names, not key material)."""
        return frozenset(e.kid for e in self.entries if e.kid is not None)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[KeyEntry]:
        return iter(self.entries)

    def __repr__(self) -> str:
        return f"KeySet({len(self.entries)} keys from {self.source!r})"

    @staticmethod
    def merge(sets: Iterable[KeySet]) -> KeySet:
        """Pool several key sets (several ``auth_jwt_key_file``) into one, keeping order."""
        sets = list(sets)
        return KeySet(
            (e for s in sets for e in s.entries),
            ", ".join(s.source for s in sets if s.source),
            skipped=(note for s in sets for note in s.skipped),
        )


def _err_text(err: BaseException) -> str:
    """A safe description of a library error: joserfc messages name parameters, not values."""
    if isinstance(err, JoseError):
        return str(err)
    return type(err).__name__


def _describe(index: int, kid: Any) -> str:
    return f"key #{index}" + (f' (kid "{kid[:64]}")' if isinstance(kid, str) else "")


def _signature_algorithms(key: Any) -> tuple[str, ...]:
    """The JWS algorithms a key's type (and curve) can verify at all."""
    kty = key.key_type
    if kty == "oct":
        return _HS
    if kty == "RSA":
        return _RSA
    if kty == "EC":
        return _EC_BY_CURVE.get(key.curve_name, ())
    if kty == "OKP":
        return _OKP_BY_CURVE.get(key.curve_name, ())
    return ()


def _make_entry(jwk: dict[str, Any], kty: str, source: str, where: str) -> KeyEntry:
    kid, alg, use = jwk.get("kid"), jwk.get("alg"), jwk.get("use")
    for name, value in (("kid", kid), ("alg", alg), ("use", use)):
        if value is not None and not isinstance(value, str):
            raise KeySourceError(f'{where} in {source}: "{name}" must be a string')
    try:
        with warnings.catch_warnings():
            # Short HMAC keys are legal here (NGINX accepts them); hmac_key_warnings reports them.
            warnings.simplefilter("ignore", SecurityWarning)
            key = full = _KEY_CLASSES[kty].import_key(jwk)
            if kty != "oct" and key.is_private:
                # Verification needs only the public half; do not keep private material around.
                key = _KEY_CLASSES[kty].import_key(key.as_dict(private=False))
    except Exception as err:  # joserfc, cryptography, binascii, KeyError on an unknown curve...
        raise KeySourceError(f"{where} in {source}: invalid {kty} key: {_err_text(err)}") from None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and not isinstance(key_ops, list):
        raise KeySourceError(f'{where} in {source}: "key_ops" must be an array')
    dec_algs, dir_encs = _decryption(full, kty, alg, use, key_ops, f"{where} in {source}")
    decrypt_key = full if dec_algs else None

    family = _signature_algorithms(key)
    if alg is not None:
        if alg in SUPPORTED_ALGORITHMS and alg not in family:
            raise KeySourceError(f'{where} in {source}: "alg" {alg} does not fit a {kty} key of this kind')
        family = (alg,) if alg in family else ()  # JWE or unknown alg: the key signs nothing
    if key_ops is not None and "verify" not in key_ops:
        family = ()
    if use == "enc":
        family = ()  # RFC 7517 §4.2: an encryption key never verifies signatures
    allowed = []
    for name in family:
        model = ALG_MODELS.get(name)
        if model is None:
            continue
        try:
            model.check_key(key)  # joserfc's own use/kty/curve/alg check, once, at load time
        except JoseError:
            continue
        allowed.append(name)
    return KeyEntry(kid=kid, kty=kty, alg=alg, use=use, algorithms=frozenset(allowed), key=key,
                    decrypt_algorithms=dec_algs, dir_encs=dir_encs, decrypt_key=decrypt_key)


def _decryption(key: Any, kty: str, alg: str | None, use: str | None, key_ops: list[Any] | None,
                where: str) -> tuple[frozenset[str], frozenset[str]]:
    """The JWE key management algorithms ``key`` may decrypt with, and (for ``dir``) the
    content encryptions it fits; both empty when it decrypts nothing.

    Raises:
        KeySourceError: a JWK ``alg`` that is a JWE algorithm this key cannot do.
    """
    if use == "sig" or (key_ops is not None and not {"decrypt", "unwrapKey"} & set(key_ops)):
        return frozenset(), frozenset()
    algs: set[str] = set()
    encs: set[str] = set()
    if kty == "oct":
        size = len(key.raw_value)
        algs = {name for name, n in _WRAP_BYTES.items() if n == size}
        encs = {name for name, n in JWE_CONTENT_ALGORITHMS.items() if n == size}
        if encs:
            algs.add("dir")
    elif kty == "RSA" and key.is_private:
        algs = set(_RSA_OAEP)
    if alg is None:
        return frozenset(algs), frozenset(encs)
    if alg in JWE_KEY_ALGORITHMS:
        if alg not in algs:
            if kty == "RSA" and alg in _RSA_OAEP:
                return frozenset(), frozenset()  # a published public encryption key: not ours to use
            raise KeySourceError(f'{where}: "alg" {alg} does not fit this {kty} key')
        return frozenset({alg}), frozenset(encs if alg == "dir" else ())
    if alg in JWE_CONTENT_ALGORITHMS:  # a content encryption alg on a key: "dir" with it
        if alg not in encs:
            raise KeySourceError(f'{where}: "alg" {alg} does not fit this {kty} key')
        return frozenset({"dir"}), frozenset({alg})
    return frozenset(), frozenset()  # a JWS alg, or one we refuse (RSA1_5, PBES2, ECDH-ES)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_jwk_set(data: bytes | str, source: str) -> KeySet:
    """Parse a JWK Set (RFC 7517 §5) or a single JWK (RFC 7517 §4) into a :class:`KeySet`.

    Args:
        data: the JSON document, at most :data:`MAX_JWKS_BYTES` bytes.
        source: where it came from (path or URL), used in error messages.

    Returns:
        The key set; JWKs with an unknown ``kty`` are skipped and noted in ``KeySet.skipped``.
        It may be empty.

    Raises:
        KeySourceError: not JSON, not a JWK Set, a key that does not import, or an ``alg``
            inconsistent with its key type. The message never contains key material.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_JWKS_BYTES:
        raise KeySourceError(f"JWK Set {source} is larger than {MAX_JWKS_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8-sig"), parse_constant=_reject_constant)
    except json.JSONDecodeError as err:  # msg/position only: never echo the document
        raise KeySourceError(f"invalid JSON in {source}: {err.msg} at line {err.lineno}") from None
    except (ValueError, RecursionError) as err:
        raise KeySourceError(f"invalid JSON in {source}: {type(err).__name__}") from None

    if isinstance(doc, dict) and "keys" in doc:
        jwks = doc["keys"]
        if not isinstance(jwks, list):
            raise KeySourceError(f'invalid JWK Set in {source}: "keys" is not an array')
    elif isinstance(doc, dict) and "kty" in doc:
        jwks = [doc]  # a bare JWK: lenient, NGINX Plus wants a set
    else:
        raise KeySourceError(f'invalid JWK Set in {source}: expected an object with "keys"')

    if len(jwks) > MAX_JWKS_KEYS:
        raise KeySourceError(f"JWK Set {source} has {len(jwks)} keys, more than {MAX_JWKS_KEYS}")
    entries: list[KeyEntry] = []
    skipped: list[str] = []
    for index, jwk in enumerate(jwks):
        if not isinstance(jwk, dict):
            raise KeySourceError(f"key #{index} in {source} is not a JSON object")
        where = _describe(index, jwk.get("kid"))
        kty = jwk.get("kty")
        if not isinstance(kty, str):
            raise KeySourceError(f'{where} in {source} has no "kty"')
        if kty not in _KEY_CLASSES:
            skipped.append(f"{where}: unsupported kty {kty[:32]!r}")
            continue
        entries.append(_make_entry(jwk, kty, source, where))
    return KeySet(entries, source, skipped=skipped)


def read_key_file(path: str) -> bytes:
    """The bytes of a JWK Set file, at most :data:`MAX_JWKS_BYTES` of them.

    Raises:
        KeySourceError: unreadable or larger than :data:`MAX_JWKS_BYTES`.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JWKS_BYTES + 1)  # bounded: never slurp an arbitrary file
    except OSError as err:
        raise KeySourceError(f"cannot read key file {path}: {err.strerror or type(err).__name__}") from None
    if len(data) > MAX_JWKS_BYTES:
        raise KeySourceError(f"key file {path} is larger than {MAX_JWKS_BYTES} bytes")
    return data


def load_jwk_set_file(path: str) -> KeySet:
    """Read and parse a JWK Set file (``auth_jwt_key_file``).

    Raises:
        KeySourceError: unreadable, larger than :data:`MAX_JWKS_BYTES`, invalid (see
            :func:`parse_jwk_set`), or holding no usable key at all.
    """
    keys = parse_jwk_set(read_key_file(path), path)
    if not keys.entries:
        raise KeySourceError(f"no usable keys in {path}")
    return keys


def hmac_key_warnings(keys: KeySet) -> list[str]:
    """Warnings for HMAC keys shorter than their hash output (RFC 7518 §3.2), one line per key.

    A key is measured against the weakest algorithm it may verify: its JWK ``alg`` if it has
    one, else HS256 (a 256-bit key without ``alg`` is not flagged for HS384/HS512).
    Example: ``HMAC key "0001" is 96 bits, shorter than the 256 bits of HS256``.
    """
    out: list[str] = []
    for entry in keys.entries:
        if entry.kty != "oct" or not entry.algorithms:
            continue
        bits = len(entry.key.raw_value) * 8
        alg = min(entry.algorithms, key=lambda a: int(a[2:]))
        if bits < int(alg[2:]):
            name = f'HMAC key "{entry.kid}"' if entry.kid is not None else "HMAC key without kid"
            out.append(f"{name} is {bits} bits, shorter than the {alg[2:]} bits of {alg}")
    return out
