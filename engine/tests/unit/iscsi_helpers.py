"""A small initiator for driving ``iscsi.Connection`` without sockets."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from cairn.blockdev import Extent, ReadRun
from cairn.iscsi import pdu as P
from cairn.iscsi.chap import ChapConfig, chap_response
from cairn.iscsi.connection import Connection
from cairn.iscsi.session import SessionTable
from cairn.iscsi.targets import Acl, StaticDirectory, TargetSpec
from cairn.iscsi.text import decode_binary, encode_text, parse_text

TARGET = "iqn.2026-11.org.cairn:test"
INITIATOR = "iqn.2026-11.org.example:host1"
ISID = bytes.fromhex("400001370000")


@dataclass
class Result:
    status: int = 0
    sense: bytes = b""
    data: Any = None
    flush: bool = False
    pending: Any = None  # an asynchronous device's command still running (None here)


@dataclass
class FakeBackend:
    """A LUN 0 of 64 blocks of 512 bytes in memory; READ(10)/WRITE(10)/SYNC CACHE only."""

    blocks: bytearray = field(default_factory=lambda: bytearray(64 * 512))
    calls: list[tuple[int, bytes]] = field(default_factory=list)
    nexuses: list[Any] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    flushes: int = 0

    def execute(self, lun: int, cdb: bytes, data_out: Any, nexus: Any) -> Result:
        self.calls.append((lun, bytes(cdb)))
        op = cdb[0]
        if op == 0x28:
            lba, n = struct.unpack_from(">IxH", cdb, 2)
            return Result(data=bytes(self.blocks[lba * 512 : (lba + n) * 512]))
        if op == 0x2A:
            lba, n = struct.unpack_from(">IxH", cdb, 2)
            self.blocks[lba * 512 : (lba + n) * 512] = bytes(data_out[: n * 512])
            return Result(flush=bool(cdb[1] & 0x08))
        if op == 0x35:
            return Result(flush=True)
        if op == 0x00:
            return Result()
        return Result(
            status=2,
            sense=bytes((0x70, 0, 5, 0, 0, 0, 0, 10)) + bytes(4) + bytes((0x20, 0)) + bytes(4),
        )

    def data_out_length(self, lun: int, cdb: bytes) -> int | None:
        if cdb[0] == 0x2A:
            return struct.unpack_from(">H", cdb, 7)[0] * 512
        return 0 if cdb[0] in (0x28, 0x35, 0x00) else None

    def fit_to_transfer(self, lun: int, cdb: bytes, edtl: int) -> Any:
        from cairn.scsi.sbc import fit_to_transfer

        fitted = fit_to_transfer(cdb, edtl, 512)
        if isinstance(fitted, bytes):
            return fitted
        sense = bytes((0x70, 0, fitted.key, 0, 0, 0, 0, 10, 0, 0, 0, 0, *fitted.asc, 0, 0, 0, 0))
        return Result(status=2, sense=sense)

    def nexus_added(self, nexus: Any) -> None:
        self.nexuses.append(nexus)

    def nexus_lost(self, nexus: Any) -> None:
        self.nexuses.remove(nexus)

    def lun_reset(self, lun: int, nexus: Any) -> None:
        self.resets.append("lun")

    def target_reset(self, nexus: Any) -> None:
        self.resets.append("target")

    def has_lun(self, lun: int) -> bool:
        return lun == 0

    def flush(self, lun: int) -> None:
        self.flushes += 1


def make_connection(
    chap: ChapConfig | None = None,
    acl: Acl | None = None,
    backend: FakeBackend | None = None,
    peer: str = "127.0.0.1",
    sessions: SessionTable | None = None,
) -> tuple[Connection, FakeBackend]:
    backend = backend or FakeBackend()
    spec = TargetSpec(TARGET, chap=chap, acl=acl or Acl())
    directory = StaticDirectory("127.0.0.1:3260", {TARGET: spec}, discovery_chap=chap)
    conn = Connection(directory, sessions or SessionTable(), lambda _s: backend, peer)
    return conn, backend


def login_pdu(
    keys: list[tuple[str, str]],
    csg: int = 1,
    nsg: int = 3,
    transit: bool = True,
    cont: bool = False,
    isid: bytes = ISID,
    tsih: int = 0,
    itt: int = 1,
    cmdsn: int = 1,
    version_min: int = 0,
) -> bytes:
    data = encode_text(keys)
    flags = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | (nsg if transit else 0)
    rest = struct.pack(">HHIIII16x", 7, 0, cmdsn, 0, 0, 0)[:28]
    bhs = P.build_bhs(
        P.Op.LOGIN_REQ | 0x40,
        flags,
        0,
        version_min,
        len(data),
        isid + struct.pack(">H", tsih),
        itt,
        rest,
    )
    return bhs + data + bytes(P.pad_len(len(data)))


def scsi_cmd(
    cdb: bytes,
    itt: int,
    cmdsn: int,
    edtl: int = 0,
    read: bool = False,
    write: bool = False,
    data: bytes = b"",
    final: bool = True,
    immediate: bool = False,
    lun: int = 0,
) -> bytes:
    flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | 1
    rest = struct.pack(">III16s", edtl, cmdsn, 0, cdb.ljust(16, b"\0"))
    bhs = P.build_bhs(
        P.Op.SCSI_CMD | (0x40 if immediate else 0),
        flags,
        0,
        0,
        len(data),
        P.encode_lun(lun),
        itt,
        rest,
    )
    return bhs + data + bytes(P.pad_len(len(data)))


def data_out(
    itt: int, ttt: int, datasn: int, offset: int, data: bytes, final: bool = True
) -> bytes:
    rest = struct.pack(">IIIIII4x", ttt, 0, 0, 0, datasn, offset)
    bhs = P.build_bhs(P.Op.DATA_OUT, 0x80 if final else 0, 0, 0, len(data), bytes(8), itt, rest)
    return bhs + data + bytes(P.pad_len(len(data)))


def simple_pdu(
    op: int,
    flags: int,
    itt: int,
    rest: bytes,
    data: bytes = b"",
    immediate: bool = True,
    lun: bytes = bytes(8),
    b2: int = 0,
) -> bytes:
    bhs = P.build_bhs(
        op | (0x40 if immediate else 0), flags, b2, 0, len(data), lun, itt, rest.ljust(28, b"\0")
    )
    return bhs + data + bytes(P.pad_len(len(data)))


@dataclass
class Rx:
    opcode: int
    bhs: bytes
    data: bytes

    def u32(self, off: int) -> int:
        return struct.unpack_from(">I", self.bhs, off)[0]

    @property
    def keys(self) -> dict[str, str]:
        return dict(parse_text(self.data))

    @property
    def login_status(self) -> int:
        return (self.bhs[36] << 8) | self.bhs[37]


def drain(conn: Connection, digests: tuple[int, int] | None = None) -> list[Rx]:
    """Parse everything the connection queued for sending (extents read from files)."""
    raw = bytearray()
    for item in conn.out:
        if isinstance(item, ReadRun):
            data = __import__("os").pread(item.fd, item.total, item.offset)
            data += bytes(item.total - len(data))
            raw += b"".join(bytes(part) for part in item.iov(memoryview(data)))
        elif isinstance(item, Extent):
            raw += (
                bytes(item.length)
                if item.fd is None
                else __import__("os").pread(item.fd, item.length, item.offset)
            )
        else:
            raw += bytes(item)
    conn.out.clear()
    out = []
    pos = 0
    hd, dd = digests if digests is not None else (conn.hd, conn.dd)
    while pos < len(raw):
        bhs = bytes(raw[pos : pos + 48])
        ahs, dsl = P.header_lengths(bhs)
        pos += 48 + ahs + hd
        data = bytes(raw[pos : pos + dsl])
        pos += dsl + P.pad_len(dsl) + (dd if dsl else 0)
        out.append(Rx(bhs[0] & 0x3F, bhs, data))
    return out


def feed(conn: Connection, *pdus: bytes) -> list[Rx]:
    buf = b"".join(pdus)
    digests = (conn.hd, conn.dd)  # a login response goes out before digests start
    used = conn.feed(memoryview(buf))
    assert conn.closing or used == len(buf), (used, len(buf))
    return drain(conn, digests)


def plain_login(conn: Connection, extra: list[tuple[str, str]] | None = None) -> Rx:
    base = {
        "InitiatorName": INITIATOR,
        "TargetName": TARGET,
        "SessionType": "Normal",
        "MaxRecvDataSegmentLength": "262144",
    }
    base.update(dict(extra or []))
    keys = list(base.items())
    (rsp,) = feed(conn, login_pdu(keys))
    return rsp


def chap_login(
    conn: Connection, name: str, secret: bytes, mutual: tuple[int, bytes] | None = None
) -> list[Rx]:
    """Run the security stage with CHAP; return every response."""
    out = feed(
        conn,
        login_pdu(
            [("InitiatorName", INITIATOR), ("TargetName", TARGET), ("AuthMethod", "CHAP,None")],
            csg=0,
            nsg=1,
            transit=False,
        ),
    )
    if conn.closing:
        return out
    out += feed(conn, login_pdu([("CHAP_A", "5")], csg=0, transit=False))
    if conn.closing:
        return out
    k = out[-1].keys
    ident = int(k["CHAP_I"])
    challenge = decode_binary(k["CHAP_C"])
    answer = [("CHAP_N", name), ("CHAP_R", "0x" + chap_response(5, ident, secret, challenge).hex())]
    if mutual:
        answer += [("CHAP_I", str(mutual[0])), ("CHAP_C", "0x" + mutual[1].hex())]
    out += feed(conn, login_pdu(answer, csg=0, nsg=1, transit=True))
    if conn.closing:
        return out
    out += feed(conn, login_pdu([("MaxRecvDataSegmentLength", "65536")], csg=1, nsg=3))
    return out
