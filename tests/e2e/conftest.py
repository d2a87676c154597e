"""Fixtures of the end-to-end suite; the machinery lives in ``jwtgate_e2e.py``.

- ``upstream`` / ``upstream2``: recording HTTP/1.1 upstreams on 127.0.0.1.
- ``gateway``: ``gateway(conf_text) -> Gateway`` runs the real ``jwtgate run -c FILE``,
  waits for its port (15 s deadline), stops it with SIGTERM (SIGKILL after 5 s) at teardown.
- ``post_token_file``: the post's ``quotes.jwt``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jwtgate_e2e import free_port, gateway, post_token_file, upstream, upstream2  # noqa: E402,F401
