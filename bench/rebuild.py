"""The rebuild measurement: how fast a replicated target rebuilds one whole replica, and how
fast it takes 4 KiB writes meanwhile.

On a filled 3-replica volume:

1. 4 KiB QD 32 writes (``qemu-img bench``) on the healthy volume, in runs of about
   ``RUN_SECONDS`` back to back (each run's request count follows the speed of the one
   before, so runs last about as long on a healthy volume as during a rebuild);
2. one pool server stopped, its data directory deleted, the server started again: its
   replica is new and empty, and the target rebuilds all of it, with no other I/O
   ("idle");
3. the same again, with the short write runs going on while the rebuild runs ("under
   load"); only runs that ended while the status still showed the rebuild in progress
   count;
4. optionally once more with the target restarted with ``--rebuild-rate``;
5. healthy runs again.

Timing comes from the target's status API (``GET /status``), polled every
``POLL_INTERVAL`` seconds during every step (the healthy runs too, so that the polling
costs the same everywhere): the rebuild lasts from the moment the new pool server is
ready to the first status that shows the volume healthy with one more rebuild done on
that replica.  Its rate is the bytes it copied (the rebuild's ``total_bytes``, else the
volume size) over that duration.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from report import fmt_ratio, fmt_value, table
from targets import ReplicatedTarget, TargetError
from workloads import CASES, MIB, Measurement, ToolError, run_qemu_img_case

POLL_INTERVAL = 0.1
RUN_SECONDS = 0.5  # the length of each foreground run (its request count follows its speed)
FIRST_COUNT = 1_000  # requests of the first run of a series
MIN_COUNT = 256
WRITE_4K = next(c for c in CASES if c.name == "write-4k")
IN_PROGRESS = ("marking", "scanning", "copying", "finishing")


@dataclass
class Sample:
    """One status of the volume, seen at ``t`` (time.monotonic)."""

    t: float
    state: str
    replica_state: str
    rebuilds: int  # rebuilds the replica completed so far
    rebuild: dict[str, Any] | None  # the replica's rebuild progress, None when none runs


class StatusWatch:
    """Polls the target's status in a thread and keeps what it saw of one replica."""

    def __init__(self, target: ReplicatedTarget, address: str) -> None:
        self.target = target
        self.address = address
        self.samples: list[Sample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                doc = self.target.status(timeout=2)
            except (OSError, ValueError):
                self.errors += 1
            else:
                self.samples.append(sample(doc, self.address))
            self._stop.wait(POLL_INTERVAL)

    def first(self, test: Callable[[Sample], bool], after: float = 0.0) -> Sample | None:
        return next((s for s in list(self.samples) if s.t >= after and test(s)), None)

    def last(self, test: Callable[[Sample], bool]) -> Sample | None:
        return next((s for s in reversed(list(self.samples)) if test(s)), None)


def sample(doc: dict[str, Any], address: str) -> Sample:
    replica = next((r for r in doc.get("replicas", []) if r.get("address") == address), {})
    return Sample(
        time.monotonic(),
        str(doc.get("state")),
        str(replica.get("state")),
        int((replica.get("stats") or {}).get("rebuilds", 0)),
        replica.get("rebuild"),
    )


def rebuilding(s: Sample) -> bool:
    return s.rebuild is not None and s.rebuild.get("phase") in IN_PROGRESS


@dataclass
class TimedRun:
    started: float
    ended: float
    measurement: Measurement


@dataclass
class RebuildRun:
    """One rebuild of the whole replica."""

    label: str
    foreground: bool
    rate_limit: int  # the target's --rebuild-rate (0: none)
    seconds: float | None = None  # from the pool server's restart to healthy
    reconnect_seconds: float | None = None  # from the restart to the replica attached
    bytes_copied: int | None = None
    bytes_source: str = ""  # where bytes_copied comes from
    reported_rate: float | None = None  # the target's last rate_bytes_per_s, bytes/s
    phases: list[str] = field(default_factory=list)  # as seen, in order
    during: list[Measurement] = field(default_factory=list)  # runs inside the rebuild
    after: list[Measurement] = field(default_factory=list)  # runs that ended after it
    error: str | None = None

    @property
    def rate(self) -> float | None:
        """Bytes per second, over the whole rebuild."""
        if self.seconds and self.bytes_copied is not None:
            return self.bytes_copied / self.seconds
        return None

    def iops(self) -> float | None:
        return median_iops(self.during)

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "foreground_4k_writes": self.foreground,
            "rebuild_rate_limit_bytes_per_s": self.rate_limit,
            "seconds": self.seconds,
            "reconnect_seconds": self.reconnect_seconds,
            "bytes_copied": self.bytes_copied,
            "bytes_copied_from": self.bytes_source,
            "rate_bytes_per_s": self.rate,
            "target_reported_copy_rate_bytes_per_s": self.reported_rate,
            "phases_seen": self.phases,
            "foreground_runs_during": [run_json(m) for m in self.during],
            "foreground_runs_ended_after": [run_json(m) for m in self.after],
            "foreground_iops_median": self.iops(),
            "error": self.error,
        }


