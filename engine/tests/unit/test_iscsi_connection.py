"""The full feature phase: commands, data transfer, sequence numbers, NOP, TMF, logout,
and malformed input."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn.iscsi.pdu import Op, TmfFunction, TmfResponse
from cairn.iscsi.session import SessionTable

from .iscsi_helpers import (
    INITIATOR,
    TARGET,
    data_out,
    drain,
    feed,
    login_pdu,
    make_connection,
    plain_login,
    scsi_cmd,
    simple_pdu,
)


def read10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)


def write10(lba: int, n: int, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, n, 0)


def logged_in(extra=None, **kw):
    conn, backend = make_connection(**kw)
    rsp = plain_login(conn, extra)
    assert rsp.login_status == 0
    return conn, backend


def test_read_is_phase_collapsed_and_split_by_mrdsl():
    conn, backend = logged_in([("MaxRecvDataSegmentLength", "1024")])
    backend.blocks[0:4096] = bytes(range(256)) * 16
    out = feed(conn, scsi_cmd(read10(0, 8), itt=9, cmdsn=1, edtl=4096, read=True))
    assert [r.opcode for r in out] == [Op.DATA_IN] * 4
    assert b"".join(r.data for r in out) == bytes(backend.blocks[0:4096])
    assert [r.u32(36) for r in out] == [0, 1, 2, 3]  # DataSN
    assert [r.u32(40) for r in out] == [0, 1024, 2048, 3072]  # buffer offsets
    assert out[-1].bhs[1] & 0x81 == 0x81 and not any(r.bhs[1] & 1 for r in out[:-1])
    assert out[-1].bhs[3] == 0  # GOOD status in the last Data-In
    assert out[-1].u32(24) == conn.statsn - 1


def test_read_residuals():
    conn, _ = logged_in()
    (r,) = feed(conn, scsi_cmd(read10(0, 1), itt=1, cmdsn=1, edtl=10000, read=True))
    assert r.bhs[1] & 0x02 and r.u32(44) == 10000 - 512 and len(r.data) == 512
    (r,) = feed(conn, scsi_cmd(read10(0, 1), itt=2, cmdsn=2, edtl=200, read=True))
    assert r.bhs[1] & 0x04 and r.u32(44) == 512 - 200 and len(r.data) == 200
    (r,) = feed(conn, scsi_cmd(read10(0, 1), itt=3, cmdsn=3, edtl=0, read=True))
    assert r.opcode == Op.SCSI_RSP and r.bhs[1] & 0x04 and r.u32(44) == 512


def test_write_with_immediate_data():
    conn, backend = logged_in([("ImmediateData", "Yes")])
    payload = bytes([7]) * 1024
    (r,) = feed(conn, scsi_cmd(write10(2, 2), 4, 1, edtl=1024, write=True, data=payload))
    assert r.opcode == Op.SCSI_RSP and r.bhs[3] == 0
    assert backend.blocks[1024:2048] == payload


def test_write_with_r2t_and_unsolicited_data():
    conn, backend = logged_in(
        [
            ("InitialR2T", "No"),
            ("FirstBurstLength", "1024"),
            ("MaxBurstLength", "2048"),
            ("MaxOutstandingR2T", "1"),
        ]
    )
    payload = bytes(range(256)) * 24  # 6144 bytes = 12 blocks
    out = feed(
        conn, scsi_cmd(write10(0, 12), 5, 1, edtl=6144, write=True, data=payload[:512], final=False)
    )
    # one R2T for the first burst after the unsolicited part
    assert [r.opcode for r in out] == [Op.R2T]
    r2t = out[0]
    assert r2t.u32(40) == 1024 and r2t.u32(44) == 2048 and r2t.u32(36) == 0
    out = feed(conn, data_out(5, 0xFFFFFFFF, 0, 512, payload[512:1024]))
    assert out == []
    offset, ttt = 1024, r2t.u32(20)
    r2tsn = 0
    while True:
        length = 2048 if offset + 2048 <= 6144 else 6144 - offset
        out = feed(conn, data_out(5, ttt, 0, offset, payload[offset : offset + length]))
        offset += length
        if offset >= 6144:
            break
        assert out[0].opcode == Op.R2T
        r2tsn += 1
        assert out[0].u32(36) == r2tsn and out[0].u32(40) == offset
        ttt = out[0].u32(20)
    assert out[-1].opcode == Op.SCSI_RSP and out[-1].bhs[3] == 0
    assert backend.blocks[:6144] == payload


def test_data_out_received_in_place():
    """The transport may receive a Data-Out payload straight into the write's buffer."""
    conn, backend = logged_in(
        [("InitialR2T", "Yes"), ("MaxBurstLength", "2048"), ("MaxOutstandingR2T", "1")]
    )
    payload = bytes(range(256)) * 16  # 4096 bytes = 8 blocks
    (r2t,) = feed(conn, scsi_cmd(write10(0, 8), 5, 1, edtl=4096, write=True, final=True))
    assert r2t.opcode == Op.R2T
    offset, ttt = 0, r2t.u32(20)
    unknown = data_out(99, ttt, 0, 0, payload[:2048])[:48]
    assert conn.data_out_sink(unknown) is None  # no such task
    wrong_place = data_out(5, ttt, 0, 512, payload[512:2560])[:48]
    assert conn.data_out_sink(wrong_place) is None  # not where the burst starts
    for _ in range(2):
        bhs = data_out(5, ttt, 0, offset, payload[offset : offset + 2048])[:48]
        sink = conn.data_out_sink(bhs)
        assert sink is not None and len(sink) == 2048
        sink[:] = payload[offset : offset + 2048]
        conn.data_out_received(bhs, sink)
        out = drain(conn)
        offset += 2048
        if offset < 4096:
            (r2t,) = out
            assert r2t.opcode == Op.R2T and r2t.u32(40) == offset
            ttt = r2t.u32(20)
    (rsp,) = out
    assert rsp.opcode == Op.SCSI_RSP and rsp.bhs[3] == 0
    assert backend.blocks[:4096] == payload


