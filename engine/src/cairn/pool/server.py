"""The pool server: replicas of volumes on this host's pool, served over the replication
protocol (``cairn.replication.wire``, docs/replication.md) to the targets.

One process per pool, asyncio on uvloop.  The data path follows the portal's: a
preallocated receive buffer per connection, every complete message of one receive
handled before any reply is sent, all those replies sent with one ``writelines``.
Writes go to the store straight from the receive buffer; a large write (64 KiB and up)
is received directly into a write buffer the store lends (``payload_buffer``), so its
payload is never copied by Python at all.  Flushes (fsync) run in a worker thread, one at
a time per replica, shared by every FLUSH that arrives while one runs.  A peer whose
unsent replies exceed ``HIGH_WATER`` is not read until they drain.

Things that block the loop on purpose, because they are rare and short: OPEN (opening a
store), RESIZE, SET_META (an atomic file replace with fsync), a failed write recording
its seq (one small ``fdatasync``), closing a replica (a flush that has little left to
do), a DIFF of up to ``MAX_DIFF_BLOCKS`` blocks (tens of milliseconds), SNAPSHOT,
SNAPSHOT_DELETE and CLONE (a flush and metadata, or a ``zfs`` command), and ROLLBACK
(a scan of the whole replica; done only with no initiator logged in).
"""

from __future__ import annotations

import asyncio
import ctypes
import hmac
import logging
import os
import signal
import socket
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, cast

import numpy as np

from cairn.blockdev import MediumError, NoSpaceError, StoreError
from cairn.daemon import parse_host_port, run_daemon
from cairn.pool import snapshots
from cairn.pool.replicas import Busy, OpenRefused, Replica, Replicas
from cairn.pool.secret import SecretError, load_secret
from cairn.replication.ring import DESC, MappedRing, RingError
from cairn.replication.wire import (
    CHALLENGE_BYTES,
    COUNT,
    DEFAULT_PORT,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_IO,
    MAX_JSON,
    MAX_PAYLOAD,
    REPLY,
    RUN,
    VERSION,
    VERSIONS,
    Op,
    ProtocolError,
    Status,
    VersionMismatch,
    check_header,
    client_proof,
    json_payload,
    parse_json,
    server_proof,
)
from cairn.store import BusyError, EmbeddedPool, ExistsError, NotFoundError, OutOfRangeError
from cairn.store._fs import boot_id
from cairn.store.embedded import NAME_RE
from cairn.store.layers import MAX_SEQ

log = logging.getLogger("cairn.pool")

RECV_BUFFER = 1 << 20
RECV_RESERVE = 128 << 10  # room for the rest of any message received in the buffer
SINK_MIN = 64 << 10  # messages with this much payload are received in place
HIGH_WATER = 16 << 20  # stop reading from a peer with this much unsent output
#: DIFF scans at most this many blocks per request (1 GiB of 512-byte blocks); a reply
#: says how much of the requested range it covers and the client asks for the rest.
MAX_DIFF_BLOCKS = 1 << 21
DIFF_CHUNK = 1 << 16
MAX_DIFF_RUNS = MAX_PAYLOAD // RUN.size

_OK = int(Status.OK)
_WRITE = int(Op.WRITE)
_WRITE_SHM = int(Op.WRITE_SHM)
_READ = int(Op.READ)
_HELLO = int(Op.HELLO)
_AUTH = int(Op.AUTH)
_BE_U64 = np.dtype(">u8")


class ServeError(Exception):
    """The pool server cannot start; the message tells the operator why."""


