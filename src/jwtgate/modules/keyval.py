"""The keyval module (NGINX Plus ``ngx_http_keyval_module``): variables looked up in key-value zones.

``keyval_zone zone=name:size [state=file] [timeout=time] [type=string|ip|prefix] [sync];``
declares a zone; ``keyval key $variable zone=name;`` declares ``$variable``, whose value is
the zone's value for ``key`` (a complex value, such as ``$jwt_claim_jti``), evaluated when the
variable is read, once per request (again after authentication, see
:mod:`jwtgate.vars.registry`), never cached across requests. Entries are managed through the
NGINX Plus API (:mod:`jwtgate.modules.api`). The NGINX Plus revocation pattern::

    keyval_zone zone=revoked:1m state=/var/lib/jwtgate/revoked.json timeout=1d;
    keyval $jwt_claim_jti $jwt_revoked zone=revoked;
    map $jwt_revoked $valid_jti { "" 1; default 0; }
    auth_jwt_require $valid_jti;

Storage and sharing between workers, restarts and instances: :mod:`jwtgate.state.keyval`
and, for ``sync``, :mod:`jwtgate.state.keyval_redis`.

Other modules find the zones with :func:`keyval_zones`; ``build.keyval_variables`` holds the
names (without ``$``) of the variables ``keyval`` declares (the metrics module counts a failing
``auth_jwt_require`` that depends on one as "revoked").
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from jwtgate.conf.spec import Ctx, DirectiveSpec, Inherit
from jwtgate.conf.values import MIN_ZONE_SIZE, parse_time, parse_zone
from jwtgate.errors import StateError
from jwtgate.modules.base import Module, Resource
from jwtgate.modules.state import redis_connection
from jwtgate.process.runtime import runtime_dir
from jwtgate.state.keyval import MAX_FILE_BYTES, Change, Entry, KeyvalError, ZoneStore, decode_state
from jwtgate.vars.complex import variable_names

__all__ = ["KeyvalModule", "KeyvalZone", "keyval_zones", "apply_change_async", "check_state_file",
           "MIN_ZONE_SIZE"]

log = logging.getLogger("jwtgate.keyval")

#: Largest zone accepted: entries are kept in every process's memory.
MAX_ZONE_SIZE = 1024 * 1024 * 1024
_TYPES = ("string", "ip", "prefix")

DIRECTIVES = (
    DirectiveSpec(
        "keyval_zone", "keyval", Ctx.HTTP, 1, 5, inherit=Inherit.NONE,
        syntax="keyval_zone zone=name:size [state=file] [timeout=time] [type=string|ip|prefix] [sync];",
        doc="A key-value zone, managed through the `api` location. `size` bounds the entries: each "
            "counts 128 bytes plus its key and value (a write that would exceed it is refused with "
            "507); keys are at most 1024 bytes, values 4096. `state=file` keeps the zone in that "
            "file (NGINX Plus's JSON format, written atomically on every change) across restarts; "
            "its directory must exist and be writable (checked when the configuration loads; a file "
            "that cannot be parsed is a warning, and the zone starts empty). "
            "`timeout` removes entries that long after they were set (the API's `expire` overrides "
            "it per entry). `type`: `string` matches the key exactly, `ip` matches addresses "
            "against IP/CIDR keys (most specific first), `prefix` the longest key the value starts "
            "with. Every worker sees a write before the API answers. `sync` keeps the zone in the "
            "`state_redis` server too: a write on one gateway instance applies on every instance "
            "within a second.",
        nginx_notes="`sync` synchronises through Redis (`state_redis`) rather than `zone_sync`, "
                    "and does not require `timeout`. A zone is refused writes when full (NGINX Plus "
                    "also refuses, its error code differs)."),
    DirectiveSpec(
        "keyval", "keyval", Ctx.HTTP, 3, 3, inherit=Inherit.NONE,
        syntax="keyval key $variable zone=name;",
        doc="`$variable` is the value of `key` (text with variables, e.g. `$jwt_claim_jti`) in the "
            "zone, empty when absent or expired; looked up when read, once per request, so an "
            "entry added through the API applies to the very next request."),
)


@dataclass(eq=False)
class KeyvalZone:
    """A ``keyval_zone``.

    Attributes:
        name, size, kind, timeout, state, sync: as configured (``timeout`` seconds, 0 for none;
            ``state`` an absolute path or ``None``).
        store: the zone's content (:class:`~jwtgate.state.keyval.ZoneStore`); replaced on
            open by the running gateway's store of the same zone when compatible.
        syncer: the :class:`~jwtgate.state.keyval_redis.KeyvalSync` of ``sync`` zones, once open.
    """

    name: str
    size: int
    kind: str
    timeout: float
    state: str | None
    sync: bool
    directive: Any
    store: ZoneStore = field(init=False)
    syncer: Any = None

    def __post_init__(self) -> None:
        self.store = self.new_store()

    def new_store(self) -> ZoneStore:
        return ZoneStore(self.name, self.size, self.kind, self.timeout, self.state, runtime_dir())

    def signature(self) -> tuple[Any, ...]:
        """What must match for a reload to keep the zone's store (NGINX keeps a shared zone of
        the same name and size)."""
        return (self.size, self.kind, self.timeout, self.state, self.store.data_path)


class _KeyvalVariable:
    """The getter of a ``keyval`` variable: the zone's value for the evaluated key."""

    __slots__ = ("key", "zone", "zone_name")

    def __init__(self, zone_name: str) -> None:
        self.key: Any = None
        self.zone: KeyvalZone | None = None
        self.zone_name = zone_name

    def __call__(self, ctx: Any) -> str:
        zone = self.zone
        if zone is None:
            return ""
        return zone.store.lookup(self.key(ctx))


