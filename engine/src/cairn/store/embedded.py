"""The embedded store: volumes as chains of sparse-file layers in a pool directory.

See docs/store.md for the layout on disk, the ordering of writes and what a crash can
do.  In short: a volume is a *head* layer that takes writes, on top of a chain of frozen
layers (its snapshots, and for a clone the snapshot it was cloned from).  A read resolves
each block to the topmost layer that holds it; with no snapshots that is always the head,
and reads and writes are one ``pread``/``pwrite`` plus a store into the mapped seq map.

Threading: a volume is used from one thread.  ``flush`` alone may run in another thread
while that one keeps doing I/O.
"""

from __future__ import annotations

import ctypes
import enum
import os
import re
import shutil
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cairn.blockdev import Buffer, Extent, LbaStatus, StoreError
from cairn.store._fs import (
    PunchUnsupported,
    boot_id,
    copy_range,
    fsync_dir,
    os_error,
    punch_hole,
    write_zeros,
)
from cairn.store.errors import BusyError, ExistsError, NotFoundError, OutOfRangeError
from cairn.store.journal import (
    HEADER,
    INTENT,
    OFF_HIGH,
    OFF_OP,
    OFF_PAYLOAD,
    OFF_SEQ,
    OP_UNMAP,
    OP_WRITE,
    PAYLOAD_MAX,
    U64,
    Journal,
)
from cairn.store.layers import (
    ENTRY,
    GRANULE_SHIFT,
    MAX_SEQ,
    SEQ_MASK,
    TOMBSTONE,
    Layer,
    U64Array,
)
from cairn.store.meta import Meta, PoolMeta, VolumeLock

BLOCK_SIZES = (512, 4096)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")

LAYERS_DIR = "layers"
VOLUMES_DIR = "volumes"
JOURNAL_FILE = "journal"
LOCK_FILE = "lock"

# Above this size of the head's seq map, ``flush`` drops our mapping of its pages so the
# resident size of the process stays small (the pages stay in the page cache).
TRIM_MAP_BYTES = 4 << 20
# Work per step of a snapshot merge: at most this many bytes of data to copy.
MERGE_STEP_BYTES = 8 << 20
STATUS_CHUNK = 1 << 16

_TOMB = np.uint64(TOMBSTONE)
_NO_ENTRIES: U64Array = np.zeros(0, dtype=ENTRY)
_MASK = np.uint64(SEQ_MASK)


class Shutdown(enum.Enum):
    """How the volume was last closed, as found when it was opened."""

    CLEAN = "clean"
    #: The process died; the machine kept running.  Nothing was lost: the operation in
    #: progress was completed from the journal.
    PROCESS_CRASH = "process-crash"
    #: The machine went down (power loss, kernel crash).  Everything up to
    #: ``flushed_seq`` is intact; writes after it may be torn (see docs/store.md).
    SYSTEM_CRASH = "system-crash"


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    created: float
    num_blocks: int
    high_seq: int
    #: Bytes the snapshot's own layer occupies in the pool (blocks written between the
    #: previous snapshot and this one, plus their seq map).
    used_bytes: int
    #: Bytes of data that only this snapshot holds (overwritten or unmapped since);
    #: deleting the snapshot gives them back.
    unique_bytes: int


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    name: str
    uuid: str
    block_size: int
    num_blocks: int
    created: float
    #: ``"volume@snapshot"`` for a clone, else None.
    origin: str | None
    snapshots: tuple[str, ...]

    @property
    def size_bytes(self) -> int:
        return self.num_blocks * self.block_size


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise StoreError(
            f"invalid {kind} name {name!r}: use 1-128 letters, digits and . _ : + - "
            "(not starting with a punctuation mark)"
        )


