"""cairn.zfs.Pools against real zfs-fuse, with sparse files as devices."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cairn.zfs import (
    DeviceNotFound,
    DeviceRefused,
    Layout,
    LayoutError,
    PoolInUse,
    PoolNotFound,
    ResilverProgress,
    Result,
    ZfsError,
)

from .conftest import ZfsLab

pytestmark = pytest.mark.integration

#: Devices per group for each layout, the fewest the module accepts.
WIDTH = {Layout.STRIPE: 1, Layout.MIRROR: 2, Layout.RAIDZ1: 3, Layout.RAIDZ2: 4}


def write_file(path: str, size: int) -> str:
    """Fill ``path`` with ``size`` random bytes; return their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    os.sync()
    return digest.hexdigest()


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("layout", list(Layout), ids=[layout.value for layout in Layout])
def test_create_and_expand_each_layout(lab: ZfsLab, layout: Layout) -> None:
    width = WIDTH[layout]
    first, second = lab.files(width), lab.files(width)
    name = lab.name()

    created = lab.pools.create(name, layout, first, mountpoint=lab.mountpoint(name))
    assert created.changed, created.message
    status = lab.pools.status(name)
    assert status.name == name
    assert status.state == "ONLINE"
    assert status.layout == layout.value
    assert status.group_members() == ([(d,) for d in first] if width == 1 else [tuple(first)])
    group_kind = "disk" if layout is Layout.STRIPE else layout.value
    assert [g.kind for g in status.groups] == [group_kind]
    assert status.size is not None and status.size > 0
    assert status.allocated is not None and status.free is not None
    assert 0 < status.allocated < status.size
    for leaf in status.leaves():
        assert (leaf.state, leaf.read_errors, leaf.write_errors, leaf.checksum_errors) == (
            "ONLINE",
            0,
            0,
            0,
        )
    size_before = status.size

    before = lab.status_text(name)
    again = lab.pools.create(name, layout, first, mountpoint=lab.mountpoint(name))
    assert not again.changed, again.message
    assert lab.status_text(name) == before

    grown = lab.pools.expand(name, layout, second)
    assert grown.changed, grown.message
    status = lab.pools.status(name)
    assert status.layout == layout.value
    if layout is Layout.STRIPE:
        assert status.group_members() == [(first[0],), (second[0],)]
    else:
        assert status.group_members() == [tuple(first), tuple(second)]
        assert [g.name for g in status.groups] == [f"{layout.value}-0", f"{layout.value}-1"]
    assert [g.kind for g in status.groups] == [group_kind, group_kind]
    assert status.size is not None and status.size > size_before

    before = lab.status_text(name)
    repeats: list[Callable[[], Result]] = [
        lambda: lab.pools.expand(name, layout, second),
        lambda: lab.pools.expand(name, layout, [first, second]),
        lambda: lab.pools.create(name, layout, first),
    ]
    for repeat in repeats:
        result = repeat()
        assert not result.changed, result.message
        assert lab.status_text(name) == before


def test_create_several_mirror_groups_at_once(lab: ZfsLab) -> None:
    a, b, c, d = lab.files(4)
    name = lab.name()
    assert lab.pools.create(name, "mirror", [[a, b], [c, d]]).changed
    status = lab.pools.status(name)
    assert [(g.kind, tuple(m.path for m in g.members())) for g in status.groups] == [
        ("mirror", (a, b)),
        ("mirror", (c, d)),
    ]
    assert not lab.pools.create(name, "mirror", [[c, d], [a, b]]).changed


def test_create_over_a_pool_of_another_layout_is_refused(lab: ZfsLab) -> None:
    devices = lab.files(3)
    name = lab.name()
    lab.pools.create(name, "mirror", devices[:2])
    before = lab.status_text(name)
    with pytest.raises(LayoutError, match=r"does not match the request: it is mirror .*raidz1"):
        lab.pools.create(name, "raidz1", devices)
    with pytest.raises(LayoutError, match=f"requested mirror \\({devices[0]}, {devices[2]}\\)"):
        lab.pools.create(name, "mirror", [devices[0], devices[2]])
    assert lab.status_text(name) == before


def test_expansion_that_mixes_layouts_is_refused(lab: ZfsLab) -> None:
    raidz = lab.files(4)
    extra = lab.files(5)
    name = lab.name()
    lab.pools.create(name, "raidz2", raidz)
    before = lab.status_text(name)
    with pytest.raises(LayoutError, match=r"is raidz2 .*adding mirror would mix layouts"):
        lab.pools.expand(name, "mirror", extra[:2])
    with pytest.raises(LayoutError, match="weakest group"):
        lab.pools.expand(name, "stripe", extra[:1])
    with pytest.raises(LayoutError, match="groups of 4 devices; a group of 5"):
        lab.pools.expand(name, "raidz2", extra)
    with pytest.raises(DeviceRefused, match="already in pool .* a group is added whole"):
        lab.pools.expand(name, "raidz2", [raidz[0], *extra[:3]])
    assert lab.status_text(name) == before

    stripe = lab.name()
    lab.pools.create(stripe, "stripe", extra[:1])
    with pytest.raises(LayoutError, match=r"is stripe .*adding raidz1 would mix layouts"):
        lab.pools.expand(stripe, "raidz1", extra[1:4])


