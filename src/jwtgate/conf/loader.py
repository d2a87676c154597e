"""Read a configuration from disk: the main file plus every ``include``, as NGINX does.

``include PATTERN;`` is NGINX's ``ngx_conf_include``: allowed in any context, replaced in
place by the directives of the matched files. A relative pattern is relative to the
directory of the main configuration file (NGINX's conf prefix) or, when nothing matches
there, to the directory of the including file; a pattern containing
``*``, ``?`` or ``[`` is a glob whose matches are read in sorted (byte) order and may match
nothing; a plain path must exist. Beyond NGINX: include cycles and chains deeper than
:data:`MAX_INCLUDE_DEPTH` are errors (NGINX recurses until it runs out of descriptors),
files larger than :data:`MAX_CONFIG_SIZE` are refused, and files must be UTF-8.
"""

from __future__ import annotations

import glob
import os

from jwtgate.conf.parser import parse_expanding
from jwtgate.conf.tree import Directive
from jwtgate.errors import ConfigError

__all__ = ["load", "dump", "MAX_CONFIG_SIZE", "MAX_INCLUDE_DEPTH"]

#: Largest configuration file read, in bytes.
MAX_CONFIG_SIZE = 16 * 1024 * 1024

#: Longest chain of nested includes (the main file includes at depth 1).
MAX_INCLUDE_DEPTH = 32

_GLOB_CHARS = ("*", "?", "[")  # NGINX: strpbrk(file, "*?[")


def load(path: str) -> tuple[Directive, ...]:
    """Read, parse and expand a configuration file.

    Args:
        path: the main configuration file. Its directives carry ``file=path`` as given;
            included files carry their resolved (absolute) path.

    Returns:
        The top-level directives with every ``include`` (at any depth, also inside
        included files) replaced by the directives of the files it matches.

    Raises:
        ConfigError: a parse error of any file (located in that file);
            ``open() "PATH" failed (ERRNO: STRERROR)`` for an unreadable file (not
            located for the main file, located at the ``include`` otherwise);
            ``invalid number of arguments in "include" directive``;
            ``directive "include" is not terminated by ";"`` (``include x { }``);
            ``include cycle: "a" -> "b" -> "a"``;
            ``include nesting too deep (more than 32 levels)``;
            ``configuration file "PATH" is too large (N bytes, the limit is 16777216)``;
            ``invalid UTF-8 byte 0xNN`` (located at the line of the byte).
    """
    return _Loader(path).run()


def dump(path: str) -> str:
    """Return the configuration files as ``nginx -T`` prints them.

    For the main file and then every included file, in the order they are read and each
    only once: ``# configuration file PATH:\\n``, the file's text as is, then ``\\n``.

    Args:
        path: the main configuration file.

    Raises:
        ConfigError: as :func:`load`; nothing is dumped from an invalid configuration.
    """
    loader = _Loader(path)
    loader.run()
    seen: set[str] = set()
    out: list[str] = []
    for name, text in loader.files:
        if name not in seen:
            seen.add(name)
            out.append(f"# configuration file {name}:\n{text}\n")
    return "".join(out)


class _Loader:
    """One load: the conf prefix, the files read so far and the chain being included."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.prefix = os.path.dirname(os.path.abspath(path))
        self.files: list[tuple[str, str]] = []  # (name, text) in read order
        self.chain: list[tuple[str, str]] = []  # (name, real path) of files being expanded

    def run(self) -> tuple[Directive, ...]:
        return self._file(self.path, None)

    def _file(self, name: str, at: Directive | None) -> tuple[Directive, ...]:
        real = os.path.realpath(name)
        if any(r == real for _, r in self.chain):
            names = [n for n, _ in self.chain[[r for _, r in self.chain].index(real) :]] + [name]
            assert at is not None  # the main file starts the chain, so it cannot close one
            raise ConfigError("include cycle: " + " -> ".join(f'"{n}"' for n in names), at.file, at.line)
        if len(self.chain) > MAX_INCLUDE_DEPTH:
            assert at is not None
            raise ConfigError(f"include nesting too deep (more than {MAX_INCLUDE_DEPTH} levels)", at.file, at.line)
        text = self._read(name, at)
        self.files.append((name, text))
        self.chain.append((name, real))
        try:
            return parse_expanding(text, name, self._include)
        finally:
            self.chain.pop()

    def _include(self, d: Directive) -> list[Directive]:
        if d.block is not None:
            raise ConfigError('directive "include" is not terminated by ";"', d.file, d.line)
        if len(d.args) != 1:
            raise ConfigError('invalid number of arguments in "include" directive', d.file, d.line)
        names = self._match(os.path.join(self.prefix, d.args[0]))  # an absolute pattern stays as is
        if not names and not os.path.isabs(d.args[0]):
            # Not under the conf prefix: look next to the including file, the other common
            # convention (the prefix wins when both match, as in NGINX).
            local = self._match(os.path.join(os.path.dirname(os.path.abspath(d.file)), d.args[0]))
            if local and os.path.exists(local[0]):
                names = local
        if not names and not any(c in d.args[0] for c in _GLOB_CHARS):
            names = [os.path.join(self.prefix, d.args[0])]  # open() reports the NGINX path
        out: list[Directive] = []
        for name in names:
            out.extend(self._file(name, d))
        return out

    @staticmethod
    def _match(full: str) -> list[str]:
        """Files a pattern names: a glob's matches in glob(3) order, or the existing path."""
        if any(c in full for c in _GLOB_CHARS):
            return sorted(glob.glob(full), key=os.fsencode)  # glob(3) order in the C locale
        return [full] if os.path.exists(full) else []

    @staticmethod
    def _read(name: str, at: Directive | None) -> str:
        where = (at.file, at.line) if at is not None else (None, None)
        try:
            with open(name, "rb") as f:
                data = f.read(MAX_CONFIG_SIZE + 1)
        except OSError as e:
            raise ConfigError(f'open() "{name}" failed ({e.errno}: {e.strerror})', *where) from None
        if len(data) > MAX_CONFIG_SIZE:
            size = os.path.getsize(name) if os.path.isfile(name) else len(data)
            raise ConfigError(
                f'configuration file "{name}" is too large ({size} bytes, the limit is {MAX_CONFIG_SIZE})', *where
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise ConfigError(f"invalid UTF-8 byte 0x{data[e.start]:02x}", name, line) from None
