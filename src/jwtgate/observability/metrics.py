"""Prometheus metrics of a running gateway, summed over its worker processes.

The metric objects are created lazily, once per process, the first time a configuration that
uses ``metrics``, ``api`` or ``status_zone`` starts serving (:func:`get_metrics`), so a
configuration without them never imports or touches prometheus-client on the request path.

Two modes, chosen by the environment when ``prometheus_client`` is first imported:

* **multiprocess** (``PROMETHEUS_MULTIPROC_DIR`` set; ``jwtgate run`` points it at
  ``<runtime dir>/metrics`` before anything is imported, see :mod:`jwtgate.process.runtime`):
  every process writes its values to its own memory-mapped files and a scrape sums them with
  :class:`prometheus_client.multiprocess.MultiProcessCollector`. Counters of workers that
  exited (a reload starts new workers) stay in their files, so totals never drop; gauges use
  a ``live*`` mode and the master drops a dead worker's gauge files
  (:func:`mark_process_dead`), and folds its top-talker snapshot into one file of retired
  counts, so what a reader merges stays bounded however many workers reloads retire.
* **ordinary** (the variable unset: ``jwtgate check``, in-process tests): one private
  :class:`~prometheus_client.CollectorRegistry` in this process.

Names follow the Prometheus conventions (base units in names, ``_total`` counters). Values
that live in other objects (verified-token cache counters, remote key sets, upstream peers,
open connections) are copied in by :class:`Collector`, at most once a second and before every
scrape, never on the request path. The per-``sub`` top talkers are counted per process in a
bounded :class:`SpaceSaving` structure and merged over workers through small snapshot files
(never a Prometheus label per ``sub``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

__all__ = [
    "AUTH_REASONS", "LIMIT_REQ_DECISIONS", "Metrics", "SpaceSaving", "Collector", "get_metrics", "multiprocess_dir",
    "scrape_registry", "exposition", "mark_process_dead", "collect_samples", "auth_reason",
    "code_class", "top_subs", "TOP_SUBS", "connection_hook", "config_generation", "count_sub",
    "write_top_snapshot", "connection_counts",
]

#: Auth outcome reasons, the values of the ``reason`` label (the dashboard lists them in this order).
AUTH_REASONS = ("ok", "missing", "malformed", "bad_signature", "expired", "not_yet_valid", "wrong_type",
                "require_failed", "revoked", "key_unavailable")

#: ``limit_req`` decisions, the values of the ``decision`` label (NGINX Plus ``/http/limit_reqs`` fields).
LIMIT_REQ_DECISIONS = ("passed", "delayed", "rejected", "delayed_dry_run", "rejected_dry_run")

#: :class:`~jwtgate.errors.TokenError` codes by outcome reason (anything unknown is malformed).
_TOKEN_CODES = {
    "missing": "missing",
    "expired": "expired",
    "not_yet_valid": "not_yet_valid",
    "wrong_type": "wrong_type",
    "bad_signature": "bad_signature",
    "bad_decryption": "bad_signature",  # the token's key material does not match ours
    "no_key": "bad_signature",          # no configured key verifies it: as good as a forged one
    "too_large": "malformed",
    "malformed": "malformed",
    "unsupported_alg": "malformed",
    "crit": "malformed",
    "bad_claims": "malformed",
}

#: Top talkers reported by the API.
TOP_SUBS = 20
#: Entries a process's space-saving structure keeps (more than reported, for accuracy).
TOP_CAPACITY = 200
#: Longest ``sub`` value kept (longer values are cut; hostile tokens may carry huge claims).
MAX_SUB_CHARS = 200
#: Seconds between two copies of other objects' values into the metrics (per process).
SYNC_INTERVAL = 1.0
#: Histogram buckets of upstream response times, seconds.
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_CLASSES = ("1xx", "1xx", "2xx", "3xx", "4xx", "5xx")


def code_class(status: int) -> str:
    """``"2xx"`` for 200..299 and so on; ``"other"`` outside 100..599 (0: no response sent)."""
    if 100 <= status <= 599:
        return _CLASSES[status // 100]
    return "other"


def auth_reason(outcome: Any, revoked_values: frozenset[int] = frozenset()) -> str:
    """The ``reason`` label for what ``auth_jwt`` recorded on a refused request.

    Args:
        outcome: what :mod:`jwtgate.modules.auth_jwt` put in ``ctx.extra["auth_jwt"]``: a
            :class:`~jwtgate.errors.TokenError` code, ``"missing"``, ``"key_unavailable"``, or
            the ``auth_jwt_require`` value object that failed.
        revoked_values: ``id()`` of the require values that depend on a keyval variable (a
            failing one means the token is revoked).
    """
    if isinstance(outcome, str):
        if outcome == "key_unavailable":
            return outcome
        return _TOKEN_CODES.get(outcome, "malformed")
    return "revoked" if id(outcome) in revoked_values else "require_failed"


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when it names a directory (multiprocess mode), else None."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None


class Metrics:
    """Every metric object of this process (created once, see :func:`get_metrics`).

    Attributes are prometheus-client metrics; label names are in each definition below.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from prometheus_client import values

        # The mode prometheus-client chose when it was imported (the values' storage), not the
        # environment now: they differ if the variable was set after the import.
        self.multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False)) and \
            multiprocess_dir() is not None
        # In multiprocess mode the registry is only a holder: scrapes read the files.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "jwtgate_http_requests", "HTTP requests by server status_zone (empty: none) and status.",
            ["server_zone", "code_class", "code"], registry=r)
        self.received = Counter("jwtgate_http_received_bytes", "Bytes received from clients, by server zone.",
                                ["server_zone"], registry=r)
        self.sent = Counter("jwtgate_http_sent_bytes", "Bytes sent to clients, by server zone.",
                            ["server_zone"], registry=r)
        self.loc_requests = Counter(
            "jwtgate_http_location_requests", "HTTP requests by location status_zone and status.",
            ["location_zone", "code_class", "code"], registry=r)
        self.loc_received = Counter("jwtgate_http_location_received_bytes",
                                    "Bytes received from clients, by location zone.", ["location_zone"], registry=r)
        self.loc_sent = Counter("jwtgate_http_location_sent_bytes", "Bytes sent to clients, by location zone.",
                                ["location_zone"], registry=r)
        self.auth = Counter("jwtgate_auth_jwt_outcomes", "auth_jwt decisions by reason.", ["reason"], registry=r)
        self.cache_hits = Counter("jwtgate_auth_jwt_token_cache_hits",
                                  "Verified-token cache lookups that found the token.", registry=r)
        self.cache_misses = Counter("jwtgate_auth_jwt_token_cache_misses",
                                    "Verified-token cache lookups that did not.", registry=r)
        self.keys = Gauge("jwtgate_auth_jwt_keys", "Keys loaded, by key source.", ["source"], registry=r,
                          multiprocess_mode="livemostrecent")
        self.keys_refresh = Gauge("jwtgate_auth_jwt_keys_last_refresh_timestamp_seconds",
                                  "Unix time of the last successful load of a key source.", ["source"],
                                  registry=r, multiprocess_mode="livemax")
        self.keys_failures = Counter("jwtgate_auth_jwt_keys_fetch_failures",
                                     "Failed fetches of a remote key source.", ["source"], registry=r)
        self.limit_req = Counter("jwtgate_limit_req_decisions", "limit_req decisions by zone.",
                                 ["zone", "decision"], registry=r)
        self.upstream_time = Histogram(
            "jwtgate_upstream_response_time_seconds", "Time from the start of the attempt that answered "
            "to the end of its response (the last $upstream_response_time), by that peer.", ["upstream", "peer"],
            buckets=TIME_BUCKETS, registry=r)
        self.upstream_header = Counter("jwtgate_upstream_header_time_seconds",
                                       "Sum of $upstream_header_time, by peer.", ["upstream", "peer"], registry=r)
        self.peer_requests = Counter("jwtgate_upstream_peer_requests", "Attempts on an upstream peer by status.",
                                     ["upstream", "peer", "code_class", "code"], registry=r)
        self.peer_sent = Counter("jwtgate_upstream_peer_sent_bytes",
                                 "Bytes of client requests passed to a peer (request length).",
                                 ["upstream", "peer"], registry=r)
        self.peer_received = Counter("jwtgate_upstream_peer_received_bytes",
                                     "Bytes of responses relayed from a peer to clients.",
                                     ["upstream", "peer"], registry=r)
        self.peer_fails = Counter("jwtgate_upstream_peer_fails", "Failed attempts on a peer (max_fails accounting).",
                                  ["upstream", "peer"], registry=r)
        self.peer_unavail = Counter("jwtgate_upstream_peer_unavailable",
                                    "Times a peer reached max_fails and was taken out for fail_timeout.",
                                    ["upstream", "peer"], registry=r)
        self.peer_up = Gauge("jwtgate_upstream_peer_up", "1 when the peer may be selected (in every worker).",
                             ["upstream", "peer"], registry=r, multiprocess_mode="livemin")
        self.peer_active = Gauge("jwtgate_upstream_peer_active", "Requests in progress on a peer.",
                                 ["upstream", "peer"], registry=r, multiprocess_mode="livesum")
        self.peer_selected = Gauge("jwtgate_upstream_peer_selected_timestamp_seconds",
                                   "Unix time a peer was last chosen.", ["upstream", "peer"], registry=r,
                                   multiprocess_mode="livemax")
        self.connections = Gauge("jwtgate_connections", "Open client connections by state (active: all open; "
                                 "idle: waiting for a request).", ["state"], registry=r, multiprocess_mode="livesum")
        self.accepted = Counter("jwtgate_connections_accepted", "Client connections accepted.", registry=r)
        self.load_time = Gauge("jwtgate_config_load_timestamp_seconds",
                               "Unix time the configuration in force was loaded.", registry=r,
                               multiprocess_mode="livemax")
        self.generation = Gauge("jwtgate_config_generation", "Configurations loaded by this instance.",
                                registry=r, multiprocess_mode="livemax")


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def get_metrics() -> Metrics:
    """This process's :class:`Metrics`, created on first use (after a fork, in the child,
    prometheus-client moves the values to the child's own files)."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def scrape_registry() -> Any:
    """The registry a scrape reads: a fresh one over every process's files in multiprocess
    mode, this process's own otherwise."""
    metrics = get_metrics()
    if not metrics.multiprocess:
        return metrics.registry
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    registry.register(_FilesCollector(_files_dir() or "", MultiProcessCollector))
    return registry


