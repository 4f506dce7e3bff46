"""Whatever the CDB, the data-out and the order of commands, ``execute`` returns a
``ScsiResult`` and never fails inside (no HARDWARE ERROR from a bug)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn.scsi import Nexus, ScsiResult, SenseKey, Status
from cairn.scsi.opcodes import ALL_COMMANDS

from .test_scsi_support import NEXUS_A, NEXUS_B, make_rig, sense_of

SERVED = sorted({c.opcode for c in ALL_COMMANDS})
STATUSES = {Status.GOOD, Status.CHECK_CONDITION, Status.RESERVATION_CONFLICT}
NB = 64

opcodes = st.one_of(st.sampled_from(SERVED), st.integers(0, 255))
nexuses = st.sampled_from([NEXUS_A, NEXUS_B])
data_outs = st.one_of(
    st.none(),
    st.binary(max_size=3 * 512),
    st.integers(0, 6).map(lambda n: bytes([0xA5]) * (n * 512)),
)


@st.composite
def random_cdbs(draw: st.DrawFn) -> bytes:
    op = draw(opcodes)
    rest = draw(st.binary(min_size=0, max_size=31))
    return bytes((op,)) + rest


@st.composite
def shaped_cdbs(draw: st.DrawFn) -> bytes:
    """CDBs of the right size whose numbers land near the edges of the device."""
    info = draw(st.sampled_from(ALL_COMMANDS))
    cdb = bytearray(draw(st.binary(min_size=info.cdb_length, max_size=info.cdb_length)))
    cdb[0] = info.opcode
    if info.service_action is not None and draw(st.booleans()):
        cdb[1] = (cdb[1] & 0xE0) | info.service_action
    small = st.one_of(st.integers(0, NB + 2), st.sampled_from([0xFFFF, 0xFFFFFFFF]))
    lba = draw(small)
    count = draw(st.integers(0, 70))
    if info.cdb_length == 10 and draw(st.booleans()):
        struct.pack_into(">I", cdb, 2, lba & 0xFFFFFFFF)
        struct.pack_into(">H", cdb, 7, count)
    elif info.cdb_length == 16 and draw(st.booleans()):
        struct.pack_into(">Q", cdb, 2, lba)
        struct.pack_into(">I", cdb, 10, count)
    elif info.cdb_length == 12 and draw(st.booleans()):
        struct.pack_into(">I", cdb, 2, lba & 0xFFFFFFFF)
        struct.pack_into(">I", cdb, 6, count)
    if draw(st.booleans()):
        cdb[1] &= 0x1F  # no protection fields, so deeper paths run
    return bytes(cdb)


@st.composite
def pr_out_params(draw: st.DrawFn) -> bytes:
    rkey = draw(st.sampled_from([0, 1, 2, 0xFFFFFFFFFFFFFFFF]))
    sakey = draw(st.sampled_from([0, 1, 2, 3]))
    flags = draw(st.sampled_from([0, 0, 0, 1, 4, 8]))
    return struct.pack(">QQ4xBxH", rkey, sakey, flags, 0)


def check(result: ScsiResult) -> None:
    assert isinstance(result, ScsiResult)
    assert result.status in STATUSES, result
    if result.status == Status.CHECK_CONDITION:
        assert result.sense
        assert sense_of(result)[0] != SenseKey.HARDWARE_ERROR, result
    else:
        assert result.sense == b""
    if result.data is not None and not isinstance(result.data, list):
        assert isinstance(result.data, (bytes, bytearray, memoryview))


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cdb=random_cdbs(), data=data_outs, nexus=nexuses, lun=st.sampled_from([0, 0, 1]))
def test_random_cdbs(cdb: bytes, data: bytes | None, nexus: Nexus, lun: int) -> None:
    rig = make_rig(NB)
    try:
        check(rig.target.execute(lun, cdb, data, nexus))
        rig.target.data_out_length(lun, cdb)
    finally:
        rig.device.close()


@SETTINGS
@given(cdb=shaped_cdbs(), data=data_outs, nexus=nexuses)
def test_shaped_cdbs(cdb: bytes, data: bytes | None, nexus: Nexus) -> None:
    rig = make_rig(NB)
    try:
        check(rig.target.execute(0, cdb, data, nexus))
    finally:
        rig.device.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(
            st.one_of(
                shaped_cdbs(),
                st.builds(
                    lambda sa, t: struct.pack(">BBBxxIB", 0x5F, sa, t, 24, 0),
                    st.integers(0, 8),
                    st.integers(0, 9),
                ),
            ),
            st.one_of(data_outs, pr_out_params()),
            nexuses,
            st.sampled_from(["run", "run", "run", "lost", "lun_reset", "target_reset"]),
        ),
        max_size=25,
    )
)
def test_command_sequences(steps: list[tuple[bytes, bytes | None, Nexus, str]]) -> None:
    rig = make_rig(NB, 4096 if len(steps) % 2 else 512)
    try:
        for cdb, data, nexus, action in steps:
            if action == "lost":
                rig.target.nexus_lost(nexus)
            elif action == "lun_reset":
                rig.target.lun_reset(0, nexus)
            elif action == "target_reset":
                rig.target.target_reset(nexus)
            check(rig.target.execute(0, cdb, data, nexus))
        res = rig.lu.reservations
        assert res.pr_type is None or res.pr_holder is None or res.pr_holder in res.registrations
    finally:
        rig.device.close()


@SETTINGS
@given(data=st.binary(max_size=300), ten=st.booleans(), plen=st.integers(0, 300))
def test_random_mode_select(data: bytes, ten: bool, plen: int) -> None:
    rig = make_rig(NB)
    try:
        if ten:
            cdb = struct.pack(">BBxxxxxHB", 0x55, 0x10, plen, 0)
        else:
            cdb = struct.pack(">BBxxBB", 0x15, 0x10, plen & 0xFF, 0)
        check(rig.target.execute(0, cdb, data, NEXUS_A))
        # mode pages stay well-formed whatever was accepted
        r = rig.target.execute(0, struct.pack(">BBBBBB", 0x1A, 0, 0x3F, 0, 255, 0), None, NEXUS_A)
        assert r.status == Status.GOOD
    finally:
        rig.device.close()


@SETTINGS
@given(
    descs=st.lists(st.tuples(st.integers(0, NB + 2), st.integers(0, NB + 2)), max_size=8),
    bddl_delta=st.integers(-20, 20),
    plen_delta=st.integers(-20, 20),
)
def test_random_unmap_lists(descs: list[tuple[int, int]], bddl_delta: int, plen_delta: int) -> None:
    rig = make_rig(NB)
    try:
        body = b"".join(struct.pack(">QI4x", lba, n) for lba, n in descs)
        params = struct.pack(">HH4x", max(0, len(body) + 6), max(0, len(body) + bddl_delta)) + body
        plen = max(0, len(params) + plen_delta)
        r = rig.target.execute(0, struct.pack(">BxxxxxxHB", 0x42, plen, 0), params, NEXUS_A)
        check(r)
        if r.status == Status.GOOD and plen >= len(params) and bddl_delta == 0:
            for lba, n in descs:
                assert all(rig.device.mapped[i] == 0 for i in range(lba, lba + n))
    finally:
        rig.device.close()
