"""The contracts between the layers of the engine.

``BlockDevice`` is what the SCSI layer serves: a numbered array of blocks, with no
notion of sequence numbers or replicas.  ``ReplicaStore`` is one replica of a volume on
disk: the same blocks, each tagged with the sequence number of the write that last
touched it.  ``cairn.volume.LocalVolume`` turns a store into a block device by handing
out sequence numbers; the replication layer will do the same over several stores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


class ReadRun:
    """The Data-In PDUs of consecutive reads of one file, as the iSCSI layer's fast lane
    queues them: ``headers[i]`` followed by ``lengths[i]`` bytes of the file, the pieces
    back to back from ``offset``.  The network side reads the whole run with one
    ``pread`` and sends it with one ``writev`` (``iov``)."""

    __slots__ = ("fd", "offset", "total", "headers", "lengths")

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.total = 0  # bytes of the file
        self.headers: list[bytes] = []
        self.lengths: list[int] = []

    def add(self, header: bytes, length: int) -> None:
        self.headers.append(header)
        self.lengths.append(length)
        self.total += length

    def __len__(self) -> int:
        """Bytes on the wire: headers and data."""
        return self.total + 48 * len(self.headers)

    def iov(self, data: memoryview) -> list[Any]:
        """Headers and slices of ``data`` (the run's ``total`` bytes), in sending order."""
        out: list[Any] = []
        pos = 0
        for header, length in zip(self.headers, self.lengths, strict=True):
            out.append(header)
            out.append(data[pos : pos + length])
            pos += length
        return out


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


class QuorumError(StoreError):
    """Too few healthy replicas to do this now (writes: fewer than the consistency
    factor; reads: none); the message says which replicas are missing and why."""


class Pending:
    """The outcome of a device operation that finishes later: a replicated write is
    done when enough replicas said so, a replicated read when one sent the data.

    Sans-IO: whoever learns the outcome calls ``resolve`` or ``fail``, and the
    callbacks run right then, in that caller.  Devices that finish everything before
    returning never hand one out (``asynchronous`` is false on them).
    """

    __slots__ = ("done", "value", "error", "_callbacks")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: Exception | None = None
        self._callbacks: list[Callable[[Pending], None]] = []

    @classmethod
    def resolved(cls, value: Any = None) -> Pending:
        p = cls()
        p.done = True
        p.value = value
        return p

    def resolve(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self.value = value
            self._run()

    def fail(self, error: Exception) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self._run()

    def _run(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def add_done_callback(self, fn: Callable[[Pending], None]) -> None:
        if self.done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def then(self, fn: Callable[[Any], Any]) -> Pending:
        """A Pending for ``fn(value)`` once this one succeeded (``fn`` may return
        another Pending, which is waited for); an error skips ``fn`` and is passed on,
        and so is an exception that ``fn`` raises."""
        out = Pending()

        def settle(q: Pending) -> None:
            if q.error is not None:
                out.fail(q.error)
            else:
                out.resolve(q.value)

        def step(p: Pending) -> None:
            if p.error is not None:
                out.fail(p.error)
                return
            try:
                value = fn(p.value)
            except Exception as exc:
                out.fail(exc)
                return
            if isinstance(value, Pending):
                value.add_done_callback(settle)
            else:
                out.resolve(value)

        self.add_done_callback(step)
        return out

    @classmethod
    def gather(cls, items: list[Pending]) -> Pending:
        """Done when all of ``items`` are; fails with the first error among them."""
        out = cls()
        left = len(items)
        if not left:
            out.resolve()
            return out
        errors: list[Exception] = []

        def one(p: Pending) -> None:
            nonlocal left
            left -= 1
            if p.error is not None:
                errors.append(p.error)
            if left == 0:
                if errors:
                    out.fail(errors[0])
                else:
                    out.resolve()

        for p in items:
            p.add_done_callback(one)
        return out


@runtime_checkable
class BlockDevice(Protocol):
    """What a SCSI logical unit reads and writes.  All offsets are in blocks.

    A device with a true ``asynchronous`` attribute (the replicated volume) may return
    a ``Pending`` from ``read``, ``read_extents`` (its value: the bytes), ``write``,
    ``unmap``, ``flush`` and ``lba_status`` instead of finishing before it returns; it
    keeps its own copy of written data.  Other devices never do.
    """

    @property
    def block_size(self) -> int: ...

    @property
    def num_blocks(self) -> int: ...

    def read(self, lba: int, count: int) -> bytes | Pending:
        """Return ``count * block_size`` bytes; deallocated blocks read as zeros."""
        ...

    def read_extents(self, lba: int, count: int) -> list[Extent] | Pending:
        """The same bytes as ``read`` as extents of files (zero copy); lengths sum to
        ``count * block_size``.  Extents are valid until the next write or unmap."""
        ...

    def write(self, lba: int, data: Buffer, fua: bool = False) -> Pending | None:
        """Write whole blocks; with ``fua`` the data is durable when this returns."""
        ...

    def unmap(self, lba: int, count: int) -> Pending | None:
        """Deallocate blocks: they read as zeros and give their space back."""
        ...

    def flush(self) -> Pending | None:
        """Make every completed write durable (SYNCHRONIZE CACHE)."""
        ...

    def lba_status(self, lba: int, max_count: int) -> LbaStatus | Pending:
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
