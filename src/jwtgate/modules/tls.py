"""The ssl module: TLS on client-facing ``listen ... ssl`` sockets (``ngx_http_ssl_module``).

``ssl_certificate`` / ``ssl_certificate_key`` (http or server level) are PEM files loaded when
the configuration is compiled into an :class:`ssl.SSLContext`, built once per distinct setting
(certificates, keys, protocols, ciphers, options). For each address with ``listen ... ssl``,
:func:`listen_contexts` gives the context the handshake starts with: the default server's, plus
an ``sni_callback`` switching to the context of the server chosen by the client's SNI name
(NGINX's server selection rules) when the servers of that address do not share one context.
As in NGINX, protocol versions and ciphers are those of the address's default server: OpenSSL
settles them before the name is known; the certificate follows the name.
"""

from __future__ import annotations

import ssl
from typing import Any

from jwtgate.conf.spec import Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_flag, parse_size, parse_time
from jwtgate.modules.base import Module

__all__ = ["SslModule", "listen_contexts", "server_context"]

HS = Ctx.HTTP | Ctx.SERVER

DEFAULT_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
DEFAULT_CIPHERS = "HIGH:!aNULL:!MD5"
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_OBSOLETE = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")


def _spec(name: str, lo: int, hi: int | None, syntax: str, doc: str, **kw: Any) -> DirectiveSpec:
    return DirectiveSpec(name, "ssl", kw.pop("ctx", HS), lo, hi, syntax=syntax, doc=doc, **kw)


DIRECTIVES = (
    _spec("ssl_certificate", 1, 1, "ssl_certificate file;",
          "PEM certificate (with its chain) of the server's `listen ... ssl` addresses; one per key "
          "type (RSA, ECDSA) may be given, each paired in order with an `ssl_certificate_key`. "
          "Loaded when the configuration loads.", inherit=Inherit.ARRAY,
          nginx_notes="Variables in the file name (`$ssl_server_name`) and `data:` values are not "
                      "supported (configuration error)."),
    _spec("ssl_certificate_key", 1, 1, "ssl_certificate_key file;",
          "PEM private key of the `ssl_certificate` in the same position (unencrypted).",
          inherit=Inherit.ARRAY,
          nginx_notes="Encrypted keys (`ssl_password_file`) and `engine:` keys are not supported."),
    _spec("ssl_protocols", 1, None, "ssl_protocols [TLSv1.2] [TLSv1.3];",
          "TLS versions accepted.", default="TLSv1.2 TLSv1.3",
          nginx_notes="`SSLv2`, `SSLv3`, `TLSv1` and `TLSv1.1` are refused with a configuration error. "
                      "As in NGINX, the versions of the default server of an address apply to every "
                      "server on it (they are settled before the SNI name is known)."),
    _spec("ssl_ciphers", 1, 1, "ssl_ciphers ciphers;",
          "OpenSSL cipher list for TLSv1.2 (`SSL_CTX_set_cipher_list`); a list that matches no "
          "cipher is a configuration error.", default="HIGH:!aNULL:!MD5",
          nginx_notes="TLSv1.3 cipher suites keep OpenSSL's defaults (NGINX sets them with "
                      "`ssl_conf_command`, which jwtgate does not have). The default server's list "
                      "applies to the whole address."),
    _spec("ssl_prefer_server_ciphers", 1, 1, "ssl_prefer_server_ciphers on | off;",
          "Prefer the server's cipher order to the client's (TLSv1.2).", default="off"),
    _spec("ssl_session_cache", 1, 2, "ssl_session_cache off | none | [builtin[:size]] [shared:name:size];",
          "Accepted and checked; TLS sessions are resumed with OpenSSL's built-in cache of each "
          "worker process and with session tickets (`ssl_session_tickets`).",
          default="none",
          nginx_notes="`shared:` zones are not shared between workers, and `off`/`none` do not "
                      "disable OpenSSL's built-in cache (Python's `ssl` has no switch for it); use "
                      "`ssl_session_tickets off` to stop ticket resumption."),
    _spec("ssl_session_timeout", 1, 1, "ssl_session_timeout time;",
          "Accepted and checked; sessions live for OpenSSL's default (300 s, NGINX's `5m`).",
          default="5m",
          nginx_notes="Python's `ssl` cannot change the session lifetime; values other than the "
                      "default have no effect."),
    _spec("ssl_session_tickets", 1, 1, "ssl_session_tickets on | off;",
          "Whether TLS session tickets are issued.", default="on"),
    _spec("ssl", 1, 1, "ssl on | off;",
          "Obsolete: refused with a configuration error pointing to `listen ... ssl`.", ctx=HS,
          nginx_notes="Removed from NGINX in 1.25.1; use the `ssl` parameter of `listen`."),
)


