"""One logical unit: command dispatch, unit attentions, reservations and the SPC
commands (INQUIRY, MODE SENSE/SELECT, REQUEST SENSE, RESERVE/RELEASE, PERSISTENT
RESERVE, REPORT SUPPORTED OPERATION CODES, START STOP UNIT, PREVENT ALLOW).

``execute`` runs on the event loop for every command, so the path to a READ or WRITE
handler is one dict lookup and a few attribute tests.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from ..blockdev import (
    BlockDevice,
    Extent,
    MediumError,
    NoSpaceError,
    Pending,
    QuorumError,
    StoreError,
)
from . import inquiry as inq
from .common import Nexus, ScsiResult
from .constants import (
    BUS_DEVICE_RESET_OCCURRED,
    CAPACITY_DATA_HAS_CHANGED,
    HARDWARE_WRITE_PROTECTED,
    INTERNAL_TARGET_FAILURE,
    INVALID_COMMAND_OPERATION_CODE,
    INVALID_FIELD_IN_CDB,
    LU_NOT_ACCESSIBLE_UNAVAILABLE,
    MODE_PARAMETERS_CHANGED,
    NO_ADDITIONAL_SENSE,
    POWER_ON_RESET_OCCURRED,
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    WRITE_PROTECTED,
    Asc,
    MaintIn,
    Op,
    SaIn16,
    SenseKey,
    Status,
)
from .mode import ModePages
from .opcodes import ALL_COMMANDS, THIN_ONLY, CommandInfo, report_supported_opcodes
from .reservations import ACCESS_ANY, ACCESS_READ, ACCESS_WRITE, Reservations
from .sbc import _RW10, _RW16, BlockCommands, DataOut, data_out_length, fit_to_transfer
from .sense import (
    ReservationConflict,
    ScsiError,
    build_sense,
    field_pointer,
    invalid_cdb,
    param_length_error,
)

log = logging.getLogger("cairn.scsi")

GOOD = Status.GOOD
CHECK_CONDITION = Status.CHECK_CONDITION

# Dispatch flags.
F_NO_UA = 0x01  # the command neither reports nor clears a unit attention
F_SPC2_EXEMPT = 0x02  # allowed while another I_T nexus holds RESERVE(6)/(10)
F_DYNAMIC_ACCESS = 0x04  # the reservation access class depends on the CDB

Handler = Callable[[bytes, DataOut, Nexus], ScsiResult]
Entry = tuple[Handler, int, int, int]  # handler, CDB length, access class, flags

MIB = 1 << 20


class LogicalUnit(BlockCommands):
    """A direct-access logical unit serving a ``BlockDevice``."""

    def __init__(
        self,
        device: BlockDevice,
        *,
        vendor: str = "CAIRN",
        product: str = "VOLUME",
        revision: str = "0001",
        serial: str,
        naa: bytes,
        thin: bool = True,
        write_cache: bool = True,
        read_only: bool = False,
        power_on_ua: bool = True,
    ) -> None:
        if len(naa) not in (8, 16):
            raise ValueError(f"NAA identifier must be 8 or 16 bytes, got {len(naa)}")
        if not serial or not serial.isascii() or not serial.isprintable():
            raise ValueError(f"unit serial number must be printable ASCII, got {serial!r}")
        self.device = device
        # a replicated volume finishes reads and writes later (``blockdev.Pending``)
        self.asynchronous = bool(getattr(device, "asynchronous", False))
        self.block_size = device.block_size
        self.num_blocks = device.num_blocks
        if self.block_size not in (512, 1024, 2048, 4096):
            raise ValueError(f"unsupported block size {self.block_size}")
        self.identity = inq.Identity(vendor, product, revision, serial, bytes(naa))
        self.thin = thin
        self.read_only = read_only
        self.power_on_ua = power_on_ua
        bs = self.block_size
        self.max_transfer = max(1, (8 * MIB) // bs)
        self.max_compare_and_write = 255
        self.max_unmap_lbas = (1 << 20) if thin else 0
        self.max_unmap_descriptors = 1024 if thin else 0
        # WRITE SAME covers at most what one READ can fetch: the work one command does
        # on the event loop stays bounded, and a range written can be read back whole.
        self.max_write_same = self.max_transfer
        self.limits = inq.BlockLimits(
            max_transfer=self.max_transfer,
            optimal_granularity=max(1, 4096 // bs),
            optimal_transfer=max(1, MIB // bs),
            max_compare_and_write=self.max_compare_and_write,
            max_unmap_lbas=self.max_unmap_lbas,
            max_unmap_descriptors=self.max_unmap_descriptors,
            # 4 KiB volumes leave OPTIMAL UNMAP GRANULARITY unreported (0): QEMU's iSCSI
            # driver (7.2 and later) aborts on large reads from a 4 KiB LUN with LBPRZ 1
            # and a granularity from 4 KiB to 16 MiB (docs/scsi.md).
            unmap_granularity=(4096 // bs) if thin and bs < 4096 else 0,
            max_write_same=self.max_write_same,
        )
        self.modes = ModePages(write_cache=write_cache)
        self.reservations = Reservations()
        self._nexuses: set[Nexus] = set()
        self._ua: dict[Nexus, list[Asc]] = {}
        self._prevent: set[Nexus] = set()
        self._wce = True
        self._d_sense = False
        self._write_protect: Asc | None = None
        self._refresh_mode_state()
        self.commands: tuple[CommandInfo, ...] = tuple(
            c for c in ALL_COMMANDS if thin or c.opcode not in THIN_ONLY
        )
        self._dispatch = self._build_dispatch()
        self._vpd_pages = [
            inq.VPD_SUPPORTED_PAGES,
            inq.VPD_UNIT_SERIAL,
            inq.VPD_DEVICE_ID,
            inq.VPD_BLOCK_LIMITS,
            inq.VPD_BLOCK_CHARACTERISTICS,
        ]
        if thin:
            self._vpd_pages.append(inq.VPD_LOGICAL_BLOCK_PROVISIONING)

    # ------------------------------------------------------------------ dispatch
    def _build_dispatch(self) -> dict[int, Entry]:
        R, W, A = ACCESS_READ, ACCESS_WRITE, ACCESS_ANY
        table: dict[int, tuple[Handler, int, int]] = {
            Op.TEST_UNIT_READY: (self.cmd_test_unit_ready, A, 0),
            Op.REQUEST_SENSE: (self.cmd_request_sense, A, F_NO_UA | F_SPC2_EXEMPT),
            Op.READ_6: (self.cmd_read6, R, 0),
            Op.WRITE_6: (self.cmd_write6, W, 0),
            Op.INQUIRY: (self.cmd_inquiry, A, F_NO_UA | F_SPC2_EXEMPT),
            Op.MODE_SELECT_6: (self.cmd_mode_select, W, 0),
            Op.RESERVE_6: (self.cmd_reserve, A, F_SPC2_EXEMPT),
            Op.RELEASE_6: (self.cmd_release, A, F_SPC2_EXEMPT),
            Op.MODE_SENSE_6: (self.cmd_mode_sense, R, 0),
            Op.START_STOP_UNIT: (self.cmd_start_stop_unit, W, F_DYNAMIC_ACCESS),
            Op.PREVENT_ALLOW: (self.cmd_prevent_allow, W, F_DYNAMIC_ACCESS),
            Op.READ_CAPACITY_10: (self.cmd_read_capacity10, A, 0),
            Op.READ_10: (self.cmd_read10, R, 0),
            Op.WRITE_10: (self.cmd_write10, W, 0),
            Op.WRITE_VERIFY_10: (self.cmd_write_verify10, W, 0),
            Op.VERIFY_10: (self.cmd_verify10, R, 0),
            Op.PRE_FETCH_10: (self.cmd_pre_fetch10, R, 0),
            Op.SYNCHRONIZE_CACHE_10: (self.cmd_synchronize_cache10, W, 0),
            Op.READ_DEFECT_DATA_10: (self.cmd_read_defect_data10, R, 0),
            Op.WRITE_SAME_10: (self.cmd_write_same10, W, 0),
            Op.UNMAP: (self.cmd_unmap, W, 0),
            Op.MODE_SELECT_10: (self.cmd_mode_select, W, 0),
            Op.RESERVE_10: (self.cmd_reserve, A, F_SPC2_EXEMPT),
            Op.RELEASE_10: (self.cmd_release, A, F_SPC2_EXEMPT),
            Op.MODE_SENSE_10: (self.cmd_mode_sense, R, 0),
            Op.PERSISTENT_RESERVE_IN: (self.cmd_persistent_reserve_in, A, 0),
            Op.PERSISTENT_RESERVE_OUT: (self.cmd_persistent_reserve_out, A, 0),
            Op.READ_16: (self.cmd_read16, R, 0),
            Op.COMPARE_AND_WRITE: (self.cmd_compare_and_write, W, 0),
            Op.WRITE_16: (self.cmd_write16, W, 0),
            Op.WRITE_VERIFY_16: (self.cmd_write_verify16, W, 0),
            Op.VERIFY_16: (self.cmd_verify16, R, 0),
            Op.PRE_FETCH_16: (self.cmd_pre_fetch16, R, 0),
            Op.SYNCHRONIZE_CACHE_16: (self.cmd_synchronize_cache16, W, 0),
            Op.WRITE_SAME_16: (self.cmd_write_same16, W, 0),
            Op.SERVICE_ACTION_IN_16: (self.cmd_service_action_in16, R, F_DYNAMIC_ACCESS),
            Op.MAINTENANCE_IN: (self.cmd_maintenance_in, A, F_SPC2_EXEMPT),
            Op.READ_12: (self.cmd_read12, R, 0),
            Op.WRITE_12: (self.cmd_write12, W, 0),
            Op.WRITE_VERIFY_12: (self.cmd_write_verify12, W, 0),
            Op.VERIFY_12: (self.cmd_verify12, R, 0),
            Op.READ_DEFECT_DATA_12: (self.cmd_read_defect_data12, R, 0),
        }
        lengths = {c.opcode: c.cdb_length for c in self.commands}
        dispatch: dict[int, Entry] = {}
        for op, (handler, access, flags) in table.items():
            if op in lengths:
                dispatch[int(op)] = (handler, lengths[op], access, flags)
        return dispatch

    def execute(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        """Run one command; never raises."""
        try:
            handler, cdb_len, access, flags = self._dispatch[cdb[0]]
        except (KeyError, IndexError):
            return self._check(SenseKey.ILLEGAL_REQUEST, INVALID_COMMAND_OPERATION_CODE)
        if len(cdb) < cdb_len:
            return ScsiResult(
                CHECK_CONDITION,
                build_sense(
                    SenseKey.ILLEGAL_REQUEST,
                    INVALID_FIELD_IN_CDB,
                    descriptor=self._d_sense,
                    sks=field_pointer(0),
                ),
            )
        if nexus not in self._nexuses:
            self.nexus_added(nexus)
        if self._ua and not flags & F_NO_UA:
            pending = self._ua.get(nexus)
            if pending:
                return self._report_ua(nexus, pending)
        if self.reservations.active:
            if flags & F_DYNAMIC_ACCESS:
                access = self._dynamic_access(cdb)
            if self.reservations.conflicts(nexus, access, bool(flags & F_SPC2_EXEMPT)):
                return ScsiResult(Status.RESERVATION_CONFLICT)
        try:
            result = handler(cdb, data_out, nexus)
        except Exception as e:
            if flags & F_DYNAMIC_ACCESS:
                access = self._dynamic_access(cdb)
            return self._error_result(e, cdb, access)
        if self.asynchronous and (result.pending is not None or result.flush):
            if flags & F_DYNAMIC_ACCESS:
                access = self._dynamic_access(cdb)
            return self._settle(result, cdb, access)
        return result

    def _error_result(self, e: Exception, cdb: bytes, access: int = ACCESS_READ) -> ScsiResult:
        """The status for a command that raised ``e`` (now or when it finished)."""
        if isinstance(e, ScsiError):
            return ScsiResult(
                CHECK_CONDITION,
                build_sense(
                    e.key, e.asc, descriptor=self._d_sense, information=e.information, sks=e.sks
                ),
            )
        if isinstance(e, ReservationConflict):
            return ScsiResult(Status.RESERVATION_CONFLICT)
        if isinstance(e, NoSpaceError):
            log.warning("event=no_space opcode=0x%02x error=%r", cdb[0], str(e))
            return self._check(SenseKey.DATA_PROTECT, SPACE_ALLOCATION_FAILED_WRITE_PROTECT)
        if isinstance(e, QuorumError):
            # docs/replication.md: not enough healthy replicas, for longer than the hold
            log.warning("event=no_quorum opcode=0x%02x error=%r", cdb[0], str(e))
            return self._check(SenseKey.NOT_READY, LU_NOT_ACCESSIBLE_UNAVAILABLE)
        if isinstance(e, MediumError):
            log.warning("event=medium_error opcode=0x%02x error=%r", cdb[0], str(e))
            asc = WRITE_ERROR if access == ACCESS_WRITE else UNRECOVERED_READ_ERROR
            return self._check(SenseKey.MEDIUM_ERROR, asc)
        if isinstance(e, StoreError):
            log.warning("event=store_error opcode=0x%02x error=%r", cdb[0], str(e))
            return self._check(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE)
        log.error("event=scsi_command_failed opcode=0x%02x", cdb[0], exc_info=e)
        return self._check(SenseKey.HARDWARE_ERROR, INTERNAL_TARGET_FAILURE)

    def _settle(self, result: ScsiResult, cdb: bytes, access: int) -> ScsiResult:
        """An asynchronous device's result: a ScsiResult whose ``pending`` gives the
        final ScsiResult, after the device's flush where the command asked for one,
        and with errors turned into a status."""
        if result.pending is not None:
            p = result.pending
        else:
            p = Pending.resolved(result)

        def flush_if_asked(r: ScsiResult) -> ScsiResult | Pending:
            if not r.flush or r.status != GOOD:
                return r
            done = ScsiResult(r.status, r.sense, r.data)
            f = self.device.flush()
            return f.then(lambda _: done) if isinstance(f, Pending) else done

        out = Pending()

        def finished(q: Pending) -> None:
            out.resolve(q.value if q.error is None else self._error_result(q.error, cdb, access))

        p.then(flush_if_asked).add_done_callback(finished)
        return ScsiResult(GOOD, pending=out)

    # ------------------------------------------------------------------ fast lane
    # READ and WRITE (10)/(16) make up nearly all I/O.  The iSCSI layer offers them here
    # first; these answer only the plain case (no flags, in range, nothing pending for
    # the nexus: no unit attention, no reservation, no write protection, write cache on)
    # with the very result ``execute`` would give, and return None for everything else,
    # including a store error, so that ``execute`` runs the command and reports it.

    def fast_read(self, cdb: bytes, edtl: int, nexus: Nexus) -> list[Extent] | None:
        """The extents a plain READ returns, or None to run it through ``execute``."""
        op = cdb[0]
        if op == 0x28:
            lba, count = _RW10.unpack_from(cdb)
        elif op == 0x88:
            lba, count = _RW16.unpack_from(cdb)
        else:
            return None
        if (
            cdb[1]
            or count * self.block_size != edtl
            or not 0 < count <= self.max_transfer
            or lba + count > self.num_blocks
            or (self._ua and self._ua.get(nexus))
            or self.reservations.active
            or nexus not in self._nexuses
            or self.asynchronous
        ):
            return None
        try:
            return self.device.read_extents(lba, count)  # type: ignore[return-value]
        except Exception:  # a synchronous device (checked above): extents or an error
            return None

    def read_window(self, nexus: Nexus) -> tuple[int, int, int, int] | None:
        """``(fd, shift, num_blocks, max_transfer)`` when every plain READ from ``nexus``
        in range may be answered straight from one file, block ``lba`` at byte
        ``lba << shift``, with no other check: what ``fast_read`` checks per command,
        hoisted for a run of READs.  None when any of it does not hold.  Valid until
        the next command that is not a plain READ."""
        if (
            (self._ua and self._ua.get(nexus))
            or self.reservations.active
            or nexus not in self._nexuses
            or self.asynchronous
        ):
            return None
        direct = getattr(self.device, "direct_reads", None)
        span = direct() if direct is not None else None
        if span is None or 1 << span[1] != self.block_size:
            return None
        return span[0], span[1], self.num_blocks, self.max_transfer

    def plain_write(self, cdb: bytes, nbytes: int, nexus: Nexus) -> int:
        """The LBA of a plain WRITE (10)/(16) with ``nbytes`` of data that the fast lane
        may take, or -1.  Nothing is written: ``write_blocks`` does that, possibly for
        several such writes at once when they follow each other on the medium."""
        op = cdb[0]
        if op == 0x2A:
            lba, count = _RW10.unpack_from(cdb)
        elif op == 0x8A:
            lba, count = _RW16.unpack_from(cdb)
        else:
            return -1
        if (
            cdb[1]
            or count * self.block_size != nbytes
            or not 0 < count <= self.max_transfer
            or lba + count > self.num_blocks
            or not self._wce
            or self._write_protect is not None
            or (self._ua and self._ua.get(nexus))
            or self.reservations.active
            or nexus not in self._nexuses
        ):
            return -1
        return lba

    def write_blocks(self, lba: int, data: memoryview) -> bool | Pending:
        """Write whole blocks at ``lba`` (writes ``plain_write`` accepted, one or several
        in a row): True when done, False after a store error (run them through
        ``execute`` then, which writes again and reports the error).  An asynchronous
        device gives a Pending instead (its error: see ``error_result``)."""
        try:
            done = self.device.write(lba, data)
        except Exception as e:
            if self.asynchronous:
                failed = Pending()
                failed.fail(e)
                return failed
            return False
        return done if done is not None else True

    def error_result(self, error: Exception, cdb: bytes) -> ScsiResult:
        """The status of a plain WRITE that failed with ``error``."""
        return self._error_result(error, cdb, ACCESS_WRITE)

    def write_buffer(self, nbytes: int) -> tuple[int, memoryview] | None:
        """A buffer lent by the device to receive ``nbytes`` of data-out into (a write
        from it skips a copy), or None.  Give it back with ``release_write_buffer``
        after the command ran or was abandoned."""
        lend = getattr(self.device, "payload_buffer", None)
        return lend(nbytes) if lend is not None else None

    def release_write_buffer(self, handle: int) -> None:
        self.device.release_payload_buffer(handle)  # type: ignore[attr-defined]

    def data_out_length(self, cdb: bytes) -> int | None:
        """Bytes of data-out the CDB transfers; None if the opcode is not served."""
        if not cdb or cdb[0] not in self._dispatch:
            return None
        return data_out_length(cdb, self.block_size)

    def fit_to_transfer(self, cdb: bytes, edtl: int) -> bytes | ScsiResult:
        """The CDB to run when the initiator transfers ``edtl`` bytes of data-out but
        the CDB asks for another amount, or the CHECK CONDITION that ends the command
        (see ``sbc.fit_to_transfer``)."""
        fitted = fit_to_transfer(cdb, edtl, self.block_size)
        if isinstance(fitted, bytes):
            return fitted
        return ScsiResult(
            CHECK_CONDITION,
            build_sense(fitted.key, fitted.asc, descriptor=self._d_sense, sks=fitted.sks),
        )

    @staticmethod
    def _dynamic_access(cdb: bytes) -> int:
        op = cdb[0]
        if op == Op.SERVICE_ACTION_IN_16:
            return ACCESS_ANY if (cdb[1] & 0x1F) == SaIn16.READ_CAPACITY_16 else ACCESS_READ
        if op == Op.PREVENT_ALLOW:
            return ACCESS_WRITE if cdb[4] & 0x03 else ACCESS_ANY
        if op == Op.START_STOP_UNIT:
            return ACCESS_ANY if (cdb[4] & 0xF1) == 0x01 else ACCESS_WRITE
        return ACCESS_WRITE

    def _check(self, key: int, asc: Asc) -> ScsiResult:
        return ScsiResult(CHECK_CONDITION, build_sense(key, asc, descriptor=self._d_sense))

    # ------------------------------------------------------------------ nexus state
    def nexus_added(self, nexus: Nexus) -> None:
        if nexus in self._nexuses:
            return
        self._nexuses.add(nexus)
        if self.power_on_ua:
            self._ua[nexus] = [POWER_ON_RESET_OCCURRED]

    def nexus_lost(self, nexus: Nexus) -> None:
        self._nexuses.discard(nexus)
        self._ua.pop(nexus, None)
        self._prevent.discard(nexus)
        self.reservations.nexus_lost(nexus)

    def reset(self, issuer: Nexus | None, *, target_reset: bool = False) -> None:
        """LOGICAL UNIT RESET (or the part of a target reset that concerns this unit).

        Every I_T nexus, the issuer's included, gets the unit attention (SAM-5: the
        condition is established for the initiator port of every I_T nexus), so each
        path of a multipath initiator learns that reservations and state were reset."""
        self.reservations.reset()
        self._prevent.clear()
        asc = POWER_ON_RESET_OCCURRED if target_reset else BUS_DEVICE_RESET_OCCURRED
        for nexus in self._nexuses:
            self._set_ua(nexus, asc, replace=True)

    def capacity_changed(self) -> None:
        """The device grew (or shrank): refresh and tell every initiator."""
        self.num_blocks = self.device.num_blocks
        for nexus in self._nexuses:
            self._set_ua(nexus, CAPACITY_DATA_HAS_CHANGED)

    def _set_ua(self, nexus: Nexus, asc: Asc, *, replace: bool = False) -> None:
        if nexus not in self._nexuses:
            return
        if replace:
            self._ua[nexus] = [asc]
            return
        pending = self._ua.setdefault(nexus, [])
        if asc not in pending:
            pending.append(asc)

    def _report_ua(self, nexus: Nexus, pending: list[Asc]) -> ScsiResult:
        asc = pending.pop(0)
        if not pending:
            del self._ua[nexus]
        return self._check(SenseKey.UNIT_ATTENTION, asc)

    def pending_unit_attentions(self, nexus: Nexus) -> list[Asc]:
        return list(self._ua.get(nexus, ()))

    def _refresh_mode_state(self) -> None:
        self._wce = self.modes.wce
        self._d_sense = self.modes.d_sense
        if self.read_only:
            self._write_protect = HARDWARE_WRITE_PROTECTED
        elif self.modes.swp:
            self._write_protect = WRITE_PROTECTED
        else:
            self._write_protect = None

    # ------------------------------------------------------------------ SPC commands
    def cmd_test_unit_ready(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        return ScsiResult(GOOD)

    def cmd_request_sense(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        descriptor = bool(cdb[1] & 0x01)
        alloc = cdb[4]
        pending = self._ua.get(nexus)
        if pending:
            asc = pending.pop(0)
            if not pending:
                del self._ua[nexus]
            data = build_sense(SenseKey.UNIT_ATTENTION, asc, descriptor=descriptor)
        else:
            data = build_sense(SenseKey.NO_SENSE, NO_ADDITIONAL_SENSE, descriptor=descriptor)
        return ScsiResult(GOOD, data=data[:alloc])

    def cmd_inquiry(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        if cdb[1] & 0x02:  # CMDDT (obsolete)
            raise invalid_cdb(1, 1)
        page = cdb[2]
        alloc = struct.unpack_from(">H", cdb, 3)[0]
        if not cdb[1] & 0x01:
            if page:
                raise invalid_cdb(2)
            data = inq.standard_inquiry(self.identity)
        elif page not in self._vpd_pages:
            raise invalid_cdb(2)
        elif page == inq.VPD_SUPPORTED_PAGES:
            data = inq.supported_pages(self._vpd_pages)
        elif page == inq.VPD_UNIT_SERIAL:
            data = inq.unit_serial(self.identity)
        elif page == inq.VPD_DEVICE_ID:
            data = inq.device_identification(self.identity, nexus)
        elif page == inq.VPD_BLOCK_LIMITS:
            data = inq.block_limits(self.limits)
        elif page == inq.VPD_BLOCK_CHARACTERISTICS:
            data = inq.block_device_characteristics()
        else:
            data = inq.logical_block_provisioning(thin=self.thin)
        return ScsiResult(GOOD, data=data[:alloc])

    def cmd_mode_sense(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        ten = cdb[0] == Op.MODE_SENSE_10
        alloc = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
        data = self.modes.sense(
            cdb,
            ten=ten,
            block_size=self.block_size,
            num_blocks=self.num_blocks,
            write_protected=self._write_protect is not None,
        )
        return ScsiResult(GOOD, data=data[:alloc])

    def cmd_mode_select(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        ten = cdb[0] == Op.MODE_SELECT_10
        if cdb[1] & 0x01:  # SP: nothing is saveable
            raise invalid_cdb(1, 0)
        plen = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
        if plen == 0:
            return ScsiResult(GOOD)
        params = bytes(memoryview(data_out)[:plen]) if data_out is not None else b""
        if len(params) < plen:
            raise param_length_error()
        changed = self.modes.select(
            params, ten=ten, block_size=self.block_size, num_blocks=self.num_blocks
        )
        if changed:
            self._refresh_mode_state()
            for other in self._nexuses:
                if other != nexus:
                    self._set_ua(other, MODE_PARAMETERS_CHANGED)
        return ScsiResult(GOOD)

    def cmd_reserve(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        if cdb[0] == Op.RESERVE_6:
            if cdb[1] & 0x01:  # extents (obsolete)
                raise invalid_cdb(1, 0)
        elif cdb[1] & 0x12:  # third-party reservations (3RDPTY, LONGID)
            raise invalid_cdb(1, 4 if cdb[1] & 0x10 else 1)
        self.reservations.reserve6(nexus)
        return ScsiResult(GOOD)

    def cmd_release(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        if cdb[0] == Op.RELEASE_10 and cdb[1] & 0x12:
            raise invalid_cdb(1, 4 if cdb[1] & 0x10 else 1)
        self.reservations.release6(nexus)
        return ScsiResult(GOOD)

    def cmd_start_stop_unit(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        power_condition = cdb[4] >> 4
        if power_condition:
            if power_condition not in (0x1, 0x2, 0x3, 0x5, 0x7, 0xA, 0xB):
                raise invalid_cdb(4, 7)
            return ScsiResult(GOOD)
        if cdb[4] & 0x02:  # LOEJ: the medium cannot be removed from this unit
            raise invalid_cdb(4, 1)
        if not cdb[4] & 0x01:
            # STOP: the unit keeps serving, but cached data is written out first
            # unless NO_FLUSH is set.
            return ScsiResult(GOOD, flush=not cdb[4] & 0x04)
        return ScsiResult(GOOD)

    def cmd_prevent_allow(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        prevent = cdb[4] & 0x03
        if prevent == 0:
            self._prevent.discard(nexus)
        elif prevent == 1:
            self._prevent.add(nexus)
        else:
            raise invalid_cdb(4, 1)
        return ScsiResult(GOOD)

    @property
    def removal_prevented(self) -> bool:
        return bool(self._prevent)

    def cmd_service_action_in16(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        sa = cdb[1] & 0x1F
        if sa == SaIn16.READ_CAPACITY_16:
            return self.read_capacity16(cdb)
        if sa == SaIn16.GET_LBA_STATUS:
            return self.get_lba_status(cdb)
        raise invalid_cdb(1, 4)

    def cmd_maintenance_in(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        if cdb[1] & 0x1F != MaintIn.REPORT_SUPPORTED_OPCODES:
            raise invalid_cdb(1, 4)
        alloc = struct.unpack_from(">I", cdb, 6)[0]
        data = report_supported_opcodes(self.commands, cdb)
        return ScsiResult(GOOD, data=data[:alloc])

    def cmd_persistent_reserve_in(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        alloc = struct.unpack_from(">H", cdb, 7)[0]
        data = self.reservations.persistent_reserve_in(cdb[1] & 0x1F)
        return ScsiResult(GOOD, data=data[:alloc])

    def cmd_persistent_reserve_out(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        params = bytes(memoryview(data_out)[:24]) if data_out is not None else b""
        for other, asc in self.reservations.persistent_reserve_out(nexus, cdb, params):
            self._set_ua(other, asc)
        return ScsiResult(GOOD)
