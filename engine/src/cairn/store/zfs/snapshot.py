"""A read-only view of a ZFS snapshot of a volume: the frozen data file and seq map,
read through ``<mountpoint>/.zfs/snapshot/<name>/``.

The snapshot holds the whole image (one layer, no parent), so a read is one ``pread`` of
its data file and ``read_extents`` names a range of that file; wherever a block is absent
or unmapped the file reads as zeros (the embedded layer's invariant).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from cairn.blockdev import Extent, LbaStatus, StoreError
from cairn.store.errors import OutOfRangeError
from cairn.store.layers import SEQ_MASK, TOMBSTONE
from cairn.store.zfs.image import CHUNK, ImageFiles, journal_high_seq, read_entries

_TOMB = np.uint64(TOMBSTONE)
_MASK = np.uint64(SEQ_MASK)


class ZfsSnapshot:
    """Valid while its volume is open and the snapshot exists; ``close`` lets go of its
    files (deleting the snapshot or closing the volume closes it too)."""

    def __init__(
        self,
        volume_name: str,
        name: str,
        files: ImageFiles,
        created: float,
        valid: Callable[[], bool],
    ) -> None:
        self.name = name
        self._volume_name = volume_name
        self._valid = valid
        self._bs = files.block_size
        self._shift = self._bs.bit_length() - 1
        self.created = created
        self.high_seq = journal_high_seq(files.journal_path)
        self._data_fd = os.open(files.data_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._map_fd = os.open(files.map_path, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(self._data_fd)
            raise
        self._nb = os.fstat(self._map_fd).st_size // 8

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def num_blocks(self) -> int:
        return self._nb

    @property
    def closed(self) -> bool:
        return self._data_fd < 0

    def _what(self) -> str:
        return f"snapshot {self._volume_name}@{self.name}"

    def _check(self, lba: int, count: int) -> None:
        if self._data_fd < 0 or not self._valid():
            raise StoreError(f"{self._what()}: the view is closed or the snapshot was deleted")
        if lba < 0 or count < 0 or lba + count > self._nb:
            raise OutOfRangeError(
                f"{self._what()}: blocks {lba}..{lba + count - 1} are outside 0..{self._nb - 1}"
            )

    def read(self, lba: int, count: int) -> bytes:
        self._check(lba, count)
        length = count << self._shift
        try:
            data = os.pread(self._data_fd, length, lba << self._shift)
        except OSError as exc:
            raise StoreError(f"{self._what()}: read of lba {lba}: {exc.strerror}") from None
        return data + bytes(length - len(data)) if len(data) < length else data

    def read_extents(self, lba: int, count: int) -> list[Extent]:
        self._check(lba, count)
        if count == 0:
            return []
        return [Extent(self._data_fd, lba << self._shift, count << self._shift)]

    def block_seqs(self, lba: int, count: int) -> list[int]:
        self._check(lba, count)
        if count == 0:
            return []
        seqs: list[int] = (read_entries(self._map_fd, lba, count) & _MASK).tolist()
        return seqs

    def lba_status(self, lba: int, max_count: int) -> LbaStatus:
        if max_count < 1:
            raise OutOfRangeError(f"{self._what()}: lba_status needs max_count >= 1")
        self._check(lba, 1)
        end = min(self._nb, lba + max_count)
        state: bool | None = None
        pos = lba
        while pos < end:
            n = min(CHUNK, end - pos)
            entries = read_entries(self._map_fd, pos, n)
            dealloc = (entries == 0) | (entries >= _TOMB)
            if state is None:
                state = bool(dealloc[0])
            differ = np.flatnonzero(dealloc != state)
            if len(differ):
                return LbaStatus(lba, pos + int(differ[0]) - lba, state)
            pos += n
        return LbaStatus(lba, end - lba, bool(state))

    def close(self) -> None:
        for fd in (self._data_fd, self._map_fd):
            if fd >= 0:
                os.close(fd)
        self._data_fd = self._map_fd = -1

    def __enter__(self) -> ZfsSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
