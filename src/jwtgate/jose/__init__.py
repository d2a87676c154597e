"""JOSE layer: key sets, JWS/JWE/nested JWT verification, remote key sets, claim rendering and
the verified-token cache.

Policy lives here (which key, which algorithm, which claims); joserfc and cryptography do the
cryptography. Built once per configuration: :func:`load_jwk_set_file` / :func:`parse_jwk_set`
give a :class:`KeySet`; a :class:`Verifier` over it answers :meth:`Verifier.verify` per request
with a :class:`VerifiedToken` or raises :class:`~jwtgate.errors.TokenError`.
"""

from .cache import NegativeCache, VerifiedTokenCache
from .claims import claim_to_str, lookup_path
from .keys import (
    SUPPORTED_ALGORITHMS,
    KeyEntry,
    KeySet,
    hmac_key_warnings,
    load_jwk_set_file,
    parse_jwk_set,
)
from .remote import RemoteKeySource
from .sources import FileKeyCache, KeyPool
from .verify import VerifiedToken, Verifier

__all__ = [
    "KeyEntry",
    "KeySet",
    "parse_jwk_set",
    "load_jwk_set_file",
    "hmac_key_warnings",
    "SUPPORTED_ALGORITHMS",
    "VerifiedToken",
    "Verifier",
    "RemoteKeySource",
    "KeyPool",
    "FileKeyCache",
    "VerifiedTokenCache",
    "NegativeCache",
    "claim_to_str",
    "lookup_path",
]
