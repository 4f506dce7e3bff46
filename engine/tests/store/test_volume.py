"""Tests of cairn.volume: SeqAllocator and LocalVolume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from cairn.blockdev import BlockDevice, LbaStatus, StoreError
from cairn.store import NullStore
from cairn.volume import LocalVolume, SeqAllocator

from .conftest import Harness

MiB = 1 << 20


def test_allocator_counts_up_and_persists_a_reservation(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    alloc = SeqAllocator(path, batch=10)
    assert [alloc.next() for _ in range(3)] == [1, 2, 3]
    assert alloc.last == 3
    assert json.loads(path.read_text())["reserved"] == 10
    assert alloc.reserved == 10
    for _ in range(10):
        alloc.next()
    assert alloc.last == 13
    assert json.loads(path.read_text())["reserved"] == 20


def test_allocator_restart_resumes_above_everything_handed_out(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    alloc = SeqAllocator(path, batch=10)
    handed = [alloc.next() for _ in range(15)]
    again = SeqAllocator(path, batch=10)  # a restart, without any close
    assert again.next() > max(handed)


def test_allocator_floor(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    assert SeqAllocator(path, floor=100).next() == 101
    # the file now reserves far above 101: a lower floor does not go back
    assert SeqAllocator(path, floor=5).next() > 101


def test_allocator_refuses_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    path.write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        SeqAllocator(path)
    path.write_text(json.dumps({"format": 1, "reserved": -3}))
    with pytest.raises(StoreError, match="damaged"):
        SeqAllocator(path)


def test_allocator_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    script = textwrap.dedent(
        f"""
        import sys
        from cairn.volume import SeqAllocator
        alloc = SeqAllocator({str(path)!r}, batch=7)
        while True:
            sys.stdout.write(f"{{alloc.next()}}\\n")
            sys.stdout.flush()
        """
    )
    highest = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        seen: list[int] = []
        deadline = time.monotonic() + 10
        while len(seen) < 200 and time.monotonic() < deadline:
            seen.append(int(proc.stdout.readline()))
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
        seen += [int(x) for x in rest.split() if x.isdigit()]
        assert min(seen) > highest, "a restarted allocator handed out an old number"
        assert seen == sorted(seen)
        highest = max(seen)
    assert SeqAllocator(path).next() > highest


class RecordingStore(NullStore):
    def __init__(self) -> None:
        super().__init__(1 * MiB, 512)
        self.calls: list[tuple[Any, ...]] = []

    def write(self, lba: int, data: Any, seq: int) -> None:
        super().write(lba, data, seq)
        self.calls.append(("write", lba, len(data), seq))

    def unmap(self, lba: int, count: int, seq: int) -> None:
        super().unmap(lba, count, seq)
        self.calls.append(("unmap", lba, count, seq))

    def flush(self) -> None:
        self.calls.append(("flush",))


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def next(self) -> int:
        self.n += 1
        return self.n


def test_local_volume_stamps_each_write_and_unmap() -> None:
    store = RecordingStore()
    dev = LocalVolume(store, Counter())
    assert isinstance(dev, BlockDevice)
    assert (dev.block_size, dev.num_blocks) == (512, 2048)
    dev.write(0, bytes(1024))
    dev.write(4, bytes(512), fua=True)
    dev.unmap(10, 3)
    dev.unmap(10, 0)  # nothing to do, no seq used
    dev.write(0, b"")
    dev.flush()
    assert store.calls == [
        ("write", 0, 1024, 1),
        ("write", 4, 512, 2),
        ("flush",),
        ("unmap", 10, 3, 3),
        ("flush",),
    ]
    assert dev.lba_status(0, 10) == LbaStatus(0, 10, True)
    assert dev.read(0, 2) == bytes(1024)


def test_local_volume_refuses_a_seq_that_does_not_increase() -> None:
    store = RecordingStore()
    store.write(0, bytes(512), 40)
    dev = LocalVolume(store, Counter(start=10))  # would hand out 11: below high_seq 40
    with pytest.raises(StoreError, match="11"):
        dev.write(0, bytes(512))
    assert store.calls == [("write", 0, 512, 40)]


def test_local_volume_over_embedded_store_resumes_after_restart(
    harness: Harness, tmp_path: Path
) -> None:
    seq_path = tmp_path / "seqs"
    store = harness.create(1 * MiB, 512)
    dev = LocalVolume.open(store, seq_path, batch=4)
    for i in range(10):
        dev.write(i, bytes([i + 1]) * 512)
    dev.unmap(3, 1)
    assert store.block_seqs(0, 4) == [1, 2, 3, 11]
    dev.close()
    # the reservation file is lost: the store's high seq still keeps numbers going up
    seq_path.unlink()
    store = harness.pool.open_volume(store.name)
    dev = LocalVolume.open(store, seq_path)
    dev.write(0, bytes(512))
    assert store.block_seqs(0, 1) == [12]
    assert dev.read(1, 1) == bytes([2]) * 512
    extents = dev.read_extents(0, 2)
    assert sum(e.length for e in extents) == 1024
    dev.resize(4096)
    assert dev.num_blocks == 4096
    dev.close()


def test_null_store() -> None:
    store = NullStore(1 * MiB, 4096)
    assert (store.block_size, store.num_blocks) == (4096, 256)
    store.write(0, bytes(8192), 5)
    store.unmap(0, 1, 7)
    assert store.high_seq == 7
    assert store.read(0, 2) == bytes(8192)
    assert store.read_extents(0, 2) == [store.read_extents(0, 2)[0]]
    assert store.read_extents(0, 2)[0].fd is None
    assert store.block_seqs(0, 2) == [0, 0]
    assert store.lba_status(10, 1000) == LbaStatus(10, 246, True)
    with pytest.raises(StoreError):
        store.read(256, 1)
    with pytest.raises(StoreError):
        store.write(0, bytes(100), 1)
    with pytest.raises(StoreError):
        store.resize(10)
    store.resize(512)
    assert store.num_blocks == 512
    store.flush()
    store.close()
