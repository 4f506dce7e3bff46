"""The fast lane for plain READs and WRITEs answers exactly as the full command path.

Two connections, each in front of its own logical unit on identical devices, get the same
random stream of commands; one has its fast lane switched off.  Every byte they send back
and every byte on their devices must be the same, whatever the commands: in range or not,
with flags, with a transfer length that does not match, under a unit attention or a
reservation, with FUA, after a store error.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def side(fast: bool) -> tuple[Connection, LogicalUnit, MemDevice]:
    dev = MemDevice(NB, BS)
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


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands)
def test_fast_lane_answers_like_the_full_path(cmds):
    fast = side(True)
    slow = side(False)
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batched, st.booleans())
def test_commands_fed_together_answer_like_the_full_path(cmds, failing):
    """``failing``: the store fails every call (a batch then goes through the full path
    command by command, which reports each failure)."""
    fast = side(True)
    slow = side(False)
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
