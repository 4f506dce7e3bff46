"""The contracts between the layers of the engine.

``BlockDevice`` is what the SCSI layer serves: a numbered array of blocks, with no
notion of sequence numbers or replicas.  ``ReplicaStore`` is one replica of a volume on
disk: the same blocks, each tagged with the sequence number of the write that last
touched it.  ``cairn.volume.LocalVolume`` turns a store into a block device by handing
out sequence numbers; the replication layer will do the same over several stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class Extent:
    """A piece of a read result: ``length`` bytes at ``offset`` of file ``fd``.

    ``fd is None`` means the bytes are zeros (a hole).  Extents let the network layer
    send read payloads with ``os.sendfile`` instead of copying them through Python.
    Not frozen: one is made per read, and a frozen dataclass is slow to construct.
    """

    fd: int | None
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class LbaStatus:
    """One run of blocks starting at ``lba`` that are all mapped or all deallocated."""

    lba: int
    count: int
    deallocated: bool


class StoreError(Exception):
    """A store could not do what it was asked; the message says why."""


class NoSpaceError(StoreError):
    """The backing storage is full (ENOSPC)."""


class MediumError(StoreError):
    """The backing storage returned an I/O error (EIO) for the given range."""


@runtime_checkable
class BlockDevice(Protocol):
    """What a SCSI logical unit reads and writes.  All offsets are in blocks."""

    @property
    def block_size(self) -> int: ...

    @property
    def num_blocks(self) -> int: ...

    def read(self, lba: int, count: int) -> bytes:
        """Return ``count * block_size`` bytes; deallocated blocks read as zeros."""
        ...

    def read_extents(self, lba: int, count: int) -> list[Extent]:
        """The same bytes as ``read`` as extents of files (zero copy); lengths sum to
        ``count * block_size``.  Extents are valid until the next write or unmap."""
        ...

    def write(self, lba: int, data: Buffer, fua: bool = False) -> None:
        """Write whole blocks; with ``fua`` the data is durable when this returns."""
        ...

    def unmap(self, lba: int, count: int) -> None:
        """Deallocate blocks: they read as zeros and give their space back."""
        ...

    def flush(self) -> None:
        """Make every completed write durable (SYNCHRONIZE CACHE)."""
        ...

    def lba_status(self, lba: int, max_count: int) -> LbaStatus:
        """The run of blocks starting at ``lba`` (at most ``max_count``) that share
        one provisioning state."""
        ...


class ReplicaStore(Protocol):
    """One replica of a volume: blocks plus the sequence number of their last write."""

    @property
    def block_size(self) -> int: ...

    @property
    def num_blocks(self) -> int: ...

    def read(self, lba: int, count: int) -> bytes: ...

    def read_extents(self, lba: int, count: int) -> list[Extent]: ...

    def write(self, lba: int, data: Buffer, seq: int) -> None: ...

    def unmap(self, lba: int, count: int, seq: int) -> None: ...

    def flush(self) -> None: ...

    def lba_status(self, lba: int, max_count: int) -> LbaStatus: ...

    def block_seqs(self, lba: int, count: int) -> list[int]:
        """Sequence number of the last write or unmap of each block (0: never)."""
        ...

    @property
    def high_seq(self) -> int:
        """The highest sequence number this store has ever recorded (0 when new)."""
        ...

    def resize(self, num_blocks: int) -> None:
        """Grow to ``num_blocks``; shrinking raises ``StoreError``."""
        ...

    def close(self) -> None: ...
