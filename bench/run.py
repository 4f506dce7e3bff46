"""Benchmark Cairn against tgt over libiscsi, side by side on this machine.

Runs tgt and ``cairn target serve`` (embedded store, the null store as the ceiling of the
protocol path, and replicated volumes of 1 and 3 replicas on pool servers of their own)
on loopback, drives them with ``qemu-img bench`` and ``iscsi-perf -r`` in alternating
runs, prints the median of every case for every target and the ratios Cairn/tgt,
null/tgt, 3 replicas/tgt and 3 replicas/1 replica as Markdown, the peak memory (VmHWM) of
each target process and pool server, and how fast a replica is rebuilt.  Raw tool output,
the targets' stderr and a JSON summary go to bench/results/<timestamp>/.  See
bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from rebuild import RebuildBench, RebuildResult
from rebuild import markdown as rebuild_markdown
from report import (
    READ_TARGET,
    WRITE_TARGET,
    CaseResult,
    cpu_table,
    issue_table,
    memory_table,
    results_table,
    runs_table,
)
from targets import CairnTarget, ReplicatedTarget, Target, TargetError, TgtTarget, find_cairn
from workloads import (
    CASE_NAMES,
    CASES,
    MIB,
    Case,
    Measurement,
    ToolError,
    read_region,
    run_iscsi_perf_case,
    run_qemu_img_case,
    sweep,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
TARGET_LABELS = {
    "tgt": "tgt",
    "cairn": "Cairn",
    "null": "Cairn null",
    "rep1": "Cairn 1 replica",
    "rep3": "Cairn 3 replicas",
}
REPLICAS = {"rep1": 1, "rep3": 3}  # the replicated targets and their replica counts
REBUILD = "rebuild"  # the rebuild measurement, on rep3 (bench/rebuild.py)
REBUILD_TARGET = "rep3"
TOOLS = ("qemu-img", "iscsi-perf")


@dataclass(frozen=True)
class Defaults:
    runs: int
    size: int
    seconds: int  # of each iscsi-perf run
    rebuild_runs: int  # foreground runs on the healthy volume, before and after the rebuilds
    rebuild_limit: int  # --rebuild-rate of the limited rebuild, bytes/s (0: none)


FULL = Defaults(runs=5, size=1 << 30, seconds=5, rebuild_runs=5, rebuild_limit=64 << 20)
QUICK = Defaults(runs=2, size=256 << 20, seconds=1, rebuild_runs=2, rebuild_limit=0)
_SIZE = re.compile(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


# --------------------------------------------------------------------------- options


def parse_bytes(text: str) -> int:
    """Bytes in ``1G``, ``256M``, ``1GiB``, ``1073741824`` (binary suffixes)."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 1G, 256M)")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))


def parse_size(text: str) -> int:
    """A volume size: ``parse_bytes``, a whole number of MiB, at least 16 MiB."""
    size = parse_bytes(text)
    if size < 16 * MIB or size % MIB:
        raise argparse.ArgumentTypeError(f"size {text!r} must be a whole number of MiB >= 16")
    return size


def name_list(allowed: Sequence[str]):  # type: ignore[no-untyped-def]
    """An argparse type: comma-separated names out of ``allowed``, in the given order."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(allowed)}"
            )
        return list(dict.fromkeys(names))

    return parse


def case_help() -> str:
    lines = [f"  {c.name:<14} {c.title}" for c in CASES]
    lines.append(
        f"  {REBUILD:<14} rebuild of one whole replica of {TARGET_LABELS[REBUILD_TARGET]}, idle "
        "and under 4 KiB writes (needs the rep3 target; runs last)"
    )
    return "\n".join(lines)


DESCRIPTION = """\
Benchmark Cairn against tgt on loopback, with qemu-img bench and iscsi-perf (libiscsi).

