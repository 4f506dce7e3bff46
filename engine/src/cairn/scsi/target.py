"""The SCSI target device of one iSCSI target: its logical units by LUN, REPORT LUNS,
answers for LUNs that do not exist, and task management."""

from __future__ import annotations

import logging
import struct

from ..blockdev import MediumError, NoSpaceError
from . import inquiry as inq
from .common import Nexus, ScsiResult
from .constants import (
    INTERNAL_TARGET_FAILURE,
    INVALID_COMMAND_OPERATION_CODE,
    INVALID_FIELD_IN_CDB,
    LOGICAL_UNIT_NOT_SUPPORTED,
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
    WRITE_ERROR,
    Op,
    SenseKey,
    Status,
)
from .lun import LogicalUnit
from .sbc import DataOut
from .sense import build_sense, field_pointer

log = logging.getLogger("cairn.scsi")

_NO_LUN_IDENTITY = inq.Identity("CAIRN", "NO LUN", "0001", "-", bytes(8))


def encode_lun(lun: int) -> bytes:
    """An 8-byte LUN (SAM-5 4.7): peripheral addressing below 256, flat above."""
    if lun < 256:
        return bytes((0, lun)) + bytes(6)
    return bytes((0x40 | ((lun >> 8) & 0x3F), lun & 0xFF)) + bytes(6)


class ScsiTarget:
    """All logical units one iSCSI target exposes."""

    def __init__(self, luns: dict[int, LogicalUnit]) -> None:
        for lun in luns:
            if not 0 <= lun < 16384:
                raise ValueError(f"LUN {lun} out of range 0-16383")
        self.luns = dict(luns)

    # ------------------------------------------------------------------ commands
    def execute(self, lun: int, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        """Run one command on one LUN; never raises, whatever the input."""
        try:
            unit = self.luns.get(lun)
            if unit is not None and cdb and cdb[0] != Op.REPORT_LUNS:
                return unit.execute(cdb, data_out, nexus)
            return self._target_command(unit, cdb)
        except Exception:
            log.exception("event=scsi_command_failed lun=%s", lun)
            return ScsiResult(
                Status.CHECK_CONDITION,
                build_sense(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE),
            )

    def _target_command(self, unit: LogicalUnit | None, cdb: bytes) -> ScsiResult:
        if not cdb:
            return _check(SenseKey.ILLEGAL_REQUEST, INVALID_COMMAND_OPERATION_CODE)
        op = cdb[0]
        if op == Op.REPORT_LUNS:
            return self._report_luns(cdb)
        if op == Op.INQUIRY and len(cdb) >= 6 and not cdb[1] & 0x03 and not cdb[2]:
            # Peripheral qualifier 011b: no logical unit at this LUN.
            data = inq.standard_inquiry(_NO_LUN_IDENTITY, qualifier=0x3, pdt=inq.PDT_UNKNOWN)
            alloc = struct.unpack_from(">H", cdb, 3)[0]
            return ScsiResult(Status.GOOD, data=data[:alloc])
        if op == Op.REQUEST_SENSE and len(cdb) >= 6:
            data = build_sense(
                SenseKey.ILLEGAL_REQUEST, LOGICAL_UNIT_NOT_SUPPORTED, descriptor=bool(cdb[1] & 0x01)
            )
            return ScsiResult(Status.GOOD, data=data[: cdb[4]])
        return _check(SenseKey.ILLEGAL_REQUEST, LOGICAL_UNIT_NOT_SUPPORTED)

    def _report_luns(self, cdb: bytes) -> ScsiResult:
        if len(cdb) < 12:
            return _check(SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB, field_pointer(0))
        select = cdb[2]
        if select not in (0x00, 0x01, 0x02):
            return _check(SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB, field_pointer(2))
        alloc = struct.unpack_from(">I", cdb, 6)[0]
        if alloc < 16:
            return _check(SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB, field_pointer(6))
        # No well-known logical units: SELECT REPORT 01h reports none.
        luns = [] if select == 0x01 else sorted(self.luns)
        body = b"".join(encode_lun(n) for n in luns)
        data = struct.pack(">I4x", len(body)) + body
        return ScsiResult(Status.GOOD, data=data[:alloc])

    def data_out_length(self, lun: int, cdb: bytes) -> int | None:
        """Bytes of data-out ``cdb`` transfers (0 for none); None when unknown."""
        unit = self.luns.get(lun)
        if unit is None:
            return None
        try:
            return unit.data_out_length(cdb)
        except Exception:
            return None

    def fit_to_transfer(self, lun: int, cdb: bytes, edtl: int) -> bytes | ScsiResult:
        """The CDB to run with ``edtl`` bytes of data-out when that is not what the CDB
        transfers, or the result that ends the command."""
        unit = self.luns.get(lun)
        if unit is None:
            return _check(SenseKey.ILLEGAL_REQUEST, LOGICAL_UNIT_NOT_SUPPORTED)
        try:
            return unit.fit_to_transfer(cdb, edtl)
        except Exception:
            log.exception("event=scsi_fit_failed lun=%s", lun)
            return _check(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE)

    def write_buffer(self, lun: int, nbytes: int) -> tuple[int, memoryview] | None:
        """A buffer lent by ``lun``'s device for the data-out of a write (see
        ``LogicalUnit.write_buffer``), or None."""
        unit = self.luns.get(lun)
        return unit.write_buffer(nbytes) if unit is not None else None

    def release_write_buffer(self, lun: int, handle: int) -> None:
        self.luns[lun].release_write_buffer(handle)

    def fast_lane(self, lun: int) -> LogicalUnit | None:
        """The unit whose ``fast_read``/``plain_write`` take plain READs and WRITEs."""
        return self.luns.get(lun)

    def has_lun(self, lun: int) -> bool:
        return lun in self.luns

    def flush(self, lun: int) -> None:
        """Make the completed writes of ``lun`` durable; blocking, call from a worker."""
        unit = self.luns.get(lun)
        if unit is not None:
            unit.device.flush()

    # ------------------------------------------------------------------ nexus events
    def nexus_added(self, nexus: Nexus) -> None:
        for unit in self.luns.values():
            unit.nexus_added(nexus)

    def nexus_lost(self, nexus: Nexus) -> None:
        for unit in self.luns.values():
            unit.nexus_lost(nexus)

    def lun_reset(self, lun: int, nexus: Nexus) -> None:
        unit = self.luns.get(lun)
        if unit is not None:
            unit.reset(nexus)

    def target_reset(self, nexus: Nexus) -> None:
        for unit in self.luns.values():
            unit.reset(nexus, target_reset=True)


def _check(key: int, asc: tuple[int, int], sks: bytes | None = None) -> ScsiResult:
    return ScsiResult(Status.CHECK_CONDITION, build_sense(key, asc, sks=sks))


def flush_failed_result(error: BaseException) -> ScsiResult:
    """The status for a command whose flush (SYNCHRONIZE CACHE, FUA) failed."""
    if isinstance(error, NoSpaceError):
        return _check(SenseKey.DATA_PROTECT, SPACE_ALLOCATION_FAILED_WRITE_PROTECT)
    if isinstance(error, MediumError):
        return _check(SenseKey.MEDIUM_ERROR, WRITE_ERROR)
    return _check(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE)
