"""Tests of the embedded store beyond the conformance suite: crash repair at exact
points, interrupted snapshot deletion, garbage collection, ENOSPC, locking."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.blockdev import MediumError, NoSpaceError, StoreError
from cairn.store import BusyError, EmbeddedPool, Shutdown
from cairn.store._fs import os_error
from cairn.store.journal import OFF_BOOT

from .conftest import STORE_KINDS, Harness
from .crash_child import block, payload
from .test_crash import start_child
from .test_io import pattern

MiB = 1 << 20
EMBEDDED = STORE_KINDS[0]


@pytest.fixture
def pool_path(tmp_path: Path) -> Path:
    return tmp_path / "pool"


@pytest.fixture
def harness(pool_path: Path) -> Iterator[Harness]:
    h = Harness(EMBEDDED, pool_path)
    yield h
    h.close()


def kill_at(harness: Harness, name: str, mode: str) -> None:
    proc = start_child(harness, name, mode)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    "mode",
    ["kill-before-data", "kill-after-data", "kill-before-data-lent", "kill-after-data-lent"],
)
def test_write_interrupted_by_kill_is_completed(harness: Harness, mode: str) -> None:
    vol = harness.create(1 * MiB, 512)
    name = vol.name
    vol.write(0, payload(1, 0, 64, 512), 1)
    vol.close()
    kill_at(harness, name, mode)
    vol = harness.pool.open_volume(name)
    assert vol.last_shutdown is Shutdown.PROCESS_CRASH
    assert vol.high_seq == 2
    assert vol.block_seqs(8, 24) == [1, 1] + [2] * 20 + [1, 1]
    assert vol.read(10, 20) == payload(2, 10, 20, 512)
    assert vol.read(30, 34) == payload(1, 30, 34, 512)
    vol.close()
    assert harness.pool.open_volume(name).last_shutdown is Shutdown.CLEAN


def test_unmap_interrupted_by_kill_is_completed(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 4096)
    name = vol.name
    vol.write(0, payload(1, 0, 64, 4096), 1)
    vol.snapshot_create("s")  # the unmap must also hide the snapshot's data
    vol.close()
    kill_at(harness, name, "kill-after-punch")
    vol = harness.pool.open_volume(name)
    assert vol.last_shutdown is Shutdown.PROCESS_CRASH
    assert vol.block_seqs(9, 22) == [1] + [2] * 20 + [1]
    assert vol.read(10, 20) == bytes(20 * 4096)
    assert vol.snapshot_open("s").read(10, 20) == payload(1, 10, 20, 4096)


def test_system_crash_does_not_trust_the_journal(harness: Harness) -> None:
    """After a reboot the journal payload may be torn, so the write in progress is not
    redone; the store reports a system crash and finds its high seq by a scan."""
    vol = harness.create(1 * MiB, 512)
    name, vol_uuid = vol.name, vol.uuid
    vol.write(0, payload(1, 0, 64, 512), 1)
    vol.write(100, payload(5, 100, 1, 512), 5)
    vol.flush()
    vol.close()
    kill_at(harness, name, "kill-before-data")
    journal = harness.path / "volumes" / vol_uuid / "journal"
    with open(journal, "r+b") as f:  # pretend the machine rebooted since
        f.seek(OFF_BOOT)
        f.write(bytes(16))
        # and that the high seq in the header had not reached the disk
        f.seek(24)
        f.write((1).to_bytes(8, "little"))
    vol = harness.pool.open_volume(name)
    assert vol.last_shutdown is Shutdown.SYSTEM_CRASH
    assert vol.block_seqs(10, 20) == [1] * 20
    assert vol.read(10, 20) == payload(1, 10, 20, 512)
    assert vol.high_seq == 5
    assert vol.flushed_seq == 5


def test_interrupted_snapshot_delete_finishes_on_open(harness: Harness) -> None:
    vol = harness.create(64 * MiB, 4096)
    name = vol.name
    for i in range(4):
        vol.write(i * 4096, payload(i + 1, i * 4096, 256, 4096), i + 1)
    vol.snapshot_create("old")
    vol.write(0, payload(10, 0, 8, 4096), 10)
    vol.snapshot_create("new")
    vol.write(4096, payload(11, 4096, 8, 4096), 11)
    expected_head = vol.read(0, vol.num_blocks)
    expected_new = vol.snapshot_open("new").read(0, vol.num_blocks)
    steps = vol.snapshot_delete_steps("old")
    assert 0 < next(steps) < 1
    with pytest.raises(StoreError):
        vol.snapshot_open("old")  # already marked
    vol.close()  # as if the process had stopped here
    script = textwrap.dedent(
        f"""
        import os, signal
        from cairn.store import EmbeddedPool
        vol = EmbeddedPool({str(harness.path)!r}).open_volume({name!r})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    # A first reopen finishes the delete; kill a process that does it too, for good
    # measure, while the first one is not running.
    vol = harness.pool.open_volume(name)
    assert [s.name for s in vol.snapshot_list()] == ["new"]
    assert vol.read(0, vol.num_blocks) == expected_head
    assert vol.snapshot_open("new").read(0, vol.num_blocks) == expected_new
    vol.close()
    subprocess.run([sys.executable, "-c", script], check=False)
    vol = harness.pool.open_volume(name)
    assert vol.read(0, vol.num_blocks) == expected_head
    assert len(list((harness.path / "layers").iterdir())) == 2


