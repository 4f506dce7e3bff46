"""Medians, ratios and the Markdown tables printed at the end of a benchmark."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from workloads import Case, Measurement

MEMORY_LIMIT_MIB = 100.0
RATIOS = (
    ("cairn", "tgt", "Cairn/tgt"),
    ("null", "tgt", "null/tgt"),
    ("rep3", "tgt", "3 replicas/tgt"),
    ("rep3", "rep1", "3 replicas/1 replica"),
)
#: The replication issue's targets, ratios of medians (see ``issue_table``).
WRITE_TARGET = 1.0  # 3 replicas/tgt, writes
READ_TARGET = 0.9  # 3 replicas/1 replica, reads
ISSUE_RATIO_NAMES = {
    "tgt": "3 replicas/tgt",
    "rep1": "3 replicas/1 replica",
    "cairn": "3 replicas/Cairn (local store)",
}


@dataclass
class CaseResult:
    """The runs of one case on every target, in the order they ran."""

    case: Case
    runs: dict[str, list[Measurement]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def values(self, target: str) -> list[float]:
        return [m.value(self.case.unit) for m in self.runs.get(target, [])]

    def median(self, target: str) -> float | None:
        values = self.values(target)
        return statistics.median(values) if values else None

    def ratio(self, num: str, den: str) -> float | None:
        a, b = self.median(num), self.median(den)
        return a / b if a is not None and b else None

    def cpu_us_per_io(self, target: str) -> float | None:
        cpu = [m.cpu_us_per_io for m in self.runs.get(target, [])]
        known = [c for c in cpu if c is not None]
        return statistics.median(known) if known else None

    def to_json(self) -> dict[str, object]:
        return {
            "title": self.case.title,
            "tool": self.case.tool,
            "unit": self.case.unit,
            "request_bytes": self.case.request,
            "queue_depth": self.case.depth,
            "write": self.case.write,
            "median": {t: self.median(t) for t in self.runs},
            "ratio": {label: self.ratio(a, b) for a, b, label in RATIOS},
            "target_cpu_us_per_io_median": {t: self.cpu_us_per_io(t) for t in self.runs},
            "runs": {
                t: [
                    {
                        "seconds": m.seconds,
                        "ios": m.ios,
                        "iops": m.iops,
                        "mib_s": m.mib_s,
                        "target_cpu_seconds": m.cpu_seconds,
                    }
                    for m in ms
                ]
                for t, ms in self.runs.items()
            },
            "errors": self.errors,
        }


def fmt_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "IOPS" or value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A Markdown table; ``align`` has one ``l`` or ``r`` per column."""
    rule = ["---" if a == "l" else "--:" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def results_table(results: Sequence[CaseResult], labels: dict[str, str]) -> str:
    """Case, unit, the median of every target and the ratios of ``RATIOS`` whose targets
    ran."""
    targets = list(labels)
    ratios = [r for r in RATIOS if r[0] in labels and r[1] in labels]
    header = ["Case", "Unit", *(f"{labels[t]} (median)" for t in targets)]
    header += [label for _, _, label in ratios]
    rows = []
    for r in results:
        row = [r.case.title, r.case.unit]
        row += [fmt_value(r.median(t), r.case.unit) for t in targets]
        row += [fmt_ratio(r.ratio(a, b)) for a, b, _ in ratios]
        rows.append(row)
    return table(header, rows, "ll" + "r" * (len(header) - 2))


def runs_table(results: Sequence[CaseResult], labels: dict[str, str]) -> str:
    """Every run's figure, to judge the spread behind each median."""
    rows = []
    for r in results:
        for t, label in labels.items():
            values = ", ".join(fmt_value(v, r.case.unit) for v in r.values(t)) or "none"
            failed = len(r.errors.get(t, []))
            if failed:
                values += f" ({failed} failed)"
            rows.append([r.case.name, label, r.case.unit, values])
    return table(["Case", "Target", "Unit", "Runs, in order"], rows, "llll")


def cpu_table(results: Sequence[CaseResult], labels: dict[str, str]) -> str:
    """Median CPU time the target process spent per I/O (all its threads)."""
    header = ["Case", *labels.values()]
    rows = [[r.case.name, *(fmt_value(r.cpu_us_per_io(t)) for t in labels)] for r in results]
    return table(header, rows, "l" + "r" * len(labels))


def issue_table(results: Sequence[CaseResult], labels: dict[str, str]) -> str | None:
    """The replication issue's targets, and whether this run met them: 3 replicas/tgt at
    least 1.0 for writes, 3 replicas/1 replica at least 0.9 for reads (with 3 replicas/
    Cairn on its local store for reads, as information).  None without ``rep3``."""
    if "rep3" not in labels:
        return None
    rows = []
    for r in results:
        if r.case.write:
            checks = [("tgt", WRITE_TARGET)]
        else:
            checks = [("rep1", READ_TARGET), ("cairn", None)]
        for den, goal in checks:
            if den not in labels:
                continue
            ratio = r.ratio("rep3", den)
            if goal is None:
                verdict, wanted = "information", "-"
            else:
                wanted = f">= {goal:.1f}"
                verdict = "n/a" if ratio is None else ("met" if ratio >= goal else "NOT met")
            rows.append([r.case.title, ISSUE_RATIO_NAMES[den], fmt_ratio(ratio), wanted, verdict])
    if not rows:
        return None
    return table(["Case", "Ratio", "This run", "Target", "Verdict"], rows, "llrll")


def memory_table(
    peaks_kib: dict[str, int | None],
    labels: dict[str, str],
    pool_peaks_kib: dict[str, dict[str, int | None]] | None = None,
) -> str:
    """Peak resident memory (VmHWM) of each target process, against the 100 MiB budget,
    then that of the pool servers of the replicated targets (no budget set)."""
    rows = []
    for t, label in labels.items():
        kib = peaks_kib.get(t)
        rows.append([label, fmt_mib(kib), memory_verdict(t, None if kib is None else kib / 1024)])
    for t, label in labels.items():
        for pool, kib in (pool_peaks_kib or {}).get(t, {}).items():
            rows.append([f"{label}: pool server {pool}", fmt_mib(kib), "pool server, no budget"])
    return table(
        ["Process", "Peak RSS (VmHWM), MiB", f"Budget {MEMORY_LIMIT_MIB:.0f} MiB"], rows, "lrl"
    )


def fmt_mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def memory_verdict(target: str, mib: float | None) -> str:
    if target == "tgt":
        return "reference, no budget"
    if mib is None:
        return "unknown"
    return "within" if mib <= MEMORY_LIMIT_MIB else "OVER"
