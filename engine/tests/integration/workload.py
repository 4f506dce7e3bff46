"""A workload that writes verifiable data through a real initiator (QEMU's iSCSI driver,
via ``qemu-io``) and a checker that knows which writes were acknowledged.

The volume is cut in regions of 64 KiB.  Every write fills one whole region with the
byte of its generation (1, 2, 3, ... per region), so a region read back says which
write it holds.  A write counts as acknowledged once ``qemu-io`` printed that it wrote
it.  A read of a region is correct when it holds one generation throughout, at least
the last one acknowledged before the read began, and at most the last one attempted.
"""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REGION = 64 << 10
RUNNING: list[Workload] = []  # every workload made, so that teardown can stop them
MAX_GEN = 250  # byte values; a region is not written more often than this


@dataclass
class Ledger:
    regions: int
    acked: dict[int, int] = field(default_factory=dict)  # region -> last acknowledged gen
    attempted: dict[int, int] = field(default_factory=dict)  # region -> last gen sent
    writes_acked: int = 0
    writes_failed: int = 0
    reads_checked: int = 0
    lost: list[str] = field(default_factory=list)  # acknowledged, then read older
    stale: list[str] = field(default_factory=list)  # any read that broke the rule
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, data: bytes, floor: dict[int, int], what: str, final: bool = False) -> None:
        with self.lock:
            ceiling = dict(self.attempted)
        for reg in range(self.regions):
            chunk = data[reg * REGION : (reg + 1) * REGION]
            gen = chunk[0]
            if chunk.count(gen) != len(chunk):
                self.stale.append(f"{what}: region {reg} is torn")
                continue
            want = floor.get(reg, 0)
            if gen < want:
                (self.lost if final else self.stale).append(
                    f"{what}: region {reg} holds generation {gen}, {want} was acknowledged"
                )
            elif gen > ceiling.get(reg, 0):
                self.stale.append(f"{what}: region {reg} holds generation {gen}, never written")
        self.reads_checked += 1


class Workload:
    """Writes in batches from a background thread until ``stop``."""

    def __init__(self, url: str, size: int, seed: int, log: Path) -> None:
        self.url = url
        self.size = size
        self.rng = random.Random(seed)
        self.ledger = Ledger(size // REGION)
        self.log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        RUNNING.append(self)

    # ------------------------------------------------------------------ writes
    def batch(self, n: int = 4, timeout: float = 60.0) -> None:
        led = self.ledger
        cmds: list[tuple[int, int]] = []
        with led.lock:
            for _ in range(n):
                reg = self.rng.randrange(led.regions)
                gen = led.attempted.get(reg, 0) + 1
                if gen > MAX_GEN:
                    continue
                led.attempted[reg] = gen
                cmds.append((reg, gen))
        if not cmds:
            return
        argv = ["qemu-io", "-f", "raw"]
        for reg, gen in cmds:
            argv += ["-c", f"write -P {gen} {reg * REGION} {REGION}"]
        argv.append(self.url)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._proc = proc
        try:
            text, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        finally:
            self._proc = None
        done = re.findall(r"^wrote \d+/\d+ bytes at offset (\d+)", text, re.M)
        acked = {int(off) // REGION for off in done}
        with led.lock:
            for reg, gen in cmds:
                if reg in acked:
                    led.acked[reg] = max(led.acked.get(reg, 0), gen)
                    led.writes_acked += 1
                else:
                    led.writes_failed += 1
        with open(self.log, "a") as f:
            f.write(f"{time.time():.3f} batch {cmds} acked {sorted(acked)}\n")
            if len(acked) < len(cmds):
                f.write(text[-2000:] + "\n")

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.batch(self.rng.randint(1, 6))

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.kill()

    def kill(self) -> None:
        """No initiator left behind (a failed test may leave one waiting for a target
        that is gone)."""
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    # ------------------------------------------------------------------ reads
    def read_all(self, timeout: float = 60.0) -> bytes | None:
        """The whole volume through the initiator, or None if the read failed."""
        dump = self.log.with_suffix(".dump")
        r = subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "raw", self.url, str(dump)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            return None
        data = dump.read_bytes()
        return data if len(data) >= self.size else data + bytes(self.size - len(data))

    def check_read(self, what: str = "read") -> bool:
        with self.ledger.lock:
            floor = dict(self.ledger.acked)
        data = self.read_all()
        if data is None:
            return False
        self.ledger.check(data, floor, what)
        return True