def test_data_out_out_of_sequence_fails_the_task_not_the_connection():
    conn, backend = logged_in([("InitialR2T", "No"), ("ImmediateData", "No")])
    backend.blocks[:1024] = b"a" * 1024
    feed(conn, scsi_cmd(write10(0, 2), 5, 1, edtl=1024, write=True, final=False))
    feed(conn, data_out(5, 0xFFFFFFFF, 1, 0, b"b" * 512, final=False))  # DataSN 1, not 0
    (r,) = feed(conn, data_out(5, 0xFFFFFFFF, 0, 512, b"b" * 512))
    assert r.opcode == Op.SCSI_RSP and r.bhs[3] == 2  # CHECK CONDITION
    sense = r.data[2:]
    assert sense[2] & 0x0F == 0x0B and sense[12:14] == b"\x47\x05"
    assert backend.blocks[:1024] == b"a" * 1024 and not conn.closing
    # the connection still works
    assert feed(conn, scsi_cmd(write10(0, 1), 6, 2, edtl=512, write=True, final=False)) == []
    (r,) = feed(conn, data_out(6, 0xFFFFFFFF, 0, 0, b"c" * 512))
    assert r.opcode == Op.SCSI_RSP and r.bhs[3] == 0
    assert backend.blocks[:1024] == b"c" * 512 + b"a" * 512


def test_write_edtl_mismatch_transfers_the_smaller_length_with_residual():
    conn, backend = logged_in()
    backend.blocks[:1024] = b"a" * 1024
    # no data at all for a one-block write: nothing written, GOOD, overflow of one block
    (r,) = feed(conn, scsi_cmd(write10(0, 1), 6, 1, edtl=0))
    assert r.bhs[3] == 0 and r.bhs[1] & 0x04 and r.u32(44) == 512
    assert backend.blocks[:1024] == b"a" * 1024
    # two blocks of data for a one-block write: one block written, underflow of one block
    (r,) = feed(conn, scsi_cmd(write10(0, 1), 7, 2, edtl=1024, write=True, data=b"b" * 1024))
    assert r.bhs[3] == 0 and r.bhs[1] & 0x02 and r.u32(44) == 512
    assert backend.blocks[:1024] == b"b" * 512 + b"a" * 512
    # one block of data for a two-block write: only the block that arrived is written
    (r,) = feed(conn, scsi_cmd(write10(0, 2), 8, 3, edtl=512, write=True, data=b"c" * 512))
    assert r.bhs[3] == 0 and r.bhs[1] & 0x04 and r.u32(44) == 512
    assert backend.blocks[:1024] == b"c" * 512 + b"a" * 512


def test_write_edtl_partial_block_is_invalid_field_in_iu_with_residual():
    conn, backend = logged_in()
    (r,) = feed(conn, scsi_cmd(write10(0, 1), 6, 1, edtl=200, write=True, data=bytes(200)))
    assert r.bhs[3] == 2 and r.bhs[1] & 0x04 and r.u32(44) == 312
    sense = r.data[2:]
    assert sense[2] & 0x0F == 5 and sense[12:14] == b"\x0e\x03"
    assert backend.calls == []  # nothing was written


