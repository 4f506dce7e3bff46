"""A snapshot of a 3-replica volume taken while ext4 (through qemu-storage-daemon) takes
writes, then cloned: the clone, served by a target of its own, passes ``fsck.ext4 -n``
and holds every file that was synced before the snapshot with the right checksums; the
source keeps running undisturbed.  The rig is ``test_replication_ext4.py``'s."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .cluster import Cluster, ReplicatedTarget
from .test_ext4 import (  # noqa: F401 (_require_fuse_and_loop: an autouse fixture)
    Stack,
    _require_fuse_and_loop,
    check_files,
    ok,
    run,
)
from .test_replication_ext4 import (
    FILES,
    SIZE,
    Lun,
    Writer,
    format_and_mount,
    make_tree,
    sha,
    unmount_and_stop,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("_require_fuse_and_loop")]


@dataclass
class CloneLun:
    """The clone's target as ``Stack.export`` sees a target."""

    target: ReplicatedTarget
    lun: int = 0

    @property
    def portal(self) -> str:
        return f"127.0.0.1:{self.target.port}"

    @property
    def iqn(self) -> str:
        return self.target.iqn

    def stderr_text(self) -> str:
        return self.target.stderr()


def post(t: ReplicatedTarget, path: str, body: dict[str, str]) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{t.api}{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        doc: dict[str, object] = json.loads(r.read())
        return doc


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Cluster, Stack, Stack, list[ReplicatedTarget]]]:
    c = Cluster(tmp_path / "cluster", rf=3, size=f"{SIZE >> 20}M", hold_time=10.0,
                replica_timeout=2.0, tmpfs_size="400m")  # fmt: skip
    source = Stack(tmp_path / "ext4")
    source.workdir.mkdir()
    clone = Stack(tmp_path / "clone-ext4")
    clone.workdir.mkdir()
    targets: list[ReplicatedTarget] = []
    try:
        yield c, source, clone, targets
    except BaseException:
        print(c.report())
        raise
    finally:
        try:
            clone.cleanup()
            source.cleanup()
        finally:
            for t in targets:
                t.kill()
            c.cleanup()


def test_a_snapshot_under_ext4_writes_clones_into_a_clean_filesystem(
    rig: tuple[Cluster, Stack, Stack, list[ReplicatedTarget]], tmp_path: Path
) -> None:
    c, source, clone_stack, targets = rig
    c.target.wait_healthy()
    export = format_and_mount(Lun(c), source)
    tree = make_tree()
    names = list(tree)
    writer = Writer(source.mnt, tree, gate_at=FILES)  # no gate: it writes all the way
    writer.start()
    writer.wait_for(FILES // 3)
    ok(["sync"])  # the directories of the files written so far are on the volume too
    synced = writer.done  # every one of these was fsync-ed, and synced, before
    started = time.monotonic()
    snap = post(c.target, "/snapshots", {"name": "under-writes"})
    barrier = time.monotonic() - started
    at_snapshot = writer.done
    writer.join(120)
    assert not writer.is_alive() and writer.error is None, writer.error
    assert at_snapshot < FILES, "the snapshot did not overlap the writing"
    assert sorted(snap["replicas"]) == sorted(n.address for n in c.nodes)  # type: ignore[call-overload]

    # the source is undisturbed: every file there, the volume healthy
    check_files(source.mnt, {n: sha(tree[n]) for n in names}, "source after the snapshot")
    assert c.target.status()["state"] == "healthy"

    made = post(c.target, "/clones", {"snapshot": "under-writes", "name": "vol-clone"})
    root = tmp_path / "clone-target"
    root.mkdir()
    ct = ReplicatedTarget(root, "vol-clone", f"{SIZE >> 20}M", list(made["replicas"]),  # type: ignore[call-overload]
                          10.0, 2.0)  # fmt: skip
    targets.append(ct)
    ct.start()
    ct.wait_healthy()
    lun = CloneLun(ct)
    cexport = clone_stack.export(lun, SIZE)
    # a crash-consistent image: fsck -n may only report the journal to replay
    first = run(["e2fsck", "-f", "-n", str(clone_stack.lun_file)], timeout=180)
    mnt = clone_stack.mount()  # replays the journal, as after a power cut
    on_clone = {
        str(p.relative_to(mnt)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in mnt.rglob("*")
        if p.is_file() and "lost+found" not in p.parts
    }
    wrong = [n for n in names[:synced] if on_clone.get(n) != sha(tree[n])]
    assert not wrong, f"{len(wrong)} of the {synced} files synced before are wrong: {wrong[:10]}"
    extra = set(on_clone) - set(names[: at_snapshot + 1])
    assert not extra, f"files written after the snapshot are in the clone: {sorted(extra)[:10]}"
    unmount_and_stop(lun, clone_stack, cexport)  # type: ignore[arg-type]
    cexport = clone_stack.export(lun, SIZE)
    r = run(["fsck.ext4", "-f", "-n", str(clone_stack.lun_file)], timeout=180)
    assert r.returncode == 0, r.describe()
    assert clone_stack.stop_export(cexport) == 0

    # and the source still holds the whole tree once unmounted and checked
    unmount_and_stop(Lun(c), source, export)
    export = source.export(Lun(c), SIZE)
    r = run(["fsck.ext4", "-f", "-n", str(source.lun_file)], timeout=180)
    assert r.returncode == 0, r.describe()
    source.mount("ro")
    check_files(source.mnt, {n: sha(tree[n]) for n in names}, "source at the end")
    print(f"snapshot after {at_snapshot} of {FILES} files ({synced} synced before), "
          f"barrier and snapshot in {barrier:.3f} s; fsck -n of the raw clone: "
          f"exit {first.returncode}; {len(on_clone)} files in the clone")  # fmt: skip
