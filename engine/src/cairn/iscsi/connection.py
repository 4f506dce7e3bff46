"""One iSCSI connection, target side, as a sans-IO state machine (RFC 7143).

Feed received bytes with ``feed``; take what to send from ``out`` (``bytes``,
``memoryview`` or ``blockdev.Extent`` items, in order: the network glue sends extents with
``os.sendfile``); run ``flush_requests`` in a worker and report them with
``flush_done``; call ``tick`` about once a second for NOP-In pings; call
``connection_lost`` when the transport goes away.  ``closing`` tells the glue to close
the transport once ``out`` is sent.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cairn.blockdev import Extent, ReadRun
from cairn.iscsi import pdu as P
from cairn.iscsi.login import CMD_WINDOW, LoginMachine, Outcome
from cairn.iscsi.params import SessionParams
from cairn.iscsi.session import ScsiBackend, SessionRecord, SessionTable
from cairn.iscsi.targets import TargetDirectory, TargetSpec, send_targets
from cairn.iscsi.text import TextError, encode_text, parse_text

log = logging.getLogger("cairn.iscsi")

RESERVED = P.RESERVED_TAG
LOGIN_MAX_DSL = 65536
_I32 = struct.Struct(">I")
_DATA_IN = struct.Struct(">BBBBB3s8sIIIIIIII")
# A Data-In with no AHS, as the fast lane builds it: TotalAHSLength (0) and the 3-byte
# DataSegmentLength packed together as one 32-bit field.
_FAST_DATA_IN = struct.Struct(">BBBBI8sIIIIIIII")
_RSP = struct.Struct(">BBBBB3s8sIIIIIIII")
_R2T = struct.Struct(">BBBBB3s8sIIIIIIII")
_CMD = struct.Struct(">BBBBB3s8sIIII16s")
_DOUT = struct.Struct(">8xII4xI4xII")  # ITT, TTT, ExpStatSN, DataSN, BufferOffset (from 16)
_NO_LUN = bytes(8)
# Write buffers kept for reuse, per connection (bounds the target's memory).
BUFFER_POOL_BYTES = 4 << 20
# Plain writes that arrive together and follow each other on the medium are written as
# one, up to this many bytes (``_write_batch``).
BATCH_MAX = 1 << 20
# A SCSI Command BHS as the fast lane reads it: opcode byte, flags, TotalAHSLength, LUN,
# ITT, EDTL, CmdSN, CDB.
_FAST_CMD = struct.Struct(">BBxxB3xQIII4x16s")
# A SCSI Command BHS carrying READ (10) or READ (16), as ``_fast_reads`` reads it:
# opcode byte, flags, TotalAHSLength and DataSegmentLength as one field, LUN, ITT, EDTL,
# CmdSN, then the CDB's opcode, flags byte, LBA and transfer length.
_READ10 = struct.Struct(">BBxxIQIII4xBBIxH7x")
_READ16 = struct.Struct(">BBxxIQIII4xBBQI2x")
_READ_RUN_MAX = 1 << 20  # bytes of data in one ReadRun
_READ_RUN_PDUS = 128  # Data-In PDUs in one ReadRun (each is two iovecs when sent)

STATUS_GOOD = 0x00
STATUS_CHECK_CONDITION = 0x02

# ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR (RFC 7143 11.4.7.2): a task whose Data-Out
# arrived out of sequence, which at ErrorRecoveryLevel 0 is handled as a digest error.
_SENSE_DATA_SEQUENCE = bytes((0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x47, 0x05, 0, 0, 0, 0))


def _serial_lt(a: int, b: int) -> bool:
    """RFC 1982 serial number arithmetic, 32 bits."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


@dataclass(eq=False, slots=True)
class _Write:
    itt: int
    lun: int
    lun_raw: bytes
    cdb: bytes
    edtl: int
    buf: bytearray
    got: int
    next_offset: int  # first byte not yet solicited or sent unsolicited
    unsolicited_end: int
    r2tsn: int
    outstanding: dict[int, list[int]]  # TTT -> [offset, length, received, next DataSN]
    unsol_datasn: int
    spdtl: int | None
    read: bool  # R bit also set (a bidirectional or mis-flagged command)
    out_of_sequence: bool = False  # a Data-Out came with the wrong DataSN or offset
    unsol_next: int = 0  # where the next unsolicited Data-Out must start
    lent: int | None = None  # handle of a buffer lent by the backend (``write_buffer``)


@dataclass(eq=False, slots=True)
class FlushRequest:
    """A command whose status waits for the device to flush (SYNCHRONIZE CACHE, FUA)."""

    lun: int
    itt: int
    result: Any
    edtl: int
    lun_raw: bytes
    read: bool
    spdtl: int | None
    aborted: bool = False