class _FilesCollector:
    """prometheus-client's multiprocess merge over the metrics files, robust to the races of
    processes starting and dying meanwhile: a file just created (still empty) is skipped, and a
    file removed between listing and reading (``mark_process_dead``) restarts the merge."""

    def __init__(self, path: str, merger: Any) -> None:
        self.path = path
        self.merger = merger

    def collect(self) -> Any:
        import glob

        error: Exception | None = None
        for _ in range(5):
            files = []
            for name in glob.glob(os.path.join(self.path, "*.db")):
                try:
                    if os.path.getsize(name) >= 8:
                        files.append(name)
                except OSError:
                    continue
            try:
                return self.merger.merge(files, accumulate=True)
            except Exception as e:  # FileNotFoundError, struct.error on a half-written file
                error = e
        raise RuntimeError(f"cannot read the metrics files: {error}")


def exposition(accept: str = "") -> tuple[bytes, str]:
    """The text exposition of every metric, and its ``Content-Type``.

    Args:
        accept: the request's ``Accept`` header; ``application/openmetrics-text`` selects the
            OpenMetrics format, anything else the Prometheus text format 0.0.4.
    """
    registry = scrape_registry()
    if "application/openmetrics-text" in accept:
        from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
    else:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # type: ignore[assignment]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def collect_samples() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the (summed) metrics, by sample name: ``[(labels, value), ...]``.

    ``_created`` samples are left out. This is what :mod:`jwtgate.observability.stats`
    builds the NGINX Plus API objects from, so the API and ``/metrics`` agree.
    """
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in scrape_registry().collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauge files and fold its top-talker snapshot into the retired
    one (the master calls it when it reaps a worker); nothing outside multiprocess mode. Never
    raises."""
    path = multiprocess_dir()
    if path is None:
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)
    except Exception:  # observability never takes the master down
        pass
    try:
        _retire_snapshot(path, pid)
    except Exception:
        pass