def test_read_flagged_as_write_runs_without_data_in():
    conn, backend = logged_in()
    (r,) = feed(conn, scsi_cmd(read10(0, 1), 6, 1, edtl=512, write=True, data=bytes(512)))
    assert r.opcode == Op.SCSI_RSP and r.bhs[3] == 0 and r.bhs[1] & 0x04


def test_fua_write_and_sync_cache_wait_for_flush():
    conn, backend = logged_in()
    out = feed(conn, scsi_cmd(write10(0, 1, fua=True), 8, 1, edtl=512, write=True, data=bytes(512)))
    assert out == [] and len(conn.flush_requests) == 1
    fr = conn.flush_requests.pop()
    conn.flush_done(fr)
    (r,) = drain(conn)
    assert r.opcode == Op.SCSI_RSP and r.bhs[3] == 0 and r.u32(16) == 8


def test_cmdsn_window():
    conn, backend = logged_in()
    exp = conn.exp_cmdsn
    # too low and too high are ignored
    assert feed(conn, scsi_cmd(read10(0, 1), 1, exp - 1, 512, read=True)) == []
    assert feed(conn, scsi_cmd(read10(0, 1), 2, exp + 1000, 512, read=True)) == []
    # a gap is held until filled, then both run in order
    assert feed(conn, scsi_cmd(read10(0, 1), 3, exp + 1, 512, read=True)) == []
    out = feed(conn, scsi_cmd(read10(0, 1), 4, exp, 512, read=True))
    assert [r.u32(16) for r in out] == [4, 3]
    assert conn.exp_cmdsn == exp + 2
    # an immediate command does not advance CmdSN; responses carry ExpCmdSN/MaxCmdSN
    (r,) = feed(conn, scsi_cmd(read10(0, 1), 5, exp + 2, 512, read=True, immediate=True))
    assert conn.exp_cmdsn == exp + 2 and r.u32(28) == exp + 2 and r.u32(32) > r.u32(28)


def test_statsn_increments_per_status():
    conn, _ = logged_in()
    s0 = conn.statsn
    out = feed(
        conn, *(scsi_cmd(read10(0, 1), i, conn.exp_cmdsn + i, 512, read=True) for i in range(3))
    )
    assert [r.u32(24) for r in out] == [s0, s0 + 1, s0 + 2]


def test_nop_out_echo_and_target_ping():
    conn, _ = logged_in()
    (r,) = feed(
        conn,
        simple_pdu(
            Op.NOP_OUT, 0x80, 11, struct.pack(">III", 0xFFFFFFFF, conn.exp_cmdsn, 0), b"ping"
        ),
    )
    assert r.opcode == Op.NOP_IN and r.data == b"ping" and r.u32(16) == 11
    conn.tick(10.0)
    (ping,) = drain(conn)
    assert ping.opcode == Op.NOP_IN and ping.u32(16) == 0xFFFFFFFF
    ttt = ping.u32(20)
    assert ttt != 0xFFFFFFFF
    feed(
        conn, simple_pdu(Op.NOP_OUT, 0x80, 0xFFFFFFFF, struct.pack(">III", ttt, conn.exp_cmdsn, 0))
    )
    conn.tick(29.0)
    assert not conn.closing
    drain(conn)
    conn.tick(10.0)  # a new ping, never answered
    drain(conn)
    conn.tick(31.0)
    assert conn.closing


def test_task_management():
    conn, backend = logged_in([("InitialR2T", "Yes")])
    # a write waiting for R2T data can be aborted
    out = feed(conn, scsi_cmd(write10(0, 2), 20, conn.exp_cmdsn, 1024, write=True))
    assert out[0].opcode == Op.R2T

    def tmf(function, ref=0, lun=0):
        rest = struct.pack(">IIII", ref, conn.exp_cmdsn, 0, 0)
        from cairn.iscsi.pdu import encode_lun

        (r,) = feed(
            conn, simple_pdu(Op.TASK_MGMT_REQ, 0x80 | function, 30, rest, lun=encode_lun(lun))
        )
        assert r.opcode == Op.TASK_MGMT_RSP
        return r.bhs[2]

    assert tmf(TmfFunction.ABORT_TASK, ref=20) == TmfResponse.COMPLETE
    assert feed(conn, data_out(20, out[0].u32(20), 0, 0, bytes(1024))) == []  # dropped
    assert tmf(TmfFunction.ABORT_TASK, ref=999) == TmfResponse.TASK_DOES_NOT_EXIST
    assert tmf(TmfFunction.ABORT_TASK_SET) == TmfResponse.COMPLETE
    assert tmf(TmfFunction.LOGICAL_UNIT_RESET) == TmfResponse.COMPLETE
    assert tmf(TmfFunction.LOGICAL_UNIT_RESET, lun=5) == TmfResponse.LUN_DOES_NOT_EXIST
    assert tmf(TmfFunction.TARGET_WARM_RESET) == TmfResponse.COMPLETE
    assert backend.resets == ["lun", "target"]
    assert tmf(TmfFunction.TASK_REASSIGN) == TmfResponse.NOT_SUPPORTED