def keyval_zones(build: Any) -> dict[str, KeyvalZone]:
    """The configuration's keyval zones by name (empty when there are none)."""
    shared = build.shared.get("keyval") if build is not None else None
    return shared["zones"] if shared else {}


async def apply_change_async(zone: KeyvalZone, change: Change) -> dict[str, Entry]:
    """Apply ``change`` to ``zone`` (through Redis first for ``sync`` zones).

    Raises:
        KeyvalError: refused (full zone, existing key...).
        StateError: a ``sync`` zone's Redis server is unavailable.
        OSError: the zone's file cannot be written.
    """
    if zone.sync:
        if zone.syncer is None:
            raise StateError(f'keyval zone "{zone.name}" is not connected to Redis')
        return await zone.syncer.write(zone.name, change)  # type: ignore[no-any-return]
    return zone.store.change(change)


def check_state_file(build: Any, zone: str, path: str, d: Any) -> None:
    """Check a ``keyval_zone ... state=`` file when the configuration loads (``jwtgate check``,
    start, reload), so that a bad path fails there and not at the first API write.

    The file is replaced atomically on every write (a temporary file in its directory renamed
    over it, :mod:`jwtgate.state.keyval`), so its directory must exist and be writable; this is
    checked with ``stat``/``access`` only (nothing is created: ``jwtgate check`` has no side
    effects). An existing file that cannot be read or parsed is a warning, as at start the zone
    then starts empty (and the first write replaces the file).

    Args:
        build: the :class:`~jwtgate.conf.compiler.Build` (warnings go to ``build.warnings``).
        zone: the zone name (for messages).
        path: the absolute ``state=`` path.
        d: the ``keyval_zone`` directive (where errors and warnings are located).

    Raises:
        ConfigError: ``open() "PATH" failed (ERRNO: STRERROR)``, as NGINX reports a file it
            cannot create, when the directory is missing, not a directory, not writable, or
            ``path`` is a directory.
    """
    directory = os.path.dirname(path) or "/"

    def failed(code: int) -> Any:
        return build.error(f'open() "{path}" failed ({code}: {os.strerror(code)})', d)

    try:
        is_dir = stat.S_ISDIR(os.stat(directory).st_mode)
    except OSError as e:
        raise failed(e.errno or errno.ENOENT) from None
    except ValueError:  # a NUL byte in the path
        raise failed(errno.EINVAL) from None
    if not is_dir:
        raise failed(errno.ENOTDIR)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise failed(errno.EACCES)
    if os.path.isdir(path):
        raise failed(errno.EISDIR)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return
    except OSError as e:
        build.warn(f'open() "{path}" failed ({e.errno}: {e.strerror}): keyval zone "{zone}" '
                   f'will start empty', d)
        return
    try:
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        decode_state(data)
    except (ValueError, UnicodeDecodeError) as e:
        build.warn(f'the state file "{path}" of keyval zone "{zone}" cannot be parsed ({str(e)[:200]}): '
                   f'the zone will start empty and its next write replaces the file', d)


