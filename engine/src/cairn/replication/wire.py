"""The replication protocol's wire format, sans-IO: bytes in, messages out and back.

Every message, request or reply, is a 40-byte header followed by ``dlen`` payload bytes::

    magic "CRNR" | version u8 | opcode u8 | status u16 | tag u64 | seq u64 |
    offset u64 | length u32 | dlen u32                       (big-endian)

``offset`` and ``length`` are in bytes (whole blocks of the replica); ``seq`` is the
write's sequence number or, for DIFF, the threshold.  A reply has ``REPLY`` set in its
opcode and carries the request's tag; ``status`` is 0 in requests.  docs/replication.md
describes each opcode.  Nothing here touches a socket: the pool server and the clients
do their own I/O and use ``encode``, ``Decoder`` and the payload helpers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

VERSION = 1
#: The port pool servers listen on unless told otherwise.
DEFAULT_PORT = 3232
#: Every protocol version this code speaks (a BAD_VERSION reply lists them).
VERSIONS = (1,)
MAGIC = b"CRNR"
HEADER = struct.Struct(">4sBBHQQQII")
HEADER_SIZE = HEADER.size  # 40
REPLY = 0x80
#: Largest payload of any message: 4 MiB of data plus one u64 seq per 512-byte block.
MAX_PAYLOAD = (4 << 20) + (64 << 10)
#: Largest data of one READ, READ_SEQS or REBUILD.
MAX_IO = 4 << 20
#: Largest JSON payload (SET_META and every other JSON request).
MAX_JSON = 64 << 10

SEQ = struct.Struct(">Q")
RUN = struct.Struct(">QI")
COUNT = struct.Struct(">I")

CLIENT_AUTH_CONTEXT = b"cairn-replica-auth:"
SERVER_AUTH_CONTEXT = b"cairn-pool-auth:"
CHALLENGE_BYTES = 32


class Op(IntEnum):
    HELLO = 1
    AUTH = 2
    OPEN = 3
    WRITE = 4
    UNMAP = 5
    READ = 6
    FLUSH = 7
    DIFF = 8
    READ_SEQS = 9
    REBUILD = 10
    INFO = 11
    SET_META = 12
    RESIZE = 13
    CLOSE = 14
    #: map the target's shared-memory ring (``cairn.replication.ring``); same machine only
    ATTACH_RING = 15
    #: a WRITE whose data is in the ring: the payload is ``ring.DESC`` (generation, offset)
    WRITE_SHM = 16
    #: take snapshot ``{"name"}`` of the open replica (after the target's write barrier)
    SNAPSHOT = 17
    #: delete snapshot ``{"name"}``; CONFLICT while a clone depends on it
    SNAPSHOT_DELETE = 18
    #: the open replica's snapshots: ``{"snapshots": [{name, created, size, used, ...}]}``
    SNAPSHOT_LIST = 19
    #: create volume ``{"name"}`` from snapshot ``{"snapshot"}`` of the open replica
    CLONE = 20
    #: make the open replica's contents those of snapshot ``{"snapshot"}``; ``seq`` is
    #: the rollback's number, carried by every block it rewrites
    ROLLBACK = 21
    #: delete closed volume ``{"name"[, "force"]}`` and its snapshots from the pool (no
    #: volume need be open on the connection); CONFLICT while it is open or clones
    #: depend on it (unless ``force``: the layers the clones need stay)
    DESTROY = 22


class Status(IntEnum):
    OK = 0
    BAD_VERSION = 1
    AUTH_REQUIRED = 2
    AUTH_FAILED = 3
    BAD_REQUEST = 4
    NOT_OPEN = 5
    NO_SPACE = 6
    MEDIUM_ERROR = 7
    OUT_OF_RANGE = 8
    NOT_FOUND = 9
    INTERNAL = 10
    SUPERSEDED = 11  # a newer connection opened the replica: this one may not change it
    CONFLICT = 12  # the name exists, or a clone depends on the snapshot


class ProtocolError(ValueError):
    """The byte stream is not the replication protocol (bad magic, oversized payload,
    invalid JSON where JSON is due).  A connection that produced it cannot be trusted
    any further and is closed."""


class VersionMismatch(ProtocolError):
    """A well-framed header of another protocol version.  Carries what a server needs to
    answer it (BAD_VERSION with its own version) before closing."""

    def __init__(self, version: int, op: int, tag: int, reply: bool) -> None:
        super().__init__(
            f"protocol version {version} is not supported (this side speaks {VERSION})"
        )
        self.version = version
        self.op = op
        self.tag = tag
        self.reply = reply


@dataclass(slots=True)
class Message:
    """One decoded message.  ``op`` is without the reply bit; ``data`` is the payload."""

    op: int
    reply: bool = False
    status: int = 0
    tag: int = 0
    seq: int = 0
    offset: int = 0
    length: int = 0
    data: bytes | memoryview = b""
    version: int = VERSION


Payload = bytes | bytearray | memoryview


def encode_header(
    op: int,
    *,
    tag: int = 0,
    seq: int = 0,
    offset: int = 0,
    length: int = 0,
    status: int = 0,
    dlen: int = 0,
    reply: bool = False,
    version: int = VERSION,
) -> bytes:
    """The 40-byte header of a message with ``dlen`` payload bytes."""
    if dlen > MAX_PAYLOAD:
        raise ValueError(f"payload of {dlen} bytes exceeds the maximum of {MAX_PAYLOAD}")
    return HEADER.pack(
        MAGIC,
        version,
        (op & 0x7F) | (REPLY if reply else 0),
        status,
        tag,
        seq,
        offset,
        length,
        dlen,
    )


def encode(
    op: int,
    *,
    tag: int = 0,
    seq: int = 0,
    offset: int = 0,
    length: int = 0,
    status: int = 0,
    data: Payload = b"",
    reply: bool = False,
    version: int = VERSION,
) -> list[Payload]:
    """Header and payload as a list of buffers for ``writev``/``writelines``; the
    payload is not copied."""
    dlen = memoryview(data).nbytes if not isinstance(data, bytes) else len(data)
    header = encode_header(
        op,
        tag=tag,
        seq=seq,
        offset=offset,
        length=length,
        status=status,
        dlen=dlen,
        reply=reply,
        version=version,
    )
    return [header, data] if dlen else [header]


def check_header(magic: bytes, version: int, opcode: int, tag: int, dlen: int) -> None:
    """Raise the ``ProtocolError`` a bad header deserves (nothing when it is sound).
    The order matters: garbage is garbage before its version means anything."""
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise VersionMismatch(version, opcode & 0x7F, tag, bool(opcode & REPLY))
    if dlen > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {dlen} bytes exceeds the maximum of {MAX_PAYLOAD}")


class Decoder:
    """Incremental decoder: ``feed`` any fragments, get back every complete message.

    Payloads are copied into a ``bytes`` object per message, so a message stays valid
    for as long as its holder wants, whatever is fed next.  (The pool server does not
    use this class on its data path: it parses its own receive buffer with ``HEADER``
    and ``check_header`` and writes payloads from there without a copy.)

    After a ``ProtocolError`` the stream has lost its framing: every later ``feed``
    raises the same error again.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not make a complete message yet."""
        return len(self._buf)

    def feed(self, data: Payload) -> list[Message]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        unpack = HEADER.unpack_from
        try:
            while end - pos >= HEADER_SIZE:
                magic, version, opcode, status, tag, seq, offset, length, dlen = unpack(buf, pos)
                if magic != MAGIC or version != VERSION or dlen > MAX_PAYLOAD:
                    check_header(magic, version, opcode, tag, dlen)
                stop = pos + HEADER_SIZE + dlen
                if stop > end:
                    break
                payload = bytes(buf[pos + HEADER_SIZE : stop]) if dlen else b""
                out.append(
                    Message(
                        opcode & 0x7F,
                        bool(opcode & REPLY),
                        status,
                        tag,
                        seq,
                        offset,
                        length,
                        payload,
                        version,
                    )
                )
                pos = stop
        except ProtocolError as exc:
            self._error = exc
            del buf[:]
            raise
        if pos:
            del buf[:pos]
        return out


# -- payloads -----------------------------------------------------------------------


def json_payload(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def parse_json(data: Payload) -> dict[str, Any]:
    """The JSON object in a payload; ``ProtocolError`` if it is not one."""
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"payload is JSON {type(obj).__name__}, expected an object")
    return obj


def error_text(msg: Message) -> str:
    """Why a pool server refused a request: the ``error`` of its reply's JSON payload,
    or the status's name when it gave none."""
    try:
        text = str(parse_json(msg.data).get("error", ""))
    except ProtocolError:
        text = ""
    if text:
        return text
    try:
        return f"status {msg.status} ({Status(msg.status).name})"
    except ValueError:
        return f"status {msg.status}"


