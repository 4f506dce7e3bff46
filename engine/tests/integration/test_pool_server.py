"""``cairn pool serve`` as a real process on 127.0.0.2, driven over TCP.

Every test talks to the server through a socket (``PoolClient`` or raw bytes) and asserts
on what came back or on what the server logged: replica open and reopen across restarts,
data and seqs, DIFF/READ_SEQS/REBUILD, authentication, bad input that must close one
connection and harm nobody else, and a pool that runs out of space.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.pool.client import PoolClient, PoolError
from cairn.replication import wire
from cairn.replication.wire import HEADER, MAGIC, REPLY, Decoder, Op, Status, encode

pytestmark = pytest.mark.integration

HOST = "127.0.0.2"
MiB = 1 << 20
START_TIMEOUT = 30.0


def pattern(seed: int, nbytes: int) -> bytes:
    """Bytes that differ per seed and per position (a shifted block is detected)."""
    unit = struct.pack(">Q", seed) * 8
    out = bytearray(nbytes)
    for pos in range(0, nbytes, 64):
        chunk = struct.pack(">QQ", seed, pos) + unit[16:64]
        out[pos : pos + 64] = chunk[: nbytes - pos]
    return bytes(out)


class PoolProcess:
    """One ``cairn pool serve`` subprocess; ``start`` waits for its ready line."""

    def __init__(self, workdir: Path, path: Path, name: str, secret_file: Path | None) -> None:
        self.workdir = workdir
        self.path = path
        self.name = name
        self.secret_file = secret_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self.logs: list[Path] = []

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "cairn.cli.main", "--log-level", "debug", "pool", "serve"]
        cmd += ["--name", self.name, "--path", str(self.path), "--listen", f"{HOST}:0"]
        if self.secret_file is not None:
            cmd += ["--secret-file", str(self.secret_file)]
        return cmd

    def start(self) -> PoolProcess:
        self.starts += 1
        log = self.workdir / f"pool-stderr.{self.starts}.log"
        self.logs.append(log)
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        assert self.proc.stdout is not None
        line = self._ready_line()
        prefix = f"ready pool={self.name} listen={HOST}:"
        assert line.startswith(prefix), f"unexpected ready line {line!r}\n{self.stderr()}"
        self.port = int(line[len(prefix) :])
        return self

    def _ready_line(self) -> str:
        import selectors

        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                if time.monotonic() > deadline:
                    self.proc.kill()
                    raise AssertionError(f"no ready line in {START_TIMEOUT} s\n{self.stderr()}")
                if sel.select(0.2):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        raise AssertionError(
                            f"pool server exited with {self.proc.wait()}\n{self.stderr()}"
                        )
                    buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"pool server ignored signal {sig}\n{self.stderr()}") from None

    def restart(self) -> PoolProcess:
        assert self.stop() == 0, self.stderr()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def client(self, secret: bytes | None = None) -> PoolClient:
        return PoolClient(HOST, self.port, timeout=10, secret=secret).connect()

    def raw(self) -> socket.socket:
        s = socket.create_connection((HOST, self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


@pytest.fixture
def pool_server(tmp_path: Path) -> Iterator[object]:
    """Factory: ``pool_server(name=, path=, secret=)`` starts a pool server."""
    made: list[PoolProcess] = []

    def make(
        name: str = "p1", path: Path | None = None, secret: bytes | None = None
    ) -> PoolProcess:
        secret_file = None
        if secret is not None:
            secret_file = tmp_path / f"secret-{len(made)}"
            secret_file.write_bytes(secret + b"\n")
            secret_file.chmod(0o600)
        srv = PoolProcess(tmp_path, path or tmp_path / f"pool-{len(made)}", name, secret_file)
        made.append(srv)
        return srv.start()

    yield make
    for srv in made:
        if srv.alive:
            srv.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolProcess]:
    """One server for the tests that only need a fresh volume each."""
    tmp = tmp_path_factory.mktemp("pool-shared")
    srv = PoolProcess(tmp, tmp / "pool", "shared", None).start()
    yield srv
    alive = srv.alive
    code = srv.stop()
    assert alive and code == 0, f"shared pool server died or failed to stop\n{srv.stderr()}"


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the server closed this connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def read_messages(sock: socket.socket, count: int) -> list[wire.Message]:
    dec = Decoder()
    out: list[wire.Message] = []
    sock.settimeout(10)
    while len(out) < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        out += dec.feed(chunk)
    return out


# -- open, reopen, restart -------------------------------------------------------------


def test_open_creates_then_reopens_and_survives_restart(pool_server):
    srv = pool_server()
    with srv.client() as c:
        info = c.open("vol-a", 8 * MiB, 512)
        assert info["volume"] == "vol-a" and info["size"] == 8 * MiB
        assert info["block_size"] == 512 and info["high_seq"] == 0 and info["clean_seq"] == 0
        assert info["meta"] == {}
        uuid = info["uuid"]
        c.write(0, pattern(1, 64 * 1024), seq=10)
        c.write(5 * MiB, pattern(2, 4096), seq=11)
        c.set_meta({"epoch": 4, "target": "t1"})
        c.flush()
    with srv.client() as c:
        info = c.open("vol-a", 8 * MiB, 512, create=False)
        assert info["uuid"] == uuid and info["high_seq"] == 11
    assert srv.restart().alive
    with srv.client() as c:
        info = c.open("vol-a", 8 * MiB, 512, create=False)
        assert info["uuid"] == uuid
        assert info["high_seq"] == 11 and info["clean_seq"] == 11
        assert info["meta"] == {"epoch": 4, "target": "t1"}
        assert c.read(0, 64 * 1024) == pattern(1, 64 * 1024)
        assert c.read(5 * MiB, 4096) == pattern(2, 4096)
        assert c.info()["volume"] == "vol-a"
    with srv.client() as c:  # without an open volume, INFO lists the pool
        pool = c.info()
        assert {k: pool[k] for k in ("pool", "volumes")} == {"pool": "p1", "volumes": ["vol-a"]}
        # the space of each replica the server holds open (vol-a stays open between clients)
        assert set(pool["allocated"]) <= {"vol-a"}
        assert all(v >= 64 * 1024 for v in pool["allocated"].values())


def test_open_checks_and_grows(shared_server):
    with shared_server.client() as c:
        with pytest.raises(PoolError) as e:
            c.open("absent", MiB, create=False)
        assert e.value.status == Status.NOT_FOUND
        c.open("g1", 2 * MiB, 4096)
        c.write(MiB, pattern(3, 4096), seq=1)
    with shared_server.client() as c:
        for kwargs, status in [
            ({"size": 2 * MiB, "block_size": 512}, Status.BAD_REQUEST),  # block size differs
            ({"size": MiB, "block_size": 4096}, Status.BAD_REQUEST),  # smaller
            ({"size": MiB + 512, "block_size": 4096}, Status.BAD_REQUEST),  # not whole blocks
        ]:
            with pytest.raises(PoolError) as e:
                c.open("g1", **kwargs)
            assert e.value.status == status, kwargs
        for bad in ("", "-x", "a/b", "x" * 200, "über"):
            with pytest.raises(PoolError) as e:
                c.open(bad, MiB)
            assert e.value.status == Status.BAD_REQUEST and "name" in e.value.message
        info = c.open("g1", 4 * MiB, 4096)  # larger: grown
        assert info["size"] == 4 * MiB
        c.write(3 * MiB, pattern(4, 4096), seq=2)
        assert c.read(MiB, 4096) == pattern(3, 4096)
        c.resize(6 * MiB)
        assert c.info()["size"] == 6 * MiB
        with pytest.raises(PoolError) as e:
            c.resize(5 * MiB)
        assert e.value.status == Status.BAD_REQUEST
        with pytest.raises(PoolError) as e:
            c.read(6 * MiB, 4096)
        assert e.value.status == Status.OUT_OF_RANGE


def test_requests_before_open_get_not_open(shared_server):
    with shared_server.client() as c:
        for call in (
            lambda: c.write(0, bytes(512), 1),
            lambda: c.read(0, 512),
            lambda: c.flush(),
            lambda: c.unmap(0, 512, 1),
            lambda: c.diff(0, 512, 0),
            lambda: c.set_meta({}),
        ):
            with pytest.raises(PoolError) as e:
                call()
            assert e.value.status == Status.NOT_OPEN


# -- data --------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [512, 4096])
def test_patterns_at_many_offsets_and_sizes(shared_server, block_size):
    size = 64 * MiB
    rnd = random.Random(block_size)
    with shared_server.client() as c:
        c.open(f"pat-{block_size}", size, block_size)
        expect: dict[int, bytes] = {}
        seq = 0
        lengths = [block_size, 4096, 8 * 4096, 64 * 1024, 256 * 1024, MiB, 4 * MiB]
        for length in lengths * 3:
            blocks = (size - length) // block_size
            offset = rnd.randrange(blocks) * block_size
            seq += 1
            data = pattern(seq, length)
            c.write(offset, data, seq)
            for pos in range(offset, offset + length, block_size):
                expect[pos] = data[pos - offset : pos - offset + block_size]
        for _ in range(40):
            offset = rnd.choice(list(expect))
            length = min(rnd.choice([1, 8, 64]) * block_size, size - offset)
            got = c.read(offset, length)
            for pos in range(offset, offset + length, block_size):
                want = expect.get(pos, bytes(block_size))
                assert got[pos - offset : pos - offset + block_size] == want, pos
        c.flush()
        assert c.info()["high_seq"] == seq


def test_unmap_reads_zeros_and_records_its_seq(shared_server):
    with shared_server.client() as c:
        c.open("um", 4 * MiB, 512)
        c.write(0, pattern(1, MiB), seq=1)
        c.unmap(4096, 8192, seq=2)
        assert c.read(4096, 8192) == bytes(8192)
        assert c.read(0, 4096) == pattern(1, MiB)[:4096]
        assert c.read(12288, 512) == pattern(1, MiB)[12288:12800]
        _, seqs = c.read_seqs(3584, 2048)
        assert seqs == [1, 2, 2, 2]
        with pytest.raises(PoolError) as e:
            c.unmap(100, 512, 3)
        assert e.value.status == Status.BAD_REQUEST
        with pytest.raises(PoolError) as e:
            c.unmap(0, 512, 0)
        assert e.value.status == Status.BAD_REQUEST


def test_bad_writes_get_precise_errors(shared_server):
    with shared_server.client() as c:
        c.open("bw", MiB, 512)
        for offset, data, seq, status in [
            (0, bytes(512), 0, Status.BAD_REQUEST),  # seq 0
            (100, bytes(512), 1, Status.BAD_REQUEST),  # misaligned
            (0, bytes(100), 1, Status.BAD_REQUEST),  # not whole blocks
            (MiB, bytes(512), 1, Status.OUT_OF_RANGE),
            (MiB - 512, bytes(1024), 1, Status.OUT_OF_RANGE),
            (MiB - 512, bytes(256 * 1024), 1, Status.OUT_OF_RANGE),  # large: received in place
        ]:
            with pytest.raises(PoolError) as e:
                c.write(offset, data, seq)
            assert e.value.status == status, (offset, len(data), seq)
            assert e.value.message
        # length that does not match the payload, small and large
        for n in (512, 128 * 1024):
            reply = c.request(Op.WRITE, seq=5, offset=0, length=n + 512, data=bytes(n), check=False)
            assert reply.status == Status.BAD_REQUEST
        c.write(0, pattern(9, 512), seq=9)  # the connection still works
        assert c.read(0, 512) == pattern(9, 512)


def test_pipelined_requests_are_answered_in_order(shared_server):
    """Many requests in one send: all answered, tags echoed, the data all there."""
    with shared_server.client() as c:
        c.open("pipe", 64 * MiB, 512)
    s = shared_server.raw()
    try:
        msgs: list[bytes] = []
        msgs.append(b"".join(encode(Op.HELLO, tag=1, data=wire.json_payload({"client": "p"}))))
        msgs.append(
            b"".join(
                encode(
                    Op.OPEN,
                    tag=2,
                    data=wire.json_payload(
                        {"volume": "pipe", "size": 64 * MiB, "block_size": 512, "create": False}
                    ),
                )
            )
        )
        tag = 10
        for i in range(200):
            size = 4096 if i % 10 else 192 * 1024
            msgs.append(
                b"".join(
                    encode(
                        Op.WRITE,
                        tag=tag,
                        seq=100 + i,
                        offset=i * 256 * 1024,
                        length=size,
                        data=pattern(i, size),
                    )
                )
            )
            tag += 1
        msgs.append(b"".join(encode(Op.FLUSH, tag=tag)))
        msgs.append(b"".join(encode(Op.CLOSE, tag=tag + 1)))
        s.sendall(b"".join(msgs))
        replies = read_messages(s, len(msgs))
        assert len(replies) == len(msgs)
        assert all(r.reply and r.status == Status.OK for r in replies), [
            (r.op, r.status, bytes(r.data)) for r in replies if r.status
        ]
        # in order, except that FLUSH answers once its flush is done (after CLOSE's
        # reply, which does not cut it off)
        assert [r.tag for r in replies[:-2]] == [1, 2, *range(10, tag)]
        assert {(r.op, r.tag) for r in replies[-2:]} == {(Op.FLUSH, tag), (Op.CLOSE, tag + 1)}
        assert closed_by_peer(s)
    finally:
        s.close()
    with shared_server.client() as c:
        c.open("pipe", 64 * MiB, 512, create=False)
        for i in (0, 1, 10, 199):
            size = 4096 if i % 10 else 192 * 1024
            assert c.read(i * 256 * 1024, size) == pattern(i, size), i
        assert c.info()["high_seq"] == 299


def test_resize_waits_for_a_flush_in_progress_and_keeps_the_order(shared_server):
    """A RESIZE that arrives while its replica flushes in a worker thread waits for the
    flush; the requests after it on the connection wait too, so the write beyond the old
    end that follows it succeeds."""
    with shared_server.client() as c:
        c.open("grow-wait", 4 * MiB, 512)
        s = shared_server.raw()
        try:
            batch = encode(Op.HELLO, tag=1)
            batch += encode(
                Op.OPEN,
                tag=2,
                data=wire.json_payload({"volume": "grow-wait", "size": 4 * MiB, "create": False}),
            )
            for i in range(4):
                batch += encode(
                    Op.WRITE, tag=10 + i, seq=i + 1, offset=i * 4096, length=4096,
                    data=pattern(i, 4096),
                )  # fmt: skip
            batch += encode(Op.FLUSH, tag=30)
            batch += encode(Op.RESIZE, tag=31, offset=8 * MiB)
            batch += encode(Op.WRITE, tag=32, seq=50, offset=6 * MiB, length=512, data=bytes(512))
            batch += encode(Op.READ, tag=33, offset=6 * MiB, length=512)
            s.sendall(b"".join(bytes(p) for p in batch))
            replies = read_messages(s, 2 + 4 + 4)
            assert {r.tag: r.status for r in replies} == {
                t: Status.OK for t in [1, 2, *range(10, 14), 30, 31, 32, 33]
            }, [(r.tag, r.status, bytes(r.data)) for r in replies if r.status]
            tags = [r.tag for r in replies]
            assert tags.index(30) < tags.index(31) < tags.index(32) < tags.index(33)
        finally:
            s.close()
        assert c.info()["size"] == 8 * MiB
        assert c.read(3 * 4096, 4096) == pattern(3, 4096)
    # (one send of a few KiB arrives in one receive: the RESIZE met the running flush)
    assert "event=request_waits pool=shared volume=grow-wait" in shared_server.stderr()


def test_two_connections_share_one_replica(shared_server):
    a = shared_server.client()
    b = shared_server.client()
    try:
        ia = a.open("shared-vol", 4 * MiB)
        ib = b.open("shared-vol", 4 * MiB)
        assert ia["uuid"] == ib["uuid"]
        a.write(0, pattern(1, 4096), seq=1)
        assert b.read(0, 4096) == pattern(1, 4096)
        for i in range(20):
            (a if i % 2 else b).write(4096 * i, pattern(i + 2, 4096), seq=i + 2)
            (b if i % 2 else a).flush()
        a.close()
        assert b.read(4096 * 19, 4096) == pattern(21, 4096)  # still open for b
        assert b.info()["high_seq"] == 21
    finally:
        a.close()
        b.close()


def test_a_newer_session_fences_the_older_connection(shared_server):
    """A target that gave up on a connection opens a new one with a higher session:
    whatever arrives late on the old one may no longer change the replica."""
    old = shared_server.client()
    new = shared_server.client()
    try:
        old.open("fenced-vol", 4 * MiB, session=5)
        old.write(0, pattern(1, 4096), seq=10)
        new.open("fenced-vol", 4 * MiB, session=6)
        with pytest.raises(PoolError) as refused:
            old.write(0, pattern(2, 4096), seq=11)
        assert refused.value.status == Status.SUPERSEDED
        assert "superseded" in refused.value.message
        assert closed_by_peer(old.sock)
        assert new.read(0, 4096) == pattern(1, 4096)  # the late write did not land
        assert new.info()["clean_seq"] == 10  # and is not counted as a failed write
        new.write(4096, pattern(3, 4096), seq=12)
        late = shared_server.client()
        late.open("fenced-vol", 4 * MiB, session=5)  # an older session may read
        assert late.read(4096, 4096) == pattern(3, 4096)
        with pytest.raises(PoolError) as again:
            late.unmap(0, 4096, seq=13)
        assert again.value.status == Status.SUPERSEDED
        late.disconnect()
    finally:
        old.disconnect()
        new.close()


# -- DIFF, READ_SEQS, REBUILD --------------------------------------------------------------


def test_diff_read_seqs_and_rebuild(shared_server):
    bs = 512
    with shared_server.client() as src, shared_server.client() as dst:
        src.open("rb-src", 64 * MiB, bs)
        dst.open("rb-dst", 64 * MiB, bs)
        # on the source: old writes, then newer ones, crossing the 65536-block chunk edge
        src.write(0, pattern(1, 64 * 1024), seq=1)
        src.write(65534 * bs, pattern(2, 4 * bs), seq=5)
        src.write(10 * bs, pattern(3, 2 * bs), seq=6)
        src.unmap(100 * bs, 3 * bs, seq=7)
        src.write(130000 * bs, bytes(4 * bs), seq=8)  # zeros written as data
        assert src.diff(0, 64 * MiB, 0) == [(0, 128), (65534, 4), (130000, 4)]
        assert src.diff(0, 64 * MiB, 4) == [(10, 2), (100, 3), (65534, 4), (130000, 4)]
        assert src.diff(0, 64 * MiB, 8) == []
        assert src.diff(65535 * bs, 2 * bs, 0) == [(65535, 2)]
        with pytest.raises(PoolError) as e:
            src.diff(0, 65 * MiB, 0)
        assert e.value.status == Status.OUT_OF_RANGE

        data, seqs = src.read_seqs(8 * bs, 4 * bs)
        assert seqs == [1, 1, 6, 6]
        assert data == pattern(1, 64 * 1024)[8 * bs : 10 * bs] + pattern(3, 2 * bs)
        with pytest.raises(PoolError) as e:
            src.read_seqs(0, 4 * MiB + bs)
        assert e.value.status == Status.BAD_REQUEST

        # the replica already holds newer data for blocks 2..3: those must not move back
        dst.write(2 * bs, pattern(9, 2 * bs), seq=50)
        for run_lba, count in src.diff(0, 64 * MiB, 0):
            data, seqs = src.read_seqs(run_lba * bs, count * bs)
            dst.rebuild(run_lba * bs, data, seqs)
        _, dseqs = dst.read_seqs(0, 16 * bs)
        assert dseqs == [1, 1, 50, 50, 1, 1, 1, 1, 1, 1, 6, 6, 1, 1, 1, 1]
        assert dst.read(2 * bs, 2 * bs) == pattern(9, 2 * bs)
        assert dst.read(0, 2 * bs) == pattern(1, 2 * bs)
        assert dst.read(65534 * bs, 4 * bs) == pattern(2, 4 * bs)
        assert dst.read(130000 * bs, 4 * bs) == bytes(4 * bs)
        assert dst.read_seqs(130000 * bs, 4 * bs)[1] == [8] * 4
        # the same offer again applies nothing; a newer one applies exactly its blocks
        data, seqs = src.read_seqs(0, 8 * bs)
        assert dst.rebuild(0, data, seqs) == 0
        assert dst.rebuild(0, pattern(7, 8 * bs), [60, 60, 49, 51, 0, 0, 61, 1]) == 4
        _, dseqs = dst.read_seqs(0, 8 * bs)
        assert dseqs == [60, 60, 50, 51, 1, 1, 61, 1]
        got = dst.read(0, 8 * bs)
        want = pattern(7, 8 * bs)
        assert got[: 2 * bs] == want[: 2 * bs] and got[3 * bs : 4 * bs] == want[3 * bs : 4 * bs]
        assert got[2 * bs : 3 * bs] == pattern(9, 2 * bs)[:bs]
        assert got[6 * bs : 7 * bs] == want[6 * bs : 7 * bs]
        # a zero run in a rebuild leaves the replica thin and reads as zeros
        assert dst.rebuild(4096 * bs, bytes(64 * bs), [70] * 64) == 64
        assert dst.read(4096 * bs, 64 * bs) == bytes(64 * bs)
        assert dst.read_seqs(4096 * bs, 2 * bs)[1] == [70, 70]
        # malformed offers
        for offset, data, seqs in [
            (0, bytes(bs), [1, 2]),  # one seq too many
            (3, bytes(bs), [1]),  # misaligned
        ]:
            with pytest.raises(PoolError) as e:
                dst.rebuild(offset, data, seqs)
            assert e.value.status == Status.BAD_REQUEST
        with pytest.raises(PoolError) as e:
            dst.rebuild(64 * MiB, bytes(bs), [99])
        assert e.value.status == Status.OUT_OF_RANGE


def test_diff_is_answered_in_bounded_pieces(shared_server):
    """A range larger than one DIFF may scan comes back covering a prefix; the client
    continues from there (the client loop and the raw reply are both checked)."""
    bs = 512
    size = 1536 * MiB  # 3 Mi blocks, more than 2 Mi per request
    with shared_server.client() as c:
        c.open("big-diff", size, bs)
        c.write(0, bytes(bs), seq=3)
        c.write(size - 2 * bs, bytes(2 * bs), seq=4)
        reply = c.request(Op.DIFF, seq=0, offset=0, length=size)
        assert 0 < reply.length < size
        assert wire.unpack_runs(reply.data) == [(0, 1)]
        assert c.diff(0, size, 0) == [(0, 1), (size // bs - 2, 2)]


# -- FLUSH and durability --------------------------------------------------------------------


def test_flush_and_sigkill_keep_flushed_data(pool_server):
    srv = pool_server()
    with srv.client() as c:
        c.open("dur", 8 * MiB, 4096)
        for i in range(16):
            c.write(i * 256 * 1024, pattern(i, 256 * 1024), seq=i + 1)
        c.flush()
    assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
    srv.start()
    with srv.client() as c:
        info = c.open("dur", 8 * MiB, 4096, create=False)
        assert info["high_seq"] == 16
        for i in range(16):
            assert c.read(i * 256 * 1024, 256 * 1024) == pattern(i, 256 * 1024)


# -- authentication ------------------------------------------------------------------------


def test_secret_right_wrong_and_missing(pool_server):
    secret = b"correct horse battery staple"
    srv = pool_server(name="sec", secret=secret)
    with srv.client(secret=secret) as c:
        assert c.server_info["auth"] is True and len(c.server_info["challenge"]) == 64
        c.open("s1", MiB)
        c.write(0, pattern(1, 512), seq=1)
        assert c.read(0, 512) == pattern(1, 512)

    # wrong secret: AUTH_FAILED, then the server closes
    wrong = b"Tr0ub4dor&3-not-it"
    bad = PoolClient(HOST, srv.port, secret=wrong)
    bad.sock = srv.raw()
    challenge = bytes.fromhex(bad.hello()["challenge"])
    with pytest.raises(PoolError) as e:
        bad.auth()
    assert e.value.status == Status.AUTH_FAILED
    assert closed_by_peer(bad.sock)
    bad.disconnect()

    # no AUTH: any other request is AUTH_REQUIRED, then the server closes
    s = srv.raw()
    s.sendall(b"".join(encode(Op.HELLO, tag=1, data=wire.json_payload({"client": "x"}))))
    s.sendall(b"".join(encode(Op.INFO, tag=2)))
    replies = read_messages(s, 2)
    assert [(r.tag, r.status) for r in replies] == [(1, Status.OK), (2, Status.AUTH_REQUIRED)]
    assert closed_by_peer(s)
    s.close()

    # nothing at all before the first request, not even HELLO
    s = srv.raw()
    s.sendall(b"".join(encode(Op.WRITE, tag=3, seq=1, length=512, data=bytes(512))))
    replies = read_messages(s, 1)
    assert [(r.tag, r.status) for r in replies] == [(3, Status.AUTH_REQUIRED)]
    assert closed_by_peer(s)
    s.close()

    # the refusals harmed nobody: a new client gets in and finds the data
    with srv.client(secret=secret) as c:
        c.open("s1", MiB, create=False)
        assert c.read(0, 512) == pattern(1, 512)

    time.sleep(0.2)
    log = srv.stderr()
    assert log.count("event=auth_refused") >= 3, log
    assert "reason='wrong secret'" in log
    assert secret.decode() not in log
    assert wrong.decode() not in log
    assert wire.client_proof(wrong, challenge).hex() not in log
    assert srv.alive


def test_client_rejects_a_server_that_cannot_prove_the_secret(pool_server):
    srv = pool_server(name="sec2", secret=b"server-secret")
    with pytest.raises(PoolError) as e:
        srv.client(secret=b"client-secret-differs")
    assert e.value.status == Status.AUTH_FAILED


def test_a_client_on_this_machine_reaches_the_same_server_on_its_local_socket(pool_server):
    """HELLO names the local socket and the server's instance; there the same server
    answers, with the same authentication, and what is written on one connection reads
    back on the other.  The server runs as SCHED_BATCH (docs/replication.md)."""
    secret = b"local socket secret"
    srv = pool_server(name="loc", secret=secret)
    with srv.client(secret=secret) as c:
        info = c.server_info
        assert info["local"] == f"cairn-pool:{HOST}:{srv.port}"
        assert len(info["instance"]) == 16
        c.open("l1", MiB, session=1)
        c.write(0, pattern(5, 4096), seq=1)
        # without the secret the local socket refuses as TCP does
        anon = PoolClient(HOST, 0, local=info["local"]).connect()
        with pytest.raises(PoolError) as e:
            anon.open("l1", MiB)
        assert e.value.status == Status.AUTH_REQUIRED
        anon.disconnect()
        with PoolClient(HOST, 0, secret=secret, local=info["local"]) as lc:
            assert lc.server_info["instance"] == info["instance"]
            lc.open("l1", MiB, session=2)
            assert lc.read(0, 4096) == pattern(5, 4096)
            lc.write(4096, pattern(6, 4096), seq=2)
        assert c.read(4096, 4096) == pattern(6, 4096)
    assert f"peer=local:pid={os.getpid()}" in srv.stderr()
    assert srv.proc is not None
    assert os.sched_getscheduler(srv.proc.pid) == os.SCHED_BATCH
    with pytest.raises(OSError):  # another address has no local socket
        PoolClient(HOST, 0, local=f"cairn-pool:{HOST}:1").connect()


def test_auth_without_a_secret_is_a_bad_request(shared_server):
    c = shared_server.client()
    try:
        reply = c.request(
            Op.AUTH, data=wire.json_payload({"mac": "00", "nonce": "00"}), check=False
        )
        assert reply.status == Status.BAD_REQUEST
        c.open("noauth", MiB)  # the connection stays usable
    finally:
        c.close()


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_empty_or_unreadable_secret_refuses_to_start(tmp_path, content):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(content)
    for path in (secret_file, tmp_path / "missing"):
        done = subprocess.run(
            [sys.executable, "-m", "cairn.cli.main", "pool", "serve", "--name", "x"]
            + ["--path", str(tmp_path / "pool"), "--listen", f"{HOST}:0"]
            + ["--secret-file", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done
        assert "secret file" in done.stderr and str(path) in done.stderr
        assert "ready" not in done.stdout


# -- bad input -------------------------------------------------------------------------------


def test_version_2_gets_bad_version_and_close(shared_server):
    s = shared_server.raw()
    try:
        s.sendall(HEADER.pack(MAGIC, 2, Op.HELLO, 0, 77, 0, 0, 0, 2) + b"{}")
        head = b""
        s.settimeout(10)
        while len(head) < HEADER.size:
            chunk = s.recv(HEADER.size - len(head))
            assert chunk, "closed without a BAD_VERSION reply"
            head += chunk
        magic, version, opcode, status, tag, _, _, _, dlen = HEADER.unpack(head)
        assert (magic, version, opcode, status, tag) == (
            MAGIC,
            1,
            Op.HELLO | REPLY,
            Status.BAD_VERSION,
            77,
        )
        body = b""
        while len(body) < dlen:
            body += s.recv(dlen - len(body))
        assert wire.parse_json(body)["versions"] == [1]
        assert closed_by_peer(s)
    finally:
        s.close()


def test_garbage_closes_only_its_connection(shared_server):
    good = shared_server.client()
    try:
        good.open("victim", 4 * MiB)
        good.write(0, pattern(5, 8192), seq=1)
        rnd = random.Random(3)
        junk = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            bytes(rnd.getrandbits(8) for _ in range(5000)),
            HEADER.pack(MAGIC, 1, Op.WRITE, 0, 1, 1, 0, 0, wire.MAX_PAYLOAD + 1),
            b"\0" * 100,
            MAGIC + b"\x01",  # a truncated header, then the connection goes away
        ]
        for payload in junk:
            s = shared_server.raw()
            try:
                s.sendall(payload)
                if len(payload) >= HEADER.size:
                    assert closed_by_peer(s), payload[:40]
            finally:
                s.close()
        # unknown opcodes and replies sent to the server: BAD_REQUEST, the connection stays
        s = shared_server.raw()
        try:
            s.sendall(b"".join(encode(0x55, tag=1) + encode(Op.INFO, tag=2, reply=True)))
            s.sendall(b"".join(encode(Op.HELLO, tag=3)))
            replies = read_messages(s, 3)
            assert [(r.tag, r.status) for r in replies] == [
                (1, Status.BAD_REQUEST),
                (2, Status.BAD_REQUEST),
                (3, Status.OK),
            ]
            # malformed JSON requests
            for op, data in [(Op.OPEN, b"{"), (Op.OPEN, b"[]"), (Op.OPEN, b'{"volume": 1}')]:
                s.sendall(b"".join(encode(op, tag=9, data=data)))
                (r,) = read_messages(s, 1)
                assert r.status == Status.BAD_REQUEST and "error" in wire.parse_json(r.data)
        finally:
            s.close()
        assert shared_server.alive
        assert good.read(0, 8192) == pattern(5, 8192)
        good.write(8192, pattern(6, 512), seq=2)
        assert good.info()["high_seq"] == 2
    finally:
        good.close()
    assert "event=protocol_error" in shared_server.stderr()


# -- a full pool --------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    # a real full file system: the test needs root (as CI has) and fails, never skips
    assert os.geteuid() == 0, "the ENOSPC test mounts a small tmpfs: run it as root"
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True
    )
    assert res.returncode == 0, f"cannot mount a small tmpfs: {res.stderr!r}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_no_space_is_reported_and_the_server_keeps_serving(pool_server, small_fs):
    srv = pool_server(name="tiny", path=small_fs / "pool")
    with srv.client() as c:
        c.open("full", 64 * MiB, 4096)
        seq = 0
        failed_seq = 0
        for i in range(32):
            seq += 1
            try:
                c.write(i * MiB, pattern(seq, MiB), seq)
            except PoolError as e:
                assert e.status == Status.NO_SPACE, e
                assert "space" in e.message
                failed_seq = seq
                break
        assert failed_seq > 1, "the pool never filled up"
        # the server is up: what was written reads back, an overwrite of allocated blocks
        # and a flush work
        assert c.read(0, MiB) == pattern(1, MiB)
        seq += 1
        c.write(0, pattern(seq, 4096), seq)
        c.flush()
        info = c.info()
        assert info["high_seq"] == seq
        assert info["clean_seq"] == failed_seq - 1 < info["high_seq"]
    with srv.client() as c:  # others can still connect
        c.open("full", 64 * MiB, 4096, create=False)
        assert c.read(0, 4096) == pattern(seq, 4096)
    srv.restart()
    with srv.client() as c:
        info = c.open("full", 64 * MiB, 4096, create=False)
        assert info["clean_seq"] == failed_seq - 1 and info["high_seq"] == seq
        # a rebuild brought it up to date: the caller says so
        c.unmap(0, 32 * MiB, seq + 1)  # give space back so the metadata fits
        c.set_meta({"clean": True, "epoch": 2})
        info = c.info()
        assert info["clean_seq"] == info["high_seq"] == seq + 1
    assert "status=NO_SPACE" in srv.stderr()


def test_writes_through_a_shared_memory_ring(shared_server):
    """ATTACH_RING maps a ring of this process; WRITE_SHM writes what it names; a bad
    token, an unmapped generation, a range outside the ring or a superseded session are
    refused without harm to the connection or the data."""
    from cairn.replication.ring import DESC, SharedRing

    ring = SharedRing(8 * MiB, gen=7)
    try:
        with shared_server.client() as c:
            info = c.hello()
            assert info["shm"] is True and len(info["boot_id"]) == 32
            c.open("shm", 4 * MiB, 512, session=5)
            want = pattern(41, 256 << 10)
            region = ring.alloc(len(want))
            assert region is not None
            ring.data(region)[:] = want

            def write_shm(gen: int, off: int, length: int, offset: int = 0, seq: int = 9):
                return c.request(
                    Op.WRITE_SHM, seq=seq, offset=offset, length=length,
                    data=DESC.pack(gen, off), check=False,
                )  # fmt: skip

            # before ATTACH_RING: no ring to read from
            reply = write_shm(7, region.start, len(want))
            assert reply.status == Status.BAD_REQUEST
            assert b"not mapped" in bytes(reply.data)
            bad = c.request(
                Op.ATTACH_RING,
                data=wire.json_payload({**ring.attach_request(), "token": "ab" * 16}),
                check=False,
            )
            assert bad.status == Status.BAD_REQUEST and b"header" in bytes(bad.data)
            c.request(Op.ATTACH_RING, data=wire.json_payload(ring.attach_request()))
            assert write_shm(7, region.start, len(want)).status == Status.OK
            assert c.read(0, len(want)) == want
            assert c.read_seqs(0, 512)[1] == [9]
            # out of the ring, another generation: refused, nothing written
            assert write_shm(7, ring.size - 4096, 8192, offset=MiB, seq=10).status == (
                Status.BAD_REQUEST
            )
            assert write_shm(8, region.start, 4096, offset=MiB, seq=10).status == (
                Status.BAD_REQUEST
            )
            assert c.read(MiB, 8192) == bytes(8192)
            # a newer session opens the replica: this connection may not change it
            with shared_server.client() as newer:
                newer.hello()
                newer.open("shm", 4 * MiB, 512, session=6)
                late = write_shm(7, region.start, 4096, offset=2 * MiB, seq=11)
                assert late.status == Status.SUPERSEDED
                assert newer.read(2 * MiB, 4096) == bytes(4096)
                assert newer.read(0, len(want)) == want
    finally:
        ring.close()
