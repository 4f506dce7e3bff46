"""A block device over one replica store, and the sequence numbers it hands out.

``LocalVolume`` serves a volume with a single replica: every write and unmap gets the
next sequence number from a ``SeqSource`` and goes to the store.  ``SeqAllocator`` is the
persisted source: a restarted process resumes above every number it ever handed out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

from cairn.blockdev import Buffer, Extent, LbaStatus, ReplicaStore, StoreError
from cairn.store._fs import atomic_write_json

MAX_SEQ = (1 << 63) - 1
DEFAULT_BATCH = 1 << 20
_FORMAT = 1


class SeqSource(Protocol):
    def next(self) -> int:
        """A number larger than every number returned before."""
        ...


class MemorySeqSource:
    """Sequence numbers kept only in memory: for stores that keep nothing (benchmarks)."""

    def __init__(self, floor: int = 0) -> None:
        self._last = floor

    def next(self) -> int:
        self._last += 1
        return self._last


class SeqAllocator:
    """Sequence numbers that keep increasing across restarts, even after SIGKILL or a
    power loss.

    The file at ``path`` says "numbers up to X may have been handed out".  Before
    handing out a number above X the allocator moves X up by ``batch`` and makes the
    file durable (write temporary, fsync, rename, fsync directory), so one fsync covers
    ``batch`` numbers.  On open it starts at ``max(X, floor) + 1``; pass the store's
    ``high_seq`` as ``floor`` so that a lost or older file can never make numbers go back.
    """

    def __init__(self, path: str | os.PathLike[str], floor: int = 0, batch: int = DEFAULT_BATCH):
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.path = Path(path)
        self._batch = batch
        self._reserved = self._load()
        self._next = max(self._reserved, floor) + 1

    def _load(self) -> int:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the sequence reservation: {exc}") from None
        try:
            doc = json.loads(text)
            reserved = doc["reserved"]
            if doc.get("format") != _FORMAT or not isinstance(reserved, int) or reserved < 0:
                raise ValueError("bad fields")
        except (ValueError, KeyError, TypeError) as exc:
            # Never guess: a wrong guess could hand out a number twice.
            raise StoreError(
                f"{self.path}: sequence reservation file is damaged ({exc}); restore it or "
                "remove it and pass the highest sequence number in use as the floor"
            ) from None
        return reserved

    @property
    def last(self) -> int:
        """The highest number handed out so far by this object (or the floor)."""
        return self._next - 1

    @property
    def reserved(self) -> int:
        """The durable reservation: no number above it has been handed out."""
        return self._reserved

    def advance(self, floor: int) -> None:
        """Hand out only numbers above ``floor`` from now on (a replica reported it)."""
        self._next = max(self._next, floor + 1)

    def next(self) -> int:
        seq = self._next
        if seq > self._reserved:
            self._reserve(seq)
        self._next = seq + 1
        return seq

    def _reserve(self, seq: int) -> None:
        upto = min(seq + self._batch - 1, MAX_SEQ)
        if seq > MAX_SEQ:
            raise StoreError(f"{self.path}: sequence numbers exhausted")
        try:
            atomic_write_json(self.path, {"format": _FORMAT, "reserved": upto})
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot persist the sequence reservation: {exc}"
            ) from None
        self._reserved = upto

    def close(self) -> None:
        pass


class LocalVolume:
    """``BlockDevice`` over one ``ReplicaStore``: each write and unmap is stamped with
    the next number of ``seq_source``."""

    def __init__(self, store: ReplicaStore, seq_source: SeqSource) -> None:
        self._store = store
        self._seqs = seq_source
        self._last = store.high_seq
        # reads go straight to the store (the method below documents the contract)
        self.read_extents = store.read_extents  # type: ignore[method-assign]

    @classmethod
    def open(
        cls, store: ReplicaStore, seq_path: str | os.PathLike[str], batch: int = DEFAULT_BATCH
    ) -> LocalVolume:
        """A volume whose numbers come from a ``SeqAllocator`` persisted at ``seq_path``."""
        return cls(store, SeqAllocator(seq_path, floor=store.high_seq, batch=batch))

    @property
    def store(self) -> ReplicaStore:
        return self._store

    @property
    def block_size(self) -> int:
        return self._store.block_size

    @property
    def num_blocks(self) -> int:
        return self._store.num_blocks

    def _next_seq(self) -> int:
        seq = self._seqs.next()
        if seq <= self._last:
            raise StoreError(
                f"sequence source returned {seq}, not above {self._last}; refusing to write"
            )
        self._last = seq
        return seq

    def read(self, lba: int, count: int) -> bytes:
        return self._store.read(lba, count)

    def read_extents(self, lba: int, count: int) -> list[Extent]:
        return self._store.read_extents(lba, count)

    def direct_reads(self) -> tuple[int, int] | None:
        """``(fd, shift)`` when reads may go straight to one file of the store (see
        ``EmbeddedVolume.direct_reads``); None when the store has no such file."""
        direct = getattr(self._store, "direct_reads", None)
        return direct() if direct is not None else None

    def write(self, lba: int, data: Buffer, fua: bool = False) -> None:
        if len(data) == 0:
            return
        self._store.write(lba, data, self._next_seq())
        if fua:
            self._store.flush()

    def unmap(self, lba: int, count: int) -> None:
        if count == 0:
            return
        self._store.unmap(lba, count, self._next_seq())

    def payload_buffer(self, nbytes: int) -> tuple[int, memoryview] | None:
        """A buffer to receive the data of a write into, lent by the store so that the
        write needs no copy (None: use your own)."""
        lend = getattr(self._store, "payload_buffer", None)
        return lend(nbytes) if lend is not None else None

    def release_payload_buffer(self, slot: int) -> None:
        self._store.release_payload_buffer(slot)  # type: ignore[attr-defined]

    def flush(self) -> None:
        self._store.flush()

    def lba_status(self, lba: int, max_count: int) -> LbaStatus:
        return self._store.lba_status(lba, max_count)

    def resize(self, num_blocks: int) -> None:
        self._store.resize(num_blocks)

    def close(self) -> None:
        close = getattr(self._seqs, "close", None)
        if close is not None:
            close()
        self._store.close()
