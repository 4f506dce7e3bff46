"""Faults against a 3-replica volume of real processes, with a real initiator writing.

Every scenario injects faults while ``qemu-io`` writes (``workload.py``) and ends with
all faults healed: the volume must become healthy without help, every replica must hold
every acknowledged write, and no read along the way may have returned older data than
was acknowledged.  The random schedules are seeded (``CAIRN_FAULT_SEED`` to replay one,
``CAIRN_FAULT_ROUNDS`` for more faults); the number of faults injected is printed.

Every test runs twice, with the replicas on the embedded store (each pool on a tmpfs) and
on the ZFS store (each pool a zfs-fuse pool of its own, ``zfs_node.py``); the ZFS half
needs the zfs-fuse daemon and fails with the reason when it cannot run.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.pool.client import PoolClient

from ..zfs_helpers import ZfsFuse, ZfsLab, zfs_fuse_running
from .cluster import Cluster, PoolProcess
from .workload import REGION, RUNNING, Workload
from .zfs_node import ZfsPoolNode

pytestmark = pytest.mark.integration

SIZE = 16 << 20
SEED = int(os.environ.get("CAIRN_FAULT_SEED", "20261121"))
ROUNDS = int(os.environ.get("CAIRN_FAULT_ROUNDS", "3"))
FAULTS_PER_ROUND = 70
BACKENDS = ["embedded", "zfs"]
#: faults injected and seconds spent (cluster set up to torn down), per backend
INJECTED: dict[str, list[int]] = {b: [] for b in BACKENDS}
SECONDS: dict[str, float] = {b: 0.0 for b in BACKENDS}


@pytest.fixture(scope="session")
def zfs_fuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsFuse]:
    with zfs_fuse_running(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture(scope="module", autouse=True)
def fault_counts() -> Iterator[None]:
    yield
    for backend in BACKENDS:
        if INJECTED[backend]:
            print(
                f"\n{backend}: {sum(INJECTED[backend])} faults injected in "
                f"{len(INJECTED[backend])} tests, {SECONDS[backend]:.0f} s"
            )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Where the replicas live: ``embedded`` or ``zfs``."""
    name: str = request.param
    return name