# -- top talkers --------------------------------------------------------------------------

class SpaceSaving:
    """The space-saving top-k counter (Metwally, Agrawal, El Abbadi, 2005), bounded memory.

    Counts are upper bounds; an element counted at least ``total / capacity`` times is
    guaranteed to be present.

    Args:
        capacity: most distinct elements kept.
    """

    __slots__ = ("capacity", "counts", "dirty")

    def __init__(self, capacity: int = TOP_CAPACITY) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.dirty = False

    def add(self, item: str, n: int = 1) -> None:
        """Count ``item`` ``n`` times (evicting the smallest entry when full)."""
        counts = self.counts
        self.dirty = True
        if item in counts:
            counts[item] += n
            return
        if len(counts) < self.capacity:
            counts[item] = n
            return
        smallest = min(counts, key=counts.__getitem__)  # O(capacity) only when a new item arrives full
        floor = counts.pop(smallest)
        counts[item] = floor + n

    def top(self, k: int = TOP_SUBS) -> list[tuple[str, int]]:
        """The ``k`` largest counts, descending (ties by item)."""
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


_top = SpaceSaving()


def count_sub(sub: Any) -> None:
    """Count one request of the client whose verified token has this ``sub`` claim."""
    if isinstance(sub, str) and sub:
        _top.add(sub[:MAX_SUB_CHARS])


