"""Key-value zones (NGINX Plus ``ngx_http_keyval_module``): entries, matching, persistence, sharing.

A zone maps keys to string values; each entry may expire at an absolute wall-clock time (the
zone's ``timeout=``, or a per-entry ``expire`` given through the API, as NGINX Plus R27+).

Where a zone lives (:class:`ZoneStore`):

* **In one process** (no instance runtime directory: ``jwtgate check``, in-process tests): a
  plain dict, saved to the ``state=`` file after each change when there is one.
* **In a running instance** (``process.runtime.runtime_dir()`` is set; one process or a master
  and its workers): the authoritative copy is a JSON file, the ``state=`` file or
  ``RUNTIME/keyval/<zone>.json``. Writers take an exclusive ``flock`` on
  ``RUNTIME/keyval/<zone>.lock``, read the file, apply the change, write a temporary file,
  ``fsync`` it, ``rename`` it over the file, then bump an 8-byte generation counter in
  ``RUNTIME/keyval/<zone>.gen``, which every process maps with ``mmap``. A lookup compares the
  mapped generation with the one its copy was read at (one memory read) and reads the file again
  only when it changed, so a write is visible to every worker as soon as the writer returns.

The file format is NGINX Plus's state file: one JSON object, ``{"key": "value", ...}``; an entry
that expires is written ``"key": {"value": "v", "expire": EPOCH_MS}`` (jwtgate reads both forms).

Sizes: a zone of ``size`` bytes holds entries while the sum of :func:`entry_cost` stays within
it (``ENTRY_OVERHEAD`` bytes per entry plus its key and value in UTF-8, an estimate of NGINX's
slab use); a write that would exceed it is refused, as is one whose file would be larger than
the :data:`MAX_FILE_BYTES` a reader accepts (:func:`encode_storable`). Keys are at most
:data:`MAX_KEY_BYTES`, values at most :data:`MAX_VALUE_BYTES`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "ENTRY_OVERHEAD", "MAX_KEY_BYTES", "MAX_VALUE_BYTES", "KeyvalError", "ZoneStore", "Entry",
    "encode_state", "encode_storable", "decode_state", "entry_cost", "check_key", "Change", "apply_change", "now_ms",
]

log = logging.getLogger("jwtgate.keyval")

#: Estimated bytes one entry takes besides its key and value (node, expiry, allocator slack).
ENTRY_OVERHEAD = 128
#: Longest key accepted, in UTF-8 bytes; a longer lookup key never matches.
MAX_KEY_BYTES = 1024
#: Longest value accepted, in UTF-8 bytes.
MAX_VALUE_BYTES = 4096
#: Largest state file read, bytes. A zone may be configured larger (up to 1g), and JSON may
#: escape a key's characters into six bytes each, so writes check it too (:func:`encode_storable`).
MAX_FILE_BYTES = 64 * 1024 * 1024

#: An entry: ``(value, expire)`` where ``expire`` is epoch milliseconds, 0 for never.
Entry = tuple[str, int]

_GEN = struct.Struct("<Q")
#: The counter file: the generation (offset 0) and, for ``sync`` zones, the Redis version the
#: file's content reflects (offset 8).
_META_SIZE = 16


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (entries expire on wall time, so across restarts)."""
    return time.time_ns() // 1_000_000


class KeyvalError(Exception):
    """A refused keyval operation, with NGINX Plus API semantics.

    Attributes:
        status: the HTTP status (400, 404, 409, 507...).
        code: the NGINX Plus error code (``KeyvalKeyExists``...).
        text: the error text.
    """

    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text


