"""Commands on an asynchronous device (the replicated volume) answer exactly as on a
synchronous one, only later: the status waits for the device, nothing else changes.

The device here does each operation at once on a ``MemDevice`` but reports it done only
when the test says so (``complete``), the way replicas answer after a round trip.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn.blockdev import LbaStatus, Pending, QuorumError
from cairn.iscsi.connection import Connection
from cairn.scsi import LogicalUnit, ScsiTarget

from .iscsi_helpers import drain, make_connection, plain_login, scsi_cmd
from .test_fast_lane import BS, NB, cdb_for, commands, step
from .test_scsi_support import NAA, MemDevice


class AsyncDevice(MemDevice):
    asynchronous = True

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self.waiting: list[tuple[Pending, object, Exception | None]] = []
        self.quorum: QuorumError | None = None

    def _later(self, fn, *args) -> Pending:  # type: ignore[no-untyped-def]
        p = Pending()
        if self.quorum is not None:
            self.waiting.append((p, None, self.quorum))
            return p
        try:
            value, error = fn(*args), None
        except Exception as e:  # reported when the device "answers"
            value, error = None, e
        self.waiting.append((p, value, error))
        return p

    def complete(self) -> int:
        done, self.waiting = self.waiting, []
        for p, value, error in done:
            if error is not None:
                p.fail(error)
            else:
                p.resolve(value)
        return len(done)

    def read(self, lba: int, count: int):  # type: ignore[override]
        return self._later(super().read, lba, count)

    def read_extents(self, lba: int, count: int):  # type: ignore[override]
        return self._later(super().read, lba, count)

    def write(self, lba, data, fua=False):  # type: ignore[no-untyped-def, override]
        return self._later(super().write, lba, bytes(data))

    def unmap(self, lba: int, count: int):  # type: ignore[override]
        return self._later(super().unmap, lba, count)

    def flush(self):  # type: ignore[override]
        return self._later(super().flush)

    def lba_status(self, lba: int, max_count: int):  # type: ignore[override]
        return self._later(super().lba_status, lba, max_count)


def side(dev: MemDevice, fast: bool = False) -> tuple[Connection, LogicalUnit, MemDevice]:
    unit = LogicalUnit(dev, serial="0123456789abcdef", naa=NAA, thin=True)
    conn, _ = make_connection(backend=ScsiTarget({0: unit}))  # type: ignore[arg-type]
    assert plain_login(conn).login_status == 0
    if not fast:
        conn._fast = None  # the synchronous side runs the full path
    return conn, unit, dev


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands, st.booleans())
def test_an_asynchronous_device_answers_like_a_synchronous_one(cmds, fast):
    sync = side(MemDevice(NB, BS))
    adev = AsyncDevice(NB, BS)
    asyn = side(adev, fast)  # its fast lane takes plain writes (and waits for the device)
    assert asyn[1].asynchronous and not sync[1].asynchronous
    outputs: list[list] = [[], []]
    for i, cmd in enumerate(cmds):
        for k, (conn, unit, dev) in enumerate((sync, asyn)):
            step(conn, unit, dev, cmd, itt=i + 10, cmdsn=conn.exp_cmdsn)
            if dev is adev:
                # a command the device has not answered yet has no status
                early = drain(conn)
                if adev.waiting:
                    assert all(struct.unpack_from(">I", r.bhs, 16)[0] != i + 10 for r in early)
                outputs[k] += [(r.opcode, r.bhs, r.data) for r in early]
                while adev.complete():
                    pass
            outputs[k] += [(r.opcode, r.bhs, r.data) for r in drain(conn)]
    for _, _, dev in (sync, asyn):
        dev.fail = None
    assert outputs[0] == outputs[1]
    assert sync[2].read(0, NB) == MemDevice.read(adev, 0, NB)
    assert sync[2].mapped == adev.mapped
    assert sync[2].flushes == adev.flushes
    sync[2].close()
    adev.close()


def login_async() -> tuple[Connection, AsyncDevice]:
    dev = AsyncDevice(NB, BS)
    conn, _, _ = side(dev)
    conn.feed(memoryview(scsi_cmd(bytes(6), 1, conn.exp_cmdsn)))  # TUR: the power-on UA
    drain(conn)
    return conn, dev


def write_pdu(conn: Connection, itt: int, lba: int, fua: bool = False) -> memoryview:
    cdb = cdb_for(0x2A, lba, 8, 0x08 if fua else 0)
    data = bytes([itt & 0xFF]) * 4096
    return memoryview(scsi_cmd(cdb, itt, conn.exp_cmdsn, 4096, write=True, data=data))


def test_the_status_waits_for_the_device_and_output_is_announced():
    conn, dev = login_async()
    announced = []
    conn.on_output = lambda: announced.append(1)
    conn.feed(write_pdu(conn, 7, 0, fua=True))
    assert drain(conn) == [] and announced == []
    # FUA: the write, then the device's flush, each answered separately
    assert dev.flushes == 0 and dev.complete() == 1 and drain(conn) == []
    assert dev.flushes == 1 and dev.complete() == 1
    (rsp,) = drain(conn)
    assert rsp.opcode == 0x21 and rsp.bhs[3] == 0 and struct.unpack_from(">I", rsp.bhs, 16)[0] == 7
    assert announced


def test_an_aborted_or_orphaned_command_is_never_answered():
    conn, dev = login_async()
    conn.feed(write_pdu(conn, 8, 0))
    # ABORT TASK for ITT 8
    tmf = bytearray(48)
    tmf[0], tmf[1] = 0x02 | 0x40, 0x80 | 0x01
    struct.pack_into(">III", tmf, 16, 99, 8, conn.exp_cmdsn)
    conn.feed(memoryview(bytes(tmf)))
    (tmf_rsp,) = drain(conn)
    assert tmf_rsp.opcode == 0x22 and tmf_rsp.bhs[2] == 0
    dev.complete()
    assert drain(conn) == []
    conn.feed(write_pdu(conn, 9, 8))
    conn.connection_lost()
    dev.complete()  # must not raise or send anything
    assert conn.out == []


def test_below_quorum_a_write_fails_with_not_ready_unavailable():
    conn, dev = login_async()
    dev.quorum = QuorumError("1 of 3 replicas healthy, 2 needed")
    conn.feed(write_pdu(conn, 5, 0))
    dev.complete()
    (rsp,) = drain(conn)
    assert rsp.opcode == 0x21 and rsp.bhs[3] == 0x02  # CHECK CONDITION
    sense = rsp.data[2:]
    assert sense[2] & 0x0F == 0x02 and (sense[12], sense[13]) == (0x04, 0x0C)


def test_get_lba_status_on_an_asynchronous_device_gives_one_descriptor():
    conn, dev = login_async()
    conn.feed(write_pdu(conn, 3, 16))
    dev.complete()
    drain(conn)
    cdb = struct.pack(">BBQIBB", 0x9E, 0x12, 0, 4096, 0, 0)
    conn.feed(memoryview(scsi_cmd(cdb, 4, conn.exp_cmdsn, 4096, read=True)))
    dev.complete()
    (rsp,) = drain(conn)
    body = rsp.data
    assert struct.unpack_from(">I", body, 0)[0] == 20
    lba, count, state = struct.unpack_from(">QIB", body, 8)
    assert (lba, count, state) == (0, 16, 1)
    assert LbaStatus(0, 16, True) == MemDevice.lba_status(dev, 0, NB)
