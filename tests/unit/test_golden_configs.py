"""Golden configurations (tests/golden): valid ones against a summary of their Plan, invalid
ones against the exact ``[emerg]`` lines ``jwtgate check`` prints.

Set ``JWTGATE_UPDATE_GOLDEN=1`` to rewrite the expectations after a deliberate change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from jwtgate.conf.plan import Plan, compile_plan
from jwtgate.errors import ConfigError

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
VALID = sorted((GOLDEN / "valid").glob("*.conf"))
INVALID = sorted((GOLDEN / "invalid").glob("*.conf"))
UPDATE = os.environ.get("JWTGATE_UPDATE_GOLDEN") == "1"


def _module(handler: Any) -> str:
    """The module that made ``handler`` (a function or an object), e.g. ``auth_jwt``."""
    where = getattr(handler, "__module__", None)
    if where is None or not callable(handler) or not hasattr(handler, "__code__"):
        where = type(handler).__module__
    return where.rsplit(".", 1)[-1]


def _location(loc: Any) -> dict[str, Any]:
    kind = loc.match.kind
    out: dict[str, Any] = {
        "match": f"{kind} {loc.match.pattern}" if kind not in ("", "@") else loc.match.pattern,
        "line": loc.line,
        "access": [_module(h) for h in loc.access],
        "content": _module(loc.content) if loc.content is not None else None,
        "log": [_module(h) for h in loc.log],
    }
    if loc.auto_redirect:
        out["auto_redirect"] = True
    if loc.children is not None:
        out["children"] = _locations(loc.children)
    return out


def _locations(matcher: Any) -> list[dict[str, Any]]:
    every = [*matcher.exact.values(), *matcher.prefixes, *matcher.regexes, *matcher.named.values()]
    return [_location(loc) for loc in sorted(every, key=lambda loc: loc.line)]


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def summary(plan: Plan, folder: Path) -> dict[str, Any]:
    def rel(text: str) -> str:
        return text.replace(str(folder), "{dir}")

    return {
        "binds": [_addr(h, p) for h, p in plan.binds],
        "worker_processes": plan.worker_processes,
        "error_log": list(plan.error_log),
        "pid": rel(plan.pid) if plan.pid else None,
        "servers": [{
            "at": f"{rel(s.file)}:{s.line}",
            "names": list(s.names),
            "listens": [_addr(ls.host, ls.port) + (" default_server" if ls.default_server else "")
                        for ls in s.listens],
            "rewrite": [_module(h) for h in s.rewrite],
            "locations": _locations(s.locations),
        } for s in plan.servers],
        "selectors": {_addr(h, p): {"default": f"{rel(sel.default.file)}:{sel.default.line}", "exact": sorted(sel.exact),
                                   "head": [k for k, _ in sel.head], "tail": [k for k, _ in sel.tail],
                                   "regex": [rx.pattern for rx, _ in sel.regexes]}
                      for (h, p), sel in sorted(plan.selectors.items())},
        "warnings": [rel(str(w)) for w in plan.warnings],
    }


def _check(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual)
        return
    assert path.exists(), f"{path.name} is missing: run with JWTGATE_UPDATE_GOLDEN=1"
    assert actual == path.read_text()


def test_the_folders_are_found():
    assert len(VALID) >= 5 and len(INVALID) >= 10


@pytest.mark.parametrize("conf", VALID, ids=lambda p: p.name)
def test_valid(conf: Path) -> None:
    plan = compile_plan(str(conf))
    actual = json.dumps(summary(plan, conf.parent), indent=2) + "\n"
    _check(conf.with_suffix(".json"), actual)


@pytest.mark.parametrize("conf", INVALID, ids=lambda p: p.name)
def test_invalid(conf: Path) -> None:
    with pytest.raises(ConfigError) as info:
        compile_plan(str(conf))
    errors = getattr(info.value, "errors", None) or [info.value]
    actual = "".join(f"[emerg] {e}\n" for e in errors).replace(str(conf.parent), "{dir}")
    _check(conf.with_suffix(".err"), actual)
