"""The log module (``ngx_http_log_module``): ``log_format`` and ``access_log``.

Formats compile once: several strings are concatenated, ``escape=default`` writes ``"``,
``\\`` and bytes outside 0x20-0x7e as ``\\xXX`` and an empty variable as ``-``,
``escape=json`` escapes for a JSON string (an empty variable stays empty), ``escape=none``
writes values as they are. ``access_log`` lines go to :class:`~jwtgate.observability.accesslog.AccessLog`
files, which never block the event loop (``buffer=``, ``flush=``, reopened on ``SIGUSR1``).

Tokens stay out of logs: ``jwtgate check`` warns when a location authenticated by
``auth_jwt`` logs the variables that hold its token (``$request``, ``$request_uri``,
``$args`` and the argument itself for ``token=$arg_NAME``; ``$http_authorization`` for a
Bearer token; the cookie for ``token=$cookie_NAME``), and ``access_log_redact_token on``
shows the token as ``REDACTED`` in those variables, in access logs only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import parse_flag, parse_size, parse_time
from jwtgate.modules.base import Module, Phase, Resource
from jwtgate.observability.accesslog import AccessLog
from jwtgate.vars.complex import compile_complex

__all__ = ["LogModule", "LogFormat", "escape_default", "escape_json", "escape_none", "REDACTED"]

#: What a redacted token looks like in access logs.
REDACTED = "REDACTED"

DIRECTIVES = (
    DirectiveSpec("log_format", "log", Ctx.HTTP, 2, None, inherit=Inherit.NONE,
                  syntax="log_format name [escape=default|json|none] string ...;",
                  doc="A named access-log line format; several strings are concatenated. "
                      "`escape=default` writes `\"`, `\\` and bytes outside printable ASCII as "
                      "`\\xXX` and an empty variable as `-`; `escape=json` escapes for JSON "
                      "strings (an empty variable stays empty); `escape=none` escapes nothing. "
                      "`combined` is predefined.",
                  default="combined \"...\""),
    DirectiveSpec("access_log", "log", HSL, 1, 6, inherit=Inherit.ARRAY,
                  syntax="access_log path [format [buffer=size] [flush=time] [if=condition]] | off;",
                  doc="Writes a line per request to `path` in `format` (default `combined`). "
                      "Several per level; `off` at a level turns them all off there. With "
                      "`buffer=` lines are written when the buffer is full, after `flush=` time, "
                      "on reload, on `SIGUSR1` and on stop. With `if=` a request is logged only "
                      "when the condition is neither empty nor \"0\". Writing never blocks request "
                      "processing; `SIGUSR1` (or `jwtgate -s reopen`) reopens the files after "
                      "rotation; several processes may append to one file.",
                  default="off",
                  nginx_notes="NGINX logs to logs/access.log by default; jwtgate logs nothing unless "
                              "told to. `gzip`, `syslog:` targets and variables in the path are "
                              "refused."),
    DirectiveSpec("access_log_redact_token", "log", HSL, 1, 1,
                  syntax="access_log_redact_token on | off;",
                  doc="With `on`, access logs show the token `auth_jwt` takes from the request as "
                      "`REDACTED`: for `token=$arg_NAME` in `$request`, `$request_uri`, `$args`, "
                      "`$query_string` and `$arg_NAME`; for a Bearer token in `$http_authorization`; "
                      "for `token=$cookie_NAME` in `$cookie_NAME` and `$http_cookie`. Only what "
                      "access logs show changes. Without it, `jwtgate check` warns about formats "
                      "that would log a token.",
                  default="off",
                  nginx_notes="jwtgate's own directive."),
)

COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent"')


# -- escaping ------------------------------------------------------------------------------

_DEFAULT_SAFE = frozenset(range(0x20, 0x7F)) - {0x22, 0x5C}


def escape_default(value: str) -> str:
    """NGINX's ``escape=default``: ``"``, ``\\``, and bytes outside 0x20-0x7e as ``\\xXX``
    (UTF-8 bytes of non-ASCII text); an empty value as ``-``."""
    if not value:
        return "-"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return "".join(chr(b) if b in _DEFAULT_SAFE else f"\\x{b:02X}" for b in to_bytes(value))


def to_bytes(text: str) -> bytes:
    """``text`` as the bytes it came from: raw octets kept as surrogate escapes (header
    bytes that are not UTF-8) come back as they were; anything else unencodable is
    backslash-escaped, so a log line is never lost to an encoding error."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


