"""What is specific to the ZFS store (``cairn.store.zfs``), on real zfs-fuse pools: the
datasets and files it makes, snapshots and clones as ZFS objects, space given back to the
pool by unmap and snapshot deletion, a full pool, force deletion of an origin, and the
cleanup of datasets a crash left half built.  The behaviour shared with the embedded store
is proven by the conformance suite (``tests/store``, kind ``zfs``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cairn.blockdev import NoSpaceError, StoreError
from cairn.store.zfs import ZfsPool
from cairn.store.zfs.datasets import Datasets

from .conftest import ZfsLab

pytestmark = pytest.mark.integration

MiB = 1 << 20


def make_zpool(lab: ZfsLab, size: int = 512 * MiB) -> str:
    name = lab.name()
    lab.pools.create(name, "stripe", lab.files(1, size=size), mountpoint=lab.mountpoint(name))
    return name


def used(lab: ZfsLab, target: str) -> int:
    """``used`` of a dataset once ZFS has written out what it holds: taking a snapshot
    makes ZFS finish the open transaction group."""
    probe = f"{target}@used-probe"
    lab.zfs("snapshot", probe)
    lab.zfs("destroy", probe)
    return int(lab.zfs("get", "-H", "-p", "-o", "value", "used", target))


def prop(lab: ZfsLab, target: str, name: str) -> str:
    return lab.zfs("get", "-H", "-p", "-o", "value", name, target).strip()


def test_layout_datasets_files_and_properties(lab: ZfsLab) -> None:
    zpool = make_zpool(lab)
    with ZfsPool(zpool) as pool:
        assert pool.root == f"{zpool}/cairn"
        assert pool.path == Path(prop(lab, pool.root, "mountpoint"))
        vol = pool.create_volume("db+1:a_b", 8 * MiB, 4096)
        small = pool.create_volume("small", 1 * MiB, 512)
        # names ZFS does not allow are encoded: ':' -> '::', '+' -> ':p'
        assert vol.dataset == f"{zpool}/cairn/db:p1::a_b"
        assert prop(lab, vol.dataset, "recordsize") == "4096"
        assert prop(lab, small.dataset, "recordsize") == "4096"  # 512 would waste 4 KiB sectors
        assert prop(lab, vol.dataset, "compression") == "on"
        mnt = Path(prop(lab, vol.dataset, "mountpoint"))
        meta = json.loads((mnt / "pool.json").read_text())
        ((name, record),) = meta["volumes"].items()
        assert name == "db+1:a_b" and record["uuid"] == vol.uuid
        assert (mnt / "layers" / record["head"] / "data").stat().st_size == 8 * MiB
        assert (mnt / "layers" / record["head"] / "seqmap").stat().st_size == 2048 * 8
        assert (mnt / "volumes" / vol.uuid / "journal").is_file()
        assert [v.name for v in pool.list_volumes()] == ["db+1:a_b", "small"]
        vol.close()
        small.close()
    # a second process's view: the same volumes, no dataset left half built
    with ZfsPool(f"{zpool}/cairn") as again:
        assert [v.uuid for v in again.list_volumes()][0] == vol.uuid
    names = lab.zfs("list", "-H", "-r", "-o", "name", zpool).split()
    assert names == [zpool, f"{zpool}/cairn", f"{zpool}/cairn/db:p1::a_b", f"{zpool}/cairn/small"]


def test_snapshots_and_clones_are_zfs_objects(lab: ZfsLab) -> None:
    zpool = make_zpool(lab)
    with ZfsPool(zpool) as pool:
        vol = pool.create_volume("origin", 4 * MiB, 4096)
        vol.write(0, b"\x01" * 4096 * 4, 1)
        vol.snapshot_create("s1")
        tag = vol.uuid.replace("-", "")[:8]
        snaps = lab.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", zpool).split()
        assert snaps == [f"{zpool}/cairn/origin@s1.{tag}"]
        clone = pool.clone("origin", "s1", "copy")
        assert prop(lab, clone.dataset, "origin") == f"{zpool}/cairn/origin@s1.{tag}"
        assert prop(lab, clone.dataset, "recordsize") == "4096"
        # the clone has its own identity in its own metadata and journal
        mnt = Path(prop(lab, clone.dataset, "mountpoint"))
        ((name, record),) = json.loads((mnt / "pool.json").read_text())["volumes"].items()
        assert name == "copy" and record["uuid"] == clone.uuid != vol.uuid
        assert record["origin"]["volume"] == "origin" and record["origin"]["snapshot"] == "s1"
        assert sorted(os.listdir(mnt / "volumes")) == [clone.uuid]
        assert clone.origin == "origin@s1"
        assert clone.high_seq == 1 and clone.block_seqs(0, 5) == [1, 1, 1, 1, 0]
        # deletion of the snapshot is refused, naming the clone; ZFS still has it
        with pytest.raises(StoreError, match="'copy'"):
            vol.snapshot_delete("s1")
        assert f"{zpool}/cairn/origin@s1.{tag}" in lab.zfs(
            "list", "-H", "-t", "snapshot", "-o", "name"
        )
        clone.close()
        pool.delete_volume("copy")
        vol.snapshot_delete("s1")
        assert lab.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", zpool).split() == []


def test_unmap_and_snapshot_delete_give_space_back_to_the_pool(lab: ZfsLab) -> None:
    zpool = make_zpool(lab)
    with ZfsPool(zpool) as pool:
        vol = pool.create_volume("v", 64 * MiB, 4096)
        empty = used(lab, vol.dataset)
        data = os.urandom(MiB)  # incompressible: ZFS must store every block
        for i in range(32):
            vol.write(i * 256, data, i + 1)
        vol.flush()
        full = used(lab, vol.dataset)
        assert full - empty >= 30 * MiB
        # unmap writes zeros (zfs-fuse cannot punch holes); compression stores no block
        vol.unmap(0, 32 * 256, 100)
        vol.flush()
        after_unmap = used(lab, vol.dataset)
        assert full - after_unmap >= 30 * MiB, (empty, full, after_unmap)
        assert vol.read(0, 256) == bytes(MiB)
        # data kept by a snapshot is freed when the snapshot goes
        for i in range(16):
            vol.write(i * 256, data, 200 + i)
        vol.snapshot_create("s")
        vol.unmap(0, 16 * 256, 300)
        vol.flush()
        with_snapshot = used(lab, vol.dataset)
        assert with_snapshot - after_unmap >= 15 * MiB
        vol.snapshot_delete("s")
        assert with_snapshot - used(lab, vol.dataset) >= 15 * MiB


def test_full_pool_raises_no_space_error_and_recovers(lab: ZfsLab) -> None:
    zpool = make_zpool(lab, size=128 * MiB)
    with ZfsPool(zpool) as pool:
        filler = pool.create_volume("filler", 256 * MiB, 4096)
        vol = pool.create_volume("v", 256 * MiB, 4096)
        first = os.urandom(MiB)
        vol.write(0, first, 1)
        vol.flush()
        seq = 1
        with pytest.raises(NoSpaceError):
            for i in range(1, 256):  # far more than the pool holds
                seq += 1
                filler.write(i * 256, os.urandom(MiB), seq)
            filler.flush()
        # earlier data is intact, the volume still reads, and the failure harmed nothing else
        assert vol.read(0, 256) == first
        filler.close()
        pool.delete_volume("filler")
        # space is back: writes succeed again
        vol.write(256, first, seq + 1)
        vol.flush()
        assert vol.read(256, 256) == first


def test_force_delete_of_origin_promotes_its_clone(lab: ZfsLab) -> None:
    zpool = make_zpool(lab)
    with ZfsPool(zpool) as pool:
        vol = pool.create_volume("o", 4 * MiB, 4096)
        vol.write(0, b"\x02" * 4096, 1)
        vol.snapshot_create("s0")
        vol.write(1, b"\x03" * 4096, 2)
        vol.snapshot_create("s1")
        vol.write(2, b"\x04" * 4096, 3)
        vol.snapshot_create("s2")
        clone = pool.clone("o", "s1", "c")
        clone.snapshot_create("s1")  # the same name as the origin's: no conflict on promote
        vol.close()
        with pytest.raises(StoreError, match="'c'"):
            pool.delete_volume("o")
        pool.delete_volume("o", force=True)
        assert [v.name for v in pool.list_volumes()] == ["c"]
        assert prop(lab, clone.dataset, "origin") == "-"  # promoted
        assert clone.read(0, 3) == b"\x02" * 4096 + b"\x03" * 4096 + bytes(4096)
        assert [s.name for s in clone.snapshot_list()] == ["s1"]
        assert clone.allocated_bytes() == 0  # it still shares every block it came with
        clone.close()
        pool.delete_volume("c")
        assert pool.list_volumes() == []
        assert lab.zfs("list", "-H", "-r", "-t", "all", "-o", "name", zpool).split() == [
            zpool,
            f"{zpool}/cairn",
        ]


def test_half_built_datasets_of_dead_processes_are_destroyed(lab: ZfsLab) -> None:
    zpool = make_zpool(lab)
    ZfsPool(zpool).close()
    dead = f"{zpool}/cairn/_new-999999999-0123456789ab"
    lab.zfs("create", dead)
    mine = f"{zpool}/cairn/_new-{os.getpid()}-0123456789ab"
    lab.zfs("create", mine)
    with ZfsPool(zpool) as pool:
        names = lab.zfs("list", "-H", "-r", "-o", "name", zpool).split()
        assert dead not in names and mine in names  # a live process may still be building it
        assert pool.list_volumes() == []
        Datasets().destroy(mine)  # (unmounts first, and waits while zfs-fuse says busy)


def test_bad_names_and_missing_pool(lab: ZfsLab) -> None:
    zpool = make_zpool(lab)
    with ZfsPool(zpool) as pool:
        # a valid Cairn name whose encoding (255 characters) does not fit in a ZFS name
        with pytest.raises(StoreError, match="too long for ZFS"):
            pool.create_volume("a" + "+" * 127, 1 * MiB)
        with pytest.raises(StoreError):
            pool.create_volume("bad/name", 1 * MiB)
    with pytest.raises(StoreError, match="cairn-no-such-pool"):
        ZfsPool("cairn-no-such-pool")
