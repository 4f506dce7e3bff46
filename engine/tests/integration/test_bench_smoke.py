"""The benchmark still runs end to end (one quick pass; figures are not judged here:
speed is compared in bench/, as ratios, never asserted in tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def test_bench_quick_pass(tmp_path):
    argv = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--quick",
        "--runs", "1",
        "--cases", "read-4k,write-1m,perf-rand-4k,rebuild",
        "--results", str(tmp_path / "results"),
        "--data-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    header = re.search(r"^\| Case \| Unit \|.*\|$", done.stdout, re.M)
    assert header, done.stdout[-3000:]
    columns = [c.strip() for c in header.group(0).strip("|").split("|")]
    for label in ("Cairn 1 replica (median)", "Cairn 3 replicas (median)", "Cairn/tgt",
                  "3 replicas/tgt", "3 replicas/1 replica"):  # fmt: skip
        assert label in columns, columns
    for case in ("4 KiB sequential read", "1 MiB sequential write", "4 KiB random read"):
        row = re.search(rf"^\| {case}[^|]*\|.*\|$", done.stdout, re.M)
        assert row, f"no figures for {case!r}:\n{done.stdout[-3000:]}"
        cells = [c.strip() for c in row.group(0).strip("|").split("|")]
        assert len(cells) == len(columns) and "n/a" not in cells, row.group(0)
    assert re.search(r"^\| Cairn \| [\d.]+ \| within \|$", done.stdout, re.M), done.stdout[-2000:]
    assert re.search(r"^\| Cairn 3 replicas: pool server \S+ \| [\d.]+ \|", done.stdout, re.M)
    assert "### The replication issue's targets" in done.stdout
    rebuild = re.search(
        r"^\| idle \| ([\d.]+) \| [\d.]+ \| [\d,]+ \| ([\d.,]+) \|", done.stdout, re.M
    )
    assert rebuild and float(rebuild.group(2).replace(",", "")) > 0, done.stdout[-3000:]
    assert list((tmp_path / "results").glob("*/results.json")), "no results.json written"