def test_file_with_ext4_is_refused_unless_forced(lab: ZfsLab) -> None:
    ext4, other = lab.files(2)
    subprocess.run(["mkfs.ext4", "-q", "-F", ext4], check=True)
    name = lab.name()
    with pytest.raises(DeviceRefused) as refused:
        lab.pools.create(name, "mirror", [ext4, other])
    message = str(refused.value)
    assert f"{ext4} holds an ext4 filesystem" in message
    assert other not in message
    assert "force=True" in message
    assert not lab.pools.exists(name)

    assert lab.pools.create(name, "mirror", [ext4, other], force=True).changed
    assert lab.pools.status(name).group_members() == [(ext4, other)]


def test_devices_that_cannot_be_used_are_refused_with_the_reason(lab: ZfsLab) -> None:
    (good,) = lab.files(1)
    (small,) = lab.files(1, size=32 << 20)
    missing = str(lab.root / "vdevs" / "missing")
    name = lab.name()
    with pytest.raises(DeviceRefused) as refused:
        lab.pools.create(name, "stripe", [good, small, missing, str(lab.root)])
    message = str(refused.value)
    assert f"{small} has 32 MiB; ZFS needs at least 64 MiB per device" in message
    assert f"{missing} cannot be used: No such file or directory" in message
    assert f"{lab.root} is neither a block device nor a regular file" in message
    assert good not in message
    assert not lab.pools.exists(name)


def test_another_pools_label_is_refused_unless_forced(lab: ZfsLab) -> None:
    a, b, c, d = lab.files(4)
    first = lab.name()
    lab.pools.create(first, "mirror", [a, b])

    second = lab.name()
    # a member of an imported pool is never taken, not even with force
    for force in (False, True):
        with pytest.raises(DeviceRefused, match=f"{a} is in use by imported pool '{first}'"):
            lab.pools.create(second, "mirror", [a, c], force=force)

    assert lab.pools.export(first).changed
    with pytest.raises(DeviceRefused) as refused:
        lab.pools.create(second, "mirror", [a, c])
    assert f"{a} holds a ZFS label of pool '{first}' (state: exported)" in str(refused.value)
    assert lab.pools.create(second, "stripe", [d]).changed
    with pytest.raises(DeviceRefused, match=f"{b} holds a ZFS label of pool '{first}'"):
        lab.pools.expand(second, "stripe", [b])
    assert lab.pools.status(second).group_members() == [(d,)]

    assert lab.pools.expand(second, "stripe", [b], force=True).changed
    third = lab.name()
    assert lab.pools.create(third, "mirror", [a, c], force=True).changed
    assert lab.pools.status(third).group_members() == [(a, c)]


def test_symlink_and_real_path_are_the_same_device(lab: ZfsLab, tmp_path: Path) -> None:
    real = lab.files(4)
    links = []
    (tmp_path / "by-id").mkdir()
    for i, path in enumerate(real):
        link = tmp_path / "by-id" / f"disk-{i}"
        link.symlink_to(path)
        links.append(str(link))
    name = lab.name()
    assert lab.pools.create(name, "mirror", links[:2]).changed
    # zpool keeps the name it was given; the module compares what the names point to
    assert lab.pools.status(name).group_members() == [(links[0], links[1])]
    before = lab.status_text(name)
    assert not lab.pools.create(name, "mirror", real[:2]).changed
    assert not lab.pools.create(name, "mirror", [real[0], links[1]]).changed
    assert lab.status_text(name) == before

    assert lab.pools.expand(name, "mirror", [links[2], real[3]]).changed
    before = lab.status_text(name)
    assert not lab.pools.expand(name, "mirror", [real[2], links[3]]).changed
    assert lab.status_text(name) == before

    with pytest.raises(LayoutError, match=f"{real[1]} is given twice"):
        lab.pools.create(lab.name(), "mirror", [links[1], real[1]])
    assert lab.pools.offline(name, real[0]).changed
    assert not lab.pools.offline(name, links[0]).changed
    assert lab.pools.online(name, real[0]).changed


def test_replace_in_raidz2_and_wait_for_the_resilver(lab: ZfsLab) -> None:
    devices = lab.files(4)
    (spare,) = lab.files(1)
    name = lab.name()
    mnt = lab.mountpoint(name)
    lab.pools.create(name, "raidz2", devices, mountpoint=mnt)
    digest = write_file(os.path.join(mnt, "data"), 96 << 20)

    reports: list[ResilverProgress] = []
    result = lab.pools.replace(
        name, devices[1], spare, wait=True, interval=0.02, on_progress=reports.append
    )
    assert result.changed, result.message

    running = [r for r in reports if r.in_progress]
    assert running, f"no resilver was seen running: {reports}"
    assert all(r.replacing == ((devices[1], spare),) for r in running)
    percents = [r.percent for r in running if r.percent is not None]
    assert percents and all(0.0 <= p <= 100.0 for p in percents)
    assert percents == sorted(percents)
    assert any(0.0 < p < 100.0 for p in percents), percents
    final = reports[-1]
    assert final.done and final.percent == 100.0 and final.replacing == ()
    assert lab.pools.resilver_progress(name) == final

    status = lab.pools.status(name)
    assert status.group_members() == [(devices[0], spare, devices[2], devices[3])]
    assert status.state == "ONLINE"
    assert status.scan.kind == "resilver" and status.scan.errors == 0
    assert all(leaf.checksum_errors == 0 for leaf in status.leaves())
    assert sha256_of(os.path.join(mnt, "data")) == digest

    before = lab.status_text(name)
    again = lab.pools.replace(name, devices[1], spare)
    assert not again.changed and "already replaced" in again.message
    assert lab.status_text(name) == before
    with pytest.raises(DeviceNotFound):
        lab.pools.replace(name, devices[1], lab.files(1)[0])