def _files_dir() -> str | None:
    """The metrics directory when this process's metrics live in files, else None."""
    return multiprocess_dir() if get_metrics().multiprocess else None


def _snapshot_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"topsubs_{pid}.json")


def write_top_snapshot(force: bool = False) -> None:
    """Write this process's top talkers to its snapshot file (multiprocess mode) when they
    changed (or ``force``); atomically, so a reader never sees half a file."""
    directory = _files_dir()
    if directory is None or not (_top.dirty or force):
        return
    _top.dirty = False
    pid = os.getpid()
    path = _snapshot_path(directory, pid)
    if _adopted.get("pid") != pid:
        # First write of this process: a file already there is a dead process's with the same
        # (reused) pid; keep its counts, as prometheus-client keeps its counter files.
        _adopted["pid"] = pid
        for sub, n in _read_snapshot(path).items():
            _top.add(sub, n)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_top.counts, f)
        os.replace(tmp, path)
    except OSError:
        pass


_adopted: dict[str, int] = {}

#: The snapshot of the workers that exited: their counts summed, the TOP_CAPACITY largest kept.
RETIRED_SNAPSHOT = "topsubs_retired.json"


def _retire_snapshot(directory: str, pid: int) -> None:
    """Fold dead process ``pid``'s snapshot into :data:`RETIRED_SNAPSHOT` and remove it.

    Without this every reload left one file per worker that :func:`top_subs` (the dashboard
    polls it every second) read and parsed on every call, forever. Only the master writes the
    retired file (atomically); a reader in between counts the dead worker twice, once.
    """
    dead = _snapshot_path(directory, pid)
    counts = _read_snapshot(dead)
    if counts:
        retired = os.path.join(directory, RETIRED_SNAPSHOT)
        merged = _read_snapshot(retired)
        for sub, n in counts.items():
            merged[sub] = merged.get(sub, 0) + n
        if len(merged) > TOP_CAPACITY:
            merged = dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CAPACITY])
        tmp = retired + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(merged, f)
        os.replace(tmp, retired)
    try:
        os.unlink(dead)
    except FileNotFoundError:
        pass


