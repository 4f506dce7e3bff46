"""The files of one layer of the embedded store: a sparse data file and its seq map.

A layer holds the blocks written while it was the head of a volume.  Block ``lba`` of
the layer lives at byte ``lba * block_size`` of ``data``; entry ``lba`` of ``seqmap``
(a little-endian u64 array, mapped into memory) says whether the layer holds it:

* ``0``: the layer does not hold the block; look in the parent layer.
* ``seq``: the layer holds the data written by write number ``seq``.
* ``TOMBSTONE | seq``: unmap number ``seq`` deallocated the block; it reads as zeros.

Invariant: wherever the entry is 0 or a tombstone the data file reads as zeros (it is a
hole, or was zeroed), so a layer with no parent is a plain image of the volume.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cairn.store._fs import fsync_dir, next_data, reserve

TOMBSTONE = 1 << 63
SEQ_MASK = TOMBSTONE - 1
MAX_SEQ = SEQ_MASK

DATA_FILE = "data"
MAP_FILE = "seqmap"

ENTRY = np.dtype("<u8")

# Seq-map space is reserved in granules before it is first stored to through the
# mapping, so a full file system raises ENOSPC instead of killing us with SIGBUS.
GRANULE_SHIFT = 13  # entries per granule: 8192 (64 KiB of map)
# Ranges up to this many entries go through the shared mapping; larger ones through
# pread/pwrite so that big scans do not map the whole map into our address space.
MAPPED_MAX = 4096

U64Array = npt.NDArray[np.uint64]


class Layer:
    """An open layer: file descriptors, the mapped seq map and its parent layer."""

    __slots__ = (
        "id",
        "path",
        "owner",
        "parent",
        "block_size",
        "num_blocks",
        "data_fd",
        "map_fd",
        "_mm",
        "arr",
        "granules",
    )

    def __init__(self, layer_id: str, path: Path, block_size: int, owner: str | None) -> None:
        self.id = layer_id
        self.path = path
        self.owner = owner
        self.parent: Layer | None = None
        self.block_size = block_size
        flags = os.O_RDWR | os.O_CLOEXEC
        self.data_fd = os.open(path / DATA_FILE, flags)
        try:
            self.map_fd = os.open(path / MAP_FILE, flags)
        except BaseException:
            os.close(self.data_fd)
            raise
        self._mm: mmap.mmap | None = None
        self.arr: U64Array = np.zeros(0, ENTRY)
        self.num_blocks = 0
        self.granules = bytearray()
        self._map()

    @staticmethod
    def create(path: Path, num_blocks: int, block_size: int) -> None:
        """Make the (empty, sparse) files of a new layer and make them durable."""
        path.mkdir(parents=True)
        for name, size in ((DATA_FILE, num_blocks * block_size), (MAP_FILE, num_blocks * 8)):
            fd = os.open(path / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(path)
        fsync_dir(path.parent)

    def _map(self) -> None:
        size = os.fstat(self.map_fd).st_size
        self.num_blocks = size // 8
        self._mm = mmap.mmap(self.map_fd, size)
        self.arr = np.frombuffer(self._mm, dtype=ENTRY)
        self.granules = bytearray((self.num_blocks >> GRANULE_SHIFT) + 1)

    def _unmap(self) -> None:
        self.arr = np.zeros(0, ENTRY)
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a view is still alive somewhere; the mapping goes with it
            self._mm = None

    # -- seq map -------------------------------------------------------------------

    def reserve_map(self, lba: int, count: int) -> None:
        """Make sure the map space of entries ``lba .. lba+count`` is allocated."""
        first = lba >> GRANULE_SHIFT
        last = (lba + count - 1) >> GRANULE_SHIFT
        granules = self.granules
        for g in range(first, last + 1):
            if not granules[g]:
                reserve(self.map_fd, g << (GRANULE_SHIFT + 3), 8 << GRANULE_SHIFT)
                granules[g] = 1

    def entries(self, lba: int, count: int) -> U64Array:
        """Entries ``lba .. lba+count`` clipped to the layer's size.  Small ranges are a
        view of the mapping (do not keep it), large ones a copy."""
        end = min(lba + count, self.num_blocks)
        if end <= lba:
            return self.arr[0:0]
        if end - lba <= MAPPED_MAX:
            return self.arr[lba:end]
        return np.frombuffer(os.pread(self.map_fd, (end - lba) * 8, lba * 8), dtype=ENTRY)

    def store(self, lba: int, values: U64Array | int, count: int) -> None:
        """Set entries ``lba .. lba+count`` to ``values`` (space must be reserved)."""
        if count <= MAPPED_MAX:
            self.arr[lba : lba + count] = values
            return
        if isinstance(values, int):
            chunk = np.full(min(count, 1 << 17), values, dtype=ENTRY).tobytes()
            pos = 0
            while pos < count:
                n = min(count - pos, len(chunk) // 8)
                _pwrite_all(self.map_fd, memoryview(chunk)[: n * 8], (lba + pos) * 8)
                pos += n
        else:
            _pwrite_all(self.map_fd, np.ascontiguousarray(values).data.cast("B"), lba * 8)

    def next_data_entry(self, lba: int) -> int | None:
        """The first entry index at or after ``lba`` that may be non-zero, or None."""
        if lba >= self.num_blocks:
            return None
        off = next_data(self.map_fd, lba * 8)
        if off is None or off // 8 >= self.num_blocks:
            return None
        return max(lba, off // 8)

    def max_seq(self) -> int:
        """The highest seq recorded in this layer (a scan of the allocated map)."""
        best = 0
        pos = 0
        while True:
            nxt = self.next_data_entry(pos)
            if nxt is None:
                return best
            n = min(1 << 17, self.num_blocks - nxt)
            chunk = np.frombuffer(os.pread(self.map_fd, n * 8, nxt * 8), dtype=ENTRY)
            if len(chunk):
                best = max(best, int((chunk & np.uint64(SEQ_MASK)).max()))
            pos = nxt + n

    def sync(self) -> None:
        """Make data and map durable."""
        os.fdatasync(self.data_fd)
        if self._mm is not None:
            self._mm.flush()

    def trim(self) -> None:
        """Drop our mapping of map pages (they stay in the page cache), keeping the
        resident size of a process with large volumes small.  Call after ``sync``."""
        if self._mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED)

    def grow(self, num_blocks: int) -> None:
        """Extend data and map to ``num_blocks`` (new blocks are absent)."""
        if num_blocks <= self.num_blocks:
            return
        self._unmap()
        os.ftruncate(self.data_fd, num_blocks * self.block_size)
        os.ftruncate(self.map_fd, num_blocks * 8)
        os.fsync(self.data_fd)
        os.fsync(self.map_fd)
        self._map()

    # -- space ---------------------------------------------------------------------

    def allocated_bytes(self) -> int:
        return (os.fstat(self.data_fd).st_blocks + os.fstat(self.map_fd).st_blocks) * 512

    def close(self) -> None:
        self._unmap()
        for fd in (self.data_fd, self.map_fd):
            if fd >= 0:
                os.close(fd)
        self.data_fd = self.map_fd = -1


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
