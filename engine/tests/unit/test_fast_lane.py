"""The fast lane for plain READs and WRITEs answers exactly as the full command path.

Two connections, each in front of its own logical unit on identical devices, get the same
random stream of commands; one has its fast lane switched off.  Every byte they send back
and every byte on their devices must be the same, whatever the commands: in range or not,
with flags, with a transfer length that does not match, under a unit attention or a
reservation, with FUA, after a store error.  With ``direct`` the devices offer their file
for reads (``direct_reads``, as the embedded store does without snapshots), so that runs
of READs take ``Connection._fast_reads``.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn.blockdev import Extent, ReadRun
from cairn.iscsi.connection import Connection
from cairn.scsi import LogicalUnit, ScsiTarget

from .iscsi_helpers import drain, make_connection, plain_login, scsi_cmd
from .test_scsi_support import NAA, MemDevice, mode_select6, mode_sense6, payload

BS = 512
NB = 256

commands = st.lists(
    st.tuples(
        st.sampled_from(
            [0x28, 0x88, 0x2A, 0x8A, 0x28, 0x2A, "reset", "reserve", "release", "fail", "wce"]
        ),
        st.integers(0, NB + 8),  # lba, sometimes beyond the end
        st.integers(0, 9),  # blocks
        st.sampled_from([0, 0, 0, 0x08, 0x10, 0x20]),  # CDB byte 1: FUA, DPO, protect
        st.sampled_from([0, 0, 0, 1, -1]),  # EDTL off by that many blocks
        st.integers(0, 255),  # data pattern
    ),
    min_size=1,
    max_size=40,
)


def cdb_for(op: int, lba: int, n: int, flags: int) -> bytes:
    if op in (0x28, 0x2A):
        return struct.pack(">BBIBHB", op, flags, lba & 0xFFFFFFFF, 0, n, 0)
    return struct.pack(">BBQIBB", op, flags, lba, n, 0, 0)


class DirectMemDevice(MemDevice):
    """Reads go straight to the memfd, block ``lba`` at ``lba * 512`` (unmapped blocks
    are zeros there too), except while calls fail: as the embedded store without
    snapshots, read extents are one range of the file, read when the answer is sent."""

    def direct_reads(self) -> tuple[int, int] | None:
        return None if self.fail is not None else (self.fd, BS.bit_length() - 1)

    def read_extents(self, lba: int, count: int) -> list[Extent]:
        self._check(lba, count)
        return [Extent(self.fd, lba * BS, count * BS)]


def side(fast: bool, direct: bool = False) -> tuple[Connection, LogicalUnit, MemDevice]:
    dev = DirectMemDevice(NB, BS) if direct else MemDevice(NB, BS)
    unit = LogicalUnit(dev, serial="0123456789abcdef", naa=NAA, thin=True)
    conn, _ = make_connection(backend=ScsiTarget({0: unit}))  # type: ignore[arg-type]
    assert plain_login(conn).login_status == 0
    if not fast:
        conn._fast = None
    else:
        assert conn._fast is unit
    return conn, unit, dev


def step(conn: Connection, unit: LogicalUnit, dev: MemDevice, cmd: tuple, itt: int, cmdsn: int):
    op, lba, n, flags, off, pattern = cmd
    if op == "reset":
        unit.reset(None)
        return []
    if op == "reserve":
        return [bytes(conn.feed(memoryview(scsi_cmd(bytes((0x16, 0, 0, 0, 0, 0)), itt, cmdsn))))]
    if op == "release":
        return [bytes(conn.feed(memoryview(scsi_cmd(bytes((0x17, 0, 0, 0, 0, 0)), itt, cmdsn))))]
    if op == "fail":
        dev.fail = OSError(5, "injected")
        return []
    if op == "wce":  # toggle the write cache (MODE SELECT of the caching page)
        sensed = unit.execute(mode_sense6(0x08, dbd=True), None, conn.nexus)
        if sensed.status:  # a unit attention went to this nexus; the same on both sides
            sensed = unit.execute(mode_sense6(0x08, dbd=True), None, conn.nexus)
        page = bytearray(payload(sensed, dev)[4:])
        page[2] ^= 0x04
        params = bytes(4) + bytes(page)
        result = unit.execute(mode_select6(len(params)), params, conn.nexus)
        assert result.status == 0, result
        return []
    edtl = max(0, (n + off) * BS)
    cdb = cdb_for(op, lba, n, flags)
    if op in (0x28, 0x88):
        pdu = scsi_cmd(cdb, itt, cmdsn, edtl=edtl, read=True)
    else:
        data = bytes([pattern]) * edtl
        pdu = scsi_cmd(cdb, itt, cmdsn, edtl=edtl, write=bool(edtl), data=data)
    conn.feed(memoryview(pdu))
    for fr in list(conn.flush_requests):  # what the portal does, in a worker thread
        conn.flush_requests.remove(fr)
        try:
            dev.flush()
            conn.flush_done(fr)
        except OSError as e:
            conn.flush_done(fr, e)
    dev.fail = None
    return []


@pytest.mark.parametrize("direct", [False, True])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmds=commands)
def test_fast_lane_answers_like_the_full_path(direct, cmds):
    fast = side(True, direct)
    slow = side(False, direct)
    for i, cmd in enumerate(cmds):
        for conn, unit, dev in (fast, slow):
            step(conn, unit, dev, cmd, itt=i + 10, cmdsn=conn.exp_cmdsn)
    for _, _, dev in (fast, slow):
        dev.fail = None
    fast_out = [(r.opcode, r.bhs, r.data) for r in drain(fast[0])]
    slow_out = [(r.opcode, r.bhs, r.data) for r in drain(slow[0])]
    assert fast_out == slow_out
    assert fast[2].read(0, NB) == slow[2].read(0, NB)
    assert fast[2].mapped == slow[2].mapped
    assert fast[2].flushes == slow[2].flushes
    for _, _, dev in (fast, slow):
        dev.close()


def test_fast_lane_is_used_for_plain_io():
    conn, unit, dev = side(True)
    conn.feed(memoryview(scsi_cmd(bytes(6), 9, conn.exp_cmdsn)))  # TUR: the power-on UA
    drain(conn)
    calls = []
    real = unit.execute
    unit.execute = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
    write = scsi_cmd(cdb_for(0x2A, 0, 8, 0), 1, conn.exp_cmdsn, 4096, write=True, data=bytes(4096))
    conn.feed(memoryview(write))
    conn.feed(memoryview(scsi_cmd(cdb_for(0x88, 0, 8, 0), 2, conn.exp_cmdsn, 4096, read=True)))
    out = drain(conn)
    assert [r.bhs[3] for r in out] == [0, 0] and calls == []
    dev.close()


# Several commands in one ``feed``: plain writes that follow each other on the medium are
# written as one (``Connection._write_batch``); everything must still look like the full
# path answering them one by one.
batched = st.lists(
    st.tuples(
        st.sampled_from([0x2A, 0x2A, 0x8A, 0x28, 0x00]),  # write, write, write, read, TUR
        st.integers(0, NB - 9),
        st.integers(1, 8),  # blocks
        st.integers(0, 255),  # pattern
        st.booleans(),  # start where the previous command ended
    ),
    min_size=1,
    max_size=30,
)


def stream(cmds: list, first_cmdsn: int) -> bytes:
    out = bytearray()
    end = 0
    for i, (op, lba, n, pattern, follow) in enumerate(cmds):
        if follow:
            lba = min(end, NB - n)
        end = lba + n
        itt, cmdsn = 100 + i, first_cmdsn + i
        if op == 0x00:
            out += scsi_cmd(bytes(6), itt, cmdsn)
        elif op == 0x28:
            out += scsi_cmd(cdb_for(op, lba, n, 0), itt, cmdsn, edtl=n * BS, read=True)
        else:
            data = bytes([pattern]) * (n * BS)
            out += scsi_cmd(cdb_for(op, lba, n, 0), itt, cmdsn, n * BS, write=True, data=data)
    return bytes(out)


@pytest.mark.parametrize("direct", [False, True])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmds=batched, failing=st.booleans())
def test_commands_fed_together_answer_like_the_full_path(direct, cmds, failing):
    """``failing``: the store fails every call (a batch then goes through the full path
    command by command, which reports each failure)."""
    fast = side(True, direct)
    slow = side(False, direct)
    outs = []
    for conn, _unit, dev in (fast, slow):
        conn.feed(memoryview(scsi_cmd(bytes(6), 9, conn.exp_cmdsn)))  # clear the power-on UA
        drain(conn)
        if failing:
            dev.fail = OSError(5, "injected")
        conn.feed(memoryview(stream(cmds, conn.exp_cmdsn)))
        dev.fail = None
        outs.append(drain(conn))
    # A response built after later commands arrived carries a later ExpCmdSN/MaxCmdSN
    # (both right: they say what the target has received); the rest is identical.
    windows = [[r.bhs[28:36] for r in out] for out in outs]
    assert windows[0] == sorted(windows[0]) and windows[0][-1:] == windows[1][-1:]
    masked = [[(r.opcode, r.bhs[:28] + r.bhs[36:], r.data) for r in out] for out in outs]
    assert masked[0] == masked[1]
    assert len(outs[0]) == len(cmds)
    assert fast[2].read(0, NB) == slow[2].read(0, NB)
    for _, _, dev in (fast, slow):
        dev.close()


def test_writes_that_follow_each_other_are_written_as_one():
    conn, unit, dev = side(True)
    conn.feed(memoryview(scsi_cmd(bytes(6), 9, conn.exp_cmdsn)))
    drain(conn)
    cmds = [(0x2A, 0, 8, 1, False), (0x2A, 0, 8, 2, True), (0x8A, 0, 4, 3, True)]
    cmds += [(0x2A, 100, 2, 4, False), (0x28, 0, 8, 0, False), (0x2A, 102, 2, 5, False)]
    dev.writes.clear()
    conn.feed(memoryview(stream(cmds, conn.exp_cmdsn)))
    out = drain(conn)
    assert [r.bhs[3] for r in out] == [0] * 6  # every command GOOD, in order
    assert [int.from_bytes(r.bhs[16:20], "big") for r in out] == list(range(100, 106))
    # three back to back, then one that does not follow, cut short by a read
    assert dev.writes == [(0, 20), (100, 2), (102, 2)]
    expected = bytes([1]) * 4096 + bytes([2]) * 4096 + bytes([3]) * 2048
    assert dev.read(0, 20) == expected
    dev.close()


def test_reads_that_follow_each_other_are_read_as_one():
    """Plain READs fed together: one ReadRun per stretch that continues on the medium,
    none of them through ``execute``; a write among them is written before the reads
    after it are planned, and each answer carries its own StatSN."""
    conn, unit, dev = side(True, direct=True)
    conn.feed(memoryview(scsi_cmd(bytes(6), 9, conn.exp_cmdsn)))  # the power-on UA
    drain(conn)
    for lba in range(0, 64, 8):
        dev.write(lba, bytes([lba + 1]) * 4096)
    calls = []
    real = unit.execute
    unit.execute = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
    cmds = [(0x28, lba, 8, 0, False) for lba in (0, 8, 16, 40, 48)]  # two stretches
    cmds += [(0x2A, 24, 8, 0x77, False), (0x28, 24, 8, 0, False)]  # written, then read
    statsn = conn.statsn
    conn.feed(memoryview(stream(cmds, conn.exp_cmdsn)))
    runs = [it for it in conn.out if isinstance(it, ReadRun)]
    assert [(r.offset, r.lengths) for r in runs] == [
        (0, [4096] * 3),
        (40 * BS, [4096] * 2),
        (24 * BS, [4096]),
    ]
    out = drain(conn)
    assert calls == []
    assert [r.bhs[3] for r in out] == [0] * 7
    assert [int.from_bytes(r.bhs[24:28], "big") for r in out] == list(range(statsn, statsn + 7))
    reads = [r for r in out if r.opcode == 0x25]
    expected = [bytes([lba + 1]) * 4096 for lba in (0, 8, 16, 40, 48)] + [bytes([0x77]) * 4096]
    assert [r.data for r in reads] == expected
    dev.close()


def test_a_read_run_stops_at_a_command_it_does_not_take():
    """A READ with FUA, one past the end and one under a unit attention go through the
    full path, each answered as it would be alone; the plain reads around them are not."""
    conn, unit, dev = side(True, direct=True)
    conn.feed(memoryview(scsi_cmd(bytes(6), 9, conn.exp_cmdsn)))
    drain(conn)
    first = conn.exp_cmdsn
    pdus = scsi_cmd(cdb_for(0x28, 0, 8, 0), 1, first, edtl=4096, read=True)
    pdus += scsi_cmd(cdb_for(0x28, 8, 8, 0x08), 2, first + 1, edtl=4096, read=True)  # FUA
    pdus += scsi_cmd(cdb_for(0x88, NB - 4, 8, 0), 3, first + 2, edtl=4096, read=True)
    pdus += scsi_cmd(cdb_for(0x88, 16, 8, 0), 4, first + 3, edtl=4096, read=True)
    calls = []
    real = unit.execute
    unit.execute = lambda cdb, *a: calls.append(cdb[0]) or real(cdb, *a)  # type: ignore[method-assign]
    conn.feed(memoryview(pdus))
    unit.reset(None)  # a unit attention for every nexus: the next READ reports it
    conn.feed(memoryview(scsi_cmd(cdb_for(0x28, 24, 8, 0), 5, first + 4, edtl=4096, read=True)))
    out = drain(conn)
    # the status of each command: in its Data-In (S bit) or in a SCSI Response
    status = {
        int.from_bytes(r.bhs[16:20], "big"): r.bhs[3]
        for r in out
        if r.opcode == 0x21 or (r.opcode == 0x25 and r.bhs[1] & 0x01)
    }
    assert status == {1: 0, 2: 0, 3: 2, 4: 0, 5: 2}
    assert calls == [0x28, 0x88, 0x28]  # ITTs 2, 3 and 5
    dev.close()
