"""The metadata of an embedded pool: one JSON document, replaced atomically.

Every change (create, snapshot, clone, resize, delete) takes the pool lock, reads the
document afresh, changes it and writes it back with write-temp, fsync, rename, fsync
directory.  Several processes may therefore open different volumes of one pool.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cairn.blockdev import StoreError
from cairn.store._fs import atomic_write_json
from cairn.store.errors import BusyError

FORMAT = 1
META_FILE = "pool.json"
LOCK_FILE = "pool.lock"

Meta = dict[str, Any]


class PoolMeta:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / META_FILE
        self._lock_fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._thread_lock = threading.RLock()
        self._depth = 0

    @contextmanager
    def locked(self) -> Iterator[Meta]:
        """Hold the pool lock; yields the current document (``save`` writes it back)."""
        with self._thread_lock:
            if self._lock_fd < 0:
                raise StoreError(f"pool {self.root} is closed")
            if self._depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield self.load()
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def load(self) -> Meta:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {"format": FORMAT, "volumes": {}, "layers": {}}
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{self.path}: pool metadata is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise StoreError(f"{self.path}: pool metadata of unknown format")
        return meta

    def save(self, meta: Meta) -> None:
        assert self._depth > 0, "save() outside locked()"
        atomic_write_json(self.path, meta)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class VolumeLock:
    """An exclusive lock on one volume: one opener at a time, in any process."""

    def __init__(self, path: Path, name: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            raise BusyError(
                f"volume {name!r} is open elsewhere (in this or another process)"
            ) from None

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
