"""A pool node of the fault cluster (``cluster.py``) whose replicas live on ZFS.

Each node gets a zfs-fuse pool of its own, made by a ``ZfsLab`` (``tests/zfs_helpers.py``)
on one sparse file, and runs ``cairn pool serve --backend zfs --zpool POOL``: the replica
is the dataset ``POOL/cairn/vol``, the server's own state is in ``POOL/cairn``.  The
faults that touch the disk are made with ZFS itself:

- ``copy_data`` takes a recursive snapshot of ``POOL/cairn`` while the server is stopped
  (after a ``sync``, so the pages of the memory-mapped seq map that the process wrote are
  in it, as a copy of the files would see them); ``restore_data`` rolls every dataset
  back to it (``zfs rollback -r``) and destroys it.  The replica then really holds the
  older data, seq map and journal.
- ``fill`` writes a file of incompressible bytes in a dataset ``POOL/filler``
  (compression off) until ``FILL_LEAVES`` bytes of the pool are free: below the ZFS
  store's ``MARGIN``, so the store refuses the next write that needs space
  (``NoSpaceError``), but far from 0, so zfs-fuse itself never meets a full pool (it
  aborts when a write runs out of space part way, docs/zfs.md).  ``unfill`` truncates and
  deletes the file and changes a property of the dataset: ZFS gives freed blocks back
  when a transaction group is written, which a property change does at once (without
  it, up to half a minute later).
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from cairn.store.zfs.space import MARGIN

from ..zfs_helpers import ZfsLab, destroy_pool
from .cluster import PoolProcess

#: The vdev of a node.  zfs-fuse makes 74.9 MiB of it available to datasets; the replica
#: of the 16 MiB volume takes 16.5 MiB (with ashift=12 compression saves nothing on
#: 4 KiB records), which leaves about 58 MiB, 26 MiB above the store's margin.  Small, so
#: that the store notices a fill soon: it asks for the free space again after writing a
#: quarter of the room above the margin (about 6.5 MiB here, half a second of the
#: workload).  Large enough that a stale copy's snapshot, which can keep a whole older
#: version of the volume (16 MiB), leaves the pool above the margin.
VDEV_BYTES = 112 << 20
#: Free bytes a fill leaves in the pool: 8 MiB below the store's margin.  The server may
#: still write what its last check granted it (at most a quarter of the room, so about
#: 6.5 MiB), which leaves zfs-fuse more than 17 MiB.
FILL_LEAVES = MARGIN - (8 << 20)
_CHUNK = bytes(range(256)) * 4096  # 1 MiB that no compression would shrink (it is off)
_UNFILLS = itertools.count(1)


class ZfsPoolNode(PoolProcess):
    """A pool server of the ZFS store on a zfs-fuse pool of its own (made by ``lab``)."""

    def __init__(
        self, root: Path, index: int, port: int, lab: ZfsLab, secret_file: Path | None = None
    ) -> None:
        self.lab = lab
        self.zpool = lab.name()
        vdevs = lab.files(1, directory=f"vdevs-pool{index}", size=VDEV_BYTES)
        mountpoint = Path(lab.mountpoint(self.zpool))
        lab.pools.create(self.zpool, "stripe", vdevs, mountpoint=str(mountpoint))
        #: the root dataset of the store (``cairn.store.zfs.ZfsPool``) and its mountpoint,
        #: whose ``statvfs`` the store's free-space check reads
        self.root_dataset = f"{self.zpool}/cairn"
        self.store_path = mountpoint / "cairn"
        self.filler_dataset = f"{self.zpool}/filler"
        lab.zfs("create", "-o", "compression=off", "-o", "atime=off", self.filler_dataset)
        self.filler = mountpoint / "filler" / "filler"
        super().__init__(root, index, port, secret_file)

    def storage_args(self) -> list[str]:
        return ["--backend", "zfs", "--zpool", self.zpool]

    # -- stale copies ------------------------------------------------------------------

    @staticmethod
    def _snapshot_name(copy: Path) -> str:
        return "stale-" + re.sub(r"[^A-Za-z0-9_-]", "_", copy.name)

    def _snapshots(self) -> set[str]:
        out = self.lab.zfs("list", "-H", "-r", "-t", "snapshot", "-o", "name", self.root_dataset)
        return set(out.split())

    def copy_data(self, dest: Path) -> None:
        """A recursive snapshot of the store's datasets, named after ``dest``, taken while
        the process is stopped."""
        snap = self._snapshot_name(dest)
        self.stop_process()
        try:
            os.sync()  # dirty pages of the mapped seq map, as a copy of the files sees them
            if f"{self.root_dataset}@{snap}" in self._snapshots():
                self.lab.zfs("destroy", "-r", f"{self.root_dataset}@{snap}")
            self.lab.zfs("snapshot", "-r", f"{self.root_dataset}@{snap}")
        finally:
            self.continue_process()

    def restore_data(self, src: Path) -> None:
        """Roll every dataset of the store back to the snapshot ``copy_data(src)`` took,
        then destroy the snapshot."""
        assert not self.alive()
        snap = self._snapshot_name(src)
        snapshots = self._snapshots()
        datasets = self.lab.zfs(
            "list", "-H", "-r", "-t", "filesystem", "-o", "name", self.root_dataset
        ).split()
        for dataset in datasets:
            assert f"{dataset}@{snap}" in snapshots, f"{dataset} was made after the copy {snap}"
            self.lab.zfs("rollback", "-r", f"{dataset}@{snap}")
        self.lab.zfs("destroy", "-r", f"{self.root_dataset}@{snap}")

    # -- a full pool -------------------------------------------------------------------

    def free_bytes(self) -> int:
        """What the store's free-space check sees (``statvfs`` of its root dataset)."""
        path = self.store_path if os.path.ismount(self.store_path) else self.store_path.parent
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> None:
        """Write the filler file until ``FILL_LEAVES`` bytes are free."""
        todo = self.free_bytes() - FILL_LEAVES
        with open(self.filler, "ab") as f:
            while todo > 0:
                todo -= f.write(_CHUNK[: min(todo, len(_CHUNK))])
            f.flush()
            os.fsync(f.fileno())
        free = self.free_bytes()
        assert FILL_LEAVES // 2 < free < MARGIN, f"{self.zpool}: {free} bytes free after a fill"

    def unfill(self) -> None:
        if not self.filler.exists():
            return
        os.truncate(self.filler, 0)
        self.filler.unlink()
        # a property change writes a transaction group: the freed blocks count as free now
        self.lab.zfs("set", f"cairn:unfilled={next(_UNFILLS)}", self.filler_dataset)

    def release_storage(self) -> None:
        destroy_pool(self.zpool)
