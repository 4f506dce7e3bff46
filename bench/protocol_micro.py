"""Cost per command of the sans-IO protocol path (iSCSI + SCSI layers), no sockets.

Feeds batches of 32 READ(10) or WRITE(10) commands of 4 KiB to one logged-in
``Connection`` in front of a null-store LUN and reports microseconds per command:
what the target spends in Python for each I/O before any system call.

    .venv/bin/python bench/protocol_micro.py [--commands N] [--op read|write]
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from cairn.blockdev import ReadRun  # noqa: E402
from cairn.scsi import LogicalUnit, ScsiTarget  # noqa: E402
from cairn.store import EmbeddedPool, NullStore  # noqa: E402
from cairn.volume import LocalVolume, MemorySeqSource  # noqa: E402
from tests.unit.iscsi_helpers import make_connection, plain_login, scsi_cmd  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", type=int, default=200_000)
    ap.add_argument("--op", choices=["read", "write"], default="read")
    ap.add_argument("--store", choices=["null", "embedded"], default="null")
    args = ap.parse_args()
    if args.store == "null":
        device = LocalVolume(NullStore(1 << 30), MemorySeqSource())
    else:
        tmp = tempfile.mkdtemp(prefix="cairn-micro-")
        store = EmbeddedPool(tmp).create_volume("micro", 1 << 30, 512)
        device = LocalVolume.open(store, Path(tmp) / "micro.seq")
    lu = LogicalUnit(device, serial="0", naa=bytes(8), thin=True)
    conn, _ = make_connection(backend=ScsiTarget({0: lu}))  # type: ignore[arg-type]
    assert plain_login(conn).login_status == 0
    conn.out.clear()
    blocks = 8
    payload = bytes(4096)
    batch = 32
    done = 0
    cmdsn = 1
    spent = 0.0
    while done < args.commands:
        pdus = []
        for i in range(batch):
            lba = ((done + i) * blocks) % (1 << 20)
            op = 0x28 if args.op == "read" else 0x2A
            cdb = struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)
            if args.op == "read":
                pdus.append(scsi_cmd(cdb, done + i + 1, cmdsn, edtl=4096, read=True))
            else:
                pdus.append(scsi_cmd(cdb, done + i + 1, cmdsn, 4096, write=True, data=payload))
            cmdsn += 1
        buf = memoryview(b"".join(pdus))
        t0 = time.perf_counter()
        used = conn.feed(buf)
        out = conn.out
        conn.out = []
        spent += time.perf_counter() - t0
        answers = sum(len(it.headers) if isinstance(it, ReadRun) else 1 for it in out)
        assert used == len(buf) and answers >= batch, "the connection did not answer"
        done += batch
    print(f"{args.op} ({args.store}): {spent / done * 1e6:.2f} us per command in Connection.feed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
