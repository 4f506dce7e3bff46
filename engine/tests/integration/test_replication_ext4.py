"""ext4 on a 3-replica volume, through ``qemu-storage-daemon``, while replicas die and
come back.

The stack is the one of ``test_ext4.py`` (qemu-storage-daemon exports the LUN as a FUSE
file, a loop device makes it a block device, ext4 on that), with a replicating target
of real ``cairn pool serve`` processes behind it (``cluster.py``):

1. A tree of a few hundred files is written (each file ``fsync``-ed, so its data really
   goes to the target as it is written).  Part way, replica 0 is SIGKILLed; the writing
   goes on (2 of 3 is a quorum); ``sync``; replica 0 is started again while the rest of
   the tree is written, and must be rebuilt (``event=rebuild_done`` with data copied) and
   become healthy.
2. Then replica 1 and replica 2 are each SIGKILLed in turn (the previous one rebuilt
   first): with one replica down the filesystem must still take a write and a ``sync``;
   then it is unmounted, exported afresh (no cache of any kind left), checked with
   ``e2fsck -fn`` and every file's sha256 compared.  With replica 1 down the reads come
   from replicas 0 (rebuilt) and 2; with replica 2 down only from 0 and 1, both rebuilt.
3. At the end, with all three healthy: ``fsck.ext4 -n -f`` is clean, every file matches,
   and the three replicas hold the same bytes.

Needs root, /dev/fuse and loop devices, as ``test_ext4.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cairn.pool.client import PoolClient

from .cluster import Cluster
from .conftest import tail
from .test_ext4 import (  # noqa: F401 (_require_fuse_and_loop: an autouse fixture)
    VOLUME_SIZE,
    Export,
    Stack,
    _require_fuse_and_loop,
    check_files,
    fresh_mount_and_check,
    ok,
    run,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("_require_fuse_and_loop")]

SIZE = VOLUME_SIZE  # what fresh_mount_and_check expects (256 MiB)
FILES = 360
HEALTHY_TIMEOUT = 60.0
REBUILD_RATE = "8M"  # bytes per second


# --------------------------------------------------------------------------- the rig


@dataclass
class Lun:
    """The replicated target as ``test_ext4``'s helpers see a target."""

    cluster: Cluster
    lun: int = 0

    @property
    def portal(self) -> str:
        return f"127.0.0.1:{self.cluster.target.port}"

    @property
    def iqn(self) -> str:
        return self.cluster.target.iqn

    @property
    def stderr_path(self) -> Path:
        return self.cluster.target.log

    def stderr_text(self) -> str:
        pools = "\n".join(f"--- {n.name} ---\n{tail(n.log, 30)}" for n in self.cluster.nodes)
        return f"{pools}\n--- target ---\n{tail(self.cluster.target.log, 150)}"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Cluster, Stack]]:
    c = Cluster(
        tmp_path / "cluster",
        rf=3,
        size=f"{SIZE >> 20}M",
        hold_time=10.0,
        replica_timeout=2.0,
        tmpfs_size="400m",
        # slow enough that the first rebuild surely overlaps the writing of the tree
        extra=["--rebuild-rate", REBUILD_RATE],
    )
    s = Stack(tmp_path / "ext4")
    s.workdir.mkdir()
    try:
        yield c, s
    finally:
        try:
            s.cleanup()  # qemu-storage-daemon, the mount, its loop device, the FUSE file
        finally:
            c.cleanup()


# --------------------------------------------------------------------------- files


def make_tree(seed: int = 20261122) -> dict[str, bytes]:
    """A few hundred files in nested directories: mostly small, some of hundreds of KiB,
    a few of MiB (about 40 MiB in all), with odd sizes and seeded random content."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(FILES):
        roll = rng.random()
        if roll < 0.75:
            size = rng.randrange(0, 32 << 10)
        elif roll < 0.97:
            size = rng.randrange(32 << 10, 256 << 10)
        else:
            size = rng.randrange(1 << 20, 3 << 20)
        depth = rng.randrange(4)
        parts = [f"d{rng.randrange(6)}" for _ in range(depth)]
        files["/".join([*parts, f"f{i:04d}.bin"])] = rng.randbytes(size)
    return files


class Writer(threading.Thread):
    """Writes and ``fsync``s the files in order; stops before file ``gate_at`` until
    ``gate`` is set.  ``done`` counts the files on disk; an exception is kept."""

    def __init__(self, root: Path, files: dict[str, bytes], gate_at: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.files = list(files.items())
        self.gate_at = gate_at
        self.gate = threading.Event()
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i, (name, data) in enumerate(self.files):
                if i == self.gate_at:
                    if not self.gate.wait(120):
                        raise TimeoutError("the writer's gate was never opened")
                path = self.root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self.done = i + 1
        except BaseException as e:  # reported by the test
            self.error = e

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.done < n:
            if self.error is not None:
                raise AssertionError(f"writing the tree failed: {self.error!r}")
            assert self.is_alive(), "the writer stopped"
            assert time.monotonic() < deadline, f"only {self.done} of {n} files written"
            time.sleep(0.02)


# --------------------------------------------------------------------------- status


def replica_status(c: Cluster, i: int, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replica ``i``'s part of the target's status (``doc``, or asked now)."""
    address = c.nodes[i].address
    for r in (doc or c.target.status())["replicas"]:
        if r["address"] == address:
            r_: dict[str, Any] = r
            return r_
    raise AssertionError(f"replica {address} missing from the status")


