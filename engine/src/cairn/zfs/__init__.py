"""ZFS for Cairn: pools built from disks (or files), driven through ``zpool`` and ``zfs``.

:class:`Pools` creates, grows, repairs, moves and destroys pools, idempotently: every
mutating call reads the pool first and returns a :class:`Result` saying whether it changed
anything.  :mod:`cairn.zfs.commands` runs the tools; see ``docs/zfs.md``.
"""

from cairn.zfs.commands import (
    CommandResult,
    LibzfsCore,
    PoolListing,
    ZfsCommands,
    ZfsError,
    ZfsTimeout,
    libzfs_core,
)
from cairn.zfs.pools import (
    DeviceNotFound,
    DeviceRefused,
    Layout,
    LayoutError,
    PoolError,
    PoolInUse,
    PoolNotFound,
    Pools,
    PoolStatus,
    ResilverProgress,
    ResilverTimeout,
    Result,
    ScanInfo,
    ScanState,
    Signature,
    Vdev,
)

__all__ = [
    "CommandResult",
    "DeviceNotFound",
    "DeviceRefused",
    "Layout",
    "LayoutError",
    "LibzfsCore",
    "PoolError",
    "PoolInUse",
    "PoolListing",
    "PoolNotFound",
    "PoolStatus",
    "Pools",
    "ResilverProgress",
    "ResilverTimeout",
    "Result",
    "ScanInfo",
    "ScanState",
    "Signature",
    "Vdev",
    "ZfsCommands",
    "ZfsError",
    "ZfsTimeout",
    "libzfs_core",
]