def test_offline_and_online_a_device(lab: ZfsLab) -> None:
    a, b = lab.files(2)
    name = lab.name()
    lab.pools.create(name, "mirror", [a, b])

    assert lab.pools.offline(name, b).changed
    status = lab.pools.status(name)
    assert status.state == "DEGRADED"
    leaf = status.find(b)
    assert leaf is not None and leaf.state == "OFFLINE"
    before = lab.status_text(name)
    assert not lab.pools.offline(name, b).changed
    assert lab.status_text(name) == before

    assert lab.pools.online(name, b).changed
    lab.pools.wait_resilver(name, timeout=60, interval=0.1)
    assert lab.pools.status(name).state == "ONLINE"
    assert not lab.pools.online(name, b).changed
    with pytest.raises(DeviceNotFound, match="has no device"):
        lab.pools.offline(name, "/nonexistent/disk")


def test_export_and_import(lab: ZfsLab) -> None:
    (a,) = lab.files(1, directory="shelf-a")
    (b,) = lab.files(1, directory="shelf-b")
    name = lab.name()
    mnt = lab.mountpoint(name)
    lab.pools.create(name, "stripe", [a, b], mountpoint=mnt)
    digest = write_file(os.path.join(mnt, "data"), 8 << 20)

    assert lab.pools.export(name).changed
    assert not lab.pools.exists(name)
    assert not lab.pools.export(name).changed
    with pytest.raises(PoolNotFound):
        lab.pools.status(name)
    with pytest.raises(ZfsError) as failed:
        lab.pools.import_(name, [os.path.dirname(a)])  # half the devices
    assert failed.value.returncode != 0 and "import" in failed.value.argv

    assert lab.pools.import_(name, [os.path.dirname(a), os.path.dirname(b)]).changed
    assert not lab.pools.import_(name, [os.path.dirname(a), os.path.dirname(b)]).changed
    status = lab.pools.status(name)
    assert status.state == "ONLINE" and status.group_members() == [(a,), (b,)]
    assert sha256_of(os.path.join(mnt, "data")) == digest


def test_destroy_is_refused_while_replicas_live_there(lab: ZfsLab) -> None:
    a, b = lab.files(2)
    name = lab.name()
    mnt = lab.mountpoint(name)
    lab.pools.create(name, "mirror", [a, b], mountpoint=mnt)
    lab.zfs("create", f"{name}/cairn")
    lab.zfs("create", f"{name}/cairn/r1")
    write_file(os.path.join(mnt, "cairn", "r1", "replica"), 16 << 20)

    with pytest.raises(PoolInUse) as refused:
        lab.pools.destroy(name)
    assert f"{name}/cairn, {name}/cairn/r1" in str(refused.value)
    assert lab.pools.exists(name)

    assert lab.pools.destroy(name, force=True).changed
    assert not lab.pools.exists(name)
    assert not lab.pools.destroy(name).changed

    # a replica known elsewhere (in_use) blocks as well; other pools' replicas do not
    other = lab.name()
    lab.pools.create(other, "stripe", [lab.files(1)[0]])

    def known(pool: str) -> list[str]:
        return [f"{pool}/vol-1", "elsewhere/vol-2"]

    with pytest.raises(PoolInUse, match=rf"holds 1 dataset\(s\) .*: {other}/vol-1;") as refused:
        lab.pools.destroy(other, in_use=known)
    assert "elsewhere" not in str(refused.value)
    with pytest.raises(PoolInUse):
        lab.pools.destroy(other, in_use=[f"{other}/vol-9"])
    assert lab.pools.destroy(other, in_use=["elsewhere/vol-2"]).changed


def test_command_errors_carry_command_exit_code_and_stderr(lab: ZfsLab) -> None:
    missing = f"{lab.name()}x"
    with pytest.raises(PoolNotFound, match=f"pool '{missing}' is not imported"):
        lab.pools.status(missing)
    with pytest.raises(ZfsError) as failed:
        lab.pools.commands.zpool("offline", missing, "/nonexistent")
    error = failed.value
    assert error.argv == ("zpool", "offline", missing, "/nonexistent")
    assert error.returncode == 1
    assert missing in error.stderr
    assert f"command: zpool offline {missing} /nonexistent" in str(error)
