"""Running the real ``jwtgate`` tool commands (jwk, token, explain) in a subprocess."""

from __future__ import annotations

import json
import subprocess

from jwtgate_e2e import JWTGATE


def jwtgate(*args: str, input: str | None = None, cwd=None, timeout: float = 30) -> subprocess.CompletedProcess:
    """``jwtgate ARGS...`` with ``input`` on stdin (empty stdin when ``None``)."""
    return subprocess.run([JWTGATE, *map(str, args)], input=input if input is not None else "",
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def ok(*args: str, **kw) -> str:
    """Run, expect exit 0 and no traceback; return stdout."""
    p = jwtgate(*args, **kw)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    return p.stdout


def fails(*args: str, code: int = 1, **kw) -> str:
    """Run, expect exit ``code`` with one ``jwtgate: error:`` line on stderr; return stderr."""
    p = jwtgate(*args, **kw)
    assert p.returncode == code, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    if code == 1:
        errors = [line for line in p.stderr.splitlines() if line.startswith("jwtgate: error: ")]
        assert len(errors) == 1, p.stderr
        return errors[0][len("jwtgate: error: "):]
    return p.stderr


def jwks_of(text: str) -> list[dict]:
    return json.loads(text)["keys"]
