"""The ``auth_jwt`` module: NGINX Plus ``ngx_http_auth_jwt_module`` directives and variables.

The access-phase handler takes the token (``Authorization: Bearer`` or ``token=$variable``),
verifies it with the location's keys (:mod:`jwtgate.jose`), publishes the verified header and
claims as ``$jwt_header_*`` / ``$jwt_claim_*``, then checks every ``auth_jwt_require``.
Failures answer 401 with ``WWW-Authenticate: Bearer realm="..."`` (RFC 6750 §3), with
``error="invalid_token"`` when a token was presented.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.spec import HSL, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_time
from jwtgate.errors import KeySourceError, TokenError
from jwtgate.jose.claims import claim_to_str
from jwtgate.jose.keys import KeySet, hmac_key_warnings, load_jwk_set_file
from jwtgate.jose.verify import Verifier
from jwtgate.modules.base import Module, Phase

__all__ = ["AuthJwtModule", "AuthJwtHandler"]

log = logging.getLogger("jwtgate.auth_jwt")


def _spec(name: str, lo: int, hi: int | None, syntax: str, doc: str, **kw: Any) -> DirectiveSpec:
    return DirectiveSpec(name, "auth_jwt", HSL, lo, hi, syntax=syntax, doc=doc, **kw)


DIRECTIVES = (
    _spec("auth_jwt", 1, 2, "auth_jwt string [token=$variable] | off;",
          "Enables JWT validation; `string` is the realm sent in `WWW-Authenticate`. With `token=` "
          "the token is the whole value of that variable and `Authorization` is not consulted.",
          default="off"),
    _spec("auth_jwt_key_file", 1, 1, "auth_jwt_key_file file;",
          "A JWK Set file (RFC 7517) with the keys that verify tokens; repeatable, keys are pooled.",
          inherit=Inherit.ARRAY, group="auth_jwt_key",
          nginx_notes="`auth_jwt` without any key source is a configuration error (NGINX Plus then "
                      "skips signature checks); a missing or invalid file fails `jwtgate check`."),
    _spec("auth_jwt_require", 1, None, "auth_jwt_require $value ... [error=401 | 403];",
          "Further conditions: every value must be non-empty and not \"0\", else the request is "
          "refused with 401 (or the given code). Repeatable; the first failing directive's code wins.",
          inherit=Inherit.ARRAY),
    _spec("auth_jwt_leeway", 1, 1, "auth_jwt_leeway time;",
          "Allowed clock skew for `exp` and `nbf`.", default="0s"),
    _spec("auth_jwt_type", 1, 1, "auth_jwt_type signed | encrypted | nested;",
          "The expected token type. Only `signed` (JWS) is supported so far.", default="signed"),
)


@dataclass(frozen=True, slots=True)
class AuthJwtConf:
    """A parsed ``auth_jwt``: off, or a realm and an optional token variable."""

    off: bool
    realm: Any = None
    token: Any = None


@dataclass(frozen=True, slots=True)
class Require:
    """A parsed ``auth_jwt_require``: values that must all be truthy, and the failure code."""

    values: tuple[Any, ...]
    code: int


class AuthJwtModule(Module):
    """``auth_jwt*`` directives, ``$jwt_header_*``, ``$jwt_claim_*``, ``$jwt_payload``."""

    name = "auth_jwt"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        build.variables.add_prefix("jwt_header_", _header_var, self.name)
        build.variables.add_prefix("jwt_claim_", _claim_var, self.name)
        build.variables.add("jwt_payload", _payload_var, self.name)
        build.shared["auth_jwt"] = {"keysets": {}, "verifiers": {}}

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        name = d.name
        if name == "auth_jwt":
            if d.args[0] == "off" and len(d.args) == 1:
                return AuthJwtConf(True)
            token = None
            if len(d.args) == 2:
                param = d.args[1]
                if not param.startswith("token=$") or len(param) <= len("token=$"):
                    raise build.error(f'invalid parameter "{param}"', d)
                token = build.complex(param[len("token="):], d)
            return AuthJwtConf(False, build.complex(d.args[0], d), token)
        if name == "auth_jwt_key_file":
            return self._load_keys(build, d)
        if name == "auth_jwt_require":
            args = list(d.args)
            code = 401
            if args[-1].startswith("error="):
                value = args.pop()[len("error="):]
                if value not in ("401", "403"):
                    raise build.error(f'invalid error code "{value}"', d)
                code = int(value)
            if not args:
                raise build.error('invalid number of arguments in "auth_jwt_require" directive', d)
            values = []
            for a in args:
                if not a.startswith("$"):
                    raise build.error(f'invalid value "{a}" in "auth_jwt_require", it must start '
                                      'with a variable', d)
                values.append(build.complex(a, d))
            return Require(tuple(values), code)
        if name == "auth_jwt_leeway":
            try:
                return parse_time(d.args[0])
            except ValueError:
                raise build.error(f'invalid value "{d.args[0]}" in "auth_jwt_leeway" directive', d) from None
        if name == "auth_jwt_type":
            if d.args[0] not in ("signed", "encrypted", "nested"):
                raise build.error(f'invalid value "{d.args[0]}" in "auth_jwt_type" directive', d)
            if d.args[0] != "signed":
                raise build.error(f'"auth_jwt_type {d.args[0]}" is not supported yet', d)
            return d.args[0]
        return d.args

    def _load_keys(self, build: Any, d: Any) -> KeySet:
        path = d.args[0]
        if "$" in path:
            raise build.error('variables in "auth_jwt_key_file" are not supported yet', d)
        full = build.path(path)
        cache = build.shared["auth_jwt"]["keysets"]
        keys = cache.get(full)
        if keys is None:
            try:
                keys = load_jwk_set_file(full)
            except KeySourceError as e:
                raise build.error(str(e), d) from None
            for warning in hmac_key_warnings(keys):
                build.warn(warning, d)
            cache[full] = keys
        return keys

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        conf: AuthJwtConf | None = loc.get("auth_jwt")
        if conf is None or conf.off:
            return {}
        keysets = loc.get_all("auth_jwt_key_file")
        if not keysets:
            raise build.error('"auth_jwt" has no key source: add "auth_jwt_key_file"', loc.where("auth_jwt"))
        leeway = loc.get("auth_jwt_leeway", 0.0)
        verifiers = build.shared["auth_jwt"]["verifiers"]
        key = (tuple(id(k) for k in keysets), leeway)
        verifier = verifiers.get(key)
        if verifier is None:
            merged = keysets[0] if len(keysets) == 1 else KeySet.merge(keysets)
            verifier = Verifier(merged, leeway=leeway, clock=build.clock)
            verifiers[key] = verifier
        requires = tuple(loc.get_all("auth_jwt_require"))
        return {Phase.ACCESS: [AuthJwtHandler(conf, verifier, requires)]}


def _quote(text: str) -> str:
    """A quoted-string (RFC 9110 §5.6.4) with controls removed, for the realm."""
    clean = "".join(ch for ch in text if ch >= " " and ch != "\x7f")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AuthJwtHandler:
    """The access-phase handler of one location with ``auth_jwt``.

    Args:
        conf: realm and token source.
        verifier: the :class:`~jwtgate.jose.verify.Verifier` over the location's keys.
        requires: ``auth_jwt_require`` rules, in configuration order.
    """

    __slots__ = ("realm", "token", "verifier", "requires", "_realm_const")

    def __init__(self, conf: AuthJwtConf, verifier: Verifier, requires: tuple[Require, ...]) -> None:
        self.realm = conf.realm
        self.token = conf.token
        self.verifier = verifier
        self.requires = requires
        const = conf.realm.constant if conf.realm is not None else None
        self._realm_const = None if const is None else f"Bearer realm={_quote(const)}"

    def _challenge(self, ctx: Any, error: str | None) -> None:
        value = self._realm_const or f"Bearer realm={_quote(self.realm(ctx))}"
        if error:
            value += f', error="{error}"'
        ctx.response_headers.append(("WWW-Authenticate", value))

    def extract(self, ctx: Any) -> str:
        """The presented token: the ``token=`` variable, or the Bearer credentials."""
        if self.token is not None:
            return self.token(ctx)
        auth = ctx.http.get("authorization", "")
        if len(auth) > 7 and auth[:7].lower() == "bearer ":
            return auth[7:].strip(" \t")
        return ""

    async def __call__(self, ctx: Any) -> int | None:
        token = self.extract(ctx)
        if not token:
            self._challenge(ctx, None)
            return 401
        try:
            ctx.jwt = self.verifier.verify(token)
        except TokenError as e:
            log.info('JWT rejected (%s): %s, client: %s', e.code, e.detail, ctx.conn.remote_addr)
            self._challenge(ctx, e.bearer_error)
            return 401
        for rule in self.requires:
            for value in rule.values:
                v = value(ctx)
                if not v or v == "0":
                    log.info('JWT refused by "auth_jwt_require %s", client: %s',
                             value.source, ctx.conn.remote_addr)
                    if rule.code == 401:
                        self._challenge(ctx, "invalid_token")
                    return rule.code
        return None


def _header_var(name: str) -> Any:
    def get(ctx: Any) -> str:
        jwt = ctx.jwt
        if jwt is None:
            return ""
        value = jwt.header.get(name)
        return "" if value is None else claim_to_str(value)
    return get


def _claim_var(name: str) -> Any:
    def get(ctx: Any) -> str:
        jwt = ctx.jwt
        if jwt is None:
            return ""
        value = jwt.claims.get(name)
        return "" if value is None else claim_to_str(value)
    return get


def _payload_var(ctx: Any) -> str:
    jwt = ctx.jwt
    return jwt.payload.decode("utf-8", "replace") if jwt is not None else ""