def _read_snapshot(path: str) -> dict[str, int]:
    """A snapshot file's counts (``{}`` when missing or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {sub: n for sub, n in data.items() if isinstance(sub, str) and isinstance(n, int) and n > 0}


def top_subs(k: int = TOP_SUBS) -> list[dict[str, Any]]:
    """The top ``k`` clients by ``sub``, summed over every process (snapshot files of the
    others, this process's live counts): ``[{"sub": str, "requests": int}, ...]`` descending."""
    merged: dict[str, int] = {}
    directory = _files_dir()
    me = os.getpid()
    if directory is not None:
        try:
            names = [n for n in os.listdir(directory) if n.startswith("topsubs_") and n.endswith(".json")]
        except OSError:
            names = []
        for name in names:
            if name == f"topsubs_{me}.json" and _adopted.get("pid") == me:
                continue  # this process's own counts are the live ones below
            for sub, n in _read_snapshot(os.path.join(directory, name)).items():
                merged[sub] = merged.get(sub, 0) + n
    for sub, n in _top.counts.items():
        merged[sub] = merged.get(sub, 0) + n
    ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [{"sub": sub, "requests": n} for sub, n in ranked]


def config_generation(loaded_at: float, local: int) -> int:
    """How many configurations this instance has loaded: in multiprocess mode the distinct
    load times recorded as marker files in the metrics directory (workers forked for one load
    share its time), else ``local``, the count this process has seen."""
    directory = _files_dir()
    if directory is None:
        return local
    try:
        marker = os.path.join(directory, f"load_{loaded_at:.6f}")
        if not os.path.exists(marker):
            with open(marker, "w", encoding="ascii"):
                pass
        return sum(1 for n in os.listdir(directory) if n.startswith("load_"))
    except OSError:
        return local


# -- connections ---------------------------------------------------------------------------

_open_connections: set[Any] = set()


def connection_hook(proto: Any, opened: bool) -> None:
    """Installed as ``jwtgate.http.server.CONNECTION_HOOK`` while metrics are on: called when
    a client connection opens and closes."""
    if opened:
        _open_connections.add(proto)
        get_metrics().accepted.inc()
    else:
        _open_connections.discard(proto)


def connection_counts() -> tuple[int, int]:
    """``(open, idle)`` client connections of this process."""
    conns = list(_open_connections)
    return len(conns), sum(1 for c in conns if not getattr(c, "active", False))


# -- values copied from other objects ------------------------------------------------------

class Collector:
    """Copies values kept by other objects of one configuration into the metrics.

    Counters elsewhere (the verified-token caches' ``hits``/``misses``, remote key sources'
    ``failures``, peers' ``total_fails``/``unavail``) are added as deltas since the last copy;
    gauges (key counts, peer state, connections) are set. Each object is tracked by identity,
    so a reload's new objects start from their own zero and nothing is counted twice.

    Args:
        build: the compiled configuration's :class:`~jwtgate.conf.compiler.Build`.
    """

    def __init__(self, build: Any) -> None:
        shared = build.shared
        auth = shared.get("auth_jwt", {})
        self._verifiers: list[Any] = []
        self._pools: list[Any] = []
        for verifier, pool in auth.get("verifiers", {}).values():
            self._verifiers.append(verifier)
            if pool is not None:
                self._pools.append(pool)
        self._static = [(path, ks) for path, ks in auth.get("keysets", {}).items()]
        self._remotes = list(auth.get("remotes", {}).values())
        self._groups = list(shared.get("proxy", {}).get("groups", {}).values())
        self._limit_zones = list(shared.get("limit_req", {}))
        self._loaded = getattr(build, "loaded_at", None) or time.time()
        #: ``id()`` of the caches copied after each request instead (see the status module)
        self.per_request: set[int] = set()
        self._seen: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()
        self._last = 0.0

    def _delta(self, obj: Any, values: tuple[int, ...]) -> tuple[int, ...]:
        before = self._seen.get(obj)
        self._seen[obj] = values
        if before is None:
            return values
        return tuple(max(0, a - b) for a, b in zip(values, before))

    def caches(self) -> Iterable[Any]:
        """Every verified-token cache of the configuration (static, pooled, per-request)."""
        verifiers = list(self._verifiers)
        for pool in self._pools:
            verifiers.append(pool.verifier)
            verifiers.extend(v for _, v in getattr(pool, "_dynamic", {}).values())
        seen = set()
        for v in verifiers:
            cache = getattr(v, "cache", None)
            if cache is not None and id(cache) not in seen:
                seen.add(id(cache))
                yield cache

    def sync_cache(self, cache: Any) -> None:
        """Copy one cache's hit and miss counts (called after each request that used it)."""
        hits, misses = self._delta(cache, (cache.hits, cache.misses))
        if hits or misses:
            m = get_metrics()
            if hits:
                m.cache_hits.inc(hits)
            if misses:
                m.cache_misses.inc(misses)

    def create_series(self) -> None:
        """Create at 0 every series whose label values the configuration determines, so that
        each is exported from the start, not from its first non-zero value (alert rules and
        ``absent()`` can be written ahead; NGINX Plus's API likewise lists every zone and peer
        with zero counters): every ``jwtgate_auth_jwt_outcomes_total`` reason
        (:data:`AUTH_REASONS`), every ``limit_req_zone`` × :data:`LIMIT_REQ_DECISIONS`, the
        fetch failures of every key source (a key file's stay 0), every upstream peer's fails
        and unavailable counts (``jwtgate_upstream_peer_up`` is set by :meth:`sync`).

        ``.labels()`` is what creates a series in prometheus-client; in multiprocess mode it
        writes a 0 entry into this process's file, so the series is in every scrape and the
        sums over workers stay exact. Called once when the configuration starts serving (the
        status module's resource), never on the request path; not at all when statistics are
        off.
        """
        m = get_metrics()
        for reason in AUTH_REASONS:
            m.auth.labels(reason)
        for zone in self._limit_zones:
            for decision in LIMIT_REQ_DECISIONS:
                m.limit_req.labels(zone, decision)
        for path, _ in self._static:
            m.keys_failures.labels(path)
        for remote in self._remotes:
            m.keys_failures.labels(remote.name)
        for group in self._groups:
            balancer = group.balancer
            for peer in (*balancer.primary, *balancer.backup):
                m.peer_fails.labels(group.name, peer.address)
                m.peer_unavail.labels(group.name, peer.address)

    def sync(self, force: bool = False) -> None:
        """Copy everything, unless done less than :data:`SYNC_INTERVAL` ago (and not ``force``)."""
        now = time.monotonic()
        if not force and now - self._last < SYNC_INTERVAL:
            return
        self._last = now
        m = get_metrics()
        for cache in self.caches():
            if id(cache) not in self.per_request:
                self.sync_cache(cache)
        for path, ks in self._static:
            m.keys.labels(path).set(len(ks.entries))
            m.keys_refresh.labels(path).set(self._loaded)
        wall_now, mono_now = time.time(), time.monotonic()
        for remote in self._remotes:
            name = remote.name
            keys = remote.keys
            m.keys.labels(name).set(len(keys.entries) if keys is not None else 0)
            fetched = remote.fetched_at
            if fetched is not None:
                m.keys_refresh.labels(name).set(wall_now - (mono_now - fetched))
            (failures,) = self._delta(remote, (getattr(remote, "failures", 0),))
            if failures:
                m.keys_failures.labels(name).inc(failures)
        for group in self._groups:
            balancer = group.balancer
            for peer in (*balancer.primary, *balancer.backup):
                labels = (group.name, peer.address)
                m.peer_up.labels(*labels).set(1 if peer.available(balancer.clock.monotonic()) else 0)
                m.peer_active.labels(*labels).set(peer.active)
                fails, unavail = self._delta(peer, (getattr(peer, "total_fails", 0), getattr(peer, "unavail", 0)))
                if fails:
                    m.peer_fails.labels(*labels).inc(fails)
                if unavail:
                    m.peer_unavail.labels(*labels).inc(unavail)
        total, idle = connection_counts()
        m.connections.labels("active").set(total)
        m.connections.labels("idle").set(idle)
        m.load_time.set(self._loaded)
        write_top_snapshot()
