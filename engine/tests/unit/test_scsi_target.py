"""Unit attentions, REQUEST SENSE, REPORT SUPPORTED OPERATION CODES, START STOP UNIT,
PREVENT ALLOW MEDIUM REMOVAL, unsupported opcodes and the helpers the iSCSI layer uses."""

from __future__ import annotations

import struct

import pytest

from cairn.blockdev import MediumError, NoSpaceError, StoreError
from cairn.scsi import ScsiTarget, SenseKey, Status, flush_failed_result
from cairn.scsi.opcodes import ALL_COMMANDS

from .test_scsi_support import (
    NEXUS_A,
    NEXUS_B,
    Rig,
    caw,
    expect_check,
    field_pointer_of,
    inquiry,
    make_rig,
    mode_select6,
    payload,
    pr_out,
    read10,
    read16,
    rig_fixture,  # noqa: F401  (the ``rig`` fixture)
    rsoc,
    sense_of,
    tur,
    unmap_cdb,
    write6,
    write10,
    write_same10,
    write_same16,
)

ILLEGAL = SenseKey.ILLEGAL_REQUEST
UA = SenseKey.UNIT_ATTENTION


# ---------------------------------------------------------------------- unit attentions
def test_power_on_unit_attention_for_a_new_nexus() -> None:
    rig = make_rig(clear_ua=False)
    # INQUIRY and REPORT LUNS do not report it
    assert rig.run(inquiry()).status == Status.GOOD
    assert rig.run(struct.pack(">BxxxxxIxx", 0xA0, 64)).status == Status.GOOD
    expect_check(rig.run(read10(0, 1)), UA, 0x29, 0x00)
    assert rig.run(read10(0, 1)).status == Status.GOOD
    # the other nexus has its own
    expect_check(rig.run(tur(), nexus=NEXUS_B), UA, 0x29, 0x00)


def test_power_on_unit_attention_can_be_disabled() -> None:
    rig = make_rig(clear_ua=False, power_on_ua=False)
    assert rig.run(tur()).status == Status.GOOD


def test_request_sense_reports_and_clears_unit_attention() -> None:
    rig = make_rig(clear_ua=False)
    data = rig.good(bytes((0x03, 0, 0, 0, 252, 0)))
    assert data[0] == 0x70 and data[2] & 0x0F == UA and (data[12], data[13]) == (0x29, 0)
    assert rig.run(tur()).status == Status.GOOD
    data = rig.good(bytes((0x03, 0, 0, 0, 252, 0)))
    assert data[2] & 0x0F == 0 and data[12] == 0
    data = rig.good(bytes((0x03, 1, 0, 0, 252, 0)))  # DESC
    assert data[0] == 0x72 and len(data) == 8
    assert rig.good(bytes((0x03, 0, 0, 0, 4, 0))) == bytes((0x70, 0, 0, 0))


def test_lun_reset_unit_attention_for_every_nexus(rig: Rig) -> None:
    rig.target.lun_reset(0, NEXUS_A)
    for nexus in (NEXUS_A, NEXUS_B):
        expect_check(rig.run(tur(), nexus=nexus), UA, 0x29, 0x03)
        assert rig.run(tur(), nexus=nexus).status == Status.GOOD
    rig.target.lun_reset(7, NEXUS_A)  # no such LUN: nothing happens


def test_target_reset_unit_attention_for_everybody(rig: Rig) -> None:
    rig.target.target_reset(NEXUS_A)
    for nexus in (NEXUS_A, NEXUS_B):
        expect_check(rig.run(tur(), nexus=nexus), UA, 0x29, 0x00)
        assert rig.run(tur(), nexus=nexus).status == Status.GOOD


def test_capacity_changed(rig: Rig) -> None:
    rig.device.grow(4096)
    rig.lu.capacity_changed()
    expect_check(rig.run(read10(0, 1)), UA, 0x2A, 0x09)
    data = rig.good(struct.pack(">BB8xIBB", 0x9E, 0x10, 32, 0, 0))
    assert struct.unpack_from(">Q", data)[0] == 4095
    assert rig.run(read10(4000, 1), nexus=NEXUS_A).status == Status.GOOD


def test_nexus_lost_forgets_unit_attentions() -> None:
    rig = make_rig(clear_ua=False)
    rig.target.nexus_added(NEXUS_A)
    rig.target.nexus_lost(NEXUS_A)
    assert rig.lu.pending_unit_attentions(NEXUS_A) == []
    # a new login of the same initiator port is a new nexus
    expect_check(rig.run(tur()), UA, 0x29, 0x00)


def test_unsupported_opcode_beats_unit_attention() -> None:
    rig = make_rig(clear_ua=False)
    expect_check(rig.run(bytes((0x9C,)) + bytes(15)), ILLEGAL, 0x20)  # WRITE ATOMIC(16)
    expect_check(rig.run(tur()), UA, 0x29, 0x00)