class SslModule(Module):
    """``ssl_*`` directives of the client-facing side; contexts are built by :func:`listen_contexts`."""

    name = "ssl"
    directives = DIRECTIVES

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        name = d.name
        arg = d.args[0]
        if name in ("ssl_certificate", "ssl_certificate_key"):
            if "$" in arg:
                raise build.error(f'variables in the "{name}" directive are not supported', d)
            if arg.startswith(("data:", "engine:")):
                raise build.error(f'"{arg.split(":", 1)[0]}:" values of the "{name}" directive are not '
                                  'supported', d)
            return build.path(arg), d
        if name == "ssl_protocols":
            for p in d.args:
                if p in _OBSOLETE:
                    raise build.error(f'the "{p}" protocol of the "ssl_protocols" directive is not '
                                      'supported (only TLSv1.2 and TLSv1.3 are)', d)
                if p not in _VERSIONS:
                    raise build.error(f'invalid value "{p}" in "ssl_protocols" directive', d)
            return tuple(sorted(set(d.args)))
        if name == "ssl_ciphers":
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(arg)
            except ssl.SSLError:
                raise build.error(f'SSL_CTX_set_cipher_list("{arg}") failed (SSL: no cipher match)', d) from None
            return arg
        if name in ("ssl_prefer_server_ciphers", "ssl_session_tickets"):
            return _flag(build, d)
        if name == "ssl_session_timeout":
            try:
                return parse_time(arg)
            except ValueError:
                raise build.error(f'invalid value "{arg}" in "{name}" directive', d) from None
        if name == "ssl_session_cache":
            return _session_cache(build, d)
        if name == "ssl":
            raise build.error('the "ssl" directive is obsolete, use the "listen ... ssl" directive instead', d)
        return d.args


def _flag(build: Any, d: Any) -> bool:
    try:
        return parse_flag(d.args[0])
    except ValueError:
        raise build.error(f'invalid value "{d.args[0]}" in "{d.name}" directive, it must be "on" or "off"',
                          d) from None


def _session_cache(build: Any, d: Any) -> bool:
    """``ssl_session_cache``: checked as NGINX does; ``True`` unless ``off``/``none``."""
    on = True
    for arg in d.args:
        if arg in ("off", "none"):
            if len(d.args) > 1:
                raise build.error(f'invalid value "{arg}" in "ssl_session_cache" directive', d)
            on = False
        elif arg == "builtin" or arg.startswith("builtin:"):
            if arg != "builtin" and not arg[8:].isdigit():
                raise build.error(f'invalid session cache size "{arg[8:]}"', d)
        elif arg.startswith("shared:"):
            parts = arg.split(":")
            if len(parts) != 3 or not parts[1]:
                raise build.error(f'invalid value "{arg}" in "ssl_session_cache" directive', d)
            try:
                parse_size(parts[2])
            except ValueError:
                raise build.error(f'invalid zone size "{parts[2]}"', d) from None
        else:
            raise build.error(f'invalid value "{arg}" in "ssl_session_cache" directive', d)
    return on


def _settings(level: Any) -> tuple[Any, ...]:
    return (level.get("ssl_protocols", DEFAULT_PROTOCOLS), level.get("ssl_ciphers", DEFAULT_CIPHERS),
            level.get("ssl_prefer_server_ciphers", False), level.get("ssl_session_tickets", True))


