"""iSCSI PDU layout (RFC 7143, section 11): constants, parsing and building.

A PDU is a 48-byte Basic Header Segment (BHS), optional Additional Header Segments,
an optional header digest, a data segment padded to 4 bytes and an optional data
digest.  This module only knows bytes; the state machines live in ``login`` and
``connection``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import crc32c as _crc32c

BHS_LEN = 48
RESERVED_TAG = 0xFFFFFFFF


class Op(IntEnum):
    # initiator opcodes
    NOP_OUT = 0x00
    SCSI_CMD = 0x01
    TASK_MGMT_REQ = 0x02
    LOGIN_REQ = 0x03
    TEXT_REQ = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQ = 0x06
    SNACK_REQ = 0x10
    # target opcodes
    NOP_IN = 0x20
    SCSI_RSP = 0x21
    TASK_MGMT_RSP = 0x22
    LOGIN_RSP = 0x23
    TEXT_RSP = 0x24
    DATA_IN = 0x25
    LOGOUT_RSP = 0x26
    R2T = 0x31
    ASYNC_MSG = 0x32
    REJECT = 0x3F


INITIATOR_OPCODES = frozenset(
    {
        Op.NOP_OUT,
        Op.SCSI_CMD,
        Op.TASK_MGMT_REQ,
        Op.LOGIN_REQ,
        Op.TEXT_REQ,
        Op.DATA_OUT,
        Op.LOGOUT_REQ,
        Op.SNACK_REQ,
    }
)


class RejectReason(IntEnum):
    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OP_REJECT = 0x0A
    WAITING_FOR_LOGOUT = 0x0C


class TmfFunction(IntEnum):
    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(IntEnum):
    COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class LoginStatus(IntEnum):
    SUCCESS = 0x0000
    INITIATOR_ERROR = 0x0200
    AUTH_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302


class Stage(IntEnum):
    SECURITY = 0
    OPERATIONAL = 1
    FULL_FEATURE = 3


class PduError(Exception):
    """A PDU that cannot be parsed; the connection must be closed."""


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    return _crc32c.crc32c(data, value)


def pad_len(n: int) -> int:
    return (-n) & 3


_HDR = struct.Struct(">BBBBB3s8sI28s")
_U32 = struct.Struct(">I")


@dataclass(slots=True)
class Pdu:
    """A parsed PDU.  ``bhs`` is the raw 48-byte header (for field access with
    struct and for echoing in a Reject); ``data`` the data segment without padding."""

    opcode: int
    immediate: bool
    flags: int
    bhs: bytes
    ahs: bytes
    data: memoryview

    @property
    def itt(self) -> int:
        return _U32.unpack_from(self.bhs, 16)[0]

    def u32(self, offset: int) -> int:
        return _U32.unpack_from(self.bhs, offset)[0]

    @property
    def lun(self) -> int:
        return decode_lun(self.bhs[8:16])


def decode_lun(raw: bytes) -> int:
    """The LUN of an 8-byte SAM LUN field (peripheral and flat addressing)."""
    method = raw[0] >> 6
    if method in (0, 1):
        return ((raw[0] & 0x3F) << 8) | raw[1]
    return 0xFFFF  # an addressing method we do not serve: no such LUN


def encode_lun(lun: int) -> bytes:
    if lun < 256:
        return bytes((0, lun, 0, 0, 0, 0, 0, 0))
    return bytes((0x40 | (lun >> 8), lun & 0xFF, 0, 0, 0, 0, 0, 0))


def header_lengths(bhs: bytes | memoryview) -> tuple[int, int]:
    """(AHS length in bytes, data segment length) from a BHS."""
    ahs = bhs[4] * 4
    dsl = (bhs[5] << 16) | (bhs[6] << 8) | bhs[7]
    return ahs, dsl


def build_bhs(
    opcode: int,
    flags: int = 0,
    b2: int = 0,
    b3: int = 0,
    dsl: int = 0,
    lun_or_isid: bytes = bytes(8),
    itt: int = RESERVED_TAG,
    rest: bytes = bytes(28),
) -> bytes:
    """A 48-byte BHS.  ``rest`` is bytes 20..47."""
    return _HDR.pack(opcode, flags, b2, b3, 0, dsl.to_bytes(3, "big"), lun_or_isid, itt, rest)


def frame(
    bhs: bytes,
    data: bytes | memoryview = b"",
    header_digest: bool = False,
    data_digest: bool = False,
) -> list[bytes | memoryview]:
    """The buffers of one PDU on the wire (BHS with the DSL already set)."""
    parts: list[bytes | memoryview] = [bhs]
    if header_digest:
        parts.append(crc32c(bhs).to_bytes(4, "little"))
    if data:
        parts.append(data)
        pad = pad_len(len(data))
        if pad:
            parts.append(bytes(pad))
        if data_digest:
            d = crc32c(data)
            if pad:
                d = crc32c(bytes(pad), d)
            parts.append(d.to_bytes(4, "little"))
    return parts