_JSON_TABLE = {i: f"\\u{i:04X}" for i in range(0x20)}
_JSON_TABLE.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x08: "\\b", 0x0C: "\\f",
                    0x22: '\\"', 0x5C: "\\\\"})


def escape_json(value: str) -> str:
    """NGINX's ``escape=json`` (``ngx_escape_json``): ``"`` and ``\\`` backslashed, control
    characters as ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f`` or ``\\u00XX``; empty stays empty."""
    return value.translate(_JSON_TABLE)


def escape_none(value: str) -> str:
    """NGINX's ``escape=none``: the value as it is (an empty value writes nothing)."""
    return value


_ESCAPES = {"default": escape_default, "json": escape_json, "none": escape_none}


@dataclass(eq=False)
class LogFormat:
    """A compiled ``log_format``.

    Attributes:
        name: its name.
        escape: ``default``, ``json`` or ``none``.
        strings: the format strings as written (compiled one by one, then concatenated).
        variables: every variable name the format uses (lowercase).
        render: ``render(ctx) -> str``, the line without its newline.
    """

    name: str
    escape: str
    strings: tuple[str, ...]
    variables: frozenset[str]
    render: Callable[[Any], str]
    directive: Any


def compile_format(name: str, escape: str, strings: tuple[str, ...], registry: Any, d: Any) -> LogFormat:
    """Compile a format's strings against ``registry`` (errors located at ``d``)."""
    parts = [compile_complex(s, registry, d.file, d.line, escape=_ESCAPES[escape]) for s in strings]
    names = frozenset(v for p in parts for v in p.variables)
    if len(parts) == 1:
        render = parts[0].evaluate
    else:
        evaluates = tuple(p.evaluate for p in parts)

        def render(ctx: Any) -> str:
            return "".join([e(ctx) for e in evaluates])
    return LogFormat(name, escape, tuple(strings), names, render, d)


# -- tokens in logs ------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenSource:
    """Where a location's ``auth_jwt`` takes its token, and the variables that show it.

    Attributes:
        what: for messages, e.g. ``token=$arg_apijwt``.
        variables: variable names (lowercase) whose value contains the token.
        redact: getters replacing those variables in access logs, by name.
    """

    what: str
    variables: frozenset[str]
    redact: dict[str, Callable[[Any], str]]


def _redact_pairs(text: str, sep: str, name: str, strip: bool = False) -> str:
    """``text`` with the value of every ``name=value`` pair (split on ``sep``) redacted."""
    if not text:
        return text
    out = []
    changed = False
    for part in text.split(sep):
        key, eq, _ = part.partition("=")
        if eq and (key.strip() if strip else key).lower() == name:
            out.append(key + "=" + REDACTED)
            changed = True
        else:
            out.append(part)
    return sep.join(out) if changed else text


def token_source(loc: Any) -> TokenSource | None:
    """The token source of the ``auth_jwt`` in force at ``loc``, or ``None`` without one."""
    conf = loc.get("auth_jwt")
    if conf is None or getattr(conf, "off", True):
        return None
    token = conf.token
    if token is None:
        def authorization(ctx: Any) -> str:
            value = ctx.http.get("authorization", "")
            scheme, space, _ = value.partition(" ")
            return f"{scheme} {REDACTED}" if space else value
        return TokenSource("the Authorization header", frozenset({"http_authorization"}),
                           {"http_authorization": authorization})
    names = token.variables
    what = f"token={token.source}"
    if len(names) == 1 and names[0].startswith("arg_") and token.source.lower() in (f"${names[0]}", f"${{{names[0]}}}"):
        arg = names[0][4:]

        def target(ctx: Any) -> str:
            path, q, query = ctx.target.partition("?")
            return path + q + _redact_pairs(query, "&", arg) if q else path

        def arg_value(ctx: Any) -> str:
            return REDACTED if _redact_pairs(ctx.args, "&", arg) != ctx.args else ""
        return TokenSource(what, frozenset({"request", "request_uri", "args", "query_string", names[0]}), {
            "request": lambda ctx: f"{ctx.method} {target(ctx)} HTTP/{ctx.version}",
            "request_uri": target,
            "args": lambda ctx: _redact_pairs(ctx.args, "&", arg),
            "query_string": lambda ctx: _redact_pairs(ctx.args, "&", arg),
            names[0]: arg_value,
        })
    if len(names) == 1 and names[0].startswith("cookie_"):
        cookie = names[0][7:]
        return TokenSource(what, frozenset({"http_cookie", names[0]}), {
            "http_cookie": lambda ctx: _redact_pairs(ctx.http.get("cookie", ""), ";", cookie, strip=True),
            names[0]: lambda ctx: REDACTED if ctx.http.get("cookie") and f"{cookie}=" in ctx.http["cookie"].lower() else "",
        })
    if len(names) == 1 and names[0] == "http_authorization":
        return TokenSource(what, frozenset(names), {"http_authorization": lambda ctx: REDACTED if ctx.http.get("authorization") else ""})
    return TokenSource(what, frozenset(names), {n: (lambda ctx: REDACTED) for n in names})


