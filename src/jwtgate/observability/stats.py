"""The read-only objects of the NGINX Plus REST API (``ngx_http_api_module``), from the metrics.

:func:`api_get` answers the statistics endpoints the ``api`` module routes here
(``GET /api/N/<parts>``) with the JSON-serialisable objects NGINX Plus returns, built from the
same multiprocess-summed samples ``metrics;`` exposes (:func:`jwtgate.observability.metrics.
collect_samples`), so the API and ``/metrics`` always agree. Shapes follow the NGINX Plus API
reference (``/nginx``, ``/connections``, ``/http/requests``, ``/http/server_zones``,
``/http/location_zones``, ``/http/upstreams``, ``/http/limit_reqs``), plus the jwtgate
extension ``/jwtgate`` (auth outcomes, token cache, key sets, top clients, revocations), which
the dashboard reads.

Times are NGINX Plus's: timestamps as ISO 8601 UTC with milliseconds
(``2026-11-29T22:10:00.123Z``), peer ``header_time``/``response_time`` as average
milliseconds.
"""

from __future__ import annotations

import os
import time
from typing import Any

from jwtgate.observability import metrics as _metrics

__all__ = ["api_get", "iso_time", "CURRENT"]

#: The Build of the configuration serving in this process (set when statistics open), used
#: when the caller has no plan at hand.
CURRENT: dict[str, Any] = {}

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: NGINX counts requests it closed without a response (444, 499) as discarded.
_DISCARDED = frozenset({"444", "499", "0"})


