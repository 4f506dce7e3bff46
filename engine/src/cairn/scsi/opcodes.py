"""The commands a logical unit serves: CDB sizes, service actions, CDB usage data.

The table drives REPORT SUPPORTED OPERATION CODES; the dispatcher in ``lun.py`` checks
that every entry here has a handler and vice versa.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import MaintIn, Op, PrIn, PrOut, SaIn16
from .sense import invalid_cdb


@dataclass(frozen=True, slots=True)
class CommandInfo:
    opcode: int
    service_action: int | None
    usage: bytes  # CDB USAGE DATA (SPC-4 6.35.3); its length is the CDB length

    @property
    def cdb_length(self) -> int:
        return len(self.usage)


def _u(*b: int) -> bytes:
    return bytes(b)


_LBA8 = (0xFF,) * 8
_LEN4 = (0xFF,) * 4

# (opcode, service action or None, usage data).  Byte 0 of the usage data is the
# opcode; for commands with service actions byte 1 carries the service action bits.
_TABLE: list[tuple[int, int | None, bytes]] = [
    (Op.TEST_UNIT_READY, None, _u(0x00, 0, 0, 0, 0, 0)),
    (Op.REQUEST_SENSE, None, _u(0x03, 0x01, 0, 0, 0xFF, 0)),
    (Op.READ_6, None, _u(0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0)),
    (Op.WRITE_6, None, _u(0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0)),
    (Op.INQUIRY, None, _u(0x12, 0x01, 0xFF, 0xFF, 0xFF, 0)),
    (Op.MODE_SELECT_6, None, _u(0x15, 0x11, 0, 0, 0xFF, 0)),
    (Op.RESERVE_6, None, _u(0x16, 0, 0, 0, 0, 0)),
    (Op.RELEASE_6, None, _u(0x17, 0, 0, 0, 0, 0)),
    (Op.MODE_SENSE_6, None, _u(0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0)),
    (Op.START_STOP_UNIT, None, _u(0x1B, 0x01, 0, 0x0F, 0xF7, 0)),
    (Op.PREVENT_ALLOW, None, _u(0x1E, 0, 0, 0, 0x03, 0)),
    (Op.READ_CAPACITY_10, None, _u(0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0)),
    (Op.READ_10, None, _u(0x28, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0)),
    (Op.WRITE_10, None, _u(0x2A, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0)),
    (Op.WRITE_VERIFY_10, None, _u(0x2E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0)),
    (Op.VERIFY_10, None, _u(0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0)),
    (Op.PRE_FETCH_10, None, _u(0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0)),
    (Op.SYNCHRONIZE_CACHE_10, None, _u(0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0)),
    (Op.READ_DEFECT_DATA_10, None, _u(0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0)),
    (Op.WRITE_SAME_10, None, _u(0x41, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0)),
    (Op.UNMAP, None, _u(0x42, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0)),
    (Op.MODE_SELECT_10, None, _u(0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0)),
    (Op.RESERVE_10, None, _u(0x56, 0x12, 0, 0, 0, 0, 0, 0, 0, 0)),
    (Op.RELEASE_10, None, _u(0x57, 0x12, 0, 0, 0, 0, 0, 0, 0, 0)),
    (Op.MODE_SENSE_10, None, _u(0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0)),
    *[
        (Op.PERSISTENT_RESERVE_IN, int(sa), _u(0x5E, int(sa), 0, 0, 0, 0, 0, 0xFF, 0xFF, 0))
        for sa in PrIn
    ],
    *[
        (
            Op.PERSISTENT_RESERVE_OUT,
            int(sa),
            _u(0x5F, int(sa), 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0),
        )
        for sa in PrOut
        if sa is not PrOut.REGISTER_AND_MOVE
    ],
    (Op.READ_16, None, _u(0x88, 0xFA, *_LBA8, *_LEN4, 0, 0)),
    (Op.COMPARE_AND_WRITE, None, _u(0x89, 0xFA, *_LBA8, 0, 0, 0, 0xFF, 0, 0)),
    (Op.WRITE_16, None, _u(0x8A, 0xFA, *_LBA8, *_LEN4, 0, 0)),
    (Op.WRITE_VERIFY_16, None, _u(0x8E, 0xF2, *_LBA8, *_LEN4, 0, 0)),
    (Op.VERIFY_16, None, _u(0x8F, 0xF6, *_LBA8, *_LEN4, 0, 0)),
    (Op.PRE_FETCH_16, None, _u(0x90, 0x02, *_LBA8, *_LEN4, 0, 0)),
    (Op.SYNCHRONIZE_CACHE_16, None, _u(0x91, 0x02, *_LBA8, *_LEN4, 0, 0)),
    (Op.WRITE_SAME_16, None, _u(0x93, 0xFF, *_LBA8, *_LEN4, 0, 0)),
    (
        Op.SERVICE_ACTION_IN_16,
        int(SaIn16.READ_CAPACITY_16),
        _u(0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, *_LEN4, 0, 0),
    ),
    (Op.SERVICE_ACTION_IN_16, int(SaIn16.GET_LBA_STATUS), _u(0x9E, 0x12, *_LBA8, *_LEN4, 0, 0)),
    (Op.REPORT_LUNS, None, _u(0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0)),
    (
        Op.MAINTENANCE_IN,
        int(MaintIn.REPORT_SUPPORTED_OPCODES),
        _u(0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, *_LEN4, 0, 0),
    ),
    (Op.READ_12, None, _u(0xA8, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, *_LEN4, 0, 0)),
    (Op.WRITE_12, None, _u(0xAA, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, *_LEN4, 0, 0)),
    (Op.WRITE_VERIFY_12, None, _u(0xAE, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, *_LEN4, 0, 0)),
    (Op.VERIFY_12, None, _u(0xAF, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, *_LEN4, 0, 0)),
    (Op.READ_DEFECT_DATA_12, None, _u(0xB7, 0x1F, *_LEN4, *_LEN4, 0, 0)),
]

ALL_COMMANDS: tuple[CommandInfo, ...] = tuple(
    CommandInfo(int(op), sa, usage) for op, sa, usage in _TABLE
)

# Opcodes that are split by service action.
SERVICE_ACTION_OPCODES = frozenset(c.opcode for c in ALL_COMMANDS if c.service_action is not None)

# Used when a thin-provisioning-only command is left out of a thick logical unit.
THIN_ONLY = frozenset({int(Op.UNMAP)})

# Nominal and recommended command timeouts reported with RCTD, in seconds.
NOMINAL_TIMEOUT = 0
RECOMMENDED_TIMEOUT = 60

_TIMEOUT_DESCRIPTOR = struct.pack(">HxBII", 0x0A, 0, NOMINAL_TIMEOUT, RECOMMENDED_TIMEOUT)


def report_supported_opcodes(commands: tuple[CommandInfo, ...], cdb: bytes) -> bytes:
    """The parameter data of REPORT SUPPORTED OPERATION CODES (SPC-4 6.35)."""
    rctd = bool(cdb[2] & 0x80)
    options = cdb[2] & 0x07
    req_op = cdb[3]
    req_sa = (cdb[4] << 8) | cdb[5]
    if options == 0:
        out = bytearray(4)
        for c in commands:
            sa = c.service_action
            flags = (0x02 if rctd else 0) | (0x01 if sa is not None else 0)
            out += struct.pack(">BxHxBH", c.opcode, sa or 0, flags, c.cdb_length)
            if rctd:
                out += _TIMEOUT_DESCRIPTOR
        struct.pack_into(">I", out, 0, len(out) - 4)
        return bytes(out)
    if options not in (1, 2, 3):
        raise invalid_cdb(2, 2)
    has_sa = req_op in SERVICE_ACTION_OPCODES
    if options == 1 and has_sa:
        raise invalid_cdb(2, 2)
    if options == 2 and not has_sa:
        raise invalid_cdb(3)
    if options == 2 or (options == 3 and has_sa):
        match = next(
            (c for c in commands if c.opcode == req_op and c.service_action == req_sa), None
        )
    else:
        match = next((c for c in commands if c.opcode == req_op), None)
    if match is None:
        return bytes((0, 0x01, 0, 0))  # SUPPORT = 001b: not supported
    out = bytearray((0, (0x80 if rctd else 0) | 0x03))
    out += struct.pack(">H", match.cdb_length)
    out += match.usage
    if rctd:
        out += _TIMEOUT_DESCRIPTOR
    return bytes(out)
