"""The instance runtime directory: files shared by a master and its workers.

One running jwtgate instance (a single process, or a master and its workers) owns one
directory, created before the configuration is compiled and removed when the process that
created it exits. Workers inherit its path through the environment.

What lives there:

``metrics/``  prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``), so a
              scrape of any worker sums the counters of all workers
``keyval/``   keyval zones without ``state=``: the shared copy every worker reads
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

__all__ = ["ENV", "runtime_dir", "setup_runtime_dir"]

#: Environment variable holding the instance runtime directory.
ENV = "JWTGATE_RUNTIME_DIR"


def setup_runtime_dir() -> str:
    """Create the instance runtime directory (mode 0700) unless the environment names one.

    Must run before anything imports ``prometheus_client``: it also sets
    ``PROMETHEUS_MULTIPROC_DIR``, which that library reads at import time.

    Returns:
        The directory's absolute path.

    Raises:
        OSError: the directory cannot be created.
    """
    path = os.environ.get(ENV)
    if not path or not os.path.isdir(path):
        path = tempfile.mkdtemp(prefix="jwtgate-")
        os.environ[ENV] = path
        creator = os.getpid()

        def _remove() -> None:
            if os.getpid() == creator:  # forked workers never remove the master's directory
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(_remove)
    for sub in ("metrics", "keyval"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(path, "metrics")
    return path


def runtime_dir() -> str | None:
    """The instance runtime directory, or ``None`` outside a running instance (``check``,
    in-process tests)."""
    path = os.environ.get(ENV)
    return path if path and os.path.isdir(path) else None
