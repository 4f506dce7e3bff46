"""The ZFS store's pool: a root dataset (``<zpool>/cairn``) with one dataset per volume.

The API is that of ``EmbeddedPool`` (``create_volume``, ``open_volume``,
``open_or_create``, ``list_volumes``, ``delete_volume``, ``clone``, ``close``, ``path``).
Each volume's dataset holds an embedded pool of exactly one volume; see ``docs/zfs.md``.

A dataset is built under a temporary name (``<root>/_new-<pid>-<hex>``) and renamed into
place once its files are complete, so a crash leaves either no volume or a whole one;
leftovers of a dead process are destroyed when a pool is opened.  Changes of the pool
(create, clone, delete) take a lock file in the root dataset, so several processes may
use one pool as with the embedded store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cairn.blockdev import StoreError
from cairn.store._fs import fsync_dir
from cairn.store.embedded import (
    BLOCK_SIZES,
    JOURNAL_FILE,
    NAME_RE,
    VOLUMES_DIR,
    EmbeddedPool,
    VolumeInfo,
    reopen_grown,
)
from cairn.store.errors import BusyError, ExistsError, NotFoundError
from cairn.store.journal import Journal
from cairn.store.meta import META_FILE, PoolMeta, VolumeLock
from cairn.store.zfs.datasets import Datasets, Filesystem
from cairn.store.zfs.image import ImageFiles, image_files
from cairn.store.zfs.names import (
    check_length,
    check_name,
    decode,
    encode,
    is_view,
    owner_tag,
    parse_snapshot_component,
    root_dataset,
    tmp_component,
    tmp_owner_pid,
)
from cairn.store.zfs.space import SpaceGuard
from cairn.store.zfs.volume import ZfsVolume
from cairn.zfs.commands import ZfsCommands

LOCK_FILE = "pool.lock"
LOCK_NAME = "lock"


#: The smallest record size given to a volume's dataset.  ZFS allows 512 bytes, but on a
#: pool of 4 KiB sectors (ashift=12: current disks, and what zfs-fuse picks for file
#: vdevs) every record takes a whole sector: 32 MiB written to a volume with 512-byte
#: records took 290 MiB of the pool, against 34 MiB with 4 KiB records.
MIN_RECORDSIZE = 4096


def volume_properties(block_size: int) -> dict[str, str]:
    """ZFS properties of a volume's dataset: records of the volume's block size (not
    below ``MIN_RECORDSIZE``), compression so that the zeros an unmap writes take no
    space (zfs-fuse cannot punch holes), no access times."""
    recordsize = max(block_size, MIN_RECORDSIZE)
    return {"recordsize": str(recordsize), "compression": "on", "atime": "off"}


class _PoolLock:
    """flock on a file in the root dataset, reentrant within this process."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._thread = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread:
            if self._fd < 0:
                raise StoreError("the pool is closed")
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ZfsPool:
    """Volumes as datasets under ``root`` (``tank`` means ``tank/cairn``; created when
    absent).  ``path`` is the root dataset's mountpoint."""

    def __init__(
        self, zpool_or_dataset: str | os.PathLike[str], *, commands: ZfsCommands | None = None
    ) -> None:
        self.root = root_dataset(os.fspath(zpool_or_dataset))
        self._datasets = Datasets(commands)
        if not self._datasets.exists(self.root):
            with contextlib.suppress(ExistsError):  # another process was quicker
                self._datasets.create(self.root, {"atime": "off"}, parents=True)
        fs = self._mounted(self.root)
        self.path = Path(fs.mountpoint)
        self._volumes: dict[str, ZfsVolume] = {}
        self._guard = SpaceGuard(self.path)
        self._lock = _PoolLock(self.path / LOCK_FILE)
        with self._lock.held():
            self._collect_garbage()

    # -- helpers -----------------------------------------------------------------------

    def _mounted(self, dataset: str) -> Filesystem:
        fs = self._datasets.filesystem(dataset)
        if not fs.mounted:
            self._datasets.mount(dataset)
            fs = self._datasets.filesystem(dataset)
        if not fs.mountpoint.startswith("/") or not fs.mounted:
            raise StoreError(
                f"dataset {dataset} is not mounted (mountpoint {fs.mountpoint}); the ZFS "
                "store keeps its files in mounted filesystems"
            )
        return fs

    def _dataset(self, name: str) -> str:
        check_name("volume", name)
        dataset = f"{self.root}/{encode(name)}"
        check_length("volume", name, dataset)
        return dataset

    def _children(self) -> list[Filesystem]:
        prefix = self.root + "/"
        return [
            fs
            for fs in self._datasets.filesystems(self.root)
            if fs.name.startswith(prefix) and "/" not in fs.name[len(prefix) :]
        ]

    def _collect_garbage(self) -> None:
        """Destroy datasets that a process that died was building."""
        for fs in self._children():
            pid = tmp_owner_pid(fs.name.rsplit("/", 1)[1])
            if pid is not None and not _alive(pid):
                with contextlib.suppress(StoreError):
                    self._datasets.destroy(fs.name, recursive=True)

    def _volume_fs(self, name: str) -> tuple[str, Filesystem]:
        dataset = self._dataset(name)
        # Where ZFS mounts it by default: when that is a mounted volume, no need to ask
        # ``zfs`` (opening a replica then runs no command on the server's loop).
        guess = self.path / dataset.rsplit("/", 1)[1]
        if os.path.ismount(guess) and (guess / META_FILE).is_file():
            return dataset, Filesystem(dataset, str(guess), True, None)
        try:
            return dataset, self._mounted(dataset)
        except NotFoundError:
            raise NotFoundError(f"pool {self.root}: no volume {name!r}") from None

    def _files(self, fs: Filesystem, name: str) -> ImageFiles:
        files = image_files(Path(fs.mountpoint))
        if files.name != name:
            raise StoreError(
                f"dataset {fs.name} holds volume {files.name!r}, not {name!r}; the pool is damaged"
            )
        return files

    def _check_uuid(self, name: str, vol_uuid: str | None) -> str:
        if vol_uuid is None:
            return str(uuidlib.uuid4())
        try:
            vol_uuid = str(uuidlib.UUID(str(vol_uuid)))
        except ValueError:
            raise StoreError(f"volume {name!r}: {vol_uuid!r} is not a UUID") from None
        if any(info.uuid == vol_uuid for info in self.list_volumes()):
            raise ExistsError(f"pool {self.root}: a volume with UUID {vol_uuid} exists already")
        return vol_uuid

    def _check_free(self, name: str, dataset: str) -> None:
        if self._datasets.exists(dataset):
            raise ExistsError(f"pool {self.root}: volume {name!r} exists already")

    def _clones_of(self, snapshot: str) -> list[str]:
        """Names of the volumes (or datasets being built) cloned from ``snapshot``; the
        clones that snapshots are read through do not count."""
        names = []
        for fs in self._children():
            component = fs.name.rsplit("/", 1)[1]
            if fs.origin == snapshot and not is_view(component):
                names.append(decode(component) or component)
        return sorted(names)

    def _destroy_views_of(self, snapshots: set[str]) -> None:
        """Destroy the read-only clones of ``snapshots`` that processes which died left
        behind (a live process destroys its own when it is done with them)."""
        for fs in self._children():
            pid = tmp_owner_pid(fs.name.rsplit("/", 1)[1])
            if fs.origin in snapshots and is_view(fs.name) and pid and not _alive(pid):
                self._datasets.destroy(fs.name)

    @contextlib.contextmanager
    def _building(self, dataset: str) -> Iterator[str]:
        """A temporary dataset name; on failure the dataset is destroyed."""
        tmp = f"{self.root}/{tmp_component()}"
        try:
            yield tmp
        except BaseException:
            with contextlib.suppress(StoreError):
                if self._datasets.exists(tmp):
                    self._datasets.destroy(tmp, recursive=True)
            raise

    def _volume_closed(self, volume: ZfsVolume) -> None:
        if self._volumes.get(volume.name) is volume:
            del self._volumes[volume.name]

    # -- public API ----------------------------------------------------------------------

    def create_volume(
        self, name: str, size_bytes: int, block_size: int = 512, uuid: str | None = None
    ) -> ZfsVolume:
        """Create an empty thin volume of ``size_bytes`` in a dataset of its own, and
        open it."""
        if block_size not in BLOCK_SIZES:
            raise StoreError(f"volume {name!r}: block size must be 512 or 4096, not {block_size}")
        if size_bytes <= 0 or size_bytes % block_size:
            raise StoreError(
                f"volume {name!r}: size {size_bytes} is not a positive multiple of the "
                f"block size {block_size}"
            )
        dataset = self._dataset(name)
        with self._lock.held():
            self._check_free(name, dataset)
            vol_uuid = self._check_uuid(name, uuid)
            with self._building(dataset) as tmp:
                self._datasets.create(tmp, volume_properties(block_size))
                inner = EmbeddedPool(self._mounted(tmp).mountpoint)
                try:
                    inner.create_volume(name, size_bytes, block_size, vol_uuid).close()
                finally:
                    inner.close()
                self._datasets.rename(tmp, dataset)
            return self.open_volume(name)

    def open_volume(self, name: str) -> ZfsVolume:
        """Open an existing volume (one opener at a time, in any process)."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise NotFoundError(f"pool {self.root}: no volume {name!r}")
        dataset, fs = self._volume_fs(name)
        mountpoint = Path(fs.mountpoint)
        if not (mountpoint / META_FILE).exists():
            raise StoreError(f"dataset {dataset} holds no Cairn volume ({META_FILE} is missing)")
        self._files(fs, name)
        inner_pool = EmbeddedPool(mountpoint)
        try:
            inner = inner_pool.open_volume(name)
        except BaseException:
            inner_pool.close()
            raise
        try:
            volume = ZfsVolume(self, dataset, mountpoint, inner_pool, inner, self._guard)
        except BaseException:
            inner_pool.close()
            raise
        self._volumes[name] = volume
        return volume

    def open_or_create(self, name: str, size_bytes: int, block_size: int = 512) -> ZfsVolume:
        """Open volume ``name``, creating it if absent.  An existing volume must have
        the same block size and at most ``size_bytes``; a smaller one is grown."""
        with self._lock.held():
            dataset = self._dataset(name)
            if not self._datasets.exists(dataset):
                return self.create_volume(name, size_bytes, block_size)
            files = self._files(self._mounted(dataset), name)
            volume: ZfsVolume = reopen_grown(
                self, name, size_bytes, block_size, files.block_size, files.num_blocks
            )
            return volume

    def list_volumes(self) -> list[VolumeInfo]:
        snapshots: dict[str, list[str]] = {}
        for full in self._datasets.snapshots(self.root):
            dataset, _, component = full.partition("@")
            snapshots.setdefault(dataset, []).append(component)
        infos = []
        for fs in self._children():
            component = fs.name.rsplit("/", 1)[1]
            if tmp_owner_pid(component) is not None or decode(component) is None:
                continue
            if not fs.mounted:
                fs = self._mounted(fs.name)
            try:
                files = image_files(Path(fs.mountpoint))
            except StoreError:
                continue  # not a volume of this store
            tag = owner_tag(files.uuid)
            own = [parse_snapshot_component(c) for c in snapshots.get(fs.name, [])]
            origin = files.record.get("origin")
            infos.append(
                VolumeInfo(
                    name=files.name,
                    uuid=files.uuid,
                    block_size=files.block_size,
                    num_blocks=files.num_blocks,
                    created=float(files.record.get("created", 0.0)),
                    origin=f"{origin['volume']}@{origin['snapshot']}"
                    if isinstance(origin, dict)
                    else None,
                    snapshots=tuple(p[0] for p in own if p is not None and p[1] == tag),
                )
            )
        return sorted(infos, key=lambda info: info.name)

    def delete_volume(self, name: str, force: bool = False) -> None:
        """Delete a closed volume and its snapshots (``zfs destroy -r``).  Refused while
        clones depend on its snapshots, unless ``force``: then the clone of the newest
        such snapshot is promoted (``zfs promote``: it takes over the snapshots the
        clones need), and the volume is destroyed; clones are never deleted."""
        with self._lock.held():
            dataset, fs = self._volume_fs(name)
            files = self._files(fs, name)
            tag = owner_tag(files.uuid)
            snapshots = [
                full for full in self._datasets.snapshots(dataset) if full.split("@")[0] == dataset
            ]
            self._destroy_views_of(set(snapshots))
            children = self._children()
            dependents: list[tuple[str, list[str]]] = []  # (snapshot, clone datasets)
            for full in snapshots:
                clones = [
                    c.name
                    for c in children
                    if c.origin == full and not is_view(c.name.rsplit("/", 1)[1])
                ]
                if clones:
                    dependents.append((full, clones))
            own_clones = sorted(
                decode(c.rsplit("/", 1)[1]) or c
                for full, clones in dependents
                if (p := parse_snapshot_component(full.partition("@")[2])) and p[1] == tag
                for c in clones
            )
            if own_clones and not force:
                raise BusyError(
                    f"volume {name!r} cannot be deleted: clone(s) "
                    f"{', '.join(repr(c) for c in own_clones)} depend on its snapshots; delete "
                    "them first or force"
                )
            if name in self._volumes:
                raise BusyError(f"volume {name!r} is open elsewhere (in this or another process)")
            VolumeLock(Path(fs.mountpoint) / VOLUMES_DIR / files.uuid / LOCK_NAME, name).release()
            if dependents:
                # The clone of the newest snapshot with clones takes over that snapshot
                # and every older one; the volume then has none that others need.
                heir = dependents[-1][1][0]
                self._datasets.promote(heir)
                self._prune_inherited(heir)
            self._datasets.destroy(dataset, recursive=True)

    def _prune_inherited(self, dataset: str) -> None:
        """After a promote: destroy the snapshots ``dataset`` took over that neither it
        (the one it was cloned from) nor any clone needs."""
        try:
            files = image_files(Path(self._datasets.filesystem(dataset).mountpoint))
        except StoreError:
            return
        origin = files.record.get("origin")
        keep = origin.get("zfs_snapshot") if isinstance(origin, dict) else None
        tag = owner_tag(files.uuid)
        needed = {fs.origin for fs in self._children() if fs.origin}
        for full in self._datasets.snapshots(dataset):
            ds, _, component = full.partition("@")
            parsed = parse_snapshot_component(component)
            if ds != dataset or component == keep or full in needed:
                continue
            if parsed is not None and parsed[1] == tag:
                continue  # its own snapshot
            with contextlib.suppress(StoreError):
                self._datasets.destroy(full)

    def clone(
        self, volume_name: str, snapshot_name: str, new_name: str, uuid: str | None = None
    ) -> ZfsVolume:
        """Create volume ``new_name`` from a snapshot (``zfs clone``: instant, nothing is
        copied) and open it.  The clone gets its own name and UUID in its metadata and
        the snapshot's high seq; the snapshot cannot be deleted while it exists."""
        new_dataset = self._dataset(new_name)
        with self._lock.held():
            src_dataset, src_fs = self._volume_fs(volume_name)
            src = self._files(src_fs, volume_name)
            tag = owner_tag(src.uuid)
            component = next(
                (
                    full.partition("@")[2]
                    for full in self._datasets.snapshots(src_dataset)
                    if full.partition("@")[0] == src_dataset
                    and parse_snapshot_component(full.partition("@")[2]) == (snapshot_name, tag)
                ),
                None,
            )
            if component is None:
                raise NotFoundError(f"volume {volume_name!r} has no snapshot {snapshot_name!r}")
            self._check_free(new_name, new_dataset)
            vol_uuid = self._check_uuid(new_name, uuid)
            origin = {
                "volume": volume_name,
                "snapshot": snapshot_name,
                "layer": src.layer,
                "zfs_snapshot": component,
            }
            with self._building(new_dataset) as tmp:
                self._datasets.clone(
                    f"{src_dataset}@{component}", tmp, volume_properties(src.block_size)
                )
                self._adopt(Path(self._mounted(tmp).mountpoint), new_name, vol_uuid, origin)
                self._datasets.rename(tmp, new_dataset)
            return self.open_volume(new_name)

    @staticmethod
    def _adopt(root: Path, name: str, vol_uuid: str, origin: dict[str, Any]) -> None:
        """Give the image a clone got from its snapshot its own identity: name, UUID,
        origin and no snapshots in its metadata, a journal of its own UUID marked clean
        (the snapshot was taken after a flush, between operations)."""
        meta = PoolMeta(root)
        try:
            with meta.locked() as doc:
                ((_old_name, record),) = doc["volumes"].items()
                old_uuid = record["uuid"]
                record.update(uuid=vol_uuid, created=time.time(), origin=origin, snapshots=[])
                doc["volumes"] = {name: record}
                doc["layers"][record["head"]]["owner"] = vol_uuid
                volumes = root / VOLUMES_DIR
                os.rename(volumes / old_uuid, volumes / vol_uuid)
                fsync_dir(volumes)
                journal = Journal(volumes / vol_uuid / JOURNAL_FILE)
                try:
                    journal.mark_clean(journal.high_seq)
                finally:
                    journal.close()
                meta.save(doc)
        except OSError as exc:
            raise StoreError(f"volume {name!r}: cannot set up the clone's files: {exc}") from None
        finally:
            meta.close()

    def close(self) -> None:
        """Close every volume opened through this pool object."""
        for volume in list(self._volumes.values()):
            volume.close()
        self._lock.close()

    def __enter__(self) -> ZfsPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ZfsPool {self.root} at {self.path}>"
