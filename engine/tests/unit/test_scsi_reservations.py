"""RESERVE/RELEASE and PERSISTENT RESERVE with two I_T nexuses."""

from __future__ import annotations

import struct

import pytest

from cairn.scsi import Nexus, ScsiResult, SenseKey, Status

from .test_scsi_support import (
    NEXUS_A,
    NEXUS_B,
    Rig,
    expect_check,
    inquiry,
    make_rig,
    mode_sense6,
    payload,
    pr_in,
    pr_out,
    pr_params,
    read10,
    rig_fixture,  # noqa: F401  (the ``rig`` fixture)
    tur,
    write10,
)

A, B = NEXUS_A, NEXUS_B
CONFLICT = Status.RESERVATION_CONFLICT
RESERVE6 = bytes((0x16, 0, 0, 0, 0, 0))
RELEASE6 = bytes((0x17, 0, 0, 0, 0, 0))
RESERVE10 = bytes((0x56,)) + bytes(9)
RELEASE10 = bytes((0x57,)) + bytes(9)
BLOCK = bytes(512)

REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_ABORT, REGISTER_IGNORE = range(7)
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 1, 3, 5, 6, 7, 8


# ---------------------------------------------------------------------- SPC-2
@pytest.mark.parametrize("reserve, release", [(RESERVE6, RELEASE6), (RESERVE10, RELEASE10)])
def test_reserve_release_two_initiators(rig: Rig, reserve: bytes, release: bytes) -> None:
    assert rig.run(reserve, nexus=A).status == Status.GOOD
    assert rig.run(reserve, nexus=A).status == Status.GOOD  # again: fine
    assert rig.run(reserve, nexus=B).status == CONFLICT
    assert rig.run(release, nexus=B).status == Status.GOOD  # not the holder: no effect
    assert rig.run(mode_sense6(0x3F), nexus=A).status == Status.GOOD
    assert rig.run(mode_sense6(0x3F), nexus=B).status == CONFLICT
    assert rig.run(tur(), nexus=B).status == CONFLICT
    assert rig.run(read10(0, 1), nexus=B).status == CONFLICT
    assert rig.run(write10(0, 1), BLOCK, nexus=B).status == CONFLICT
    assert rig.run(inquiry(), nexus=B).status == Status.GOOD
    assert rig.run(bytes((0x03, 0, 0, 0, 18, 0)), nexus=B).status == Status.GOOD
    assert rig.run(pr_in(0), nexus=B).status == CONFLICT
    assert rig.run(release, nexus=A).status == Status.GOOD
    assert rig.run(reserve, nexus=B).status == Status.GOOD
    assert rig.run(read10(0, 1), nexus=A).status == CONFLICT
    assert rig.run(release, nexus=B).status == Status.GOOD
    assert rig.run(read10(0, 1), nexus=A).status == Status.GOOD


def test_reserve_released_on_nexus_loss(rig: Rig) -> None:
    assert rig.run(RESERVE6, nexus=A).status == Status.GOOD
    rig.target.nexus_lost(A)
    assert rig.run(RESERVE6, nexus=B).status == Status.GOOD


@pytest.mark.parametrize("how", ["lun", "target"])
def test_reserve_released_on_reset(rig: Rig, how: str) -> None:
    assert rig.run(RESERVE6, nexus=A).status == Status.GOOD
    if how == "lun":
        rig.target.lun_reset(0, A)
    else:
        rig.target.target_reset(A)
    expect_check(
        rig.run(tur(), nexus=B), SenseKey.UNIT_ATTENTION, 0x29, 0x03 if how == "lun" else 0x00
    )
    assert rig.run(RESERVE6, nexus=B).status == Status.GOOD


def test_reserve_extent_and_third_party_are_invalid(rig: Rig) -> None:
    expect_check(rig.run(bytes((0x16, 1, 0, 0, 0, 0))), SenseKey.ILLEGAL_REQUEST, 0x24)
    expect_check(rig.run(bytes((0x56, 0x10)) + bytes(8)), SenseKey.ILLEGAL_REQUEST, 0x24)