def test_logout_closes_and_ends_nexus():
    conn, backend = logged_in()
    (r,) = feed(
        conn, simple_pdu(Op.LOGOUT_REQ, 0x80, 3, struct.pack(">HHII", 7, 0, conn.exp_cmdsn, 0))
    )
    assert r.opcode == Op.LOGOUT_RSP and r.bhs[2] == 0 and conn.closing
    conn.connection_lost()
    assert backend.nexuses == []


def test_session_reinstatement_closes_old_session():
    sessions = SessionTable()
    c1, backend = make_connection(sessions=sessions)
    assert plain_login(c1).login_status == 0
    c2, _ = make_connection(sessions=sessions, backend=backend)
    assert plain_login(c2).login_status == 0
    assert c1.closing and "reinstated" in c1.close_reason
    assert not c2.closing


def test_connection_drop_mid_command_drops_task_cleanly():
    conn, backend = logged_in([("InitialR2T", "Yes")])
    feed(conn, scsi_cmd(write10(0, 2), 20, conn.exp_cmdsn, 1024, write=True))
    conn.connection_lost()
    assert backend.nexuses == [] and backend.calls == []


def test_unknown_opcode_is_rejected_and_connection_survives():
    conn, _ = logged_in()
    (r,) = feed(conn, simple_pdu(0x1D, 0x80, 1, b""))
    assert r.opcode == Op.REJECT and r.data[:1] == bytes((0x5D,))
    (r,) = feed(conn, scsi_cmd(read10(0, 1), 2, conn.exp_cmdsn, 512, read=True))
    assert r.opcode == Op.DATA_IN


def test_oversized_data_segment_closes_connection():
    conn, _ = logged_in()
    raw = bytearray(scsi_cmd(read10(0, 1), 2, conn.exp_cmdsn, 512, read=True))
    raw[5:8] = ((16 << 20) - 1).to_bytes(3, "big")
    conn.feed(memoryview(bytes(raw)))
    assert conn.closing


def test_digests_are_checked():
    conn, _ = logged_in([("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")])
    assert conn.hd == 4 and conn.dd == 4
    from cairn.iscsi.pdu import crc32c

    bhs = scsi_cmd(read10(0, 1), 2, conn.exp_cmdsn, 512, read=True)[:48]
    good = bhs + crc32c(bhs).to_bytes(4, "little")
    out = feed(conn, good)
    assert out[0].opcode == Op.DATA_IN and len(out[0].data) == 512
    bad = bhs[:47] + b"\x01" + crc32c(bhs).to_bytes(4, "little")
    conn.feed(memoryview(bad))
    assert conn.closing and "digest" in conn.close_reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=600))
def test_garbage_during_login_never_raises(blob):
    conn, _ = make_connection()
    conn.feed(memoryview(blob))
    drain(conn)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0x3F),
            st.integers(0, 255),
            st.binary(min_size=46, max_size=46),
            st.binary(max_size=64),
        ),
        max_size=6,
    )
)
def test_malformed_pdus_in_full_feature_get_reject_or_close(pdus):
    """Every malformed PDU gets an answer or a closed connection; never an exception, and
    another session on the same portal keeps working."""
    sessions = SessionTable()
    conn, backend = make_connection(sessions=sessions)
    plain_login(conn)
    other, _ = make_connection(sessions=sessions, backend=backend)
    feed(other, login_pdu([("InitiatorName", INITIATOR + "-2"), ("TargetName", TARGET)]))
    for op, flags, rest, data in pdus:
        hdr = bytearray(bytes((op, flags)) + rest)
        hdr[4] = 0
        hdr[5:8] = len(data).to_bytes(3, "big")
        conn.feed(memoryview(bytes(hdr) + data + bytes((-len(data)) & 3)))
        drain(conn)
        if conn.closing:
            break
    (r,) = feed(other, scsi_cmd(read10(0, 1), 1, other.exp_cmdsn, 512, read=True))
    assert r.opcode == Op.DATA_IN and r.bhs[3] == 0