def iso_time(ts: float) -> str:
    """``ts`` (Unix seconds) as NGINX Plus writes times: ``2026-11-29T22:10:00.123Z``."""
    ms = int(round(ts * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class _Samples:
    """Summed samples by name, with small lookups."""

    def __init__(self) -> None:
        self.by_name = _metrics.collect_samples()

    def rows(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.by_name.get(name, [])

    def value(self, name: str, **labels: str) -> float:
        total = 0.0
        for lab, v in self.rows(name):
            if all(lab.get(k) == want for k, want in labels.items()):
                total += v
        return total

    def label_values(self, name: str, label: str) -> set[str]:
        return {lab.get(label, "") for lab, _ in self.rows(name)}


def _n(value: float) -> int:
    return int(round(value))


def _responses(samples: _Samples, name: str, **labels: str) -> tuple[dict[str, Any], int, int]:
    """``(responses object, requests, discarded)`` from a requests counter with ``code`` labels."""
    out: dict[str, Any] = {c: 0 for c in _CLASSES}
    codes: dict[str, int] = {}
    requests = discarded = 0
    for lab, v in samples.rows(name):
        if any(lab.get(k) != want for k, want in labels.items()):
            continue
        n = _n(v)
        requests += n
        code = lab.get("code", "")
        if code == "-":  # an upstream attempt that got no response: a request, not a response
            continue
        if code in _DISCARDED or not n:
            discarded += n if code in _DISCARDED else 0
            continue
        cls = lab.get("code_class", "")
        if cls in out:
            out[cls] += n
        codes[code] = codes.get(code, 0) + n
    out["codes"] = dict(sorted(codes.items()))
    out["total"] = sum(out[c] for c in _CLASSES)
    return out, requests, discarded


def _zone(samples: _Samples, kind: str, name: str) -> dict[str, Any]:
    if kind == "server":
        req, rec, snt, label = ("jwtgate_http_requests_total", "jwtgate_http_received_bytes_total",
                                "jwtgate_http_sent_bytes_total", "server_zone")
    else:
        req, rec, snt, label = ("jwtgate_http_location_requests_total",
                                "jwtgate_http_location_received_bytes_total",
                                "jwtgate_http_location_sent_bytes_total", "location_zone")
    responses, requests, discarded = _responses(samples, req, **{label: name})
    return {
        "processing": 0,
        "requests": requests,
        "responses": responses,
        "discarded": discarded,
        "received": _n(samples.value(rec, **{label: name})),
        "sent": _n(samples.value(snt, **{label: name})),
    }


def _zone_names(build: Any, ctx_name: str) -> list[str]:
    """``status_zone`` names configured in servers (``ctx_name="server"``) or locations."""
    from jwtgate.conf.spec import Ctx

    want = Ctx.SERVER if ctx_name == "server" else Ctx.LOCATION
    names: list[str] = []
    http = getattr(build, "http", None)
    stack = [http] if http is not None else []
    while stack:
        level = stack.pop()
        if level.ctx is want:
            for value, _ in level.own("status_zone"):
                if value not in names:
                    names.append(value)
        stack.extend(reversed(level.children))
    return names


def _collection(names: list[str], make: Any, parts: tuple[str, ...]) -> Any:
    if len(parts) == 2:
        return {name: make(name) for name in names}
    if len(parts) == 3 and parts[2] in names:
        return make(parts[2])
    return None


def _groups(build: Any) -> dict[str, Any]:
    groups = build.shared.get("proxy", {}).get("groups", {}) if build is not None else {}
    out: dict[str, Any] = {}
    for group in groups.values():
        out.setdefault(group.name, group)
    return out


def _upstream(samples: _Samples, group: Any) -> dict[str, Any]:
    peers = []
    balancer = group.balancer
    for i, peer in enumerate((*balancer.primary, *balancer.backup)):
        labels = {"upstream": group.name, "peer": peer.address}
        responses, requests, _ = _responses(samples, "jwtgate_upstream_peer_requests_total", **labels)
        count = samples.value("jwtgate_upstream_response_time_seconds_count", **labels)
        total = samples.value("jwtgate_upstream_response_time_seconds_sum", **labels)
        header = samples.value("jwtgate_upstream_header_time_seconds_total", **labels)
        up_rows = [v for lab, v in samples.rows("jwtgate_upstream_peer_up")
                   if lab.get("upstream") == group.name and lab.get("peer") == peer.address]
        state = "down" if peer.down else ("unavail" if up_rows and min(up_rows) < 1 else "up")
        selected = samples.value("jwtgate_upstream_peer_selected_timestamp_seconds", **labels)
        entry: dict[str, Any] = {
            "id": i,
            "server": peer.address,
            "name": peer.name,
            "backup": peer.backup,
            "weight": peer.weight,
            "state": state,
            "active": _n(samples.value("jwtgate_upstream_peer_active", **labels)),
            "requests": requests,
            "header_time": _n(header / count * 1000) if count else 0,
            "response_time": _n(total / count * 1000) if count else 0,
            "responses": responses,
            "sent": _n(samples.value("jwtgate_upstream_peer_sent_bytes_total", **labels)),
            "received": _n(samples.value("jwtgate_upstream_peer_received_bytes_total", **labels)),
            "fails": _n(samples.value("jwtgate_upstream_peer_fails_total", **labels)),
            "unavail": _n(samples.value("jwtgate_upstream_peer_unavailable_total", **labels)),
            "health_checks": {"checks": 0, "fails": 0, "unhealthy": 0},
            "downtime": 0,
        }
        if selected > 0:
            entry["selected"] = iso_time(selected)
        peers.append(entry)
    # idle kept-alive connections of this process (NGINX's are per worker too)
    idle = getattr(group.pool, "_idle", {})
    keepalive = sum(len(q) for q in idle.values()) if isinstance(idle, dict) else 0
    return {"peers": peers, "keepalive": keepalive, "zombies": 0, "zone": getattr(group, "zone", "") or group.name}


def _limit_req(samples: _Samples, zone: str) -> dict[str, int]:
    return {d: _n(samples.value("jwtgate_limit_req_decisions_total", zone=zone, decision=d))
            for d in _metrics.LIMIT_REQ_DECISIONS}


def _jwtgate(samples: _Samples, build: Any) -> dict[str, Any]:
    outcomes = {r: _n(samples.value("jwtgate_auth_jwt_outcomes_total", reason=r)) for r in _metrics.AUTH_REASONS}
    now = time.time()
    sources = []
    auth = build.shared.get("auth_jwt", {}) if build is not None else {}
    for path in auth.get("keysets", {}):
        sources.append(path)
    for remote in auth.get("remotes", {}).values():
        sources.append(remote.name)
    key_sets = []
    for source in sources:
        refresh_rows = [v for lab, v in samples.rows("jwtgate_auth_jwt_keys_last_refresh_timestamp_seconds")
                        if lab.get("source") == source]
        last = max(refresh_rows) if refresh_rows and max(refresh_rows) > 0 else None
        key_rows = [v for lab, v in samples.rows("jwtgate_auth_jwt_keys") if lab.get("source") == source]
        key_sets.append({
            "source": source,
            "keys": _n(max(key_rows)) if key_rows else 0,
            "last_refresh": last,
            "age": max(0.0, round(now - last, 3)) if last is not None else None,
            "fetch_failures": _n(samples.value("jwtgate_auth_jwt_keys_fetch_failures_total", source=source)),
        })
    revocations: dict[str, int] = {}
    try:
        from jwtgate.modules.keyval import keyval_zones
    except ImportError:
        keyval_zones = None  # type: ignore[assignment]
    if keyval_zones is not None and build is not None:
        for name, zone in keyval_zones(build).items():
            try:
                revocations[name] = int(zone.store.count())
            except Exception:  # a zone that cannot be read right now is left out
                continue
    return {
        "auth": {"outcomes": outcomes},
        "token_cache": {"hits": _n(samples.value("jwtgate_auth_jwt_token_cache_hits_total")),
                        "misses": _n(samples.value("jwtgate_auth_jwt_token_cache_misses_total"))},
        "key_sets": key_sets,
        "top_subs": _metrics.top_subs(_metrics.TOP_SUBS),
        "revocations": revocations,
    }


def _nginx(samples: _Samples, build: Any, plan: Any) -> dict[str, Any]:
    from jwtgate import __version__

    binds = getattr(plan, "binds", None) or []
    loaded = samples.value("jwtgate_config_load_timestamp_seconds") or CURRENT.get("loaded_at") or time.time()
    return {
        "version": __version__,
        "build": "jwtgate",
        "address": binds[0][0] if binds else "127.0.0.1",
        "generation": _n(samples.value("jwtgate_config_generation")) or 1,
        "load_timestamp": iso_time(loaded),
        "timestamp": iso_time(time.time()),
        "pid": os.getpid(),
        "ppid": os.getppid(),
    }


def api_get(plan: Any, parts: tuple[str, ...]) -> object | None:
    """The NGINX Plus API object at ``parts``, or ``None`` for an unknown path.

    Args:
        plan: the Plan serving the request (its Build lists the zones, upstreams and key
            sources); ``None`` uses the configuration whose statistics this process opened.
        parts: the path after the API version, e.g. ``("http", "server_zones", "main")``.

    Returns:
        A JSON-serialisable object: ``("nginx",)``, ``("connections",)``,
        ``("http", "requests")``, ``("http", "server_zones"[, name])``,
        ``("http", "location_zones"[, name])``, ``("http", "upstreams"[, name])``,
        ``("http", "limit_reqs"[, zone])`` as NGINX Plus; ``("jwtgate",)`` the jwtgate extension
        (see docs/observability.md).
    """
    parts = tuple(parts)
    build = getattr(plan, "build", None) or CURRENT.get("build")
    if plan is None:
        plan = getattr(build, "plan", None)
    collector = CURRENT.get("collector")
    if parts[:1] not in (("nginx",), ("connections",), ("http",), ("jwtgate",)):
        return None
    if collector is not None:
        collector.sync(force=True)  # this process's copies are fresh; the others' within a second
    samples = _Samples()
    if parts == ("nginx",):
        return _nginx(samples, build, plan)
    if parts == ("connections",):
        return {"accepted": _n(samples.value("jwtgate_connections_accepted_total")), "dropped": 0,
                "active": _n(samples.value("jwtgate_connections", state="active")),
                "idle": _n(samples.value("jwtgate_connections", state="idle"))}
    if parts == ("jwtgate",):
        return _jwtgate(samples, build)
    if len(parts) < 2 or parts[0] != "http":
        return None
    what = parts[1]
    if what == "requests" and len(parts) == 2:
        total = _n(samples.value("jwtgate_http_requests_total"))
        active, idle = samples.value("jwtgate_connections", state="active"), \
            samples.value("jwtgate_connections", state="idle")
        return {"total": total, "current": max(0, _n(active - idle))}
    if what == "server_zones":
        return _collection(_zone_names(build, "server"), lambda n: _zone(samples, "server", n), parts)
    if what == "location_zones":
        return _collection(_zone_names(build, "location"), lambda n: _zone(samples, "location", n), parts)
    if what == "upstreams":
        groups = _groups(build)
        return _collection(list(groups), lambda n: _upstream(samples, groups[n]), parts)
    if what == "limit_reqs":
        zones = list(build.shared.get("limit_req", {})) if build is not None else []
        return _collection(zones, lambda z: _limit_req(samples, z), parts)
    return None
