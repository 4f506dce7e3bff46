"""``cairn volume watch``: the one line and the progress it reads from a status document."""

from __future__ import annotations

from cairn.cli.agent_watch import line, progress

STATUS = {
    "state": "degraded",
    "replicas": [
        {"address": "10.0.0.1:3232", "state": "healthy"},
        {"address": "10.0.0.2:3232", "state": "rebuilding",
         "rebuild": {"done_bytes": 32 << 20, "total_bytes": 128 << 20, "source": "10.0.0.1:3232",
                     "rate_bytes_per_s": 16 << 20, "eta_s": 6}},
    ],
}  # fmt: skip


def test_progress_sums_the_rebuilds() -> None:
    assert progress(STATUS) == (32 << 20, 128 << 20, 16 << 20, 6.0, [
        "10.0.0.2:3232 from 10.0.0.1:3232"])  # fmt: skip


def test_line() -> None:
    text = line("db", STATUS)
    assert text.startswith("volume db: degraded (10.0.0.1:3232 healthy, 10.0.0.2:3232 rebuilding)")
    assert "rebuild 25% (32.0 MiB of 128.0 MiB at 16.0 MiB/s, ETA 6 s)" in text
    healthy = {"state": "healthy", "replicas": [{"address": "a:1", "state": "healthy"}]}
    assert line("db", healthy) == "volume db: healthy (a:1 healthy)"
    scanning = {"state": "degraded", "replicas": [{"address": "a:1", "state": "rebuilding",
                "rebuild": {"done_bytes": 0, "total_bytes": None, "source": "b:1"}}]}  # fmt: skip
    assert "rebuild scanning" in line("db", scanning)
