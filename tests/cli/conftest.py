"""The CLI tests share the end-to-end machinery in ``tests/e2e/jwtgate_e2e.py``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e"))

from jwtgate_e2e import free_port, gateway, post_token_file, upstream, upstream2  # noqa: E402,F401