Starts five targets, each serving one volume: tgt (a sparse backing file), Cairn on its
embedded store, Cairn on the null store (writes discarded, reads return zeros: the ceiling
of Cairn's protocol path on this machine), and Cairn replicated over 1 and over 3 pool
servers (each pool server a process of its own, on 127.0.0.2, .3, .4).  Fills every volume
once, then runs each case --runs times, alternating the targets within each round.  Every
read run is preceded by a read pass over the same region, so that all targets read from
the page cache.  Last, the rebuild case: one replica of the 3-replica volume is deleted and
rebuilt, idle and under 4 KiB writes.

Prints Markdown: the median per case and target with the ratios Cairn/tgt, null/tgt,
3 replicas/tgt and 3 replicas/1 replica, whether the replication issue's targets were met,
the peak memory (VmHWM) of every target process against the 100 MiB budget (and of the
pool servers), every run's figure, the CPU time per I/O (target plus pool servers) and the
rebuild figures.  Raw tool output, the targets' stderr, report.md and results.json go to
bench/results/<timestamp>/.

Exit status: 0 every run succeeded, 1 some run or target failed, 2 could not start."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description=DESCRIPTION,
        epilog=f"cases:\n{case_help()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, help="runs per case and target (default 5; --quick: 2)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 runs, 256M volumes, about 1/12 of the requests, 1 s iscsi-perf",
    )
    p.add_argument(
        "--cases",
        type=name_list((*CASE_NAMES, REBUILD)),
        metavar="LIST",
        help=f"comma-separated cases to run (default: all; {REBUILD} only when the targets "
        f"include {REBUILD_TARGET}; see below)",
    )
    p.add_argument(
        "--targets",
        type=name_list(tuple(TARGET_LABELS)),
        metavar="LIST",
        help=f"comma-separated targets, out of {','.join(TARGET_LABELS)} (default: all; "
        f"with --cases {REBUILD} alone: {REBUILD_TARGET})",
    )
    p.add_argument(
        "--size", type=parse_size, help="volume size of every target (default 1G; --quick: 256M)"
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the request counts of the qemu-img cases (default 1: runs of 2-5 s)",
    )
    p.add_argument(
        "--seconds", type=int, help="length of each iscsi-perf run (default 5; --quick: 1)"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=BENCH_DIR / "results",
        help="where the <timestamp> directory of raw outputs goes (default: bench/results)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="where the volumes' data goes (a fresh temporary directory in it, removed at "
        "the end; default: the system's temporary directory)",
    )
    p.add_argument("--keep-data", action="store_true", help="do not remove the volumes' data")
    p.add_argument(
        "--rebuild-limit",
        type=parse_bytes,
        metavar="RATE",
        help="rebuild once more with the target's --rebuild-rate RATE bytes/s (K/M/G "
        "suffixes; 0: not) (default 64M; --quick: 0)",
    )
    p.add_argument(
        "--rebuild-runs",
        type=int,
        help="foreground runs on the healthy volume before and after the rebuilds "
        "(default 5; --quick: 2)",
    )
    args = p.parse_args(argv)
    if args.targets is None:
        only_rebuild = args.cases == [REBUILD]
        args.targets = [REBUILD_TARGET] if only_rebuild else list(TARGET_LABELS)
    if args.cases is None:
        args.cases = [*CASE_NAMES, REBUILD] if REBUILD_TARGET in args.targets else list(CASE_NAMES)
    if REBUILD in args.cases and REBUILD_TARGET not in args.targets:
        p.error(f"the {REBUILD} case needs the {REBUILD_TARGET} target (--targets)")
    if args.rebuild_runs is not None and args.rebuild_runs < 1:
        p.error("--rebuild-runs must be at least 1")
    if args.runs is not None and args.runs < 1:
        p.error("--runs must be at least 1")
    if args.seconds is not None and args.seconds < 1:
        p.error("--seconds must be at least 1")
    if args.scale <= 0:
        p.error("--scale must be positive")
    return args


@dataclass
class Plan:
    """What to run, with every default resolved."""

    runs: int
    size: int
    seconds: int
    cases: list[Case]
    counts: dict[str, int]
    targets: list[str]
    quick: bool
    scale: float
    rebuild: bool = False
    rebuild_runs: int = 0
    rebuild_limit: int = 0

    @property
    def labels(self) -> dict[str, str]:
        return {t: TARGET_LABELS[t] for t in self.targets}

    def to_json(self) -> dict[str, object]:
        return {
            "runs": self.runs,
            "volume_bytes": self.size,
            "iscsi_perf_seconds": self.seconds,
            "cases": [c.name for c in self.cases],
            "qemu_img_counts": self.counts,
            "targets": self.targets,
            "quick": self.quick,
            "scale": self.scale,
            "rebuild": self.rebuild,
            "rebuild_healthy_runs": self.rebuild_runs,
            "rebuild_rate_limit": self.rebuild_limit,
        }