def _new_context(build: Any, pairs: list[tuple[tuple[str, Any], tuple[str, Any]]],
                 settings: tuple[Any, ...]) -> ssl.SSLContext:
    protocols, ciphers, prefer, tickets = settings
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = sorted(_VERSIONS[p] for p in protocols)
    context.minimum_version, context.maximum_version = versions[0], versions[-1]
    context.set_ciphers(ciphers)  # checked when parsed
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if not tickets:
        context.options |= ssl.OP_NO_TICKET
    for (cert, cd), (key, kd) in pairs:
        for path, d, what in ((cert, cd, "certificate"), (key, kd, "certificate key")):
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise build.error(f'cannot load {what} "{path}": BIO_new_file() failed '
                                  f'({e.errno}: {e.strerror})', d) from None
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as e:
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                probe.load_verify_locations(cert)
            except (ssl.SSLError, ValueError):
                raise build.error(f'cannot load certificate "{cert}": PEM_read_bio_X509_AUX() failed '
                                  f'(SSL: {e.reason or e})', cd) from None
            raise build.error(f'cannot load certificate key "{key}": {e.reason or e} '
                              f'(for certificate "{cert}")', kd) from None
    return context


def server_context(build: Any, level: Any) -> ssl.SSLContext | None:
    """The TLS context of a server level (``None`` without ``ssl_certificate``), shared by
    every server with the same settings.

    Raises:
        ConfigError: a missing key, an unreadable or invalid PEM file, a key that does not
            match its certificate, located at the directive.
    """
    certs = level.get_all("ssl_certificate")
    if not certs:
        return None
    keys = level.get_all("ssl_certificate_key")
    if len(keys) < len(certs):
        path, d = certs[len(keys)]
        raise build.error(f'no "ssl_certificate_key" is defined for certificate "{path}"', d)
    pairs = list(zip(certs, keys))
    settings = _settings(level)
    cache = build.shared.setdefault("ssl", {}).setdefault("contexts", {})
    key = (tuple((c[0], k[0]) for c, k in pairs), settings)
    context = cache.get(key)
    if context is None:
        context = _new_context(build, pairs, settings)
        cache[key] = context
    return context


def listen_contexts(build: Any, groups: dict[tuple[str, int], Any], selectors: dict[tuple[str, int], Any],
                    ssl_addrs: set[tuple[str, int]]) -> dict[tuple[str, int], ssl.SSLContext]:
    """The handshake context of each ``listen ... ssl`` address (selector key).

    Args:
        groups: the servers of each address.
        selectors: the :class:`~jwtgate.runtime.router.ServerSelector` of each address.
        ssl_addrs: the addresses that are TLS.

    Errors (NGINX's ``no "ssl_certificate" is defined for the "listen ... ssl" directive``) are
    added to ``build.errors``, located at the server's ``listen``.
    """
    out: dict[tuple[str, int], ssl.SSLContext] = {}
    for addr in ssl_addrs:
        contexts: dict[Any, ssl.SSLContext] = {}
        for server in groups[addr]:
            level = server._level
            try:
                context = server_context(build, level)
            except Exception as e:  # ConfigError
                if e not in build.errors:
                    build.errors.append(e)
                continue
            if context is None:
                listen = next((li for li in server.listens if (li.host, li.port) == addr), None)
                where = (listen.file, listen.line) if listen else (server.file, server.line)
                from jwtgate.errors import ConfigError

                build.errors.append(ConfigError('no "ssl_certificate" is defined for the "listen ... ssl" '
                                                'directive', *where))
                continue
            contexts[server] = context
        selector = selectors[addr]
        default = contexts.get(selector.default)
        if default is None or len(contexts) != len(groups[addr]):
            continue
        if len(set(map(id, contexts.values()))) == 1:
            out[addr] = default
            continue
        # Several certificates on one address: a context of its own for the address, with the
        # default server's settings and certificate, that switches by SNI name.
        level = selector.default._level
        certs = level.get_all("ssl_certificate")
        keys = level.get_all("ssl_certificate_key")
        front = _new_context(build, list(zip(certs, keys)), _settings(level))
        front.sni_callback = _sni_switch(selector, contexts, default)
        out[addr] = front
    return out


def _sni_switch(selector: Any, contexts: dict[Any, ssl.SSLContext], default: ssl.SSLContext) -> Any:
    """An ``sni_callback``: the server chosen by the SNI name (NGINX's rules) gives the
    certificate; no name, or the default server's name, keeps the default one."""
    cache: dict[str, ssl.SSLContext | None] = {}

    def on_sni(sslobj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        if not name:
            return None
        name = name.lower()
        if name in cache:
            chosen = cache[name]
        else:
            server, _ = selector.find(name)
            found = contexts.get(server)
            chosen = None if found is None or found is default else found
            if len(cache) < 1024:
                cache[name] = chosen
        if chosen is not None:
            sslobj.context = chosen
        return None

    return on_sni
