"""The error log writes one line per record, as NGINX's: control characters from request data
(a decoded URI, a header, a claim) are escaped, so no one can forge a line or a terminal escape."""

from __future__ import annotations

import logging

from jwtgate.observability.errorlog import setup_error_log


def test_control_characters_are_escaped(tmp_path):
    path = tmp_path / "error.log"
    setup_error_log(str(path), "info")
    try:
        logging.getLogger("jwtgate.runtime").error(
            "unexpected error while serving %s %s", "GET", "/x\r\n2026/11/29 00:00:00 [crit] 1#0: FORGED\x1b[2J\x7f")
        logging.getLogger("jwtgate").info("plain line, unicode kept: é ✓")
    finally:
        setup_error_log("stderr", "error")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(r"/x\x0d\x0a2026/11/29 00:00:00 [crit] 1#0: FORGED\x1b[2J\x7f")
    assert " [error] " in lines[0]
    assert lines[1].endswith("plain line, unicode kept: é ✓")
