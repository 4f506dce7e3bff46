"""The benchmark cases and the client tools that run them (``qemu-img bench``, ``iscsi-perf``).

Each tool run is recorded in a raw log: the command line, its exit code, stdout and stderr.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
KIB = 1 << 10
PATTERN = "0xa5"  # written data is never all zeros, so no store can take it for a hole
FILL_REQUEST = MIB
FILL_DEPTH = 8
BLOCK_SIZE = 512  # logical block size of every target (the default of both)


class ToolError(Exception):
    """A client tool failed or printed no result."""

    def __init__(self, message: str, argv: list[str], output: str) -> None:
        super().__init__(f"{message}\n$ {' '.join(argv)}\n{output[-3000:]}")
        self.argv = argv
        self.output = output


@dataclass(frozen=True)
class Case:
    """One workload: a tool, a request size, a queue depth, read or write."""

    name: str
    title: str
    tool: str  # "qemu-img" or "iscsi-perf"
    write: bool
    request: int  # bytes per request
    depth: int  # requests in flight
    count: int  # requests per run (qemu-img), full mode
    quick_count: int
    unit: str  # the headline figure: "IOPS" or "MiB/s"
    random: bool = False  # iscsi-perf: random offsets (-r) instead of sequential


_QEMU = "qemu-img"
CASES: tuple[Case, ...] = (
    Case("read-4k", "4 KiB sequential read, QD 32 (qemu-img bench)", _QEMU,
         write=False, request=4 * KIB, depth=32, count=120_000, quick_count=10_000, unit="IOPS"),
    Case("write-4k", "4 KiB sequential write, QD 32 (qemu-img bench)", _QEMU,
         write=True, request=4 * KIB, depth=32, count=150_000, quick_count=12_000, unit="IOPS"),
    Case("read-1m", "1 MiB sequential read, QD 8 (qemu-img bench)", _QEMU,
         write=False, request=MIB, depth=8, count=5_120, quick_count=384, unit="MiB/s"),
    Case("write-1m", "1 MiB sequential write, QD 8 (qemu-img bench)", _QEMU,
         write=True, request=MIB, depth=8, count=3_072, quick_count=256, unit="MiB/s"),
    Case("perf-rand-4k", "4 KiB random read, QD 32 (iscsi-perf -r)", "iscsi-perf",
         write=False, request=4 * KIB, depth=32, count=0, quick_count=0, unit="IOPS",
         random=True),
    # Plain READs of 1 MiB: qemu's iscsi driver asks GET LBA STATUS before reads of 32 KiB
    # or more from a thin-provisioned LUN and skips the read where the blocks are unmapped,
    # which is all of the null store; this case gives the 1 MiB read figure of the null store.
    Case("perf-seq-1m", "1 MiB sequential read, QD 8 (iscsi-perf)", "iscsi-perf",
         write=False, request=MIB, depth=8, count=0, quick_count=0, unit="MiB/s"),
)  # fmt: skip
CASE_NAMES = tuple(c.name for c in CASES)


@dataclass(frozen=True)
class Measurement:
    """What one run achieved."""

    seconds: float
    ios: float
    request: int
    cpu_seconds: float | None = None  # the target's CPU time during the run

    @property
    def iops(self) -> float:
        return self.ios / self.seconds

    @property
    def mib_s(self) -> float:
        return self.ios * self.request / self.seconds / MIB

    def value(self, unit: str) -> float:
        return self.iops if unit == "IOPS" else self.mib_s

    @property
    def cpu_us_per_io(self) -> float | None:
        if self.cpu_seconds is None or not self.ios:
            return None
        return self.cpu_seconds / self.ios * 1e6


def run_tool(
    argv: list[str], timeout: float, log: Path, alive: Callable[[], bool] | None = None
) -> str:
    """Run a client tool, append what it did to ``log`` and return its stdout.

    ``alive`` is asked twice a second whether the target still runs; when it no longer does,
    the tool (which would otherwise keep trying to reconnect) is stopped.  Raises ToolError
    when the tool fails, times out, or its target dies."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, errors="replace",
    )  # fmt: skip
    try:
        out, err, problem = _wait(proc, started + timeout, alive)
        if problem == "timed out":
            problem += f" after {timeout:.0f} s"
    except BaseException:  # interrupted: leave no client behind
        proc.kill()
        proc.wait()
        raise
    rc = proc.returncode
    elapsed = time.monotonic() - started
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n# exit code {rc}, {elapsed:.3f} s wall")
        f.write(f"{'; ' + problem if problem else ''}\n")
        f.write(f"--- stdout ---\n{out.replace(chr(13), chr(10))}\n--- stderr ---\n{err}\n\n")
    if problem or rc != 0:
        raise ToolError(f"{argv[0]} {problem or f'exited with {rc}'}", argv, out + err)
    return out


