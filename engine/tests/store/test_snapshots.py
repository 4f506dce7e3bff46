"""Conformance: snapshots, clones, deletion, space accounting and pool operations."""

from __future__ import annotations

import pytest

from cairn.blockdev import LbaStatus, StoreError

from .conftest import Harness
from .test_io import pattern, read_via_extents

MiB = 1 << 20


def fill(vol, lba: int, count: int, seq: int) -> bytes:  # type: ignore[no-untyped-def]
    data = pattern(seq, lba, count, vol.block_size)
    vol.write(lba, data, seq)
    return data


def test_snapshot_is_frozen_while_head_changes(harness: Harness) -> None:
    vol = harness.create(2 * MiB, 512)
    fill(vol, 0, 64, 1)
    vol.unmap(10, 5, 2)
    before = vol.read(0, vol.num_blocks)
    seqs_before = vol.block_seqs(0, 64)
    info = vol.snapshot_create("s1")
    assert info.name == "s1"
    assert info.high_seq == 2
    fill(vol, 0, 32, 3)
    vol.unmap(40, 10, 4)
    fill(vol, 3000, 10, 5)
    snap = vol.snapshot_open("s1")
    assert snap.num_blocks == vol.num_blocks
    assert snap.block_size == 512
    assert snap.read(0, snap.num_blocks) == before
    assert read_via_extents(snap, 0, snap.num_blocks) == before
    assert snap.block_seqs(0, 64) == seqs_before
    # the head sees the new data over the old
    assert vol.read(0, 32) == pattern(3, 0, 32, 512)
    assert vol.read(32, 8) == pattern(1, 32, 8, 512)
    assert vol.read(40, 10) == bytes(10 * 512)
    assert vol.block_seqs(30, 22) == [3, 3] + [1] * 8 + [4] * 10 + [1, 1]
    assert vol.lba_status(32, 100) == LbaStatus(32, 8, False)
    assert vol.lba_status(40, 100) == LbaStatus(40, 10, True)
    assert vol.high_seq == 5


def test_unmap_in_head_over_snapshot_data_reads_zeros(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 4096)
    data = fill(vol, 0, 16, 1)
    vol.snapshot_create("s")
    vol.unmap(4, 8, 2)
    assert vol.read(0, 16) == data[: 4 * 4096] + bytes(8 * 4096) + data[12 * 4096 :]
    assert read_via_extents(vol, 0, 16) == vol.read(0, 16)
    assert vol.block_seqs(3, 10) == [1] + [2] * 8 + [1]
    assert vol.lba_status(4, 100) == LbaStatus(4, 8, True)
    assert vol.snapshot_open("s").read(0, 16) == data
    vol = harness.reopen(vol)
    assert vol.read(4, 8) == bytes(8 * 4096)
    assert vol.snapshot_open("s").read(0, 16) == data


def test_snapshot_chain(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 512)
    states = {}
    for i in range(1, 5):
        fill(vol, i * 10, 20, i)  # each round overlaps the previous one
        vol.unmap(i * 7, 2, 100 + i)
        states[f"s{i}"] = (vol.read(0, 200), vol.block_seqs(0, 200))
        vol.snapshot_create(f"s{i}")
    fill(vol, 0, 200, 50)
    assert [s.name for s in vol.snapshot_list()] == ["s1", "s2", "s3", "s4"]
    for name, (data, seqs) in states.items():
        snap = vol.snapshot_open(name)
        assert snap.read(0, 200) == data, name
        assert snap.block_seqs(0, 200) == seqs, name
    vol = harness.reopen(vol)
    for name, (data, _) in states.items():
        assert vol.snapshot_open(name).read(0, 200) == data, name
    # deleting snapshots in the middle and at the bottom keeps the others intact
    vol.snapshot_delete("s2")
    vol.snapshot_delete("s1")
    assert [s.name for s in vol.snapshot_list()] == ["s3", "s4"]
    for name in ("s3", "s4"):
        data, seqs = states[name]
        snap = vol.snapshot_open(name)
        assert snap.read(0, 200) == data, name
        assert snap.block_seqs(0, 200) == seqs, name
    assert vol.read(0, 200) == pattern(50, 0, 200, 512)
    with pytest.raises(StoreError):
        vol.snapshot_open("s1")


