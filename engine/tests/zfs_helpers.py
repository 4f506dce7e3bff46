"""Shared helpers of the tests that run against a real zfs-fuse daemon (``tests/zfs``, the
ZFS kind of the store conformance suite in ``tests/store`` and the ZFS half of the
replication fault suite, ``tests/integration/zfs_node.py``).

``zfs_fuse_running`` uses a zfs-fuse that already answers ``zpool list``, or starts
``zfs-fuse --no-daemon`` itself and stops it at the end.  zfs-fuse needs /dev/fuse; when it
cannot run, the tests fail with the reason (a skip would pass unnoticed).

:class:`ZfsLab` gives a test sparse files as devices in its temporary directory, pool
names unique to this test process (``cairnt<pid>_<n>``), mountpoints in the temporary
directory, and on teardown the pools it made are unmounted and destroyed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cairn.zfs import Pools, ZfsCommands

#: zfs-fuse refuses devices under 64 MiB; sparse files cost no space until written.
VDEV_BYTES = 128 << 20
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
POOL_PREFIX = f"cairnt{os.getpid()}_"
_LEFTOVER = re.compile(r"^cairnt(\d+)_")
#: Pool names are unique for the whole session, so a pool a failed test left behind
#: cannot be mistaken for the next test's.
_POOL_NUMBERS = itertools.count()


def _zpool(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["zpool", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )


def _answers() -> bool:
    try:
        return _zpool("list", "-H", "-o", "name", timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _require_fuse() -> None:
    if os.path.exists("/dev/fuse"):
        return
    probe = subprocess.run(["modprobe", "fuse"], capture_output=True, text=True, check=False)
    if not os.path.exists("/dev/fuse"):
        pytest.fail(
            "zfs-fuse needs /dev/fuse, which is absent, and `modprobe fuse` did not create it "
            f"(exit {probe.returncode}: {probe.stderr.strip()}); run the tests where FUSE works",
            pytrace=False,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mounted_filesystems(pool: str) -> list[str]:
    out = subprocess.run(
        ["zfs", "list", "-H", "-r", "-o", "name,mounted", "-t", "filesystem", pool],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [f[0] for f in (line.split("\t") for line in out.splitlines()) if f[-1] == "yes"]


def destroy_pool(name: str) -> None:
    """Tear a test pool down the way zfs-fuse likes it: sync, unmount, destroy.

    Never a forced unmount: a filesystem unmounted with ``-f`` while a file in it is open
    wedges zfs-fuse (its pool stays busy for good, and new mounts of any pool hang), so a
    test that leaves a file open gets an error here instead.
    """
    os.sync()
    deadline = time.monotonic() + 15.0
    while True:
        refused = []
        for dataset in reversed(_mounted_filesystems(name)):
            result = subprocess.run(
                ["zfs", "unmount", dataset], capture_output=True, text=True, check=False
            )
            if result.returncode != 0 and "not currently mounted" not in result.stderr:
                refused.append(f"{dataset}: {result.stderr.strip()}")
        if not refused:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"cannot unmount {refused[0]} of test pool {name} (is a file in it still "
                "open? a forced unmount would wedge zfs-fuse)"
            )
        time.sleep(0.2)
    # zfs-fuse may call a pool busy for a moment after its filesystems were unmounted
    deadline = time.monotonic() + 15.0
    while True:
        result = _zpool("destroy", "-f", name)
        if result.returncode == 0 or name not in _pool_names():
            return
        if "busy" not in result.stderr or time.monotonic() > deadline:
            raise RuntimeError(f"cannot destroy test pool {name}: {result.stderr.strip()}")
        time.sleep(0.2)


def _pool_names() -> list[str]:
    return _zpool("list", "-H", "-o", "name").stdout.split()


def _destroy_leftovers() -> None:
    """Pools of earlier test processes that died before their teardown."""
    for name in _pool_names():
        m = _LEFTOVER.match(name)
        if m and not _alive(int(m.group(1))):
            destroy_pool(name)


@dataclass
class ZfsFuse:
    started: bool
    log: Path | None


class ZfsLab:
    """Devices, pool names and mountpoints for one test; cleans up after it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pools = Pools(ZfsCommands(timeout=60.0))
        self._files = itertools.count()
        self.created: list[str] = []

    def name(self) -> str:
        name = f"{POOL_PREFIX}{next(_POOL_NUMBERS)}"
        self.created.append(name)
        return name

    def files(self, count: int, *, directory: str = "vdevs", size: int = VDEV_BYTES) -> list[str]:
        """``count`` new sparse files of ``size`` bytes, as absolute paths."""
        where = self.root / directory
        where.mkdir(parents=True, exist_ok=True)
        paths = []
        for _ in range(count):
            path = where / f"d{next(self._files)}"
            with open(path, "wb") as f:
                f.truncate(size)
            paths.append(str(path))
        return paths

    def mountpoint(self, pool: str) -> str:
        path = self.root / "mnt" / pool
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    def status_text(self, pool: str) -> str:
        result = _zpool("status", pool)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def zfs(self, *args: str) -> str:
        result = subprocess.run(["zfs", *args], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"zfs {' '.join(args)}: {result.stderr}"
        return result.stdout

    def cleanup(self) -> None:
        imported = set(_pool_names())
        for name in self.created:
            if name in imported:
                destroy_pool(name)


@contextlib.contextmanager
def _run_zfs_fuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsFuse]:
    _require_fuse()
    if _answers():
        _destroy_leftovers()
        yield ZfsFuse(started=False, log=None)
        return
    binary = shutil.which("zfs-fuse") or (
        "/usr/sbin/zfs-fuse" if os.path.exists("/usr/sbin/zfs-fuse") else None
    )
    if binary is None:
        pytest.fail(
            "zfs-fuse is not installed and no zfs-fuse daemon answers "
            "(scripts/install.sh installs it: apt-get install zfs-fuse)",
            pytrace=False,
        )
    log = tmp_path_factory.mktemp("zfs-fuse") / "zfs-fuse.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "--no-daemon", "--no-kstat-mount"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            tail = log.read_text(errors="replace")[-2000:]
            pytest.fail(
                f"zfs-fuse did not come up (exit code {proc.returncode}); its output:\n{tail}",
                pytrace=False,
            )
        time.sleep(0.2)
    _destroy_leftovers()
    try:
        yield ZfsFuse(started=True, log=log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_shared: ZfsFuse | None = None
_shared_context: contextlib.AbstractContextManager[ZfsFuse] | None = None
_users = 0


@contextlib.contextmanager
def zfs_fuse_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsFuse]:
    """The zfs-fuse daemon for a session fixture.  Several conftests (``tests/zfs``,
    ``tests/store``) share one daemon: the first user starts it (or adopts one that
    answers), the last one stops it if it was started here."""
    global _shared, _shared_context, _users
    if _users == 0:
        _shared_context = _run_zfs_fuse(tmp_path_factory)
        _shared = _shared_context.__enter__()
    _users += 1
    try:
        assert _shared is not None
        yield _shared
    finally:
        _users -= 1
        if _users == 0 and _shared_context is not None:
            context, _shared_context, _shared = _shared_context, None, None
            context.__exit__(None, None, None)
