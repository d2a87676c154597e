"""How the ``jwtgate`` tool commands talk to the console: exit codes, errors, stdin, JSON.

Exit codes, the same for every command:

    0  success (a token verified, a request the gateway would let through)
    1  failure: a token refused, a request the gateway refuses, invalid input or options,
       a file that cannot be read or written
    2  command-line usage error (click: unknown option, missing argument)

An error is one line on stderr, ``jwtgate: error: MESSAGE``, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from jwtgate.errors import ConfigError, JwtgateError

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_CODES_HELP", "fail", "warn", "one_line_errors",
           "read_argument", "echo_json"]

EXIT_OK = 0
EXIT_FAILED = 1
#: The exit-code paragraph shown at the end of each tool command's --help.
EXIT_CODES_HELP = "Exit codes: 0 success, 1 failure or invalid input, 2 usage error."
#: Most bytes read from stdin or an @FILE argument (a token, a secret, a JSON document).
MAX_INPUT = 1 << 20

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> NoReturn:
    """Print ``jwtgate: error: MESSAGE`` on stderr and exit 1."""
    click.echo(f"jwtgate: error: {message}", err=True)
    sys.exit(EXIT_FAILED)


def warn(message: str) -> None:
    """Print ``jwtgate: warning: MESSAGE`` on stderr."""
    click.echo(f"jwtgate: warning: {message}", err=True)


def one_line_errors(fn: F) -> F:
    """Turn every exception of a command into one line on stderr and exit code 1.

    Configuration errors print as ``jwtgate check`` prints them (``[emerg] ... in FILE:LINE``);
    click's own exceptions (usage errors, exit) pass through.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                SystemExit):
            raise
        except ConfigError as err:
            for e in getattr(err, "errors", None) or [err]:
                click.echo(f"jwtgate: [emerg] {e}", err=True)
            sys.exit(EXIT_FAILED)
        except JwtgateError as err:
            fail(str(err))
        except OSError as err:
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            fail(f"{err.strerror or type(err).__name__}{where}")
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as err:  # a bug: still one line, never a traceback
            fail(f"internal error ({type(err).__name__}): {err}")
    return wrapper  # type: ignore[return-value]


def read_argument(value: str, what: str, *, strip_newline: bool = True) -> str:
    """An argument given inline, as ``-`` (stdin) or as ``@FILE``; at most 1 MiB.

    Args:
        value: the argument as typed.
        what: its name, for messages.
        strip_newline: drop one final newline of stdin or file input (what ``echo`` adds).

    Returns:
        The text. An unreadable file, more than 1 MiB or non-UTF-8 input exits 1 (:func:`fail`).
    """
    if value == "-":
        data = sys.stdin.buffer.read(MAX_INPUT + 1)
        source = "stdin"
    elif value.startswith("@"):
        try:
            with open(value[1:], "rb") as f:
                data = f.read(MAX_INPUT + 1)
        except OSError as err:
            fail(f"cannot read {value[1:]}: {err.strerror or type(err).__name__}")
        source = value[1:]
    else:
        return value
    if len(data) > MAX_INPUT:
        fail(f"{what} from {source} is larger than {MAX_INPUT} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"{what} from {source} is not UTF-8")
    if strip_newline:
        text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    return text


def echo_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON (UTF-8, not ASCII-escaped) on stdout; a string that
    is not valid Unicode (an unpaired surrogate from a hostile token) is \\u-escaped."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, indent=2, ensure_ascii=True)
    click.echo(text)
