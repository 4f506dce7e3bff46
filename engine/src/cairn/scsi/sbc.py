"""Block commands (SBC-3): READ, WRITE, VERIFY, WRITE SAME, UNMAP, COMPARE AND WRITE,
GET LBA STATUS, SYNCHRONIZE CACHE, PRE-FETCH, READ CAPACITY, READ DEFECT DATA.

``BlockCommands`` is a mixin of ``LogicalUnit``: every handler takes the CDB, the
data-out buffer and the nexus and returns a ``ScsiResult`` or raises ``ScsiError``.
The READ and WRITE paths are kept short: one ``struct`` unpack, a range check, one
device call.
"""

from __future__ import annotations

import struct
from typing import Any

from ..blockdev import BlockDevice, Buffer, Pending
from .common import Nexus, ScsiResult
from .constants import (
    INVALID_FIELD_IN_INFORMATION_UNIT,
    MISCOMPARE_DURING_VERIFY,
    Asc,
    SenseKey,
    Status,
)
from .sense import (
    ScsiError,
    invalid_cdb,
    invalid_param,
    lba_out_of_range,
    param_length_error,
)

GOOD = Status.GOOD

_RW6 = struct.Struct(">I")
_RW10 = struct.Struct(">xxIxH")
_RW12 = struct.Struct(">xxII")
_RW16 = struct.Struct(">xxQI")
_CAW = struct.Struct(">xxQxxxB")
_WS16 = struct.Struct(">xxQI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_UNMAP_DESC = struct.Struct(">QI4x")
_LBA_STATUS = struct.Struct(">QIB3x")

# WRITE SAME writes its pattern at most this many bytes at a time.
_WRITE_SAME_CHUNK = 1 << 20
# GET LBA STATUS returns at most this many descriptors.
_MAX_LBA_STATUS_DESCRIPTORS = 512

DataOut = Buffer | None


def _read_result(data: Any) -> ScsiResult:
    return ScsiResult(GOOD, data=data)


def _first_difference(a: Buffer, b: Buffer) -> int:
    """Offset of the first byte where two equally long buffers differ (-1 if none)."""
    va, vb = memoryview(a).cast("B"), memoryview(b).cast("B")
    n = len(va)
    step = 4096
    for start in range(0, n, step):
        end = min(n, start + step)
        if va[start:end] != vb[start:end]:
            for i in range(start, end):
                if va[i] != vb[i]:
                    return i
    return -1


class BlockCommands:
    """The SBC handlers; the attributes below are set up by ``LogicalUnit``."""

    device: BlockDevice
    block_size: int
    num_blocks: int
    thin: bool
    max_transfer: int
    max_compare_and_write: int
    max_unmap_lbas: int
    max_unmap_descriptors: int
    max_write_same: int
    _wce: bool
    _write_protect: Asc | None

    # ------------------------------------------------------------------ helpers
    def _check_range(self, lba: int, count: int) -> None:
        if lba + count > self.num_blocks:
            raise lba_out_of_range()

    def _check_writable(self) -> None:
        wp = self._write_protect
        if wp is not None:
            raise ScsiError(SenseKey.DATA_PROTECT, wp)

    def _written(self, done: Pending | None, flush: bool) -> ScsiResult:
        """GOOD once the device finished ``done`` (None: it already has)."""
        if done is None:
            return ScsiResult(GOOD, flush=flush)
        return ScsiResult(GOOD, pending=done.then(lambda _: ScsiResult(GOOD, flush=flush)))

    def _with_data(self, lba: int, count: int, fn: Any) -> ScsiResult:
        """``fn(current data)`` -> ScsiResult, now or once an asynchronous device sent
        the data (a ScsiResult that is itself pending is waited for)."""
        got = self.device.read(lba, count)
        if not isinstance(got, Pending):
            return fn(got)  # type: ignore[no-any-return]

        def step(current: bytes) -> Any:
            r = fn(current)
            return r.pending if r.pending is not None else r

        return ScsiResult(GOOD, pending=got.then(step))

    def _miscompare(self, offset: int) -> ScsiError:
        return ScsiError(SenseKey.MISCOMPARE, MISCOMPARE_DURING_VERIFY, information=offset)

    # ------------------------------------------------------------------ READ
    def _read(self, lba: int, count: int, tl_byte: int) -> ScsiResult:
        if count > self.max_transfer:
            raise invalid_cdb(tl_byte)
        if lba + count > self.num_blocks:
            raise lba_out_of_range()
        if count == 0:
            return ScsiResult(GOOD)
        data = self.device.read_extents(lba, count)
        if isinstance(data, Pending):
            return ScsiResult(GOOD, pending=data.then(_read_result))
        return ScsiResult(GOOD, data=data)

    def cmd_read6(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba = _RW6.unpack_from(cdb, 0)[0] & 0x1FFFFF
        return self._read(lba, cdb[4] or 256, 4)

    def cmd_read10(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        if cdb[1] & 0xE0:
            raise invalid_cdb(1, 7)
        lba, count = _RW10.unpack_from(cdb)
        return self._read(lba, count, 7)

    def cmd_read12(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        if cdb[1] & 0xE0:
            raise invalid_cdb(1, 7)
        lba, count = _RW12.unpack_from(cdb)
        return self._read(lba, count, 6)

    def cmd_read16(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        if cdb[1] & 0xE0:
            raise invalid_cdb(1, 7)
        lba, count = _RW16.unpack_from(cdb)
        return self._read(lba, count, 10)

    # ------------------------------------------------------------------ WRITE
    def _write(
        self, lba: int, count: int, data_out: DataOut, fua: bool, tl_byte: int
    ) -> ScsiResult:
        if count > self.max_transfer:
            raise invalid_cdb(tl_byte)
        if lba + count > self.num_blocks:
            raise lba_out_of_range()
        if self._write_protect is not None:
            raise ScsiError(SenseKey.DATA_PROTECT, self._write_protect)
        if count == 0 or data_out is None:
            return ScsiResult(GOOD)
        need = count * self.block_size
        have = len(data_out)
        if have != need:
            # The initiator sent more or less than the CDB asks for (RFC 7143 residuals):
            # write the whole blocks that arrived, up to the transfer length.
            if have < need:
                count = have // self.block_size
                if count == 0:
                    return ScsiResult(GOOD)
                need = count * self.block_size
            data_out = memoryview(data_out)[:need]
        return self._written(self.device.write(lba, data_out), fua or not self._wce)

    def cmd_write6(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba = _RW6.unpack_from(cdb, 0)[0] & 0x1FFFFF
        return self._write(lba, cdb[4] or 256, data_out, False, 4)

    def cmd_write10(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        flags = cdb[1]
        if flags & 0xE0:
            raise invalid_cdb(1, 7)
        lba, count = _RW10.unpack_from(cdb)
        return self._write(lba, count, data_out, bool(flags & 0x08), 7)

    def cmd_write12(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        flags = cdb[1]
        if flags & 0xE0:
            raise invalid_cdb(1, 7)
        lba, count = _RW12.unpack_from(cdb)
        return self._write(lba, count, data_out, bool(flags & 0x08), 6)

    def cmd_write16(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        flags = cdb[1]
        if flags & 0xE0:
            raise invalid_cdb(1, 7)
        lba, count = _RW16.unpack_from(cdb)
        return self._write(lba, count, data_out, bool(flags & 0x08), 10)

    # ------------------------------------------------------------------ WRITE AND VERIFY
    def _write_verify(
        self, cdb: bytes, lba: int, count: int, data_out: DataOut, tl_byte: int
    ) -> ScsiResult:
        if cdb[1] & 0xE0:
            raise invalid_cdb(1, 7)
        result = self._write(lba, count, data_out, True, tl_byte)
        # The data just written is what the medium holds: the verification (BYTCHK 0
        # or 1) cannot fail once the write is durable, which ``flush`` makes it.
        return result

    def cmd_write_verify10(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW10.unpack_from(cdb)
        return self._write_verify(cdb, lba, count, data_out, 7)

    def cmd_write_verify12(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW12.unpack_from(cdb)
        return self._write_verify(cdb, lba, count, data_out, 6)

    def cmd_write_verify16(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW16.unpack_from(cdb)
        return self._write_verify(cdb, lba, count, data_out, 10)

    # ------------------------------------------------------------------ VERIFY
    def _verify(
        self, cdb: bytes, lba: int, count: int, data_out: DataOut, tl_byte: int
    ) -> ScsiResult:
        flags = cdb[1]
        if flags & 0xE0:
            raise invalid_cdb(1, 7)
        bytchk = (flags >> 1) & 0x03
        if bytchk == 2:
            raise invalid_cdb(1, 2)
        if count > self.max_transfer:
            raise invalid_cdb(tl_byte)
        self._check_range(lba, count)
        if count == 0 or bytchk == 0 or data_out is None:
            return ScsiResult(GOOD)
        bs = self.block_size
        have = len(data_out)
        if bytchk == 1:
            count = min(count, have // bs)
            if count == 0:
                return ScsiResult(GOOD)
            expected: Buffer = memoryview(data_out)[: count * bs]
        else:  # BYTCHK 11b: one block of data-out compared with every block
            if have < bs:
                return ScsiResult(GOOD)
            expected = bytes(memoryview(data_out)[:bs]) * count

        def compare(current: bytes) -> ScsiResult:
            if current != expected:
                raise self._miscompare(_first_difference(current, expected))
            return ScsiResult(GOOD)

        return self._with_data(lba, count, compare)

    def cmd_verify10(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW10.unpack_from(cdb)
        return self._verify(cdb, lba, count, data_out, 7)

    def cmd_verify12(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW12.unpack_from(cdb)
        return self._verify(cdb, lba, count, data_out, 6)

    def cmd_verify16(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW16.unpack_from(cdb)
        return self._verify(cdb, lba, count, data_out, 10)

    # ------------------------------------------------------------------ COMPARE AND WRITE
    def cmd_compare_and_write(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        flags = cdb[1]
        if flags & 0xE0:
            raise invalid_cdb(1, 7)
        lba, count = _CAW.unpack_from(cdb)
        if count > self.max_compare_and_write:
            raise invalid_cdb(13)
        self._check_range(lba, count)
        self._check_writable()
        half = count * self.block_size
        have = 0 if data_out is None else len(data_out)
        if have != 2 * half:
            # Verify and write data must both be there, exactly.
            raise invalid_cdb(13)
        if count == 0 or data_out is None:
            return ScsiResult(GOOD)
        view = memoryview(data_out)

        def compare_and_write(current: bytes) -> ScsiResult:
            if current != view[:half]:
                raise self._miscompare(_first_difference(current, view[:half]))
            return self._written(
                self.device.write(lba, view[half:]), bool(flags & 0x08) or not self._wce
            )

        return self._with_data(lba, count, compare_and_write)

    # ------------------------------------------------------------------ WRITE SAME
    def _write_same(
        self, lba: int, count: int, flags: int, data_out: DataOut, ndob: bool, tl_byte: int
    ) -> ScsiResult:
        if flags & 0xE0:
            raise invalid_cdb(1, 7)
        if flags & 0x10:  # ANCHOR: anchored blocks are not supported (ANC_SUP 0)
            raise invalid_cdb(1, 4)
        unmap = bool(flags & 0x08)
        if unmap and not self.thin:
            raise invalid_cdb(1, 3)
        if count == 0:  # WSNZ 1 in the Block Limits page
            raise invalid_cdb(tl_byte)
        if count > self.max_write_same:
            raise invalid_cdb(tl_byte)
        self._check_range(lba, count)
        self._check_writable()
        bs = self.block_size
        pattern: Buffer | None = None
        if not ndob:
            if data_out is None or len(data_out) != bs:
                raise invalid_cdb(tl_byte)
            pattern = data_out
        if unmap and (pattern is None or not any(memoryview(pattern))):
            # Deallocated blocks read as zeros (LBPRZ 1), which is exactly this
            # pattern; any other pattern is written, as a read must return it.
            return self._written(self.device.unmap(lba, count), not self._wce)
        block = bytes(bs) if pattern is None else bytes(memoryview(pattern))
        per_chunk = max(1, min(count, _WRITE_SAME_CHUNK // bs))
        chunk = memoryview(block * per_chunk)
        done = 0
        pending: list[Pending] = []
        while done < count:
            n = min(per_chunk, count - done)
            p = self.device.write(lba + done, chunk[: n * bs])
            if isinstance(p, Pending):
                pending.append(p)
            done += n
        return self._written(Pending.gather(pending) if pending else None, not self._wce)

    def cmd_write_same10(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        flags = cdb[1]
        if flags & 0x06:  # PBDATA, LBDATA
            raise invalid_cdb(1, 2 if flags & 0x04 else 1)
        lba, count = _RW10.unpack_from(cdb)
        return self._write_same(lba, count, flags, data_out, False, 7)

    def cmd_write_same16(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        flags = cdb[1]
        if flags & 0x06:  # obsolete PBDATA, LBDATA
            raise invalid_cdb(1, 2 if flags & 0x04 else 1)
        lba, count = _WS16.unpack_from(cdb)
        return self._write_same(lba, count, flags, data_out, bool(flags & 0x01), 10)

    # ------------------------------------------------------------------ UNMAP
    def cmd_unmap(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        if cdb[1] & 0x01:  # ANCHOR
            raise invalid_cdb(1, 0)
        plen = _U16.unpack_from(cdb, 7)[0]
        if plen == 0:
            return ScsiResult(GOOD)
        if plen < 8:
            raise param_length_error()
        params = bytes(memoryview(data_out)[:plen]) if data_out is not None else b""
        if len(params) < 8:
            raise param_length_error()
        bddl = _U16.unpack_from(params, 2)[0]
        ndesc = min(bddl, len(params) - 8) // 16
        if ndesc > self.max_unmap_descriptors:
            raise invalid_param(2)
        ranges: list[tuple[int, int]] = []
        total = 0
        for i in range(ndesc):
            lba, count = _UNMAP_DESC.unpack_from(params, 8 + 16 * i)
            if lba + count > self.num_blocks:
                raise lba_out_of_range()
            total += count
            if count:
                ranges.append((lba, count))
        if total > self.max_unmap_lbas:
            raise invalid_param(8)
        self._check_writable()
        pending: list[Pending] = []
        for lba, count in ranges:
            p = self.device.unmap(lba, count)
            if isinstance(p, Pending):
                pending.append(p)
        return self._written(Pending.gather(pending) if pending else None, False)

    # ------------------------------------------------------------------ GET LBA STATUS
    def get_lba_status(self, cdb: bytes) -> ScsiResult:
        lba = _U64.unpack_from(cdb, 2)[0]
        alloc = _U32.unpack_from(cdb, 10)[0]
        nb = self.num_blocks
        if lba >= nb:
            raise lba_out_of_range()
        wanted = max(1, min(_MAX_LBA_STATUS_DESCRIPTORS, (alloc - 8) // 16 if alloc > 8 else 1))
        body = bytearray()
        cur = lba
        while wanted and cur < nb:
            limit = min(nb - cur, 0xFFFFFFFF)
            if self.thin:
                st = self.device.lba_status(cur, limit)
                if isinstance(st, Pending):
                    # asked of a replica: one descriptor (the device server may
                    # return fewer than the allocation length allows)
                    def one(got: Any, start: int = cur, limit: int = limit) -> ScsiResult:
                        n = max(1, min(got.count, limit))
                        desc = _LBA_STATUS.pack(start, n, 1 if got.deallocated else 0)
                        return ScsiResult(GOOD, data=(_U32.pack(20) + bytes(4) + desc)[:alloc])

                    return ScsiResult(GOOD, pending=st.then(one))
                count = max(1, min(st.count, limit))
                state = 1 if st.deallocated else 0
            else:
                count, state = limit, 0
            body += _LBA_STATUS.pack(cur, count, state)
            cur += count
            wanted -= 1
        data = _U32.pack(len(body) + 4) + b"\0\0\0\0" + bytes(body)
        return ScsiResult(GOOD, data=data[:alloc])

    # ------------------------------------------------------------------ cache, prefetch
    def _sync_or_prefetch(self, lba: int, count: int) -> None:
        if lba >= self.num_blocks or lba + count > self.num_blocks:
            raise lba_out_of_range()

    def cmd_synchronize_cache10(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW10.unpack_from(cdb)
        self._sync_or_prefetch(lba, count)
        return ScsiResult(GOOD, flush=True)

    def cmd_synchronize_cache16(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW16.unpack_from(cdb)
        self._sync_or_prefetch(lba, count)
        return ScsiResult(GOOD, flush=True)

    def cmd_pre_fetch10(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW10.unpack_from(cdb)
        self._sync_or_prefetch(lba, count)
        return ScsiResult(GOOD)

    def cmd_pre_fetch16(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba, count = _RW16.unpack_from(cdb)
        self._sync_or_prefetch(lba, count)
        return ScsiResult(GOOD)

    # ------------------------------------------------------------------ capacity
    def cmd_read_capacity10(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        lba = _U32.unpack_from(cdb, 2)[0]
        if not cdb[8] & 0x01 and lba:
            raise invalid_cdb(2)
        last = min(self.num_blocks - 1, 0xFFFFFFFF)
        return ScsiResult(GOOD, data=struct.pack(">II", last, self.block_size))

    def read_capacity16(self, cdb: bytes) -> ScsiResult:
        alloc = _U32.unpack_from(cdb, 10)[0]
        lbp = 0xC000 if self.thin else 0  # LBPME, LBPRZ
        data = struct.pack(">QIBBH16x", self.num_blocks - 1, self.block_size, 0, 0, lbp)
        return ScsiResult(GOOD, data=data[:alloc])

    # ------------------------------------------------------------------ defects
    def cmd_read_defect_data10(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        alloc = _U16.unpack_from(cdb, 7)[0]
        # An empty list in the requested format; PLISTV/GLISTV echo what was asked.
        data = bytes((0, cdb[2] & 0x1F, 0, 0))
        return ScsiResult(GOOD, data=data[:alloc])

    def cmd_read_defect_data12(self, cdb: bytes, data_out: DataOut, nexus: Nexus) -> ScsiResult:
        alloc = _U32.unpack_from(cdb, 6)[0]
        data = bytes((0, cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0))
        return ScsiResult(GOOD, data=data[:alloc])


def data_out_length(cdb: bytes, block_size: int) -> int | None:
    """Bytes of data-out the CDB transfers (0 for none); None for opcodes not served."""
    return _data_out_length(cdb, block_size)


def _data_out_length(cdb: bytes, bs: int) -> int | None:
    if not cdb:
        return None
    op = cdb[0]
    try:
        spec: Any = _DATA_OUT.get(op)
        if spec is None:
            return 0 if op in _NO_DATA_OUT else None
        return int(spec(cdb, bs))
    except (IndexError, struct.error):
        return 0


# Commands whose data-out is ``transfer length x block size`` of data to write, and
# where the transfer length field sits: (struct format, byte offset).
_TRUNCATABLE: dict[int, tuple[str, int]] = {
    0x2A: (">H", 7),  # WRITE 10
    0xAA: (">I", 6),  # WRITE 12
    0x8A: (">I", 10),  # WRITE 16
    0x2E: (">H", 7),  # WRITE AND VERIFY 10
    0xAE: (">I", 6),  # WRITE AND VERIFY 12
    0x8E: (">I", 10),  # WRITE AND VERIFY 16
}


def fit_to_transfer(cdb: bytes, edtl: int, bs: int) -> bytes | ScsiError:
    """What to run when the initiator's expected data transfer length (``edtl``) is not
    what the CDB transfers.

    As SAM-5 puts it, a transfer stops at the smaller of the two: a WRITE whose data
    ends early writes the whole blocks that arrived (the CDB is returned with its
    transfer length cut down), and one with surplus data writes what the CDB asks for.
    A command that takes no data-out runs as is (the data is ignored).  Everything else
    (a partial block, COMPARE AND WRITE, parameter lists) is refused with the error
    returned; the caller reports the residual either way.
    """
    spdtl = _data_out_length(cdb, bs) or 0
    op = cdb[0]
    if op == 0x89:  # the NUMBER OF LOGICAL BLOCKS field disagrees with the data
        return invalid_cdb(13)
    if spdtl == 0:
        return cdb
    where = _TRUNCATABLE.get(op)
    length = min(edtl, spdtl)
    if where is None or length % bs:
        return ScsiError(SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_INFORMATION_UNIT)
    fmt, off = where
    out = bytearray(cdb)
    struct.pack_into(fmt, out, off, length // bs)
    return bytes(out)


def _ws_len(cdb: bytes, bs: int) -> int:
    if cdb[0] == 0x93 and cdb[1] & 0x01:  # NDOB
        return 0
    return bs


def _verify_len(count: int, cdb: bytes, bs: int) -> int:
    bytchk = (cdb[1] >> 1) & 0x03
    if bytchk == 1:
        return count * bs
    if bytchk == 3:
        return bs if count else 0
    return 0


_DATA_OUT: dict[int, Any] = {
    0x0A: lambda c, bs: (c[4] or 256) * bs,
    0x2A: lambda c, bs: _RW10.unpack_from(c)[1] * bs,
    0xAA: lambda c, bs: _RW12.unpack_from(c)[1] * bs,
    0x8A: lambda c, bs: _RW16.unpack_from(c)[1] * bs,
    0x2E: lambda c, bs: _RW10.unpack_from(c)[1] * bs,
    0xAE: lambda c, bs: _RW12.unpack_from(c)[1] * bs,
    0x8E: lambda c, bs: _RW16.unpack_from(c)[1] * bs,
    0x2F: lambda c, bs: _verify_len(_RW10.unpack_from(c)[1], c, bs),
    0xAF: lambda c, bs: _verify_len(_RW12.unpack_from(c)[1], c, bs),
    0x8F: lambda c, bs: _verify_len(_RW16.unpack_from(c)[1], c, bs),
    0x89: lambda c, bs: 2 * c[13] * bs,
    0x41: _ws_len,
    0x93: _ws_len,
    0x42: lambda c, bs: _U16.unpack_from(c, 7)[0],
    0x15: lambda c, bs: c[4],
    0x55: lambda c, bs: _U16.unpack_from(c, 7)[0],
    0x5F: lambda c, bs: _U32.unpack_from(c, 5)[0],
}

_NO_DATA_OUT = frozenset(
    {
        0x00,
        0x03,
        0x08,
        0x12,
        0x16,
        0x17,
        0x1A,
        0x1B,
        0x1E,
        0x25,
        0x28,
        0x34,
        0x35,
        0x37,
        0x56,
        0x57,
        0x5A,
        0x5E,
        0x88,
        0x90,
        0x91,
        0x9E,
        0xA0,
        0xA3,
        0xA8,
        0xB7,
    }
)
