"""Block commands: READ, WRITE, WRITE AND VERIFY, VERIFY, COMPARE AND WRITE, WRITE SAME,
UNMAP, GET LBA STATUS, SYNCHRONIZE CACHE, PRE-FETCH, READ DEFECT DATA, and device
errors turned into sense."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from cairn.blockdev import Extent, MediumError, NoSpaceError, StoreError
from cairn.scsi import SenseKey, Status

from .test_scsi_support import (
    Rig,
    caw,
    expect_check,
    field_pointer_of,
    get_lba_status,
    information_of,
    make_rig,
    payload,
    read6,
    read10,
    read16,
    rig_fixture,  # noqa: F401  (the ``rig`` fixture)
    rw10,
    rw12,
    rw16,
    unmap_cdb,
    unmap_params,
    write6,
    write10,
    write16,
    write_same10,
    write_same16,
)

ILLEGAL = SenseKey.ILLEGAL_REQUEST
Make = Callable[..., bytes]
BS = 512
NB = 2048


def blocks(n: int, fill: int = 0xA5) -> bytes:
    return bytes([fill]) * (n * BS)


# ---------------------------------------------------------------------- READ / WRITE
@pytest.mark.parametrize(
    "read_op, write_op, make", [(0x28, 0x2A, rw10), (0xA8, 0xAA, rw12), (0x88, 0x8A, rw16)]
)
def test_write_then_read(rig: Rig, read_op: int, write_op: int, make: Make) -> None:
    data = bytes(range(256)) * 2 * 3
    r = rig.run(make(write_op, 10, 3), data)
    assert r.status == Status.GOOD and not r.flush
    assert rig.good(make(read_op, 10, 3)) == data
    assert rig.device.writes[-1] == (10, 3)


def test_read_returns_extents_zero_copy(rig: Rig) -> None:
    rig.good(write10(4, 2), blocks(2))
    r = rig.run(read10(3, 4))
    assert isinstance(r.data, list) and all(isinstance(e, Extent) for e in r.data)
    assert sum(e.length for e in r.data) == 4 * BS
    assert [e.fd is None for e in r.data] == [True, False, True]


def test_read6_write6_and_zero_means_256(rig: Rig) -> None:
    rig.good(write6(0, 1), blocks(1, 7))
    assert rig.good(read6(0, 1)) == blocks(1, 7)
    r = rig.run(read6(0, 0))
    assert r.status == Status.GOOD and len(payload(r)) == 256 * BS
    expect_check(rig.run(read6(NB - 1, 2)), ILLEGAL, 0x21)


def test_zero_length_transfers(rig: Rig) -> None:
    assert rig.good(read10(0, 0)) == b""
    assert rig.run(write10(0, 0)).status == Status.GOOD
    assert rig.run(read16(NB, 0)).status == Status.GOOD
    expect_check(rig.run(read10(NB + 1, 0)), ILLEGAL, 0x21)
    expect_check(rig.run(write10(0xFFFFFFFF, 0)), ILLEGAL, 0x21)


@pytest.mark.parametrize("lba, n", [(NB, 1), (NB - 1, 2), (0x80000000, 1), (0xFFFFFFFF, 1)])
def test_beyond_end(rig: Rig, lba: int, n: int) -> None:
    expect_check(rig.run(read10(lba, n)), ILLEGAL, 0x21)
    expect_check(rig.run(write10(lba, n), blocks(n)), ILLEGAL, 0x21)
    expect_check(rig.run(rw12(0xAF, lba, n)), ILLEGAL, 0x21)


def test_beyond_end_16_byte_lbas(rig: Rig) -> None:
    for lba in (2**63, 2**64 - 1):
        expect_check(rig.run(read16(lba, 1)), ILLEGAL, 0x21)
        expect_check(rig.run(write16(lba, 1), blocks(1)), ILLEGAL, 0x21)


@pytest.mark.parametrize(
    "op, make",
    [
        (0x28, rw10),
        (0xA8, rw12),
        (0x88, rw16),
        (0x2A, rw10),
        (0xAA, rw12),
        (0x8A, rw16),
        (0x2E, rw10),
        (0xAE, rw12),
        (0x8E, rw16),
        (0x2F, rw10),
        (0xAF, rw12),
        (0x8F, rw16),
    ],
)
@pytest.mark.parametrize("protect", range(1, 8))
def test_protection_fields_are_invalid(rig: Rig, op: int, make: Make, protect: int) -> None:
    r = rig.run(make(op, 0, 1, protect << 5), blocks(1))
    expect_check(r, ILLEGAL, 0x24)
    assert field_pointer_of(r) == 1


def test_dpo_fua_accepted_and_fua_flushes(rig: Rig) -> None:
    assert rig.run(read10(0, 1, 0x18)).status == Status.GOOD
    r = rig.run(write10(0, 1, 0x10), blocks(1))
    assert r.status == Status.GOOD and not r.flush
    r = rig.run(write10(0, 1, 0x08), blocks(1))
    assert r.status == Status.GOOD and r.flush
    r = rig.run(write16(0, 1, 0x18), blocks(1))
    assert r.flush


def test_transfer_length_over_the_limit(rig: Rig) -> None:
    limit = rig.lu.max_transfer
    r = rig.run(read16(0, limit + 1))
    expect_check(r, ILLEGAL, 0x24)
    assert field_pointer_of(r) == 10


def test_write_with_less_data_than_the_cdb_asks_writes_whole_blocks(rig: Rig) -> None:
    rig.good(write10(0, 2), blocks(2, 0x61))
    r = rig.run(write10(0, 2), blocks(1, 0x62))
    assert r.status == Status.GOOD
    assert rig.good(read10(0, 2)) == blocks(1, 0x62) + blocks(1, 0x61)
    assert rig.run(write10(0, 1), b"x" * 200).status == Status.GOOD  # nothing written
    assert rig.run(write10(0, 1), None).status == Status.GOOD
    assert rig.good(read10(0, 1)) == blocks(1, 0x62)


def test_write_with_more_data_than_the_cdb_asks_writes_the_transfer_length(rig: Rig) -> None:
    rig.good(write10(0, 2), blocks(2, 0x61))
    assert rig.run(write10(0, 1), blocks(2, 0x62)).status == Status.GOOD
    assert rig.good(read10(0, 2)) == blocks(1, 0x62) + blocks(1, 0x61)


def test_write_cache_disabled_flushes_every_write() -> None:
    rig = make_rig(write_cache=False)
    assert rig.run(write10(0, 1), blocks(1)).flush


# ---------------------------------------------------------------------- WRITE AND VERIFY
@pytest.mark.parametrize("op, make", [(0x2E, rw10), (0xAE, rw12), (0x8E, rw16)])
def test_write_and_verify(rig: Rig, op: int, make: Make) -> None:
    r = rig.run(make(op, 5, 2, 0x12), blocks(2, 3))  # DPO, BYTCHK
    assert r.status == Status.GOOD and r.flush
    assert rig.good(read10(5, 2)) == blocks(2, 3)
    assert rig.run(make(op, 0, 0)).status == Status.GOOD
    expect_check(rig.run(make(op, NB, 1), blocks(1)), ILLEGAL, 0x21)


# ---------------------------------------------------------------------- VERIFY
@pytest.mark.parametrize("make, op", [(rw10, 0x2F), (rw12, 0xAF), (rw16, 0x8F)])
def test_verify(rig: Rig, make: Make, op: int) -> None:
    data = bytes(range(256)) * 8
    rig.good(write10(100, 4), data)
    assert rig.run(make(op, 100, 4, 0x02), data).status == Status.GOOD
    bad = bytearray(data)
    bad[1234] ^= 0xFF
    r = rig.run(make(op, 100, 4, 0x02), bytes(bad))
    expect_check(r, SenseKey.MISCOMPARE, 0x1D)
    assert information_of(r) == 1234
    # BYTCHK 0: no comparison at all
    assert rig.run(make(op, 100, 4, 0x00)).status == Status.GOOD
    assert rig.run(make(op, 100, 4, 0x10)).status == Status.GOOD  # DPO
    # BYTCHK 10b is reserved
    expect_check(rig.run(make(op, 100, 4, 0x04), data), ILLEGAL, 0x24)
    # BYTCHK 11b: one block compared with each block
    rig.good(write10(200, 3), blocks(3, 9))
    assert rig.run(make(op, 200, 3, 0x06), blocks(1, 9)).status == Status.GOOD
    r = rig.run(make(op, 199, 3, 0x06), blocks(1, 9))
    expect_check(r, SenseKey.MISCOMPARE, 0x1D)
    assert information_of(r) == 0
    assert rig.run(make(op, 0, 0, 0x02)).status == Status.GOOD


def test_verify_miscompare_descriptor_sense(rig: Rig) -> None:
    rig.lu.modes.pages[0x0A].current[2] |= 0x04
    rig.lu._refresh_mode_state()
    r = rig.run(rw10(0x2F, 0, 1, 0x02), blocks(1, 1))
    assert r.sense[0] == 0x72
    expect_check(r, SenseKey.MISCOMPARE, 0x1D)
    assert information_of(r) == 0


# ---------------------------------------------------------------------- COMPARE AND WRITE
def test_compare_and_write(rig: Rig) -> None:
    rig.good(write16(7, 2), blocks(2, 0x41))
    r = rig.run(caw(7, 2), blocks(2, 0x41) + blocks(2, 0x42))
    assert r.status == Status.GOOD and not r.flush
    assert rig.good(read16(7, 2)) == blocks(2, 0x42)
    r = rig.run(caw(7, 1, 0x18), blocks(1, 0x42) + blocks(1, 0x43))  # DPO, FUA
    assert r.status == Status.GOOD and r.flush


def test_compare_and_write_miscompare_leaves_data(rig: Rig) -> None:
    rig.good(write16(0, 4), blocks(4, 0x41))
    expected = bytearray(blocks(4, 0x41))
    expected[4 * BS - 27] = 0x43
    r = rig.run(caw(0, 4), bytes(expected) + blocks(4, 0x42))
    expect_check(r, SenseKey.MISCOMPARE, 0x1D)
    assert information_of(r) == 4 * BS - 27
    assert rig.good(read16(0, 4)) == blocks(4, 0x41)


def test_compare_and_write_limits_and_sizes(rig: Rig) -> None:
    limit = rig.lu.max_compare_and_write
    assert limit == 255
    expect_check(rig.run(caw(NB - 1, 2), blocks(4)), ILLEGAL, 0x21)
    # data-out must be exactly verify + write data
    expect_check(rig.run(caw(0, 1), blocks(4)), ILLEGAL, 0x24)
    expect_check(rig.run(caw(0, 3), blocks(4)), ILLEGAL, 0x24)
    expect_check(rig.run(caw(0, 1), None), ILLEGAL, 0x24)
    # 256 blocks do not fit the one-byte field: 0 with data is a mismatch, without is a no-op
    expect_check(rig.run(caw(0, 0), blocks(512)), ILLEGAL, 0x24)
    assert rig.run(caw(0, 0)).status == Status.GOOD
    rig.lu.max_compare_and_write = 4
    expect_check(rig.run(caw(0, 5), blocks(10)), ILLEGAL, 0x24)


def test_compare_and_write_unwritten_blocks_miscompare(rig: Rig) -> None:
    r = rig.run(caw(3, 1), blocks(1, 0x25) + blocks(1, 0x42))
    expect_check(r, SenseKey.MISCOMPARE, 0x1D)
    assert rig.good(read16(3, 1)) == bytes(BS)


# ---------------------------------------------------------------------- WRITE SAME
@pytest.mark.parametrize("make", [write_same10, write_same16])
def test_write_same_pattern(rig: Rig, make: Make) -> None:
    pattern = bytes(range(256)) * 2
    assert rig.run(make(10, 300), pattern).status == Status.GOOD
    assert rig.good(read16(10, 300)) == pattern * 300
    assert rig.good(read16(9, 1)) == bytes(BS)
    assert rig.good(read16(310, 1)) == bytes(BS)


@pytest.mark.parametrize("make", [write_same10, write_same16])
def test_write_same_unmap(rig: Rig, make: Make) -> None:
    rig.good(write16(NB - 256, 256), blocks(256, 0xFF))
    assert rig.run(make(NB - 256, 256, 0x08), blocks(1, 0)).status == Status.GOOD
    assert rig.good(read16(NB - 256, 256)) == bytes(256 * BS)
    assert rig.device.unmaps[-1] == (NB - 256, 256)


@pytest.mark.parametrize("make", [write_same10, write_same16])
def test_write_same_unmap_with_a_pattern_writes_it(rig: Rig, make: Make) -> None:
    unmaps = len(rig.device.unmaps)
    assert rig.run(make(16, 8, 0x08), blocks(1, 0xA5)).status == Status.GOOD
    assert rig.good(read16(16, 8)) == blocks(8, 0xA5)
    assert len(rig.device.unmaps) == unmaps


@pytest.mark.parametrize("make", [write_same10, write_same16])
def test_write_same_invalid(rig: Rig, make: Make) -> None:
    blk = blocks(1)
    expect_check(rig.run(make(0, 0), blk), ILLEGAL, 0x24)  # WSNZ
    expect_check(rig.run(make(0, 1, 0x10), blk), ILLEGAL, 0x24)  # ANCHOR
    expect_check(rig.run(make(0, 1, 0x18), blk), ILLEGAL, 0x24)  # ANCHOR + UNMAP
    expect_check(rig.run(make(0, 1, 0x20), blk), ILLEGAL, 0x24)  # WRPROTECT
    expect_check(rig.run(make(0, 1, 0x04), blk), ILLEGAL, 0x24)  # PBDATA
    expect_check(rig.run(make(0, 1, 0x02), blk), ILLEGAL, 0x24)  # LBDATA
    expect_check(rig.run(make(NB + 1, 0), blk), ILLEGAL, 0x24)
    expect_check(rig.run(make(NB, 1), blk), ILLEGAL, 0x21)
    expect_check(rig.run(make(0xFFFFFFFF, 1), blk), ILLEGAL, 0x21)
    rig.lu.max_write_same = 100
    expect_check(rig.run(make(0, 101), blk), ILLEGAL, 0x24)
    # the data-out must be exactly one block
    expect_check(rig.run(make(0, 1, 0x08), blk[:256]), ILLEGAL, 0x24)
    expect_check(rig.run(make(0, 1, 0x08), blk * 2), ILLEGAL, 0x24)
    expect_check(rig.run(make(0, 1)), ILLEGAL, 0x24)


def test_write_same16_ndob(rig: Rig) -> None:
    rig.good(write16(0, 4), blocks(4))
    assert rig.run(write_same16(0, 4, 0x01)).status == Status.GOOD
    assert rig.good(read16(0, 4)) == bytes(4 * BS)
    assert rig.device.mapped[0] == 1  # written with zeros, not unmapped
    assert rig.run(write_same16(0, 4, 0x09)).status == Status.GOOD
    assert rig.device.mapped[0] == 0


def test_write_same_unmap_on_thick_unit_is_invalid() -> None:
    rig = make_rig(thin=False)
    expect_check(rig.run(write_same10(0, 1, 0x08), blocks(1)), ILLEGAL, 0x24)


# ---------------------------------------------------------------------- UNMAP
def test_unmap(rig: Rig) -> None:
    rig.good(write10(0, 256), blocks(256))
    params = unmap_params([(0, 10), (20, 5), (NB - 1, 1), (NB, 0)])
    assert rig.run(unmap_cdb(len(params)), params).status == Status.GOOD
    data = rig.good(read10(0, 30))
    assert data[: 10 * BS] == bytes(10 * BS)
    assert data[10 * BS : 20 * BS] == blocks(10)
    assert data[20 * BS : 25 * BS] == bytes(5 * BS)
    assert rig.device.unmaps == [(0, 10), (20, 5), (NB - 1, 1)]


def test_unmap_empty_lists(rig: Rig) -> None:
    assert rig.run(unmap_cdb(0)).status == Status.GOOD
    p = unmap_params([])
    assert rig.run(unmap_cdb(len(p)), p).status == Status.GOOD
    p = unmap_params([(i, 0) for i in range(256)])
    assert rig.run(unmap_cdb(len(p)), p).status == Status.GOOD
    assert rig.device.unmaps == []


def test_unmap_errors(rig: Rig) -> None:
    p = unmap_params([(0, 1)])
    expect_check(rig.run(unmap_cdb(len(p), anchor=True), p), ILLEGAL, 0x24)
    expect_check(rig.run(unmap_cdb(4), p), ILLEGAL, 0x1A)
    expect_check(rig.run(unmap_cdb(24), p[:6]), ILLEGAL, 0x1A)
    bad = unmap_params([(0, 1), (NB, 1)])
    expect_check(rig.run(unmap_cdb(len(bad)), bad), ILLEGAL, 0x21)
    assert rig.device.unmaps == []  # nothing done when one descriptor is bad
    many = unmap_params([(0, 1)] * (rig.lu.max_unmap_descriptors + 1))
    expect_check(rig.run(unmap_cdb(len(many)), many), ILLEGAL, 0x26)
    big = unmap_params([(0, NB)] * (rig.lu.max_unmap_lbas // NB + 1))
    expect_check(rig.run(unmap_cdb(len(big)), big), ILLEGAL, 0x26)


def test_unmap_not_served_on_thick_unit() -> None:
    rig = make_rig(thin=False)
    p = unmap_params([(0, 1)])
    expect_check(rig.run(unmap_cdb(len(p)), p), ILLEGAL, 0x20)


# ---------------------------------------------------------------------- GET LBA STATUS
def lba_status_descriptors(data: bytes) -> list[tuple[int, int, int]]:
    n = (struct.unpack_from(">I", data)[0] - 4) // 16
    return [
        struct.unpack_from(">QIB", data, 8 + 16 * i)
        for i in range(n)
        if 8 + 16 * i + 13 <= len(data)
    ]


def test_get_lba_status(rig: Rig) -> None:
    rig.good(write10(10, 5), blocks(5))
    data = rig.good(get_lba_status(0, 8 + 16 * 4))
    assert lba_status_descriptors(data) == [(0, 10, 1), (10, 5, 0), (15, NB - 15, 1)]
    data = rig.good(get_lba_status(12, 24))
    assert lba_status_descriptors(data) == [(12, 3, 0)]
    data = rig.good(get_lba_status(NB - 1, 24))
    assert lba_status_descriptors(data) == [(NB - 1, 1, 1)]
    assert len(rig.good(get_lba_status(0, 4))) == 4


@pytest.mark.parametrize("lba", [NB, NB + 1, 2**63, 2**64 - 1])
def test_get_lba_status_beyond_end(rig: Rig, lba: int) -> None:
    expect_check(rig.run(get_lba_status(lba)), ILLEGAL, 0x21)


def test_get_lba_status_thick_reports_mapped() -> None:
    rig = make_rig(thin=False)
    assert lba_status_descriptors(rig.good(get_lba_status(5))) == [(5, NB - 5, 0)]


# ---------------------------------------------------------------------- cache, prefetch, defects
@pytest.mark.parametrize("make, op", [(rw10, 0x35), (rw16, 0x91)])
def test_synchronize_cache(rig: Rig, make: Make, op: int) -> None:
    r = rig.run(make(op, 0, 0, 0x02))
    assert r.status == Status.GOOD and r.flush
    assert rig.run(make(op, 0, NB)).flush
    expect_check(rig.run(make(op, NB, 0)), ILLEGAL, 0x21)
    expect_check(rig.run(make(op, NB - 1, 2)), ILLEGAL, 0x21)


@pytest.mark.parametrize("make, op", [(rw10, 0x34), (rw16, 0x90)])
def test_pre_fetch(rig: Rig, make: Make, op: int) -> None:
    r = rig.run(make(op, 0, 1, 0x02))
    assert r.status == Status.GOOD and not r.flush
    assert rig.run(make(op, 0, 0)).status == Status.GOOD
    for lba, n in ((NB + 1, 0), (NB + 1 - 5, 5), (NB - 1, 2), (0xFFFFFFFF, 1)):
        expect_check(rig.run(make(op, lba, n)), ILLEGAL, 0x21)


def test_read_defect_data(rig: Rig) -> None:
    data = rig.good(struct.pack(">BxBxxxxHB", 0x37, 0x18, 32, 0))
    assert data == bytes((0, 0x18, 0, 0))
    data = rig.good(struct.pack(">BBIIBB", 0xB7, 0x00, 0, 32, 0, 0))
    assert data == bytes(8)


# ---------------------------------------------------------------------- device errors
@pytest.mark.parametrize(
    "error, key, asc",
    [
        (NoSpaceError("full"), SenseKey.DATA_PROTECT, (0x27, 0x07)),
        (MediumError("eio"), SenseKey.MEDIUM_ERROR, (0x0C, 0x00)),
        (StoreError("lost"), SenseKey.HARDWARE_ERROR, (0x44, 0x00)),
        (RuntimeError("bug"), SenseKey.HARDWARE_ERROR, (0x44, 0x00)),
    ],
)
def test_device_errors_on_write(rig: Rig, error: Exception, key: int, asc: tuple[int, int]) -> None:
    rig.device.fail = error
    expect_check(rig.run(write10(0, 1), blocks(1)), key, *asc)
    expect_check(rig.run(write_same16(0, 2), blocks(1)), key, *asc)


def test_medium_error_on_read(rig: Rig) -> None:
    rig.device.fail = MediumError("eio")
    expect_check(rig.run(read10(0, 1)), SenseKey.MEDIUM_ERROR, 0x11)
    expect_check(rig.run(get_lba_status(0)), SenseKey.MEDIUM_ERROR, 0x11)
