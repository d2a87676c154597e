"""The ``auth_jwt`` module: NGINX Plus ``ngx_http_auth_jwt_module`` directives and variables.

The access-phase handler takes the token (``Authorization: Bearer`` or ``token=$variable``),
verifies it with the location's keys (:mod:`jwtgate.jose`): a JWS, a JWE or a JWS inside a JWE
as ``auth_jwt_type`` says. It publishes the verified header and claims as ``$jwt_header_*`` /
``$jwt_claim_*`` (and ``auth_jwt_header_set``/``auth_jwt_claim_set`` variables, and
``$jwt_payload``), then checks every ``auth_jwt_require``. Failures answer 401 with
``WWW-Authenticate: Bearer realm="..."`` (RFC 6750 §3), with ``error="invalid_token"`` when a
token was presented; ``auth_jwt_require ... error=403`` answers 403; a key source that cannot
be loaded at request time answers 500.

Keys come from ``auth_jwt_key_file`` (static files are read when the configuration compiles;
paths with variables per request, cached for ``auth_jwt_key_cache``) and ``auth_jwt_key_request``
(remote key sets refreshed in the background, see :mod:`jwtgate.jose.remote` and
:mod:`jwtgate.modules.auth_jwt_keys`), all pooled. Verified tokens are cached
(``auth_jwt_cache``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_size, parse_time
from jwtgate.errors import KeySourceError, TokenError
from jwtgate.jose.claims import claim_to_str, lookup_path
from jwtgate.jose.keys import KeySet, hmac_key_warnings, load_jwk_set_file
from jwtgate.jose.remote import DEFAULT_MIN_INTERVAL, DEFAULT_STALE, DEFAULT_TTL, RemoteKeySource
from jwtgate.jose.sources import FileKeyCache, KeyPool
from jwtgate.jose.verify import DEFAULT_CACHE_SIZE, DEFAULT_MAX_TOKEN_SIZE, TOKEN_TYPES, Verifier
from jwtgate.modules.auth_jwt_keys import DynamicKeyFile, KeyRequest, SubrequestFetch, resolve_key_request
from jwtgate.modules.base import DEFER, Module, Phase

__all__ = ["AuthJwtModule", "AuthJwtHandler"]

log = logging.getLogger("jwtgate.auth_jwt")

#: Entries of the failed-token cache next to a verified-token cache.
NEGATIVE_CACHE_SIZE = 1024
#: Verified-token cache entries of each per-request key-file combination.
DYNAMIC_CACHE_SIZE = 10_000
#: Largest ``auth_jwt_max_token_size``.
MAX_TOKEN_SIZE_LIMIT = 1 << 20


def _spec(name: str, lo: int, hi: int | None, syntax: str, doc: str, ctx: Ctx = HSL, **kw: Any) -> DirectiveSpec:
    return DirectiveSpec(name, "auth_jwt", ctx, lo, hi, syntax=syntax, doc=doc, **kw)


DIRECTIVES = (
    _spec("auth_jwt", 1, 2, "auth_jwt string [token=$variable] | off;",
          "Enables JWT validation; `string` (which may hold variables, or be empty) is the realm sent "
          "in `WWW-Authenticate`. With `token=` the token is the whole value of that variable and "
          "`Authorization` is not consulted.",
          default="off"),
    _spec("auth_jwt_type", 1, 1, "auth_jwt_type signed | encrypted | nested;",
          "The expected token type: a JWS, a JWE whose plaintext is the claims, or a JWS inside a JWE "
          "(whose signature is verified with the same keys). A token of another type is refused.",
          default="signed",
          nginx_notes="For `nested` tokens `$jwt_header_*` are the inner (JWS) header's members."),
    _spec("auth_jwt_key_file", 1, 1, "auth_jwt_key_file file;",
          "A JWK Set file (RFC 7517) with the keys that verify (or decrypt) tokens; repeatable, keys of "
          "every `auth_jwt_key_file` and `auth_jwt_key_request` are pooled. A path with variables is "
          "read when a request needs it and kept for `auth_jwt_key_cache` (missing then: 500); map "
          "request data to a fixed set of files rather than putting it in the path.",
          inherit=Inherit.ARRAY, group="auth_jwt_key",
          nginx_notes="`auth_jwt` without any key source is a configuration error (NGINX Plus then "
                      "skips signature checks); a static file that is missing or invalid fails "
                      "`jwtgate check`. Static files are read once per configuration load."),
    _spec("auth_jwt_key_request", 1, 1, "auth_jwt_key_request uri;",
          "Keys from a subrequest to `uri`, a location of this server that proxies to an identity "
          "provider's `jwks_uri` (usually `internal`); repeatable. Fetched in the background "
          "(single-flight, refreshed before expiry, served stale when the provider is down), never "
          "per request.",
          inherit=Inherit.ARRAY, group="auth_jwt_key",
          nginx_notes="`uri` may not hold variables. Keys are never fetched on the request path, "
                      "except that requests wait for the first fetch; an unknown `kid` triggers at "
                      "most one refetch per `auth_jwt_key_refetch_interval`."),
    _spec("auth_jwt_key_cache", 1, 1, "auth_jwt_key_cache time;",
          "How long keys from `auth_jwt_key_request` (and from key files with variables) are used before "
          "they are fetched (read) again.",
          default="0",
          nginx_notes="With 0, key sets from `auth_jwt_key_request` live 5 minutes (NGINX Plus would "
                      "fetch them for every request); key files with variables are read on every "
                      "request, as in NGINX Plus."),
    _spec("auth_jwt_key_refetch_interval", 1, 1, "auth_jwt_key_refetch_interval time;",
          "Shortest time between two fetches of one `auth_jwt_key_request` source: retries after a "
          "failure, and refetches for a token with an unknown `kid`. jwtgate only.",
          default="30s"),
    _spec("auth_jwt_key_use_stale", 1, 1, "auth_jwt_key_use_stale time;",
          "How long after they expire keys from `auth_jwt_key_request` still serve while they cannot be "
          "refreshed (errors are logged); after that, 500. jwtgate only.",
          default="1h"),
    _spec("auth_jwt_leeway", 1, 1, "auth_jwt_leeway time;",
          "Allowed clock skew for `exp` and `nbf`: `now >= exp + leeway` and `now < nbf - leeway` are "
          "refused.", default="0s"),
    _spec("auth_jwt_require", 1, None, "auth_jwt_require $value ... [error=401 | 403];",
          "Further conditions: every value must be non-empty and not \"0\", else the request is "
          "refused with 401 (or the given code). Repeatable; the first failing directive's code wins.",
          inherit=Inherit.ARRAY),
    _spec("auth_jwt_claim_set", 2, None, "auth_jwt_claim_set $variable name ...;",
          "Sets `$variable` to the JWT claim found by following the names through nested objects; "
          "an array becomes its elements joined by commas.",
          ctx=Ctx.HTTP, inherit=Inherit.NONE),
    _spec("auth_jwt_header_set", 2, None, "auth_jwt_header_set $variable name ...;",
          "Sets `$variable` to the JOSE header parameter found by following the names.",
          ctx=Ctx.HTTP, inherit=Inherit.NONE),
    _spec("auth_jwt_cache", 1, 1, "auth_jwt_cache on | off | number;",
          "The verified-token cache: a token that verified is not verified again until it expires or "
          "its keys change (`exp`/`nbf` are checked on every hit); tokens that failed their signature "
          "are remembered too. `number` is how many tokens it holds. jwtgate only.",
          default=str(DEFAULT_CACHE_SIZE)),
    _spec("auth_jwt_max_token_size", 1, 1, "auth_jwt_max_token_size size;",
          "Longest token accepted; a longer one is refused before it is decoded. jwtgate only.",
          default="16k"),
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


def _time(build: Any, d: Any) -> float:
    try:
        return parse_time(d.args[0])
    except ValueError:
        raise build.error(f'invalid value "{d.args[0]}" in "{d.name}" directive', d) from None


class AuthJwtModule(Module):
    """``auth_jwt*`` directives, ``$jwt_header_*``, ``$jwt_claim_*``, ``$jwt_payload``."""

    name = "auth_jwt"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        build.variables.add_prefix("jwt_header_", lambda name: _jwt_var("header", (name,)), self.name)
        build.variables.add_prefix("jwt_claim_", lambda name: _jwt_var("claims", (name,)), self.name)
        build.variables.add("jwt_payload", _payload_var, self.name)
        build.shared["auth_jwt"] = {"keysets": {}, "verifiers": {}, "remotes": {}}

    def predeclare(self, build: Any, level: Any, d: Any) -> None:
        """``auth_jwt_claim_set``/``auth_jwt_header_set`` variables exist before any use."""
        if d.name not in ("auth_jwt_claim_set", "auth_jwt_header_set"):
            return
        var = d.args[0]
        if not var.startswith("$") or len(var) < 2:
            raise build.error(f'invalid variable name "{var}"', d)
        names = tuple(d.args[1:])
        if any(not n for n in names):
            raise build.error(f'empty name in "{d.name}" directive', d)
        getter = _jwt_var("claims" if d.name == "auth_jwt_claim_set" else "header", tuple(names))
        try:
            build.variables.add(var[1:], getter, self.name)
        except ValueError:
            raise build.error(f'the duplicate "{var[1:]}" variable', d) from None
        # For limit_req's and set's phase rules: this variable depends on the verified token.
        first = ("jwt_claim_" if d.name == "auth_jwt_claim_set" else "jwt_header_") + names[0].lower()
        build.shared.setdefault("var_deps", {})[var[1:].lower()] = {first}

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
            path = build.complex(d.args[0], d)
            if path.constant is None:
                return DynamicKeyFile(path, build.prefix)
            return self._load_keys(build, d)
        if name == "auth_jwt_key_request":
            uri = d.args[0]
            if "$" in uri:
                raise build.error('variables in "auth_jwt_key_request" are not supported', d)
            if not uri.startswith("/"):
                raise build.error(f'invalid URI "{uri}" in "auth_jwt_key_request" directive', d)
            return KeyRequest(uri, d)
        if name == "auth_jwt_require":
            return self._require(build, d)
        if name in ("auth_jwt_leeway", "auth_jwt_key_cache", "auth_jwt_key_use_stale"):
            return _time(build, d)
        if name == "auth_jwt_key_refetch_interval":
            value = _time(build, d)
            if value < 0.1:
                raise build.error(f'"{name}" must be at least 100ms', d)
            return value
        if name == "auth_jwt_type":
            if d.args[0] not in TOKEN_TYPES:
                raise build.error(f'invalid value "{d.args[0]}" in "auth_jwt_type" directive', d)
            return d.args[0]
        if name == "auth_jwt_cache":
            arg = d.args[0]
            if arg in ("on", "off"):
                return DEFAULT_CACHE_SIZE if arg == "on" else 0
            if not arg.isdigit():
                raise build.error(f'invalid value "{arg}" in "auth_jwt_cache" directive, it must be '
                                  '"on", "off" or a number', d)
            return int(arg)
        if name == "auth_jwt_max_token_size":
            try:
                size = parse_size(d.args[0])
            except ValueError:
                size = 0
            if not 0 < size <= MAX_TOKEN_SIZE_LIMIT:
                raise build.error(f'invalid value "{d.args[0]}" in "auth_jwt_max_token_size" directive', d)
            return size
        return d.args  # auth_jwt_claim_set / auth_jwt_header_set: done in predeclare

    def _require(self, build: Any, d: Any) -> Require:
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

    def _load_keys(self, build: Any, d: Any) -> KeySet:
        full = build.path(d.args[0])
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
        sources = loc.get_all("auth_jwt_key_file") + loc.get_all("auth_jwt_key_request")
        if not sources:
            raise build.error('"auth_jwt" has no key source: add "auth_jwt_key_file"', loc.where("auth_jwt"))
        static = [s for s in sources if isinstance(s, KeySet)]
        dynamic = tuple(s for s in sources if isinstance(s, DynamicKeyFile))
        remotes = [self._remote(build, loc, s) for s in sources if isinstance(s, KeyRequest)]
        token_type = loc.get("auth_jwt_type", "signed")
        params = (token_type, loc.get("auth_jwt_leeway", 0.0),
                  loc.get("auth_jwt_max_token_size", DEFAULT_MAX_TOKEN_SIZE),
                  loc.get("auth_jwt_cache", DEFAULT_CACHE_SIZE))
        self._check_type(build, loc, token_type, static, remotes or dynamic)
        shared = build.shared["auth_jwt"]["verifiers"]
        key = (tuple(id(s) for s in static), tuple(id(r) for r in remotes), tuple(id(f) for f in dynamic),
               loc.get("auth_jwt_key_cache", 0.0) if dynamic else None, params)
        made = shared.get(key)
        if made is None:
            made = shared[key] = self._verifier(build, loc, static, remotes, bool(dynamic), params)
        verifier, pool = made
        requires = tuple(loc.get_all("auth_jwt_require"))
        return {Phase.ACCESS: [AuthJwtHandler(conf, verifier, requires, pool, dynamic)]}

    @staticmethod
    def _check_type(build: Any, loc: Any, token_type: str, static: list[KeySet], others: Any) -> None:
        """Static keys only and none fits the token type: say so at ``jwtgate check``."""
        if others or not static:
            return
        entries = [e for ks in static for e in ks.entries]
        if token_type != "signed" and not any(e.decrypt_algorithms for e in entries):
            build.warn(f'no key can decrypt tokens ("auth_jwt_type {token_type}")', loc.where("auth_jwt_type"))
        if token_type != "encrypted" and not any(e.algorithms for e in entries):
            build.warn("no key can verify a signature", loc.where("auth_jwt"))

    @staticmethod
    def _verifier(build: Any, loc: Any, static: list[KeySet], remotes: list[RemoteKeySource],
                  dynamic: bool, params: tuple[Any, ...]) -> tuple[Verifier, KeyPool | None]:
        token_type, leeway, max_size, cache_size = params

        def make(keys: KeySet, per_request: bool = False) -> Verifier:
            size = min(cache_size, DYNAMIC_CACHE_SIZE) if per_request else cache_size
            return Verifier(keys, token_type=token_type, leeway=leeway, max_token_size=max_size,
                            clock=build.clock, cache_size=size,
                            negative_cache_size=NEGATIVE_CACHE_SIZE if size else 0)

        if not remotes and not dynamic:
            return make(static[0] if len(static) == 1 else KeySet.merge(static)), None
        files = FileKeyCache(loc.get("auth_jwt_key_cache", 0.0), build.clock) if dynamic else None
        pool = KeyPool(static, remotes, make, files)
        return pool.verifier, pool

    def _remote(self, build: Any, loc: Any, request: KeyRequest) -> RemoteKeySource:
        server, content = resolve_key_request(build, loc, request)
        ttl = loc.get("auth_jwt_key_cache", 0.0) or DEFAULT_TTL
        min_interval = loc.get("auth_jwt_key_refetch_interval", DEFAULT_MIN_INTERVAL)
        stale = loc.get("auth_jwt_key_use_stale", DEFAULT_STALE)
        remotes = build.shared["auth_jwt"]["remotes"]
        key = (id(server), request.uri, ttl, min_interval, stale)
        remote = remotes.get(key)
        if remote is None:
            sd = server.directive
            name = f'auth_jwt_key_request "{request.uri}"'
            keep_key = (sd.file, sd.line, request.uri, ttl, min_interval, stale)
            remote = remotes[key] = RemoteKeySource(
                name, SubrequestFetch(name, request.uri, content), ttl=ttl, min_interval=min_interval,
                stale=stale, clock=build.clock, keep_key=keep_key)
        return remote

    def resources(self, build: Any) -> list[Any]:
        """Every remote key source: the running gateway starts and stops their refreshers."""
        return list(build.shared["auth_jwt"]["remotes"].values())


def _quote(text: str) -> str:
    """A quoted-string (RFC 9110 §5.6.4) with controls removed, for the realm."""
    clean = "".join(ch for ch in text if ch >= " " and ch != "\x7f")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AuthJwtHandler:
    """The access-phase handler of one location with ``auth_jwt``.

    Args:
        conf: realm and token source.
        verifier: the :class:`~jwtgate.jose.verify.Verifier` over the location's keys (with a
            ``pool``: the one over its static and remote keys).
        requires: ``auth_jwt_require`` rules, in configuration order.
        pool: the :class:`~jwtgate.jose.sources.KeyPool` when keys come from remote sources or
            from key files with variables, else ``None``.
        files: the key files with variables, resolved per request.
    """

    __slots__ = ("realm", "token", "verifier", "requires", "pool", "files", "_realm_const")

    def __init__(self, conf: AuthJwtConf, verifier: Verifier, requires: tuple[Require, ...],
                 pool: KeyPool | None = None, files: tuple[DynamicKeyFile, ...] = ()) -> None:
        self.realm = conf.realm
        self.token = conf.token
        self.verifier = verifier
        self.requires = requires
        self.pool = pool
        self.files = files
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
            return self.token(ctx)  # type: ignore[no-any-return]
        auth = ctx.http.get("authorization", "")
        if len(auth) > 7 and auth[:7].lower() == "bearer ":
            return auth[7:].strip(" \t")  # type: ignore[no-any-return]
        return ""

    def check(self, ctx: Any) -> Any:
        """The access decision without a coroutine when no key source has to be waited
        for (static key files): ``None`` to go on, or the status to answer; :data:`DEFER`
        when ``await self(ctx)`` must decide (remote or per-request key sources)."""
        if self.pool is not None:
            return DEFER
        token = self.extract(ctx)
        if not token:
            return self._missing(ctx)
        return self._decide(ctx, self.verifier, token)

    async def __call__(self, ctx: Any) -> int | None:
        """The access decision (rewrite-phase semantics of NGINX Plus ``auth_jwt``): ``None``
        to go on; 401 (no, or an invalid, token), 403 (``auth_jwt_require ... error=403``) or
        500 (keys cannot be loaded)."""
        token = self.extract(ctx)
        if not token:
            return self._missing(ctx)
        verifier = self.verifier
        pool = self.pool
        if pool is not None:
            try:
                for remote in pool.waiting():
                    await remote.ensure()  # the single-flight first fetch; usually nothing to wait for
                verifier = pool.verifier_for(tuple(f.resolve(ctx) for f in self.files))
            except KeySourceError as e:
                log.error("JWT keys cannot be loaded: %s, client: %s", e, ctx.conn.remote_addr)
                _outcome(ctx, "key_unavailable")
                return 500
        return self._decide(ctx, verifier, token)

    def _missing(self, ctx: Any) -> int:
        _outcome(ctx, "missing")
        self._challenge(ctx, None)
        return 401

    def _decide(self, ctx: Any, verifier: Verifier, token: str) -> int | None:
        try:
            ctx.jwt = verifier.verify(token)
        except TokenError as e:
            log.info('JWT rejected (%s): %s, client: %s', e.code, e.detail, ctx.conn.remote_addr)
            _outcome(ctx, e.code)
            self._challenge(ctx, e.bearer_error)
            return 401
        for rule in self.requires:
            for value in rule.values:
                v = value(ctx)
                if not v or v == "0":
                    log.info('JWT refused by "auth_jwt_require %s", client: %s',
                             value.source, ctx.conn.remote_addr)
                    _outcome(ctx, value)  # the status module tells "revoked" from "require_failed"
                    if rule.code == 401:
                        self._challenge(ctx, "invalid_token")
                    return rule.code
        return None


def _outcome(ctx: Any, reason: Any) -> None:
    """Record why ``auth_jwt`` refused the request in ``ctx.extra["auth_jwt"]`` (a TokenError
    code, ``"missing"``, ``"key_unavailable"`` or the failing ``auth_jwt_require`` value), for
    the statistics (:mod:`jwtgate.modules.status`); refusals only, the success path pays nothing."""
    extra = ctx.extra
    if extra is None:
        extra = ctx.extra = {}
    extra["auth_jwt"] = reason


def _jwt_var(part: str, path: tuple[str, ...]) -> Any:
    """A getter for a value of the verified token: ``part`` is ``"header"`` or ``"claims"``,
    ``path`` the keys into nested objects (``$jwt_claim_sub`` is ``("sub",)``; an
    ``auth_jwt_claim_set $v a b`` is ``("a", "b")``), rendered as NGINX Plus renders claims.
    ``''`` before verification or when the value is absent."""
    if len(path) == 1:
        key = path[0]

        def get(ctx: Any) -> str:
            jwt = ctx.jwt
            if jwt is None:
                return ""
            value = getattr(jwt, part).get(key)
            return "" if value is None else claim_to_str(value)
        return get
    keys = list(path)

    def get_path(ctx: Any) -> str:
        jwt = ctx.jwt
        if jwt is None:
            return ""
        value = lookup_path(getattr(jwt, part), keys)
        return "" if value is None else claim_to_str(value)
    return get_path


def _payload_var(ctx: Any) -> str:
    """``$jwt_payload``: the decrypted top-level payload of an encrypted token (the claims JSON)
    or a nested one (the enclosed JWS), as NGINX Plus; for a signed token its payload (the
    claims JSON), which NGINX Plus leaves undocumented."""
    jwt = ctx.jwt
    return jwt.payload.decode("utf-8", "replace") if jwt is not None else ""
