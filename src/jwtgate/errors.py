"""The root of jwtgate's exceptions.

Every layer raises its own subclass and translates foreign exceptions (``OSError``,
``ValueError`` from a library, ``joserfc.errors.JoseError``) at its boundary, so a caller
only ever catches what is drawn here::

    JwtgateError
     ├── ConfigError        a configuration problem, located at FILE:LINE (``nginx -t`` style)
     ├── TokenError         a JWT was rejected; ``code`` is a short reason (metric label) and
     │                      ``bearer_error`` the RFC 6750 §3.1 ``error=`` value
     ├── KeySourceError     a key source (JWK file) could not be loaded; HTTP 500 at request time
     ├── HTTPError          a malformed or over-limit client request; ``status`` is the answer
     ├── UpstreamError      the upstream failed; ``status`` is 502 or 504 (NGINX's choice)
     └── StateError         the shared-state backend (Redis) failed or timed out; limits then
                            fail open or closed as configured

The CLI is the only place that turns these into exit codes and printed lines.
"""

from __future__ import annotations

__all__ = [
    "JwtgateError",
    "ConfigError",
    "TokenError",
    "KeySourceError",
    "HTTPError",
    "UpstreamError",
    "StateError",
]


class JwtgateError(Exception):
    """Root of every error jwtgate raises on purpose."""


class ConfigError(JwtgateError):
    """A configuration error, reported as NGINX does: ``MESSAGE in FILE:LINE``.

    Args:
        message: the NGINX-style message, e.g. ``unknown directive "foo"``.
        file: path of the file the error is in, or ``None`` when not tied to a file.
        line: 1-based line number in ``file``, or ``None``.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.message} in {self.file}"
        return f"{self.message} in {self.file}:{self.line}"


class TokenError(JwtgateError):
    """A JWT was presented and rejected.

    Args:
        code: short machine reason, one of ``missing``, ``malformed``, ``too_large``,
            ``unsupported_alg``, ``no_key``, ``bad_signature``, ``bad_decryption``, ``expired``,
            ``not_yet_valid``, ``bad_claims``, ``wrong_type``, ``crit``. Used as a metric
            label and in the error log; never contains token bytes.
        detail: a human sentence for the error log (never token bytes or key material).
    """

    #: RFC 6750 §3.1 error code sent in ``WWW-Authenticate`` when a token was presented.
    bearer_error = "invalid_token"

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.detail = detail or code
        super().__init__(f"{code}: {self.detail}")


class KeySourceError(JwtgateError):
    """A key source (a JWK Set file, a remote JWKS) could not be read or parsed."""


class HTTPError(JwtgateError):
    """A client request that is malformed or over a limit.

    Args:
        status: the HTTP status code to answer with (400, 408, 413, 414, 431...).
        reason: a short description for the error log.
    """

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status}: {reason}")


class UpstreamError(JwtgateError):
    """The upstream could not be reached or answered badly.

    Args:
        status: 502 (refused, reset, invalid response) or 504 (timed out), as NGINX answers.
        reason: a short description for the error log.
        kind: the ``proxy_next_upstream`` condition it is: ``error``, ``timeout`` or
            ``invalid_header``; by default ``timeout`` for 504, else ``error``.
    """

    def __init__(self, status: int, reason: str, kind: str | None = None) -> None:
        self.status = status
        self.reason = reason
        self.kind = kind or ("timeout" if status == 504 else "error")
        super().__init__(f"{status}: {reason}")


class StateError(JwtgateError):
    """The shared-state backend (Redis) could not answer in time.

    Args:
        reason: what failed, for the error log (never a password: URLs are shown redacted).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