class Connection:
    def __init__(
        self,
        directory: TargetDirectory,
        sessions: SessionTable,
        backend_for: Callable[[TargetSpec], ScsiBackend],
        peer_address: str | None = None,
        nop_interval: float = 5.0,
        nop_timeout: float = 30.0,
        read_extent: Callable[[Extent], bytes] | None = None,
    ) -> None:
        self.directory = directory
        self.sessions = sessions
        self.backend_for = backend_for
        self.peer = peer_address
        self.out: list[Any] = []
        self.closing = False
        self.close_reason = ""
        self.flush_requests: list[FlushRequest] = []
        self.login: LoginMachine | None = LoginMachine(directory, sessions, peer_address)
        self.params = SessionParams()
        self.full_feature = False
        self.discovery = False
        self.backend: ScsiBackend | None = None
        self.nexus: Any = None
        self.record: SessionRecord | None = None
        self.statsn = 0
        self.exp_cmdsn = 0
        self.max_recv = LOGIN_MAX_DSL
        self.hd = 0
        self.dd = 0
        self._writes: dict[int, _Write] = {}
        self._ttt_next = 1
        self._queued: dict[int, tuple[bytes, bytes, memoryview]] = {}
        # commands whose status waits: for a flush in a worker (also in
        # ``flush_requests``) or for an asynchronous device (``ScsiResult.pending``)
        self._pending_flush: set[FlushRequest] = set()
        # called when output appeared outside ``feed`` (an asynchronous device finished
        # a command): the network side sends ``out`` then
        self.on_output: Callable[[], None] | None = None
        self._text_buf = bytearray()
        self._nop_interval = nop_interval
        self._nop_timeout = nop_timeout
        self._idle = 0.0
        self._ping_ttt: int | None = None
        self._ping_age = 0.0
        self._read_extent = read_extent or _pread_extent
        self.on_cold_reset: Callable[[], None] | None = None
        self.stats = {"commands": 0, "read_bytes": 0, "write_bytes": 0}
        self._fast: Any = None  # LUN 0's fast lane (``ScsiTarget.fast_lane``)
        self._fast_in = 0  # the longest read the fast lane answers with one Data-In PDU
        # (lun, itt, handle, buffer) lent for a command whose immediate data is arriving
        self._prelent: tuple[int, int, int, memoryview] | None = None
        # plain writes of this ``feed`` not yet written: (ITT, CDB, data), back to back
        # on the medium from ``_batch_lba``, ``_batch_bytes`` in all
        self._batch: list[tuple[int, bytes, memoryview]] = []
        self._batch_lba = 0
        self._batch_bytes = 0
        self._buffers: dict[int, list[bytearray]] = {}
        self._buffered = 0

    # ------------------------------------------------------------------ framing
    def feed(self, view: memoryview) -> int:
        """Consume complete PDUs from ``view``; return the number of bytes used."""
        try:
            return self._feed(view)
        finally:
            if self._batch:  # their data is in ``view``: written before it is reused
                self._write_batch()

    def _feed(self, view: memoryview) -> int:
        pos = 0
        n = len(view)
        while n - pos >= 48 and not self.closing:
            ahs = view[pos + 4] << 2
            dsl = (view[pos + 5] << 16) | (view[pos + 6] << 8) | view[pos + 7]
            if dsl > self.max_recv:
                self._reject(bytes(view[pos : pos + 48]), P.RejectReason.PROTOCOL_ERROR)
                self._close(f"data segment of {dsl} bytes exceeds {self.max_recv}")
                return n
            hlen = 48 + ahs
            total = hlen + self.hd + dsl + ((-dsl) & 3) + (self.dd if dsl else 0)
            if n - pos < total:
                break
            if (
                not dsl
                and view[pos] == 0x01
                and view[pos + 32] in (0x28, 0x88)
                and self._fast is not None
            ):
                # plain READs, as many as follow each other (``hd`` is 0: the fast lane
                # exists only without digests)
                took = self._fast_reads(view, pos, n)
                if took != pos:
                    pos = took
                    continue
            bhs = bytes(view[pos : pos + 48])
            if self.hd:
                got = int.from_bytes(view[pos + hlen : pos + hlen + 4], "little")
                if got != P.crc32c(view[pos : pos + hlen]):
                    self._close("header digest error")
                    return n
            dstart = pos + hlen + self.hd
            data = view[dstart : dstart + dsl]
            if self.dd and dsl:
                dend = dstart + dsl + ((-dsl) & 3)
                got = int.from_bytes(view[dend : dend + 4], "little")
                if got != P.crc32c(view[dstart:dend]):
                    self._reject(bhs, P.RejectReason.DATA_DIGEST_ERROR)
                    self._close("data digest error")
                    return n
            ahs_bytes = bytes(view[pos + 48 : pos + hlen]) if ahs else b""
            pos += total
            self._idle = 0.0
            try:
                # plain READs and WRITEs first (``_fast`` is set in full feature phase)
                if (
                    bhs[0] & 0x3F != 0x01
                    or self._fast is None
                    or not self._fast_command(bhs, data, True)
                ):
                    if self._batch:  # everything else sees the writes that came before
                        self._write_batch()
                    self._dispatch(bhs, ahs_bytes, data)
            except Exception:  # a bug must cost one connection, never the daemon
                log.exception("event=pdu_error peer=%s opcode=0x%02x", self.peer, bhs[0] & 0x3F)
                self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
                self._close("internal error while handling a PDU")
                return n
        return pos

    def _dispatch(self, bhs: bytes, ahs: bytes, data: memoryview) -> None:
        op = bhs[0] & 0x3F
        if not self.full_feature:
            self._login(bhs, ahs, data)
            return
        if op == P.Op.SCSI_CMD:
            self._scsi_command(bhs, ahs, data)
        elif op == P.Op.DATA_OUT:
            self._data_out(bhs, data)
        elif op == P.Op.NOP_OUT:
            self._nop_out(bhs, data)
        elif op == P.Op.TASK_MGMT_REQ:
            self._task_mgmt(bhs)
        elif op == P.Op.TEXT_REQ:
            self._text(bhs, data)
        elif op == P.Op.LOGOUT_REQ:
            self._logout(bhs)
        elif op == P.Op.LOGIN_REQ:
            self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
            self._close("login request in full feature phase")
        elif op == P.Op.SNACK_REQ:
            self._reject(bhs, P.RejectReason.SNACK_REJECT)
        else:
            self._reject(bhs, P.RejectReason.COMMAND_NOT_SUPPORTED)

    # ------------------------------------------------------------------ login
    def _login(self, bhs: bytes, ahs: bytes, data: memoryview) -> None:
        assert self.login is not None
        pdu = P.Pdu(bhs[0] & 0x3F, bool(bhs[0] & 0x40), bhs[1], bhs, ahs, data)
        self.out += self.login.handle(pdu)
        lm = self.login
        if lm.outcome is Outcome.FAILED:
            self._close(f"login failed: {lm.failure}")
        elif lm.outcome is Outcome.SUCCESS:
            self._enter_full_feature(lm)

    def _enter_full_feature(self, lm: LoginMachine) -> None:
        self.login = None
        self.full_feature = True
        self.params = lm.params
        self.discovery = lm.discovery
        self.statsn = (lm.statsn + 1) & 0xFFFFFFFF
        self.exp_cmdsn = lm.cmdsn
        self.max_recv = self.params.max_recv_dsl_target
        self.hd = 4 if self.params.header_digest else 0
        self.dd = 4 if self.params.data_digest else 0
        self.initiator_name = lm.initiator_name
        self.target = lm.target
        self.record = SessionRecord(
            lm.tsih, lm.initiator_name, lm.isid, lm.target.iqn if lm.target else None, self._close
        )
        if lm.target is not None:
            from cairn.scsi import Nexus

            self.backend = self.backend_for(lm.target)
            self.nexus = Nexus(
                initiator_port=f"{lm.initiator_name},i,0x{lm.isid.hex()}",
                target_port=f"{lm.target.iqn},t,0x{lm.target.tpgt:04x}",
                relative_target_port=lm.target.tpgt,
            )
            self.sessions.add(self.record)
            self.backend.nexus_added(self.nexus)
            lane = getattr(self.backend, "fast_lane", None)
            if lane is not None and not self.hd and not self.dd:
                self._fast = lane(0)
                self._fast_in = min(self.params.max_recv_dsl_initiator, self.params.max_burst)
        else:
            self.sessions.add(self.record)
        log.info(
            "event=login peer=%s initiator=%s target=%s tsih=%d discovery=%s "
            "digests=%s/%s mrdsl_i=%d burst=%d/%d immediate=%s initial_r2t=%s",
            self.peer,
            lm.initiator_name,
            lm.target.iqn if lm.target else "-",
            lm.tsih,
            lm.discovery,
            self.params.header_digest,
            self.params.data_digest,
            self.params.max_recv_dsl_initiator,
            self.params.first_burst,
            self.params.max_burst,
            self.params.immediate_data,
            self.params.initial_r2t,
        )

    # ------------------------------------------------------------------ helpers
    def _close(self, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.close_reason = reason
            log.info("event=connection_closing peer=%s reason=%r", self.peer, reason)

    def connection_lost(self) -> None:
        """The transport is gone: drop every task, end the I_T nexus."""
        self.closing = True
        for fr in self._pending_flush:
            fr.aborted = True
        self._pending_flush.clear()
        for w in self._writes.values():
            self._return_buffer(w)
        self._writes.clear()
        pre, self._prelent = self._prelent, None
        if pre is not None and self.backend is not None:
            self.backend.release_write_buffer(pre[0], pre[2])  # type: ignore[attr-defined]
        self._queued.clear()
        self._buffers.clear()
        self._buffered = 0
        self.out = []
        self.on_cold_reset = None  # the portal's callbacks refer back to us
        self.on_output = None
        if self.record is not None:
            self.sessions.remove(self.record)
            self.record = None
        if self.backend is not None and self.nexus is not None:
            self.backend.nexus_lost(self.nexus)
            self.backend = None

    def _next_statsn(self) -> int:
        s = self.statsn
        self.statsn = (s + 1) & 0xFFFFFFFF
        return s

    @property
    def _max_cmdsn(self) -> int:
        return (self.exp_cmdsn + CMD_WINDOW - 1) & 0xFFFFFFFF

    def _emit(self, bhs: bytes, data: bytes | memoryview = b"") -> None:
        self.out += P.frame(bhs, data, bool(self.hd), bool(self.dd))

    def _reject(self, bhs: bytes, reason: int) -> None:
        if not self.full_feature:
            return  # no StatSN yet: the connection is simply closed
        rest = struct.pack(
            ">IIIIIII", RESERVED, self._next_statsn(), self.exp_cmdsn, self._max_cmdsn, 0, 0, 0
        )
        hdr = P.build_bhs(P.Op.REJECT, 0x80, reason, 0, 48, _NO_LUN, RESERVED, rest)
        self._emit(hdr, bhs[:48])

    def _check_cmdsn(self, bhs: bytes, ahs: bytes, data: memoryview) -> bool:
        """True to process the command now; False if queued (gap) or dropped."""
        if bhs[0] & 0x40:  # immediate
            return True
        cmdsn = _I32.unpack_from(bhs, 24)[0]
        if cmdsn == self.exp_cmdsn:
            self.exp_cmdsn = (cmdsn + 1) & 0xFFFFFFFF
            return True
        if _serial_lt(self.exp_cmdsn, cmdsn) and not _serial_lt(self._max_cmdsn, cmdsn):
            if len(self._queued) < CMD_WINDOW:
                self._queued[cmdsn] = (bhs, ahs, memoryview(bytes(data)))
            return False
        log.warning(
            "event=cmdsn_outside_window peer=%s cmdsn=%d exp=%d max=%d",
            self.peer,
            cmdsn,
            self.exp_cmdsn,
            self._max_cmdsn,
        )
        return False

    def _run_queued(self) -> None:
        while self._queued and self.exp_cmdsn in self._queued:
            bhs, ahs, data = self._queued.pop(self.exp_cmdsn)
            self._dispatch(bhs, ahs, data)

    # ------------------------------------------------------------------ SCSI
    def _scsi_command(self, bhs: bytes, ahs: bytes, data: memoryview) -> None:
        if self.discovery or self.backend is None:
            self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
            return
        if not self._check_cmdsn(bhs, ahs, data):
            return
        self._scsi_command_ordered(bhs, ahs, data)
        if self._queued:
            self._run_queued()

    def _fast_command(self, bhs: bytes, data: memoryview, batch: bool = False) -> bool:
        """A plain READ or WRITE (10)/(16) to LUN 0, in order, with all its data: run
        through the unit's fast lane and answered here.  False: nothing was done and the
        full path takes the command (it handles every case this one declines).  With
        ``batch`` (``data`` stays valid until the end of ``feed``) a write may wait for
        the next ones to be written together with them."""
        op, flags, ahs, lun, itt, edtl, cmdsn, cdb = _FAST_CMD.unpack(bhs)
        if (
            op & 0x40
            or ahs
            or lun
            or cmdsn != self.exp_cmdsn
            or self._queued
            or itt in self._writes
        ):
            return False
        rw = flags & 0xE0
        if rw == 0xC0 and not data:  # F and R
            if self._batch:
                self._write_batch()
            extents = self._fast.fast_read(cdb, edtl, self.nexus)
            if extents is None:
                return False
            self.exp_cmdsn = (cmdsn + 1) & 0xFFFFFFFF
            stats = self.stats
            stats["commands"] += 1
            stats["read_bytes"] += edtl
            if edtl > self._fast_in:
                self._data_in(itt, _NO_LUN, extents, edtl, True, STATUS_GOOD, 0x80, 0, whole=True)
                return True
            # one Data-In with the status (what ``_data_in`` sends; no padding: whole blocks)
            statsn = self.statsn
            self.statsn = (statsn + 1) & 0xFFFFFFFF
            exp = self.exp_cmdsn
            out = self.out
            out.append(
                _FAST_DATA_IN.pack(
                    P.Op.DATA_IN,
                    0x81,
                    0,
                    STATUS_GOOD,
                    edtl,
                    _NO_LUN,
                    itt,
                    RESERVED,
                    statsn,
                    exp,
                    (exp + CMD_WINDOW - 1) & 0xFFFFFFFF,
                    0,
                    0,
                    0,
                )
            )
            out += extents
            return True
        if rw == 0xA0 and edtl and len(data) == edtl:  # F and W, all immediate data
            fast = self._fast
            lba = fast.plain_write(cdb, edtl, self.nexus)
            if lba < 0:
                return False
            self.exp_cmdsn = (cmdsn + 1) & 0xFFFFFFFF
            stats = self.stats
            stats["commands"] += 1
            stats["write_bytes"] += edtl
            if self._batch and (
                lba != self._batch_lba + self._batch_bytes // fast.block_size
                or self._batch_bytes + edtl > BATCH_MAX
            ):
                self._write_batch()
            if not self._batch:
                self._batch_lba = lba
            self._batch.append((itt, cdb, data))
            self._batch_bytes += edtl
            if not batch:  # ``data`` is not kept beyond this call
                self._write_batch()
            return True
        return False

    def _fast_reads(self, view: memoryview, pos: int, n: int) -> int:
        """Answer the plain READ (10)/(16) commands at ``pos`` and right after it in
        ``view`` (each a whole 48-byte PDU) from the file the unit reads from: one
        Data-In PDU with status each, the data of those that follow each other on the
        medium gathered into one ``ReadRun``.  Makes the same checks as
        ``_fast_command`` and ``LogicalUnit.fast_read``, those of the unit once per run
        (``read_window``); stops at the first PDU that is anything else or fails one,
        which the caller then runs through the usual path.  Returns the position after
        the last command it took."""
        if self._queued or self.closing:
            return pos
        window = self._fast.read_window(self.nexus)
        if window is None:
            return pos
        if self._batch:
            self._write_batch()
        fd, shift, num_blocks, max_transfer = window
        writes = self._writes
        fast_in = self._fast_in
        exp = self.exp_cmdsn
        statsn = self.statsn
        out = self.out
        pack = _FAST_DATA_IN.pack
        run: ReadRun | None = None
        run_end = -1
        start = pos
        read_bytes = 0
        while n - pos >= 48 and view[pos] == 0x01:
            cop = view[pos + 32]
            if cop == 0x28:
                _, flags, sizes, lun, itt, edtl, cmdsn, _, cflags, lba, count = _READ10.unpack_from(
                    view, pos
                )
            elif cop == 0x88:
                _, flags, sizes, lun, itt, edtl, cmdsn, _, cflags, lba, count = _READ16.unpack_from(
                    view, pos
                )
            else:
                break
            if (
                flags & 0xE0 != 0xC0  # F and R, not W
                or sizes  # an AHS or data
                or lun
                or cmdsn != exp
                or itt in writes
                or cflags
                or not 0 < count <= max_transfer
                or count << shift != edtl
                or edtl > fast_in
                or lba + count > num_blocks
            ):
                break
            exp = (cmdsn + 1) & 0xFFFFFFFF
            header = pack(
                P.Op.DATA_IN, 0x81, 0, STATUS_GOOD, edtl, _NO_LUN, itt, RESERVED,
                statsn, exp, (exp + CMD_WINDOW - 1) & 0xFFFFFFFF, 0, 0, 0,
            )  # fmt: skip
            statsn = (statsn + 1) & 0xFFFFFFFF
            offset = lba << shift
            if (
                run is None
                or offset != run_end
                or run.total + edtl > _READ_RUN_MAX
                or len(run.lengths) >= _READ_RUN_PDUS
            ):
                run = ReadRun(fd, offset)
                out.append(run)
            run.add(header, edtl)
            run_end = offset + edtl
            read_bytes += edtl
            pos += 48
        if pos != start:
            self.exp_cmdsn = exp
            self.statsn = statsn
            self._idle = 0.0
            stats = self.stats
            stats["commands"] += (pos - start) // 48
            stats["read_bytes"] += read_bytes
        return pos

    def _write_batch(self) -> None:
        """Write the plain writes gathered in ``_batch`` (back to back on the medium) as
        one, then answer each; after a store error each goes through the full path,
        which writes it again and reports the outcome."""
        batch = self._batch
        total = self._batch_bytes
        self._batch = []
        self._batch_bytes = 0
        fast = self._fast
        if len(batch) == 1:
            ok = fast.write_blocks(self._batch_lba, batch[0][2])
        else:
            # gathered into a buffer the store lends, so that it copies nothing more
            lent = fast.write_buffer(total)
            buf: Any = lent[1] if lent is not None else self._take_buffer(total)
            pos = 0
            for _itt, _cdb, data in batch:
                n = len(data)
                buf[pos : pos + n] = data
                pos += n
            try:
                ok = fast.write_blocks(self._batch_lba, memoryview(buf)[:total])
            finally:
                if lent is not None:
                    fast.release_write_buffer(lent[0])
                else:
                    self._give_buffer(buf)
        if type(ok) is not bool:  # an asynchronous device: each answer waits for it
            self._hold_batch(ok, batch)
            return
        for itt, cdb, data in batch:
            if ok:
                self._scsi_response(itt, STATUS_GOOD, b"", 0x80, 0)
            else:
                n = len(data)
                self._execute_write(0, itt, _NO_LUN, cdb, data, n, False, n)

    def _hold_batch(self, pending: Any, batch: list[tuple[int, bytes, memoryview]]) -> None:
        """Answer the gathered writes once the device finished them (the device keeps
        its own copy of the data); an abort or a lost connection drops the answers."""
        held = [
            (FlushRequest(0, itt, None, len(data), _NO_LUN, False, len(data)), cdb)
            for itt, cdb, data in batch
        ]
        for h, _cdb in held:
            self._pending_flush.add(h)

        def done(p: Any) -> None:
            if self.closing:
                return
            for h, cdb in held:
                if h.aborted:
                    continue
                self._pending_flush.discard(h)
                if p.error is None:  # what the synchronous batch answers
                    self._scsi_response(h.itt, STATUS_GOOD, b"", 0x80, 0)
                else:
                    result = self._fast.error_result(p.error, cdb)
                    self._finish(0, h.itt, _NO_LUN, result, h.edtl, False, h.spdtl)
            if self.on_output is not None:
                self.on_output()

        pending.add_done_callback(done)

    def _scsi_command_ordered(self, bhs: bytes, ahs: bytes, data: memoryview) -> None:
        _, flags, _, _, _, _, lun_raw, itt, edtl, _, _, cdb = _CMD.unpack(bhs)
        if ahs:
            cdb = cdb + _extended_cdb(ahs)
        lun = P.decode_lun(lun_raw)
        write = bool(flags & 0x20)
        read = bool(flags & 0x40)
        self.stats["commands"] += 1
        if itt in self._writes:
            self._reject(bhs, P.RejectReason.TASK_IN_PROGRESS)
            return
        backend = self.backend
        assert backend is not None
        dsl = len(data)
        if not write or edtl == 0:
            if dsl:  # data with no write flag: a protocol error
                self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
                return
            spdtl = backend.data_out_length(lun, cdb) if not read else None
            if spdtl:  # the CDB wants data the initiator will not send
                self._execute_write(lun, itt, lun_raw, cdb, memoryview(b""), 0, read, spdtl)
                return
            self._finish(
                lun, itt, lun_raw, backend.execute(lun, cdb, None, self.nexus), edtl, read, None
            )
            return
        if dsl and not self.params.immediate_data:
            self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
            return
        if dsl > edtl or dsl > self.params.first_burst:
            self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
            return
        spdtl = backend.data_out_length(lun, cdb)
        if dsl == edtl:  # everything arrived as immediate data: no copy
            self.stats["write_bytes"] += dsl
            self._execute_write(lun, itt, lun_raw, cdb, data, edtl, read, spdtl)
            return
        if flags & 0x80 or self.params.initial_r2t:
            unsol_end = dsl
        else:
            unsol_end = min(self.params.first_burst, edtl)
        pre = self._prelent
        if pre is not None and pre[0] == lun and pre[1] == itt and len(pre[3]) == edtl:
            # the immediate data was received in place (``command_sink``)
            self._prelent = None
            lent: Any = (pre[2], pre[3])
            buf: Any = pre[3]
        else:
            lend = getattr(backend, "write_buffer", None)
            lent = lend(lun, edtl) if lend is not None else None
            buf = lent[1] if lent is not None else self._take_buffer(edtl)
            buf[:dsl] = data
        w = _Write(
            itt, lun, lun_raw, cdb, edtl, buf, dsl, unsol_end, unsol_end, 0, {}, 0, spdtl, read
        )
        w.unsol_next = dsl
        w.lent = lent[0] if lent is not None else None
        self._writes[itt] = w
        self._send_r2ts(w)

    def _send_r2ts(self, w: _Write) -> None:
        p = self.params
        while w.next_offset < w.edtl and len(w.outstanding) < p.max_outstanding_r2t:
            length = min(p.max_burst, w.edtl - w.next_offset)
            ttt = self._ttt_next
            self._ttt_next = (ttt + 1) & 0x7FFFFFFF or 1
            w.outstanding[ttt] = [w.next_offset, length, 0, 0]
            hdr = _R2T.pack(
                P.Op.R2T,
                0x80,
                0,
                0,
                0,
                b"\0\0\0",
                w.lun_raw,
                w.itt,
                ttt,
                self.statsn,
                self.exp_cmdsn,
                self._max_cmdsn,
                w.r2tsn,
                w.next_offset,
                length,
            )
            w.r2tsn += 1
            w.next_offset += length
            self._emit(hdr)

    @property
    def awaiting_data_out(self) -> bool:
        """Writes in progress wait for Data-Out PDUs."""
        return bool(self._writes)

    def data_out_sink(self, bhs: bytes) -> memoryview | None:
        """Where the payload of the Data-Out whose header is ``bhs`` belongs, when the
        transport may receive it straight there: a Data-Out of a write in progress that
        is in order and in its window, with no digests.  None: feed it as usual (which
        also handles every error).  Changes nothing."""
        if self.hd or self.dd or self.closing or not self.full_feature:
            return None
        itt, ttt, _exp_statsn, _datasn, offset = _DOUT.unpack_from(bhs, 8)
        w = self._writes.get(itt)
        if w is None or w.out_of_sequence:
            return None
        n = int.from_bytes(bhs[5:8], "big")
        if ttt == RESERVED:
            if offset != w.unsol_next or offset + n > w.unsolicited_end:
                return None
        else:
            r2t = w.outstanding.get(ttt)
            if r2t is None or offset != r2t[0] + r2t[2] or offset + n > r2t[0] + r2t[1]:
                return None
        return memoryview(w.buf)[offset : offset + n]

    def command_sink(self, bhs: bytes) -> memoryview | None:
        """Where the immediate data of the write command whose header is ``bhs`` may be
        received: the start of a buffer the backend lends for the whole write, kept for
        the command (``command_received``).  None: feed it as usual."""
        if self.hd or self.dd or self.closing or self._fast is None or self._prelent:
            return None
        op, flags, ahs, lun_raw, itt, edtl, cmdsn, cdb = _FAST_CMD.unpack(bhs)
        dsl = int.from_bytes(bhs[5:8], "big")
        if ahs or flags & 0x60 != 0x20 or not self.params.immediate_data:
            return None
        if not 0 < dsl <= edtl or dsl > self.params.first_burst:
            return None
        lun = P.decode_lun(bhs[8:16])
        lend = getattr(self.backend, "write_buffer", None)
        lent = lend(lun, edtl) if lend is not None else None
        if lent is None:
            return None
        self._prelent = (lun, itt, lent[0], lent[1])
        return lent[1][:dsl]

    def command_received(self, bhs: bytes, data: memoryview) -> None:
        """The immediate data of a command arrived in the buffer ``command_sink`` gave."""
        self._idle = 0.0
        try:
            if self._fast is None or not self._fast_command(bhs, data):
                self._dispatch(bhs, b"", data)
        except Exception:  # a bug must cost one connection, never the daemon
            log.exception("event=pdu_error peer=%s opcode=0x01", self.peer)
            self._close("internal error while handling a SCSI command")
        finally:
            pre = self._prelent
            if pre is not None:  # the command did not keep the buffer
                self._prelent = None
                if self.backend is not None:
                    self.backend.release_write_buffer(pre[0], pre[2])  # type: ignore[attr-defined]

    def data_out_received(self, bhs: bytes, data: memoryview) -> None:
        """The payload of a Data-Out arrived in the buffer ``data_out_sink`` gave."""
        self._idle = 0.0
        try:
            self._data_out(bhs, data, in_place=True)
        except Exception:  # a bug must cost one connection, never the daemon
            log.exception("event=pdu_error peer=%s opcode=0x05", self.peer)
            self._close("internal error while handling a Data-Out")

    def _data_out(self, bhs: bytes, data: memoryview, in_place: bool = False) -> None:
        itt, ttt, _exp_statsn, datasn, offset = _DOUT.unpack_from(bhs, 8)
        w = self._writes.get(itt)
        if w is None:
            # data for a task that ended (aborted, reset): silently dropped (RFC 7143 11.7)
            return
        n = len(data)
        if ttt == RESERVED:
            if offset + n > w.unsolicited_end:
                self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
                self._close("unsolicited data beyond FirstBurstLength")
                return
            if datasn != w.unsol_datasn or offset != w.unsol_next:
                w.out_of_sequence = True
            w.unsol_datasn += 1
            w.unsol_next = offset + n
        else:
            r2t = w.outstanding.get(ttt)
            if r2t is None or not (r2t[0] <= offset and offset + n <= r2t[0] + r2t[1]):
                self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
                self._close("Data-Out does not match its R2T (transfer tag, offset or length)")
                return
            # DataPDUInOrder=Yes: each PDU starts where the previous one ended, so the
            # buffer has no gap when the byte count is complete.
            if datasn != r2t[3] or offset != r2t[0] + r2t[2]:
                w.out_of_sequence = True
            r2t[3] += 1
            r2t[2] += n
            if r2t[2] >= r2t[1]:
                del w.outstanding[ttt]
        if not in_place:
            w.buf[offset : offset + n] = data
        w.got += n
        self.stats["write_bytes"] += n
        if w.got >= w.edtl and not w.outstanding:
            del self._writes[itt]
            try:
                self._complete_write(w)
            finally:
                self._return_buffer(w)
        elif w.next_offset < w.edtl:
            self._send_r2ts(w)

    def _complete_write(self, w: _Write) -> None:
        if w.out_of_sequence:
            # RFC 7143 7.9/7.8: a DataSN out of order is handled as a data digest error
            # (so is a Data-Out that does not start where the previous one ended, with
            # DataPDUInOrder=Yes); at ErrorRecoveryLevel 0 the task ends with CHECK
            # CONDITION once all its data has arrived, and the connection carries on.
            log.warning("event=data_out_sequence_error peer=%s itt=0x%08x", self.peer, w.itt)
            self._scsi_response(w.itt, STATUS_CHECK_CONDITION, _SENSE_DATA_SEQUENCE, 0x80, 0)
            return
        self._execute_write(
            w.lun, w.itt, w.lun_raw, w.cdb, memoryview(w.buf), w.edtl, w.read, w.spdtl
        )

    # Write buffers are reused: a 1 MiB bytearray per command costs an allocation and
    # zeroing as large as the data.  Safe because the store copies the data before
    # ``execute`` returns; a buffer is only handed out again after that.
    def _take_buffer(self, size: int) -> bytearray:
        free = self._buffers.get(size)
        if free:
            self._buffered -= size
            return free.pop()
        return bytearray(size)

    def _return_buffer(self, w: _Write) -> None:
        """The write ran or was dropped: its buffer goes back to whoever lent it."""
        if w.lent is None:
            self._give_buffer(w.buf)
        elif self.backend is not None:
            self.backend.release_write_buffer(w.lun, w.lent)  # type: ignore[attr-defined]
        w.lent = None

    def _give_buffer(self, buf: bytearray) -> None:
        size = len(buf)
        if self._buffered + size <= BUFFER_POOL_BYTES:
            self._buffers.setdefault(size, []).append(buf)
            self._buffered += size

    def _execute_write(
        self,
        lun: int,
        itt: int,
        lun_raw: bytes,
        cdb: bytes,
        data: memoryview,
        edtl: int,
        read: bool,
        spdtl: int | None,
    ) -> None:
        backend = self.backend
        assert backend is not None
        if spdtl is not None and spdtl != edtl:
            # The transfer stops at the smaller of the two lengths: the SCSI layer says
            # what to run (a shortened CDB) or how the command ends; the residual is
            # reported either way.
            fitted = backend.fit_to_transfer(lun, cdb, edtl)
            if not isinstance(fitted, bytes):
                self._finish(lun, itt, lun_raw, fitted, edtl, read, spdtl)
                return
            cdb = fitted
            data = data[: min(edtl, spdtl)] if spdtl else None  # type: ignore[assignment]
        result = backend.execute(lun, cdb, data, self.nexus)
        self._finish(lun, itt, lun_raw, result, edtl, read, spdtl)

    def _finish(
        self,
        lun: int,
        itt: int,
        lun_raw: bytes,
        result: Any,
        edtl: int,
        read: bool,
        spdtl: int | None,
    ) -> None:
        pending = result.pending if result is not None else None
        if pending is not None:
            held = FlushRequest(lun, itt, None, edtl, lun_raw, read, spdtl)
            self._pending_flush.add(held)
            pending.add_done_callback(lambda p: self._device_done(held, p.value))
            return
        if result is not None and result.flush and result.status == STATUS_GOOD:
            fr = FlushRequest(lun, itt, result, edtl, lun_raw, read, spdtl)
            self._pending_flush.add(fr)
            self.flush_requests.append(fr)
            return
        self._respond(itt, lun_raw, result, edtl, read, spdtl)

    def _device_done(self, held: FlushRequest, result: Any) -> None:
        """An asynchronous device finished a command: answer it (unless it was aborted
        or the connection went away meanwhile)."""
        if held.aborted or self.closing:
            return
        self._pending_flush.discard(held)
        self._finish(held.lun, held.itt, held.lun_raw, result, held.edtl, held.read, held.spdtl)
        if self.on_output is not None:
            self.on_output()

    def flush_done(self, fr: FlushRequest, error: Exception | None = None) -> None:
        """A flush requested through ``flush_requests`` finished (in a worker)."""
        if fr.aborted or self.closing:
            return
        self._pending_flush.discard(fr)
        result = fr.result
        if error is not None:
            from cairn.scsi import flush_failed_result

            result = flush_failed_result(error)
        self._respond(fr.itt, fr.lun_raw, result, fr.edtl, fr.read, fr.spdtl)

    def _respond(
        self, itt: int, lun_raw: bytes, result: Any, edtl: int, read: bool, spdtl: int | None
    ) -> None:
        """Send data-in (phase-collapsed when possible) and the status of a command."""
        status = result.status
        data = result.data
        flags = 0x80
        residual = 0
        if spdtl is not None and spdtl != edtl:
            flags |= 0x04 if spdtl > edtl else 0x02
            residual = abs(spdtl - edtl)
        if data is not None and read:
            size = _data_len(data)
            send = min(size, edtl)
            if size > edtl:
                flags, residual = 0x80 | 0x04, size - edtl
            elif size < edtl:
                flags, residual = 0x80 | 0x02, edtl - size
            if send:
                self.stats["read_bytes"] += send
                collapse = status == STATUS_GOOD
                self._data_in(
                    itt, lun_raw, data, send, collapse, status, flags, residual, whole=size == send
                )
                if collapse:
                    return
        elif data is not None and _data_len(data):
            # data-in for a command that the initiator did not flag as a read
            flags, residual = 0x80 | 0x04, _data_len(data)
        elif read and edtl:
            flags, residual = 0x80 | 0x02, edtl
        self._scsi_response(itt, status, result.sense, flags, residual)

    def _scsi_response(
        self, itt: int, status: int, sense: bytes, flags: int, residual: int
    ) -> None:
        payload = (len(sense).to_bytes(2, "big") + sense) if sense else b""
        hdr = _RSP.pack(
            P.Op.SCSI_RSP,
            flags,
            0,
            status,
            0,
            len(payload).to_bytes(3, "big"),
            _NO_LUN,
            itt,
            0,
            self._next_statsn(),
            self.exp_cmdsn,
            self._max_cmdsn,
            0,
            0,
            residual,
        )
        self._emit(hdr, payload)

    def _data_in(
        self,
        itt: int,
        lun_raw: bytes,
        data: Any,
        send: int,
        collapse: bool,
        status: int,
        rflags: int,
        residual: int,
        whole: bool = False,
    ) -> None:
        """Send ``send`` bytes of ``data`` (bytes, or a list of buffers and extents) in
        Data-In PDUs, the status collapsed into the last one when ``collapse``.
        ``whole``: ``data`` is exactly ``send`` bytes."""
        seg_max = self.params.max_recv_dsl_initiator
        burst = self.params.max_burst
        if isinstance(data, list):
            pieces: list[Any] = data
            if self.dd:
                pieces = [
                    b"".join(
                        self._read_extent(e) if isinstance(e, Extent) else bytes(e) for e in data
                    )
                ]
        else:
            pieces = [data]
        if send <= seg_max and send <= burst:  # one PDU: most reads
            chunk = pieces if whole else _Chunker(pieces).take(send)
            if collapse:
                hdr = _DATA_IN.pack(
                    P.Op.DATA_IN,
                    0x81 | (rflags & 0x06),
                    0,
                    status,
                    0,
                    send.to_bytes(3, "big"),
                    lun_raw,
                    itt,
                    RESERVED,
                    self._next_statsn(),
                    self.exp_cmdsn,
                    self._max_cmdsn,
                    0,
                    0,
                    residual,
                )
            else:
                hdr = _DATA_IN.pack(
                    P.Op.DATA_IN,
                    0x80,
                    0,
                    0,
                    0,
                    send.to_bytes(3, "big"),
                    lun_raw,
                    itt,
                    RESERVED,
                    0,
                    self.exp_cmdsn,
                    self._max_cmdsn,
                    0,
                    0,
                    0,
                )
            self._emit_chunks(hdr, chunk, send)
            return
        datasn = 0
        offset = 0
        burst_left = burst
        it = _Chunker(pieces)
        while offset < send:
            n = min(seg_max, send - offset, burst_left)
            chunk = it.take(n)
            burst_left -= n
            last = offset + n >= send
            f = 0x80 if (last or burst_left == 0) else 0
            if burst_left == 0:
                burst_left = burst
            if last and collapse:
                hdr = _DATA_IN.pack(
                    P.Op.DATA_IN,
                    f | 0x01 | (rflags & 0x06),
                    0,
                    status,
                    0,
                    n.to_bytes(3, "big"),
                    lun_raw,
                    itt,
                    RESERVED,
                    self._next_statsn(),
                    self.exp_cmdsn,
                    self._max_cmdsn,
                    datasn,
                    offset,
                    residual,
                )
            else:
                hdr = _DATA_IN.pack(
                    P.Op.DATA_IN,
                    f,
                    0,
                    0,
                    0,
                    n.to_bytes(3, "big"),
                    lun_raw,
                    itt,
                    RESERVED,
                    0,
                    self.exp_cmdsn,
                    self._max_cmdsn,
                    datasn,
                    offset,
                    0,
                )
            self._emit_chunks(hdr, chunk, n)
            datasn += 1
            offset += n

    def _emit_chunks(self, hdr: bytes, chunk: list[Any], n: int) -> None:
        if self.hd:
            self.out += (hdr, P.crc32c(hdr).to_bytes(4, "little"))
        else:
            self.out.append(hdr)
        self.out += chunk
        pad = (-n) & 3
        if pad:
            self.out.append(bytes(pad))
        if self.dd:
            crc = 0
            for c in chunk:
                crc = P.crc32c(c, crc)
            if pad:
                crc = P.crc32c(bytes(pad), crc)
            self.out.append(crc.to_bytes(4, "little"))

    # ------------------------------------------------------------------ NOP
    def _nop_out(self, bhs: bytes, data: memoryview) -> None:
        itt, ttt = struct.unpack_from(">II", bhs, 16)
        if itt == RESERVED:
            if ttt != RESERVED and ttt == self._ping_ttt:
                self._ping_ttt = None
            if not bhs[0] & 0x40:
                self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
            return
        if not self._check_cmdsn(bhs, b"", data):
            return
        echo = bytes(data[: self.params.max_recv_dsl_initiator])
        rest = struct.pack(
            ">IIIIIII", RESERVED, self._next_statsn(), self.exp_cmdsn, self._max_cmdsn, 0, 0, 0
        )
        self._emit(P.build_bhs(P.Op.NOP_IN, 0x80, 0, 0, len(echo), bhs[8:16], itt, rest), echo)
        if self._queued:
            self._run_queued()

    def tick(self, elapsed: float) -> None:
        """Called periodically: ping an idle initiator, drop one that stopped answering."""
        if not self.full_feature or self.closing:
            return
        self._idle += elapsed
        if self._ping_ttt is not None:
            self._ping_age += elapsed
            if self._ping_age >= self._nop_timeout:
                self._close(f"no NOP-Out answer within {self._nop_timeout:.0f} s")
            return
        if self._nop_interval and self._idle >= self._nop_interval:
            ttt = self._ttt_next
            self._ttt_next = (ttt + 1) & 0x7FFFFFFF or 1
            self._ping_ttt = ttt
            self._ping_age = 0.0
            rest = struct.pack(
                ">IIIIIII", ttt, self.statsn, self.exp_cmdsn, self._max_cmdsn, 0, 0, 0
            )
            self._emit(P.build_bhs(P.Op.NOP_IN, 0x80, 0, 0, 0, _NO_LUN, RESERVED, rest))

    # ------------------------------------------------------------------ task management
    def _task_mgmt(self, bhs: bytes) -> None:
        if not self._check_cmdsn(bhs, b"", memoryview(b"")):
            return
        function = bhs[1] & 0x7F
        itt, ref_itt = struct.unpack_from(">II", bhs, 16)
        lun = P.decode_lun(bhs[8:16])
        response = P.TmfResponse.COMPLETE
        backend = self.backend
        cold = False
        if backend is None:
            response = P.TmfResponse.REJECTED
        elif function == P.TmfFunction.ABORT_TASK:
            if not self._abort(lambda i, _l: i == ref_itt):
                # Not running: if it has not arrived yet (RefCmdSN in the window, before
                # this request) it counts as received and aborted (RFC 7143 11.5.1).
                ref_cmdsn, tmf_cmdsn = _I32.unpack_from(bhs, 32)[0], _I32.unpack_from(bhs, 24)[0]
                if self._queued.pop(ref_cmdsn, None) is None and not (
                    not _serial_lt(ref_cmdsn, self.exp_cmdsn) and _serial_lt(ref_cmdsn, tmf_cmdsn)
                ):
                    response = P.TmfResponse.TASK_DOES_NOT_EXIST
        elif function in (P.TmfFunction.ABORT_TASK_SET, P.TmfFunction.CLEAR_TASK_SET):
            if not backend.has_lun(lun):
                response = P.TmfResponse.LUN_DOES_NOT_EXIST
            else:
                self._abort(lambda _i, lu: lu == lun)
        elif function == P.TmfFunction.LOGICAL_UNIT_RESET:
            if not backend.has_lun(lun):
                response = P.TmfResponse.LUN_DOES_NOT_EXIST
            else:
                self._abort(lambda _i, lu: lu == lun)
                backend.lun_reset(lun, self.nexus)
        elif function in (P.TmfFunction.TARGET_WARM_RESET, P.TmfFunction.TARGET_COLD_RESET):
            self._abort(lambda _i, _l: True)
            backend.target_reset(self.nexus)
            cold = function == P.TmfFunction.TARGET_COLD_RESET
        elif function == P.TmfFunction.CLEAR_ACA:
            response = P.TmfResponse.NOT_SUPPORTED
        else:
            response = P.TmfResponse.NOT_SUPPORTED
        log.info(
            "event=task_management peer=%s function=%d lun=%d response=%d",
            self.peer,
            function,
            lun,
            response,
        )
        rest = struct.pack(
            ">IIIIIII", 0, self._next_statsn(), self.exp_cmdsn, self._max_cmdsn, 0, 0, 0
        )
        self._emit(P.build_bhs(P.Op.TASK_MGMT_RSP, 0x80, response, 0, 0, _NO_LUN, itt, rest))
        if cold:
            if self.on_cold_reset is not None:
                self.on_cold_reset()
            self._close("target cold reset")
        if self._queued:
            self._run_queued()

    def _abort(self, match: Callable[[int, int], bool]) -> bool:
        found = False
        for itt, w in list(self._writes.items()):
            if match(itt, w.lun):
                del self._writes[itt]
                self._return_buffer(w)
                found = True
        for fr in list(self._pending_flush):
            if match(fr.itt, fr.lun):
                fr.aborted = True
                self._pending_flush.discard(fr)
                found = True
        return found

    # ------------------------------------------------------------------ text, logout
    def _text(self, bhs: bytes, data: memoryview) -> None:
        if not self._check_cmdsn(bhs, b"", data):
            return
        pdu_itt = _I32.unpack_from(bhs, 16)[0]
        self._text_buf += data
        final = not (bhs[1] & 0x40)
        answer: list[tuple[str, str]] = []
        if final:
            try:
                pairs = parse_text(self._text_buf)
            except TextError as e:
                self._text_buf = bytearray()
                log.warning("event=bad_text peer=%s error=%r", self.peer, str(e))
                self._reject(bhs, P.RejectReason.PROTOCOL_ERROR)
                return
            self._text_buf = bytearray()
            for key, value in pairs:
                if key == "SendTargets":
                    if not self.discovery and value == "All":
                        value = self.target.iqn if self.target else ""
                    answer += send_targets(self.directory, self.initiator_name, self.peer, value)
                else:
                    answer.append((key, "NotUnderstood"))
        payload = encode_text(answer)[: self.params.max_recv_dsl_initiator]
        rest = struct.pack(
            ">IIIIIII", RESERVED, self._next_statsn(), self.exp_cmdsn, self._max_cmdsn, 0, 0, 0
        )
        self._emit(
            P.build_bhs(
                P.Op.TEXT_RSP, 0x80 if final else 0x40, 0, 0, len(payload), _NO_LUN, pdu_itt, rest
            ),
            payload,
        )
        if self._queued:
            self._run_queued()

    def _logout(self, bhs: bytes) -> None:
        if not self._check_cmdsn(bhs, b"", memoryview(b"")):
            return
        reason = bhs[1] & 0x7F
        itt = _I32.unpack_from(bhs, 16)[0]
        response = 0
        if reason == 2:
            response = 2  # connection recovery is not supported (ErrorRecoveryLevel=0)
        rest = struct.pack(
            ">IIIIIHHI", 0, self._next_statsn(), self.exp_cmdsn, self._max_cmdsn, 0, 0, 0, 0
        )
        self._emit(P.build_bhs(P.Op.LOGOUT_RSP, 0x80, response, 0, 0, _NO_LUN, itt, rest))
        if response == 0:
            self._close("logout")


class _Chunker:
    """Cuts a list of buffers and extents into consecutive pieces of given sizes."""

    __slots__ = ("items", "i", "off")

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.i = 0
        self.off = 0

    def take(self, n: int) -> list[Any]:
        out: list[Any] = []
        items = self.items
        while n:
            item = items[self.i]
            if isinstance(item, Extent):
                avail = item.length - self.off
                k = min(n, avail)
                out.append(
                    Extent(item.fd, item.offset + self.off, k)
                    if (self.off or k != item.length)
                    else item
                )
            else:
                avail = len(item) - self.off
                k = min(n, avail)
                out.append(
                    memoryview(item)[self.off : self.off + k]
                    if (self.off or k != len(item))
                    else item
                )
            n -= k
            if k == avail:
                self.i += 1
                self.off = 0
            else:
                self.off += k
        return out


def _data_len(data: Any) -> int:
    if isinstance(data, list):
        return sum(e.length if isinstance(e, Extent) else len(e) for e in data)
    return len(data)


def _extended_cdb(ahs: bytes) -> bytes:
    """Bytes 17.. of a CDB longer than 16 bytes, from an Extended CDB AHS (type 1)."""
    pos = 0
    while pos + 4 <= len(ahs):
        length = int.from_bytes(ahs[pos : pos + 2], "big")
        kind = ahs[pos + 2]
        if kind == 1:
            return ahs[pos + 4 : pos + 3 + length]
        pos += 4 + length + ((-(length + 3)) & 3)
    return b""


def _pread_extent(e: Extent) -> bytes:
    import os

    if e.fd is None:
        return bytes(e.length)
    return os.pread(e.fd, e.length, e.offset)


__all__ = ["Connection", "FlushRequest", "encode_text"]