def test_snapshot_names(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 512)
    vol.snapshot_create("a")
    with pytest.raises(StoreError, match="a"):
        vol.snapshot_create("a")
    with pytest.raises(StoreError):
        vol.snapshot_create("bad/name")
    with pytest.raises(StoreError, match="nope"):
        vol.snapshot_delete("nope")
    with pytest.raises(StoreError, match="nope"):
        vol.snapshot_open("nope")


def test_snapshot_list_info(harness: Harness) -> None:
    vol = harness.create(4 * MiB, 4096)
    fill(vol, 0, 256, 1)  # 1 MiB
    vol.snapshot_create("s")
    fill(vol, 0, 128, 2)  # overwrite half of it
    (info,) = vol.snapshot_list()
    assert info.name == "s"
    assert info.created > 0
    assert info.used_bytes >= 1 * MiB
    assert 512 * 1024 <= info.unique_bytes <= info.used_bytes


def test_snapshot_does_not_copy_data(harness: Harness) -> None:
    vol = harness.create(64 * MiB, 4096)
    for i in range(16):
        fill(vol, i * 256, 256, i + 1)  # 16 MiB
    vol.flush()
    before = vol.allocated_bytes()
    assert before >= 16 * MiB
    vol.snapshot_create("s")
    after = vol.allocated_bytes()
    assert after - before < 2 * MiB
    clone = harness.pool.clone(vol.name, "s", "c1")
    assert clone.allocated_bytes() < 2 * MiB
    assert clone.read(0, 4096) == vol.read(0, 4096)


def test_space_returned_after_unmap(harness: Harness) -> None:
    vol = harness.create(64 * MiB, 4096)
    for i in range(16):
        fill(vol, i * 256, 256, i + 1)
    vol.flush()
    full = vol.allocated_bytes()
    vol.unmap(0, 16 * 256, 100)
    vol.flush()
    empty = vol.allocated_bytes()
    assert full - empty >= 15 * MiB


def test_space_returned_after_snapshot_delete(harness: Harness) -> None:
    vol = harness.create(64 * MiB, 4096)
    for i in range(16):
        fill(vol, i * 256, 256, i + 1)
    vol.snapshot_create("s")
    for i in range(16):
        fill(vol, i * 256, 256, 100 + i)  # overwrite everything
    vol.flush()
    both = vol.allocated_bytes()
    assert both >= 32 * MiB
    vol.snapshot_delete("s")
    vol.flush()
    after = vol.allocated_bytes()
    assert both - after >= 15 * MiB
    assert vol.read(0, 16 * 256) == b"".join(
        pattern(100 + i, i * 256, 256, 4096) for i in range(16)
    )


def test_clone_is_independent(harness: Harness) -> None:
    pool = harness.pool
    vol = harness.create(1 * MiB, 512)
    base = fill(vol, 0, 100, 1)
    vol.snapshot_create("s")
    clone = pool.clone(vol.name, "s", "clone1")
    assert clone.uuid != vol.uuid
    assert clone.block_size == 512
    assert clone.num_blocks == vol.num_blocks
    assert clone.read(0, 100) == base
    assert clone.high_seq >= 1
    # writes to the clone do not reach the origin, and the other way round
    fill(clone, 0, 10, 10)
    clone.unmap(50, 10, 11)
    fill(vol, 90, 10, 12)
    assert vol.read(0, 100) == base[: 90 * 512] + pattern(12, 90, 10, 512)
    assert clone.read(0, 100) == (
        pattern(10, 0, 10, 512) + base[10 * 512 : 50 * 512] + bytes(10 * 512) + base[60 * 512 :]
    )
    assert vol.snapshot_open("s").read(0, 100) == base
    # the clone has its own snapshots, and clones of clones work
    clone.snapshot_create("cs")
    fill(clone, 20, 5, 13)
    grandchild = pool.clone("clone1", "cs", "clone2")
    assert grandchild.read(20, 5) == base[20 * 512 : 25 * 512]
    # everything survives a reopen of the pool
    clone.close()
    grandchild.close()
    vol = harness.reopen(vol)
    clone = harness.pool.open_volume("clone1")
    assert clone.read(0, 10) == pattern(10, 0, 10, 512)
    assert clone.read(20, 5) == pattern(13, 20, 5, 512)
    assert vol.read(0, 10) == base[: 10 * 512]


