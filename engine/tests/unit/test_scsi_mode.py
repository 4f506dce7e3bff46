"""MODE SENSE and MODE SELECT: pages, page control, block descriptors, what may change,
and the effects of WCE, D_SENSE and SWP."""

from __future__ import annotations

import struct

import pytest

from cairn.scsi import Nexus, ScsiResult, SenseKey, Status

from .test_scsi_support import (
    NEXUS_A,
    NEXUS_B,
    Rig,
    expect_check,
    make_rig,
    mode_select6,
    mode_select10,
    mode_sense6,
    mode_sense10,
    read10,
    read16,
    rig_fixture,  # noqa: F401  (the ``rig`` fixture)
    tur,
    unmap_cdb,
    unmap_params,
    write10,
    write_same16,
)

ILLEGAL = SenseKey.ILLEGAL_REQUEST


def pages_of(data: bytes, header: int) -> dict[int, bytes]:
    bdl = struct.unpack_from(">H", data, 6)[0] if header == 8 else data[3]
    pos = header + bdl
    out = {}
    while pos < len(data):
        code, length = data[pos] & 0x3F, data[pos + 1]
        out[code] = data[pos : pos + 2 + length]
        pos += 2 + length
    return out


def test_mode_sense6_all_pages(rig: Rig) -> None:
    data = rig.good(mode_sense6(0x3F))
    assert data[0] == len(data) - 1
    assert data[2] & 0x10  # DPOFUA
    assert data[2] & 0x80 == 0  # not write protected
    assert data[3] == 8
    blocks, length = struct.unpack_from(">II", data, 4)
    assert (blocks, length) == (2048, 512)
    pages = pages_of(data, 4)
    assert set(pages) == {0x01, 0x08, 0x0A, 0x1C}
    assert pages[0x08][1] == 0x12 and pages[0x08][2] & 0x04  # WCE
    assert pages[0x0A][1] == 0x0A
    control = pages[0x0A]
    assert control[2] & 0x04 == 0  # D_SENSE off
    assert control[4] & 0x08 == 0  # SWP off
    assert control[3] >> 4 in (0, 1)  # QUEUE ALGORITHM MODIFIER
    assert (control[3] >> 1) & 3 != 2  # QERR
    assert struct.unpack_from(">H", control, 8)[0] != 0  # BUSY TIMEOUT PERIOD
    assert data == rig.good(mode_sense6(0x3F, subpage=0xFF))


def test_mode_sense_single_page_matches_all_pages(rig: Rig) -> None:
    all_pages = pages_of(rig.good(mode_sense6(0x3F)), 4)
    for code, page in all_pages.items():
        assert pages_of(rig.good(mode_sense6(code)), 4) == {code: page}


def test_mode_sense_dbd_and_truncation(rig: Rig) -> None:
    data = rig.good(mode_sense6(0x0A, dbd=True))
    assert data[3] == 0 and len(data) == 4 + 12
    full = rig.good(mode_sense6(0x3F))
    short = rig.good(mode_sense6(0x3F, alloc=4))
    assert short == full[:4] and short[0] == len(full) - 1


def test_mode_sense10_and_long_lba(rig: Rig) -> None:
    data = rig.good(mode_sense10(0x08))
    assert struct.unpack_from(">H", data)[0] == len(data) - 2
    assert data[3] & 0x10 and data[4] & 1 == 0
    assert struct.unpack_from(">H", data, 6)[0] == 8
    data = rig.good(mode_sense10(0x08, llbaa=True))
    assert data[4] & 1 and struct.unpack_from(">H", data, 6)[0] == 16
    assert struct.unpack_from(">QxxxxI", data, 8) == (2048, 512)
    assert set(pages_of(data, 8)) == {0x08}


def test_mode_sense_page_control(rig: Rig) -> None:
    changeable = pages_of(rig.good(mode_sense6(0x3F, pc=1)), 4)
    assert changeable[0x08][2] == 0x04
    assert changeable[0x0A][2] == 0x04 and changeable[0x0A][4] == 0x08
    assert changeable[0x01][2:] == bytes(10)
    defaults = rig.good(mode_sense6(0x3F, pc=2))
    assert defaults == rig.good(mode_sense6(0x3F))
    expect_check(rig.run(mode_sense6(0x3F, pc=3)), ILLEGAL, 0x39)


def test_mode_sense_unknown_page_or_subpage(rig: Rig) -> None:
    expect_check(rig.run(mode_sense6(0x19)), ILLEGAL, 0x24)
    expect_check(rig.run(mode_sense6(0x0A, subpage=1)), ILLEGAL, 0x24)


def select_page(rig: Rig, page: bytes, *, ten: bool = False, nexus: Nexus = NEXUS_A) -> ScsiResult:
    if ten:
        params = bytes(8) + page
        return rig.run(mode_select10(len(params)), params, nexus)
    params = bytes(4) + page
    return rig.run(mode_select6(len(params)), params, nexus)


def current_page(rig: Rig, code: int) -> bytearray:
    return bytearray(pages_of(rig.good(mode_sense6(code, dbd=True)), 4)[code])


def test_mode_select_round_trip(rig: Rig) -> None:
    for code in (0x01, 0x08, 0x0A, 0x1C):
        page = current_page(rig, code)
        assert select_page(rig, bytes(page)).status == Status.GOOD
        assert select_page(rig, bytes(page), ten=True).status == Status.GOOD
        assert current_page(rig, code) == page