def wait_replica_down(c: Cluster, i: int, timeout: float = 10) -> dict[str, Any]:
    """The target has noticed that replica ``i`` is gone, and the volume stays writable."""
    deadline = time.monotonic() + timeout
    while True:
        doc = c.target.status()
        r = replica_status(c, i, doc)
        if r["state"] in ("offline", "degraded"):
            assert doc["writable"] and doc["state"] == "degraded", doc
            return r
        assert time.monotonic() < deadline, f"replica {i} still {r['state']} after its SIGKILL"
        time.sleep(0.1)


def rebuilds_done(c: Cluster, i: int) -> list[dict[str, str]]:
    """The ``event=rebuild_done`` lines of the target's log for replica ``i``."""
    text = c.target.log.read_text(errors="replace")
    found = []
    for line in text.splitlines():
        if "event=rebuild_done" in line and f"replica={c.nodes[i].address} " in line:
            found.append(dict(re.findall(r"(\w+)=(\S+)", line)))
    return found


def wait_rebuilt(
    c: Cluster, i: int, rebuilds_before: int, logged_before: int
) -> list[dict[str, str]]:
    """Replica ``i`` came back through a rebuild and the whole volume is healthy; returns
    the new ``event=rebuild_done`` lines for it."""
    doc = c.target.wait_healthy(HEALTHY_TIMEOUT)
    r = replica_status(c, i, doc)
    assert r["state"] == "healthy" and r["trusted"], r
    assert r["stats"]["rebuilds"] > rebuilds_before, (
        f"replica {i} is healthy without a rebuild: {r}\n{c.report()}"
    )
    lines = rebuilds_done(c, i)
    assert len(lines) > logged_before, f"no event=rebuild_done for replica {i}\n{c.report()}"
    assert doc["writable"]
    return lines[logged_before:]


def replica_digest(c: Cluster, i: int) -> str:
    node = c.nodes[i]
    h = hashlib.sha256()
    with PoolClient(node.host, node.port, timeout=30) as pc:
        pc.open("vol", SIZE, create=False)
        for off in range(0, SIZE, 4 << 20):
            h.update(pc.read(off, 4 << 20))
    return h.hexdigest()


# --------------------------------------------------------------------------- steps


def format_and_mount(t: Lun, stack: Stack) -> Export:
    export = stack.export(t, SIZE)
    # no lazy initialisation: nothing but the test's files is written in the background
    no_lazy_init = "lazy_itable_init=0,lazy_journal_init=0"
    ok(["mkfs.ext4", "-q", "-F", "-E", no_lazy_init, str(stack.lun_file)])
    stack.mount()
    return export


def remount(t: Lun, stack: Stack) -> Export:
    export = stack.export(t, SIZE)
    stack.mount()
    return export


def unmount_and_stop(t: Lun, stack: Stack, export: Export) -> None:
    r = stack.umount()
    assert r.returncode == 0, r.describe() + t.stderr_text()
    rc = stack.stop_export(export)
    assert rc == 0, f"qemu-storage-daemon exited with {rc}:\n{export.log_text()}"
    # the FUSE file is gone with its mount; drop whatever else the kernel kept
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the test


def test_ext4_survives_each_replica_lost_and_rebuilt(rig: tuple[Cluster, Stack]) -> None:
    c, stack = rig
    t = Lun(c)
    try:
        _scenario(c, stack, t)
    except BaseException:
        print(c.report())
        raise


