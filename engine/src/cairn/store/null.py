"""A store that keeps nothing: for benchmarking the layers above the store."""

from __future__ import annotations

from cairn.blockdev import Buffer, Extent, LbaStatus
from cairn.store.errors import OutOfRangeError


class NullStore:
    """Writes are discarded, reads return zeros (``read_extents`` gives holes)."""

    def __init__(self, size_bytes: int, block_size: int = 512) -> None:
        if block_size not in (512, 4096) or size_bytes <= 0 or size_bytes % block_size:
            raise OutOfRangeError(
                f"null store: size {size_bytes} must be a positive multiple of the block "
                f"size, which must be 512 or 4096 (got {block_size})"
            )
        self._bs = block_size
        self._nb = size_bytes // block_size
        self._high = 0

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def num_blocks(self) -> int:
        return self._nb

    @property
    def high_seq(self) -> int:
        return self._high

    def _check(self, lba: int, count: int) -> None:
        if lba < 0 or count < 0 or lba + count > self._nb:
            raise OutOfRangeError(
                f"null store: blocks {lba}..{lba + count - 1} are outside 0..{self._nb - 1}"
            )

    def read(self, lba: int, count: int) -> bytes:
        self._check(lba, count)
        return bytes(count * self._bs)

    def read_extents(self, lba: int, count: int) -> list[Extent]:
        self._check(lba, count)
        return [Extent(None, 0, count * self._bs)] if count else []

    def write(self, lba: int, data: Buffer, seq: int) -> None:
        nbytes = memoryview(data).nbytes
        if nbytes % self._bs:
            raise OutOfRangeError(f"null store: {nbytes} bytes is not a whole number of blocks")
        self._check(lba, nbytes // self._bs)
        if seq > self._high:
            self._high = seq

    def unmap(self, lba: int, count: int, seq: int) -> None:
        self._check(lba, count)
        if seq > self._high:
            self._high = seq

    def flush(self) -> None:
        pass

    def lba_status(self, lba: int, max_count: int) -> LbaStatus:
        self._check(lba, 1)
        return LbaStatus(lba, max(0, min(max_count, self._nb - lba)), True)

    def block_seqs(self, lba: int, count: int) -> list[int]:
        self._check(lba, count)
        return [0] * count

    def resize(self, num_blocks: int) -> None:
        if num_blocks < self._nb:
            raise OutOfRangeError(
                f"null store: cannot shrink from {self._nb} to {num_blocks} blocks"
            )
        self._nb = num_blocks

    def close(self) -> None:
        pass
