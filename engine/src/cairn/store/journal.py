"""The per-volume journal file of the embedded store.

It holds the volume's small mutable state and the record of the one write or unmap in
progress, so that a process killed in the middle of an operation is repaired exactly on
the next open (see docs/store.md, "Ordering and durability").

Layout (little-endian u64 slots in a 4 KiB header, then the payload area)::

    slot 0  magic            slot 5-6  boot id of the machine when opened
    slot 1  format version   slot 8    intent seq (0: nothing in progress)
    slot 2  clean (1/0)      slot 9    intent op (1 write, 2 unmap)
    slot 3  high seq         slot 10   intent lba
    slot 4  flushed seq      slot 11   intent block count
    4096 .. 4096+PAYLOAD_MAX:  the payload of the write in progress
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from cairn.blockdev import StoreError
from cairn.store._fs import boot_id, fsync_dir, reserve

MAGIC = int.from_bytes(b"CAIRNJ01", "little")
VERSION = 1
HEADER = 4096
PAYLOAD_MAX = 1 << 20
SIZE = HEADER + PAYLOAD_MAX

OP_WRITE = 1
OP_UNMAP = 2

OFF_CLEAN = 16
OFF_HIGH = 24
OFF_FLUSHED = 32
OFF_BOOT = 40
OFF_SEQ = 64
OFF_OP = 72

U64 = struct.Struct("<Q")
INTENT = struct.Struct("<QQQ")  # op, lba, count
_HEAD = struct.Struct("<QQQQQ16s")


class Journal:
    """An open journal: the mapping plus typed accessors for the header fields."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(self.fd).st_size != SIZE:
                raise StoreError(f"{path}: journal has the wrong size; the pool is damaged")
            self.mm = mmap.mmap(self.fd, SIZE)
        except BaseException:
            os.close(self.fd)
            raise
        self.payload = memoryview(self.mm)[HEADER:SIZE]
        magic, version, _, _, _, _ = _HEAD.unpack_from(self.mm, 0)
        if magic != MAGIC or version != VERSION:
            self.close()
            raise StoreError(f"{path}: not a journal of a known format")

    @staticmethod
    def create(path: Path, high_seq: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, SIZE)
            # Allocate every block now: stores through the mapping must never fault
            # on a full file system.
            reserve(fd, 0, SIZE)
            os.pwrite(fd, _HEAD.pack(MAGIC, VERSION, 1, high_seq, high_seq, bytes(16)), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)

    # -- header fields ---------------------------------------------------------------

    def _get(self, off: int) -> int:
        return int(U64.unpack_from(self.mm, off)[0])

    @property
    def clean(self) -> bool:
        return self._get(OFF_CLEAN) == 1

    @property
    def high_seq(self) -> int:
        return self._get(OFF_HIGH)

    @property
    def flushed_seq(self) -> int:
        return self._get(OFF_FLUSHED)

    @property
    def boot(self) -> bytes:
        return bytes(self.mm[OFF_BOOT : OFF_BOOT + 16])

    def intent(self) -> tuple[int, int, int, int]:
        """(seq, op, lba, count) of the operation in progress; seq 0 when none."""
        seq = self._get(OFF_SEQ)
        op, lba, count = INTENT.unpack_from(self.mm, OFF_OP)
        return seq, op, lba, count

    def clear_intent(self) -> None:
        U64.pack_into(self.mm, OFF_SEQ, 0)

    def set_high(self, seq: int) -> None:
        U64.pack_into(self.mm, OFF_HIGH, seq)

    def mark_open(self, high_seq: int) -> None:
        """Record that the volume is open on this boot (not clean) and make it durable."""
        U64.pack_into(self.mm, OFF_HIGH, high_seq)
        self.mm[OFF_BOOT : OFF_BOOT + 16] = boot_id()
        U64.pack_into(self.mm, OFF_CLEAN, 0)
        self.sync_header()

    def mark_flushed(self, seq: int) -> None:
        U64.pack_into(self.mm, OFF_FLUSHED, seq)
        self.sync_header()

    def mark_clean(self, high_seq: int) -> None:
        U64.pack_into(self.mm, OFF_HIGH, high_seq)
        U64.pack_into(self.mm, OFF_FLUSHED, high_seq)
        U64.pack_into(self.mm, OFF_CLEAN, 1)
        self.sync_header()

    def sync_header(self) -> None:
        self.mm.flush(0, HEADER)

    def close(self) -> None:
        if self.fd < 0:
            return
        self.payload.release()
        self.mm.close()
        os.close(self.fd)
        self.fd = -1