# ---------------------------------------------------------------------- unsupported input
@pytest.mark.parametrize(
    "opcode", [0x04, 0x07, 0x3B, 0x3C, 0x48, 0x4D, 0x83, 0x84, 0x8B, 0x8C, 0x9C, 0xA4, 0xFF]
)
def test_unsupported_opcodes(rig: Rig, opcode: int) -> None:
    expect_check(rig.run(bytes((opcode,)) + bytes(15)), ILLEGAL, 0x20)


def test_empty_and_short_cdbs(rig: Rig) -> None:
    expect_check(rig.run(b""), ILLEGAL, 0x20)
    expect_check(rig.run(bytes((0x28, 0, 0))), ILLEGAL, 0x24)
    expect_check(rig.run(bytes((0xA0, 0))), ILLEGAL, 0x24)


def test_unknown_service_actions(rig: Rig) -> None:
    r = rig.run(bytes((0x9E, 0x11)) + bytes(14))
    expect_check(r, ILLEGAL, 0x24)
    assert field_pointer_of(r) == 1
    expect_check(rig.run(bytes((0xA3, 0x0A)) + bytes(10)), ILLEGAL, 0x24)


# ---------------------------------------------------------------------- RSOC
def all_descriptors(data: bytes) -> list[tuple[int, int, bool, bool, int]]:
    length = struct.unpack_from(">I", data)[0]
    out = []
    pos = 4
    while pos < 4 + length:
        op, sa, flags, cdb_len = struct.unpack_from(">BxHxBH", data, pos)
        ctdp = bool(flags & 0x02)
        out.append((op, sa, bool(flags & 0x01), ctdp, cdb_len))
        pos += 8
        if ctdp:
            assert struct.unpack_from(">H", data, pos)[0] == 0x0A
            pos += 12
    return out


def test_report_supported_opcodes_all(rig: Rig) -> None:
    descs = all_descriptors(rig.good(rsoc()))
    ops = {(d[0], d[1]) for d in descs}
    for op in (0x00, 0x12, 0x28, 0x2A, 0x89, 0x93, 0x42, 0x35):
        assert (op, 0) in ops
    assert {(0x9E, 0x10), (0x9E, 0x12), (0x5E, 0), (0x5E, 3), (0x5F, 6), (0xA3, 0x0C)} <= ops
    for op, sa, servactv, ctdp, cdb_len in descs:
        assert not ctdp
        assert servactv == (op in (0x5E, 0x5F, 0x9E, 0xA3))
        assert servactv or sa == 0
        assert cdb_len == {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}[op >> 5]
    with_timeouts = all_descriptors(rig.good(rsoc(rctd=True)))
    assert all(d[3] for d in with_timeouts) and len(with_timeouts) == len(descs)


def test_report_supported_opcodes_one_command(rig: Rig) -> None:
    for op, sa, servactv, _, cdb_len in all_descriptors(rig.good(rsoc())):
        if servactv:
            expect_check(rig.run(rsoc(1, op, sa)), ILLEGAL, 0x24)
            r = rig.run(rsoc(1, op, sa))
            assert field_pointer_of(r) != 1  # not mistaken for "opcode unsupported"
            data = rig.good(rsoc(2, op, sa))
        else:
            expect_check(rig.run(rsoc(2, op, sa)), ILLEGAL, 0x24)
            data = rig.good(rsoc(1, op, sa))
        assert data[1] & 0x07 == 0x03
        assert struct.unpack_from(">H", data, 2)[0] == cdb_len == len(data) - 4
        assert data[4] == op
    # the DPO and FUA bits are evaluated where DPOFUA promises them
    for op in (0x28, 0x2A, 0x88, 0x8A, 0xA8, 0xAA, 0x89):
        assert rig.good(rsoc(1, op))[5] & 0x18 == 0x18
    for op in (0x2E, 0x2F, 0xAE, 0xAF, 0x8E, 0x8F):
        assert rig.good(rsoc(1, op))[5] & 0x10 == 0x10
    data = rig.good(rsoc(1, 0x28, rctd=True))
    assert data[1] & 0x80 and len(data) == 4 + 10 + 12
    assert rig.good(rsoc(1, 0x9C)) == bytes((0, 1, 0, 0))  # not supported
    expect_check(rig.run(rsoc(5)), ILLEGAL, 0x24)
    assert len(rig.good(rsoc(alloc=4))) == 4


def test_rsoc_table_matches_dispatch(rig: Rig) -> None:
    opcodes = {c.opcode for c in ALL_COMMANDS} - {0xA0}
    assert opcodes == set(rig.lu._dispatch)


def test_thick_unit_does_not_report_unmap() -> None:
    rig = make_rig(thin=False)
    ops = {d[0] for d in all_descriptors(rig.good(rsoc()))}
    assert 0x42 not in ops and 0x28 in ops


# ---------------------------------------------------------------------- START STOP, PREVENT
def start_stop(
    immed: int = 0, pc: int = 0, no_flush: int = 0, loej: int = 0, start: int = 0
) -> bytes:
    return bytes((0x1B, immed, 0, 0, (pc << 4) | (no_flush << 2) | (loej << 1) | start, 0))