@pytest.fixture
def cluster(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    started = time.monotonic()
    lab: ZfsLab | None = None
    if backend == "zfs":
        request.getfixturevalue("zfs_fuse")  # fails, with the reason, without zfs-fuse
        lab = ZfsLab(tmp_path)
    try:
        c = Cluster(
            tmp_path, rf=3, size="16M", hold_time=4.0, replica_timeout=1.0,
            make_node=None if lab is None else functools.partial(ZfsPoolNode, lab=lab),
        )  # fmt: skip
        try:
            yield c
        finally:
            if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
                print(c.report())
            for w in RUNNING:
                w.kill()
            RUNNING.clear()
            c.cleanup()
    finally:
        if lab is not None:
            lab.cleanup()
        SECONDS[backend] += time.monotonic() - started


def logged(c: Cluster, event: str, node: PoolProcess | None = None, text: str = "") -> int:
    """How many ``event=EVENT`` lines of the target's log name ``node`` (any node when
    None) and contain ``text``."""
    who = "" if node is None else f" replica={node.address} "
    return sum(
        1
        for line in c.target.log.read_text(errors="replace").splitlines()
        if f" event={event} " in line and who in line and text in line
    )


def no_space(c: Cluster, node: PoolProcess | None = None) -> int:
    """How often the target took ``node``'s replica (any) out because its pool was full."""
    return logged(c, "replica_degraded", node, "no space left in the pool")


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
    links = [r["link"] for r in c.target.status()["replicas"]]
    assert links == ["local" if c.local_links else "tcp"] * len(c.nodes), links
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


def test_scenarios_one_fault_at_a_time(cluster: Cluster, backend: str, tmp_path: Path) -> None:
    """Each kind of fault alone, with writes running, then healed."""
    c = cluster
    w = Workload(c.target.url, SIZE, SEED, tmp_path / "workload.log")
    w.start()
    faults = 0
    a, b = c.nodes[0], c.nodes[1]

    # disk full: writes fail on that replica only.  First, while most blocks of the
    # volume were never written: an embedded replica needs space only for those (its
    # data file is sparse, an overwrite stays in place), a ZFS one for every write.
    c.target.wait_healthy(60)
    deadline = time.monotonic() + 30
    while not w.ledger.writes_acked and time.monotonic() < deadline:
        time.sleep(0.05)  # writes reach b
    assert w.ledger.writes_acked, (tmp_path / "workload.log").read_text()[-3000:]
    b.fill()
    deadline = time.monotonic() + 30
    while not no_space(c, b) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert no_space(c, b), f"the fill went unnoticed\n{c.report()}"
    st = c.target.status()
    assert st["writable"], st
    b.unfill()
    c.target.wait_healthy(60)
    faults += 1

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
    assert logged(c, "replica_stale", a), "the old copy came back with current seqs"
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
    INJECTED[backend].append(faults)
    print(f"{backend}: faults injected: {faults}, writes acknowledged: {w.ledger.writes_acked}")


def test_two_replicas_lost_shorter_than_the_hold_time_is_invisible(
    cluster: Cluster, backend: str, tmp_path: Path
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
    INJECTED[backend].append(2)


def test_two_replicas_lost_longer_than_the_hold_time_fail_then_work_again(
    cluster: Cluster, backend: str, tmp_path: Path
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
    INJECTED[backend].append(2)


def random_schedule(
    c: Cluster, w: Workload, rng: random.Random, n: int, tmp: Path
) -> tuple[int, Counter[str]]:
    """``n`` faults drawn at random, some overlapping; returns how many were injected,
    and how many steps of each kind were taken."""
    kinds = ["kill", "hang", "stale", "full", "slow", "cut", "target", "two_short"]
    if c.local_links:  # no network between the target and the pool servers to fault
        kinds = [k for k in kinds if k not in ("slow", "cut")]
    injected = 0
    taken: Counter[str] = Counter()
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
        taken[kind] += 1
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
            before = no_space(c, node)
            node.fill()
            time.sleep(hold)
            taken["full, noticed"] += no_space(c, node) > before
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
    return injected, taken


def test_random_fault_schedule_over_local_sockets(tmp_path: Path) -> None:
    """The pool servers on the target's machine, reached through their local sockets
    (the default there): a seeded schedule of the process faults (kill, hang, stale copy,
    full pool, target kill, two lost) loses nothing acknowledged and reads nothing
    stale, and every link is back on the local socket at the end."""
    seed = SEED + 7
    c = Cluster(tmp_path, rf=3, size="16M", hold_time=4.0, replica_timeout=1.0, local_links=True)
    try:
        assert [r["link"] for r in c.target.wait_healthy(60)["replicas"]] == ["local"] * 3
        w = Workload(c.target.url, SIZE, seed, tmp_path / "workload.log")
        w.start()
        started = time.monotonic()
        n, taken = random_schedule(c, w, random.Random(seed), FAULTS_PER_ROUND, tmp_path)
        doc = finish(c, w)
        INJECTED["embedded"].append(n)
        print(
            f"local sockets, seed {seed}: {n} faults in {time.monotonic() - started:.0f} s "
            f"({dict(taken)}), {w.ledger.writes_acked} writes acknowledged, "
            f"{w.ledger.reads_checked} reads checked, 0 lost, 0 stale; final: {doc['state']}"
        )
    except BaseException:
        print(c.report())
        raise
    finally:
        for wl in RUNNING:
            wl.kill()
        RUNNING.clear()
        c.cleanup()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_random_fault_schedule(cluster: Cluster, backend: str, tmp_path: Path, round_: int) -> None:
    seed = SEED + 1000 * round_
    rng = random.Random(seed)
    c = cluster
    w = Workload(c.target.url, SIZE, seed, tmp_path / "workload.log")
    w.start()
    started = time.monotonic()
    n, taken = random_schedule(c, w, rng, FAULTS_PER_ROUND, tmp_path)
    doc = finish(c, w)
    INJECTED[backend].append(n)
    led = w.ledger
    print(
        f"{backend} seed {seed}: {n} faults in {time.monotonic() - started:.0f} s "
        f"({taken['full']} pools filled, {taken['full, noticed']} noticed in time; "
        f"{taken['stale']} stale copies, {logged(c, 'replica_stale')} replicas seen stale), "
        f"{led.writes_acked} writes acknowledged, {led.writes_failed} failed, "
        f"{led.reads_checked} reads checked, 0 lost, 0 stale; final: {doc['state']}"
    )