def entry_cost(key: str, value: str) -> int:
    """Bytes an entry is counted for against its zone's size."""
    return ENTRY_OVERHEAD + len(key.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass"))


def check_key(key: str, kind: str) -> str | None:
    """Why ``key`` cannot be stored in a zone of type ``kind``, or ``None`` when it can.

    ``string`` and ``prefix`` take any non-empty key; ``ip`` takes an IPv4/IPv6 address or
    network in CIDR notation (host bits must be zero).
    """
    if not key:
        return "empty key"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid key format: not valid Unicode"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"key is longer than {MAX_KEY_BYTES} bytes"
    if kind == "ip":
        try:
            ipaddress.ip_network(key, strict=True)
        except ValueError:
            return f'invalid key format "{key[:64]}"'
    return None


def encode_state(entries: dict[str, Entry]) -> bytes:
    """The NGINX Plus state-file JSON of ``entries``."""
    out: dict[str, Any] = {}
    for key, (value, expire) in entries.items():
        out[key] = {"value": value, "expire": expire} if expire else value
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def encode_storable(entries: dict[str, Entry]) -> bytes:
    """:func:`encode_state`, refused when the file could not be read back.

    Raises:
        KeyvalError: 507 ``KeyvalZoneFull`` when the JSON exceeds :data:`MAX_FILE_BYTES` (a
            reader would take the file for corrupt: every worker would keep a stale copy, a
            restart would start the zone empty and the next write would drop its entries).
    """
    data = encode_state(entries)
    if len(data) > MAX_FILE_BYTES:
        raise KeyvalError(507, "KeyvalZoneFull", "keyval zone is full (its state file would be too large)")
    return data


def decode_state(data: bytes) -> dict[str, Entry]:
    """Entries from a state file (either NGINX Plus form per entry).

    Raises:
        ValueError: not a JSON object of string values or ``{"value", "expire"}`` objects.
    """
    if not data.strip():
        return {}
    obj = json.loads(data.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("the state is not a JSON object")
    out: dict[str, Entry] = {}
    for key, item in obj.items():
        if isinstance(item, str):
            out[key] = (item, 0)
        elif isinstance(item, dict) and isinstance(item.get("value"), str) \
                and isinstance(item.get("expire", 0), int) and not isinstance(item.get("expire", 0), bool):
            out[key] = (item["value"], max(0, item.get("expire", 0)))
        else:
            raise ValueError(f"invalid entry for key {key[:64]!r}")
    return out


#: A change to a zone: ``("post", {key: (value, expire_ms|None)})`` adds new keys,
#: ``("patch", {key: None | (value|None, expire_ms|None)})`` sets, re-times or (``None``) deletes
#: keys, ``("clear", {})`` empties the zone, ``("replace", {key: Entry})`` sets the whole content.
Change = tuple[str, dict[str, Any]]


def apply_change(entries: dict[str, Entry], change: Change, *, size: int, timeout_ms: int,
                 now: int) -> dict[str, Entry]:
    """A new entry dict: ``entries`` without expired entries, with ``change`` applied.

    Args:
        entries: the current content (not modified).
        change: see :data:`Change`. A relative ``expire`` (ms) overrides the zone timeout; 0
            means the entry never expires; ``None`` means the zone's ``timeout`` (or never).
        size: the zone size in bytes (see :func:`entry_cost`).
        timeout_ms: the zone's ``timeout=`` in milliseconds, 0 when none.
        now: epoch milliseconds.

    Raises:
        KeyvalError: 409 ``KeyvalKeyExists`` (post of a present key), 404 ``KeyvalKeyNotFound``
            (patch of only the expiry of an absent key), 507 ``KeyvalZoneFull`` (the zone's
            size would be exceeded).
    """
    kind, items = change
    out = {k: e for k, e in entries.items() if not e[1] or e[1] > now}
    if kind == "clear":
        return {}
    if kind == "replace":
        out = {k: e for k, e in items.items() if not e[1] or e[1] > now}
    elif kind == "post":
        for key in items:
            if key in out:
                raise KeyvalError(409, "KeyvalKeyExists", f'key "{key[:256]}" already exists')
        for key, (value, expire) in items.items():
            out[key] = (value, _deadline(expire, timeout_ms, now))
    elif kind == "patch":
        for key, item in items.items():
            if item is None:
                out.pop(key, None)
                continue
            value, expire = item
            if value is None:
                old = out.get(key)
                if old is None:
                    raise KeyvalError(404, "KeyvalKeyNotFound", "keyval key not found")
                value = old[0]
            out[key] = (value, _deadline(expire, timeout_ms, now))
    else:
        raise ValueError(f"unknown change {kind!r}")
    if kind != "replace":
        used = sum(entry_cost(k, v) for k, (v, _) in out.items())
        if used > size:
            raise KeyvalError(507, "KeyvalZoneFull", "keyval zone is full")
    return out


def _deadline(expire: int | None, timeout_ms: int, now: int) -> int:
    if expire is None:
        return now + timeout_ms if timeout_ms else 0
    return now + expire if expire else 0


class _Index:
    """Lookup structures of one content snapshot, by zone type."""

    __slots__ = ("entries", "lengths", "nets")

    def __init__(self, entries: dict[str, Entry], kind: str) -> None:
        self.entries = entries
        self.lengths: tuple[int, ...] = ()
        self.nets: tuple[tuple[int, int, dict[int, Entry]], ...] = ()
        if kind == "prefix":
            self.lengths = tuple(sorted({len(k) for k in entries}, reverse=True))
        elif kind == "ip":
            by: dict[tuple[int, int], dict[int, Entry]] = {}
            for key, entry in entries.items():
                try:
                    net = ipaddress.ip_network(key, strict=False)
                except ValueError:
                    continue  # a key loaded from a hand-edited file; never matches
                by.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = entry
            # Most specific network first within each family.
            self.nets = tuple((v, p, d) for (v, p), d in sorted(by.items(), key=lambda i: -i[0][1]))

    def find(self, key: str, kind: str) -> Entry | None:
        if kind == "string":
            return self.entries.get(key)
        if kind == "prefix":
            for n in self.lengths:
                if n <= len(key):
                    hit = self.entries.get(key[:n])
                    if hit is not None:
                        return hit
            return None
        try:
            addr = ipaddress.ip_address(key)
        except ValueError:
            return None
        version = addr.version
        value = int(addr)
        bits = 32 if version == 4 else 128
        for v, plen, table in self.nets:
            if v != version:
                continue
            mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
            hit = table.get(value & mask)
            if hit is not None:
                return hit
        return None


def _safe_name(zone: str) -> str:
    """A file-name-safe spelling of a zone name (other bytes as ``%XX``)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "".join(
        f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in zone)


class ZoneStore:
    """The content of one keyval zone in one process, and how it is shared (module docstring).

    Args:
        name: the zone name.
        size: the zone size in bytes (bounds the entries, see :func:`entry_cost`).
        kind: ``string``, ``ip`` or ``prefix`` (NGINX Plus ``type=``).
        timeout: ``timeout=`` in seconds, 0 for none.
        state: the ``state=`` file (absolute), or ``None``.
        runtime: the instance runtime directory, or ``None`` outside a running instance.
        clock: epoch-milliseconds clock (tests inject one).
    """

    def __init__(self, name: str, size: int, kind: str = "string", timeout: float = 0.0,
                 state: str | None = None, runtime: str | None = None,
                 clock: Callable[[], int] = now_ms) -> None:
        self.name = name
        self.size = size
        self.kind = kind
        self.timeout_ms = int(round(timeout * 1000))
        self.state = state
        self.clock = clock
        self.shared = runtime is not None
        if runtime is not None:
            base = os.path.join(runtime, "keyval", _safe_name(name))
            self.data_path = state or base + ".json"
            self.gen_path: str | None = base + ".gen"
            self.lock_path: str | None = base + ".lock"
        else:
            self.data_path = state  # type: ignore[assignment]
            self.gen_path = self.lock_path = None
        self._index = _Index({}, kind)
        self._seen = -1
        self._mem_version = 0
        self._map: mmap.mmap | None = None
        self._gen_fd = -1
        self.opened = False

    def __repr__(self) -> str:
        where = self.data_path or "memory"
        return f"<keyval zone {self.name} type={self.kind} {where}>"

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Map the generation counter (a running instance) and read the content.

        A missing file is an empty zone; a corrupt one is logged and the zone starts empty
        (never an exception: a bad state file must not stop the gateway).

        Raises:
            OSError: the runtime directory's files cannot be created.
        """
        if self.opened:
            return
        if self.gen_path is not None:
            fd = os.open(self.gen_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < _META_SIZE:
                    with self._locked():
                        if os.fstat(fd).st_size < _META_SIZE:
                            os.ftruncate(fd, _META_SIZE)
                self._map = mmap.mmap(fd, _META_SIZE)
            except BaseException:
                os.close(fd)
                raise
            self._gen_fd = fd
        self._seen = self._generation()  # first: a write after this is seen at the next lookup
        self._index = _Index(self._read_file(initial=True), self.kind)
        self.opened = True

    def close(self) -> None:
        """Unmap the counter (the content stays in its file)."""
        if self._map is not None:
            try:
                self._map.close()
            except (BufferError, ValueError):
                pass
            self._map = None
        if self._gen_fd >= 0:
            os.close(self._gen_fd)
            self._gen_fd = -1
        self.opened = False

    # -- reads -----------------------------------------------------------------------------

    def _generation(self) -> int:
        m = self._map
        return _GEN.unpack_from(m, 0)[0] if m is not None else 0

    def _fresh(self) -> _Index:
        """The current content: reread when another process (or this one) wrote it."""
        if not self.opened and not self.shared:
            # outside a running instance (`jwtgate explain`, in-process tests): read the
            # state file on first use
            self.open()
        m = self._map
        if m is not None:
            gen = _GEN.unpack_from(m, 0)[0]
            if gen != self._seen:
                # generation first, then the file: a write in between only causes one more read
                self._seen = gen
                try:
                    self._index = _Index(self._read_file(), self.kind)
                except Exception as e:  # keep serving the last good copy
                    log.error('keyval zone "%s": cannot read %s: %s', self.name, self.data_path, e)
        return self._index

    def lookup(self, key: str) -> str:
        """The value for ``key`` by the zone's matching rule, ``''`` when none (or expired)."""
        if not key:
            return ""
        if len(key) > MAX_KEY_BYTES:  # characters >= bytes / 4; exact check below is not needed
            if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
                return ""
        hit = self._fresh().find(key, self.kind)
        if hit is None:
            return ""
        value, expire = hit
        if expire and expire <= self.clock():
            return ""
        return value

    def items(self) -> dict[str, Entry]:
        """Every live entry (a copy)."""
        now = self.clock()
        return {k: e for k, e in self._fresh().entries.items() if not e[1] or e[1] > now}

    def count(self) -> int:
        """How many live entries the zone holds."""
        return len(self.items())

    # -- writes ----------------------------------------------------------------------------

    def change(self, change: Change, version: int | None = None, reset: bool = False) -> dict[str, Entry]:
        """Apply ``change`` atomically to the authoritative copy and publish it.

        Args:
            change: see :data:`Change`.
            version: for ``sync`` zones, the Redis version the change comes from. A
                ``replace`` older than (or as old as) what the copy already reflects is skipped,
                so a slow reconciliation never undoes a newer write; the copy then records the
                highest version applied.
            reset: record ``version`` even when lower (Redis lost the zone and counts anew).

        Returns:
            The new content.

        Raises:
            KeyvalError: the change is refused (see :func:`apply_change` and
                :func:`encode_storable`); nothing is written.
            OSError: the file cannot be read or written (nothing changed).
        """
        if not self.shared:
            if change[0] == "replace" and version is not None and version <= self._mem_version and not reset:
                return self._fresh().entries
            new = apply_change(self._fresh().entries, change, size=self.size, timeout_ms=self.timeout_ms,
                               now=self.clock())
            if self.state is not None:
                _write_atomic(self.state, _encode(change, new), sync=True)
            self._index = _Index(new, self.kind)
            if version is not None:
                self._mem_version = version if reset else max(self._mem_version, version)
            return new
        with self._locked():
            assert self._map is not None
            applied = _GEN.unpack_from(self._map, 8)[0]
            try:
                current = self._read_file()
            except ValueError as e:
                log.error('keyval zone "%s": %s is corrupt (%s), overwriting it', self.name, self.data_path, e)
                current = {}
            if change[0] == "replace" and version is not None and version <= applied and not reset:
                return current
            new = apply_change(current, change, size=self.size, timeout_ms=self.timeout_ms, now=self.clock())
            _write_atomic(self.data_path, _encode(change, new), sync=self.state is not None)
            if version is not None and (version > applied or reset):
                _GEN.pack_into(self._map, 8, version)
            gen = _GEN.unpack_from(self._map, 0)[0] + 1
            _GEN.pack_into(self._map, 0, gen)
            self._seen = gen
            self._index = _Index(new, self.kind)
        return new

    def _locked(self) -> Any:
        return _FileLock(self.lock_path)

    def _read_file(self, initial: bool = False) -> dict[str, Entry]:
        """The content of the data file; ``{}`` when there is none.

        Raises:
            ValueError: the file is corrupt (except at ``initial`` open: logged, ``{}``).
            OSError: the file exists but cannot be read (except at ``initial`` open); not a
                ValueError, so that a writer never takes it for corrupt and overwrites it.
        """
        path = self.data_path
        if not path:
            return {}
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as e:
            if initial:
                log.error('keyval zone "%s": cannot read state file %s: %s; the zone starts empty',
                          self.name, path, e.strerror or e)
                return {}
            raise
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ValueError("the file is too large")
            return decode_state(data)
        except (ValueError, UnicodeDecodeError) as e:
            if initial:
                log.error('keyval zone "%s": state file %s is corrupt (%s); the zone starts empty',
                          self.name, path, e)
                return {}
            raise ValueError(str(e)) from None


def _encode(change: Change, new: dict[str, Entry]) -> bytes:
    """The file content for ``new``; a ``replace`` (what Redis holds) is never refused, as
    :func:`apply_change` does not bound it either."""
    return encode_state(new) if change[0] == "replace" else encode_storable(new)


class _FileLock:
    """An exclusive ``flock`` on ``path`` for a ``with`` block (no-op when ``path`` is None)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _FileLock:
        if self.path is not None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def _write_atomic(path: str, data: bytes, sync: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it (readers see the old
    or the new file, never a part); ``sync``: fsync the file and its directory (durable)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".keyval-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        try:
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