def test_start_stop_unit(rig: Rig) -> None:
    r = rig.run(start_stop(start=0))
    assert r.status == Status.GOOD and r.flush
    assert not rig.run(start_stop(start=0, no_flush=1)).flush
    assert rig.run(read10(0, 1)).status == Status.GOOD  # a stopped disk keeps serving
    assert rig.run(start_stop(start=1)).status == Status.GOOD
    # LOEJ on a unit whose medium cannot be removed is invalid
    r = rig.run(start_stop(immed=1, loej=1, start=0))
    expect_check(r, ILLEGAL, 0x24)
    assert field_pointer_of(r) == 4
    expect_check(rig.run(start_stop(loej=1, start=1)), ILLEGAL, 0x24)
    for pc in range(1, 16):
        r = rig.run(start_stop(pc=pc, loej=1))
        if pc in (0x1, 0x2, 0x3, 0x5, 0x7, 0xA, 0xB):
            assert r.status == Status.GOOD
        else:
            expect_check(r, ILLEGAL, 0x24)


def test_prevent_allow(rig: Rig) -> None:
    assert rig.run(bytes((0x1E, 0, 0, 0, 1, 0))).status == Status.GOOD
    assert rig.lu.removal_prevented
    rig.target.nexus_lost(NEXUS_A)
    assert not rig.lu.removal_prevented
    assert rig.run(bytes((0x1E, 0, 0, 0, 1, 0)), nexus=NEXUS_B).status == Status.GOOD
    rig.target.lun_reset(0, NEXUS_A)
    assert not rig.lu.removal_prevented
    expect_check(rig.run(tur()), UA, 0x29, 0x00)  # NEXUS_A came back as a new nexus
    expect_check(rig.run(bytes((0x1E, 0, 0, 0, 2, 0))), ILLEGAL, 0x24)
    assert rig.run(bytes((0x1E, 0, 0, 0, 0, 0))).status == Status.GOOD


# ---------------------------------------------------------------------- iSCSI-layer helpers
def test_data_out_length(rig: Rig) -> None:
    t = rig.target
    assert t.data_out_length(0, write10(0, 8)) == 8 * 512
    assert t.data_out_length(0, write6(0, 0)) == 256 * 512
    assert t.data_out_length(0, read10(0, 8)) == 0
    assert t.data_out_length(0, caw(0, 2)) == 4 * 512
    assert t.data_out_length(0, write_same10(0, 100)) == 512
    assert t.data_out_length(0, write_same16(0, 100, 0x01)) == 0
    assert t.data_out_length(0, unmap_cdb(24)) == 24
    assert t.data_out_length(0, mode_select6(16)) == 16
    assert t.data_out_length(0, pr_out(0)) == 24
    assert t.data_out_length(0, bytes((0x2F, 0x02, 0, 0, 0, 0, 0, 0, 4, 0))) == 4 * 512
    assert t.data_out_length(0, bytes((0x2F, 0x06, 0, 0, 0, 0, 0, 0, 4, 0))) == 512
    assert t.data_out_length(0, bytes((0x2F, 0x00, 0, 0, 0, 0, 0, 0, 4, 0))) == 0
    assert t.data_out_length(0, tur()) == 0
    assert t.data_out_length(0, bytes((0x9C,)) + bytes(15)) is None
    assert t.data_out_length(0, b"") is None
    assert t.data_out_length(0, bytes((0x2A, 0))) == 0  # short CDB: the command will fail
    assert t.data_out_length(3, write10(0, 1)) is None


def test_has_lun_and_flush(rig: Rig) -> None:
    assert rig.target.has_lun(0) and not rig.target.has_lun(1)
    rig.target.flush(0)
    rig.target.flush(1)
    assert rig.device.flushes == 1


@pytest.mark.parametrize(
    "error, expected",
    [
        (NoSpaceError("full"), (SenseKey.DATA_PROTECT, 0x27, 0x07)),
        (MediumError("eio"), (SenseKey.MEDIUM_ERROR, 0x0C, 0x00)),
        (StoreError("gone"), (SenseKey.HARDWARE_ERROR, 0x44, 0x00)),
        (OSError("x"), (SenseKey.HARDWARE_ERROR, 0x44, 0x00)),
    ],
)
def test_flush_failed_result(error: Exception, expected: tuple[int, int, int]) -> None:
    r = flush_failed_result(error)
    assert r.status == Status.CHECK_CONDITION and sense_of(r) == expected


def test_execute_never_raises_even_with_a_broken_unit() -> None:
    class Broken:
        def execute(self, *args: object) -> None:
            raise RuntimeError("boom")

    target = ScsiTarget({})
    target.luns[0] = Broken()  # type: ignore[assignment]
    r = target.execute(0, read16(0, 1), None, NEXUS_A)
    assert sense_of(r) == (SenseKey.HARDWARE_ERROR, 0x44, 0x00)


def test_read_data_is_zero_where_never_written(rig: Rig) -> None:
    assert payload(rig.run(read10(5, 2))) == bytes(1024)
