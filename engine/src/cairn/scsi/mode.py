"""Mode pages (SPC-4 7.5, SBC-3 6.4): MODE SENSE data and MODE SELECT validation.

Pages served: Read-Write Error Recovery (0x01), Caching (0x08), Control (0x0A) and
Informational Exceptions Control (0x1C).  Changeable: WCE in Caching, D_SENSE and SWP
in Control.  Nothing is saveable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import SAVING_PARAMETERS_NOT_SUPPORTED, SenseKey
from .sense import ScsiError, invalid_cdb, invalid_param, param_length_error

PAGE_RW_ERROR_RECOVERY = 0x01
PAGE_CACHING = 0x08
PAGE_CONTROL = 0x0A
PAGE_INFORMATIONAL_EXCEPTIONS = 0x1C
PAGE_ALL = 0x3F

PC_CURRENT = 0
PC_CHANGEABLE = 1
PC_DEFAULT = 2
PC_SAVED = 3

# Bits of the pages that MODE SELECT may change.
CACHING_WCE = 0x04  # byte 2
CONTROL_D_SENSE = 0x04  # byte 2
CONTROL_SWP = 0x08  # byte 4

DSP_WP = 0x80
DSP_DPOFUA = 0x10


@dataclass
class ModePage:
    code: int
    current: bytearray
    default: bytes
    changeable: bytes

    @classmethod
    def make(cls, code: int, default: bytes, changeable: bytes) -> ModePage:
        assert len(default) == len(changeable) and default[0] == code
        assert default[1] == len(default) - 2
        return cls(code, bytearray(default), bytes(default), bytes(changeable))

    def values(self, pc: int) -> bytes:
        if pc == PC_CHANGEABLE:
            return self.changeable
        if pc == PC_DEFAULT:
            return self.default
        return bytes(self.current)


def _page(code: int, length: int, **bits: int) -> bytes:
    data = bytearray(length + 2)
    data[0] = code
    data[1] = length
    for key, value in bits.items():
        data[int(key[1:])] = value
    return bytes(data)


class ModePages:
    """The mode parameters of one logical unit."""

    def __init__(self, *, write_cache: bool) -> None:
        control_default = bytearray(_page(PAGE_CONTROL, 0x0A))
        control_default[3] = 0x10  # QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
        struct.pack_into(">H", control_default, 8, 0xFFFF)  # BUSY TIMEOUT PERIOD: unlimited
        self.pages: dict[int, ModePage] = {
            PAGE_RW_ERROR_RECOVERY: ModePage.make(
                PAGE_RW_ERROR_RECOVERY,
                _page(PAGE_RW_ERROR_RECOVERY, 0x0A),
                _page(PAGE_RW_ERROR_RECOVERY, 0x0A),
            ),
            PAGE_CACHING: ModePage.make(
                PAGE_CACHING,
                _page(PAGE_CACHING, 0x12, b2=CACHING_WCE if write_cache else 0),
                _page(PAGE_CACHING, 0x12, b2=CACHING_WCE),
            ),
            PAGE_CONTROL: ModePage.make(
                PAGE_CONTROL,
                bytes(control_default),
                _page(PAGE_CONTROL, 0x0A, b2=CONTROL_D_SENSE, b4=CONTROL_SWP),
            ),
            PAGE_INFORMATIONAL_EXCEPTIONS: ModePage.make(
                PAGE_INFORMATIONAL_EXCEPTIONS,
                _page(PAGE_INFORMATIONAL_EXCEPTIONS, 0x0A),
                _page(PAGE_INFORMATIONAL_EXCEPTIONS, 0x0A),
            ),
        }

    # The bits other layers act on.
    @property
    def wce(self) -> bool:
        return bool(self.pages[PAGE_CACHING].current[2] & CACHING_WCE)

    @property
    def d_sense(self) -> bool:
        return bool(self.pages[PAGE_CONTROL].current[2] & CONTROL_D_SENSE)

    @property
    def swp(self) -> bool:
        return bool(self.pages[PAGE_CONTROL].current[4] & CONTROL_SWP)

    def sense(
        self, cdb: bytes, *, ten: bool, block_size: int, num_blocks: int, write_protected: bool
    ) -> bytes:
        """The full MODE SENSE(6)/(10) parameter data (before allocation-length trimming)."""
        dbd = bool(cdb[1] & 0x08)
        llbaa = ten and bool(cdb[1] & 0x10)
        pc = cdb[2] >> 6
        code = cdb[2] & 0x3F
        subpage = cdb[3]
        if pc == PC_SAVED:
            raise ScsiError(SenseKey.ILLEGAL_REQUEST, SAVING_PARAMETERS_NOT_SUPPORTED)
        if code == PAGE_ALL:
            if subpage not in (0x00, 0xFF):
                raise invalid_cdb(3)
            body = b"".join(p.values(pc) for _, p in sorted(self.pages.items()))
        else:
            page = self.pages.get(code)
            if page is None:
                raise invalid_cdb(2, 5)
            if subpage not in (0x00, 0xFF):
                raise invalid_cdb(3)
            body = page.values(pc)
        if dbd:
            desc = b""
        elif llbaa:
            desc = struct.pack(">QxxxxI", num_blocks, block_size)
        else:
            desc = struct.pack(">II", min(num_blocks, 0xFFFFFFFF), block_size & 0xFFFFFF)
        dsp = DSP_DPOFUA | (DSP_WP if write_protected else 0)
        if ten:
            length = 6 + len(desc) + len(body)
            header = struct.pack(
                ">HBBBxH", min(length, 0xFFFF), 0, dsp, 1 if llbaa else 0, len(desc)
            )
        else:
            length = 3 + len(desc) + len(body)
            header = struct.pack(">BBBB", min(length, 0xFF), 0, dsp, len(desc))
        return header + desc + body

    def select(self, params: bytes, *, ten: bool, block_size: int, num_blocks: int) -> list[int]:
        """Validate and apply MODE SELECT parameter data; return the pages changed."""
        hdr_len = 8 if ten else 4
        if len(params) < hdr_len:
            raise param_length_error()
        if ten:
            long_lba = bool(params[4] & 0x01)
            bdl = struct.unpack_from(">H", params, 6)[0]
            desc_len = 16 if long_lba else 8
        else:
            long_lba = False
            bdl = params[3]
            desc_len = 8
        if bdl not in (0, desc_len):
            raise invalid_param(6 if ten else 3)
        pos = hdr_len
        if bdl:
            if len(params) < pos + bdl:
                raise param_length_error()
            if long_lba:
                blocks, length = struct.unpack_from(">QxxxxI", params, pos)
            else:
                blocks, length = struct.unpack_from(">II", params, pos)
                length &= 0xFFFFFF
            if length != block_size:
                raise invalid_param(pos + (12 if long_lba else 5))
            if blocks not in (0, num_blocks, min(num_blocks, 0xFFFFFFFF)):
                raise invalid_param(pos)
            pos += bdl
        updates: list[tuple[ModePage, bytes]] = []
        while pos < len(params):
            if len(params) - pos < 2:
                raise param_length_error()
            first = params[pos]
            if first & 0x80:  # PS is reserved in MODE SELECT
                raise invalid_param(pos, 7)
            if first & 0x40:  # no subpages are served
                raise invalid_param(pos, 6)
            page = self.pages.get(first & 0x3F)
            if page is None:
                raise invalid_param(pos, 5)
            if params[pos + 1] != len(page.default) - 2:
                raise invalid_param(pos + 1)
            end = pos + len(page.default)
            if end > len(params):
                raise param_length_error()
            new = params[pos:end]
            for i in range(2, len(new)):
                if (new[i] ^ page.current[i]) & ~page.changeable[i] & 0xFF:
                    raise invalid_param(pos + i)
            updates.append((page, new))
            pos = end
        changed: list[int] = []
        for page, new in updates:
            if bytes(page.current[2:]) != bytes(new[2:]):
                page.current[2:] = new[2:]
                changed.append(page.code)
        return changed
