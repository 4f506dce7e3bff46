"""The target's own resources: memory must not grow with the number of sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MiB = 1 << 20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_sessions_come_and_go_without_growing_the_target(cairn_target, clients, target_kind):
    """Every session gets a receive buffer and reuses write buffers; when it ends, all of
    it must go (a reference cycle between the connection and the portal once kept each
    closed session's buffers, several MiB apiece)."""
    if target_kind != "cairn":
        pytest.skip("measures the Cairn target process")
    t = cairn_target(volume="churn", size="64M")

    def session(i: int) -> None:
        # 4 MiB writes go through R2T and the connection's write buffers
        clients.ok(["qemu-io", "-f", "raw", "-c", f"write -P {i % 250 + 1} 0 4M", t.url])

    for i in range(3):  # warm up: allocator arenas, imports, the store's maps
        session(i)
    before = rss_kib(t.pid)
    for i in range(20):
        session(i)
    grown = rss_kib(t.pid) - before
    assert grown < 8 * 1024, f"target RSS grew by {grown} KiB over 20 sessions"
    r = clients.ok(["qemu-io", "-f", "raw", "-c", "read -P 20 0 4M", t.url])
    assert "Pattern verification failed" not in r.output, r.describe()