def test_snapshot_delete_refused_with_clone(harness: Harness) -> None:
    pool = harness.pool
    vol = harness.create(1 * MiB, 512)
    fill(vol, 0, 10, 1)
    vol.snapshot_create("s")
    clone = pool.clone(vol.name, "s", "dependent-clone")
    with pytest.raises(StoreError, match="dependent-clone"):
        vol.snapshot_delete("s")
    assert [s.name for s in vol.snapshot_list()] == ["s"]
    with pytest.raises(StoreError, match="dependent-clone"):
        pool.delete_volume(vol.name)
    clone.close()
    pool.delete_volume("dependent-clone")
    vol.snapshot_delete("s")
    assert vol.snapshot_list() == []
    assert vol.read(0, 10) == pattern(1, 0, 10, 512)


def test_force_delete_of_origin_keeps_clone(harness: Harness) -> None:
    pool = harness.pool
    vol = harness.create(1 * MiB, 512)
    base = fill(vol, 0, 10, 1)
    vol.snapshot_create("s")
    clone = pool.clone(vol.name, "s", "c")
    name = vol.name
    vol.close()
    pool.delete_volume(name, force=True)
    assert [v.name for v in pool.list_volumes()] == ["c"]
    assert clone.read(0, 10) == base
    clone = harness.reopen(clone)
    assert clone.read(0, 10) == base
    clone.close()
    harness.pool.delete_volume("c")
    assert harness.pool.list_volumes() == []


def test_delete_volume(harness: Harness) -> None:
    pool = harness.pool
    vol = harness.create(1 * MiB, 512)
    fill(vol, 0, 10, 1)
    vol.snapshot_create("s")
    name = vol.name
    with pytest.raises(StoreError, match="open"):
        pool.delete_volume(name)
    vol.close()
    pool.delete_volume(name)
    assert pool.list_volumes() == []
    with pytest.raises(StoreError, match=name):
        pool.open_volume(name)
    with pytest.raises(StoreError):
        pool.delete_volume(name)
    # the name can be used again, for a new empty volume
    again = pool.create_volume(name, 1 * MiB, 512)
    assert again.read(0, 10) == bytes(10 * 512)
    assert again.snapshot_list() == []


def test_pool_volume_management(harness: Harness) -> None:
    pool = harness.pool
    uuid = "12345678-1234-5678-1234-567812345678"
    vol = pool.create_volume("a", 1 * MiB, 4096, uuid=uuid)
    assert vol.uuid == uuid
    with pytest.raises(StoreError, match="exists"):
        pool.create_volume("a", 1 * MiB, 4096)
    with pytest.raises(StoreError):
        pool.create_volume("b", 1000, 512)  # not a multiple of the block size
    with pytest.raises(StoreError):
        pool.create_volume("b", 1 * MiB, 1024)  # unsupported block size
    with pytest.raises(StoreError):
        pool.open_volume("a")  # open already
    vol.close()
    infos = pool.list_volumes()
    assert [(i.name, i.uuid, i.block_size, i.num_blocks) for i in infos] == [("a", uuid, 4096, 256)]
    # open_or_create: same size reopens; larger grows; smaller or other block size fails
    vol = pool.open_or_create("a", 1 * MiB, 4096)
    assert vol.num_blocks == 256
    vol.close()
    vol = pool.open_or_create("a", 2 * MiB, 4096)
    assert vol.num_blocks == 512
    vol.close()
    with pytest.raises(StoreError, match="shrink"):
        pool.open_or_create("a", 1 * MiB, 4096)
    with pytest.raises(StoreError, match="block size"):
        pool.open_or_create("a", 2 * MiB, 512)
    new = pool.open_or_create("b", 1 * MiB, 512)
    assert new.num_blocks == 2048
    new.close()
    assert [i.name for i in pool.list_volumes()] == ["a", "b"]


def test_snapshot_of_grown_volume(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 512)
    data = fill(vol, 2040, 8, 1)
    vol.snapshot_create("small")
    vol.resize(4096)
    fill(vol, 4000, 8, 2)
    vol.snapshot_create("big")
    assert vol.snapshot_open("small").num_blocks == 2048
    assert vol.snapshot_open("big").read(2040, 8) == data
    assert vol.read(2040, 16) == data + bytes(8 * 512)
    vol.snapshot_delete("small")
    assert vol.snapshot_open("big").read(4000, 8) == pattern(2, 4000, 8, 512)
    assert vol.read(2040, 8) == data
    clone = harness.pool.clone(vol.name, "big", "c")
    assert clone.num_blocks == 4096
    assert clone.read(4000, 8) == pattern(2, 4000, 8, 512)