def _wait(
    proc: subprocess.Popen[str], deadline: float, alive: Callable[[], bool] | None
) -> tuple[str, str, str | None]:
    """stdout, stderr and what went wrong (None: it exited on its own)."""
    while True:
        try:
            out, err = proc.communicate(timeout=0.5)
            return out, err, None
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                problem = "timed out"
            elif alive is not None and not alive():
                problem = "stopped: the target is no longer running"
            else:
                continue
        proc.kill()
        out, err = proc.communicate()
        return out, err, problem


# --------------------------------------------------------------------------- qemu-img bench


def qemu_img_bench(
    url: str, request: int, depth: int, count: int, write: bool, offset: int = 0
) -> list[str]:
    argv = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-s", str(request)]
    argv += ["-d", str(depth), "-c", str(count), "-o", str(offset)]
    if write:
        argv += ["-w", f"--pattern={PATTERN}"]
    return [*argv, url]


_COMPLETED = re.compile(r"Run completed in ([0-9.]+) seconds")


def parse_qemu_img_bench(argv: list[str], stdout: str) -> float:
    """Seconds from ``Run completed in X seconds.``"""
    m = _COMPLETED.search(stdout)
    if not m:
        raise ToolError("qemu-img bench printed no 'Run completed' line", argv, stdout)
    return max(float(m.group(1)), 1e-3)


def qemu_img_timeout(count: int, request: int) -> float:
    """Generous: 2 minutes plus 5 MiB/s or 1000 requests/s, whichever is slower."""
    return 120.0 + max(count * request / (5 * MIB), count / 1000)


def sweep(
    url: str, length: int, write: bool, log: Path, alive: Callable[[], bool] | None = None
) -> None:
    """Read (to warm) or write (to fill) the first ``length`` bytes in 1 MiB requests."""
    count = max(1, -(-length // FILL_REQUEST))
    argv = qemu_img_bench(url, FILL_REQUEST, FILL_DEPTH, count, write)
    run_tool(argv, qemu_img_timeout(count, FILL_REQUEST), log, alive)


def run_qemu_img_case(
    url: str, case: Case, count: int, log: Path, alive: Callable[[], bool] | None = None
) -> Measurement:
    argv = qemu_img_bench(url, case.request, case.depth, count, case.write)
    out = run_tool(argv, qemu_img_timeout(count, case.request), log, alive)
    return Measurement(parse_qemu_img_bench(argv, out), count, case.request)


def read_region(case: Case, count: int, volume: int) -> int:
    """The bytes a read case touches: the start of the volume, or all of it."""
    if case.tool == "iscsi-perf":
        return volume
    return min(volume, case.request * count)


# --------------------------------------------------------------------------- iscsi-perf


def iscsi_perf(url: str, request: int, depth: int, seconds: int, random: bool) -> list[str]:
    blocks = max(1, request // BLOCK_SIZE)
    argv = ["iscsi-perf", "-m", str(depth), "-b", str(blocks), "-t", str(seconds)]
    return [*argv, "-r", url] if random else [*argv, url]


_AVERAGE = re.compile(r"iops average (\d+)")
_FINAL = re.compile(r"(?:^|[\r\n])\s*iops average (\d+)")
_FAILED = re.compile(r"failed|error", re.IGNORECASE)


def parse_iscsi_perf(argv: list[str], stdout: str) -> float:
    """The final ``iops average N`` of iscsi-perf (over the whole run)."""
    if _FAILED.search(stdout):
        raise ToolError("iscsi-perf reported a failure", argv, stdout)
    final = _FINAL.findall(stdout) or _AVERAGE.findall(stdout)
    if not final:
        raise ToolError("iscsi-perf printed no 'iops average'", argv, stdout)
    return float(final[-1])


def run_iscsi_perf_case(
    url: str, case: Case, seconds: int, log: Path, alive: Callable[[], bool] | None = None
) -> Measurement:
    argv = iscsi_perf(url, case.request, case.depth, seconds, case.random)
    out = run_tool(argv, seconds + 120.0, log, alive)
    iops = parse_iscsi_perf(argv, out)
    return Measurement(float(seconds), iops * seconds, case.request)
