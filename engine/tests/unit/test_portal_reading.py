"""The portal reads its socket itself while large payloads are received in place
(``IscsiProtocol._readable``): the rest of a payload and the next PDU's header with one
``readv``, then back to the transport.  A real portal on loopback (uvloop, and asyncio's
own loop), an initiator on a plain socket that sends in pieces of random size so that
headers and payloads arrive split anywhere, and answers the R2Ts of several writes in an
order of its own; every written byte is read back from the store.
"""

from __future__ import annotations

import asyncio
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cairn.iscsi import pdu as P
from cairn.iscsi.pdu import Op
from cairn.iscsi.session import SessionTable
from cairn.iscsi.targets import Acl, StaticDirectory, TargetSpec
from cairn.iscsi.text import parse_text
from cairn.target import portal as portal_mod
from cairn.target.portal import IscsiProtocol, Portal

from .iscsi_helpers import INITIATOR, TARGET, data_out, login_pdu, scsi_cmd, simple_pdu

BS = 512
SIZE = 8 << 20
BURST = 256 << 10


def write10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, n, 0)


def read10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)


class Server:
    """A portal in front of an embedded-store volume, its loop in a thread."""

    def __init__(self, tmp_path: Any, loop_kind: str) -> None:
        from cairn.scsi import LogicalUnit, ScsiTarget
        from cairn.store import EmbeddedPool
        from cairn.volume import LocalVolume

        self.store = EmbeddedPool(tmp_path / "pool").create_volume("v", SIZE, BS)
        unit = LogicalUnit(
            LocalVolume.open(self.store, tmp_path / "v.seq"), serial="0", naa=bytes(8)
        )
        scsi = ScsiTarget({0: unit})
        spec = TargetSpec(TARGET, acl=Acl())
        directory = StaticDirectory("127.0.0.1:3260", {TARGET: spec})
        self.portal = Portal(directory, lambda _s: scsi)  # type: ignore[arg-type, return-value]
        self.portal.sessions = SessionTable()
        if loop_kind == "uvloop":
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.portal.start("127.0.0.1", self.port))
        self.free = len(self.store._free_slots)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def run(self, fn: Callable[[], Any]) -> Any:
        async def go() -> Any:
            return fn()

        return self.call(go())

    def wait_idle(self) -> None:
        """Until the portal has no connection left."""
        for _ in range(500):
            if not self.run(lambda: len(self.portal.connections)):
                return
            time.sleep(0.01)
        raise AssertionError("the connection did not go away")

    def close(self) -> None:
        self.call(self.portal.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(params=["uvloop", "asyncio"])
def server(request: Any, tmp_path: Any) -> Iterator[Server]:
    s = Server(tmp_path, request.param)
    yield s
    s.close()


@pytest.fixture
def own_reads(monkeypatch: Any) -> list[int]:
    """Counts the times a connection started reading its socket itself."""
    calls: list[int] = []
    original = IscsiProtocol._read_myself

    def counted(self: IscsiProtocol) -> None:
        calls.append(1)
        original(self)

    monkeypatch.setattr(IscsiProtocol, "_read_myself", counted)
    return calls


class Initiator:
    def __init__(self, port: int, seed: int, digests: bool = False, **keys: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rng = random.Random(seed)
        self.hd = self.dd = False
        self.cmdsn = 1
        self.itt = 0x100
        offer = {
            "InitiatorName": INITIATOR,
            "TargetName": TARGET,
            "SessionType": "Normal",
            "MaxRecvDataSegmentLength": "262144",
            "MaxBurstLength": str(BURST),
            "FirstBurstLength": "65536",
            "ImmediateData": "Yes",
            "InitialR2T": "Yes",
            "MaxOutstandingR2T": "1",
            "HeaderDigest": "CRC32C" if digests else "None",
            "DataDigest": "CRC32C" if digests else "None",
        }
        offer.update(keys)
        self.sock.sendall(login_pdu(list(offer.items())))
        rsp = self.recv()
        assert rsp[0] & 0x3F == Op.LOGIN_RSP and rsp[36:38] == b"\0\0", rsp[36:38]
        answer = dict(parse_text(rsp[48:]))
        self.hd = answer["HeaderDigest"] == "CRC32C"
        self.dd = answer["DataDigest"] == "CRC32C"
        self.seg = int(answer["MaxRecvDataSegmentLength"])
        self.first_burst = int(answer["FirstBurstLength"])
        self.immediate = answer["ImmediateData"] == "Yes"
        self.command(scsi_cmd(bytes(6), self.next_itt(), 0))  # TUR: the unit attention
        assert self.recv()[0] & 0x3F == Op.SCSI_RSP

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def frame(self, pdu: bytes) -> bytes:
        """``pdu`` as built by the helpers (no digests) with the digests negotiated."""
        if not self.hd and not self.dd:
            return pdu
        bhs = pdu[:48]
        dsl = int.from_bytes(bhs[5:8], "big")
        return b"".join(bytes(p) for p in P.frame(bhs, pdu[48 : 48 + dsl], self.hd, self.dd))

    def command(self, pdu: bytes) -> None:
        cmd = bytearray(pdu)
        struct.pack_into(">I", cmd, 24, self.cmdsn)
        self.cmdsn += 1
        self.send(bytes(cmd))

    def send(self, *pdus: bytes) -> None:
        """In pieces of random size, now and then after a short pause."""
        raw = b"".join(self.frame(p) for p in pdus)
        pos = 0
        while pos < len(raw):
            k = self.rng.choice((1, 7, 48, 49, 100, 4096, 65536, 300_000, len(raw)))
            self.sock.sendall(raw[pos : pos + k])
            pos += k
            if self.rng.random() < 0.2:
                time.sleep(0.0005)

    def recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "the target closed the connection"
            out += chunk
        return bytes(out)

    def recv(self) -> bytes:
        """One PDU: its header and data segment (digests checked and dropped)."""
        bhs = self.recv_exact(48)
        if self.hd:
            assert int.from_bytes(self.recv_exact(4), "little") == P.crc32c(bhs)
        dsl = int.from_bytes(bhs[5:8], "big")
        data = self.recv_exact(dsl + P.pad_len(dsl))[:dsl]
        if dsl and self.dd:
            self.recv_exact(4)
        return bhs + data

    def writes(self, jobs: list[tuple[int, bytes]]) -> None:
        """Write each ``(lba, data)``, all at once, answering R2Ts in a random order."""
        tasks: dict[int, bytes] = {}
        for lba, data in jobs:
            itt = self.next_itt()
            tasks[itt] = data
            imm = data[: self.first_burst] if self.immediate else b""
            cdb = write10(lba, len(data) // BS)
            self.command(scsi_cmd(cdb, itt, 0, edtl=len(data), write=True, data=imm))
        r2ts: list[bytes] = []
        while tasks:
            pdu = self.recv()
            op = pdu[0] & 0x3F
            if op == Op.SCSI_RSP:
                itt = struct.unpack_from(">I", pdu, 16)[0]
                assert pdu[3] == 0, f"status {pdu[3]:#x} for {itt:#x}"
                del tasks[itt]
            else:
                assert op == Op.R2T
                r2ts.append(pdu)
            if r2ts and (self.rng.random() < 0.5 or not self.more_soon()):
                # answered together, in any order (each R2T's Data-Outs in order)
                self.rng.shuffle(r2ts)
                self.send(*(p for r2t in r2ts for p in self.data_outs(r2t, tasks)))
                r2ts.clear()

    def more_soon(self) -> bool:
        return bool(select.select([self.sock], [], [], 0.005)[0])

    def data_outs(self, r2t: bytes, tasks: dict[int, bytes]) -> Iterator[bytes]:
        itt, ttt = struct.unpack_from(">II", r2t, 16)
        offset, length = struct.unpack_from(">II", r2t, 40)
        data = tasks[itt]
        end = offset + length
        datasn = 0
        while offset < end:
            n = min(self.seg, end - offset)
            yield data_out(
                itt, ttt, datasn, offset, data[offset : offset + n], final=offset + n == end
            )
            offset += n
            datasn += 1

    def read(self, lba: int, nbytes: int) -> bytes:
        itt = self.next_itt()
        self.command(scsi_cmd(read10(lba, nbytes // BS), itt, 0, edtl=nbytes, read=True))
        got = bytearray()
        while True:
            pdu = self.recv()
            got += pdu[48:]
            if pdu[0] & 0x3F == Op.SCSI_RSP or pdu[1] & 0x01:  # a response, or status in Data-In
                return bytes(got)

    def close(self) -> None:
        self.sock.close()


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_large_writes_with_the_connection_reading_itself(server, own_reads, seed):
    ini = Initiator(server.port, seed, MaxOutstandingR2T=str(1 + seed % 2))
    rng = random.Random(seed)
    image = bytearray(SIZE)
    for rnd in range(4):
        jobs = []
        for _ in range(rng.randint(1, 6)):
            nbytes = rng.choice((64 << 10, 300 << 10, 1 << 20, (2 << 20) - 4096, 4096))
            lba = rng.randrange(0, (SIZE - nbytes) // BS)
            data = pattern(seed * 100 + rnd, nbytes)
            jobs.append((lba, data))
        # writes of one round do not overlap, so the order they run in does not matter
        jobs = [j for i, j in enumerate(jobs) if not any(_overlap(j, k) for k in jobs[:i])]
        ini.writes(jobs)
        for lba, data in jobs:
            image[lba * BS : lba * BS + len(data)] = data
    assert own_reads, "the connection never read its socket itself"
    assert not server.run(lambda: [p.own for p in server.portal.connections if p.own])
    for start in range(0, SIZE, 1 << 20):
        assert ini.read(start // BS, 1 << 20) == image[start : start + (1 << 20)]
    ini.close()
    server.wait_idle()
    assert len(server.store._free_slots) == server.free


def _overlap(a: tuple[int, bytes], b: tuple[int, bytes]) -> bool:
    a0, a1 = a[0] * BS, a[0] * BS + len(a[1])
    b0, b1 = b[0] * BS, b[0] * BS + len(b[1])
    return a0 < b1 and b0 < a1


def test_other_pdus_right_after_a_payload(server, own_reads):
    """What follows a payload received in place is not always a Data-Out: a NOP-Out, a
    small write, a Data-Out of another write, a READ, in the same send."""
    ini = Initiator(server.port, 7)
    big = pattern(1, 1 << 20)
    small = pattern(2, 4096)
    itt = ini.next_itt()
    ini.command(
        scsi_cmd(write10(0, len(big) // BS), itt, 0, edtl=len(big), write=True, data=big[:65536])
    )
    r2t = ini.recv()
    assert r2t[0] & 0x3F == Op.R2T
    tasks = {itt: big}
    ping = simple_pdu(
        Op.NOP_OUT, 0x80, 0x77, struct.pack(">II", 0xFFFFFFFF, ini.cmdsn), data=b"ping"
    )
    small_itt = ini.next_itt()
    small_cmd = bytearray(
        scsi_cmd(write10(4096, 8), small_itt, 0, edtl=4096, write=True, data=small)
    )
    struct.pack_into(">I", small_cmd, 24, ini.cmdsn)
    ini.cmdsn += 1
    ini.send(*ini.data_outs(r2t, tasks), ping, bytes(small_cmd))
    seen: dict[int, int] = {}
    while not {itt, small_itt, 0x77} <= seen.keys():
        pdu = ini.recv()
        op = pdu[0] & 0x3F
        if op == Op.R2T:
            ini.send(*ini.data_outs(pdu, tasks))
            continue
        if op == Op.NOP_IN:
            assert pdu[48:52] == b"ping"
            seen[0x77] = 0
            continue
        assert op == Op.SCSI_RSP and pdu[3] == 0
        seen[struct.unpack_from(">I", pdu, 16)[0]] = 1
    assert own_reads
    assert ini.read(0, len(big)) == big
    assert ini.read(4096, 4096) == small
    ini.close()
    server.wait_idle()
    assert len(server.store._free_slots) == server.free


def test_digests_leave_reading_to_the_transport(server, own_reads):
    ini = Initiator(server.port, 3, digests=True)
    assert ini.hd and ini.dd
    data = pattern(3, 1 << 20)
    ini.writes([(0, data), (4096, data[::-1])])
    assert ini.read(0, 1 << 20) == data
    assert ini.read(4096, 1 << 20) == data[::-1]
    assert not own_reads  # nothing is received in place with digests
    ini.close()
    server.wait_idle()


def test_connection_dropped_in_the_middle_of_a_payload(server, own_reads):
    ini = Initiator(server.port, 4)
    data = pattern(4, 1 << 20)
    itt = ini.next_itt()
    ini.command(
        scsi_cmd(write10(0, len(data) // BS), itt, 0, edtl=len(data), write=True, data=data[:65536])
    )
    r2t = ini.recv()
    dout = next(ini.data_outs(r2t, {itt: data}))
    ini.sock.sendall(dout[: 48 + 1000])
    for _ in range(200):
        if server.run(lambda: [p for p in server.portal.connections if p.own]):
            break
        time.sleep(0.01)
    assert own_reads
    ini.close()
    server.wait_idle()
    assert len(server.store._free_slots) == server.free
    # and the portal still serves
    again = Initiator(server.port, 5)
    again.writes([(0, data)])
    assert again.read(0, len(data)) == data
    again.close()


def test_a_peer_that_does_not_read_pauses_and_resumes(server, own_reads, monkeypatch):
    """READs come right after a Data-Out payload received in place, and the initiator
    reads none of their data for a while: the connection stops reading its socket,
    then carries on where it was once the answers are taken."""
    # any unsent output once the socket is full (``pending_bytes`` is counted then)
    monkeypatch.setattr(portal_mod, "HIGH_WATER", 1)
    ini = Initiator(server.port, 6)
    data = pattern(6, 1 << 20)
    ini.writes([(0, data)])
    itt = ini.next_itt()
    cmd = scsi_cmd(write10(2048, 2048), itt, 0, edtl=len(data), write=True, data=data[:65536])
    ini.command(cmd)
    r2t = ini.recv()
    assert r2t[0] & 0x3F == Op.R2T
    tasks = {itt: data}
    reads: dict[int, bytearray] = {}
    stream = list(ini.data_outs(r2t, tasks))
    for _ in range(24):  # of 1 MiB each, far more than the socket buffers hold
        read_itt = ini.next_itt()
        reads[read_itt] = bytearray()
        pdu = bytearray(scsi_cmd(read10(0, 2048), read_itt, 0, edtl=1 << 20, read=True))
        struct.pack_into(">I", pdu, 24, ini.cmdsn)
        ini.cmdsn += 1
        stream.append(bytes(pdu))
    sender = threading.Thread(target=ini.sock.sendall, args=(b"".join(stream),))
    sender.start()
    for _ in range(300):
        if server.run(lambda: [p.paused for p in server.portal.connections]) == [True]:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the connection did not stop reading")
    assert not server.run(lambda: [p for p in server.portal.connections if p.own])
    done = 0
    while tasks or done < len(reads):
        pdu = ini.recv()
        op = pdu[0] & 0x3F
        if op == Op.DATA_IN:
            read_itt = struct.unpack_from(">I", pdu, 16)[0]
            reads[read_itt] += pdu[48:]
            done += pdu[1] & 0x01
            continue
        if op == Op.R2T:
            sender.join()
            ini.send(*ini.data_outs(pdu, tasks))
            continue
        assert op == Op.SCSI_RSP and pdu[3] == 0
        tasks.pop(struct.unpack_from(">I", pdu, 16)[0], None)
    sender.join()
    assert all(got == data for got in reads.values())
    assert ini.read(2048, len(data)) == data
    ini.close()
    server.wait_idle()
    assert len(server.store._free_slots) == server.free
