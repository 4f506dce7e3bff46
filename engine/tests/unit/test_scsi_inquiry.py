"""INQUIRY (standard and VPD), READ CAPACITY, REPORT LUNS and LUNs that do not exist."""

from __future__ import annotations

import struct

import pytest

from cairn.scsi import LogicalUnit, ScsiTarget, SenseKey, Status

from .test_scsi_support import (
    NAA,
    NEXUS_A,
    MemDevice,
    Rig,
    expect_check,
    field_pointer_of,
    inquiry,
    make_rig,
    payload,
    read_capacity16,
    rig_fixture,  # noqa: F401  (the ``rig`` fixture)
)


def test_standard_inquiry(rig: Rig) -> None:
    data = rig.good(inquiry(alloc=260))
    assert len(data) == 96
    assert data[0] == 0x00  # connected direct-access device
    assert data[1] & 0x80 == 0  # not removable
    assert data[2] == 0x06  # SPC-4
    assert data[3] & 0x0F == 2
    assert data[4] == len(data) - 5
    assert data[7] & 0x02  # CMDQUE
    assert data[8:16] == b"CAIRN   "
    assert data[16:32] == b"VOLUME          "
    assert data[32:36] == b"0001"
    versions = struct.unpack_from(">8H", data, 58)
    assert {0x0460, 0x04C0, 0x0960} <= set(versions)


@pytest.mark.parametrize("alloc", [0, 1, 5, 36, 95, 255, 256])
def test_inquiry_allocation_length_truncates(rig: Rig, alloc: int) -> None:
    full = rig.good(inquiry(alloc=260))
    assert rig.good(inquiry(alloc=alloc)) == full[:alloc]


def test_inquiry_page_code_without_evpd_is_invalid(rig: Rig) -> None:
    r = rig.run(inquiry(evpd=0, page=1))
    expect_check(r, SenseKey.ILLEGAL_REQUEST, 0x24)
    assert field_pointer_of(r) == 2


def test_inquiry_cmddt_and_unknown_page(rig: Rig) -> None:
    expect_check(rig.run(inquiry(evpd=2)), SenseKey.ILLEGAL_REQUEST, 0x24)
    expect_check(rig.run(inquiry(evpd=1, page=0x99)), SenseKey.ILLEGAL_REQUEST, 0x24)


def test_supported_vpd_pages_all_readable(rig: Rig) -> None:
    data = rig.good(inquiry(1, 0x00))
    pages = list(data[4 : 4 + data[3]])
    assert pages == sorted(pages)
    assert {0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2} == set(pages)
    for page in pages:
        vpd = rig.good(inquiry(1, page))
        assert vpd[1] == page
        assert struct.unpack_from(">H", vpd, 2)[0] == len(vpd) - 4


def test_unit_serial(rig: Rig) -> None:
    data = rig.good(inquiry(1, 0x80))
    assert data[4 : 4 + data[3]] == b"0123456789abcdef"


