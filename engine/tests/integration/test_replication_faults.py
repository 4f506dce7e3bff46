"""Faults against a 3-replica volume of real processes, with a real initiator writing.

Every scenario injects faults while ``qemu-io`` writes (``workload.py``) and ends with
all faults healed: the volume must become healthy without help, every replica must hold
every acknowledged write, and no read along the way may have returned older data than
was acknowledged.  The random schedules are seeded (``CAIRN_FAULT_SEED`` to replay one,
``CAIRN_FAULT_ROUNDS`` for more faults); the number of faults injected is printed.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.pool.client import PoolClient

from .cluster import Cluster
from .workload import REGION, RUNNING, Workload

pytestmark = pytest.mark.integration

SIZE = 16 << 20
SEED = int(os.environ.get("CAIRN_FAULT_SEED", "20261121"))
ROUNDS = int(os.environ.get("CAIRN_FAULT_ROUNDS", "3"))
FAULTS_PER_ROUND = 70
INJECTED: list[int] = []


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path, rf=3, size="16M", hold_time=4.0, replica_timeout=1.0)
    try:
        yield c
    finally:
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print(c.report())
        for w in RUNNING:
            w.kill()
        RUNNING.clear()
        c.cleanup()


def replica_contents(c: Cluster, index: int) -> bytes:
    node = c.nodes[index]
    with PoolClient(node.host, node.port) as pc:
        pc.open("vol", SIZE, create=False)
        return b"".join(pc.read(off, 4 << 20) for off in range(0, SIZE, 4 << 20))


def finish(c: Cluster, w: Workload) -> dict:
    """Heal everything, wait for health, check the initiator's view and every replica."""
    for n in c.nodes:
        n.proxy.delay = 0.0
        n.proxy.cut = False
        n.unfill()
        n.continue_process()
        if not n.alive():
            n.start()
    if not c.target.alive():
        c.target.start()
    w.stop()
    doc = c.target.wait_healthy(90)
    # the three pool servers run on the target's machine: writes reach them through the
    # shared-memory ring, which every fault above may have retired and replaced
    for _ in range(50):
        shm = c.target.status()["shared_memory"]
        if shm["pool_servers"] == len(c.nodes):
            break
        time.sleep(0.1)
    assert shm["pool_servers"] == len(c.nodes), shm
    retired = c.target.log.read_text(errors="replace").count("event=ring_retired")
    print(f"shared memory: {shm}; rings retired over the scenario: {retired}")
    led = w.ledger
    assert w.check_read("final read"), c.report()
    for i in range(len(c.nodes)):
        led.check(replica_contents(c, i), dict(led.acked), f"replica {i}", final=True)
    assert not led.lost, led.lost[:10]
    assert not led.stale, led.stale[:10]
    assert led.writes_acked > 0
    return doc


def test_scenarios_one_fault_at_a_time(cluster: Cluster, tmp_path: Path) -> None:
    """Each kind of fault alone, with writes running, then healed."""
    c = cluster
    w = Workload(c.target.url, SIZE, SEED, tmp_path / "workload.log")
    w.start()
    faults = 0
    a, b = c.nodes[0], c.nodes[1]

    # SIGKILL of a replica, then it comes back and is rebuilt
    a.kill()
    time.sleep(1.5)
    assert c.target.status()["writable"]
    a.start()
    c.target.wait_healthy(60)
    faults += 1

    # SIGSTOP (hang) longer than the replica timeout: degraded, then rebuilt
    a.stop_process()
    time.sleep(2.5)
    st = c.target.status()
    assert st["replicas"][0]["state"] in ("degraded", "offline"), st
    assert st["writable"]
    a.continue_process()
    c.target.wait_healthy(60)
    faults += 1

    # restarted with stale data: an old copy of its pool
    a.copy_data(tmp_path / "old0")
    time.sleep(2.0)
    a.kill()
    a.restore_data(tmp_path / "old0")
    a.start()
    c.target.wait_healthy(60)
    faults += 1

    # disk full: writes fail on that replica only
    b.fill()
    time.sleep(2.0)
    st = c.target.status()
    assert st["writable"], st
    b.unfill()
    c.target.wait_healthy(60)
    faults += 1

    # a slow replica (below the timeout) is not waited for
    b.proxy.delay = 0.3
    time.sleep(2.0)
    b.proxy.delay = 0.0
    faults += 1

    # the network path to one replica cut
    b.proxy.cut = True
    time.sleep(2.5)
    assert c.target.status()["writable"]
    b.proxy.cut = False
    b.proxy.drop_all()
    c.target.wait_healthy(60)
    faults += 1

    # SIGKILL of the target, restart
    c.target.kill()
    time.sleep(0.5)
    c.target.start()
    c.target.wait_healthy(60)
    faults += 1
    assert w.check_read("after the scenarios")
    finish(c, w)
    INJECTED.append(faults)
    print(f"faults injected: {faults}, writes acknowledged: {w.ledger.writes_acked}")


