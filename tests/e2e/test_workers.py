"""worker_processes: a master and N workers, NGINX's signals (HUP reload, QUIT, TERM),
a dead worker replaced."""

from __future__ import annotations

import os
import signal
import time

from jwtgate_e2e import request, wait_until

CONF = """
worker_processes 2;
pid {tmp}/jwtgate.pid;
server {{
    listen 127.0.0.1:{{port}};
    location / {{
        proxy_pass http://127.0.0.1:{up};
        proxy_set_header X-Generation "{gen}";
        proxy_set_header X-Worker $pid;
    }}
}}
"""


def children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry))
    return out


def test_master_runs_workers_reloads_and_replaces_dead_ones(gateway, upstream, tmp_path):
    path, port = gateway.write_conf(CONF.format(tmp=tmp_path, up=upstream.port, gen=1))
    gw = gateway.run_file(path, port)
    master = gw.proc.pid
    wait_until(lambda: len(children(master)) == 2, timeout=10, what="two workers")
    assert int((tmp_path / "jwtgate.pid").read_text()) == master
    # Both workers serve (SO_REUSEPORT spreads connections over them).
    workers_seen = set()
    deadline = time.monotonic() + 10
    while len(workers_seen) < 2 and time.monotonic() < deadline:
        assert request(port, "GET", "/").status == 200
        workers_seen.add(upstream.last.values("X-Worker")[0])
    assert len(workers_seen) == 2
    # A worker killed is replaced.
    victim = min(children(master))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in children(master) and len(children(master)) == 2,
               timeout=10, what="a replacement worker")
    # HUP with a broken file keeps the old workers; with a good one, new workers serve it.
    before = children(master)
    path.write_text(CONF.format(tmp=tmp_path, up=upstream.port, gen=1).replace("{port}", str(port))
                    .replace("proxy_pass", "proxy_passs"))
    os.kill(master, signal.SIGHUP)
    time.sleep(0.5)
    assert children(master) == before and request(port, "GET", "/").status == 200
    path.write_text(CONF.format(tmp=tmp_path, up=upstream.port, gen=2).replace("{port}", str(port)))
    os.kill(master, signal.SIGHUP)
    wait_until(lambda: not (children(master) & before) and len(children(master)) == 2,
               timeout=20, what="old workers replaced")
    assert request(port, "GET", "/").status == 200
    assert upstream.last.values("X-Generation") == ["2"]
    # QUIT: graceful stop of everything, pid file removed.
    assert gw.stop(signal.SIGQUIT) == 0
    assert not (tmp_path / "jwtgate.pid").exists()


def test_worker_shutdown_timeout_bounds_a_graceful_stop(gateway, tmp_path):
    """A request that never finishes cannot hold a graceful stop past worker_shutdown_timeout."""
    import socket
    import threading

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(4)
    conns = []
    threading.Thread(target=lambda: conns.append(hang.accept()), daemon=True).start()
    gw = gateway(f"""
worker_shutdown_timeout 1s;
server {{
    listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://127.0.0.1:{hang.getsockname()[1]}; proxy_read_timeout 60s; }}
}}
""")
    client = socket.create_connection(("127.0.0.1", gw.port))
    client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: conns, timeout=5, what="the request to reach the upstream")
    t0 = time.monotonic()
    assert gw.stop(signal.SIGQUIT) == 0
    assert time.monotonic() - t0 < 4
    client.close()
    hang.close()
