"""Reload (SIGHUP) under load: every request gets a whole, correct answer; a broken
configuration is refused and the old one keeps serving."""

from __future__ import annotations

import signal
import threading
import time

from jwtgate_e2e import request, wait_until

CONF = """
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://127.0.0.1:{up};
        proxy_set_header X-Generation "{gen}";
    }}
}}
"""


def test_ten_reloads_under_load_one_broken(gateway, upstream, tmp_path):
    path, port = gateway.write_conf(CONF.format(port="{port}", up=upstream.port, gen=0))
    gw = gateway.run_file(path, port)
    stop = threading.Event()
    results: list[tuple[int, bytes]] = []
    errors: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                r = request(port, "GET", "/loop", timeout=10)
                results.append((r.status, r.body))
            except Exception as e:  # a dropped request is exactly what must not happen
                errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for gen in range(1, 11):
            text = CONF.format(port=port, up=upstream.port, gen=gen)
            if gen == 5:
                text = text.replace("proxy_pass", "proxy_passs")  # broken: must be refused
            path.write_text(text)
            gw.send_signal(signal.SIGHUP)
            time.sleep(0.25)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert not errors, errors[:3]
    assert len(results) > 30
    assert all(status == 200 and b'"ok": true' in body.replace(b'"ok":true', b'"ok": true')
               for status, body in results), [r for r in results if r[0] != 200][:3]
    upstream.clear()
    wait_until(lambda: request(port, "GET", "/last").status == 200 and
               upstream.last.values("X-Generation") == ["10"], timeout=5, what="generation 10 in force")
    # the refused reload is logged, with the error located in the file
    assert 'unknown directive "proxy_passs"' in gw.stderr_text()


def test_reload_to_more_workers_in_a_single_process_gateway_warns(gateway, upstream):
    """Only a master forks workers: a gateway started as one process says the new
    worker_processes waits for a restart, and goes on serving the new configuration."""
    gw = gateway(CONF.format(port="{port}", up="{upstream_port}", gen="1"))
    text = gw.conf_path.read_text()
    gw.conf_path.write_text("worker_processes 2;\n" + text.replace('"1"', '"2"'))
    gw.send_signal(signal.SIGHUP)
    wait_until(lambda: "takes effect at the next start" in gw.stderr_text(), what="the warning")
    assert request(gw.port, "GET", "/x").status == 200
    assert upstream.last.values("X-Generation") == ["2"]