def _new_id() -> str:
    return uuidlib.uuid4().hex


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a boolean array."""
    edges = np.diff(mask.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1).tolist()
    ends = np.flatnonzero(edges == -1).tolist()
    return list(zip(starts, ends, strict=True))


# -- resolution through a chain of layers ---------------------------------------------


def _owner_runs(chain: list[Layer], lba: int, n: int) -> list[tuple[int, int, int]]:
    """(layer index or -1 for zeros, start, length) runs covering blocks lba..lba+n."""
    first = len(chain)
    for i, layer in enumerate(chain):
        e = layer.entries(lba, n)
        m = len(e)
        if m == 0:
            continue
        present = np.count_nonzero(e)
        if present == n:
            return [(i, 0, n)]
        if present == 0:
            continue
        first = i
        break
    if first == len(chain):
        return [(-1, 0, n)]
    owner = np.full(n, -1, dtype=np.int16)
    for j in range(first, len(chain)):
        e = chain[j].entries(lba, n)
        m = len(e)
        if m == 0:
            continue
        view = owner[:m]
        view[(view < 0) & (e != 0)] = j
        if (owner >= 0).all():
            break
    cuts = (np.flatnonzero(owner[1:] != owner[:-1]) + 1).tolist()
    starts = [0, *cuts]
    ends = [*cuts, n]
    return [(int(owner[s]), s, e - s) for s, e in zip(starts, ends, strict=True)]


def _resolved_entries(chain: list[Layer], lba: int, n: int) -> U64Array:
    """The deciding seq-map entry of each block (0: in no layer)."""
    out = np.zeros(n, dtype=ENTRY)
    missing = np.ones(n, dtype=bool)
    for layer in chain:
        e = layer.entries(lba, n)
        m = len(e)
        if m == 0:
            continue
        hit = missing[:m] & (e != 0)
        out[:m][hit] = e[hit]
        missing[:m] &= ~hit
        if not missing.any():
            break
    return out


def _merge_range(lower: Layer, upper: Layer, lba: int, count: int) -> None:
    """Copy into ``upper`` the blocks of ``lower`` that ``upper`` does not have (or has
    from an earlier, interrupted attempt): data first, then seq-map entries, so that a
    reader of ``upper`` (a clone in another process) never finds an entry whose data has
    not been copied yet; until the entry is there it reads through to ``lower``."""
    xs = np.array(lower.entries(lba, count))
    cs = upper.entries(lba, count)
    take = (xs != 0) & ((cs == 0) | (cs == xs))
    del cs
    if not take.any():
        return
    bs = lower.block_size
    for s, e in _runs(take & (xs < _TOMB)):
        copy_range(lower.data_fd, upper.data_fd, (lba + s) * bs, (e - s) * bs)
    for s, e in _runs(take):
        upper.reserve_map(lba + s, e - s)
        upper.store(lba + s, xs[s:e], e - s)


class _Reader:
    """Reads through a chain of layers: shared by volumes and snapshot views."""

    name: str
    _bs: int
    _shift: int
    _nb: int

    def _chain(self) -> list[Layer]:
        raise NotImplementedError

    def _what(self) -> str:
        return f"volume {self.name!r}"

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def num_blocks(self) -> int:
        return self._nb

    def _check_range(self, lba: int, count: int) -> None:
        if lba < 0 or count < 0 or lba + count > self._nb:
            raise OutOfRangeError(
                f"{self._what()}: blocks {lba}..{lba + count - 1} are outside 0..{self._nb - 1}"
            )

    def _pread(self, fd: int, length: int, offset: int) -> bytes:
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            raise os_error(exc, f"{self._what()}: read at byte {offset}") from None
        if len(data) != length:  # only past the end of a short file: zeros
            data += bytes(length - len(data))
        return data

    def _read_chain(self, lba: int, count: int) -> bytes:
        chain = self._chain()
        shift = self._shift
        runs = _owner_runs(chain, lba, count)
        if len(runs) == 1:
            owner = runs[0][0]
            if owner < 0:
                return bytes(count << shift)
            return self._pread(chain[owner].data_fd, count << shift, lba << shift)
        parts = []
        for owner, start, length in runs:
            if owner < 0:
                parts.append(bytes(length << shift))
            else:
                parts.append(
                    self._pread(chain[owner].data_fd, length << shift, (lba + start) << shift)
                )
        return b"".join(parts)

    def _extents_chain(self, lba: int, count: int) -> list[Extent]:
        chain = self._chain()
        shift = self._shift
        return [
            Extent(None, 0, length << shift)
            if owner < 0
            else Extent(chain[owner].data_fd, (lba + start) << shift, length << shift)
            for owner, start, length in _owner_runs(chain, lba, count)
        ]

    def read(self, lba: int, count: int) -> bytes:
        self._check_range(lba, count)
        return self._read_chain(lba, count)

    def read_extents(self, lba: int, count: int) -> list[Extent]:
        self._check_range(lba, count)
        if count == 0:
            return []
        return self._extents_chain(lba, count)

    def block_seqs(self, lba: int, count: int) -> list[int]:
        self._check_range(lba, count)
        if count == 0:
            return []
        ent = _resolved_entries(self._chain(), lba, count)
        result: list[int] = (ent & _MASK).tolist()
        return result

    def lba_status(self, lba: int, max_count: int) -> LbaStatus:
        if max_count < 1:
            raise OutOfRangeError(f"{self._what()}: lba_status needs max_count >= 1")
        self._check_range(lba, 1)
        end = min(self._nb, lba + max_count)
        chain = self._chain()
        pos = lba
        state: bool | None = None
        while pos < end:
            nexts = [layer.next_data_entry(pos) for layer in chain]
            nd = min((x for x in nexts if x is not None), default=None)
            if nd is None or nd > pos:
                # No layer has anything here: deallocated up to the next data.
                if state is False:
                    return LbaStatus(lba, pos - lba, False)
                state = True
                pos = end if nd is None else min(end, nd)
                continue
            m = min(end - pos, STATUS_CHUNK)
            ent = _resolved_entries(chain, pos, m)
            dealloc = (ent == 0) | (ent >= _TOMB)
            if state is None:
                state = bool(dealloc[0])
            differ = np.flatnonzero(dealloc != state)
            if len(differ):
                return LbaStatus(lba, pos + int(differ[0]) - lba, state)
            pos += m
        return LbaStatus(lba, end - lba, bool(state))


class EmbeddedSnapshot(_Reader):
    """A read-only view of a snapshot, valid while its volume is open and the snapshot
    exists."""

    def __init__(self, volume: EmbeddedVolume, record: dict[str, Any]) -> None:
        self._volume = volume
        self._record = record
        self.name = record["name"]
        self._bs = volume.block_size
        self._shift = volume._shift
        self._nb = record["num_blocks"]
        self._gen = -1
        self._chain_cache: list[Layer] = []
        self._closed = False

    def _what(self) -> str:
        return f"snapshot {self._volume.name}@{self.name}"

    @property
    def high_seq(self) -> int:
        return int(self._record["high_seq"])

    @property
    def created(self) -> float:
        return float(self._record["created"])

    def _chain(self) -> list[Layer]:
        vol = self._volume
        if (
            self._closed
            or vol.closed
            or self._record.get("deleting")
            or not any(s is self._record for s in vol._snapshots)
        ):
            raise StoreError(f"{self._what()}: the view is closed or the snapshot was deleted")
        if self._gen != vol._pool.generation:
            layer: Layer | None = vol._pool._layers[self._record["layer"]]
            chain = []
            while layer is not None:
                chain.append(layer)
                layer = layer.parent
            self._chain_cache = chain
            self._gen = vol._pool.generation
        return self._chain_cache

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> EmbeddedSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedVolume(_Reader):
    """One volume of an embedded pool: a ``ReplicaStore`` with snapshots."""

    def __init__(
        self,
        pool: EmbeddedPool,
        name: str,
        record: dict[str, Any],
        head: Layer,
        journal: Journal,
        lock: VolumeLock,
    ) -> None:
        self._pool = pool
        self.name = name
        self.uuid: str = record["uuid"]
        self._bs = int(record["block_size"])
        self._shift = self._bs.bit_length() - 1
        self._nb = int(record["num_blocks"])
        self._snapshots: list[dict[str, Any]] = [dict(s) for s in record["snapshots"]]
        origin = record.get("origin")
        self.origin: str | None = f"{origin['volume']}@{origin['snapshot']}" if origin else None
        self._journal = journal
        self._jmm = journal.mm
        self._jpay = journal.payload
        base = ctypes.c_char.from_buffer(journal.mm)
        self._jbase = ctypes.addressof(base)
        del base  # (holding it would keep the mapping from closing)
        self._free_slots = list(range(journal.slots - 1, -1, -1))
        self._lock = lock
        self._high = journal.high_seq
        self.last_shutdown = Shutdown.CLEAN
        self.closed = False
        self._gen = -1
        self._chain_cache: list[Layer] = []
        self._set_head(head)

    def _set_head(self, head: Layer) -> None:
        self._head = head
        self._fd = head.data_fd
        self._arr = head.arr
        self._granules = head.granules
        self._single = head.parent is None
        self._gen = -1

    def _chain(self) -> list[Layer]:
        if self._gen != self._pool.generation:
            chain = []
            layer: Layer | None = self._head
            while layer is not None:
                chain.append(layer)
                layer = layer.parent
            self._chain_cache = chain
            self._single = len(chain) == 1
            self._gen = self._pool.generation
        return self._chain_cache

    def _own_layers(self) -> list[Layer]:
        return [layer for layer in self._chain() if layer.owner == self.uuid]

    # -- state -------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return self._nb << self._shift

    @property
    def high_seq(self) -> int:
        return self._high

    @property
    def flushed_seq(self) -> int:
        """The high seq at the last completed flush: all writes completed before it
        are durable."""
        return self._journal.flushed_seq

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"volume {self.name!r} is closed")

    def _recover(self) -> None:
        """Repair after a crash: redo the operation in progress if the page cache
        survived (same boot), find the high seq, then finish interrupted deletes."""
        j = self._journal
        same_boot = j.boot == boot_id() and any(j.boot)
        if not j.clean:
            self.last_shutdown = Shutdown.PROCESS_CRASH if same_boot else Shutdown.SYSTEM_CRASH
        seq, op, lba, count = j.intent()
        if seq:
            valid = (
                0 < seq <= MAX_SEQ
                and op in (OP_WRITE, OP_UNMAP)
                and 0 <= lba
                and 0 < count
                and lba + count <= self._nb
                and (op == OP_UNMAP or count << self._shift <= PAYLOAD_MAX)
            )
            if same_boot and valid:
                if op == OP_WRITE:
                    payload = j.intent_payload(count << self._shift)
                    if payload is not None:
                        self.write(lba, payload, seq)
                else:
                    self.unmap(lba, count, seq)
            j.clear_intent()
        if self.last_shutdown is Shutdown.SYSTEM_CRASH:
            self._high = max(self._high, self._head.max_seq())
        try:
            self._head.sync()
            j.mark_open(self._high)
        except OSError as exc:
            raise os_error(exc, f"volume {self.name!r}: open") from None
        for snap in list(self._snapshots):
            if snap.get("deleting"):
                for _ in self._merge_out(snap):
                    pass

    # -- I/O ---------------------------------------------------------------------------

    def read(self, lba: int, count: int) -> bytes:
        if lba < 0 or count < 0 or lba + count > self._nb or self.closed:
            self._bad(lba, count)
        if self._single:
            shift = self._shift
            try:
                data = os.pread(self._fd, count << shift, lba << shift)
            except OSError as exc:
                raise os_error(exc, f"volume {self.name!r}: read of lba {lba}") from None
            if len(data) != count << shift:
                data += bytes((count << shift) - len(data))
            return data
        return self._read_chain(lba, count)

    def direct_reads(self) -> tuple[int, int] | None:
        """``(fd, shift)`` while every block reads from one file, block ``lba`` at byte
        ``lba << shift`` (a volume without snapshots); None otherwise.  Valid until the
        next snapshot, clone, rollback or close."""
        if self._single and not self.closed:
            return self._fd, self._shift
        return None

    def read_extents(self, lba: int, count: int) -> list[Extent]:
        if lba < 0 or count <= 0 or lba + count > self._nb or self.closed:
            if count == 0 and 0 <= lba <= self._nb and not self.closed:
                return []
            self._bad(lba, count)
        if self._single:
            return [Extent(self._fd, lba << self._shift, count << self._shift)]
        return self._extents_chain(lba, count)

    def write(self, lba: int, data: Buffer, seq: int) -> None:
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        nbytes = mv.nbytes
        shift = self._shift
        n = nbytes >> shift
        if (
            n << shift != nbytes
            or lba < 0
            or lba + n > self._nb
            or not 0 < seq <= MAX_SEQ
            or self.closed
        ):
            self._bad(lba, n, nbytes, seq)
        if nbytes > PAYLOAD_MAX:
            step = PAYLOAD_MAX >> shift
            for start in range(0, n, step):
                count = min(step, n - start)
                self.write(lba + start, mv[start << shift : (start + count) << shift], seq)
            return
        if n == 0:
            return
        granules = self._granules
        if not granules[lba >> GRANULE_SHIFT] or not granules[(lba + n - 1) >> GRANULE_SHIFT]:
            self._reserve_map(lba, n)
        jmm = self._jmm
        # 1. the payload and the intent (with the seq) into the journal: a write received
        #    into a lent payload area (``payload_buffer``) is there already,
        where = 0
        if mv.obj is jmm and not mv.readonly:
            where = ctypes.addressof(ctypes.c_char.from_buffer(mv)) - self._jbase
            if where < HEADER + PAYLOAD_MAX or where + nbytes > self._journal.size:
                where = 0  # not a lent area: copy
        if not where:
            self._jpay[:nbytes] = mv
        U64.pack_into(jmm, OFF_PAYLOAD, where)
        INTENT.pack_into(jmm, OFF_OP, OP_WRITE, lba, n)
        U64.pack_into(jmm, OFF_SEQ, seq)
        # 2. the data,
        try:
            done = os.pwrite(self._fd, mv, lba << shift)
            while done < nbytes:
                done += os.pwrite(self._fd, mv[done:], (lba << shift) + done)
        except OSError as exc:
            U64.pack_into(jmm, OFF_SEQ, 0)
            raise os_error(exc, f"volume {self.name!r}: write of {n} blocks at lba {lba}") from None
        # 3. the seq of every block, then the intent is done.
        self._arr[lba : lba + n].fill(seq)  # (fill is cheaper than slice assignment)
        U64.pack_into(jmm, OFF_SEQ, 0)
        if seq > self._high:
            self._high = seq
            U64.pack_into(jmm, OFF_HIGH, seq)

    def unmap(self, lba: int, count: int, seq: int) -> None:
        if lba < 0 or count < 0 or lba + count > self._nb or not 0 < seq <= MAX_SEQ or self.closed:
            self._bad(lba, count, seq=seq)
        if count == 0:
            return
        self._reserve_map(lba, count)
        jmm = self._jmm
        INTENT.pack_into(jmm, OFF_OP, OP_UNMAP, lba, count)
        U64.pack_into(jmm, OFF_SEQ, seq)
        shift = self._shift
        try:
            try:
                punch_hole(self._fd, lba << shift, count << shift)
            except PunchUnsupported:
                write_zeros(self._fd, lba << shift, count << shift)
        except OSError as exc:
            U64.pack_into(jmm, OFF_SEQ, 0)
            raise os_error(
                exc, f"volume {self.name!r}: unmap of {count} blocks at lba {lba}"
            ) from None
        self._head.store(lba, TOMBSTONE | seq, count)
        U64.pack_into(jmm, OFF_SEQ, 0)
        if seq > self._high:
            self._high = seq
            U64.pack_into(jmm, OFF_HIGH, seq)

    def payload_buffer(self, nbytes: int) -> tuple[int, memoryview] | None:
        """Lend a payload area of the journal to receive the data of a write of
        ``nbytes``: ``write`` then records where it is instead of copying it there.
        None when none is free or the write is too large; give it back with
        ``release_payload_buffer`` once the write is done (or abandoned)."""
        if nbytes > PAYLOAD_MAX or not self._free_slots or self.closed:
            return None
        slot = self._free_slots.pop()
        off = self._journal.slot_offset(slot)
        return slot, self._journal.view[off : off + nbytes]

    def release_payload_buffer(self, slot: int) -> None:
        self._free_slots.append(slot)

    def _reserve_map(self, lba: int, count: int) -> None:
        try:
            self._head.reserve_map(lba, count)
        except OSError as exc:
            raise os_error(exc, f"volume {self.name!r}: seq map at lba {lba}") from None

    def _bad(self, lba: int, count: int, nbytes: int | None = None, seq: int | None = None) -> None:
        self._check_open()
        if nbytes is not None and nbytes % self._bs:
            raise OutOfRangeError(
                f"volume {self.name!r}: write of {nbytes} bytes is not a whole number of "
                f"{self._bs}-byte blocks"
            )
        if seq is not None and not 0 < seq <= MAX_SEQ:
            raise OutOfRangeError(f"volume {self.name!r}: seq {seq} is outside 1..{MAX_SEQ}")
        self._check_range(lba, count)
        raise OutOfRangeError(f"volume {self.name!r}: bad request at lba {lba}")

    def flush(self) -> None:
        self._check_open()
        high = self._high
        head = self._head
        try:
            head.sync()
            self._journal.mark_flushed(high)
        except OSError as exc:
            raise os_error(exc, f"volume {self.name!r}: flush") from None
        if head.num_blocks * 8 > TRIM_MAP_BYTES:
            head.trim()

    def block_seqs(self, lba: int, count: int) -> list[int]:
        self._check_open()
        return super().block_seqs(lba, count)

    def lba_status(self, lba: int, max_count: int) -> LbaStatus:
        self._check_open()
        return super().lba_status(lba, max_count)

    # -- size --------------------------------------------------------------------------

    def resize(self, num_blocks: int) -> None:
        self._check_open()
        if num_blocks < self._nb:
            raise OutOfRangeError(
                f"volume {self.name!r}: cannot shrink from {self._nb} to {num_blocks} blocks "
                "(only growing is supported)"
            )
        if num_blocks == self._nb:
            return
        try:
            with self._pool._meta.locked() as meta:
                self._arr = _NO_ENTRIES  # our view of the old mapping must go first
                self._head.grow(num_blocks)
                self._set_head(self._head)
                meta["volumes"][self.name]["num_blocks"] = num_blocks
                self._pool._meta.save(meta)
        except OSError as exc:
            raise os_error(exc, f"volume {self.name!r}: resize to {num_blocks} blocks") from None
        self._nb = num_blocks

    def allocated_bytes(self) -> int:
        """Bytes of pool space the volume's own layers and journal occupy (blocks shared
        with the snapshot a clone came from are counted for that snapshot's volume).  The
        journal's lendable write buffers, held only while the volume is open, are not
        counted."""
        self._check_open()
        journal = os.fstat(self._journal.fd).st_blocks * 512
        total = max(0, journal - self._journal.lent_bytes)
        return total + sum(layer.allocated_bytes() for layer in self._own_layers())

    # -- snapshots ---------------------------------------------------------------------

    def _snapshot(self, name: str) -> dict[str, Any]:
        for snap in self._snapshots:
            if snap["name"] == name and not snap.get("deleting"):
                return snap
        raise NotFoundError(f"volume {self.name!r} has no snapshot {name!r}")

    def snapshot_create(self, name: str) -> SnapshotInfo:
        """Freeze the current contents as snapshot ``name``.  Takes the time of a
        flush plus a few small files, whatever the size of the volume."""
        self._check_open()
        _check_name("snapshot", name)
        if any(s["name"] == name for s in self._snapshots):
            raise ExistsError(f"volume {self.name!r} already has a snapshot {name!r}")
        self.flush()
        pool = self._pool
        layer_id = _new_id()
        layer_path = pool.path / LAYERS_DIR / layer_id
        try:
            with pool._meta.locked() as meta:
                record = meta["volumes"][self.name]
                created = time.time()
                Layer.create(layer_path, self._nb, self._bs)
                meta["layers"][layer_id] = {
                    "parent": self._head.id,
                    "owner": self.uuid,
                    "created": created,
                }
                snap = {
                    "name": name,
                    "layer": self._head.id,
                    "created": created,
                    "num_blocks": self._nb,
                    "high_seq": self._high,
                    "deleting": False,
                }
                record["snapshots"].append(snap)
                record["head"] = layer_id
                head = pool._open_layer(layer_id, meta, self._bs)
                # The commit point: before it the new layer is garbage, after it the
                # old head is the snapshot.
                pool._meta.save(meta)
        except BaseException as exc:
            opened = pool._layers.pop(layer_id, None)
            if opened is not None:
                opened.close()
            shutil.rmtree(layer_path, ignore_errors=True)
            if isinstance(exc, OSError):
                raise os_error(exc, f"volume {self.name!r}: snapshot {name!r}") from None
            raise
        self._snapshots.append(dict(snap))
        self._set_head(head)
        pool.generation += 1
        return self._info(self._snapshots[-1])

    def snapshot_list(self) -> list[SnapshotInfo]:
        self._check_open()
        return [self._info(s) for s in self._snapshots if not s.get("deleting")]

    def snapshot_open(self, name: str) -> EmbeddedSnapshot:
        self._check_open()
        return EmbeddedSnapshot(self, self._snapshot(name))

    def snapshot_delete(self, name: str) -> None:
        """Delete snapshot ``name`` and give its space back."""
        for _ in self.snapshot_delete_steps(name):
            pass

    def snapshot_delete_steps(self, name: str) -> Iterator[float]:
        """Start deleting snapshot ``name``; the returned iterator does the work in
        steps of bounded size, yielding the fraction done, so that an event loop can
        serve I/O between steps.  The checks happen now; once marked, the deletion is
        finished on the next open if the process stops before the iterator ends."""
        self._check_open()
        snap = self._snapshot(name)
        pool = self._pool
        with pool._meta.locked() as meta:
            record = meta["volumes"][self.name]
            clones = sorted(
                vname
                for vname, vrec in meta["volumes"].items()
                if vrec.get("origin") and vrec["origin"]["layer"] == snap["layer"]
            )
            if clones:
                raise BusyError(
                    f"snapshot {self.name}@{name} cannot be deleted: clone(s) "
                    f"{', '.join(repr(c) for c in clones)} depend on it; delete them first"
                )
            for s in record["snapshots"]:
                if s["name"] == name:
                    s["deleting"] = True
            pool._meta.save(meta)
        snap["deleting"] = True
        return self._merge_out(snap)

    def _merge_out(self, snap: dict[str, Any]) -> Iterator[float]:
        """Merge the snapshot's layer into the layer above it, then drop it."""
        pool = self._pool
        chain = self._chain()
        idx = next(i for i, layer in enumerate(chain) if layer.id == snap["layer"])
        lower, upper = chain[idx], chain[idx - 1]
        step = max(1024, MERGE_STEP_BYTES // self._bs)
        pos = 0
        end = min(lower.num_blocks, upper.num_blocks)
        try:
            while True:
                nxt = lower.next_data_entry(pos)
                if nxt is None or nxt >= end:
                    break
                if self.closed:
                    raise StoreError(f"volume {self.name!r} was closed during a snapshot delete")
                m = min(step, end - nxt)
                _merge_range(lower, upper, nxt, m)
                pos = nxt + m
                yield pos / end
            upper.sync()
        except OSError as exc:
            raise os_error(exc, f"snapshot {self.name}@{snap['name']}: delete") from None
        with pool._meta.locked() as meta:
            record = meta["volumes"][self.name]
            record["snapshots"] = [s for s in record["snapshots"] if s["name"] != snap["name"]]
            meta["layers"][upper.id]["parent"] = meta["layers"][lower.id]["parent"]
            del meta["layers"][lower.id]
            pool._meta.save(meta)
        upper.parent = lower.parent
        self._snapshots = [s for s in self._snapshots if s is not snap]
        pool.generation += 1
        self._chain()
        pool._drop_layer(lower)
        yield 1.0

    def _info(self, snap: dict[str, Any]) -> SnapshotInfo:
        chain = self._chain()
        idx = next(i for i, layer in enumerate(chain) if layer.id == snap["layer"])
        lower, upper = chain[idx], chain[idx - 1]
        unique = 0
        pos = 0
        end = min(lower.num_blocks, upper.num_blocks)
        while True:
            nxt = lower.next_data_entry(pos)
            if nxt is None or nxt >= end:
                break
            m = min(1 << 16, end - nxt)
            xs = lower.entries(nxt, m)
            cs = upper.entries(nxt, m)
            unique += int(np.count_nonzero((xs != 0) & (xs < _TOMB) & (cs != 0)))
            pos = nxt + m
        return SnapshotInfo(
            name=snap["name"],
            created=float(snap["created"]),
            num_blocks=int(snap["num_blocks"]),
            high_seq=int(snap["high_seq"]),
            used_bytes=lower.allocated_bytes(),
            unique_bytes=unique * self._bs,
        )

    # -- life --------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
            self._journal.mark_clean(self._high)
        finally:
            self.closed = True
            self._arr = _NO_ENTRIES
            self._chain_cache = []
            self._journal.close()
            self._lock.release()
            self._pool._volume_closed(self)

    def __enter__(self) -> EmbeddedVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EmbeddedVolume {self.name!r} {self._nb}x{self._bs}>"


class EmbeddedPool:
    """A directory of volumes.  Created if absent."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / LAYERS_DIR).mkdir(exist_ok=True)
        (self.path / VOLUMES_DIR).mkdir(exist_ok=True)
        self._meta = PoolMeta(self.path)
        self._layers: dict[str, Layer] = {}
        self._volumes: dict[str, EmbeddedVolume] = {}
        #: Bumped whenever a chain of layers changes, so cached chains are rebuilt.
        self.generation = 0
        with self._meta.locked() as meta:
            if not self._meta.path.exists():
                self._meta.save(meta)
            self._collect_garbage(meta)

    # -- helpers -----------------------------------------------------------------------

    def _volume_dir(self, vol_uuid: str) -> Path:
        return self.path / VOLUMES_DIR / vol_uuid

    def _open_layer(self, layer_id: str, meta: Meta, block_size: int) -> Layer:
        layer = self._layers.get(layer_id)
        if layer is not None:
            return layer
        rec = meta["layers"].get(layer_id)
        if rec is None:
            raise StoreError(f"pool {self.path}: layer {layer_id} is missing from the metadata")
        try:
            layer = Layer(layer_id, self.path / LAYERS_DIR / layer_id, block_size, rec["owner"])
        except FileNotFoundError:
            raise StoreError(f"pool {self.path}: files of layer {layer_id} are missing") from None
        self._layers[layer_id] = layer
        if rec["parent"] is not None:
            layer.parent = self._open_layer(rec["parent"], meta, block_size)
        return layer

    def _drop_layer(self, layer: Layer) -> None:
        """Close a layer that left the metadata and remove its files."""
        self._layers.pop(layer.id, None)
        layer.close()
        shutil.rmtree(layer.path, ignore_errors=True)
        fsync_dir(self.path / LAYERS_DIR)

    def _volume_closed(self, volume: EmbeddedVolume) -> None:
        if self._volumes.get(volume.name) is volume:
            del self._volumes[volume.name]
        self._release_layers()

    def _release_layers(self) -> None:
        needed: set[str] = set()
        for vol in self._volumes.values():
            layer: Layer | None = vol._head
            while layer is not None:
                needed.add(layer.id)
                layer = layer.parent
        for layer_id in [lid for lid in self._layers if lid not in needed]:
            self._layers.pop(layer_id).close()

    def _collect_garbage(self, meta: Meta) -> None:
        """Drop layers no volume or snapshot reaches, and files the metadata does not
        know (left by a crash between creating files and committing metadata)."""
        live: set[str] = set()
        for vrec in meta["volumes"].values():
            for layer_id in [vrec["head"], *(s["layer"] for s in vrec["snapshots"])]:
                lid: str | None = layer_id
                while lid is not None and lid not in live:
                    live.add(lid)
                    lid = meta["layers"][lid]["parent"]
        dead = [lid for lid in meta["layers"] if lid not in live]
        if dead:
            for lid in dead:
                del meta["layers"][lid]
            self._meta.save(meta)
        removed = False
        for entry in (self.path / LAYERS_DIR).iterdir():
            if entry.name not in meta["layers"]:
                shutil.rmtree(entry, ignore_errors=True)
                removed = True
        uuids = {vrec["uuid"] for vrec in meta["volumes"].values()}
        for entry in (self.path / VOLUMES_DIR).iterdir():
            if entry.name not in uuids:
                shutil.rmtree(entry, ignore_errors=True)
                removed = True
        if removed:
            fsync_dir(self.path / LAYERS_DIR)
            fsync_dir(self.path / VOLUMES_DIR)

    def _new_volume_record(
        self, meta: Meta, name: str, vol_uuid: str | None, block_size: int, num_blocks: int
    ) -> dict[str, Any]:
        _check_name("volume", name)
        if name in meta["volumes"]:
            raise ExistsError(f"pool {self.path}: volume {name!r} exists already")
        if vol_uuid is None:
            vol_uuid = str(uuidlib.uuid4())
        else:
            try:
                vol_uuid = str(uuidlib.UUID(str(vol_uuid)))
            except ValueError:
                raise StoreError(f"volume {name!r}: {vol_uuid!r} is not a UUID") from None
        if any(v["uuid"] == vol_uuid for v in meta["volumes"].values()):
            raise ExistsError(f"pool {self.path}: a volume with UUID {vol_uuid} exists already")
        return {
            "uuid": vol_uuid,
            "block_size": block_size,
            "num_blocks": num_blocks,
            "created": time.time(),
            "origin": None,
            "snapshots": [],
        }

    def _create(
        self,
        meta: Meta,
        name: str,
        record: dict[str, Any],
        parent: str | None,
        high_seq: int,
    ) -> None:
        """Make the files of a new volume and commit its record (pool lock held)."""
        layer_id = _new_id()
        layer_path = self.path / LAYERS_DIR / layer_id
        vol_dir = self._volume_dir(record["uuid"])
        try:
            Layer.create(layer_path, record["num_blocks"], record["block_size"])
            vol_dir.mkdir()
            Journal.create(vol_dir / JOURNAL_FILE, high_seq)
            fsync_dir(vol_dir.parent)
            record["head"] = layer_id
            meta["layers"][layer_id] = {
                "parent": parent,
                "owner": record["uuid"],
                "created": record["created"],
            }
            meta["volumes"][name] = record
            self._meta.save(meta)
        except BaseException as exc:
            shutil.rmtree(layer_path, ignore_errors=True)
            shutil.rmtree(vol_dir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise os_error(exc, f"volume {name!r}: create") from None
            raise

    # -- public API ----------------------------------------------------------------------

    def create_volume(
        self,
        name: str,
        size_bytes: int,
        block_size: int = 512,
        uuid: str | None = None,
    ) -> EmbeddedVolume:
        """Create an empty thin volume of ``size_bytes`` and open it."""
        if block_size not in BLOCK_SIZES:
            raise StoreError(f"volume {name!r}: block size must be 512 or 4096, not {block_size}")
        if size_bytes <= 0 or size_bytes % block_size:
            raise StoreError(
                f"volume {name!r}: size {size_bytes} is not a positive multiple of the "
                f"block size {block_size}"
            )
        with self._meta.locked() as meta:
            record = self._new_volume_record(meta, name, uuid, block_size, size_bytes // block_size)
            self._create(meta, name, record, None, 0)
            return self.open_volume(name)

    def open_volume(self, name: str) -> EmbeddedVolume:
        """Open an existing volume (one opener at a time, in any process)."""
        with self._meta.locked() as meta:
            record = meta["volumes"].get(name)
            if record is None:
                raise NotFoundError(f"pool {self.path}: no volume {name!r}")
            vol_dir = self._volume_dir(record["uuid"])
            lock = VolumeLock(vol_dir / LOCK_FILE, name)
            journal: Journal | None = None
            try:
                head = self._open_layer(record["head"], meta, record["block_size"])
                journal = Journal(vol_dir / JOURNAL_FILE)
                volume = EmbeddedVolume(self, name, record, head, journal, lock)
            except BaseException as exc:
                if journal is not None:
                    journal.close()
                lock.release()
                self._release_layers()
                if isinstance(exc, OSError):
                    raise os_error(exc, f"volume {name!r}: open") from None
                raise
            self._volumes[name] = volume
        try:
            volume._recover()
        except BaseException:
            volume.closed = True
            volume._arr = _NO_ENTRIES
            volume._chain_cache = []
            volume._journal.close()
            lock.release()
            self._volume_closed(volume)
            raise
        return volume

    def open_or_create(self, name: str, size_bytes: int, block_size: int = 512) -> EmbeddedVolume:
        """Open volume ``name``, creating it if absent.  An existing volume must have
        the same block size and at most ``size_bytes``; a smaller one is grown."""
        with self._meta.locked() as meta:
            record = meta["volumes"].get(name)
            if record is None:
                return self.create_volume(name, size_bytes, block_size)
            return reopen_grown(
                self, name, size_bytes, block_size, record["block_size"], record["num_blocks"]
            )

    def list_volumes(self) -> list[VolumeInfo]:
        meta = self._meta.load()
        infos = []
        for name, rec in sorted(meta["volumes"].items()):
            origin = rec.get("origin")
            infos.append(
                VolumeInfo(
                    name=name,
                    uuid=rec["uuid"],
                    block_size=rec["block_size"],
                    num_blocks=rec["num_blocks"],
                    created=rec["created"],
                    origin=f"{origin['volume']}@{origin['snapshot']}" if origin else None,
                    snapshots=tuple(s["name"] for s in rec["snapshots"] if not s["deleting"]),
                )
            )
        return infos

    def delete_volume(self, name: str, force: bool = False) -> None:
        """Delete a closed volume and its snapshots.  Refused while clones depend on its
        snapshots, unless ``force``: then the layers those clones need stay (owned by no
        volume) until the last clone is deleted; clones are never deleted implicitly."""
        with self._meta.locked() as meta:
            record = meta["volumes"].get(name)
            if record is None:
                raise NotFoundError(f"pool {self.path}: no volume {name!r}")
            own_snapshot_layers = {s["layer"] for s in record["snapshots"]}
            clones = sorted(
                vname
                for vname, vrec in meta["volumes"].items()
                if vrec.get("origin") and vrec["origin"]["layer"] in own_snapshot_layers
            )
            if clones and not force:
                raise BusyError(
                    f"volume {name!r} cannot be deleted: clone(s) "
                    f"{', '.join(repr(c) for c in clones)} depend on its snapshots; delete "
                    "them first or force"
                )
            lock = VolumeLock(self._volume_dir(record["uuid"]) / LOCK_FILE, name)
            try:
                del meta["volumes"][name]
                for lrec in meta["layers"].values():
                    if lrec["owner"] == record["uuid"]:
                        lrec["owner"] = None
                for vrec in meta["volumes"].values():
                    origin = vrec.get("origin")
                    if origin and origin["layer"] in own_snapshot_layers:
                        origin["deleted"] = True
                self._meta.save(meta)
            finally:
                lock.release()
            self._collect_garbage(meta)

    def clone(
        self, volume_name: str, snapshot_name: str, new_name: str, uuid: str | None = None
    ) -> EmbeddedVolume:
        """Create volume ``new_name`` from a snapshot, instantly, and open it.  It shares
        the snapshot's blocks and is writable; the snapshot cannot be deleted while it
        exists."""
        with self._meta.locked() as meta:
            src = meta["volumes"].get(volume_name)
            if src is None:
                raise NotFoundError(f"pool {self.path}: no volume {volume_name!r}")
            snap = next(
                (s for s in src["snapshots"] if s["name"] == snapshot_name and not s["deleting"]),
                None,
            )
            if snap is None:
                raise NotFoundError(f"volume {volume_name!r} has no snapshot {snapshot_name!r}")
            record = self._new_volume_record(
                meta, new_name, uuid, src["block_size"], snap["num_blocks"]
            )
            record["origin"] = {
                "volume": volume_name,
                "snapshot": snapshot_name,
                "layer": snap["layer"],
            }
            self._create(meta, new_name, record, snap["layer"], snap["high_seq"])
            return self.open_volume(new_name)

    def close(self) -> None:
        """Close every volume opened through this pool object."""
        for volume in list(self._volumes.values()):
            volume.close()
        self._meta.close()

    def __enter__(self) -> EmbeddedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "BLOCK_SIZES",
    "EmbeddedPool",
    "EmbeddedSnapshot",
    "EmbeddedVolume",
    "Shutdown",
    "SnapshotInfo",
    "VolumeInfo",
]


def reopen_grown(
    pool: Any, name: str, size_bytes: int, block_size: int, have_bs: int, have_blocks: int
) -> Any:
    """``open_or_create`` of a volume that exists (``have_bs``, ``have_blocks``): the
    block size must match and the size may only grow, which it does here."""
    if have_bs != block_size:
        raise StoreError(f"volume {name!r} exists with block size {have_bs}, not {block_size}")
    if size_bytes % block_size:
        raise StoreError(f"volume {name!r}: size {size_bytes} is not a multiple of {block_size}")
    current = have_blocks * block_size
    if size_bytes < current:
        raise StoreError(
            f"volume {name!r} exists with {current} bytes; shrinking it to "
            f"{size_bytes} bytes is not supported"
        )
    volume = pool.open_volume(name)
    if size_bytes > current:
        try:
            volume.resize(size_bytes // block_size)
        except BaseException:
            volume.close()
            raise
    return volume
