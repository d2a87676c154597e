"""The error log: Python logging set up as NGINX's ``error_log`` (file or stderr, level).

Lines look like NGINX's: ``2026/11/29 19:24:34 [error] 4242#0: message``, one line per record:
control characters in a message are written as ``\\xNN``. Messages never carry a token or key
material: callers log reasons and codes, not credentials.
"""

from __future__ import annotations

import logging
import os
import sys
import time

__all__ = ["setup_error_log", "reopen_error_log", "NGINX_LEVELS", "NOTICE"]

#: NGINX's ``notice``, between ``info`` and ``warn`` (Python logging has no such level).
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

#: NGINX level names → Python logging levels.
NGINX_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "notice": NOTICE, "warn": logging.WARNING,
    "error": logging.ERROR, "crit": logging.CRITICAL, "alert": logging.CRITICAL,
    "emerg": logging.CRITICAL,
}
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", NOTICE: "notice", logging.WARNING: "warn",
          logging.ERROR: "error", logging.CRITICAL: "crit"}


#: Control characters as ``\xNN``: a value from a request (a decoded URI, a header, a claim)
#: that reaches a message can neither start a forged line nor send terminal escapes.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


class _NginxFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        level = _NAMES.get(record.levelno, record.levelname.lower())
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            # One line per record: the exception's type and text, not a traceback.
            exc = record.exc_info[1]
            message += f" ({type(exc).__name__}: {exc})"
        return f"{stamp} [{level}] {os.getpid()}#0: {message.translate(_ESCAPES)}"


def setup_error_log(target: str = "stderr", level: str = "error") -> logging.Handler:
    """Route the ``jwtgate`` logger to ``target`` (``stderr`` or a file path) from ``level``.

    Replaces a handler installed by an earlier call (a reload may change the target).

    Raises:
        OSError: when the file cannot be opened.
    """
    logger = logging.getLogger("jwtgate")
    handler: logging.Handler
    if target == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(_NginxFormatter())
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(NGINX_LEVELS.get(level, logging.ERROR))
    logger.propagate = False
    return handler


def reopen_error_log() -> None:
    """Reopen the error log file (log rotation, ``SIGUSR1``); nothing to do for stderr.

    When the file cannot be opened, the old one stays in use and the failure is logged there.
    """
    for handler in logging.getLogger("jwtgate").handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                stream = handler._open()
            except OSError as e:
                logging.getLogger("jwtgate").error('reopening "%s" failed (%s)', handler.baseFilename, e.strerror)
                continue
            old = handler.setStream(stream)
            if old is not None:
                old.close()