def test_writes_received_into_buffers_the_store_lends(tmp_path):
    """R2T writes land in journal areas the embedded store lends; every area comes back
    after the write, after an abort and when the connection drops."""
    from cairn.scsi import LogicalUnit, ScsiTarget
    from cairn.store import EmbeddedPool
    from cairn.volume import LocalVolume

    store = EmbeddedPool(tmp_path / "pool").create_volume("v", 8 << 20, 512)
    unit = LogicalUnit(LocalVolume.open(store, tmp_path / "v.seq"), serial="0", naa=bytes(8))
    conn, _ = make_connection(backend=ScsiTarget({0: unit}))  # type: ignore[arg-type]
    assert plain_login(conn, [("InitialR2T", "Yes")]).login_status == 0
    feed(conn, scsi_cmd(bytes(6), 1, 1))  # TUR: clears the power-on unit attention
    free = len(store._free_slots)
    assert free > 0
    payload = bytes(range(256)) * 256  # 64 KiB
    cmdsn = 2
    for itt in (10, 11):
        (r2t,) = feed(conn, scsi_cmd(write10(itt, 128), itt, cmdsn, 65536, write=True))
        cmdsn += 1
        assert len(store._free_slots) == free - 1  # this write's data goes to a lent area
        (rsp,) = feed(conn, data_out(itt, r2t.u32(20), 0, 0, payload))
        assert rsp.opcode == Op.SCSI_RSP and rsp.bhs[3] == 0
        assert len(store._free_slots) == free
        assert store.read(itt, 128) == payload
    # an aborted write gives its area back, and so does a dropped connection
    feed(conn, scsi_cmd(write10(0, 128), 20, cmdsn, 65536, write=True))
    rest = struct.pack(">IIII", 0, cmdsn + 1, 0, 0)
    (r,) = feed(conn, simple_pdu(Op.TASK_MGMT_REQ, 0x80 | TmfFunction.ABORT_TASK_SET, 21, rest))
    assert r.opcode == Op.TASK_MGMT_RSP and r.bhs[2] == TmfResponse.COMPLETE
    assert len(store._free_slots) == free
    feed(conn, scsi_cmd(write10(0, 128), 22, cmdsn + 1, 65536, write=True))
    assert len(store._free_slots) == free - 1
    conn.connection_lost()
    assert len(store._free_slots) == free


def test_immediate_data_received_in_place(tmp_path):
    """The immediate data of a write command may be received straight into a buffer the
    store lends (``command_sink``); the buffer is kept by the write or given back."""
    from cairn.scsi import LogicalUnit, ScsiTarget
    from cairn.store import EmbeddedPool
    from cairn.volume import LocalVolume

    store = EmbeddedPool(tmp_path / "pool").create_volume("v", 8 << 20, 512)
    unit = LogicalUnit(LocalVolume.open(store, tmp_path / "v.seq"), serial="0", naa=bytes(8))
    conn, _ = make_connection(backend=ScsiTarget({0: unit}))  # type: ignore[arg-type]
    assert plain_login(conn, [("FirstBurstLength", "65536")]).login_status == 0
    feed(conn, scsi_cmd(bytes(6), 1, 1))  # TUR: clears the power-on unit attention
    free = len(store._free_slots)
    payload = bytes(range(256)) * 512  # 128 KiB: 64 KiB immediate, 64 KiB after an R2T
    pdu = scsi_cmd(write10(0, 256), 5, 2, edtl=len(payload), write=True, data=payload[:65536])
    sink = conn.command_sink(pdu[:48])
    assert sink is not None and len(sink) == 65536
    assert len(store._free_slots) == free - 1
    sink[:] = payload[:65536]
    conn.command_received(pdu[:48], sink)
    (r2t,) = drain(conn)  # the first burst came as immediate data: R2T for the rest
    assert r2t.opcode == Op.R2T and r2t.u32(40) == 65536
    (rsp,) = feed(conn, data_out(5, r2t.u32(20), 0, 65536, payload[65536:]))
    assert rsp.opcode == Op.SCSI_RSP and rsp.bhs[3] == 0
    assert store.read(0, 256) == payload and len(store._free_slots) == free
    # a command the connection does not take (outside the CmdSN window) gives it back
    late = scsi_cmd(write10(0, 256), 6, 999, edtl=len(payload), write=True, data=payload[:65536])
    sink = conn.command_sink(late[:48])
    assert sink is not None
    conn.command_received(late[:48], sink)
    assert len(store._free_slots) == free
    # and so does a connection that drops while the data is arriving
    assert conn.command_sink(late[:48]) is not None
    conn.connection_lost()
    assert len(store._free_slots) == free
