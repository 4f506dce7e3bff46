"""``cairn pool serve --backend zfs`` as a real process on a zfs-fuse pool, driven with
``PoolClient``: replicas are datasets, and survive a restart of the server."""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.pool.client import PoolClient, PoolError
from cairn.replication.wire import Status
from cairn.zfs.pools import ResilverProgress

from .conftest import ZfsLab

pytestmark = pytest.mark.integration

HOST = "127.0.0.2"
MiB = 1 << 20
START_TIMEOUT = 60.0


def pattern(seed: int, nbytes: int) -> bytes:
    unit = seed.to_bytes(8, "big")
    return b"".join(unit + pos.to_bytes(8, "big") for pos in range(0, nbytes, 16))[:nbytes]


class ZfsPoolServer:
    """One ``cairn pool serve --backend zfs`` subprocess; ``start`` waits for its ready line."""

    def __init__(self, workdir: Path, zpool: str, name: str = "zp1") -> None:
        self.workdir = workdir
        self.zpool = zpool
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.logs: list[Path] = []

    def start(self) -> ZfsPoolServer:
        log = self.workdir / f"pool-stderr.{len(self.logs)}.log"
        self.logs.append(log)
        cmd = [sys.executable, "-m", "cairn.cli.main", "--log-level", "debug", "pool", "serve"]
        cmd += ["--name", self.name, "--backend", "zfs", "--zpool", self.zpool]
        cmd += ["--listen", f"{HOST}:0"]
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                assert time.monotonic() < deadline, f"no ready line\n{self.stderr()}"
                if sel.select(0.2):
                    chunk = os.read(fd, 4096)
                    assert chunk, f"pool server exited with {self.proc.wait()}\n{self.stderr()}"
                    buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        prefix = f"ready pool={self.name} listen={HOST}:"
        assert line.startswith(prefix), f"unexpected ready line {line!r}\n{self.stderr()}"
        self.port = int(line[len(prefix) :])
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"pool server ignored signal {sig}\n{self.stderr()}") from None

    def stderr(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def client(self) -> PoolClient:
        return PoolClient(HOST, self.port, timeout=30).connect()


@pytest.fixture
def zpool(lab: ZfsLab) -> str:
    name = lab.name()
    lab.pools.create(name, "stripe", lab.files(1, size=256 * MiB), mountpoint=lab.mountpoint(name))
    return name


@pytest.fixture
def server(zpool: str, tmp_path: Path) -> Iterator[ZfsPoolServer]:
    srv = ZfsPoolServer(tmp_path, zpool)
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop(signal.SIGKILL)


def test_pool_serve_zfs_keeps_replicas_in_datasets(
    server: ZfsPoolServer, lab: ZfsLab, zpool: str
) -> None:
    server.start()
    with server.client() as c:
        info = c.open("vol-z", 16 * MiB, 4096)
        assert info["size"] == 16 * MiB and info["block_size"] == 4096 and info["high_seq"] == 0
        uuid = info["uuid"]
        c.write(0, pattern(1, 256 * 1024), seq=1)
        c.write(9 * MiB, pattern(2, 8192), seq=2)
        c.unmap(64 * 1024, 64 * 1024, seq=3)
        c.set_meta({"epoch": 2})
        c.flush()
        assert c.read(0, 64 * 1024) == pattern(1, 64 * 1024)
        assert c.read(64 * 1024, 64 * 1024) == bytes(64 * 1024)
    # the replica is a dataset of its own, with the volume's block size as record size
    datasets = lab.zfs("list", "-H", "-r", "-o", "name", zpool).split()
    assert f"{zpool}/cairn/vol-z" in datasets
    props = lab.zfs(
        "get", "-H", "-p", "-o", "value", "recordsize,compression", f"{zpool}/cairn/vol-z"
    )
    assert props.split() == ["4096", "on"]
    # the pool server's own state lives in the root dataset
    root_mnt = lab.zfs("get", "-H", "-o", "value", "mountpoint", f"{zpool}/cairn").strip()
    assert (Path(root_mnt) / "replication" / f"{uuid}.meta.json").is_file()

    assert server.stop() == 0, server.stderr()
    server.start()
    with server.client() as c:
        info = c.open("vol-z", 16 * MiB, 4096, create=False)
        assert info["uuid"] == uuid and info["high_seq"] == 3 and info["clean_seq"] == 3
        assert info["meta"] == {"epoch": 2}
        assert c.read(0, 64 * 1024) == pattern(1, 64 * 1024)
        assert c.read(64 * 1024, 64 * 1024) == bytes(64 * 1024)
        assert c.read(128 * 1024, 128 * 1024) == pattern(1, 256 * 1024)[128 * 1024 :]
        assert c.read(9 * MiB, 8192) == pattern(2, 8192)
        with pytest.raises(PoolError) as e:
            c.open("absent", MiB, create=False)
        assert e.value.status == Status.NOT_FOUND
    with server.client() as c:
        pool = c.info()
        assert {k: pool[k] for k in ("pool", "volumes")} == {"pool": "zp1", "volumes": ["vol-z"]}
        assert set(pool["allocated"]) <= {"vol-z"}
    assert server.stop() == 0, server.stderr()
    assert "backend=zfs" in server.stderr()


def test_pool_serve_zfs_refuses_a_missing_pool_or_option(tmp_path: Path, zfs_fuse: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cairn.cli.main", "pool", "serve", "--name", "x"]
        + ["--backend", "zfs", "--zpool", "cairn-no-such-pool", "--listen", f"{HOST}:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot open the ZFS pool cairn-no-such-pool" in proc.stderr
    # --backend zfs needs --zpool; --backend embedded (the default) needs --path
    for extra, message in [
        (["--backend", "zfs"], "--backend zfs needs --zpool POOL"),
        ([], "--backend embedded needs --path DIR"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "cairn.cli.main", "pool", "serve", "--name", "x", *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_replace_a_disk_in_raidz2_while_a_volume_takes_writes(lab: ZfsLab, tmp_path: Path) -> None:
    """A replica on a raidz2 pool keeps taking writes while one of the pool's disks is
    replaced; every write acknowledged before, during and after the resilver reads back
    as written, also after the pool server restarts."""
    disks = lab.files(4, size=256 * MiB)
    (spare,) = lab.files(1, size=256 * MiB)
    zpool = lab.name()
    lab.pools.create(zpool, "raidz2", disks, mountpoint=lab.mountpoint(zpool))
    srv = ZfsPoolServer(tmp_path, zpool).start()
    size, chunk = 32 * MiB, 64 * 1024
    acked: dict[int, bytes] = {}  # offset -> the data of the last acknowledged write there
    during: list[int] = []  # seqs acknowledged while the resilver ran
    errors: list[BaseException] = []
    stop = threading.Event()
    resilvering = threading.Event()

    def writer() -> None:
        rnd = random.Random(11)
        seq = 0
        try:
            with srv.client() as c:
                c.open("vol-r", size, 4096, session=1)
                # fill first, so that the resilver has data to copy
                for off in range(0, size, 1 << 20):
                    seq += 1
                    c.write(off, pattern(seq, 1 << 20), seq=seq)
                    for o in range(off, off + (1 << 20), chunk):
                        acked[o] = pattern(seq, 1 << 20)[o - off : o - off + chunk]
                c.flush()
                resilvering.set()
                while not stop.is_set():
                    seq += 1
                    off = rnd.randrange(size // chunk) * chunk
                    data = pattern(seq, chunk)
                    c.write(off, data, seq=seq)
                    acked[off] = data
                    during.append(seq)
                    if seq % 16 == 0:
                        c.flush()
                c.flush()
        except BaseException as e:  # reported by the test
            errors.append(e)
            resilvering.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert resilvering.wait(120), "the volume was not filled"
        reports: list[ResilverProgress] = []
        result = lab.pools.replace(
            zpool, disks[1], spare, wait=True, interval=0.05, on_progress=reports.append
        )
        writes_while_replacing = len(during)
        stop.set()
        thread.join(120)
        assert not thread.is_alive() and not errors, errors
        assert result.changed, result.message
        assert [r for r in reports if r.in_progress], f"no resilver seen: {reports}"
        assert writes_while_replacing > 0, "no write was acknowledged during the resilver"
        print(
            f"{writes_while_replacing} writes acknowledged during the replace; "
            f"{len(reports)} progress readings, last {reports[-1].percent}%"
        )
        status = lab.pools.status(zpool)
        assert status.group_members() == [(disks[0], spare, disks[2], disks[3])]
        assert status.state == "ONLINE"
        assert all(leaf.checksum_errors == 0 for leaf in status.leaves())

        def verify() -> None:
            with srv.client() as c:
                c.open("vol-r", size, 4096, create=False)
                for off in range(0, size, chunk):
                    assert c.read(off, chunk) == acked[off], f"offset {off}"

        verify()
        assert srv.stop() == 0, srv.stderr()
        srv.start()
        verify()
    finally:
        stop.set()
        thread.join(60)
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)