def test_mode_select_changes_only_changeable_bits(rig: Rig) -> None:
    page = current_page(rig, 0x0A)
    page[3] ^= 0x10  # QUEUE ALGORITHM MODIFIER is not changeable
    expect_check(select_page(rig, bytes(page)), ILLEGAL, 0x26)
    page = current_page(rig, 0x08)
    page[2] |= 0x01  # RCD
    expect_check(select_page(rig, bytes(page)), ILLEGAL, 0x26)
    page = current_page(rig, 0x08)
    page[1] = 0x10  # wrong page length
    expect_check(select_page(rig, bytes(page)), ILLEGAL, 0x26)
    expect_check(select_page(rig, bytes((0x19, 0x02, 0, 0))), ILLEGAL, 0x26)
    page = current_page(rig, 0x08)
    page[0] |= 0x80  # PS
    expect_check(select_page(rig, bytes(page)), ILLEGAL, 0x26)


def test_mode_select_parameter_list_errors(rig: Rig) -> None:
    page = current_page(rig, 0x0A)
    params = bytes(4) + bytes(page)
    expect_check(rig.run(mode_select6(len(params)), params[:10]), ILLEGAL, 0x1A)
    expect_check(rig.run(mode_select6(10), params[:10]), ILLEGAL, 0x1A)
    expect_check(rig.run(mode_select6(3), params[:3]), ILLEGAL, 0x1A)
    expect_check(rig.run(mode_select6(len(params), sp=True), params), ILLEGAL, 0x24)
    assert rig.run(mode_select6(0)).status == Status.GOOD


def test_mode_select_block_descriptor(rig: Rig) -> None:
    page = bytes(current_page(rig, 0x08))
    good = struct.pack(">BBBB", 0, 0, 0, 8) + struct.pack(">II", 0, 512) + page
    assert rig.run(mode_select6(len(good)), good).status == Status.GOOD
    bad = struct.pack(">BBBB", 0, 0, 0, 8) + struct.pack(">II", 0, 4096) + page
    expect_check(rig.run(mode_select6(len(bad)), bad), ILLEGAL, 0x26)
    odd = struct.pack(">BBBB", 0, 0, 0, 4) + bytes(4) + page
    expect_check(rig.run(mode_select6(len(odd)), odd), ILLEGAL, 0x26)


def test_wce_off_makes_writes_flush(rig: Rig) -> None:
    page = current_page(rig, 0x08)
    page[2] &= ~0x04
    assert select_page(rig, bytes(page)).status == Status.GOOD
    assert not rig.lu.modes.wce
    assert rig.run(write10(0, 1), bytes(512)).flush
    # another nexus learns the parameters changed
    expect_check(rig.run(tur(), nexus=NEXUS_B), SenseKey.UNIT_ATTENTION, 0x2A, 0x01)
    assert rig.run(tur(), nexus=NEXUS_A).status == Status.GOOD


def test_d_sense_switches_to_descriptor_format(rig: Rig) -> None:
    page = current_page(rig, 0x0A)
    page[2] |= 0x04
    assert select_page(rig, bytes(page)).status == Status.GOOD
    r = rig.run(read16(2**64 - 1, 1))
    assert r.sense[0] == 0x72
    expect_check(r, ILLEGAL, 0x21)
    page[2] &= ~0x04
    assert select_page(rig, bytes(page)).status == Status.GOOD
    assert rig.run(read16(2**64 - 1, 1)).sense[0] == 0x70


def test_swp_write_protects(rig: Rig) -> None:
    page = current_page(rig, 0x0A)
    page[4] |= 0x08
    assert select_page(rig, bytes(page)).status == Status.GOOD
    assert rig.good(mode_sense6(0x3F))[2] & 0x80  # WP
    assert rig.run(read10(0, 1)).status == Status.GOOD
    expect_check(rig.run(write10(0, 1), bytes(512)), SenseKey.DATA_PROTECT, 0x27)
    expect_check(rig.run(write_same16(0, 1, 0x08), bytes(512)), SenseKey.DATA_PROTECT, 0x27)
    p = unmap_params([(0, 1)])
    expect_check(rig.run(unmap_cdb(len(p)), p), SenseKey.DATA_PROTECT, 0x27)
    assert rig.run(bytes((0x35,)) + bytes(9)).status == Status.GOOD  # SYNCHRONIZE CACHE
    page[4] &= ~0x08
    assert select_page(rig, bytes(page)).status == Status.GOOD
    assert rig.run(write10(0, 1), bytes(512)).status == Status.GOOD


def test_read_only_unit() -> None:
    rig = make_rig(read_only=True)
    assert rig.good(mode_sense6(0x3F))[2] & 0x80
    expect_check(rig.run(write10(0, 1), bytes(512)), SenseKey.DATA_PROTECT, 0x27, 0x01)


@pytest.mark.parametrize("ten", [False, True])
def test_mode_select_without_page_format_is_accepted(rig: Rig, ten: bool) -> None:
    page = bytes(current_page(rig, 0x1C))
    if ten:
        params = bytes(8) + page
        cdb = bytearray(mode_select10(len(params)))
    else:
        params = bytes(4) + page
        cdb = bytearray(mode_select6(len(params)))
    cdb[1] = 0
    assert rig.run(bytes(cdb), params).status == Status.GOOD