def run_json(m: Measurement) -> dict[str, float]:
    return {"seconds": m.seconds, "ios": m.ios, "iops": m.iops}


def median_iops(runs: list[Measurement]) -> float | None:
    return statistics.median(m.iops for m in runs) if runs else None


@dataclass
class RebuildResult:
    volume_bytes: int
    run_seconds: float  # the length aimed at for each foreground run
    replica: str = ""
    healthy: list[Measurement] = field(default_factory=list)
    rebuilds: list[RebuildRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def healthy_iops(self) -> float | None:
        return median_iops(self.healthy)

    def to_json(self) -> dict[str, object]:
        return {
            "volume_bytes": self.volume_bytes,
            "foreground_run_seconds": self.run_seconds,
            "rebuilt_replica": self.replica,
            "healthy_runs": [run_json(m) for m in self.healthy],
            "healthy_iops_median": self.healthy_iops(),
            "rebuilds": [r.to_json() for r in self.rebuilds],
            "errors": self.errors,
        }


@dataclass
class RebuildBench:
    target: ReplicatedTarget
    healthy_runs: int  # before and again after the rebuilds
    rate_limit: int  # bytes per second for the limited variant (0: no such variant)
    raw: Path  # the raw log of the tool runs
    log: Callable[[str], None]
    run_seconds: float = RUN_SECONDS
    result: RebuildResult = field(init=False)
    count: int = FIRST_COUNT  # requests of the next foreground run

    def __post_init__(self) -> None:
        self.result = RebuildResult(self.target.size, self.run_seconds)

    @property
    def index(self) -> int:
        """The pool server whose replica is rebuilt: the last one."""
        return len(self.target.pools) - 1

    def timeout(self, rate_limit: int) -> float:
        """Generous: 2 minutes plus the volume at 2 MiB/s (or at the limit)."""
        rate = min(2 * MIB, rate_limit) if rate_limit else 2 * MIB
        return 120.0 + self.target.size / rate

    def run(self) -> RebuildResult:
        target = self.target
        self.result.replica = target.pools[self.index].address
        target.wait_healthy(60)
        self.healthy("healthy, before")
        self.rebuild("idle", foreground=False)
        self.rebuild("under 4 KiB writes", foreground=True)
        if self.rate_limit:
            target.restart(rebuild_rate=self.rate_limit)
            limit = f"{self.rate_limit / MIB:g} MiB/s"
            self.log(f"[rebuild] restarted {target.label} with --rebuild-rate {limit}")
            try:
                self.rebuild(f"under 4 KiB writes, --rebuild-rate {limit}", foreground=True)
            finally:
                target.restart(rebuild_rate=0)
        self.healthy("healthy, after")
        return self.result

    def write_run(self) -> TimedRun:
        """One foreground run; the next one's request count aims at ``run_seconds`` at this
        run's speed (at most twice this one's count, so a sudden slowdown costs little)."""
        started = time.monotonic()
        m = run_qemu_img_case(self.target.url, WRITE_4K, self.count, self.raw, self.target.is_alive)
        self.count = max(MIN_COUNT, min(2 * self.count, round(m.iops * self.run_seconds)))
        return TimedRun(started, time.monotonic(), m)

    def healthy(self, what: str) -> None:
        self.target.flush()
        with StatusWatch(self.target, self.result.replica) as watch:
            self.count = FIRST_COUNT
            for _ in range(3):  # not counted: finds the request count of a run's length
                self.write_run()
            for _ in range(self.healthy_runs):
                run = self.write_run()
                self.result.healthy.append(run.measurement)
                self.log(f"[rebuild] {what}: 4 KiB writes {run.measurement.iops:,.0f} IOPS")
        if watch.first(lambda s: s.state != "healthy"):
            self.result.errors.append(f"the volume was not healthy during the {what} runs")

    def rebuild(self, label: str, foreground: bool) -> None:
        target, index = self.target, self.index
        out = RebuildRun(label, foreground, target.rebuild_rate)
        self.result.rebuilds.append(out)
        before = sample(target.status(), self.result.replica)
        if before.state != "healthy":
            out.error = f"the volume is {before.state} before the rebuild"
            self.result.errors.append(f"rebuild {label}: {out.error}")
            return
        target.flush()
        pool = target.pools[index]
        target.stop_pool(index)
        shutil.rmtree(pool.path, ignore_errors=True)
        target.start_pool(index)
        restarted = time.monotonic()
        self.log(f"[rebuild] {label}: {pool.name} restarted with an empty replica")
        deadline = restarted + self.timeout(target.rebuild_rate)
        runs: list[TimedRun] = []

        def done(s: Sample) -> bool:
            return s.state == "healthy" and s.rebuilds > before.rebuilds

        with StatusWatch(target, self.result.replica) as watch:
            try:
                if foreground:
                    while not watch.first(rebuilding) and not watch.first(done):
                        self.wait(deadline)
                    self.count = FIRST_COUNT
                    while not watch.first(done):
                        if time.monotonic() > deadline:
                            break
                        runs.append(self.write_run())
                while not watch.first(done):
                    self.wait(deadline)
            except (ToolError, TargetError) as e:
                out.error = str(e)
        self.summarize(out, watch, restarted, runs, done)
        if out.error:
            self.result.errors.append(f"rebuild {label}: {out.error}")
            self.log(f"[rebuild] {label}: FAILED: {out.error}")
            return
        assert out.seconds is not None and out.rate is not None
        during = (
            f"; 4 KiB writes meanwhile {fmt_value(out.iops(), 'IOPS')} IOPS" if foreground else ""
        )
        self.log(
            f"[rebuild] {label}: {out.bytes_copied or 0:,} bytes in {out.seconds:.1f} s, "
            f"{out.rate / MIB:.1f} MiB/s{during}"
        )

    def wait(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise TargetError("the rebuild did not finish in time")
        if not self.target.alive:
            raise TargetError(f"{self.target.label} stopped:\n{self.target.stderr_tail()}")
        time.sleep(POLL_INTERVAL / 2)

    def summarize(
        self,
        out: RebuildRun,
        watch: StatusWatch,
        restarted: float,
        runs: list[TimedRun],
        done: Callable[[Sample], bool],
    ) -> None:
        for s in watch.samples:
            phase = str(s.rebuild.get("phase")) if s.rebuild else ("healthy" if done(s) else "")
            if phase and (not out.phases or out.phases[-1] != phase):
                out.phases.append(phase)
        end = watch.first(done, after=restarted)
        attached = watch.first(lambda s: s.replica_state != "offline", after=restarted)
        if attached is not None:
            out.reconnect_seconds = attached.t - restarted
        last = watch.last(lambda s: s.rebuild is not None and s.t <= (end.t if end else 1e18))
        if end is None:
            out.error = out.error or "the volume did not become healthy again"
        else:
            out.seconds = end.t - restarted
        progress = last.rebuild if last is not None and last.rebuild else {}
        total, copied = progress.get("total_bytes"), progress.get("done_bytes")
        if total:
            out.bytes_copied, out.bytes_source = int(total), "total_bytes of the rebuild"
        elif copied:
            out.bytes_copied, out.bytes_source = int(copied), "done_bytes of the last status"
        else:
            out.bytes_copied, out.bytes_source = self.target.size, "the volume size"
        rate = progress.get("rate_bytes_per_s")
        out.reported_rate = float(rate) if rate else None
        last_rebuilding = watch.last(rebuilding)
        for run in runs:
            if last_rebuilding is not None and run.ended <= last_rebuilding.t:
                out.during.append(run.measurement)
            else:
                out.after.append(run.measurement)


# --------------------------------------------------------------------------- report


def markdown(result: RebuildResult, label: str) -> str:
    """The rebuild section of the report."""
    healthy = result.healthy_iops()
    parts = [
        f"### Rebuild of one replica ({label}, {result.volume_bytes // MIB} MiB volume)",
        "",
        f"Pool server {result.replica} stopped, its data directory deleted and started "
        "again: its replica is new and empty, and the target rebuilds all of it. Duration: "
        "from the new pool server's start (the target reconnects with a backoff of up to a "
        "few seconds: the reconnect column) to the first status (polled every "
        f"{POLL_INTERVAL:g} s) that shows the volume healthy; "
        "rate: bytes copied / duration; copy-phase rate: the target's own figure, over the "
        "copy alone. Foreground: 4 KiB sequential writes, QD 32 (qemu-img bench), in runs "
        f"of about {result.run_seconds:g} s back to back (about 0.1 s between runs to start "
        "the next); a run counts as during the rebuild only if it ended while the status "
        "still showed the rebuild in progress.",
        "",
    ]
    rows = []
    for r in result.rebuilds:
        rows.append(
            [
                r.label,
                "n/a" if r.seconds is None else f"{r.seconds:.1f}",
                "n/a" if r.reconnect_seconds is None else f"{r.reconnect_seconds:.1f}",
                "n/a" if r.bytes_copied is None else f"{r.bytes_copied / MIB:,.0f}",
                fmt_value(None if r.rate is None else r.rate / MIB),
                fmt_value(None if r.reported_rate is None else r.reported_rate / MIB),
                " > ".join(r.phases) or "none seen",
            ]
        )
    parts += [
        table(
            [
                "Rebuild",
                "Duration, s",
                "Of which reconnect, s",
                "Copied, MiB",
                "Rate, MiB/s",
                "Copy-phase rate, MiB/s",
                "Phases seen",
            ],
            rows,
            "lrrrrrl",
        ),
        "",
    ]
    rows = [
        [
            "healthy (before and after the rebuilds)",
            str(len(result.healthy)),
            fmt_value(healthy, "IOPS"),
            spread(result.healthy),
            "1.00" if healthy else "n/a",
        ]
    ]
    for r in result.rebuilds:
        if not r.foreground:
            continue
        iops = r.iops()
        runs = str(len(r.during))
        if r.after:
            runs += f" (+{len(r.after)} ended after it)"
        rows.append(
            [
                f"rebuilding, {r.label}",
                runs,
                fmt_value(iops, "IOPS"),
                spread(r.during),
                fmt_ratio(iops / healthy if iops and healthy else None),
            ]
        )
    parts += [
        table(
            ["Volume", "Runs", "4 KiB write IOPS (median)", "Lowest-highest run", "vs healthy"],
            rows,
            "lrrrr",
        ),
        "",
    ]
    for r in result.rebuilds:
        if r.error:
            parts += [f"Rebuild {r.label} FAILED: {r.error}", ""]
        elif r.foreground and not r.during:
            parts += [
                f"Note: rebuild {r.label}: the rebuild finished before the first foreground "
                "run ended, so there is no figure during the rebuild.",
                "",
            ]
    return "\n".join(parts)


def spread(runs: list[Measurement]) -> str:
    if not runs:
        return "n/a"
    iops = [m.iops for m in runs]
    return f"{fmt_value(min(iops), 'IOPS')}-{fmt_value(max(iops), 'IOPS')}"
