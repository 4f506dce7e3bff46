"""Fixtures that run the ZFS tests against a real zfs-fuse daemon.

The session fixture ``zfs_fuse`` uses a zfs-fuse that already answers ``zpool list``, or
starts ``zfs-fuse --no-daemon`` itself and stops it at the end (``tests/zfs_helpers.py``,
shared with the ZFS kind of the store conformance suite).  zfs-fuse needs /dev/fuse; when
it cannot run, every test here fails with the reason (a skip would pass unnoticed).

Each test gets a :class:`ZfsLab`: sparse files as devices in its temporary directory, pool
names unique to this test process (``cairnt<pid>_<n>``), mountpoints in the temporary
directory, and on teardown the pools it made are unmounted and destroyed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..zfs_helpers import VDEV_BYTES, ZfsFuse, ZfsLab, destroy_pool, zfs_fuse_running

__all__ = ["VDEV_BYTES", "ZfsFuse", "ZfsLab", "destroy_pool"]


@pytest.fixture(scope="session")
def zfs_fuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsFuse]:
    with zfs_fuse_running(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture
def lab(zfs_fuse: ZfsFuse, tmp_path: Path) -> Iterator[ZfsLab]:
    lab = ZfsLab(tmp_path)
    try:
        yield lab
    finally:
        lab.cleanup()