def test_snapshot_delete_killed_midway(harness: Harness) -> None:
    vol = harness.create(64 * MiB, 4096)
    name = vol.name
    for i in range(4):
        vol.write(i * 4096, payload(i + 1, i * 4096, 512, 4096), i + 1)
    vol.snapshot_create("s")
    vol.write(8, payload(9, 8, 8, 4096), 9)
    expected = vol.read(0, vol.num_blocks)
    vol.close()
    script = textwrap.dedent(
        f"""
        import os, signal
        from cairn.store import EmbeddedPool
        vol = EmbeddedPool({str(harness.path)!r}).open_volume({name!r})
        steps = vol.snapshot_delete_steps("s")
        next(steps); next(steps)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -signal.SIGKILL
    vol = harness.pool.open_volume(name)
    assert vol.snapshot_list() == []
    assert vol.read(0, vol.num_blocks) == expected
    assert vol.block_seqs(0, 20) == [1] * 8 + [9] * 8 + [1] * 4


def test_io_between_delete_steps(harness: Harness) -> None:
    vol = harness.create(64 * MiB, 4096)
    vol.write(0, payload(1, 0, 8192, 4096), 1)
    vol.snapshot_create("s")
    steps = vol.snapshot_delete_steps("s")
    progress = [next(steps)]
    # writes land both in parts already merged and in parts not merged yet
    vol.write(0, payload(2, 0, 4, 4096), 2)
    vol.write(8000, payload(3, 8000, 4, 4096), 3)
    vol.unmap(6000, 4, 4)
    progress.extend(steps)
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert vol.read(0, 4) == payload(2, 0, 4, 4096)
    assert vol.read(4, 4) == payload(1, 4, 4, 4096)
    assert vol.read(8000, 4) == payload(3, 8000, 4, 4096)
    assert vol.read(6000, 4) == bytes(4 * 4096)
    assert vol.block_seqs(5998, 8) == [1, 1, 4, 4, 4, 4, 1, 1]


def test_extents_name_the_layer_files(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 512)
    vol.write(0, pattern(1, 0, 16, 512), 1)
    (only,) = vol.read_extents(0, 16)
    assert (only.offset, only.length) == (0, 16 * 512)
    vol.snapshot_create("s")
    vol.write(4, pattern(2, 4, 4, 512), 2)
    exts = vol.read_extents(0, 24)
    assert [(e.offset, e.length) for e in exts] == [
        (0, 4 * 512),
        (4 * 512, 4 * 512),
        (8 * 512, 8 * 512),
        (0, 8 * 512),
    ]
    assert exts[0].fd == exts[2].fd != exts[1].fd
    assert exts[3].fd is None


def test_garbage_is_collected_on_open(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 512)
    vol.close()
    (harness.path / "layers" / "0123abcd").mkdir()  # as left by a crash mid-snapshot
    (harness.path / "volumes" / "not-a-volume").mkdir()
    harness.pool.close()
    harness.pool = EmbeddedPool(harness.path)
    assert not (harness.path / "layers" / "0123abcd").exists()
    assert not (harness.path / "volumes" / "not-a-volume").exists()
    harness.pool.delete_volume(vol.name)
    assert list((harness.path / "layers").iterdir()) == []
    assert list((harness.path / "volumes").iterdir()) == []


def test_volume_opened_once(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 512)
    other = EmbeddedPool(harness.path)
    try:
        with pytest.raises(BusyError, match=vol.name):
            other.open_volume(vol.name)
        vol.close()
        again = other.open_volume(vol.name)
        again.close()
    finally:
        other.close()


def test_closed_volume_refuses_io(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 512)
    vol.close()
    vol.close()  # twice is fine
    for call in (
        lambda: vol.read(0, 1),
        lambda: vol.read_extents(0, 1),
        lambda: vol.write(0, bytes(512), 1),
        lambda: vol.unmap(0, 1, 1),
        vol.flush,
        lambda: vol.block_seqs(0, 1),
    ):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_large_map_trim_keeps_entries(harness: Harness) -> None:
    vol = harness.create(8 << 30, 512)  # a 128 MiB seq map, sparse
    vol.write(0, pattern(1, 0, 8, 512), 1)
    vol.write(vol.num_blocks - 8, pattern(2, vol.num_blocks - 8, 8, 512), 2)
    vol.flush()  # drops the mapping of the map pages
    assert vol.block_seqs(0, 8) == [1] * 8
    assert vol.read(vol.num_blocks - 8, 8) == pattern(2, vol.num_blocks - 8, 8, 512)
    vol.write(8, pattern(3, 8, 8, 512), 3)
    vol = harness.reopen(vol)
    assert vol.block_seqs(6, 4) == [1, 1, 3, 3]
    assert vol.allocated_bytes() < 4 * MiB


def test_os_error_mapping() -> None:
    assert isinstance(os_error(OSError(errno.EIO, "I/O error"), "volume 'x'"), MediumError)
    err = os_error(OSError(errno.ENOSPC, "No space left on device"), "volume 'x'")
    assert isinstance(err, NoSpaceError) and "volume 'x'" in str(err)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_enospc_is_reported_and_space_can_be_reclaimed(small_fs: Path) -> None:
    pool = EmbeddedPool(small_fs / "pool")
    try:
        vol = pool.create_volume("tight", 64 * MiB, 4096)
        written = 0
        with pytest.raises(NoSpaceError, match="tight"):
            for i in range(64):
                vol.write(i * 256, payload(i + 1, i * 256, 256, 4096), i + 1)
                written = i + 1
        assert written >= 1
        # what was written before is intact, the failed write did not record its seq
        assert vol.read(0, 4) == payload(1, 0, 4, 4096)
        assert set(vol.block_seqs(written * 256, 256)) <= {0}
        vol.unmap(0, written * 256, 1000)
        vol.write(0, payload(1001, 0, 256, 4096), 1001)
        assert vol.read(0, 1) == block(1001, 0, 4096)
        vol.close()
    finally:
        pool.close()


def test_unclean_open_after_sigkill_reports_process_crash(harness: Harness) -> None:
    vol = harness.create(1 * MiB, 512)
    name = vol.name
    vol.close()
    proc = start_child(harness, name)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    vol = harness.pool.open_volume(name)
    assert vol.last_shutdown is Shutdown.PROCESS_CRASH
    os.sync()


def test_map_reservation_without_fallocate_keeps_entries(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the file system has no fallocate, reserving map space in a new process must
    not wipe the entries an earlier process stored in that granule."""
    from cairn.store import _fs

    vol = harness.create(size_bytes=8 << 20)
    vol.write(0, b"a" * 512 * 4, seq=5)
    vol.flush()
    monkeypatch.setattr(_fs, "_fallocate", lambda *args: -1)
    monkeypatch.setattr(_fs.ctypes, "get_errno", lambda: errno.EOPNOTSUPP)
    vol = harness.reopen(vol)
    vol.write(8, b"b" * 512, seq=6)  # first write of this process into granule 0
    assert vol.block_seqs(0, 4) == [5, 5, 5, 5]
    assert vol.block_seqs(8, 1) == [6]
    assert vol.read(0, 4) == b"a" * 512 * 4


def test_lent_payload_buffers(harness: Harness) -> None:
    """Writes from lent journal areas land like any other, areas are reused once given
    back, and a closed volume lends none."""
    vol = harness.create(4 * MiB, 512)
    lent = [vol.payload_buffer(64 * 512) for _ in range(64)]
    got = [x for x in lent if x is not None]
    assert 0 < len(got) < 64  # a bounded number of areas
    for i, (slot, buf) in enumerate(got):
        buf[:] = payload(i + 1, i * 64, 64, 512)
        vol.write(i * 64, buf, i + 1)
        vol.release_payload_buffer(slot)
    for i in range(len(got)):
        assert vol.read(i * 64, 64) == payload(i + 1, i * 64, 64, 512)
        assert vol.block_seqs(i * 64, 64) == [i + 1] * 64
    assert vol.payload_buffer(64 * 512) is not None  # given back, lent again
    assert vol.payload_buffer(2 * MiB) is None  # larger than an area
    name = vol.name
    vol = harness.reopen(vol)
    assert vol.read(0, 64) == payload(1, 0, 64, 512)
    vol.close()
    assert harness.pool.open_volume(name).payload_buffer(512) is not None
