"""The log module (``ngx_http_log_module``): ``log_format`` and ``access_log``.

Lines are formatted when a request ends and written in batches: every line formatted
during one turn of the event loop goes out in one ``write(2)`` on a file opened with
``O_APPEND``, so lines are never interleaved or split, and the loop never waits on a
file lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from jwtgate.conf.spec import HSL, Ctx, DirectiveSpec, Inherit
from jwtgate.modules.base import Module, Phase

__all__ = ["LogModule", "AccessLog", "escape_default", "escape_json"]

log = logging.getLogger("jwtgate.log")

DIRECTIVES = (
    DirectiveSpec("log_format", "log", Ctx.HTTP, 2, None, inherit=Inherit.NONE,
                  syntax="log_format name [escape=default|json|none] string ...;",
                  doc="A named access-log line format; several strings are concatenated. "
                      "`combined` is predefined.", default="combined \"...\""),
    DirectiveSpec("access_log", "log", HSL, 1, 4, inherit=Inherit.ARRAY,
                  syntax="access_log path [format] | off;",
                  doc="Writes an access-log line per request to `path` in `format` (default "
                      "`combined`). Several per level; `off` cancels the inherited ones.",
                  default="off",
                  nginx_notes="NGINX logs to logs/access.log by default; jwtgate logs nothing unless "
                              "told to. `buffer=`, `flush=`, `if=` and `syslog:` are not supported yet."),
)

COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent"')


def escape_default(value: str) -> str:
    """NGINX's ``escape=default``: ``"``, ``\\``, and bytes outside 0x20-0x7e as ``\\xXX``; empty → ``-``."""
    if not value:
        return "-"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    out = []
    for byte in value.encode("utf-8", "backslashreplace"):
        if byte < 0x20 or byte > 0x7E or byte in (0x22, 0x5C):
            out.append(f"\\x{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def escape_json(value: str) -> str:
    """NGINX's ``escape=json``: JSON string escaping without the quotes; empty stays empty."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


def escape_none(value: str) -> str:
    """NGINX's ``escape=none``: the value as is; empty → ``-``."""
    return value or "-"


_ESCAPES = {"default": escape_default, "json": escape_json, "none": escape_none}


@dataclass(eq=False)
class AccessLog:
    """One access-log file, shared by every ``access_log`` that names it.

    Args:
        path: absolute path.
    """

    path: str
    fd: int = -1
    pending: list[bytes] | None = None

    def __repr__(self) -> str:
        return f"<AccessLog {self.path} fd={self.fd}>"

    def open(self) -> None:
        """Open (or reopen, for log rotation) the file for appending."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        old, self.fd = self.fd, fd
        if old >= 0:
            os.close(old)

    def write(self, line: bytes) -> None:
        """Queue ``line``; the batch is written at the end of this event-loop turn."""
        if self.pending is None:
            self.pending = [line]
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()
        else:
            self.pending.append(line)

    def flush(self) -> None:
        """Write every queued line now."""
        lines, self.pending = self.pending, None
        if not lines:
            return
        try:
            if self.fd < 0:
                self.open()
            data = b"".join(lines)
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError as e:
            log.error('write() to "%s" failed (%s)', self.path, e.strerror)

    def close(self) -> None:
        self.flush()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LogModule(Module):
    """``log_format`` and ``access_log``."""

    name = "log"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        build.shared["log"] = {"formats": {}, "files": {}}

    def predeclare(self, build: Any, level: Any, d: Any) -> None:
        if d.name == "log_format":
            formats = build.shared["log"]["formats"]
            if d.args[0] in formats or d.args[0] == "combined":
                raise build.error(f'duplicate "log_format" name "{d.args[0]}"', d)
            formats[d.args[0]] = None

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        if d.name == "log_format":
            args = list(d.args[1:])
            escape = "default"
            if args and args[0].startswith("escape="):
                escape = args.pop(0)[len("escape="):]
                if escape not in _ESCAPES:
                    raise build.error(f'unknown log format escaping "{escape}"', d)
            if not args:
                raise build.error('invalid number of arguments in "log_format" directive', d)
            fmt = build.complex("".join(args), d, escape=_ESCAPES[escape])
            build.shared["log"]["formats"][d.args[0]] = fmt
            return fmt
        # access_log
        if d.args[0] == "off":
            if len(d.args) > 1:
                raise build.error('invalid parameter "%s"' % d.args[1], d)
            return None
        if d.args[0].startswith("syslog:"):
            raise build.error('"syslog:" targets of "access_log" are not supported yet', d)
        for extra in d.args[2:]:
            raise build.error(f'the "{extra.split("=")[0]}" parameter of "access_log" is not supported yet', d)
        path = build.path(d.args[0])
        if "$" in path:
            raise build.error('variables in "access_log" paths are not supported yet', d)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise build.error(f'open() "{path}" failed (2: No such file or directory)', d)
        return path, (d.args[1] if len(d.args) > 1 else "combined"), d

    def finish(self, build: Any) -> None:
        formats = build.shared["log"]["formats"]
        formats["combined"] = build.complex(COMBINED, _Origin(), escape=escape_default)

    def handlers(self, build: Any, loc: Any) -> dict[Phase, list[Any]]:
        entries = [e for e in loc.get_all("access_log") if e is not None]
        if not entries:
            return {}
        formats = build.shared["log"]["formats"]
        files = build.shared["log"]["files"]
        out = []
        for path, fmt_name, d in entries:
            fmt = formats.get(fmt_name)
            if fmt is None:
                raise build.error(f'unknown log format "{fmt_name}"', d)
            target = files.get(path)
            if target is None:
                target = files[path] = AccessLog(path)
            out.append(_make_logger(target, fmt))
        return {Phase.LOG: out}


@dataclass(frozen=True)
class _Origin:
    """Where the predefined ``combined`` format is 'written', for error messages."""

    file: str = "<built-in combined log format>"
    line: int = 0


def _make_logger(target: AccessLog, fmt: Any) -> Any:
    def write_line(ctx: Any) -> None:
        target.write((fmt(ctx) + "\n").encode("utf-8", "backslashreplace"))
    return write_line
