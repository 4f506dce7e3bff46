"""Conformance: the ReplicaStore data path (read, write, unmap, seqs, status, size)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from cairn.blockdev import Extent, LbaStatus, StoreError

from .conftest import Harness

MiB = 1 << 20


def pattern(seq: int, lba: int, count: int, bs: int) -> bytes:
    """Distinct, recognisable contents for each (seq, block)."""
    return b"".join(
        (seq.to_bytes(8, "little") + (lba + i).to_bytes(8, "little")) * (bs // 16)
        for i in range(count)
    )


def read_via_extents(store: Any, lba: int, count: int) -> bytes:
    """Reassemble what ``read_extents`` describes, as the network layer would."""
    out = []
    for ext in store.read_extents(lba, count):
        assert isinstance(ext, Extent)
        if ext.fd is None:
            out.append(bytes(ext.length))
        else:
            data = os.pread(ext.fd, ext.length, ext.offset)
            out.append(data + bytes(ext.length - len(data)))
    return b"".join(out)


@pytest.mark.parametrize("bs", [512, 4096])
def test_new_volume_reads_zeros(store_factory: Callable[..., Any], bs: int) -> None:
    vol = store_factory(1 * MiB, bs)
    assert vol.block_size == bs
    assert vol.num_blocks == MiB // bs
    assert vol.read(0, vol.num_blocks) == bytes(MiB)
    assert read_via_extents(vol, 0, vol.num_blocks) == bytes(MiB)
    assert vol.block_seqs(0, 4) == [0, 0, 0, 0]
    assert vol.high_seq == 0
    assert vol.lba_status(0, vol.num_blocks) == LbaStatus(0, vol.num_blocks, True)


@pytest.mark.parametrize("bs", [512, 4096])
def test_read_after_write_various_offsets(store_factory: Callable[..., Any], bs: int) -> None:
    vol = store_factory(16 * MiB, bs)
    nb = vol.num_blocks
    cases = [(0, 1), (1, 7), (nb - 1, 1), (100, 300), (nb - 300, 300), (5, 2048 + 17)]
    model = bytearray(nb * bs)
    for seq, (lba, count) in enumerate(cases, start=1):
        data = pattern(seq, lba, count, bs)
        vol.write(lba, data, seq)
        model[lba * bs : (lba + count) * bs] = data
        assert vol.read(lba, count) == data
    assert vol.read(0, nb) == bytes(model)
    assert read_via_extents(vol, 0, nb) == bytes(model)
    assert vol.high_seq == len(cases)


def test_write_accepts_buffer_types(store_factory: Callable[..., Any]) -> None:
    vol = store_factory(1 * MiB, 512)
    src = bytearray(b"\x11" * 2048)
    vol.write(0, bytes(src[:512]), 1)
    vol.write(1, src[:512], 2)
    vol.write(2, memoryview(src)[512:1536], 3)
    assert vol.read(0, 4) == b"\x11" * 2048
    assert vol.block_seqs(0, 4) == [1, 2, 3, 3]


def test_unmap_reads_zeros_and_records_seq(store_factory: Callable[..., Any]) -> None:
    vol = store_factory(1 * MiB, 512)
    vol.write(0, pattern(1, 0, 32, 512), 1)
    vol.unmap(8, 8, 2)
    assert vol.read(8, 8) == bytes(8 * 512)
    assert read_via_extents(vol, 0, 32)[8 * 512 : 16 * 512] == bytes(8 * 512)
    assert vol.read(0, 8) == pattern(1, 0, 8, 512)
    assert vol.read(16, 16) == pattern(1, 16, 16, 512)
    assert vol.block_seqs(6, 12) == [1, 1] + [2] * 8 + [1, 1]
    # unmap of blocks never written still records the seq
    vol.unmap(100, 2, 3)
    assert vol.block_seqs(99, 4) == [0, 3, 3, 0]
    assert vol.high_seq == 3
    # a write after an unmap maps the block again
    vol.write(9, pattern(4, 9, 1, 512), 4)
    assert vol.read(8, 3) == bytes(512) + pattern(4, 9, 1, 512) + bytes(512)


def test_lba_status_runs(store_factory: Callable[..., Any]) -> None:
    vol = store_factory(1 * MiB, 512)
    nb = vol.num_blocks
    vol.write(10, pattern(1, 10, 10, 512), 1)
    vol.unmap(15, 2, 2)
    assert vol.lba_status(0, nb) == LbaStatus(0, 10, True)
    assert vol.lba_status(10, nb) == LbaStatus(10, 5, False)
    assert vol.lba_status(15, nb) == LbaStatus(15, 2, True)
    assert vol.lba_status(17, nb) == LbaStatus(17, 3, False)
    assert vol.lba_status(20, nb) == LbaStatus(20, nb - 20, True)
    assert vol.lba_status(0, 4) == LbaStatus(0, 4, True)
    assert vol.lba_status(11, 2) == LbaStatus(11, 2, False)


def test_seqs_keep_last_writer(store_factory: Callable[..., Any]) -> None:
    vol = store_factory(1 * MiB, 4096)
    vol.write(0, pattern(5, 0, 4, 4096), 5)
    vol.write(1, pattern(9, 1, 2, 4096), 9)
    vol.unmap(2, 1, 12)
    assert vol.block_seqs(0, 5) == [5, 9, 12, 5, 0]
    assert vol.high_seq == 12
    # an older seq (as rebuild may write) is recorded as given; high_seq stays
    vol.write(4, pattern(3, 4, 1, 4096), 3)
    assert vol.block_seqs(4, 1) == [3]
    assert vol.high_seq == 12


def test_persistence_across_reopen(harness: Harness) -> None:
    vol = harness.create(2 * MiB, 512)
    vol.write(3, pattern(1, 3, 100, 512), 1)
    vol.unmap(50, 10, 2)
    vol.flush()
    expected = vol.read(0, vol.num_blocks)
    uuid = vol.uuid
    vol = harness.reopen(vol)
    assert vol.uuid == uuid
    assert vol.read(0, vol.num_blocks) == expected
    assert vol.block_seqs(49, 12) == [1] + [2] * 10 + [1]
    assert vol.high_seq == 2
    assert vol.lba_status(50, 100) == LbaStatus(50, 10, True)


def test_flush_is_callable_any_time(store_factory: Callable[..., Any]) -> None:
    vol = store_factory(1 * MiB, 512)
    vol.flush()
    vol.write(0, pattern(1, 0, 1, 512), 1)
    vol.flush()
    vol.flush()
    assert vol.read(0, 1) == pattern(1, 0, 1, 512)


def test_resize_grow_and_refuse_shrink(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 512)
    vol.write(2047, pattern(1, 2047, 1, 512), 1)
    vol.resize(4096)
    assert vol.num_blocks == 4096
    assert vol.read(2047, 2) == pattern(1, 2047, 1, 512) + bytes(512)
    vol.write(4095, pattern(2, 4095, 1, 512), 2)
    with pytest.raises(StoreError, match="shrink"):
        vol.resize(4000)
    vol.resize(4096)  # same size: nothing to do
    vol = harness.reopen(vol)
    assert vol.num_blocks == 4096
    assert vol.read(4095, 1) == pattern(2, 4095, 1, 512)


@pytest.mark.parametrize(
    "call",
    [
        lambda v: v.read(v.num_blocks, 1),
        lambda v: v.read(-1, 1),
        lambda v: v.read(v.num_blocks - 1, 2),
        lambda v: v.read_extents(v.num_blocks - 1, 2),
        lambda v: v.write(v.num_blocks, bytes(512), 1),
        lambda v: v.write(0, bytes(100), 1),
        lambda v: v.write(0, bytes(512), 0),
        lambda v: v.unmap(v.num_blocks - 1, 2, 1),
        lambda v: v.block_seqs(v.num_blocks, 1),
        lambda v: v.lba_status(v.num_blocks, 1),
    ],
)
def test_bad_requests_raise_store_error_and_harm_nothing(
    store_factory: Callable[..., Any], call: Callable[[Any], object]
) -> None:
    vol = store_factory(1 * MiB, 512)
    vol.write(0, pattern(1, 0, 4, 512), 1)
    with pytest.raises(StoreError):
        call(vol)
    assert vol.read(0, 4) == pattern(1, 0, 4, 512)
    assert vol.high_seq == 1


def test_zero_length_requests(store_factory: Callable[..., Any]) -> None:
    vol = store_factory(1 * MiB, 512)
    assert vol.read(0, 0) == b""
    assert sum(e.length for e in vol.read_extents(0, 0)) == 0
    vol.write(0, b"", 1)
    vol.unmap(0, 0, 1)
    assert vol.block_seqs(0, 0) == []


def test_large_write_spanning_chunks(store_factory: Callable[..., Any]) -> None:
    vol = store_factory(8 * MiB, 512)
    data = pattern(7, 10, 5000, 512)  # about 2.4 MiB
    vol.write(10, data, 7)
    assert vol.read(10, 5000) == data
    assert set(vol.block_seqs(10, 5000)) == {7}


def test_read_extents_are_merged(store_factory: Callable[..., Any]) -> None:
    vol = store_factory(1 * MiB, 512)
    for i in range(16):
        vol.write(i, pattern(i + 1, i, 1, 512), i + 1)
    extents = vol.read_extents(0, 16)
    assert len(extents) == 1
    assert extents[0].length == 16 * 512