def make_plan(args: argparse.Namespace) -> Plan:
    defaults = QUICK if args.quick else FULL
    cases = [c for c in CASES if c.name in args.cases]
    counts = {
        c.name: max(1, round((c.quick_count if args.quick else c.count) * args.scale))
        for c in cases
        if c.tool == "qemu-img"
    }
    return Plan(
        runs=args.runs or defaults.runs,
        size=args.size or defaults.size,
        seconds=args.seconds or defaults.seconds,
        cases=cases,
        counts=counts,
        targets=[t for t in TARGET_LABELS if t in args.targets],
        quick=args.quick,
        scale=args.scale,
        rebuild=REBUILD in args.cases,
        rebuild_runs=args.rebuild_runs or defaults.rebuild_runs,
        rebuild_limit=defaults.rebuild_limit if args.rebuild_limit is None else args.rebuild_limit,
    )


def missing_tools(plan: Plan) -> list[str]:
    needed = list(TOOLS)
    if "tgt" in plan.targets:
        needed += ["tgtd", "tgtadm"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if {"cairn", "null", *REPLICAS} & set(plan.targets):
        try:
            find_cairn()
        except TargetError:
            missing.append("cairn")
    return missing


# --------------------------------------------------------------------------- the run


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the figures."""
    return Path("/proc/loadavg").read_text().split()[:3]


@dataclass
class Bench:
    """The state of one benchmark: its plan, targets, results and failures."""

    plan: Plan
    out_dir: Path
    targets: list[Target]
    results: list[CaseResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)
    peak_after: dict[str, dict[str, int | None]] = field(default_factory=dict)
    peaks: dict[str, int | None] = field(default_factory=dict)
    pool_peaks: dict[str, dict[str, int | None]] = field(default_factory=dict)
    rebuild: RebuildResult | None = None
    load_before: list[str] = field(default_factory=loadavg)

    @property
    def raw_dir(self) -> Path:
        return self.out_dir / "raw"

    def note_peak(self, target: Target) -> None:
        """Keep the highest VmHWM seen of the target and its pool servers, so that a
        process that dies or restarts later still has one."""
        kib = target.peak_rss_kib()
        if kib is not None:
            self.peaks[target.name] = max(kib, self.peaks.get(target.name) or 0)
        pools = self.pool_peaks.setdefault(target.name, {})
        for pool, kib in target.pool_peaks_kib().items():
            if kib is not None or pool not in pools:
                pools[pool] = max(kib or 0, pools.get(pool) or 0) or None

    def working(self) -> list[Target]:
        return [t for t in self.targets if t.name not in self.broken]

    def fail(self, target: Target, what: str, error: Exception) -> None:
        """Record a failure; a target whose process died is not used again."""
        message = f"{target.label}, {what}: {error}"
        if not target.alive and target.name not in self.broken:
            self.broken.add(target.name)
            target.died = True
            code = target.proc.returncode if target.proc else None
            message += (
                f"\n{target.label} is no longer running (exit code {code}); "
                f"tail of its stderr ({target.stderr_path}):\n{target.stderr_tail()}"
            )
        self.errors.append(message)
        log(f"FAILED: {message}")


_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr, stamped with the seconds since the start."""
    print(f"{time.monotonic() - _T0:6.1f}s {message}", file=sys.stderr, flush=True)


def make_targets(plan: Plan, data_root: Path, out_dir: Path) -> list[Target]:
    made: list[Target] = []
    for name in plan.targets:
        data = data_root / name
        label = TARGET_LABELS[name]
        if name == "tgt":
            made.append(TgtTarget(name, label, plan.size, data, out_dir))
        elif name in REPLICAS:
            made.append(
                ReplicatedTarget(name, label, plan.size, data, out_dir, replicas=REPLICAS[name])
            )
        else:
            store = "null" if name == "null" else "embedded"
            made.append(CairnTarget(name, label, plan.size, data, out_dir, store=store))
    return made


def start_targets(bench: Bench) -> None:
    """Start every target; one that cannot start is left out of the runs."""
    for target in bench.targets:
        try:
            target.start()
        except TargetError as e:
            bench.broken.add(target.name)
            bench.errors.append(f"{target.label} did not start:\n{e}")
            log(f"FAILED: {target.label} did not start:\n{e}")
            continue
        target.started = True
        log(f"started {target.label} (pid {target.pid}) at {target.url}")
    if not bench.working():
        raise TargetError("no target started")


def fill_volumes(bench: Bench) -> None:
    """Write every block once, so that reads hit data on every target, never holes."""
    for target in bench.working():
        started = time.monotonic()
        try:
            raw = bench.raw_dir / f"fill.{target.name}.log"
            sweep(target.url, bench.plan.size, True, raw, target.is_alive)
        except ToolError as e:
            bench.fail(target, "filling the volume", e)
            continue
        log(f"filled {target.label}'s volume in {time.monotonic() - started:.1f} s")


def flush_all(bench: Bench) -> None:
    """Write every target's dirty data to disk, so none is written back during the next run
    (the time this takes is not part of any run)."""
    started = time.monotonic()
    for target in bench.working():
        target.flush()
    took = time.monotonic() - started
    if took > 2:
        log(f"writing the targets' dirty data to disk took {took:.1f} s")


def measure(bench: Bench, target: Target, case: Case, raw: Path) -> Measurement:
    """One run of ``case`` on ``target``, after a flush of the targets' dirty data and, for
    reads, a read pass over the region the run reads (neither is timed)."""
    flush_all(bench)
    if not case.write:
        target.warm()
        region = read_region(case, bench.plan.counts.get(case.name, 0), bench.plan.size)
        sweep(target.url, region, False, raw, target.is_alive)
    cpu_before = target.cpu_seconds()
    if case.tool == "iscsi-perf":
        m = run_iscsi_perf_case(target.url, case, bench.plan.seconds, raw, target.is_alive)
    else:
        count = bench.plan.counts[case.name]
        m = run_qemu_img_case(target.url, case, count, raw, target.is_alive)
    cpu_after = target.cpu_seconds()
    if cpu_before is not None and cpu_after is not None:
        m = replace(m, cpu_seconds=cpu_after - cpu_before)
    problem = target.problem()  # a replicated volume must have stayed healthy
    if problem:
        raise TargetError(f"after the run: {problem}")
    return m


def run_case(bench: Bench, case: Case) -> CaseResult:
    result = CaseResult(case, runs={t.name: [] for t in bench.targets})
    for run in range(1, bench.plan.runs + 1):
        for target in bench.working():
            raw = bench.raw_dir / f"{case.name}.{target.name}.log"
            with open(raw, "a") as f:
                f.write(f"### run {run} of {bench.plan.runs}\n")
            try:
                m = measure(bench, target, case, raw)
            except (ToolError, TargetError) as e:
                result.errors.setdefault(target.name, []).append(str(e))
                bench.fail(target, f"{case.name} run {run}", e)
                continue
            result.runs[target.name].append(m)
            bench.note_peak(target)
            log(
                f"[{case.name} {run}/{bench.plan.runs}] {target.label:<10} "
                f"{m.value(case.unit):>10,.1f} {case.unit} ({m.seconds:.2f} s)"
            )
    return result


def run_all(bench: Bench) -> None:
    start_targets(bench)
    fill_volumes(bench)
    for case in bench.plan.cases:
        bench.results.append(run_case(bench, case))
        bench.peak_after[case.name] = {t.name: t.peak_rss_kib() for t in bench.targets}
    for target in bench.working():
        bench.note_peak(target)
    if bench.plan.rebuild:
        run_rebuild(bench)


def run_rebuild(bench: Bench) -> None:
    """The rebuild measurement on the 3-replica target (bench/rebuild.py)."""
    target = next((t for t in bench.working() if t.name == REBUILD_TARGET), None)
    if not isinstance(target, ReplicatedTarget):
        bench.errors.append(f"{REBUILD}: the {REBUILD_TARGET} target is not running")
        return
    flush_all(bench)
    raw = bench.raw_dir / f"{REBUILD}.{target.name}.log"
    rb = RebuildBench(target, bench.plan.rebuild_runs, bench.plan.rebuild_limit, raw, log)
    bench.rebuild = rb.result
    try:
        rb.run()
    except (ToolError, TargetError, OSError, ValueError) as e:  # OSError: the status API
        bench.fail(target, REBUILD, e)
    bench.errors += [f"{REBUILD}: {e}" for e in rb.result.errors]
    bench.note_peak(target)


def stop_targets(bench: Bench) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for target in bench.targets:
        if target.proc is None:
            continue
        if target.proc.poll() is not None and target.name not in bench.broken:
            bench.errors.append(
                f"{target.label} exited on its own with {target.proc.returncode}:\n"
                f"{target.stderr_tail()}"
            )
        was_running = target.alive
        try:
            codes[target.name] = code = target.stop()
        except (OSError, subprocess.SubprocessError) as e:
            bench.errors.append(f"stopping {target.label}: {e}")
            continue
        if isinstance(target, ReplicatedTarget):
            bench.errors += [f"{target.label}: {e}" for e in target.pool_failures]
        if was_running and code != 0:
            bench.errors.append(
                f"{target.label} exited with {code} when stopped:\n{target.stderr_tail()}"
            )
    return codes


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------- reporting


def command_output(argv: list[str], env: dict[str, str] | None = None) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(out_dir: Path) -> dict[str, object]:
    """The machine and the software measured, for the JSON summary; local changes to
    ``engine/`` go to ``out_dir/engine.diff``."""
    git_env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    dirty = command_output(
        ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no", "engine"],
        git_env,
    )
    diff = command_output(["git", "-C", str(REPO_DIR), "diff", "HEAD", "--", "engine"], git_env)
    if diff:
        (out_dir / "engine.diff").write_text(diff + "\n")
    return {
        "kernel": " ".join(os.uname()[2:4]),
        "cpus": os.cpu_count(),
        "cairn": command_output([find_cairn(), "--version"]),
        "git_commit": command_output(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], git_env),
        "engine_modified": bool(dirty) if dirty is not None else None,
        # which local changes were measured (the same diff gives the same hash; the diff
        # itself is engine.diff beside results.json)
        "engine_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "packages": command_output(
            [
                "dpkg-query",
                "-W",
                "-f",
                "${Package} ${Version}\n",
                "tgt",
                "libiscsi-bin",
                "qemu-utils",
                "qemu-block-extra",
            ]  # fmt: skip
        ),
    }


