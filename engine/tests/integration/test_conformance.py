"""libiscsi's conformance suite, ``iscsi-test-cu``, over the whole ALL family.

The suite runs with ``-d`` (destructive tests allowed) and with the volume's URL given
twice, so that its multipath tests (two sessions on one LUN: reservations, resets, unit
attentions across I_T nexuses) run too.  Cairn must fail no test.  A test the suite
skips must be skipped for a reason listed below: either the test cannot apply to this
kind of device or run (sanitize not allowed, a disk that is not removable) or the suite
detected a feature the target does not offer; any other skip fails this test so that it
gets looked at.  Against tgt, the peer, the same run skips more for missing features.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SUITE_TIMEOUT = 900

# Skips that say nothing about the target: the run was not allowed to do it, or the
# device is not of that kind (a fixed disk is neither removable nor write-protected).
NOT_APPLICABLE = (
    r"--allow-sanitize flag is not set",
    r"Logical unit is not removable",
    r"Media is not removable",
    r"Logical unit is not write-protected",
    r"Multipath unavailable",
)
# Skips because the suite detected that the target lacks a feature.
MISSING_FEATURE = (
    r"\S+ is not implemented",
    r"LBPPB < 2",
    r"does not support 0-blocks",
    r"Logical unit is fully provisioned",
    r"Task Management function ?for \w+ is not working/implemented",
)


@dataclass
class SuiteRun:
    url: str
    output: str
    returncode: int
    tests_run: int = 0
    tests_passed: int = 0
    tests_failed: int = 0
    failed: list[str] = field(default_factory=list)
    skips: list[str] = field(default_factory=list)

    def skips_matching(self, patterns: tuple[str, ...]) -> list[str]:
        return [s for s in self.skips if any(re.search(p, s) for p in patterns)]

    @property
    def unexplained_skips(self) -> list[str]:
        return [
            s
            for s in self.skips
            if not any(re.search(p, s) for p in NOT_APPLICABLE + MISSING_FEATURE)
        ]

    def describe(self) -> str:
        return (
            f"iscsi-test-cu on {self.url}: ran {self.tests_run}, passed {self.tests_passed}, "
            f"failed {self.tests_failed} {self.failed}\nskips: {len(self.skips)}"
            f"\n--- tail of the output ---\n{self.output[-4000:]}"
        )


def parse_suite_output(url: str, output: str, returncode: int) -> SuiteRun:
    run = SuiteRun(url=url, output=output, returncode=returncode)
    summary = re.search(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", output, re.M)
    if summary:
        run.tests_run = int(summary.group(2))
        run.tests_passed = int(summary.group(3))
        run.tests_failed = int(summary.group(4))
    run.failed = re.findall(r"Suite (\S+), Test (\S+) had failures", output)
    run.failed = [f"{suite}.{test}" for suite, test in run.failed]  # type: ignore[misc]
    run.skips = [m.strip() for m in re.findall(r"\[SKIPPED\]([^\n\[]*)", output)]
    return run


def run_suite(url: str, log: Path) -> SuiteRun:
    if shutil.which("iscsi-test-cu") is None:
        pytest.fail("iscsi-test-cu is not installed (apt-get install libiscsi-bin)")
    argv = ["iscsi-test-cu", "-d", "-n", "--test=ALL", url, url]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=SUITE_TIMEOUT, errors="replace"
    )
    output = done.stdout + done.stderr
    log.write_text(f"$ {' '.join(argv)}\n{output}")
    return parse_suite_output(url, output, done.returncode)


_cairn_runs: dict[str, SuiteRun] = {}


def cairn_run(cairn_target, tmp_path: Path) -> SuiteRun:
    """The suite against a fresh Cairn volume (run once per test session)."""
    if "run" not in _cairn_runs:
        t = cairn_target(volume="conformance", size="1G")
        _cairn_runs["run"] = run_suite(t.url, tmp_path / "iscsi-test-cu.cairn.log")
        assert t.alive, "the target died during the conformance suite:\n" + t.stderr_text()
    return _cairn_runs["run"]


def test_parser_reads_failures_and_skips():
    sample = (
        "    [SKIPPED] ORWRITE is not implemented.\n"
        "Suite Foo, Test Bar had failures:\n    1. x.c:1 - CU_ASSERT\n"
        "    [SKIPPED] Something new.\n"
        "Run Summary:    Type  Total    Ran Passed Failed Inactive\n"
        "              suites     51     51    n/a      0        0\n"
        "               tests    230    229    228      1        0\n"
    )
    run = parse_suite_output("u", sample, 0)
    assert (run.tests_run, run.tests_passed, run.tests_failed) == (229, 228, 1)
    assert run.failed == ["Foo.Bar"]
    assert run.skips_matching(MISSING_FEATURE) == ["ORWRITE is not implemented."]
    assert run.unexplained_skips == ["Something new."]


def test_iscsi_test_cu_all_passes(cairn_target, tmp_path, target_kind):
    if target_kind != "cairn":
        pytest.skip("measures Cairn; tgt's results are compared in the next test")
    run = cairn_run(cairn_target, tmp_path)
    assert run.tests_run >= 200, run.describe()  # the whole ALL family ran
    assert run.tests_failed == 0 and not run.failed, run.describe()
    assert run.tests_passed == run.tests_run, run.describe()
    assert not run.unexplained_skips, run.describe()


def test_fewer_feature_skips_than_tgt(cairn_target, tgt_target, tmp_path, target_kind):
    if target_kind != "cairn":
        pytest.skip("compares Cairn with tgt")
    ours = cairn_run(cairn_target, tmp_path)
    peer_target = tgt_target(volume="conformance", size="1G")
    peer = run_suite(peer_target.url, tmp_path / "iscsi-test-cu.tgt.log")
    assert peer.tests_run >= 200, peer.describe()
    our_missing = ours.skips_matching(MISSING_FEATURE)
    peer_missing = peer.skips_matching(MISSING_FEATURE)
    print(
        f"\ncairn: {ours.tests_failed} failed, {len(our_missing)} skips for missing features"
        f"\ntgt:   {peer.tests_failed} failed {peer.failed}, "
        f"{len(peer_missing)} skips for missing features"
    )
    assert len(our_missing) < len(peer_missing), (
        f"cairn skips {len(our_missing)} tests for missing features, tgt {len(peer_missing)}"
        f"\ncairn: {sorted(set(our_missing))}\ntgt: {sorted(set(peer_missing))}"
    )
