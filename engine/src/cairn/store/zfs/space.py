"""Keeping the ZFS store's writes away from a full pool.

zfs-fuse 0.7 aborts (an assertion in ``zfsfuse_write``) when a write request runs out of
space part way, which takes every filesystem of every pool down with it; kernel ZFS just
returns a short write.  So before a write the store checks that the pool keeps
``MARGIN`` bytes free, and refuses the write with ``NoSpaceError`` otherwise.  Asking
(``statvfs``, one FUSE request) before every write would double the requests; instead a
check grants a quarter of the room above the margin, and the next check comes when the
writes have used it.  Measured on zfs-fuse: ``f_bavail`` follows writes as they are made
and ZFS refuses the write that would take it to 0 (``docs/zfs.md``).

Unmaps are not held back: they write zeros, which ZFS takes even on a full pool (with
compression a record of zeros is stored as a hole) and which give space back.
"""

from __future__ import annotations

import os
from pathlib import Path

from cairn.blockdev import NoSpaceError
from cairn.store._fs import os_error

#: Bytes kept free in the pool: room for the seq map and journal pages a flush writes
#: back, ZFS metadata, and writes of other processes between two checks.
MARGIN = 32 << 20


class SpaceGuard:
    """One per pool object, shared by its volumes (they share the pool's space)."""

    def __init__(self, path: Path, margin: int = MARGIN) -> None:
        self.path = path
        self.margin = margin
        self._budget = 0

    def take(self, nbytes: int, what: str) -> None:
        """Account for a write of ``nbytes``; ``NoSpaceError`` if the pool has no room."""
        self._budget -= nbytes
        if self._budget >= 0:
            return
        try:
            st = os.statvfs(self.path)
        except OSError as exc:
            self._budget = 0
            raise os_error(exc, f"{what}: free space of the pool") from None
        avail = st.f_bavail * st.f_frsize
        room = avail - self.margin
        if room < nbytes:
            self._budget = 0
            raise NoSpaceError(
                f"{what}: no space left in the pool ({avail} bytes free, of which the ZFS "
                f"store keeps {self.margin} free)"
            )
        self._budget = room // 4 - nbytes
