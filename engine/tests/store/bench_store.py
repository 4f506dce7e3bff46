"""Micro-benchmark of the store data path (not a test: it prints, asserts nothing).

    .venv/bin/python engine/tests/store/bench_store.py [--size-gib 2] [--block-size 512]

Random 4 KiB and 1 MiB writes and reads on a volume with no snapshot (the fast path),
then on the same volume with a snapshot below the head (reads resolving to the frozen
layer, then to the head), then on ``NullStore``; and the peak resident size.
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from collections.abc import Callable
from typing import Any

from cairn.store import EmbeddedPool, NullStore


def rate(label: str, n: int, fn: Callable[[int], None]) -> None:
    t0 = time.perf_counter()
    fn(n)
    dt = time.perf_counter() - t0
    print(f"{label:<48} {n / dt:>11,.0f} ops/s {dt / n * 1e6:9.2f} us/op", flush=True)


class Bench:
    def __init__(self, store: Any, label: str, seq: int = 0) -> None:
        self.store = store
        self.label = label
        self.seq = seq
        bs = store.block_size
        nb = store.num_blocks
        rnd = random.Random(1)
        self.buf4k = memoryview(bytearray(rnd.randbytes(4096)))
        self.buf1m = memoryview(bytearray(rnd.randbytes(1 << 20)))
        self.c4 = 4096 // bs
        self.c1 = (1 << 20) // bs
        self.lbas4k = [rnd.randrange(0, nb // self.c4) * self.c4 for _ in range(4096)]
        self.lbas1m = [rnd.randrange(0, nb // self.c1) * self.c1 for _ in range(256)]

    def w4(self, n: int) -> None:
        store, buf, lbas, seq = self.store, self.buf4k, self.lbas4k, self.seq
        for i in range(n):
            seq += 1
            store.write(lbas[i & 4095], buf, seq)
        self.seq = seq

    def r4(self, n: int) -> None:
        store, lbas, c = self.store, self.lbas4k, self.c4
        for i in range(n):
            store.read(lbas[i & 4095], c)

    def e4(self, n: int) -> None:
        store, lbas, c = self.store, self.lbas4k, self.c4
        for i in range(n):
            store.read_extents(lbas[i & 4095], c)

    def w1(self, n: int) -> None:
        store, buf, lbas, seq = self.store, self.buf1m, self.lbas1m, self.seq
        for i in range(n):
            seq += 1
            store.write(lbas[i & 255], buf, seq)
        self.seq = seq

    def r1(self, n: int) -> None:
        store, lbas, c = self.store, self.lbas1m, self.c1
        for i in range(n):
            store.read(lbas[i & 255], c)

    def writes(self, first: bool) -> None:
        if first:  # the first write of a region allocates pages and blocks: slower
            rate(f"{self.label}: write 1 MiB, first time", 256, self.w1)
            self.w4(4096)
        rate(f"{self.label}: write 4 KiB", 100_000, self.w4)
        rate(f"{self.label}: write 1 MiB", 1_000, self.w1)

    def reads(self, note: str = "") -> None:
        rate(f"{self.label}: read 4 KiB{note}", 100_000, self.r4)
        rate(f"{self.label}: read_extents 4 KiB{note}", 100_000, self.e4)
        rate(f"{self.label}: read 1 MiB{note}", 1_000, self.r1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=2)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    bs = args.block_size
    size = int(args.size_gib * (1 << 30)) // bs * bs
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, EmbeddedPool(tmp) as pool:
        vol = pool.create_volume("bench", size, bs)
        b = Bench(vol, "no snapshot")
        b.writes(first=True)
        b.reads()
        vol.snapshot_create("s")
        b.label = "1 snapshot"
        b.reads(" (from snapshot layer)")
        b.writes(first=True)
        b.reads(" (from head)")
        vol.close()
    n = Bench(NullStore(size, bs), "null store")
    n.writes(first=False)
    n.reads()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB (volume {size / (1 << 30):.1f} GiB, block size {bs})")


if __name__ == "__main__":
    main()
