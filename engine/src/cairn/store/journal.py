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
                             slot 12   intent payload offset (0: 4096)
    4096 .. 4096+PAYLOAD_MAX:  the payload of the write in progress, copied there
    then SLOTS areas of PAYLOAD_MAX (format 2): write buffers lent to the target, so that
    a write whose data was received into one needs no copy (its offset is the intent's)
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from cairn.blockdev import StoreError
from cairn.store._fs import PunchUnsupported, boot_id, fsync_dir, punch_hole, reserve

MAGIC = int.from_bytes(b"CAIRNJ01", "little")
VERSION = 2
HEADER = 4096
PAYLOAD_MAX = 1 << 20
SLOTS = 8
SIZE = HEADER + (1 + SLOTS) * PAYLOAD_MAX
#: format 1: the copy area only, no slots
SIZE_V1 = HEADER + PAYLOAD_MAX

OP_WRITE = 1
OP_UNMAP = 2

OFF_CLEAN = 16
OFF_HIGH = 24
OFF_FLUSHED = 32
OFF_BOOT = 40
OFF_SEQ = 64
OFF_OP = 72
OFF_PAYLOAD = 96

U64 = struct.Struct("<Q")
INTENT = struct.Struct("<QQQ")  # op, lba, count
_HEAD = struct.Struct("<QQQQQ16s")


class Journal:
    """An open journal: the mapping plus typed accessors for the header fields."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(self.fd).st_size
            if size not in (SIZE, SIZE_V1):
                raise StoreError(f"{path}: journal has the wrong size; the pool is damaged")
            self.mm = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = size
        self.view = memoryview(self.mm)
        self.payload = self.view[HEADER : HEADER + PAYLOAD_MAX]
        magic, version, _, _, _, _ = _HEAD.unpack_from(self.mm, 0)
        if magic != MAGIC or version not in (1, VERSION) or (version == 1) != (size == SIZE_V1):
            self.close()
            raise StoreError(f"{path}: not a journal of a known format")
        #: number of lendable payload areas: 0 in a format 1 journal, or when the file
        #: system cannot give them space now (writes are then copied, as always)
        self.slots = 0
        if size == SIZE:
            try:
                reserve(self.fd, HEADER + PAYLOAD_MAX, SLOTS * PAYLOAD_MAX)
                self.slots = SLOTS
            except OSError:
                pass

    @property
    def lent_bytes(self) -> int:
        """Space held for the lendable payload areas while the journal is open."""
        return self.slots * PAYLOAD_MAX

    @staticmethod
    def create(path: Path, high_seq: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, SIZE)
            # Allocate the header and the copy area now: stores through the mapping
            # must never fault on a full file system.  The lendable areas are reserved
            # while the journal is open (``__init__``) and given back at close.
            reserve(fd, 0, HEADER + PAYLOAD_MAX)
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

    def intent_payload(self, nbytes: int) -> bytes | None:
        """The payload of the write in progress, or None if its recorded place is not a
        payload area of this journal."""
        off = self._get(OFF_PAYLOAD) or HEADER
        if off < HEADER or (off - HEADER) % PAYLOAD_MAX or off + nbytes > self.size:
            return None
        return bytes(self.mm[off : off + nbytes])

    def slot_offset(self, slot: int) -> int:
        """Where lendable payload area ``slot`` starts in the file."""
        return HEADER + (1 + slot) * PAYLOAD_MAX

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
        if self.slots:
            try:
                punch_hole(self.fd, HEADER + PAYLOAD_MAX, SLOTS * PAYLOAD_MAX)
            except (OSError, PunchUnsupported):
                pass  # the space stays allocated; nothing depends on it
        try:
            self.view.release()
            self.mm.close()
        except BufferError:
            pass  # a lent payload area is still referenced; the mapping goes with it
        os.close(self.fd)
        self.fd = -1