def test_reserve_conflicts_with_registrations(rig: Rig) -> None:
    register(rig, A, 0x1111)
    assert rig.run(RESERVE6, nexus=A).status == CONFLICT
    assert rig.run(RELEASE6, nexus=B).status == CONFLICT


# ---------------------------------------------------------------------- PR helpers
def prout(
    rig: Rig,
    nexus: Nexus,
    sa: int,
    rkey: int = 0,
    sakey: int = 0,
    ptype: int = 0,
    flags: int = 0,
    scope: int = 0,
) -> ScsiResult:
    return rig.run(pr_out(sa, ptype, scope), pr_params(rkey, sakey, flags), nexus)


def register(rig: Rig, nexus: Nexus, key: int) -> None:
    r = prout(rig, nexus, REGISTER_IGNORE, sakey=key)
    assert r.status == Status.GOOD, r


def read_keys(rig: Rig, nexus: Nexus = A, alloc: int = 8192) -> tuple[int, list[int], bytes]:
    data = rig.good(pr_in(0, alloc), nexus=nexus)
    gen, length = struct.unpack_from(">II", data)
    keys = [
        struct.unpack_from(">Q", data, 8 + 8 * i)[0] for i in range(min(length, len(data) - 8) // 8)
    ]
    return gen, keys, data


def read_reservation(rig: Rig, nexus: Nexus = A) -> tuple[int, int] | None:
    data = rig.good(pr_in(1), nexus=nexus)
    if struct.unpack_from(">I", data, 4)[0] == 0:
        return None
    return struct.unpack_from(">Q", data, 8)[0], data[21] & 0x0F


def can_read(rig: Rig, nexus: Nexus) -> bool:
    status = rig.run(read10(1, 1), nexus=nexus).status
    assert status in (Status.GOOD, CONFLICT)
    return status == Status.GOOD


def can_write(rig: Rig, nexus: Nexus) -> bool:
    status = rig.run(write10(1, 1), BLOCK, nexus=nexus).status
    assert status in (Status.GOOD, CONFLICT)
    return status == Status.GOOD


# ---------------------------------------------------------------------- PR IN
def test_read_keys_empty_and_truncated(rig: Rig) -> None:
    gen, keys, data = read_keys(rig)
    assert keys == [] and len(data) == 8
    register(rig, A, 0xABCDEF)
    gen2, keys, _ = read_keys(rig)
    assert keys == [0xABCDEF] and gen2 == gen + 1
    data = rig.good(pr_in(0, 8))
    assert len(data) == 8 and struct.unpack_from(">I", data, 4)[0] == 8


def test_prin_service_actions(rig: Rig) -> None:
    for sa in range(4):
        assert rig.run(pr_in(sa)).status == Status.GOOD
    for sa in range(4, 0x20):
        expect_check(rig.run(pr_in(sa)), SenseKey.ILLEGAL_REQUEST, 0x24)


def test_report_capabilities(rig: Rig) -> None:
    data = rig.good(pr_in(2))
    length, flags, tmv, mask = struct.unpack_from(">HBBH", data)
    assert length == 8 and len(data) == 8
    assert tmv & 0x80 and (tmv >> 4) & 7 <= 5
    assert mask == 0xEA01
    assert flags & 0x0D == 0  # no SIP_C, ATP_C, PTPL_C


def test_read_full_status(rig: Rig) -> None:
    register(rig, A, 0x10)
    register(rig, B, 0x20)
    assert prout(rig, A, RESERVE, 0x10, ptype=WE).status == Status.GOOD
    data = rig.good(pr_in(3))
    gen, length = struct.unpack_from(">II", data)
    assert length == len(data) - 8
    pos = 8
    seen = {}
    while pos < len(data):
        key, flags, scope_type, rtp, tid_len = struct.unpack_from(">Q4xBB4xHI", data, pos)
        tid = data[pos + 24 : pos + 24 + tid_len]
        assert tid[0] == 0x45 and tid_len % 4 == 0
        name = tid[4:].rstrip(b"\0").decode()
        seen[name] = (key, flags & 1, scope_type & 0x0F, rtp)
        pos += 24 + tid_len
    assert seen == {A.initiator_port: (0x10, 1, WE, 1), B.initiator_port: (0x20, 0, 0, 1)}


# ---------------------------------------------------------------------- PR OUT
def test_register_unregister_and_reregister(rig: Rig) -> None:
    assert prout(rig, A, REGISTER, rkey=5, sakey=1).status == CONFLICT  # not registered
    assert prout(rig, A, REGISTER, sakey=0).status == Status.GOOD  # no-op
    gen0 = read_keys(rig)[0]
    assert prout(rig, A, REGISTER, sakey=0x77).status == Status.GOOD
    assert read_keys(rig)[1] == [0x77]
    assert prout(rig, A, REGISTER, rkey=0, sakey=0x78).status == CONFLICT  # wrong key
    assert prout(rig, A, REGISTER, rkey=0x77, sakey=0x78).status == Status.GOOD
    assert read_keys(rig)[1] == [0x78]
    assert prout(rig, A, REGISTER, rkey=0x78, sakey=0).status == Status.GOOD
    gen, keys, _ = read_keys(rig)
    assert keys == [] and gen == gen0 + 3


def test_register_and_ignore(rig: Rig) -> None:
    register(rig, A, 1)
    register(rig, A, 2)
    assert read_keys(rig)[1] == [2]
    register(rig, A, 0)
    assert read_keys(rig)[1] == []


def test_prout_parameter_checks(rig: Rig) -> None:
    r = rig.run(pr_out(REGISTER, plen=20), pr_params(0, 1)[:20], A)
    expect_check(r, SenseKey.ILLEGAL_REQUEST, 0x1A)
    for flag in (0x08, 0x04, 0x01):  # SPEC_I_PT, ALL_TG_PT, APTPL
        expect_check(prout(rig, A, REGISTER, sakey=1, flags=flag), SenseKey.ILLEGAL_REQUEST, 0x26)
    expect_check(prout(rig, A, 7, sakey=1), SenseKey.ILLEGAL_REQUEST, 0x24)
    register(rig, A, 9)
    expect_check(prout(rig, A, RESERVE, 9, ptype=2), SenseKey.ILLEGAL_REQUEST, 0x24)
    expect_check(prout(rig, A, RESERVE, 9, ptype=WE, scope=1), SenseKey.ILLEGAL_REQUEST, 0x24)
    assert prout(rig, B, RESERVE, 9, ptype=WE).status == CONFLICT  # B is not registered
    assert prout(rig, A, RESERVE, 8, ptype=WE).status == CONFLICT  # wrong key


@pytest.mark.parametrize("ptype", [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR])
def test_reserve_and_release_each_type(rig: Rig, ptype: int) -> None:
    register(rig, A, 0x42)
    gen = read_keys(rig)[0]
    assert prout(rig, A, RESERVE, 0x42, ptype=ptype).status == Status.GOOD
    all_registrants = ptype in (WE_AR, EA_AR)
    assert read_reservation(rig) == (0 if all_registrants else 0x42, ptype)
    assert prout(rig, A, RESERVE, 0x42, ptype=ptype).status == Status.GOOD
    other = WE if ptype != WE else EA
    assert prout(rig, A, RESERVE, 0x42, ptype=other).status == CONFLICT
    expect_check(prout(rig, A, RELEASE, 0x42, ptype=other), SenseKey.ILLEGAL_REQUEST, 0x26, 0x04)
    assert prout(rig, A, RELEASE, 0x42, ptype=ptype).status == Status.GOOD
    assert read_reservation(rig) is None
    assert read_keys(rig)[0] == gen  # RESERVE and RELEASE do not bump the generation


# (type, registered B reads, registered B writes, unregistered B reads, unregistered B writes)
ACCESS = [
    (EA, False, False, False, False),
    (WE, True, False, True, False),
    (EA_RO, True, True, False, False),
    (WE_RO, True, True, True, False),
    (EA_AR, True, True, False, False),
    (WE_AR, True, True, True, False),
]


@pytest.mark.parametrize("ptype, reg_read, reg_write, unreg_read, unreg_write", ACCESS)
def test_access_by_type(
    rig: Rig, ptype: int, reg_read: bool, reg_write: bool, unreg_read: bool, unreg_write: bool
) -> None:
    register(rig, A, 0x1)
    register(rig, B, 0x2)
    assert prout(rig, A, RESERVE, 0x1, ptype=ptype).status == Status.GOOD
    assert can_read(rig, A) and can_write(rig, A)
    assert can_read(rig, B) == reg_read
    assert can_write(rig, B) == reg_write
    assert prout(rig, B, REGISTER, rkey=0x2, sakey=0).status == Status.GOOD
    assert can_read(rig, B) == unreg_read
    assert can_write(rig, B) == unreg_write
    # commands that never conflict
    for cdb in (inquiry(), tur(), bytes((0x25,)) + bytes(9), pr_in(0)):
        assert rig.run(cdb, nexus=B).status == Status.GOOD
    assert prout(rig, A, RELEASE, 0x1, ptype=ptype).status == Status.GOOD
    assert can_read(rig, B) and can_write(rig, B)


@pytest.mark.parametrize(
    "ptype, shared",
    [(EA, False), (WE, False), (EA_RO, False), (WE_RO, False), (EA_AR, True), (WE_AR, True)],
)
def test_ownership_when_holder_unregisters(rig: Rig, ptype: int, shared: bool) -> None:
    register(rig, A, 0x1)
    register(rig, B, 0x2)
    assert prout(rig, A, RESERVE, 0x1, ptype=ptype).status == Status.GOOD
    assert prout(rig, A, REGISTER, rkey=0x1, sakey=0).status == Status.GOOD
    if shared:
        assert read_reservation(rig) == (0, ptype)
        assert prout(rig, B, RELEASE, 0x2, ptype=ptype).status == Status.GOOD
    assert read_reservation(rig) is None
    if ptype in (WE_RO, EA_RO):
        expect_check(rig.run(tur(), nexus=B), SenseKey.UNIT_ATTENTION, 0x2A, 0x04)


def test_all_registrants_reservation_ends_with_last_registrant(rig: Rig) -> None:
    register(rig, A, 1)
    register(rig, B, 2)
    assert prout(rig, A, RESERVE, 1, ptype=WE_AR).status == Status.GOOD
    register(rig, A, 0)
    assert read_reservation(rig) == (0, WE_AR)
    register(rig, B, 0)
    assert read_reservation(rig) is None


def test_clear(rig: Rig) -> None:
    register(rig, A, 0x1)
    register(rig, B, 0x2)
    gen = read_keys(rig)[0]
    assert prout(rig, A, RESERVE, 0x1, ptype=EA).status == Status.GOOD
    assert prout(rig, B, CLEAR, 0x3).status == CONFLICT  # wrong key
    assert prout(rig, A, CLEAR, 0x1).status == Status.GOOD
    assert read_reservation(rig) is None
    gen2, keys, _ = read_keys(rig)
    assert keys == [] and gen2 == gen + 1
    expect_check(rig.run(tur(), nexus=B), SenseKey.UNIT_ATTENTION, 0x2A, 0x03)


def test_preempt_removes_registration_without_reservation(rig: Rig) -> None:
    register(rig, A, 0x1)
    register(rig, B, 0x2)
    gen = read_keys(rig)[0]
    assert prout(rig, B, PREEMPT, 0x2, sakey=0x1, ptype=EA).status == Status.GOOD
    expect_check(rig.run(tur(), nexus=A), SenseKey.UNIT_ATTENTION, 0x2A, 0x05)
    assert rig.run(tur(), nexus=A).status == Status.GOOD
    gen2, keys, _ = read_keys(rig)
    assert keys == [0x2] and gen2 == gen + 1
    assert read_reservation(rig) is None
    assert prout(rig, B, PREEMPT, 0x2, sakey=0x99, ptype=EA).status == CONFLICT
    expect_check(prout(rig, B, PREEMPT, 0x2, sakey=0, ptype=EA), SenseKey.ILLEGAL_REQUEST, 0x26)


@pytest.mark.parametrize("sa", [PREEMPT, PREEMPT_ABORT])
def test_preempt_takes_over_reservation(rig: Rig, sa: int) -> None:
    register(rig, A, 0x1)
    register(rig, B, 0x2)
    assert prout(rig, A, RESERVE, 0x1, ptype=EA).status == Status.GOOD
    assert can_read(rig, B) is False
    assert prout(rig, B, sa, 0x2, sakey=0x1, ptype=WE).status == Status.GOOD
    assert read_reservation(rig, B) == (0x2, WE)
    assert read_keys(rig, B)[1] == [0x2]
    assert can_write(rig, B)
    expect_check(rig.run(tur(), nexus=A), SenseKey.UNIT_ATTENTION, 0x2A, 0x05)
    assert can_read(rig, A) and not can_write(rig, A)


def test_preempt_all_registrants(rig: Rig) -> None:
    register(rig, A, 0x1)
    register(rig, B, 0x2)
    assert prout(rig, A, RESERVE, 0x1, ptype=EA_AR).status == Status.GOOD
    # a named key under an all-registrants reservation removes only that registration
    assert prout(rig, B, PREEMPT, 0x2, sakey=0x1, ptype=0).status == Status.GOOD
    assert read_keys(rig, B)[1] == [0x2]
    assert read_reservation(rig, B) == (0, EA_AR)
    expect_check(rig.run(tur(), nexus=A), SenseKey.UNIT_ATTENTION, 0x2A, 0x05)
    register(rig, A, 0x1)
    # key 0 preempts everybody else and the reservation
    assert prout(rig, B, PREEMPT, 0x2, sakey=0, ptype=WE).status == Status.GOOD
    assert read_keys(rig, B)[1] == [0x2]
    assert read_reservation(rig, B) == (0x2, WE)


def test_registrations_survive_nexus_loss_and_reset(rig: Rig) -> None:
    register(rig, A, 0x5)
    assert prout(rig, A, RESERVE, 0x5, ptype=WE).status == Status.GOOD
    rig.target.nexus_lost(A)
    rig.target.lun_reset(0, B)
    expect_check(rig.run(tur(), nexus=B), SenseKey.UNIT_ATTENTION, 0x29, 0x03)
    assert read_keys(rig, B)[1] == [0x5]
    assert read_reservation(rig, B) == (0x5, WE)
    assert rig.run(write10(0, 1), BLOCK, nexus=B).status == CONFLICT


def test_persistent_reserve_out_with_spc2_reservation_elsewhere(rig: Rig) -> None:
    assert rig.run(RESERVE6, nexus=A).status == Status.GOOD
    assert prout(rig, B, REGISTER_IGNORE, sakey=1).status == CONFLICT
    assert rig.run(RELEASE6, nexus=A).status == Status.GOOD


def test_generation_wraps_and_is_per_unit() -> None:
    rig = make_rig()
    rig.lu.reservations.generation = 0xFFFFFFFF
    register(rig, A, 1)
    assert read_keys(rig)[0] == 0
    other = make_rig()
    assert read_keys(other)[0] == 0
    assert payload(other.run(pr_in(1)))[:8] == bytes(8)