class Refused(Exception):
    """A request that gets an error reply; the connection stays."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def _seqs_array(seqs: list[int]) -> np.ndarray:
    """A list of seqs as a uint64 array (``array`` converts lists faster than numpy)."""
    return np.frombuffer(array("Q", seqs), dtype=np.uint64)


def local_socket_name(host: str, port: int) -> str:
    """The name of the local socket of the pool server listening on ``host:port``: a
    Unix socket in the abstract namespace (no file; it exists while the server runs
    and is seen only in the server's network namespace)."""
    return f"cairn-pool:{host}:{port}"


class PoolServer:
    """The listening sockets and the replicas of one pool."""

    def __init__(self, name: str, pool: EmbeddedPool, secret: bytes | None = None) -> None:
        self.name = name
        self.pool = pool
        self.secret = secret
        self.replicas = Replicas(pool, name)
        self.connections: set[PoolProtocol] = set()
        self._server: asyncio.base_events.Server | None = None
        self._local: asyncio.base_events.Server | None = None
        #: the local socket's name once it listens (told in HELLO), or ""
        self.local_name = ""
        #: tells this process from another: a client that moves to the local socket
        #: checks that the same server answers there
        self.instance = os.urandom(8).hex()

    async def start(self, host: str, port: int, local: bool = True) -> tuple[str, int]:
        """Listen; returns the address actually bound (port 0 picks a free one).
        With ``local``, also listen on the local socket (``local_socket_name``), which
        a target on this machine uses instead of TCP: the same protocol, the same
        authentication, about half the system time per message.  Where it cannot be
        bound, TCP alone serves (logged)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: PoolProtocol(self), host, port, reuse_address=True, backlog=128
        )
        sock = self._server.sockets[0]
        port = int(sock.getsockname()[1])
        if local:
            await self._listen_local(local_socket_name(host, port))
        return host, port

    async def _listen_local(self, name: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + name)
            sock.listen(128)
            self._local = await asyncio.get_running_loop().create_unix_server(
                lambda: PoolProtocol(self, local=True), sock=sock
            )
        except OSError as e:
            sock.close()
            log.warning(
                "event=local_socket_unavailable pool=%s name=%s error=%r", self.name, name, str(e)
            )
            return
        self.local_name = name

    async def stop(self) -> None:
        servers = [s for s in (self._server, self._local) if s is not None]
        for s in servers:
            s.close()
        for proto in list(self.connections):
            proto.abort()
        await asyncio.sleep(0)  # connection_lost of the aborted connections
        for s in servers:
            await s.wait_closed()
        await self.replicas.close_all()
        self.pool.close()

    def volume_names(self) -> list[str]:
        return [info.name for info in self.pool.list_volumes()]


class PoolProtocol(asyncio.BufferedProtocol):
    """One connection: frames messages out of the receive buffer and answers them."""

    def __init__(self, server: PoolServer, local: bool = False) -> None:
        self.server = server
        self.local = local  # on the local socket (a client on this machine)
        self.buf = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buf)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self.start = 0
        self.end = 0
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self.client = "-"
        self.out: list[Any] = []
        self.authed = server.secret is None
        self.challenge: bytes | None = None
        self.replica: Replica | None = None
        self.session = 0  # what this connection's OPEN said (``Replica.session``)
        self.closing = False
        self.out_paused = False
        self.reading_paused = False
        # a message received in place: its header fields and where its payload goes
        self.sink: memoryview | None = None
        self.sink_got = 0
        self.sink_hdr: tuple[int, ...] = ()
        self.sink_slot: tuple[Replica, int] | None = None
        self.expect_large = False
        self.flushes_out = 0
        # a message waiting for its replica to finish a flush (``Busy``)
        self.held: tuple[Any, ...] | None = None
        # the target's shared-memory ring, when it is on this machine (ATTACH_RING)
        self.ring: MappedRing | None = None

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if self.local:
            self.peer = "local"
            try:  # the client's process, for the logs
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                self.peer = f"local:pid={int.from_bytes(creds[:4], 'little')}"
            except (OSError, AttributeError):
                pass
        else:
            peer = transport.get_extra_info("peername")
            if peer:
                self.peer = f"{peer[0]}:{peer[1]}"
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        self.server.connections.add(self)
        log.debug("event=connect pool=%s peer=%s", self.server.name, self.peer)

    def get_buffer(self, sizehint: int) -> memoryview:
        sink = self.sink
        if sink is not None:
            return sink[self.sink_got :]
        if len(self.buf) - self.end < RECV_RESERVE:
            self._compact()
        if self.expect_large and self.end - self.start < HEADER_SIZE:
            # large writes are coming: read up to the end of the next header only, so
            # that the payload is received in place rather than copied there
            return self.view[self.end : self.start + HEADER_SIZE]
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self.sink is not None:
                self.sink_got += nbytes
                if self.sink_got < len(self.sink):
                    return
                self._sink_done()
            else:
                self.end += nbytes
            if self.held is None:
                self._process()
        except Exception:
            log.exception("event=connection_failed pool=%s peer=%s", self.server.name, self.peer)
            self.closing = True
        self._send()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.held = None
        self.out = []
        self._release_sink()
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.replica is not None:
            rep, self.replica = self.replica, None
            self.server.replicas.release(rep)
        log.debug(
            "event=disconnect pool=%s peer=%s error=%s",
            self.server.name,
            self.peer,
            repr(str(exc)) if exc else "none",
        )

    def pause_writing(self) -> None:
        self.out_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.out_paused = False
        self._update_reading()

    # -- buffer and output ---------------------------------------------------------

    def _compact(self) -> None:
        """Move the start of an incomplete message to the front of the buffer."""
        k = self.end - self.start
        if self.start:
            ctypes.memmove(self.addr, self.addr + self.start, k)
        self.start, self.end = 0, k

    def _send(self) -> None:
        t = self.transport
        if t is None:
            self.out = []
            return
        if self.out:
            out, self.out = self.out, []
            t.writelines(out)
        if self.closing:
            if not self.flushes_out:  # a FLUSH still owes its reply
                t.close()  # after what is queued has been sent
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or self.closing:
            return
        want = self.out_paused or self.held is not None
        if want and not self.reading_paused:
            self.reading_paused = True
            t.pause_reading()
        elif not want and self.reading_paused:
            self.reading_paused = False
            t.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _superseded(
        self, opcode: int, tag: int, seq: int, offset: int, length: int, rep: Replica
    ) -> None:
        """A change sent on a connection that a newer one replaced (the target gave up on
        this one): refused, and the connection closed, so that nothing late from it can
        land on top of what the newer connection wrote.  Not a failure of the replica."""
        message = (
            f"superseded: session {self.session} of this connection is older than "
            f"session {rep.session} that opened the replica since"
        )
        self._reply(
            opcode, tag, seq, offset, length, Status.SUPERSEDED, json_payload({"error": message})
        )
        self._close_now("superseded", message)

    def _close_now(self, event: str, reason: str) -> None:
        log.warning(
            "event=%s pool=%s volume=%s peer=%s reason=%r",
            event,
            self.server.name,
            self.replica.name if self.replica else "-",
            self.peer,
            reason,
        )
        self.closing = True

    # -- framing -----------------------------------------------------------------------

    def _process(self) -> None:
        """Handle every complete message in the buffer; start receiving a large
        incomplete one in place."""
        view = self.view
        pos = self.start
        end = self.end
        unpack = HEADER.unpack_from
        while not self.closing and self.held is None and end - pos >= HEADER_SIZE:
            magic, version, opcode, _status, tag, seq, offset, length, dlen = unpack(view, pos)
            if magic != MAGIC or version != VERSION or dlen > MAX_PAYLOAD:
                self._bad_header(magic, version, opcode, tag, dlen)
                break
            if not self.authed and not self._admit(opcode, tag, dlen):
                break
            stop = pos + HEADER_SIZE + dlen
            if stop > end:
                if dlen >= SINK_MIN:
                    self._start_sink(opcode, tag, seq, offset, length, dlen, pos, end)
                    self.start = self.end = 0
                    return
                break
            if dlen < SINK_MIN:
                self.expect_large = False
            self._dispatch(opcode, tag, seq, offset, length, view[pos + HEADER_SIZE : stop])
            pos = stop
        if pos == end:
            self.start = self.end = 0
        else:
            self.start = pos

    def _bad_header(self, magic: bytes, version: int, opcode: int, tag: int, dlen: int) -> None:
        try:
            check_header(magic, version, opcode, tag, dlen)
        except VersionMismatch as exc:
            self._reply(
                exc.op,
                tag,
                0,
                0,
                0,
                Status.BAD_VERSION,
                json_payload({"error": str(exc), "versions": list(VERSIONS)}),
            )
            self._close_now("bad_version", str(exc))
        except ProtocolError as exc:
            self._close_now("protocol_error", str(exc))

    def _admit(self, opcode: int, tag: int, dlen: int) -> bool:
        """Before a successful AUTH only HELLO and AUTH pass, with small payloads."""
        op = opcode & 0x7F
        if opcode & REPLY or op not in (_HELLO, _AUTH):
            name = _op_name(opcode)
            self._reply(
                op,
                tag,
                0,
                0,
                0,
                Status.AUTH_REQUIRED,
                json_payload({"error": "authenticate first"}),
            )
            self._auth_refused(f"{name} before authentication")
            return False
        if dlen > MAX_JSON:
            self._close_now("protocol_error", f"{dlen}-byte payload before authentication")
            return False
        return True

    def _auth_refused(self, reason: str) -> None:
        log.warning(
            "event=auth_refused pool=%s peer=%s client=%r reason=%r",
            self.server.name,
            self.peer,
            self.client,
            reason,
        )
        self.closing = True

    def _start_sink(
        self,
        opcode: int,
        tag: int,
        seq: int,
        offset: int,
        length: int,
        dlen: int,
        pos: int,
        end: int,
    ) -> None:
        """Receive the rest of a large message straight into its destination: a write
        buffer the store lends for a WRITE, a buffer of its own otherwise."""
        dest: memoryview | None = None
        rep = self.replica
        if opcode == _WRITE and rep is not None and length == dlen:
            lend = getattr(rep.store, "payload_buffer", None)
            lent = lend(dlen) if lend is not None else None
            if lent is not None:
                slot, dest = lent
                self.sink_slot = (rep, slot)
        if dest is None:
            dest = memoryview(bytearray(dlen))
        have = end - pos - HEADER_SIZE
        dest[:have] = self.view[pos + HEADER_SIZE : end]
        self.sink = dest
        self.sink_got = have
        self.sink_hdr = (opcode, tag, seq, offset, length)
        self.expect_large = True

    def _sink_done(self) -> None:
        sink = self.sink
        assert sink is not None
        self.sink = None
        opcode, tag, seq, offset, length = self.sink_hdr
        try:
            self._dispatch(opcode, tag, seq, offset, length, sink)
        finally:
            self._release_sink()

    def _release_sink(self) -> None:
        self.sink = None
        if self.sink_slot is not None:
            (rep, slot), self.sink_slot = self.sink_slot, None
            release = getattr(rep.store, "release_payload_buffer", None)
            if release is not None and not rep.store.closed:
                release(slot)

    # -- requests ----------------------------------------------------------------------

    def _reply(
        self,
        op: int,
        tag: int,
        seq: int,
        offset: int,
        length: int,
        status: int = _OK,
        *data: Any,
    ) -> None:
        out = self.out
        dlen = 0
        for part in data:
            dlen += len(part)
        out.append(HEADER.pack(MAGIC, VERSION, op | REPLY, status, tag, seq, offset, length, dlen))
        out.extend(data)

    def _dispatch(
        self, opcode: int, tag: int, seq: int, offset: int, length: int, payload: memoryview
    ) -> None:
        rep = self.replica
        if rep is not None and self.session < rep.session and opcode in _CHANGES:
            self._superseded(opcode, tag, seq, offset, length, rep)
            return
        try:
            if opcode == _WRITE or opcode == _WRITE_SHM:  # the hot path first, inline
                if rep is None:
                    raise Refused(Status.NOT_OPEN, "no volume is open on this connection")
                if opcode == _WRITE_SHM:  # the data is in the target's ring
                    payload = self._ring_data(payload, length)
                self._write(rep, seq, offset, length, payload)
                self.out.append(
                    HEADER.pack(MAGIC, VERSION, opcode | REPLY, 0, tag, seq, offset, length, 0)
                )
                return
            if opcode == _READ and rep is not None:
                data = self._read(rep, offset, length)
                self._reply(opcode, tag, seq, offset, length, _OK, data)
                return
            handler = _HANDLERS.get(opcode)
            if handler is None:
                raise Refused(Status.BAD_REQUEST, f"unknown opcode {opcode}")
            handler(self, opcode, tag, seq, offset, length, payload)
        except Busy as busy:
            log.debug(
                "event=request_waits pool=%s volume=%s peer=%s op=%s reason=flush_in_progress",
                self.server.name,
                busy.replica.name,
                self.peer,
                _op_name(opcode),
            )
            if opcode == _WRITE_SHM:  # the ring may be replaced before it runs: its data
                payload = self._ring_data(payload, length)
                opcode = _WRITE
            self.held = (opcode, tag, seq, offset, length, bytes(payload))
            busy.replica.when_idle(self._resume)
        except Exception as exc:
            self._failed(exc, opcode, tag, seq, offset, length)

    def _failed(
        self, exc: Exception, opcode: int, tag: int, seq: int, offset: int, length: int
    ) -> None:
        rep = self.replica
        if isinstance(exc, Refused):
            status, message = exc.status, str(exc)
        elif isinstance(exc, NoSpaceError):
            status, message = Status.NO_SPACE, str(exc)
        elif isinstance(exc, MediumError):
            status, message = Status.MEDIUM_ERROR, str(exc)
        elif isinstance(exc, OutOfRangeError):
            status, message = Status.OUT_OF_RANGE, str(exc)
        elif isinstance(exc, NotFoundError):
            status, message = Status.NOT_FOUND, str(exc)
        elif isinstance(exc, ExistsError | BusyError):
            status, message = Status.CONFLICT, str(exc)
        elif isinstance(exc, OpenRefused | ProtocolError):
            status, message = Status.BAD_REQUEST, str(exc)
        elif isinstance(exc, StoreError):
            status = Status.BAD_REQUEST if opcode == Op.OPEN else Status.MEDIUM_ERROR
            message = str(exc)
        else:
            status, message = Status.INTERNAL, f"internal error: {type(exc).__name__}"
            log.error(
                "event=request_failed pool=%s volume=%s peer=%s op=%d error=%r",
                self.server.name,
                rep.name if rep else "-",
                self.peer,
                opcode,
                str(exc),
                exc_info=exc,
            )
        if status in (Status.NO_SPACE, Status.MEDIUM_ERROR):
            log.warning(
                "event=io_error pool=%s volume=%s peer=%s op=%s status=%s error=%r",
                self.server.name,
                rep.name if rep else "-",
                self.peer,
                _op_name(opcode),
                status.name,
                message,
            )
        changed = opcode in (Op.WRITE, Op.UNMAP) or (
            # a rollback that started rewriting blocks and failed left them mixed
            opcode == Op.ROLLBACK
            and status in (Status.NO_SPACE, Status.MEDIUM_ERROR, Status.INTERNAL)
        )
        if changed and rep is not None and 0 < seq <= MAX_SEQ:
            try:
                rep.write_failed(seq)
            except Exception:  # pragma: no cover - logged, the reply still goes
                log.exception("event=clean_state_failed pool=%s", self.server.name)
        self._reply(
            opcode & 0x7F, tag, seq, offset, length, status, json_payload({"error": message})
        )

    def _resume(self) -> None:
        """The replica a held message waited for is idle: handle it and go on."""
        held, self.held = self.held, None
        if held is None or self.transport is None:
            return
        opcode, tag, seq, offset, length, payload = held
        try:
            self._dispatch(opcode, tag, seq, offset, length, memoryview(payload))
            if self.held is None:
                self._process()
        except Exception:
            log.exception("event=connection_failed pool=%s peer=%s", self.server.name, self.peer)
            self.closing = True
        self._send()

    def _bound(self) -> Replica:
        rep = self.replica
        if rep is None:
            raise Refused(Status.NOT_OPEN, "no volume is open on this connection")
        return rep

    @staticmethod
    def _blocks(rep: Replica, offset: int, length: int, what: str) -> tuple[int, int]:
        """(lba, count) of a byte range that must be whole blocks."""
        mask = rep.block_size - 1
        if offset & mask or length & mask:
            raise Refused(
                Status.BAD_REQUEST,
                f"{what}: offset {offset} and length {length} must be multiples of the "
                f"block size {rep.block_size}",
            )
        return offset >> rep.shift, length >> rep.shift

    def _write(self, rep: Replica, seq: int, offset: int, length: int, data: memoryview) -> None:
        if not 0 < seq <= MAX_SEQ:
            raise Refused(Status.BAD_REQUEST, f"write: seq {seq} is outside 1..{MAX_SEQ}")
        if length != len(data):
            raise Refused(
                Status.BAD_REQUEST, f"write: length {length} but {len(data)} bytes of data"
            )
        lba, _ = self._blocks(rep, offset, length, "write")
        rep.store.write(lba, data, seq)

    def _ring_data(self, desc: memoryview, length: int) -> memoryview:
        """The data a WRITE_SHM names in the attached ring."""
        ring = self.ring
        if len(desc) != DESC.size:
            raise Refused(Status.BAD_REQUEST, f"WRITE_SHM payload must be {DESC.size} bytes")
        gen, off = DESC.unpack(desc)
        if ring is None or ring.gen != gen:
            raise Refused(Status.BAD_REQUEST, f"WRITE_SHM names ring {gen}, which is not mapped")
        try:
            return ring.data(off, length)
        except RingError as e:
            raise Refused(Status.BAD_REQUEST, f"WRITE_SHM: {e}") from None

    def _read(self, rep: Replica, offset: int, length: int) -> bytes:
        if length > MAX_IO:
            raise Refused(Status.BAD_REQUEST, f"read: length {length} exceeds {MAX_IO}")
        lba, n = self._blocks(rep, offset, length, "read")
        return rep.store.read(lba, n)

    # one method per opcode: (self, op, tag, seq, offset, length, payload)

    def _json(self, payload: memoryview) -> dict[str, Any]:
        if len(payload) > MAX_JSON:
            raise Refused(Status.BAD_REQUEST, f"JSON payload exceeds {MAX_JSON} bytes")
        return parse_json(payload) if len(payload) else {}

    def op_hello(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        req = self._json(p)
        client = req.get("client")
        if isinstance(client, str):
            self.client = client[:64]
        reply: dict[str, Any] = {
            "pool": self.server.name,
            "version": VERSION,
            "auth": self.server.secret is not None,
            # a target with the same boot id is on this machine: it may share a ring
            "boot_id": boot_id().hex(),
            "shm": True,
            "instance": self.server.instance,
        }
        if self.server.local_name:  # the same machine may move there (docs/replication.md)
            reply["local"] = self.server.local_name
        if self.server.secret is not None and not self.authed:
            self.challenge = os.urandom(CHALLENGE_BYTES)
            reply["challenge"] = self.challenge.hex()
        log.debug("event=hello pool=%s peer=%s client=%r", self.server.name, self.peer, self.client)
        self._reply(op, tag, seq, offset, length, _OK, json_payload(reply))

    def op_auth(self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview) -> None:
        secret = self.server.secret
        if secret is None:
            raise Refused(Status.BAD_REQUEST, "this pool server does not use authentication")
        if self.authed:
            raise Refused(Status.BAD_REQUEST, "already authenticated")
        challenge, self.challenge = self.challenge, None  # one attempt per challenge
        reason = ""
        mac = nonce = b""
        try:
            req = parse_json(p)
            mac = bytes.fromhex(str(req.get("mac", "")))
            nonce = bytes.fromhex(str(req.get("nonce", "")))
        except (ProtocolError, ValueError):
            reason = "malformed AUTH request"
        if not reason and challenge is None:
            reason = "AUTH without a HELLO challenge"
        elif not reason and not 16 <= len(nonce) <= 64:
            reason = "nonce must be 16 to 64 bytes"
        elif not reason and not hmac.compare_digest(client_proof(secret, challenge or b""), mac):
            reason = "wrong secret"
        if reason:
            self._reply(
                op, tag, seq, offset, length, Status.AUTH_FAILED,
                json_payload({"error": "authentication failed"}),
            )  # fmt: skip
            self._auth_refused(reason)
            return
        self.authed = True
        log.debug(
            "event=auth_ok pool=%s peer=%s client=%r", self.server.name, self.peer, self.client
        )
        self._reply(
            op, tag, seq, offset, length, _OK,
            json_payload({"mac": server_proof(secret, nonce).hex()}),
        )  # fmt: skip

    def op_open(self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview) -> None:
        req = self._json(p)
        name = req.get("volume")
        size = req.get("size")
        block_size = req.get("block_size", 512)
        create = req.get("create", True)
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise Refused(
                Status.BAD_REQUEST,
                f"invalid volume name {name!r}: use 1-128 letters, digits and . _ : + - "
                "(not starting with a punctuation mark)",
            )
        if not _is_int(size) or not _is_int(block_size) or not isinstance(create, bool):
            raise Refused(
                Status.BAD_REQUEST,
                "OPEN needs size and block_size as integers and create as a boolean",
            )
        session = req.get("session", 0)
        if not _is_int(session) or session < 0:
            raise Refused(Status.BAD_REQUEST, "OPEN's session must be a non-negative integer")
        replicas = self.server.replicas
        old = self.replica
        if old is not None and old.name == name:
            replicas.check_block_size(old, block_size)
            old.resize(size)
            rep = old
        else:
            rep = replicas.acquire(name, size, block_size, create)
            self.replica = rep
            if old is not None:
                replicas.release(old)
        # an older session may still read (tools, tests); any change it sends is refused
        rep.session = max(rep.session, session)
        self.session = session
        log.debug(
            "event=volume_bound pool=%s volume=%s peer=%s client=%r",
            self.server.name,
            name,
            self.peer,
            self.client,
        )
        info = {
            "volume": rep.name,
            "uuid": rep.uuid,
            "size": rep.store.num_blocks * rep.block_size,
            "block_size": rep.block_size,
            "high_seq": rep.high_seq,
            "clean_seq": rep.clean_seq,
            "meta": rep.meta,
        }
        self._reply(op, tag, seq, offset, length, _OK, json_payload(info))

    def op_attach_ring(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        """Map the target's ring (``cairn.replication.ring``) in place of any earlier
        one: every message that named the earlier one arrived before this."""
        try:
            ring = MappedRing(self._json(p))
        except RingError as e:
            raise Refused(Status.BAD_REQUEST, f"cannot map the ring: {e}") from None
        if self.ring is not None:
            self.ring.close()
        self.ring = ring
        log.debug(
            "event=ring_attached pool=%s peer=%s gen=%d size=%d",
            self.server.name,
            self.peer,
            ring.gen,
            ring.size,
        )
        self._reply(op, tag, seq, offset, length)

    def op_unmap(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        if not 0 < seq <= MAX_SEQ:
            raise Refused(Status.BAD_REQUEST, f"unmap: seq {seq} is outside 1..{MAX_SEQ}")
        lba, n = self._blocks(rep, offset, length, "unmap")
        rep.store.unmap(lba, n, seq)
        self._reply(op, tag, seq, offset, length)

    def op_read(self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview) -> None:
        self._bound()  # READ with a volume is handled inline in ``_dispatch``

    def op_flush(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()

        def done(err: BaseException | None) -> None:
            self.flushes_out -= 1
            if self.transport is None:
                return
            if err is None:
                self._reply(op, tag, seq, offset, length)
            else:
                self._failed(
                    err if isinstance(err, Exception) else StoreError(str(err)),
                    op, tag, seq, offset, length,
                )  # fmt: skip
            self._send()

        self.flushes_out += 1
        rep.request_flush(done)

    def op_diff(self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview) -> None:
        rep = self._bound()
        lba, n = self._blocks(rep, offset, length, "diff")
        store = rep.store
        if lba + n > store.num_blocks:
            raise OutOfRangeError(
                f"diff: bytes {offset}..{offset + length - 1} are outside the volume of "
                f"{store.num_blocks << rep.shift} bytes"
            )
        end = lba + min(n, MAX_DIFF_BLOCKS)
        threshold = np.uint64(seq)
        runs: list[list[int]] = []
        pos = lba
        while pos < end and len(runs) <= MAX_DIFF_RUNS:
            m = min(DIFF_CHUNK, end - pos)
            newer: np.ndarray = _seqs_array(store.block_seqs(pos, m)) > threshold
            if newer.any():
                edges = np.diff(newer.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
                starts = (np.flatnonzero(edges == 1) + pos).tolist()
                ends = (np.flatnonzero(edges == -1) + pos).tolist()
                for s, e in zip(starts, ends, strict=True):
                    if runs and runs[-1][1] == s:
                        runs[-1][1] = e
                    else:
                        runs.append([s, e])
            pos += m
        covered = pos
        if len(runs) > MAX_DIFF_RUNS:
            covered = runs[MAX_DIFF_RUNS][0]
            del runs[MAX_DIFF_RUNS:]
        data = b"".join([RUN.pack(s, e - s) for s, e in runs])
        self._reply(op, tag, seq, offset, (covered - lba) << rep.shift, _OK, data)

    def op_read_seqs(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        data = self._read(rep, offset, length)
        lba, n = offset >> rep.shift, length >> rep.shift
        seqs = np.array(rep.store.block_seqs(lba, n), dtype=_BE_U64).tobytes()
        self._reply(op, tag, seq, offset, length, _OK, data, seqs)

    def op_rebuild(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        if length > MAX_IO:
            raise Refused(Status.BAD_REQUEST, f"rebuild: length {length} exceeds {MAX_IO}")
        lba, n = self._blocks(rep, offset, length, "rebuild")
        if len(p) != length + 8 * n:
            raise Refused(
                Status.BAD_REQUEST,
                f"rebuild: {len(p)} bytes of payload, expected {length} of data and {8 * n} "
                "of seqs",
            )
        store = rep.store
        if lba + n > store.num_blocks:
            raise OutOfRangeError(
                f"rebuild: bytes {offset}..{offset + length - 1} are outside the volume"
            )
        applied = 0
        if n:
            new = np.frombuffer(p, dtype=_BE_U64, count=n, offset=length).astype(np.uint64)
            if int(new.max()) > MAX_SEQ:
                raise Refused(Status.BAD_REQUEST, f"rebuild: a seq is above {MAX_SEQ}")
            take: np.ndarray = new > _seqs_array(store.block_seqs(lba, n))
            if take.any():
                words = np.frombuffer(p, dtype=np.uint64, count=length // 8)
                zero = np.asarray(~words.reshape(n, rep.block_size // 8).any(axis=1))
                cuts = np.flatnonzero(
                    (take[1:] != take[:-1]) | (new[1:] != new[:-1]) | (zero[1:] != zero[:-1])
                )
                bounds = [0, *(cuts + 1).tolist(), n]
                shift = rep.shift
                for s, e in zip(bounds[:-1], bounds[1:], strict=True):
                    if not take[s]:
                        continue
                    bseq = int(new[s])
                    if zero[s]:
                        store.unmap(lba + s, e - s, bseq)
                    else:
                        store.write(lba + s, p[s << shift : e << shift], bseq)
                    applied += e - s
        self._reply(op, tag, seq, offset, length, _OK, COUNT.pack(applied))

    def op_info(self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview) -> None:
        rep = self.replica
        info: dict[str, Any]
        if rep is None:
            allocated = {}
            for name, open_rep in self.server.replicas.open.items():
                try:
                    allocated[name] = open_rep.store.allocated_bytes()
                except StoreError:
                    continue  # closing, or its files are gone: left out
            info = {
                "pool": self.server.name,
                "volumes": self.server.volume_names(),
                "allocated": allocated,
            }
        else:
            store = rep.store
            info = {
                "volume": rep.name,
                "uuid": rep.uuid,
                "size": store.num_blocks * rep.block_size,
                "block_size": rep.block_size,
                "high_seq": rep.high_seq,
                "clean_seq": rep.clean_seq,
                "allocated": store.allocated_bytes(),
                "meta": rep.meta,
            }
        self._reply(op, tag, seq, offset, length, _OK, json_payload(info))

    def op_set_meta(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        rep.set_meta(self._json(p))
        self._reply(op, tag, seq, offset, length)

    def op_resize(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        rep.resize(offset)
        self._reply(op, tag, seq, offset, length)

    def op_close(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        self._reply(op, tag, seq, offset, length)
        self.closing = True

    # snapshots, clones, rollback: ``cairn.pool.snapshots``

    def _named(self, p: memoryview, *keys: str) -> list[str]:
        req = self._json(p)
        values = [req.get(k) for k in keys]
        if not all(isinstance(v, str) and v for v in values):
            raise Refused(Status.BAD_REQUEST, f"the request needs {', '.join(keys)} as strings")
        return cast(list[str], values)

    def op_snapshot(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        (name,) = self._named(p, "name")
        doc = snapshots.create(rep, name)
        log.info("event=snapshot_created pool=%s volume=%s snapshot=%s high_seq=%d",
                 self.server.name, rep.name, name, doc["high_seq"])  # fmt: skip
        self._reply(op, tag, seq, offset, length, _OK, json_payload(doc))

    def op_snapshot_delete(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        (name,) = self._named(p, "name")
        snapshots.delete(rep, name)
        log.info("event=snapshot_deleted pool=%s volume=%s snapshot=%s",
                 self.server.name, rep.name, name)  # fmt: skip
        self._reply(op, tag, seq, offset, length)

    def op_snapshot_list(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        doc = {"snapshots": snapshots.listing(rep)}
        self._reply(op, tag, seq, offset, length, _OK, json_payload(doc))

    def op_clone(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        snap, name = self._named(p, "snapshot", "name")
        if not NAME_RE.fullmatch(name):
            raise Refused(Status.BAD_REQUEST, f"invalid volume name {name!r}")
        doc = snapshots.clone(rep, self.server.pool, snap, name)
        log.info("event=clone_created pool=%s volume=%s snapshot=%s clone=%s",
                 self.server.name, rep.name, snap, name)  # fmt: skip
        self._reply(op, tag, seq, offset, length, _OK, json_payload(doc))

    def op_destroy(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        """Delete a closed volume from the pool, in a worker thread (a ZFS destroy may
        take seconds; the other volumes' I/O goes on)."""
        req = self._json(p)
        name, force = req.get("name"), req.get("force", False)
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or not isinstance(force, bool):
            raise Refused(Status.BAD_REQUEST, "DESTROY needs name (a volume) and force (boolean)")
        replicas = self.server.replicas
        rep = replicas.open.get(name)
        if rep is not None:
            if rep.refs > 0:
                raise Refused(
                    Status.CONFLICT,
                    f"volume {name!r} is open on pool {self.server.name} "
                    f"({rep.refs} connection(s)): stop its target first",
                )
            if rep.flushing:  # its last flush before closing: go on once closed
                raise Busy(rep)
            replicas._close(rep)
        if name in replicas.destroying:
            raise Refused(Status.CONFLICT, f"volume {name!r} is being deleted already")
        replicas.destroying.add(name)
        fut = asyncio.get_running_loop().run_in_executor(None, replicas.destroy, name, force)

        def done(f: asyncio.Future[None]) -> None:
            replicas.destroying.discard(name)
            if self.transport is None:
                return
            err = None if f.cancelled() else f.exception()
            if f.cancelled():
                err = StoreError(f"deleting volume {name!r} was cancelled")
            if err is None:
                self._reply(op, tag, seq, offset, length, _OK, json_payload({"deleted": name}))
            else:
                self._failed(
                    err if isinstance(err, Exception) else StoreError(str(err)),
                    op, tag, seq, offset, length,
                )  # fmt: skip
            self._send()

        fut.add_done_callback(done)

    def op_rollback(
        self, op: int, tag: int, seq: int, offset: int, length: int, p: memoryview
    ) -> None:
        rep = self._bound()
        (snap,) = self._named(p, "snapshot")
        if not 0 < seq <= MAX_SEQ:
            raise Refused(Status.BAD_REQUEST, f"rollback: seq {seq} is outside 1..{MAX_SEQ}")
        blocks = snapshots.rollback(rep, snap, seq)
        log.info("event=rolled_back pool=%s volume=%s snapshot=%s seq=%d blocks=%d",
                 self.server.name, rep.name, snap, seq, blocks)  # fmt: skip
        self._reply(op, tag, seq, offset, length, _OK, json_payload({"blocks": blocks}))


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _op_name(opcode: int) -> str:
    try:
        return Op(opcode & 0x7F).name
    except ValueError:
        return str(opcode)


# requests that change a replica: refused on a superseded connection
_CHANGES = frozenset(
    (
        Op.WRITE, Op.WRITE_SHM, Op.UNMAP, Op.REBUILD, Op.SET_META, Op.RESIZE,
        Op.SNAPSHOT, Op.SNAPSHOT_DELETE, Op.CLONE, Op.ROLLBACK,
    )
)  # fmt: skip

_HANDLERS: dict[int, Callable[..., None]] = {
    int(Op.HELLO): PoolProtocol.op_hello,
    int(Op.AUTH): PoolProtocol.op_auth,
    int(Op.OPEN): PoolProtocol.op_open,
    int(Op.UNMAP): PoolProtocol.op_unmap,
    int(Op.READ): PoolProtocol.op_read,
    int(Op.FLUSH): PoolProtocol.op_flush,
    int(Op.DIFF): PoolProtocol.op_diff,
    int(Op.READ_SEQS): PoolProtocol.op_read_seqs,
    int(Op.REBUILD): PoolProtocol.op_rebuild,
    int(Op.INFO): PoolProtocol.op_info,
    int(Op.SET_META): PoolProtocol.op_set_meta,
    int(Op.RESIZE): PoolProtocol.op_resize,
    int(Op.CLOSE): PoolProtocol.op_close,
    int(Op.ATTACH_RING): PoolProtocol.op_attach_ring,
    int(Op.SNAPSHOT): PoolProtocol.op_snapshot,
    int(Op.SNAPSHOT_DELETE): PoolProtocol.op_snapshot_delete,
    int(Op.SNAPSHOT_LIST): PoolProtocol.op_snapshot_list,
    int(Op.CLONE): PoolProtocol.op_clone,
    int(Op.ROLLBACK): PoolProtocol.op_rollback,
    int(Op.DESTROY): PoolProtocol.op_destroy,
}


# -- the daemon ----------------------------------------------------------------------------


BACKENDS = ("embedded", "zfs")


@dataclass
class PoolServeOptions:
    name: str
    #: the directory of the embedded store (``backend="embedded"``)
    path: Path | None = None
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    secret_file: Path | None = None
    #: ``embedded`` (sparse files in ``path``) or ``zfs`` (datasets in ``zpool``)
    backend: str = "embedded"
    #: the ZFS pool (``tank``: volumes in ``tank/cairn/<volume>``) or root dataset
    zpool: str | None = None
    #: ``batch``: SCHED_BATCH (``use_batch_scheduling``), or ``normal``
    scheduling: str = "batch"


def use_batch_scheduling() -> str:
    """Run this process (and the threads it starts later) as SCHED_BATCH: the kernel
    gives it the same CPU share, but a woken pool server does not preempt the process
    that woke it.  A target that sends one batch of writes to three pool servers on its
    own CPUs otherwise loses the CPU to the first of them mid-batch, and the others
    wake one at a time (measured: about 10% more 4 KiB writes on 2 CPUs, docs/
    performance.md).  Returns "" or why it could not (then the default policy stays)."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as e:
        return str(e) or type(e).__name__
    return ""


def open_pool(opts: PoolServeOptions) -> tuple[EmbeddedPool, str]:
    """The store the options name, and where it is (for messages).  The ZFS pool offers
    the embedded pool's API (``docs/zfs.md``), so the server treats both alike."""
    if opts.backend == "embedded":
        if opts.path is None or opts.zpool is not None:
            raise ServeError("--backend embedded takes --path DIR (and no --zpool)")
        where = str(opts.path)
        try:
            return EmbeddedPool(opts.path), where
        except (StoreError, OSError) as e:
            raise ServeError(f"cannot open the pool in {where}: {e}") from e
    if opts.backend == "zfs":
        if opts.zpool is None or opts.path is not None:
            raise ServeError("--backend zfs takes --zpool POOL (and no --path)")
        from cairn.store.zfs import ZfsPool

        where = opts.zpool
        try:
            zfs_pool = ZfsPool(opts.zpool)
        except (StoreError, OSError) as e:
            raise ServeError(f"cannot open the ZFS pool {where}: {e}") from e
        return cast(EmbeddedPool, zfs_pool), f"{zfs_pool.root} ({zfs_pool.path})"
    raise ServeError(f"unknown backend {opts.backend!r}: use one of {', '.join(BACKENDS)}")


def parse_listen(listen: str) -> tuple[str, int]:
    try:
        return parse_host_port(
            listen, "listen address", "127.0.0.1:3232", listen=True, any_port=True
        )
    except ValueError as e:
        raise ServeError(str(e)) from None


async def run(opts: PoolServeOptions) -> int:
    if not NAME_RE.fullmatch(opts.name):
        raise ServeError(
            f"invalid pool name {opts.name!r}: use 1-128 letters, digits and . _ : + - "
            "(not starting with a punctuation mark)"
        )
    host, port = parse_listen(opts.listen)
    secret: bytes | None = None
    if opts.secret_file is not None:
        try:
            secret = load_secret(opts.secret_file)
        except SecretError as e:
            raise ServeError(str(e)) from e
    if opts.scheduling == "batch" and (why := use_batch_scheduling()):
        log.warning("event=scheduling_unchanged pool=%s error=%r", opts.name, why)
    pool, where = open_pool(opts)
    server = PoolServer(opts.name, pool, secret)
    try:
        host, port = await server.start(host, port)
    except OSError as e:
        pool.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "event=serving pool=%s backend=%s path=%s listen=%s:%d auth=%s",
        opts.name,
        opts.backend,
        where,
        host,
        port,
        "hmac-sha256" if secret is not None else "none",
    )
    url_host = f"[{host}]" if ":" in host else host
    print(f"ready pool={opts.name} listen={url_host}:{port}", flush=True)
    await stop.wait()
    log.info("event=stopping pool=%s", opts.name)
    await server.stop()
    log.info("event=stopped pool=%s", opts.name)
    return 0


def serve(opts: PoolServeOptions) -> int:
    return run_daemon(run(opts), ServeError)


__all__ = [
    "BACKENDS",
    "DEFAULT_PORT",
    "MAX_DIFF_BLOCKS",
    "PoolProtocol",
    "PoolServeOptions",
    "PoolServer",
    "ServeError",
    "open_pool",
    "parse_listen",
    "run",
    "serve",
]