class KeyvalModule(Module):
    """``keyval_zone`` and ``keyval``."""

    name = "keyval"
    directives = DIRECTIVES

    def declare(self, build: Any) -> None:
        build.shared["keyval"] = {"zones": {}, "vars": []}
        build.keyval_variables = set()

    def predeclare(self, build: Any, level: Any, d: Any) -> None:
        if d.name != "keyval":
            return
        var = d.args[1]
        if not var.startswith("$") or len(var) < 2:
            raise build.error(f'invalid variable name "{var}"', d)
        zone_arg = d.args[2]
        if not zone_arg.startswith("zone=") or len(zone_arg) == 5:
            raise build.error(f'invalid parameter "{zone_arg}"', d)
        getter = _KeyvalVariable(zone_arg[5:])
        name = var[1:].lower()
        try:
            build.variables.add(var[1:], getter, self.name, cacheable=True)
        except ValueError:
            raise build.error(f'the duplicate "{var[1:]}" variable', d) from None
        build.shared.setdefault("var_deps", {})[name] = set(variable_names(d.args[0]))
        build.keyval_variables.add(name)
        build.shared["keyval"]["vars"].append((getter, d))

    def parse(self, build: Any, level: Any, d: Any, spec: DirectiveSpec) -> Any:
        if d.name == "keyval":
            getter = next(g for g, gd in build.shared["keyval"]["vars"] if gd is d)
            getter.key = build.complex(d.args[0], d)
            return getter
        return self._zone(build, d)

    def _zone(self, build: Any, d: Any) -> KeyvalZone:
        name = None
        size = 0
        state = None
        timeout = 0.0
        kind = "string"
        sync = False
        for arg in d.args:
            key, eq, value = arg.partition("=")
            if key == "zone" and eq:
                try:
                    name, size = parse_zone(value)
                except ValueError:
                    name = ""
                if not name:
                    raise build.error(f'invalid zone size "{arg}"', d)
                if size < MIN_ZONE_SIZE:
                    raise build.error(f'zone "{name}" is too small', d)
                if size > MAX_ZONE_SIZE:
                    raise build.error(f'zone "{name}" is too large (at most 1g)', d)
            elif key == "state" and eq and value:
                state = build.path(value)
            elif key == "timeout" and eq:
                try:
                    timeout = parse_time(value, kind="msec")
                except ValueError:
                    timeout = 0
                if timeout <= 0:
                    raise build.error(f'invalid timeout value "{arg}"', d)
            elif key == "type" and eq and value in _TYPES:
                kind = value
            elif arg == "sync":
                sync = True
            else:
                raise build.error(f'invalid parameter "{arg}"', d)
        if name is None:
            raise build.error('"keyval_zone" must have "zone" parameter', d)
        zones = build.shared["keyval"]["zones"]
        if name in zones:
            raise build.error(f'duplicate zone "{name}"', d)
        if state is not None:
            check_state_file(build, name, state, d)
        zone = KeyvalZone(name, size, kind, timeout, state, sync, d)
        zones[name] = zone
        return zone

    def finish(self, build: Any) -> None:
        zones = build.shared["keyval"]["zones"]
        for getter, d in build.shared["keyval"]["vars"]:
            zone = zones.get(getter.zone_name)
            if zone is None:
                raise build.error(f'zone "{getter.zone_name}" is unknown', d)
            getter.zone = zone
        states: dict[str, str] = {}
        for zone in zones.values():
            if zone.sync and redis_connection(build) is None:
                raise build.error(f'zone "{zone.name}" has the "sync" parameter, which needs "state_redis"',
                                  zone.directive)
            if zone.state is not None:
                if zone.state in states:
                    raise build.error(f'zones "{states[zone.state]}" and "{zone.name}" share the state '
                                      f'file "{zone.state}"', zone.directive)
                states[zone.state] = zone.name

    def resources(self, build: Any) -> list[Resource]:
        zones = keyval_zones(build)
        if not zones:
            return []
        return [KeyvalZones(list(zones.values()), redis_connection(build))]


class KeyvalZones:
    """The keyval zones of a configuration, as a plan resource.

    On open, a zone takes over the store of the running configuration's zone with the same name
    and :meth:`KeyvalZone.signature` (NGINX keeps a shared memory zone across reloads), else
    opens its own (reading its file); ``sync`` zones start their Redis synchronisation.
    """

    def __init__(self, zones: list[KeyvalZone], conn: Any) -> None:
        self.zones = zones
        self.conn = conn
        self.syncer: Any = None
        self._keep: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<keyval zones {[z.name for z in self.zones]}>"

    async def open(self, keep: dict[str, Any]) -> None:
        previous: dict[str, tuple[tuple[Any, ...], ZoneStore]] = keep.get("keyval", {})
        current: dict[str, tuple[tuple[Any, ...], ZoneStore]] = {}
        for zone in self.zones:
            old = previous.get(zone.name)
            if old is not None and old[0] == zone.signature() and old[1].opened:
                zone.store = old[1]
            else:
                zone.store = zone.new_store()
                zone.store.open()
            current[zone.name] = (zone.signature(), zone.store)
        # Stores of zones the new configuration no longer has are closed with their plan.
        keep["keyval"] = current
        self._keep = keep
        synced = {z.name: z.store for z in self.zones if z.sync}
        if synced and self.conn is not None:
            from jwtgate.state.keyval_redis import KeyvalSync

            self.syncer = KeyvalSync(self.conn, synced)
            for zone in self.zones:
                if zone.sync:
                    zone.syncer = self.syncer
            self.syncer.start()

    def flush(self) -> None:
        pass

    def reopen(self) -> None:
        pass

    async def close(self) -> None:
        if self.syncer is not None:
            await self.syncer.stop()
        current = (self._keep or {}).get("keyval", {})
        for zone in self.zones:
            kept = current.get(zone.name)
            if kept is None or kept[1] is not zone.store:
                zone.store.close()


__all__ += ["KeyvalError"]
