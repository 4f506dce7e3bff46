"""Snapshots, clones, deletes, rollback and online grow of a 3-replica volume through
the target's HTTP API, with real pool servers and targets (``cluster.py``)."""

from __future__ import annotations

import functools
import json
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cairn.pool.client import PoolClient

from ..zfs_helpers import ZfsFuse, ZfsLab, zfs_fuse_running
from .cluster import Cluster, ReplicatedTarget
from .test_malformed import login
from .workload import REGION, Workload
from .zfs_node import ZfsPoolNode

pytestmark = pytest.mark.integration

MiB = 1 << 20
SIZE = 16 * MiB


def api(t: ReplicatedTarget, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{t.api}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def pool_client(node: Any) -> PoolClient:
    """Straight to the pool server (no proxy), as a tool would."""
    return PoolClient(node.host, node.port, timeout=30).connect()


def read_volume(node: Any, volume: str, size: int = SIZE) -> bytes:
    with pool_client(node) as c:
        c.hello()
        c.open(volume, size, 512, create=False)
        return b"".join(c.read(off, 4 * MiB) for off in range(0, size, 4 * MiB))


def qemu_read(url: str, dest: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(dest)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return dest.read_bytes()


def unit_ready(sock: socket.socket, cmdsn: int) -> tuple[int, int, int] | None:
    """TEST UNIT READY on a logged-in raw session: None when GOOD, else (sense key, ASC,
    ASCQ) of the CHECK CONDITION."""
    bhs = bytes((0x01, 0x81, 0, 0, 0, 0, 0, 0)) + bytes(8)  # final, simple; LUN 0
    bhs += struct.pack(">IIII", cmdsn + 100, 0, cmdsn, 0) + bytes(16)  # ITT, EDTL, CmdSN
    sock.sendall(bhs)
    sock.settimeout(10)
    buf = b""
    while True:
        while len(buf) < 48:
            chunk = sock.recv(4096)
            assert chunk, "the target closed the session"
            buf += chunk
        dsl = int.from_bytes(buf[5:8], "big")
        total = 48 + dsl + (-dsl & 3)
        while len(buf) < total:
            buf += sock.recv(4096)
        pdu, buf = buf[:total], buf[total:]
        if pdu[0] & 0x3F != 0x21:  # not the SCSI response (a NOP-In): skip it
            continue
        if pdu[3] == 0:
            return None
        sense = pdu[50 : 48 + dsl]
        if sense[0] & 0x7F in (0x72, 0x73):
            return sense[1] & 0x0F, sense[2], sense[3]
        return sense[2] & 0x0F, sense[12], sense[13]


@pytest.fixture(scope="session")
def zfs_fuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsFuse]:
    with zfs_fuse_running(tmp_path_factory) as daemon:
        yield daemon


@pytest.fixture(params=["embedded", "zfs"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three pool servers of the embedded store, or of the ZFS store (each on a zfs-fuse
    pool of its own; fails, with the reason, without the zfs-fuse daemon)."""
    lab: ZfsLab | None = None
    if request.param == "zfs":
        request.getfixturevalue("zfs_fuse")
        lab = ZfsLab(tmp_path)
    try:
        c = Cluster(
            tmp_path, size="16M", hold_time=10.0, replica_timeout=2.0,
            make_node=None if lab is None else functools.partial(ZfsPoolNode, lab=lab),
        )  # fmt: skip
        try:
            c.target.wait_healthy()
            yield c
        except BaseException:
            print(c.report())
            raise
        finally:
            c.cleanup()
    finally:
        if lab is not None:
            lab.cleanup()


def test_a_snapshot_under_writes_is_one_point_on_every_replica_and_its_clone_serves_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    t = cluster.target
    w = Workload(t.url, SIZE, seed=7, log=tmp_path / "workload.log")
    w.start()
    try:
        time.sleep(2.0)
        with w.ledger.lock:
            floor = dict(w.ledger.acked)
        status, doc = api(t, "POST", "/snapshots", {"name": "s1"})
        assert status == 200, doc
        with w.ledger.lock:
            ceiling = dict(w.ledger.attempted)
        time.sleep(1.0)  # the writes go on
    finally:
        w.stop()
    assert sorted(doc["replicas"]) == sorted(n.address for n in cluster.nodes)
    assert doc["name"] == "s1" and doc["created"] > 0
    # the book survives a target restart
    t.stop()
    t.start()
    t.wait_healthy()
    status, listing = api(t, "GET", "/snapshots")
    assert status == 200
    (entry,) = listing["snapshots"]
    assert entry["name"] == "s1" and entry["size"] == SIZE and entry["used"] > 0
    assert sorted(entry["reported_by"]) == sorted(entry["replicas"])
    assert api(t, "POST", "/snapshots", {"name": "s1"})[0] == 409
    assert api(t, "POST", "/snapshots", {"name": "-bad"})[0] == 400

    status, clone = api(t, "POST", "/clones", {"snapshot": "s1", "name": "c1"})
    assert status == 200, clone
    assert sorted(clone["replicas"]) == sorted(doc["replicas"]) and clone["size"] == SIZE
    assert api(t, "POST", "/clones", {"snapshot": "s1", "name": "c1"})[0] == 409
    assert api(t, "POST", "/clones", {"snapshot": "nope", "name": "c2"})[0] == 404
    # every replica's snapshot holds the same bytes, one consistent point of the writes
    images = [read_volume(n, "c1") for n in cluster.nodes]
    assert images[0] == images[1] == images[2]
    w.ledger.attempted = ceiling
    w.ledger.check(images[0], floor, "snapshot")
    assert not w.ledger.stale and not w.ledger.lost, (w.ledger.stale + w.ledger.lost)[:5]

    # the clone served by a target of its own reads the snapshot; writes stay in it
    root = tmp_path / "clone"
    root.mkdir()
    ct = ReplicatedTarget(root, "c1", "16M", clone["replicas"], 10.0, 2.0).start()
    try:
        ct.wait_healthy()
        assert qemu_read(ct.url, tmp_path / "c1.img") == images[0]
        subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 251 0 {REGION}", ct.url],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        assert qemu_read(ct.url, tmp_path / "c1b.img")[:REGION] == bytes([251]) * REGION
    finally:
        ct.stop()
    src = qemu_read(t.url, tmp_path / "src.img")
    assert src[:REGION] != bytes([251]) * REGION

    # a snapshot a clone depends on is not deleted
    status, err = api(t, "DELETE", "/snapshots/s1")
    assert status == 409 and "c1" in err["error"], err
    assert [s["name"] for s in api(t, "GET", "/snapshots")[1]["snapshots"]] == ["s1"]
    assert api(t, "DELETE", "/snapshots/none")[0] == 404


def test_delete_reaches_a_replica_that_was_offline_before_it_votes_again(
    cluster: Cluster,
) -> None:
    t = cluster.target
    assert api(t, "POST", "/snapshots", {"name": "d1"})[0] == 200
    assert api(t, "POST", "/snapshots", {"name": "d2"})[0] == 200
    status, doc = api(t, "DELETE", "/snapshots/d1")
    assert status == 200 and doc["pending"] == [], doc
    node = cluster.nodes[2]
    node.kill()
    deadline = time.monotonic() + 20
    while t.status()["replicas"][2]["state"] != "offline" and time.monotonic() < deadline:
        time.sleep(0.1)
    status, doc = api(t, "DELETE", "/snapshots/d2")
    assert status == 200 and doc["pending"] == [node.address], doc
    assert api(t, "POST", "/snapshots", {"name": "d2"})[0] == 409  # still on the offline one
    assert [s["name"] for s in api(t, "GET", "/snapshots")[1]["snapshots"]] == []
    node.start()
    t.wait_healthy()
    with pool_client(node) as c:
        c.hello()
        c.open("vol", SIZE, 512, create=False)
        assert c.snapshots() == []
    book = json.loads((t.state / "vol.snapshots.json").read_text())
    assert book["deletes"] == {} and book["snapshots"] == {}


def test_rollback_is_refused_while_logged_in_then_restores_the_snapshot(
    cluster: Cluster, tmp_path: Path
) -> None:
    t = cluster.target
    io = ["qemu-io", "-f", "raw"]
    subprocess.run([*io, "-c", f"write -P 1 0 {MiB}", t.url], check=True, capture_output=True)
    assert api(t, "POST", "/snapshots", {"name": "r1"})[0] == 200
    subprocess.run([*io, "-c", f"write -P 2 0 {MiB}", "-c", f"write -P 3 {8 * MiB} {MiB}",
                    t.url], check=True, capture_output=True)  # fmt: skip
    seq_before = t.status()["last_seq"]
    sock = socket.create_connection(("127.0.0.1", t.port))
    try:
        assert login(sock, t.iqn)
        status, err = api(t, "POST", "/rollback", {"snapshot": "r1"})
        assert status == 409 and "logged in" in err["error"], err
    finally:
        sock.close()
    deadline = time.monotonic() + 10
    while True:
        status, doc = api(t, "POST", "/rollback", {"snapshot": "r1"})
        if status != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200, doc
    assert doc["seq"] > seq_before and sorted(doc["replicas"]) == sorted(
        n.address for n in cluster.nodes
    )
    data = qemu_read(t.url, tmp_path / "after.img")
    assert data[:MiB] == bytes([1]) * MiB and data[8 * MiB : 9 * MiB] == bytes(MiB)
    for n in cluster.nodes:  # every replica, and each holds the rollback's number
        assert read_volume(n, "vol")[: 9 * MiB] == data[: 9 * MiB]
        with pool_client(n) as c:
            c.hello()
            assert c.open("vol", SIZE, 512, create=False)["high_seq"] >= doc["seq"]
    assert api(t, "POST", "/rollback", {"snapshot": "none"})[0] == 404


def test_online_grow_is_seen_by_readcapacity16_and_shrink_is_refused(cluster: Cluster) -> None:
    t = cluster.target

    def capacity() -> int:
        r = subprocess.run(["iscsi-readcapacity16", "-s", t.url], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return int(r.stdout.strip())

    assert capacity() == SIZE
    sock = socket.create_connection(("127.0.0.1", t.port))  # an initiator logged in
    assert login(sock, t.iqn)
    cmdsn = 1
    for _ in range(5):  # past the unit attentions of a new session
        sense = unit_ready(sock, cmdsn)
        cmdsn += 1
        if sense is None:
            break
    assert sense is None, sense
    status, err = api(t, "POST", "/resize", {"size": 8 * MiB})
    assert status == 400 and "shrink" in err["error"]
    assert api(t, "POST", "/resize", {"size": "big"})[0] == 400
    status, doc = api(t, "POST", "/resize", {"size": 32 * MiB})
    assert status == 200 and doc["changed"] and len(doc["replicas"]) == 3, doc
    assert capacity() == 32 * MiB
    # the initiator that was logged in is told: CAPACITY DATA HAS CHANGED (2Ah/09h)
    assert unit_ready(sock, cmdsn) == (0x06, 0x2A, 0x09)
    sock.close()
    assert t.status()["size"] == 32 * MiB
    for n in cluster.nodes:
        with pool_client(n) as c:
            c.hello()
            assert c.open("vol", 32 * MiB, 512, create=False)["size"] == 32 * MiB
    io = ["qemu-io", "-f", "raw", "-c", f"write -P 9 {30 * MiB} {MiB}", t.url]
    subprocess.run(io, check=True, capture_output=True, timeout=60)