def _scenario(c: Cluster, stack: Stack, t: Lun) -> None:
    started = time.monotonic()
    c.target.wait_healthy(HEALTHY_TIMEOUT)
    export = format_and_mount(t, stack)
    tree = make_tree()
    expected = {name: sha(data) for name, data in tree.items()}
    total_mib = sum(map(len, tree.values())) / (1 << 20)

    # 1. the tree is written while replica 0 is killed, and while it comes back
    before0 = replica_status(c, 0)["stats"]["rebuilds"]
    logged0 = len(rebuilds_done(c, 0))
    writer = Writer(stack.mnt, tree, gate_at=2 * FILES // 3)
    writer.start()
    writer.wait_for(FILES // 4)
    c.nodes[0].kill()
    killed_at = writer.done
    wait_replica_down(c, 0)
    writer.wait_for(writer.gate_at)  # a third of the tree written without replica 0
    ok(["sync"])
    assert replica_status(c, 0)["state"] != "healthy"
    c.nodes[0].start()
    deadline = time.monotonic() + 30
    while replica_status(c, 0)["state"] == "offline":
        assert time.monotonic() < deadline, "the target did not reconnect to replica 0"
        time.sleep(0.02)
    writer.gate.set()  # the last third is written while replica 0 is rebuilt
    seen: dict[str, int] = {}  # replica 0's states while the tree is written: at which file
    while writer.is_alive() and time.monotonic() - started < 120:
        seen.setdefault(replica_status(c, 0)["state"], writer.done)
        time.sleep(0.02)
    writer.join(10)
    assert not writer.is_alive(), "the writer did not finish"
    assert writer.error is None, f"writing the tree failed: {writer.error!r}"
    assert "rebuilding" in seen, f"replica 0 was not rebuilt while files were written: {seen}"
    ok(["sync"])
    done0 = wait_rebuilt(c, 0, before0, logged0)
    copied = max(int(d["bytes"]) for d in done0)
    assert copied > 0, f"the rebuild of replica 0 copied nothing: {done0}"
    check_files(stack.mnt, expected, "after writing the tree")
    print(
        f"tree: {FILES} files, {total_mib:.1f} MiB; replica 0 killed after file {killed_at}, "
        f"back at file {writer.gate_at}, rebuilt from {done0[0]['source']}: {copied} bytes "
        f"in {done0[0]['seconds']} s; its states while writing (at file): {seen}"
    )

    # 2. replicas 1 and 2 lost in turn: reads can only come from the other two
    for i in (1, 2):
        before = replica_status(c, i)["stats"]["rebuilds"]
        logged = len(rebuilds_done(c, i))
        c.nodes[i].kill()
        wait_replica_down(c, i)

        # the filesystem still takes writes with one replica down
        name = f"while-replica-{i}-down.bin"
        data = random.Random(i).randbytes((1 << 20) + 4097 * i)
        path = stack.mnt / name
        path.write_bytes(data)
        ok(["sync"])
        assert path.read_bytes() == data
        expected[name] = sha(data)

        unmount_and_stop(t, stack, export)
        others = [j for j in range(3) if j != i]
        reads_before = {j: replica_status(c, j)["stats"]["reads"] for j in others}
        when = f"replica {i} down, read from replicas {others[0]} and {others[1]}"
        fresh_mount_and_check(t, stack, expected, "cairn", export, when)
        reads = {j: replica_status(c, j)["stats"]["reads"] - reads_before[j] for j in others}
        assert replica_status(c, i)["state"] != "healthy"
        assert reads[0] > 0, f"{when}: the rebuilt replica 0 served no reads: {reads}"
        print(f"{when}: e2fsck -fn clean, {len(expected)} files match; reads {reads}")

        c.nodes[i].start()
        done = wait_rebuilt(c, i, before, logged)
        print(f"replica {i} rebuilt from {done[0]['source']}: {done[0]['bytes']} bytes")
        export = remount(t, stack)

    # 3. all three back: fsck.ext4 on a fresh export, every file, every replica
    check_files(stack.mnt, expected, "all replicas back, before the unmount")
    unmount_and_stop(t, stack, export)
    export = stack.export(t, SIZE)
    r = run(["fsck.ext4", "-n", "-f", str(stack.lun_file)], timeout=180)
    assert r.returncode == 0, "fsck.ext4 -n -f found problems:\n" + r.describe()
    print("fsck.ext4 -n -f: clean\n" + r.stdout.strip())
    stack.mount("ro")
    check_files(stack.mnt, expected, "all replicas back, fresh mount")
    unmount_and_stop(t, stack, export)
    c.target.wait_healthy(HEALTHY_TIMEOUT)
    digests = [replica_digest(c, i) for i in range(3)]
    assert len(set(digests)) == 1, f"the replicas differ: {digests}"
    print(f"all three replicas identical; {time.monotonic() - started:.0f} s")