def pack_seqs(seqs: Sequence[int]) -> bytes:
    """One big-endian u64 per block."""
    return struct.pack(f">{len(seqs)}Q", *seqs)


def unpack_seqs(data: Payload) -> list[int]:
    n, rest = divmod(len(data), 8)
    if rest:
        raise ProtocolError(f"seqs payload of {len(data)} bytes is not a multiple of 8")
    return list(struct.unpack_from(f">{n}Q", data))


def pack_runs(runs: Iterable[tuple[int, int]]) -> bytes:
    """DIFF runs: (lba u64, block count u32) pairs, big-endian."""
    return b"".join(RUN.pack(lba, count) for lba, count in runs)


def unpack_runs(data: Payload) -> list[tuple[int, int]]:
    if len(data) % RUN.size:
        raise ProtocolError(f"runs payload of {len(data)} bytes is not a multiple of {RUN.size}")
    return [(lba, count) for lba, count in RUN.iter_unpack(data)]


# -- authentication -----------------------------------------------------------------


def client_proof(secret: bytes, challenge: bytes) -> bytes:
    """What a client sends in AUTH: proof that it knows the secret, bound to the
    server's fresh challenge."""
    return hmac.new(secret, CLIENT_AUTH_CONTEXT + challenge, hashlib.sha256).digest()


def server_proof(secret: bytes, nonce: bytes) -> bytes:
    """What the server answers to AUTH: its proof, bound to the client's nonce."""
    return hmac.new(secret, SERVER_AUTH_CONTEXT + nonce, hashlib.sha256).digest()


__all__ = [
    "CHALLENGE_BYTES",
    "COUNT",
    "DEFAULT_PORT",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_IO",
    "MAX_JSON",
    "MAX_PAYLOAD",
    "REPLY",
    "RUN",
    "SEQ",
    "VERSION",
    "VERSIONS",
    "Decoder",
    "Message",
    "Op",
    "ProtocolError",
    "Status",
    "VersionMismatch",
    "check_header",
    "client_proof",
    "encode",
    "encode_header",
    "json_payload",
    "pack_runs",
    "pack_seqs",
    "parse_json",
    "server_proof",
    "unpack_runs",
    "unpack_seqs",
]
