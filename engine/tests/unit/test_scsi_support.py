"""An in-memory ``BlockDevice`` for the SCSI tests, CDB builders, and checks of both."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cairn.blockdev import BlockDevice, Buffer, Extent, LbaStatus
from cairn.scsi import LogicalUnit, Nexus, ScsiResult, ScsiTarget, Status

NEXUS_A = Nexus(
    "iqn.1994-05.com.example:host1,i,0x23d000000001", "iqn.2026-11.org.cairn:vol1,t,0x0001", 1
)
NEXUS_B = Nexus(
    "iqn.1994-05.com.example:host2,i,0x23d000000002", "iqn.2026-11.org.cairn:vol1,t,0x0001", 1
)
NAA = bytes.fromhex("6001405a1b2c3d4e")


class MemDevice:
    """Blocks in a memfd (so READ extents are real file ranges) plus a map of which
    blocks are allocated.  ``fail`` makes every later call raise that exception."""

    def __init__(self, num_blocks: int = 2048, block_size: int = 512) -> None:
        self._bs = block_size
        self._nb = num_blocks
        self.fd = os.memfd_create("cairn-scsi-test")
        os.ftruncate(self.fd, num_blocks * block_size)
        self.mapped = bytearray(num_blocks)
        self.flushes = 0
        self.writes: list[tuple[int, int]] = []
        self.unmaps: list[tuple[int, int]] = []
        self.fail: Exception | None = None

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def num_blocks(self) -> int:
        return self._nb

    def grow(self, num_blocks: int) -> None:
        os.ftruncate(self.fd, num_blocks * self._bs)
        self.mapped += bytearray(num_blocks - self._nb)
        self._nb = num_blocks

    def _check(self, lba: int, count: int) -> None:
        if self.fail is not None:
            raise self.fail
        if lba < 0 or count < 0 or lba + count > self._nb:
            raise ValueError(f"range {lba}+{count} outside the device ({self._nb} blocks)")

    def read(self, lba: int, count: int) -> bytes:
        self._check(lba, count)
        return os.pread(self.fd, count * self._bs, lba * self._bs)

    def read_extents(self, lba: int, count: int) -> list[Extent]:
        self._check(lba, count)
        out: list[Extent] = []
        i = lba
        while i < lba + count:
            j = i
            while j < lba + count and self.mapped[j] == self.mapped[i]:
                j += 1
            length = (j - i) * self._bs
            out.append(
                Extent(self.fd, i * self._bs, length) if self.mapped[i] else Extent(None, 0, length)
            )
            i = j
        return out

    def write(self, lba: int, data: Buffer, fua: bool = False) -> None:
        n = len(data)
        if n % self._bs:
            raise ValueError(f"write of {n} bytes is not whole blocks")
        self._check(lba, n // self._bs)
        os.pwrite(self.fd, bytes(data), lba * self._bs)
        self.mapped[lba : lba + n // self._bs] = b"\x01" * (n // self._bs)
        self.writes.append((lba, n // self._bs))

    def unmap(self, lba: int, count: int) -> None:
        self._check(lba, count)
        os.pwrite(self.fd, bytes(count * self._bs), lba * self._bs)
        self.mapped[lba : lba + count] = bytes(count)
        self.unmaps.append((lba, count))

    def flush(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.flushes += 1

    def lba_status(self, lba: int, max_count: int) -> LbaStatus:
        self._check(lba, 1)
        state = self.mapped[lba]
        n = 1
        while n < max_count and lba + n < self._nb and self.mapped[lba + n] == state:
            n += 1
        return LbaStatus(lba, n, not state)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Rig:
    device: MemDevice
    lu: LogicalUnit
    target: ScsiTarget

    def run(
        self, cdb: bytes, data: Buffer | None = None, nexus: Nexus = NEXUS_A, lun: int = 0
    ) -> ScsiResult:
        return self.target.execute(lun, cdb, data, nexus)

    def good(self, cdb: bytes, data: Buffer | None = None, nexus: Nexus = NEXUS_A) -> bytes:
        r = self.run(cdb, data, nexus)
        assert r.status == Status.GOOD, (r.status, sense_of(r))
        return payload(r, self.device)


def make_rig(
    num_blocks: int = 2048, block_size: int = 512, *, clear_ua: bool = True, **lu_args: object
) -> Rig:
    dev = MemDevice(num_blocks, block_size)
    lu = LogicalUnit(dev, serial="0123456789abcdef", naa=NAA, **lu_args)  # type: ignore[arg-type]
    target = ScsiTarget({0: lu})
    rig = Rig(dev, lu, target)
    if clear_ua:
        for nexus in (NEXUS_A, NEXUS_B):
            target.nexus_added(nexus)
            rig.run(tur(), nexus=nexus)
    return rig


@pytest.fixture(name="rig")
def rig_fixture() -> Iterator[Rig]:
    r = make_rig()
    yield r
    r.device.close()


def payload(result: ScsiResult, device: MemDevice | None = None) -> bytes:
    data = result.data
    if data is None:
        return b""
    if isinstance(data, list):
        out = bytearray()
        for e in data:
            if e.fd is None:
                out += bytes(e.length)
            else:
                out += os.pread(e.fd, e.length, e.offset)
        return bytes(out)
    return bytes(data)


def sense_of(result: ScsiResult) -> tuple[int, int, int]:
    """(key, asc, ascq) from fixed or descriptor sense data."""
    s = result.sense
    if not s:
        return (0, 0, 0)
    if s[0] & 0x7F in (0x72, 0x73):
        return (s[1] & 0x0F, s[2], s[3])
    return (s[2] & 0x0F, s[12], s[13])


def information_of(result: ScsiResult) -> int | None:
    s = result.sense
    if s[0] & 0x7F in (0x72, 0x73):
        pos = 8
        while pos < 8 + s[7]:
            if s[pos] == 0x00:
                return int(struct.unpack_from(">Q", s, pos + 4)[0])
            pos += 2 + s[pos + 1]
        return None
    if s[0] & 0x80:
        return int(struct.unpack_from(">I", s, 3)[0])
    return None


def field_pointer_of(result: ScsiResult) -> int | None:
    s = result.sense
    if s[0] & 0x7F == 0x70 and s[15] & 0x80:
        return int(struct.unpack_from(">H", s, 16)[0])
    return None


def expect_check(result: ScsiResult, key: int, asc: int, ascq: int = 0) -> None:
    assert result.status == Status.CHECK_CONDITION, result
    assert sense_of(result) == (key, asc, ascq), [hex(x) for x in sense_of(result)]


# ---------------------------------------------------------------------- CDB builders
def tur() -> bytes:
    return bytes(6)


def inquiry(evpd: int = 0, page: int = 0, alloc: int = 255) -> bytes:
    return struct.pack(">BBBHB", 0x12, evpd, page, alloc, 0)


def read6(lba: int, n: int) -> bytes:
    return struct.pack(">BBHBB", 0x08, (lba >> 16) & 0x1F, lba & 0xFFFF, n & 0xFF, 0)


def write6(lba: int, n: int) -> bytes:
    return struct.pack(">BBHBB", 0x0A, (lba >> 16) & 0x1F, lba & 0xFFFF, n & 0xFF, 0)


def rw10(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, flags, lba & 0xFFFFFFFF, 0, n, 0)


def rw12(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIIBB", op, flags, lba & 0xFFFFFFFF, n, 0, 0)


def rw16(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, flags, lba & 0xFFFFFFFFFFFFFFFF, n, 0, 0)


def read10(lba: int, n: int, flags: int = 0) -> bytes:
    return rw10(0x28, lba, n, flags)


def write10(lba: int, n: int, flags: int = 0) -> bytes:
    return rw10(0x2A, lba, n, flags)


def read16(lba: int, n: int, flags: int = 0) -> bytes:
    return rw16(0x88, lba, n, flags)


def write16(lba: int, n: int, flags: int = 0) -> bytes:
    return rw16(0x8A, lba, n, flags)


def caw(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQxxxBBB", 0x89, flags, lba, n, 0, 0)


def write_same10(lba: int, n: int, flags: int = 0) -> bytes:
    return rw10(0x41, lba, n, flags)


def write_same16(lba: int, n: int, flags: int = 0) -> bytes:
    return rw16(0x93, lba, n, flags)


def unmap_cdb(plen: int, anchor: bool = False) -> bytes:
    return struct.pack(">BBxxxxBHB", 0x42, 1 if anchor else 0, 0, plen, 0)


def unmap_params(ranges: list[tuple[int, int]]) -> bytes:
    body = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    return struct.pack(">HH4x", len(body) + 6, len(body)) + body


def get_lba_status(lba: int, alloc: int = 24) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x12, lba & 0xFFFFFFFFFFFFFFFF, alloc, 0, 0)


def read_capacity16(alloc: int = 32) -> bytes:
    return struct.pack(">BB8xIBB", 0x9E, 0x10, alloc, 0, 0)


def mode_sense6(
    page: int, pc: int = 0, dbd: bool = False, alloc: int = 255, subpage: int = 0
) -> bytes:
    return struct.pack(">BBBBBB", 0x1A, 0x08 if dbd else 0, (pc << 6) | page, subpage, alloc, 0)


def mode_sense10(
    page: int, pc: int = 0, dbd: bool = False, llbaa: bool = False, alloc: int = 1024
) -> bytes:
    flags = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return struct.pack(">BBBBxxxHB", 0x5A, flags, (pc << 6) | page, 0, alloc, 0)


def mode_select6(plen: int, pf: bool = True, sp: bool = False) -> bytes:
    return struct.pack(">BBxxBB", 0x15, (0x10 if pf else 0) | (0x01 if sp else 0), plen, 0)


def mode_select10(plen: int) -> bytes:
    return struct.pack(">BBxxxxxHB", 0x55, 0x10, plen, 0)


def pr_in(sa: int, alloc: int = 8192) -> bytes:
    return struct.pack(">BBxxxxxHB", 0x5E, sa, alloc, 0)


def pr_out(sa: int, ptype: int = 0, scope: int = 0, plen: int = 24) -> bytes:
    return struct.pack(">BBBxxIB", 0x5F, sa, (scope << 4) | ptype, plen, 0)


def pr_params(rkey: int = 0, sakey: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">QQ4xBxH", rkey, sakey, flags, 0)


def rsoc(
    options: int = 0, opcode: int = 0, sa: int = 0, rctd: bool = False, alloc: int = 65535
) -> bytes:
    return struct.pack(
        ">BBBBHIBB", 0xA3, 0x0C, (0x80 if rctd else 0) | options, opcode, sa, alloc, 0, 0
    )


# ---------------------------------------------------------------------- the fake itself
def test_fake_device_is_a_block_device() -> None:
    dev = MemDevice(16)
    assert isinstance(dev, BlockDevice)
    dev.write(2, b"x" * 1024)
    assert dev.read(2, 2) == b"x" * 1024
    ext = dev.read_extents(1, 4)
    assert [(e.fd is None, e.length) for e in ext] == [(True, 512), (False, 1024), (True, 512)]
    assert dev.lba_status(0, 16) == LbaStatus(0, 2, True)
    assert dev.lba_status(2, 16) == LbaStatus(2, 2, False)
    dev.unmap(2, 1)
    assert dev.read(2, 1) == bytes(512)
    with pytest.raises(ValueError):
        dev.read(15, 2)
    dev.close()


def test_payload_joins_extents(rig: Rig) -> None:
    rig.device.write(1, b"a" * 512)
    assert rig.good(read10(0, 3)) == bytes(512) + b"a" * 512 + bytes(512)
