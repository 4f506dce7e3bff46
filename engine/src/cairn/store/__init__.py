"""One replica's data on disk.

``EmbeddedPool`` keeps volumes as sparse files with copy-on-write snapshots and clones
(docs/store.md); ``NullStore`` keeps nothing and serves benchmarks.  Both implement
``cairn.blockdev.ReplicaStore``.
"""

from cairn.store.embedded import (
    BLOCK_SIZES,
    EmbeddedPool,
    EmbeddedSnapshot,
    EmbeddedVolume,
    Shutdown,
    SnapshotInfo,
    VolumeInfo,
)
from cairn.store.errors import (
    BusyError,
    ExistsError,
    MediumError,
    NoSpaceError,
    NotFoundError,
    OutOfRangeError,
    StoreError,
)
from cairn.store.null import NullStore

__all__ = [
    "BLOCK_SIZES",
    "BusyError",
    "EmbeddedPool",
    "EmbeddedSnapshot",
    "EmbeddedVolume",
    "ExistsError",
    "MediumError",
    "NoSpaceError",
    "NotFoundError",
    "NullStore",
    "OutOfRangeError",
    "Shutdown",
    "SnapshotInfo",
    "StoreError",
    "VolumeInfo",
]
