"""Child process of the crash tests: opens a volume and writes until it is killed.

    python crash_child.py POOL_CLASS POOL_PATH VOLUME [MODE]

Every operation is a pure function of its seq (``plan``), and the data of a write
names its seq and block (``block``), so the parent can check, block by block, that the
data on disk is the data of the seq recorded for it.  MODE "kill-*" makes the process
SIGKILL itself at one exact point of the next write or unmap (embedded store only); with
"-lent" appended, that write's data is in a payload area the store lent.
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import sys


def plan(seq: int, num_blocks: int) -> tuple[str, int, int]:
    rnd = random.Random(seq)
    op = "unmap" if rnd.random() < 0.15 else "write"
    count = rnd.randint(1, 3000) if rnd.random() < 0.03 else rnd.randint(1, 64)
    count = min(count, num_blocks)
    return op, rnd.randrange(0, num_blocks - count + 1), count


def block(seq: int, lba: int, bs: int) -> bytes:
    return (seq.to_bytes(8, "little") + lba.to_bytes(8, "little")) * (bs // 16)


def payload(seq: int, lba: int, count: int, bs: int) -> bytes:
    return b"".join(block(seq, b, bs) for b in range(lba, lba + count))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(mode: str) -> None:
    """Patch the embedded store so that the process dies at the point named by mode."""
    import cairn.store.embedded as emb

    real_pwrite = os.pwrite
    real_punch = emb.punch_hole

    def pwrite_then_die(fd: int, data: object, offset: int) -> int:
        n = real_pwrite(fd, data, offset)  # type: ignore[arg-type]
        _die()
        return n

    def die_instead_of_pwrite(fd: int, data: object, offset: int) -> int:
        _die()
        return 0

    def punch_then_die(fd: int, offset: int, length: int) -> None:
        real_punch(fd, offset, length)
        _die()

    if mode == "kill-after-data":
        emb.os.pwrite = pwrite_then_die  # type: ignore[assignment]
    elif mode == "kill-before-data":
        emb.os.pwrite = die_instead_of_pwrite  # type: ignore[assignment]
    elif mode == "kill-after-punch":
        emb.punch_hole = punch_then_die  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown mode {mode}")


def main() -> None:
    pool_class, path, name = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "run"
    module, cls = pool_class.split(":")
    pool = getattr(importlib.import_module(module), cls)(path)
    vol = pool.open_volume(name)
    nb, bs = vol.num_blocks, vol.block_size
    seq = vol.high_seq
    print("ready", seq, flush=True)
    if mode != "run":
        sys.stdin.readline()  # the parent says when
        seq += 1
        data: object = payload(seq, 10, 20, bs)
        if mode.endswith("-lent"):  # the data sits in a payload area the store lent
            mode = mode.removesuffix("-lent")
            lent = vol.payload_buffer(20 * bs)
            assert lent is not None, "the store lent no payload area"
            lent[1][:] = data
            data = lent[1]
        _arm(mode)
        if mode == "kill-after-punch":
            vol.unmap(10, 20, seq)
        else:
            vol.write(10, data, seq)
        raise SystemExit("still alive")
    while True:
        seq += 1
        op, lba, count = plan(seq, nb)
        if op == "write":
            vol.write(lba, payload(seq, lba, count, bs), seq)
        else:
            vol.unmap(lba, count, seq)


if __name__ == "__main__":
    main()