def markdown(bench: Bench, elapsed: float) -> str:
    plan, labels = bench.plan, bench.plan.labels
    counts = ", ".join(f"{k} {v:,}" for k, v in plan.counts.items())
    replicated = [t for t in plan.targets if t in REPLICAS]
    load = f"Load average before: {' '.join(bench.load_before)}, after: {' '.join(loadavg())}."
    if plan.cases:
        parts = [
            f"## Cairn vs tgt: median of {plan.runs} run(s), {plan.size // MIB} MiB volumes",
            "",
            f"Requests per qemu-img run: {counts or 'none'}; iscsi-perf runs {plan.seconds} s. "
            f"Higher is better; ratios above 1 mean faster than the denominator. {load}",
            "",
        ]
    else:
        parts = [f"## Cairn: {plan.size // MIB} MiB volumes", "", load, ""]
    if replicated:
        parts += [
            f"{' and '.join(labels[t] for t in replicated)}: `cairn target serve --replica ...` "
            "over that many pool servers, each a `cairn pool serve` process of its own on "
            "127.0.0.2, .3, .4 (the same 2 CPUs; the target reaches them through their local "
            "sockets); a write is acknowledged once a majority of the replicas has it (2 of 3); "
            "each read goes to one healthy replica, the same one until it has 256 KiB of reads "
            "in flight, then the least loaded.",
            "",
        ]
    if bench.results:
        parts += [results_table(bench.results, labels), "", *notes(bench)]
    issue = issue_table(bench.results, labels) if bench.results else None
    if issue:
        parts += [
            "### The replication issue's targets",
            "",
            f"3 replicas/tgt at least {WRITE_TARGET:.1f} for the writes (4 KiB and 1 MiB), "
            f"3 replicas/1 replica at least {READ_TARGET:.1f} for the reads; 3 replicas/Cairn "
            "on its local store is shown for the reads as information, with no target.",
            "",
            issue,
            "",
        ]
    parts += [
        "### Peak memory of the target processes and pool servers",
        "",
        memory_table(bench.peaks, labels, bench.pool_peaks),
        "",
    ]
    if bench.results:
        parts += [
            "### Every run",
            "",
            runs_table(bench.results, labels),
            "",
            "### CPU time per I/O (µs, median; all threads of the target process"
            + (", plus its pool servers for the replicated targets)" if replicated else ")"),
            "",
            cpu_table(bench.results, labels),
            "",
        ]
    if bench.rebuild is not None:
        parts += [rebuild_markdown(bench.rebuild, labels[REBUILD_TARGET]), ""]
    parts += [f"Total time {elapsed:.0f} s. Raw outputs: {bench.out_dir}"]
    if bench.errors:
        parts += ["", f"### Failures ({len(bench.errors)})", ""]
        parts += [f"```\n{e}\n```" for e in bench.errors]
    return "\n".join(parts)


