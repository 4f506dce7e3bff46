"""One volume of the ZFS store: a dataset holding the embedded store's single-layer image
(data file, seq map, journal), with ZFS snapshots as its snapshots.

Reads, writes, unmaps, flushes, seqs, resizes and crash repair are those of the embedded
volume inside the dataset (its methods are bound here, so the data path costs no extra
call).  A snapshot is a flush and one ``zfs snapshot``: the data, the seq map and the
journal are in the one dataset, so ZFS freezes them together.

zfs-fuse has no ``.zfs/snapshot`` directory, so a snapshot is read through a read-only
clone of it (``<root>/_view-<pid>-<hex>``), made when first needed and destroyed when the
snapshot is deleted or the volume closed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cairn.blockdev import Buffer, Extent, LbaStatus, StoreError
from cairn.store.embedded import EmbeddedPool, EmbeddedVolume, Shutdown, SnapshotInfo
from cairn.store.errors import BusyError, ExistsError, NotFoundError
from cairn.store.zfs.image import (
    ImageFiles,
    count_versions,
    image_files,
    journal_high_seq,
    snapshot_usage,
)
from cairn.store.zfs.names import (
    check_length,
    check_name,
    owner_tag,
    parse_snapshot_component,
    snapshot_component,
    view_component,
)
from cairn.store.zfs.snapshot import ZfsSnapshot
from cairn.store.zfs.space import SpaceGuard

if TYPE_CHECKING:
    from cairn.store.zfs.pool import ZfsPool


class ZfsVolume:
    """A ``ReplicaStore`` with snapshots, kept in dataset ``dataset``."""

    # Bound to the embedded volume in the dataset (see the module's docstring).
    read: Callable[[int, int], bytes]
    read_extents: Callable[[int, int], list[Extent]]
    unmap: Callable[[int, int, int], None]
    flush: Callable[[], None]
    lba_status: Callable[[int, int], LbaStatus]
    block_seqs: Callable[[int, int], list[int]]
    resize: Callable[[int], None]
    payload_buffer: Callable[[int], tuple[int, memoryview] | None]
    release_payload_buffer: Callable[[int], None]

    def __init__(
        self,
        pool: ZfsPool,
        dataset: str,
        mountpoint: Path,
        inner_pool: EmbeddedPool,
        inner: EmbeddedVolume,
        guard: SpaceGuard,
    ) -> None:
        self._pool = pool
        self.dataset = dataset
        self.mountpoint = mountpoint
        self._inner_pool = inner_pool
        self._inner = inner
        self._guard = guard
        self.name = inner.name
        self.uuid = inner.uuid
        self.origin = inner.origin
        self._write = inner.write
        self.read = inner.read
        self.read_extents = inner.read_extents
        self.unmap = inner.unmap
        self.flush = inner.flush
        self.lba_status = inner.lba_status
        self.block_seqs = inner.block_seqs
        self.resize = inner.resize
        self.payload_buffer = inner.payload_buffer
        self.release_payload_buffer = inner.release_payload_buffer
        self._files = image_files(mountpoint)
        origin = self._files.record.get("origin")
        #: the ZFS snapshot name (after the @) of the snapshot this clone came from
        self._origin_component: str | None = (
            str(origin.get("zfs_snapshot")) if isinstance(origin, dict) else None
        )
        #: own snapshots, oldest first: (name, ZFS snapshot name after the @); listed
        #: when first needed (opening a volume runs no ``zfs`` command)
        self._snap_list: list[tuple[str, str]] | None = None
        self._created: dict[str, float] = {}
        #: read-only clones of snapshots (full snapshot name -> (dataset, mountpoint))
        self._views: dict[str, tuple[str, Path]] = {}
        #: open snapshot readers (full snapshot name, reader)
        self._readers: list[tuple[str, ZfsSnapshot]] = []

    def write(self, lba: int, data: Buffer, seq: int) -> None:
        self._guard.take(memoryview(data).nbytes, f"volume {self.name!r}: write at lba {lba}")
        self._write(lba, data, seq)

    # -- state -------------------------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self._inner.block_size

    @property
    def num_blocks(self) -> int:
        return self._inner.num_blocks

    @property
    def size_bytes(self) -> int:
        return self._inner.size_bytes

    @property
    def high_seq(self) -> int:
        return self._inner.high_seq

    @property
    def flushed_seq(self) -> int:
        return self._inner.flushed_seq

    @property
    def last_shutdown(self) -> Shutdown:
        return self._inner.last_shutdown

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def _check_open(self) -> None:
        if self._inner.closed:
            raise StoreError(f"volume {self.name!r} is closed")

    # -- snapshots: names and views ----------------------------------------------------

    @property
    def _snaps(self) -> list[tuple[str, str]]:
        if self._snap_list is None:
            tag = owner_tag(self.uuid)
            snaps = []
            for full in self._pool._datasets.snapshots(self.dataset):
                ds, _, component = full.partition("@")
                parsed = parse_snapshot_component(component) if ds == self.dataset else None
                if parsed is not None and parsed[1] == tag:
                    snaps.append((parsed[0], component))
            self._snap_list = snaps
        return self._snap_list

    def _component(self, name: str) -> str:
        for snap, component in self._snaps:
            if snap == name:
                return component
        raise NotFoundError(f"volume {self.name!r} has no snapshot {name!r}")

    def _full(self, component: str) -> str:
        return f"{self.dataset}@{component}"

    def _view_dir(self, snapshot: str) -> Path:
        """Where the files of ``snapshot`` (a full name) can be read: the mountpoint of a
        read-only clone of it, made now if this volume has none yet."""
        view = self._views.get(snapshot)
        if view is None:
            pool = self._pool
            dataset = f"{pool.root}/{view_component()}"
            pool._datasets.clone(snapshot, dataset, {"readonly": "on"})
            try:
                view = (dataset, Path(pool._mounted(dataset).mountpoint))
            except BaseException:
                with contextlib.suppress(StoreError):
                    pool._datasets.destroy(dataset)
                raise
            self._views[snapshot] = view
        return view[1]

    def _drop_views(self, snapshot: str | None = None) -> None:
        """Close the readers of ``snapshot`` (of all snapshots when None) and destroy
        the clones they read through."""
        for full, reader in self._readers:
            if snapshot is None or full == snapshot:
                reader.close()
        self._readers = [(f, r) for f, r in self._readers if not r.closed]
        error: StoreError | None = None
        for full in [f for f in self._views if snapshot is None or f == snapshot]:
            dataset, _ = self._views.pop(full)
            try:
                self._pool._datasets.destroy(dataset)
            except StoreError as exc:
                error = error or exc
        if error is not None:
            raise error

    def _base_snapshot(self) -> str | None:
        """The full name of the snapshot this clone came from, wherever ZFS keeps it now
        (a promote moves snapshots between datasets); None for a volume that is not a
        clone."""
        if self._origin_component is None:
            return None
        fs = self._pool._datasets.filesystem(self.dataset)
        if fs.origin is not None:
            return fs.origin
        own = self._full(self._origin_component)
        return own if own in self._pool._datasets.snapshots(self.dataset) else None

    # -- snapshots: the API ------------------------------------------------------------

    def snapshot_create(self, name: str) -> SnapshotInfo:
        """Freeze the current contents as snapshot ``name``: a flush and one ``zfs
        snapshot``, whatever the size of the volume."""
        self._check_open()
        check_name("snapshot", name)
        if any(snap == name for snap, _ in self._snaps):
            raise ExistsError(f"volume {self.name!r} already has a snapshot {name!r}")
        component = snapshot_component(name, self.uuid)
        full = self._full(component)
        check_length("snapshot", name, full)
        self.flush()
        self._pool._datasets.snapshot(full)
        self._snaps.append((name, component))
        self._created[component] = time.time()
        return self._info(len(self._snaps) - 1, just_taken=True)

    def snapshot_list(self) -> list[SnapshotInfo]:
        self._check_open()
        return [self._info(i) for i in range(len(self._snaps))]

    def snapshot_open(self, name: str) -> ZfsSnapshot:
        self._check_open()
        component = self._component(name)
        full = self._full(component)
        try:
            reader = ZfsSnapshot(
                self.name,
                name,
                image_files(self._view_dir(full)),
                self._creation(component),
                lambda: not self._inner.closed and any(c == component for _, c in self._snaps),
            )
        except OSError as exc:
            raise StoreError(f"snapshot {self.name}@{name}: cannot open its files: {exc}") from None
        self._readers = [(f, r) for f, r in self._readers if not r.closed]
        self._readers.append((full, reader))
        return reader

    def snapshot_delete(self, name: str) -> None:
        """Delete snapshot ``name`` (``zfs destroy``; ZFS frees its blocks)."""
        for _ in self.snapshot_delete_steps(name):
            pass

    def snapshot_delete_steps(self, name: str) -> Iterator[float]:
        """The embedded store's stepwise delete, for the same callers: here the one
        ``zfs destroy`` happens at once and the iterator only reports it done."""
        self._check_open()
        component = self._component(name)
        full = self._full(component)
        clones = self._pool._clones_of(full)
        if clones:
            raise BusyError(
                f"snapshot {self.name}@{name} cannot be deleted: clone(s) "
                f"{', '.join(repr(c) for c in clones)} depend on it; delete them first"
            )
        self._drop_views(full)
        self._pool._destroy_views_of({full})
        self._pool._datasets.destroy(full)
        self._snaps.remove((name, component))
        self._created.pop(component, None)
        return iter([1.0])

    def _creation(self, component: str) -> float:
        if component not in self._created:
            self._created[component] = self._pool._datasets.creation(self._full(component))
        return self._created[component]

    def _info(self, index: int, *, just_taken: bool = False) -> SnapshotInfo:
        """The snapshot's figures; ``just_taken``: it was taken after the last write, so
        the head's files are its own."""
        name, component = self._snaps[index]
        snaps = self._snaps
        with contextlib.ExitStack() as stack:

            def open_map(path: Path) -> int:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                stack.callback(os.close, fd)
                return fd

            def snapshot_files(full: str) -> ImageFiles:
                return image_files(self._view_dir(full))

            if index > 0:
                prev: int | None = open_map(
                    snapshot_files(self._full(snaps[index - 1][1])).map_path
                )
            else:
                base = self._base_snapshot()
                prev = open_map(snapshot_files(base).map_path) if base is not None else None
            if just_taken:
                mine = open_map(self._files.map_path)
                nxt = mine
                num_blocks, high_seq = self.num_blocks, self.high_seq
            else:
                files = snapshot_files(self._full(component))
                mine = open_map(files.map_path)
                if index + 1 < len(snaps):
                    nxt = open_map(snapshot_files(self._full(snaps[index + 1][1])).map_path)
                else:
                    nxt = open_map(self._files.map_path)
                num_blocks, high_seq = files.num_blocks, journal_high_seq(files.journal_path)
            used, unique = snapshot_usage(prev, mine, nxt)
        return SnapshotInfo(
            name=name,
            created=self._creation(component),
            num_blocks=num_blocks,
            high_seq=high_seq,
            used_bytes=used * self.block_size,
            unique_bytes=unique * self.block_size,
        )

    # -- space -------------------------------------------------------------------------

    def allocated_bytes(self) -> int:
        """Bytes of data this volume holds: every version of a block in its head and its
        snapshots, counted once, leaving out what it shares with the snapshot it was
        cloned from.  Logical bytes, exact at once (``docs/zfs.md``)."""
        self._check_open()
        paths = [self._files.map_path]
        paths += [image_files(self._view_dir(self._full(c))).map_path for _, c in self._snaps]
        base = self._base_snapshot()
        with contextlib.ExitStack() as stack:
            fds = []
            for path in paths:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                stack.callback(os.close, fd)
                fds.append(fd)
            base_fd: int | None = None
            if base is not None:
                base_path = image_files(self._view_dir(base)).map_path
                base_fd = os.open(base_path, os.O_RDONLY | os.O_CLOEXEC)
                stack.callback(os.close, base_fd)
            return count_versions(fds, base_fd) * self.block_size

    # -- life --------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close; destroy the clones snapshots were read through."""
        if self._inner.closed:
            return
        try:
            self._drop_views()
        finally:
            try:
                self._inner.close()
            finally:
                self._inner_pool.close()
                self._pool._volume_closed(self)

    def __enter__(self) -> ZfsVolume:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ZfsVolume {self.name!r} {self.dataset}>"
