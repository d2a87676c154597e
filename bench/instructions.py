"""Instructions per request on the request path: a deterministic A/B for code changes.

Runs ``bench/micro.py`` under valgrind's cachegrind (no cache simulation) twice, with
``--small`` and ``--large`` requests, and divides the difference in instructions executed by
the difference in requests, so start-up (imports, configuration) cancels out. Unlike CPU
time, the count does not move with the machine's load or the hypervisor: two trees compared
this way differ by their code alone (run-to-run differences are well under 1%). What it
does not see: cache misses, system calls and the kernel, which wrk runs measure.

    .venv/bin/python bench/instructions.py [--src DIR] [micro.py arguments]
    .venv/bin/python bench/instructions.py --src /tmp/base/src --path /api/x --token "$T"

``--src`` puts another checkout's ``src`` first on ``PYTHONPATH`` (a ``git worktree`` of the
commit to compare against). Needs valgrind (``apt-get install valgrind``); takes ~30 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(requests: int, src: str | None, micro_args: list[str]) -> int:
    """Instructions valgrind counted for one ``micro.py`` run of ``requests`` requests.

    Raises:
        RuntimeError: valgrind or micro.py failed (its output is in the message).
    """
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           sys.executable, os.path.join(HERE, "micro.py"), "--repeat", "1", "--requests", str(requests),
           *micro_args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    m = _REFS.search(proc.stderr)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", help="a checkout's src directory to measure instead of this one")
    p.add_argument("--small", type=int, default=2000, help="requests in the first run")
    p.add_argument("--large", type=int, default=6000, help="requests in the second run")
    args, micro_args = p.parse_known_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.large <= args.small:
        p.error("--large must be above --small")
    try:
        a = instructions(args.small, args.src, micro_args)
        b = instructions(args.large, args.src, micro_args)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{(b - a) / (args.large - args.small):,.0f} instructions/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