def test_two_replicas_lost_shorter_than_the_hold_time_is_invisible(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    w = Workload(c.target.url, SIZE, SEED + 1, tmp_path / "workload.log")
    w.batch(8)
    assert w.ledger.writes_acked == 8
    c.nodes[1].kill()
    c.nodes[2].kill()
    time.sleep(0.5)
    assert not c.target.status()["writable"]

    def back() -> None:
        time.sleep(1.5)
        c.nodes[1].start()
        c.nodes[2].start()

    import threading

    t = threading.Thread(target=back)
    t.start()
    w.batch(4)  # issued while only one replica is up: held, then done
    t.join()
    assert w.ledger.writes_failed == 0, (tmp_path / "workload.log").read_text()[-3000:]
    finish(c, w)
    INJECTED.append(2)


def test_two_replicas_lost_longer_than_the_hold_time_fail_then_work_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    """One initiator session: its write fails after the hold time, and once quorum is
    back its next write works without logging in again."""
    import subprocess
    import threading

    c = cluster
    c.nodes[1].kill()
    c.nodes[2].kill()

    def back() -> None:
        time.sleep(7.0)  # the hold time is 4 s
        c.nodes[1].start()
        c.nodes[2].start()

    t = threading.Thread(target=back)
    t.start()
    out = subprocess.run(
        [
            "qemu-io",
            "-f",
            "raw",
            "-c",
            f"write -P 7 0 {REGION}",
            "-c",
            "sleep 9000",
            "-c",
            f"write -P 8 0 {REGION}",
            "-c",
            f"read -P 8 0 {REGION}",
            c.target.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    t.join()
    text = out.stdout + out.stderr
    assert "write failed" in text, text
    assert text.count("wrote ") == 1 and "read " in text and "verification failed" not in text, text
    st = c.target.wait_healthy(60)
    assert st["writable"]
    INJECTED.append(2)


def random_schedule(c: Cluster, w: Workload, rng: random.Random, n: int, tmp: Path) -> int:
    """``n`` faults drawn at random, some overlapping; returns how many were injected."""
    kinds = ["kill", "hang", "stale", "full", "slow", "cut", "target", "two_short"]
    injected = 0
    copies: dict[int, Path] = {}
    for step in range(n):
        kind = rng.choice(kinds)
        i = rng.randrange(len(c.nodes))
        node = c.nodes[i]
        hold = rng.uniform(0.3, 2.5)
        st = None
        try:
            st = c.target.status()
        except OSError:
            pass
        healthy = st is not None and st["state"] == "healthy"
        if kind == "stale" and not healthy:
            kind = "kill"  # losing data on a second replica would be beyond any quorum
        if kind == "kill":
            node.kill()
            time.sleep(hold)
            node.start()
        elif kind == "hang":
            node.stop_process()
            time.sleep(hold)
            node.continue_process()
        elif kind == "stale":
            if i not in copies or rng.random() < 0.5:
                copies[i] = tmp / f"copy{i}"
                node.copy_data(copies[i])
                time.sleep(rng.uniform(0.2, 1.0))
            node.kill()
            node.restore_data(copies[i])
            node.start()
            del copies[i]
        elif kind == "full":
            node.fill()
            time.sleep(hold)
            node.unfill()
        elif kind == "slow":
            node.proxy.delay = rng.uniform(0.02, 0.6)
            time.sleep(hold)
            node.proxy.delay = 0.0
        elif kind == "cut":
            node.proxy.cut = True
            time.sleep(hold)
            node.proxy.cut = False
            node.proxy.drop_all()
        elif kind == "target":
            c.target.kill()
            time.sleep(rng.uniform(0.0, 1.0))
            c.target.start()
        elif kind == "two_short":
            other = c.nodes[(i + 1) % len(c.nodes)]
            node.kill()
            other.kill()
            time.sleep(rng.uniform(0.2, 2.0))
            node.start()
            other.start()
            injected += 1
        injected += 1
        if step % 10 == 9:
            w.check_read(f"read after fault {step}")
        if rng.random() < 0.3:
            try:
                c.target.wait_healthy(60)
            except AssertionError:
                raise
    return injected


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_random_fault_schedule(cluster: Cluster, tmp_path: Path, round_: int) -> None:
    seed = SEED + 1000 * round_
    rng = random.Random(seed)
    c = cluster
    w = Workload(c.target.url, SIZE, seed, tmp_path / "workload.log")
    w.start()
    started = time.monotonic()
    n = random_schedule(c, w, rng, FAULTS_PER_ROUND, tmp_path)
    doc = finish(c, w)
    INJECTED.append(n)
    led = w.ledger
    print(
        f"seed {seed}: {n} faults in {time.monotonic() - started:.0f} s, "
        f"{led.writes_acked} writes acknowledged, {led.writes_failed} failed, "
        f"{led.reads_checked} reads checked, 0 lost, 0 stale; final: {doc['state']}"
    )
