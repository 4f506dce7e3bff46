"""Scaling a replicated volume at run time through the target's API and the CLI, and
the status the operator sees (``cairn volume status / replica-add / replica-remove``)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, PoolNode
from .conftest import find_cairn

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, rf=3, size="16M", hold_time=4.0, replica_timeout=2.0)
    extra: list[PoolNode] = []
    c.extra = extra  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        for n in extra:
            n.cleanup()
        c.cleanup()


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_cairn(), "volume", *args[:1], "--target", f"127.0.0.1:{c.target.api}", *args[1:]],
        capture_output=True,
        text=True,
        timeout=30,
    )


def qemu_io(url: str, *cmds: str) -> str:
    argv = ["qemu-io", "-f", "raw"]
    for cmd in cmds:
        argv += ["-c", cmd]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "failed" not in out.stdout, out.stdout
    return out.stdout


def test_replicas_are_removed_and_added_online_and_the_status_says_so(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    url = c.target.url
    qemu_io(url, "write -P 1 0 1M")
    st = c.target.wait_healthy(30)
    assert (st["replication_factor"], st["consistency_factor"]) == (3, 2)

    text = cli(c, "status")
    assert text.returncode == 0, text.stderr
    assert "volume vol: healthy" in text.stdout and "RF 3, CF 2" in text.stdout
    assert text.stdout.count(" healthy ") >= 3

    # remove one: RF 2, and a majority of 2 is 2
    gone = c.nodes[2].address
    out = cli(c, "replica-remove", gone)
    assert out.returncode == 0, out.stderr
    st = c.target.status()
    assert (st["replication_factor"], st["consistency_factor"]) == (2, 2)
    assert gone not in [r["address"] for r in st["replicas"]]
    qemu_io(url, "write -P 2 1M 1M", "read -P 1 0 1M", "read -P 2 1M 1M")

    # with one of the two down, removing the other healthy one is refused, with why
    c.nodes[1].kill()
    time.sleep(1.0)
    refused = cli(c, "replica-remove", c.nodes[0].address)
    assert refused.returncode == 1
    assert "would leave fewer than" in refused.stderr
    c.nodes[1].start()
    c.target.wait_healthy(30)

    # add a new pool server: it is rebuilt, then it votes
    new = PoolNode(tmp_path, 3, c.nodes[0].port)
    c.extra.append(new)  # type: ignore[attr-defined]
    new.start()
    out = cli(c, "replica-add", new.address)
    assert out.returncode == 0, out.stderr
    st = c.target.wait_healthy(30)
    assert (st["replication_factor"], st["consistency_factor"]) == (3, 2)
    added = next(r for r in st["replicas"] if r["address"] == new.address)
    assert added["state"] == "healthy" and added["trusted"]
    assert added["stats"]["rebuilds"] == 1

    # the new replica holds the data (read it straight from its pool server)
    from cairn.pool.client import PoolClient

    with PoolClient(new.host, new.port) as pc:
        pc.open("vol", 16 << 20, create=False)
        assert pc.read(0, 1 << 20) == bytes([1]) * (1 << 20)
        assert pc.read(1 << 20, 1 << 20) == bytes([2]) * (1 << 20)

    # it now counts for quorum: with one old replica down, writes still work
    c.nodes[0].kill()
    qemu_io(url, "write -P 3 2M 1M", "read -P 3 2M 1M")
    c.nodes[0].start()
    c.target.wait_healthy(30)

    doc = json.loads(cli(c, "status", "--json").stdout)
    assert doc["state"] == "healthy" and len(doc["replicas"]) == 3

    bad = cli(c, "replica-add", c.nodes[0].address)
    assert bad.returncode == 1 and "already a replica" in bad.stderr


def test_targets_authenticate_to_pool_servers_with_the_shared_secret(tmp_path: Path) -> None:
    """With --secret-file on both sides the replicas open; a target with a wrong secret
    is refused by every pool server, says why, and writes nothing."""
    from .cluster import ReplicatedTarget
    from .conftest import free_port

    good = tmp_path / "secret"
    good.write_text("correct horse battery staple\n")
    bad = tmp_path / "bad-secret"
    bad.write_text("zebra-not-the-secret\n")
    port = free_port("127.0.0.2")
    nodes = [PoolNode(tmp_path, i, port, secret_file=good) for i in range(3)]
    targets: list[ReplicatedTarget] = []
    try:
        for n in nodes:
            n.start()
        ok = ReplicatedTarget(tmp_path / "ok", "vol", "16M", [n.address for n in nodes],
                              4.0, 2.0, ["--secret-file", str(good)])  # fmt: skip
        (tmp_path / "ok").mkdir()
        targets.append(ok.start())
        ok.wait_healthy(30)
        qemu_io(ok.url, "write -P 5 0 64k", "read -P 5 0 64k")

        (tmp_path / "wrong").mkdir()
        wrong = ReplicatedTarget(tmp_path / "wrong", "vol2", "16M",
                                 [n.address for n in nodes], 4.0, 2.0,
                                 ["--secret-file", str(bad)])  # fmt: skip
        targets.append(wrong.start())
        time.sleep(2.0)
        st = wrong.status()
        assert not st["writable"] and all(r["state"] == "offline" for r in st["replicas"])
        log = wrong.log.read_text()
        assert "AUTH refused: authentication failed" in log
        assert "correct horse" not in log and "zebra-not-the-secret" not in log
        for n in nodes:
            text = n.log.read_text()
            assert "event=auth_refused" in text
            assert "correct horse" not in text
    finally:
        for t in targets:
            t.kill()
        for n in nodes:
            n.cleanup()


def test_a_replicating_target_whose_portal_is_taken_says_so(tmp_path: Path) -> None:
    """The portal's address in use: exit code 2 and one line that names it, not a
    traceback (the agent shows that line as the reason its target does not start)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [find_cairn(), "target", "serve", "--volume", "v", "--size", "16M",
             "--portal", f"127.0.0.1:{port}", "--iqn", "iqn.2026-11.io.cairn:v",
             "--replica", "127.0.0.2:9", "--state-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
