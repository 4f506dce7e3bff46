"""The ZFS store: each volume in a dataset of its own, ZFS snapshots and clones.

``ZfsPool("tank")`` keeps volumes in ``tank/cairn/<volume>``.  Inside each dataset the
volume is the embedded store's single-layer image (data file, seq map, journal), so writes,
seqs, durability and crash repair are the embedded store's code; snapshots are ``zfs
snapshot``, clones ``zfs clone``.  See ``docs/zfs.md``.
"""

from cairn.store.zfs.pool import ZfsPool
from cairn.store.zfs.snapshot import ZfsSnapshot
from cairn.store.zfs.volume import ZfsVolume

__all__ = ["ZfsPool", "ZfsSnapshot", "ZfsVolume"]
