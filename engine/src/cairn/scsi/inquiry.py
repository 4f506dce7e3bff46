"""INQUIRY data: the standard page and the vital product data pages (SPC-4 6.6, 7.8;
SBC-3 6.5)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .common import Nexus
from .constants import VERSION_ISCSI, VERSION_SAM5, VERSION_SBC3, VERSION_SPC4

PDT_DIRECT_ACCESS = 0x00
PDT_UNKNOWN = 0x1F

VPD_SUPPORTED_PAGES = 0x00
VPD_UNIT_SERIAL = 0x80
VPD_DEVICE_ID = 0x83
VPD_BLOCK_LIMITS = 0xB0
VPD_BLOCK_CHARACTERISTICS = 0xB1
VPD_LOGICAL_BLOCK_PROVISIONING = 0xB2

PROTOCOL_ISCSI = 0x5


def ascii_field(text: str, width: int) -> bytes:
    """Left-aligned, space-padded printable ASCII (SPC-4 4.4.1)."""
    raw = text.encode("ascii", "replace")[:width]
    raw = bytes(c if 0x20 <= c <= 0x7E else 0x20 for c in raw)
    return raw.ljust(width, b" ")


@dataclass(frozen=True, slots=True)
class BlockLimits:
    """What the Block Limits VPD page advertises, all in logical blocks."""

    max_transfer: int
    optimal_granularity: int
    optimal_transfer: int
    max_compare_and_write: int
    max_unmap_lbas: int
    max_unmap_descriptors: int
    unmap_granularity: int
    max_write_same: int


@dataclass(frozen=True, slots=True)
class Identity:
    vendor: str
    product: str
    revision: str
    serial: str
    naa: bytes


def standard_inquiry(
    identity: Identity, *, qualifier: int = 0, pdt: int = PDT_DIRECT_ACCESS, protect: bool = False
) -> bytes:
    data = bytearray(96)
    data[0] = ((qualifier & 0x7) << 5) | (pdt & 0x1F)
    data[1] = 0x00  # RMB = 0: the medium is not removable
    data[2] = 0x06  # SPC-4
    data[3] = 0x12  # HISUP, response data format 2
    data[4] = len(data) - 5
    data[5] = 0x01 if protect else 0x00
    data[6] = 0x00
    data[7] = 0x02  # CMDQUE
    data[8:16] = ascii_field(identity.vendor, 8)
    data[16:32] = ascii_field(identity.product, 16)
    data[32:36] = ascii_field(identity.revision, 4)
    for i, v in enumerate((VERSION_SAM5, VERSION_SPC4, VERSION_SBC3, VERSION_ISCSI)):
        struct.pack_into(">H", data, 58 + 2 * i, v)
    return bytes(data)


def supported_pages(pages: list[int]) -> bytes:
    return bytes((PDT_DIRECT_ACCESS, VPD_SUPPORTED_PAGES, 0, len(pages), *pages))


def unit_serial(identity: Identity) -> bytes:
    serial = ascii_field(identity.serial, len(identity.serial) or 1)[:251]
    return bytes((PDT_DIRECT_ACCESS, VPD_UNIT_SERIAL, 0, len(serial))) + serial


def _designator(
    code_set: int, assoc: int, dtype: int, value: bytes, *, piv: bool = False, protocol: int = 0
) -> bytes:
    first = ((protocol & 0xF) << 4) | (code_set & 0xF)
    second = (0x80 if piv else 0) | ((assoc & 0x3) << 4) | (dtype & 0xF)
    return bytes((first, second, 0, len(value))) + value


def _scsi_name(name: str) -> bytes:
    """A SCSI name string: UTF-8, null terminated, padded to a multiple of 4."""
    raw = name.encode("utf-8")[:251] + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def device_identification(identity: Identity, nexus: Nexus | None) -> bytes:
    body = bytearray()
    # NAA designator of the logical unit: binary, association LU, type 3.
    body += _designator(1, 0, 3, identity.naa)
    # T10 vendor ID designator: vendor + serial.
    body += _designator(
        2, 0, 1, ascii_field(identity.vendor, 8) + identity.serial.encode("ascii", "replace")[:240]
    )
    if nexus is not None:
        # Relative target port (association: target port).
        body += _designator(
            1,
            1,
            4,
            struct.pack(">xxH", nexus.relative_target_port & 0xFFFF),
            piv=True,
            protocol=PROTOCOL_ISCSI,
        )
        # The target port name ("iqn...,t,0x0001").
        body += _designator(
            3, 1, 8, _scsi_name(nexus.target_port), piv=True, protocol=PROTOCOL_ISCSI
        )
        # The SCSI target device name (the iSCSI target name).
        target_name = nexus.target_port.split(",t,", 1)[0]
        body += _designator(3, 2, 8, _scsi_name(target_name), piv=True, protocol=PROTOCOL_ISCSI)
    return struct.pack(">BBH", PDT_DIRECT_ACCESS, VPD_DEVICE_ID, len(body)) + bytes(body)


def block_limits(limits: BlockLimits) -> bytes:
    data = bytearray(64)
    data[1] = VPD_BLOCK_LIMITS
    struct.pack_into(">H", data, 2, len(data) - 4)
    data[4] = 0x01  # WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 is not supported
    data[5] = min(limits.max_compare_and_write, 0xFF)
    struct.pack_into(">H", data, 6, min(limits.optimal_granularity, 0xFFFF))
    struct.pack_into(">I", data, 8, min(limits.max_transfer, 0xFFFFFFFF))
    struct.pack_into(">I", data, 12, min(limits.optimal_transfer, 0xFFFFFFFF))
    struct.pack_into(">I", data, 16, 0)  # MAXIMUM PREFETCH LENGTH: no limit reported
    struct.pack_into(">I", data, 20, min(limits.max_unmap_lbas, 0xFFFFFFFF))
    struct.pack_into(">I", data, 24, min(limits.max_unmap_descriptors, 0xFFFFFFFF))
    struct.pack_into(">I", data, 28, min(limits.unmap_granularity, 0xFFFFFFFF))
    struct.pack_into(">I", data, 32, 0)  # UGAVALID = 0: no alignment requirement
    struct.pack_into(">Q", data, 36, limits.max_write_same)
    return bytes(data)


def block_device_characteristics() -> bytes:
    data = bytearray(64)
    data[1] = VPD_BLOCK_CHARACTERISTICS
    struct.pack_into(">H", data, 2, len(data) - 4)
    struct.pack_into(">H", data, 4, 0x0001)  # MEDIUM ROTATION RATE: non-rotating medium
    return bytes(data)


def logical_block_provisioning(*, thin: bool) -> bytes:
    data = bytearray(8)
    data[1] = VPD_LOGICAL_BLOCK_PROVISIONING
    struct.pack_into(">H", data, 2, len(data) - 4)
    if thin:
        data[5] = 0x80 | 0x40 | 0x20 | 0x04  # LBPU, LBPWS, LBPWS10, LBPRZ
        data[6] = 0x02  # PROVISIONING TYPE: thin
    return bytes(data)
