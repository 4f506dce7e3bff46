"""Conformance: a writer killed with SIGKILL leaves every block with the data of the
seq recorded for it."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import Harness
from .crash_child import block, plan

CHILD = Path(__file__).with_name("crash_child.py")


def start_child(harness: Harness, name: str, mode: str = "run") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), harness.kind.pool_class, str(harness.path), name, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line
    return proc


def check_blocks(vol: Any) -> int:
    """Check every block against the plan; return how many blocks hold data."""
    nb, bs = vol.num_blocks, vol.block_size
    seqs = vol.block_seqs(0, nb)
    data = vol.read(0, nb)
    zeros = bytes(bs)
    written = 0
    for lba, seq in enumerate(seqs):
        got = data[lba * bs : (lba + 1) * bs]
        if seq == 0:
            assert got == zeros, f"block {lba} never written but not zero"
            continue
        op, start, count = plan(seq, nb)
        assert start <= lba < start + count, f"block {lba} has seq {seq} of another range"
        if op == "unmap":
            assert got == zeros, f"block {lba} unmapped by seq {seq} but not zero"
        else:
            assert got == block(seq, lba, bs), f"block {lba}: data is not that of seq {seq}"
            written += 1
    assert vol.high_seq >= max(seqs)
    return written


def test_sigkill_leaves_consistent_blocks(harness: Harness) -> None:
    vol = harness.create(4 << 20, 512)
    name = vol.name
    vol.close()
    rnd = random.Random(7)
    high = 0
    for _ in range(4):
        proc = start_child(harness, name)
        time.sleep(rnd.uniform(0.1, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        vol = harness.pool.open_volume(name)
        assert vol.high_seq > high, "the writer made no progress"
        high = vol.high_seq
        assert check_blocks(vol) > 0
        vol.close()
