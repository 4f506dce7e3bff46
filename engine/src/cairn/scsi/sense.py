"""Sense data (SPC-4 4.5) and the exception that carries it out of a command handler."""

from __future__ import annotations

import struct

from .constants import (
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAMETER_LIST,
    LBA_OUT_OF_RANGE,
    PARAMETER_LIST_LENGTH_ERROR,
    Asc,
    SenseKey,
)


def field_pointer(byte: int, bit: int | None = None, *, in_cdb: bool = True) -> bytes:
    """The three SENSE KEY SPECIFIC bytes that point at the offending field."""
    first = 0x80  # SKSV
    if in_cdb:
        first |= 0x40  # C/D
    if bit is not None:
        first |= 0x08 | (bit & 0x07)  # BPV + BIT POINTER
    return bytes((first, (byte >> 8) & 0xFF, byte & 0xFF))


def build_sense(
    key: int,
    asc: Asc,
    *,
    descriptor: bool = False,
    information: int | None = None,
    sks: bytes | None = None,
) -> bytes:
    """Current sense data, fixed format (0x70) or descriptor format (0x72)."""
    code, qualifier = asc
    if descriptor:
        body = bytearray()
        if information is not None:
            body += b"\x00\x0a\x80\x00" + struct.pack(">Q", information & 0xFFFFFFFFFFFFFFFF)
        if sks is not None:
            body += b"\x02\x06\x00\x00" + sks + b"\x00"
        return bytes((0x72, key & 0x0F, code, qualifier, 0, 0, 0, len(body))) + bytes(body)
    sense = bytearray(18)
    sense[0] = 0x70
    sense[2] = key & 0x0F
    if information is not None and 0 <= information <= 0xFFFFFFFF:
        sense[0] |= 0x80  # VALID
        struct.pack_into(">I", sense, 3, information)
    sense[7] = 10
    sense[12] = code
    sense[13] = qualifier
    if sks is not None:
        sense[15:18] = sks
    return bytes(sense)


class ScsiError(Exception):
    """A command ends with CHECK CONDITION and this sense."""

    def __init__(
        self,
        key: int,
        asc: Asc,
        *,
        information: int | None = None,
        sks: bytes | None = None,
        message: str = "",
    ) -> None:
        super().__init__(message or f"sense key 0x{key:x} asc 0x{asc[0]:02x}/0x{asc[1]:02x}")
        self.key = key
        self.asc = asc
        self.information = information
        self.sks = sks


class ReservationConflict(Exception):
    """A command ends with RESERVATION CONFLICT status."""


def invalid_cdb(byte: int, bit: int | None = None) -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB, sks=field_pointer(byte, bit))


def invalid_param(byte: int, bit: int | None = None) -> ScsiError:
    return ScsiError(
        SenseKey.ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
        sks=field_pointer(byte, bit, in_cdb=False),
    )


def param_length_error() -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR)


def lba_out_of_range() -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE)