def notes(bench: Bench) -> list[str]:
    """Caveats that apply to the cases and targets of this benchmark (with a blank line)."""
    cases = {r.case.name for r in bench.results}
    found = []
    if "read-1m" in cases and "null" in bench.plan.targets:
        found.append(
            "read-1m on Cairn null is no read ceiling: before a read of 32 KiB or more from a "
            "thin-provisioned LUN, qemu's iscsi driver asks GET LBA STATUS and, where the "
            "blocks are unmapped (all of the null store), returns zeros without reading. "
            "perf-seq-1m (plain 1 MiB READs) gives the null store's 1 MiB read figure."
        )
    return [*(f"Note: {n}" for n in found), ""] if found else []


def summary(
    bench: Bench, command: list[str], env: dict[str, object], elapsed: float
) -> dict[str, object]:
    return {
        "command": command,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_seconds": round(elapsed, 1),
        "environment": env,
        "loadavg_before": bench.load_before,
        "loadavg_after": loadavg(),
        "plan": bench.plan.to_json(),
        "targets": {t.name: target_json(bench, t) for t in bench.targets},
        "cases": {r.case.name: r.to_json() for r in bench.results},
        "rebuild": bench.rebuild.to_json() if bench.rebuild is not None else None,
        "errors": bench.errors,
    }