def designators(data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    out = []
    pos = 4
    while pos < len(data):
        proto_code, piv_assoc_type, _, length = data[pos : pos + 4]
        out.append(
            (
                proto_code >> 4,
                proto_code & 0xF,
                (piv_assoc_type >> 4) & 0x3,
                piv_assoc_type & 0xF,
                data[pos + 4 : pos + 4 + length],
            )
        )
        pos += 4 + length
    return out


def test_device_identification(rig: Rig) -> None:
    data = rig.good(inquiry(1, 0x83))
    ds = designators(data)
    # NAA, binary, LU association
    assert (0, 1, 0, 3, NAA) in ds
    # T10 vendor id
    t10 = [d for d in ds if d[3] == 1]
    assert t10 and t10[0][4].startswith(b"CAIRN   ")
    # relative target port 1, iSCSI protocol, target port association
    assert (5, 1, 1, 4, b"\x00\x00\x00\x01") in ds
    names = [d[4].rstrip(b"\0") for d in ds if d[3] == 8]
    assert b"iqn.2026-11.org.cairn:vol1,t,0x0001" in names
    assert b"iqn.2026-11.org.cairn:vol1" in names
    for d in ds:
        if d[3] == 8:
            assert len(d[4]) % 4 == 0 and d[4].endswith(b"\0")


def test_block_limits(rig: Rig) -> None:
    data = rig.good(inquiry(1, 0xB0, alloc=64))
    assert len(data) == 64 and data[3] == 0x3C
    assert data[4] & 0x01  # WSNZ
    max_caw = data[5]
    assert 1 <= max_caw <= 255
    max_xfer, opt_xfer = struct.unpack_from(">II", data, 8)
    assert max_xfer >= 2048 and opt_xfer >= 1
    max_unmap, max_desc, gran = struct.unpack_from(">III", data, 20)
    assert 1 <= max_unmap <= 1024 * 1024
    assert 256 <= max_desc <= 1024 * 1024
    assert gran >= 1
    assert struct.unpack_from(">Q", data, 36)[0] >= 256  # MAXIMUM WRITE SAME LENGTH
    assert data[44:64] == bytes(20)  # no atomic writes


def test_block_device_characteristics(rig: Rig) -> None:
    data = rig.good(inquiry(1, 0xB1))
    assert struct.unpack_from(">H", data, 4)[0] == 1  # non-rotating
    assert data[7] & 0xF0 == 0  # no WABEREQ/WACEREQ


def test_logical_block_provisioning_thin(rig: Rig) -> None:
    data = rig.good(inquiry(1, 0xB2))
    assert data[5] & 0xE0 == 0xE0  # LBPU, LBPWS, LBPWS10
    assert data[5] & 0x04  # LBPRZ
    assert data[5] & 0x02 == 0  # no anchor support
    assert data[6] & 0x07 == 2  # thin


def test_thick_unit_has_no_provisioning_page_and_no_unmap() -> None:
    rig = make_rig(thin=False)
    pages = rig.good(inquiry(1, 0))
    assert 0xB2 not in pages[4:]
    expect_check(rig.run(inquiry(1, 0xB2)), SenseKey.ILLEGAL_REQUEST, 0x24)
    rc = rig.good(read_capacity16())
    assert rc[14] & 0xC0 == 0
    bl = rig.good(inquiry(1, 0xB0))
    assert struct.unpack_from(">II", bl, 20) == (0, 0)


def test_read_capacity10_and_16(rig: Rig) -> None:
    data = rig.good(struct.pack(">BxIxxxB", 0x25, 0, 0) + b"")
    assert struct.unpack(">II", data) == (2047, 512)
    data = rig.good(read_capacity16())
    last, bs, prot, exp, lbp = struct.unpack_from(">QIBBH", data)
    assert (last, bs, prot, exp & 0x0F) == (2047, 512, 0, 0)
    assert lbp & 0x8000 and lbp & 0x4000  # LBPME, LBPRZ


@pytest.mark.parametrize("alloc", range(0, 33, 4))
def test_read_capacity16_allocation_length(rig: Rig, alloc: int) -> None:
    full = rig.good(read_capacity16())
    assert rig.good(read_capacity16(alloc)) == full[:alloc]


def test_read_capacity10_lba_without_pmi_is_invalid(rig: Rig) -> None:
    r = rig.run(struct.pack(">BxIxxxB", 0x25, 5, 0))
    expect_check(r, SenseKey.ILLEGAL_REQUEST, 0x24)
    assert rig.run(struct.pack(">BxIxxBB", 0x25, 5, 1, 0)).status == Status.GOOD


def test_read_capacity10_caps_large_devices() -> None:
    dev = MemDevice(16, 4096)
    lu = LogicalUnit(dev, serial="x1", naa=NAA)
    lu.num_blocks = 1 << 33
    target = ScsiTarget({0: lu})
    target.execute(0, bytes(6), None, NEXUS_A)
    r = target.execute(0, struct.pack(">BxIxxxB", 0x25, 0, 0), None, NEXUS_A)
    assert struct.unpack(">II", payload(r)) == (0xFFFFFFFF, 4096)


def test_4096_byte_blocks() -> None:
    rig = make_rig(64, 4096)
    data = rig.good(read_capacity16())
    assert struct.unpack_from(">QI", data) == (63, 4096)
    bl = rig.good(inquiry(1, 0xB0))
    assert struct.unpack_from(">H", bl, 6)[0] == 1  # optimal granularity: one block


def report_luns(select: int = 0, alloc: int = 4096) -> bytes:
    return struct.pack(">BxBxxxIxx", 0xA0, select, alloc)


def test_report_luns_any_lun() -> None:
    dev = MemDevice(16)
    lus = {
        0: LogicalUnit(dev, serial="a", naa=NAA),
        3: LogicalUnit(dev, serial="b", naa=NAA),
        300: LogicalUnit(dev, serial="c", naa=NAA),
    }
    target = ScsiTarget(lus)
    for lun in (0, 3, 7):
        r = target.execute(lun, report_luns(), None, NEXUS_A)
        assert r.status == Status.GOOD
        data = payload(r)
        assert struct.unpack_from(">I", data)[0] == 24
        assert data[8:16] == bytes(8)
        assert data[16:24] == bytes((0, 3)) + bytes(6)
        assert data[24:32] == bytes((0x41, 300 & 0xFF)) + bytes(6)
    assert payload(target.execute(0, report_luns(1), None, NEXUS_A))[:4] == bytes(4)
    r = target.execute(0, report_luns(alloc=8), None, NEXUS_A)
    expect_check(r, SenseKey.ILLEGAL_REQUEST, 0x24)
    r = target.execute(0, report_luns(select=7), None, NEXUS_A)
    expect_check(r, SenseKey.ILLEGAL_REQUEST, 0x24)


def test_missing_lun() -> None:
    target = ScsiTarget({0: LogicalUnit(MemDevice(16), serial="a", naa=NAA)})
    r = target.execute(5, inquiry(), None, NEXUS_A)
    assert r.status == Status.GOOD
    data = payload(r)
    assert data[0] == 0x7F  # PQ 011b, PDT 1Fh
    expect_check(target.execute(5, bytes(6), None, NEXUS_A), SenseKey.ILLEGAL_REQUEST, 0x25)
    r = target.execute(5, bytes((0x03, 0, 0, 0, 18, 0)), None, NEXUS_A)
    assert r.status == Status.GOOD and payload(r)[12] == 0x25
    assert not target.has_lun(5) and target.has_lun(0)
    assert target.data_out_length(5, bytes(16)) is None
    assert target.data_out_length(5, bytes((0x2A,)) + bytes(9)) is None


def test_constructor_validation() -> None:
    dev = MemDevice(16)
    with pytest.raises(ValueError):
        LogicalUnit(dev, serial="a", naa=b"123")
    with pytest.raises(ValueError):
        LogicalUnit(dev, serial="", naa=NAA)
    with pytest.raises(ValueError):
        ScsiTarget({20000: LogicalUnit(dev, serial="a", naa=NAA)})
    with pytest.raises(ValueError):
        LogicalUnit(MemDevice(16, 520), serial="a", naa=NAA)
