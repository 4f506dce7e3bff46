"""The files of one volume image inside a ZFS dataset, and the space figures read from
its seq maps.

Each dataset of the ZFS store holds an embedded pool with exactly one volume and no
embedded snapshots (``docs/zfs.md``): ``pool.json``, ``layers/<id>/data`` and
``layers/<id>/seqmap``, ``volumes/<uuid>/journal``.  A ZFS snapshot of the dataset holds
the same files, frozen, under ``<mountpoint>/.zfs/snapshot/<name>/``.

Space is counted from the seq maps, not from ZFS: a block's contents are named by its
(lba, seq), so a version of a block counts once however many snapshots and clones share
it.  These are logical bytes (what compression makes of them is ZFS's business), exact at
once (ZFS's own ``used`` figures move only when a transaction group is written), and the
same rule the embedded store's tests measure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cairn.blockdev import StoreError
from cairn.store.embedded import JOURNAL_FILE, LAYERS_DIR, VOLUMES_DIR
from cairn.store.journal import OFF_HIGH, U64
from cairn.store.layers import DATA_FILE, ENTRY, MAP_FILE, TOMBSTONE, U64Array
from cairn.store.meta import META_FILE

#: entries read at a time when scanning maps
CHUNK = 1 << 16
_TOMB = np.uint64(TOMBSTONE)


@dataclass(frozen=True)
class ImageFiles:
    """Where the files of the one volume of an image directory are, and its record."""

    root: Path
    name: str
    uuid: str
    block_size: int
    num_blocks: int
    layer: str
    record: dict[str, Any]

    @property
    def data_path(self) -> Path:
        return self.root / LAYERS_DIR / self.layer / DATA_FILE

    @property
    def map_path(self) -> Path:
        return self.root / LAYERS_DIR / self.layer / MAP_FILE

    @property
    def journal_path(self) -> Path:
        return self.root / VOLUMES_DIR / self.uuid / JOURNAL_FILE


def image_files(root: Path) -> ImageFiles:
    """Read ``root/pool.json``: it must describe exactly one volume with one layer."""
    path = root / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is missing: the dataset holds no volume") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: cannot read the volume's metadata ({exc})") from None
    volumes = meta.get("volumes") if isinstance(meta, dict) else None
    if not isinstance(volumes, dict) or len(volumes) != 1:
        raise StoreError(f"{path}: expected the record of exactly one volume")
    ((name, rec),) = volumes.items()
    return ImageFiles(
        root=root,
        name=name,
        uuid=str(rec["uuid"]),
        block_size=int(rec["block_size"]),
        num_blocks=int(rec["num_blocks"]),
        layer=str(rec["head"]),
        record=rec,
    )


def journal_high_seq(path: Path) -> int:
    """The high seq recorded in a journal's header (a frozen copy: no recovery)."""
    with open(path, "rb") as f:
        raw = os.pread(f.fileno(), U64.size, OFF_HIGH)
    if len(raw) != U64.size:
        raise StoreError(f"{path}: journal too short")
    return int(U64.unpack(raw)[0])


def read_entries(fd: int, lba: int, count: int) -> U64Array:
    """Entries ``lba .. lba+count`` of a seq map; zeros past its end."""
    raw = os.pread(fd, count * 8, lba * 8)
    n = len(raw) // 8
    if n == count:
        return np.frombuffer(raw, dtype=ENTRY)
    out = np.zeros(count, dtype=ENTRY)
    out[:n] = np.frombuffer(raw[: n * 8], dtype=ENTRY)
    return out


def _data_seqs(entries: U64Array) -> U64Array:
    """The seq of each block that holds data; 0 for absent and unmapped blocks."""
    return np.where(entries >= _TOMB, np.uint64(0), entries)


def _map_blocks(fd: int) -> int:
    return os.fstat(fd).st_size // 8


def count_versions(map_fds: list[int], base_fd: int | None) -> int:
    """How many distinct (lba, seq) data versions the maps hold together, leaving out
    those the base map (the snapshot a clone came from) holds."""
    if not map_fds:
        return 0
    end = max(_map_blocks(fd) for fd in map_fds)
    total = 0
    for lba in range(0, end, CHUNK):
        n = min(CHUNK, end - lba)
        stack = np.stack([_data_seqs(read_entries(fd, lba, n)) for fd in map_fds])
        ordered = np.sort(stack, axis=0)
        distinct = np.count_nonzero(ordered[0])
        if len(ordered) > 1:
            distinct += int(np.count_nonzero((ordered[1:] != ordered[:-1]) & (ordered[1:] != 0)))
        if base_fd is not None:
            base = _data_seqs(read_entries(base_fd, lba, n))
            shared = (base != 0) & (stack == base).any(axis=0)
            distinct -= int(np.count_nonzero(shared))
        total += int(distinct)
    return total


def snapshot_usage(prev_fd: int | None, fd: int, next_fd: int) -> tuple[int, int]:
    """(used, unique) blocks of a snapshot between its neighbours: used are the versions
    it holds that the previous snapshot (or the clone's origin) does not, unique those of
    them that the next snapshot (or the head) no longer holds, which deleting it frees."""
    used = unique = 0
    end = _map_blocks(fd)
    for lba in range(0, end, CHUNK):
        n = min(CHUNK, end - lba)
        mine = _data_seqs(read_entries(fd, lba, n))
        new = mine != 0
        if prev_fd is not None:
            new &= mine != _data_seqs(read_entries(prev_fd, lba, n))
        used += int(np.count_nonzero(new))
        later = _data_seqs(read_entries(next_fd, lba, n))
        unique += int(np.count_nonzero(new & (later != mine)))
    return used, unique