def target_json(bench: Bench, t: Target) -> dict[str, object]:
    doc: dict[str, object] = {
        "label": t.label,
        "url": t.url,
        "peak_rss_kib": bench.peaks.get(t.name),
        "peak_rss_kib_after_case": {c: p.get(t.name) for c, p in bench.peak_after.items()},
        "started": t.started,
        "died": t.died,
        "exit_code": t.exit_code,
        "stderr_log": str(t.stderr_path),
    }
    if isinstance(t, ReplicatedTarget):
        doc["command"] = t.command()
        doc["cpu_seconds_include_pool_servers"] = True
        doc["pool_servers"] = [
            {
                "name": p.name,
                "address": p.address,
                "peak_rss_kib": bench.pool_peaks.get(t.name, {}).get(p.name),
                "exit_code": p.exit_code,
                "stderr_log": str(p.log_path),
            }
            for p in t.pools
        ]
    return doc


# --------------------------------------------------------------------------- main


def results_dir(root: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = root / stamp
    n = 1
    while out.exists():
        n += 1
        out = root / f"{stamp}-{n}"
    (out / "raw").mkdir(parents=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    missing = missing_tools(plan)
    if missing:
        log(f"missing: {', '.join(missing)} (apt-get install tgt libiscsi-bin qemu-utils "
            "qemu-block-extra; make install)")  # fmt: skip
        return 2
    started = time.monotonic()
    out_dir = results_dir(args.results)
    data_root = Path(tempfile.mkdtemp(prefix="cairn-bench-", dir=args.data_dir))
    bench = Bench(plan, out_dir, make_targets(plan, data_root, out_dir))
    env = environment(out_dir)
    log(f"results in {out_dir}; data in {data_root}")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_all(bench)
    except TargetError as e:
        bench.errors.append(f"target: {e}")
        log(f"FAILED: {e}")
    except KeyboardInterrupt as e:
        bench.errors.append(f"interrupted ({e or 'SIGINT'}); results are partial")
    finally:
        stop_targets(bench)
        if not args.keep_data:
            shutil.rmtree(data_root, ignore_errors=True)
    elapsed = time.monotonic() - started
    text = markdown(bench, elapsed)
    (out_dir / "report.md").write_text(text + "\n")
    command = [sys.executable, *(sys.argv if argv is None else ["bench/run.py", *argv])]
    data = summary(bench, command, env, elapsed)
    (out_dir / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    print(text)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
