"""Fixtures of the store conformance suite.

Every test here runs against each kind of store in ``STORE_KINDS``.  A kind is a pool
class constructed from a location (``Pool(location)``) with the pool API of
``cairn.store.EmbeddedPool``: ``create_volume``, ``open_volume``, ``open_or_create``,
``list_volumes``, ``delete_volume``, ``clone``; its volumes implement
``cairn.blockdev.ReplicaStore`` plus the snapshot API.  To add a store, add a kind.

The location of an embedded pool is a directory.  The ZFS kind runs on a real zfs-fuse
daemon (``tests/zfs_helpers.py``): each test gets a zpool of its own on a sparse file in
its temporary directory, and each ``Harness`` a root dataset of its own in that zpool.
Its tests are marked ``integration`` (they need zfs-fuse), so CI runs them with the
integration tests.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from ..zfs_helpers import ZfsFuse, ZfsLab, zfs_fuse_running

#: The zpool of a ZFS test: one sparse file (costs only what the test writes).
ZPOOL_BYTES = 512 << 20
#: Root datasets of the ZFS kind's harnesses, unique in this process.
_ROOTS = itertools.count()


@dataclass(frozen=True)
class StoreKind:
    name: str
    #: "module:Class" of the pool; a subprocess rebuilds the pool from it and a location.
    pool_class: str
    #: ZFS: the zpool of the running test (set by the ``store_kind`` fixture)
    zpool: str | None = None

    def location(self, path: Path) -> Path | str:
        """Where a new pool lives: the directory ``path`` (embedded), or a new root
        dataset in the test's zpool (ZFS)."""
        if self.zpool is None:
            return path
        return f"{self.zpool}/h{next(_ROOTS)}"

    def open_pool(self, location: Path | str) -> Any:
        module, cls = self.pool_class.split(":")
        return getattr(importlib.import_module(module), cls)(location)


STORE_KINDS = [
    StoreKind("embedded", "cairn.store.embedded:EmbeddedPool"),
    StoreKind("zfs", "cairn.store.zfs:ZfsPool"),
]
#: kinds whose tests need a daemon (zfs-fuse) and run with the integration tests
INTEGRATION_KINDS = {"zfs"}


class Harness:
    """One pool of one kind in a temporary directory, reopenable."""

    def __init__(self, kind: StoreKind, path: Path) -> None:
        self.kind = kind
        self.path = kind.location(path)
        self.pool = kind.open_pool(self.path)
        self._names = itertools.count()

    def new_name(self) -> str:
        return f"vol{next(self._names)}"

    def create(self, size_bytes: int = 4 << 20, block_size: int = 512) -> Any:
        return self.pool.create_volume(self.new_name(), size_bytes, block_size)

    def reopen(self, volume: Any) -> Any:
        """Close ``volume``, close and reopen the pool, open the volume again."""
        name = volume.name
        volume.close()
        self.pool.close()
        self.pool = self.kind.open_pool(self.path)
        return self.pool.open_volume(name)

    def close(self) -> None:
        self.pool.close()


@pytest.fixture(scope="session")
def zfs_fuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsFuse]:
    with zfs_fuse_running(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture(
    params=[
        pytest.param(
            kind,
            id=kind.name,
            marks=[pytest.mark.integration] if kind.name in INTEGRATION_KINDS else [],
        )
        for kind in STORE_KINDS
    ]
)
def store_kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKind]:
    kind: StoreKind = request.param
    if kind.name != "zfs":
        yield kind
        return
    request.getfixturevalue("zfs_fuse")
    lab = ZfsLab(tmp_path / "zfs")
    try:
        zpool = lab.name()
        (vdev,) = lab.files(1, size=ZPOOL_BYTES)
        lab.pools.create(zpool, "stripe", [vdev], mountpoint=lab.mountpoint(zpool))
        yield replace(kind, zpool=zpool)
    finally:
        lab.cleanup()


@pytest.fixture
def harness(store_kind: StoreKind, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(store_kind, tmp_path / "pool")
    yield h
    h.close()


@pytest.fixture
def store_factory(harness: Harness) -> Callable[..., Any]:
    """``store_factory(size_bytes=4 MiB, block_size=512)``: a fresh, open volume."""
    return harness.create