class _Redacting:
    """A variable registry that resolves some names to redacting getters."""

    def __init__(self, registry: Any, redact: dict[str, Callable[[Any], str]]) -> None:
        self.registry = registry
        self.redact = redact

    def resolve(self, name: str) -> Any:
        getter = self.redact.get(name.lower())
        return getter if getter is not None else self.registry.resolve(name)


# -- the module ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LogTarget:
    """A parsed ``access_log`` (not ``off``)."""

    file: AccessLog
    format: str
    condition: Any
    directive: Any


class LogModule(Module):
    """``log_format``, ``access_log`` and ``access_log_redact_token``."""

    name = "log"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        build.shared["log"] = {"formats": {}, "files": {}, "redacted": {}, "warned": set()}

    def predeclare(self, build: Any, level: Any, d: Any) -> None:
        if d.name == "log_format":
            formats = build.shared["log"]["formats"]
            if d.args[0] in formats or d.args[0] == "combined":
                raise build.error(f'duplicate "log_format" name "{d.args[0]}"', d)
            formats[d.args[0]] = None

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        if d.name == "log_format":
            return self._format(build, d)
        if d.name == "access_log_redact_token":
            try:
                return parse_flag(d.args[0])
            except ValueError:
                raise build.error(f'invalid value "{d.args[0]}" in "{d.name}" directive, it must be '
                                  '"on" or "off"', d) from None
        return self._access_log(build, d)

    def _format(self, build: Any, d: Any) -> LogFormat:
        strings = list(d.args[1:])
        escape = "default"
        if strings and strings[0].startswith("escape="):
            escape = strings.pop(0)[len("escape="):]
            if escape not in _ESCAPES:
                raise build.error(f'unknown log format escaping "{escape}"', d)
        if not strings:
            raise build.error('invalid number of arguments in "log_format" directive', d)
        fmt = compile_format(d.args[0], escape, tuple(strings), build.variables, d)
        build.shared["log"]["formats"][d.args[0]] = fmt
        return fmt

    def _access_log(self, build: Any, d: Any) -> LogTarget | None:
        args = d.args
        if args[0] == "off":
            if len(args) > 1:
                raise build.error(f'invalid parameter "{args[1]}"', d)
            return None
        if args[0].startswith("syslog:"):
            raise build.error('"syslog:" targets of "access_log" are not supported; log to a file '
                              'and ship it, or to /dev/stdout', d)
        path = build.path(args[0])
        if "$" in args[0]:
            raise build.error('variables in "access_log" paths are not supported', d)
        buffer = 0
        flush = 0.0
        condition = None
        for arg in args[2:]:
            name, eq, value = arg.partition("=")
            if name == "buffer" and eq:
                try:
                    buffer = parse_size(value)
                except ValueError:
                    buffer = 0
                if buffer <= 0:
                    raise build.error(f'invalid buffer size "{value}"', d)
            elif name == "flush" and eq:
                try:
                    flush = parse_time(value, kind="msec")
                except ValueError:
                    flush = 0.0
                if flush <= 0:
                    raise build.error(f'invalid flush time "{value}"', d)
            elif name == "gzip":
                raise build.error('the "gzip" parameter of "access_log" is not supported: compress '
                                  'rotated files instead (after "jwtgate -s reopen")', d)
            elif name == "if" and eq and value:
                condition = build.complex(value, d)
            else:
                raise build.error(f'invalid parameter "{arg}"', d)
        if flush and not buffer:
            raise build.error(f'no buffer is defined for access_log "{args[0]}"', d)
        if not os.path.isdir(os.path.dirname(path)):
            raise build.error(f'open() "{path}" failed (2: No such file or directory)', d)
        files = build.shared["log"]["files"]
        target = files.get(path)
        if target is None:
            target = files[path] = AccessLog(path)
        if buffer:
            # the buffer belongs to the file: every access_log naming it uses it
            if target.buffer and (target.buffer, target.flush_interval) != (buffer, flush):
                raise build.error(f'access_log "{args[0]}" already defined with conflicting parameters', d)
            target.buffer, target.flush_interval = buffer, flush
        return LogTarget(target, args[1] if len(args) > 1 else "combined", condition, d)

    def finish(self, build: Any) -> None:
        formats = build.shared["log"]["formats"]
        formats["combined"] = compile_format("combined", "default", (COMBINED,), build.variables, _Origin())

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        entries = loc.get_all("access_log")
        if not entries or any(e is None for e in entries):
            return {}  # no access_log, or "access_log off" at the level that defines them
        source = token_source(loc)
        redact = bool(source) and loc.get("access_log_redact_token", False)
        out = []
        for entry in entries:
            fmt = self._lookup(build, entry)
            if source is not None:
                if redact:
                    fmt = self._redacted(build, fmt, source)
                else:
                    self._warn(build, loc, entry, fmt, source)
            out.append(_make_logger(entry.file, fmt.render, entry.condition))
        return {Phase.LOG: out}

    def resources(self, build: Any) -> list[Resource]:
        return list(build.shared["log"]["files"].values())

    @staticmethod
    def _lookup(build: Any, entry: LogTarget) -> LogFormat:
        formats = build.shared["log"]["formats"]
        fmt = formats.get(entry.format)
        if fmt is None:  # NGINX matches format names case-insensitively here
            fmt = next((f for n, f in formats.items() if n.lower() == entry.format.lower()), None)
        if fmt is None:
            raise build.error(f'unknown log format "{entry.format}"', entry.directive)
        return fmt

    @staticmethod
    def _redacted(build: Any, fmt: LogFormat, source: TokenSource) -> LogFormat:
        if not fmt.variables & source.variables:
            return fmt
        cache = build.shared["log"]["redacted"]
        key = (fmt.name, source.what)
        redacted = cache.get(key)
        if redacted is None:
            registry = _Redacting(build.variables, source.redact)
            redacted = cache[key] = compile_format(fmt.name, fmt.escape, fmt.strings, registry, fmt.directive)
        return redacted

    @staticmethod
    def _warn(build: Any, loc: Any, entry: LogTarget, fmt: LogFormat, source: TokenSource) -> None:
        leaked = sorted(fmt.variables & source.variables)
        if not leaked:
            return
        warned = build.shared["log"]["warned"]
        key = (id(entry.directive), source.what)
        if key in warned:
            return
        warned.add(key)
        where = f' in location "{loc.location.pattern}"' if getattr(loc, "location", None) is not None else ""
        names = ", ".join(f"${n}" for n in leaked)
        build.warn(f'access_log "{entry.file.path}" with format "{fmt.name}" writes the JWT that '
                   f'"auth_jwt" takes from {source.what}{where} to the log through {names}; set '
                   '"access_log_redact_token on" or use a format without it', entry.directive)


@dataclass(frozen=True)
class _Origin:
    """Where the predefined ``combined`` format is 'written', for error messages."""

    file: str = "<built-in combined log format>"
    line: int = 0


def _make_logger(target: AccessLog, render: Callable[[Any], str], condition: Any) -> Any:
    write = target.write
    if condition is None:
        def write_line(ctx: Any) -> None:
            write(to_bytes(render(ctx) + "\n"))
        return write_line

    def write_if(ctx: Any) -> None:
        value = condition(ctx)
        if value and value != "0":
            write(to_bytes(render(ctx) + "\n"))
    return write_if
