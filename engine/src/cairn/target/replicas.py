"""The target's connections to its replicas' pool servers (asyncio glue around
``cairn.replication.volume.ReplicatedVolume``).

One ``Connector`` per replica address keeps a connection up: connect, HELLO, AUTH when
a secret is set (the pool server must prove it knows the secret too), OPEN the volume
(created on first use), then hand the link to the volume.  A lost or refused
connection is retried with exponential backoff (0.2 s up to 5 s).  A message with a
payload (a write, gathered by the fast lane from the writes that arrived together)
leaves with one ``writev`` before ``send`` returns, together with the small messages
queued before it; those (reads, flushes, control) otherwise leave together at the end
of the loop's turn.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets as pysecrets
import socket
import uuid as uuidlib
from pathlib import Path
from typing import Any

from cairn.daemon import parse_host_port
from cairn.replication import wire
from cairn.replication.volume import ReplicatedVolume
from cairn.replication.wire import Op, Status
from cairn.store._fs import atomic_write_json

log = logging.getLogger("cairn.target")

BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
HANDSHAKE_TIMEOUT = 10.0


class TargetState:
    """What a replicating target keeps in its state directory: the volume's UUID and
    which replicas are trusted (``<volume>.state.json``), and its sequence numbers
    (``<volume>.seq``, a ``SeqAllocator``)."""

    def __init__(self, directory: Path, volume: str) -> None:
        self.path = directory / f"{volume}.state.json"
        directory.mkdir(parents=True, exist_ok=True)
        self.doc: dict[str, Any]
        try:
            self.doc = json.loads(self.path.read_text())
            if not isinstance(self.doc, dict) or self.doc.get("format") != 1:
                raise ValueError("unknown format")
        except FileNotFoundError:
            self.doc = {"format": 1, "volume": volume, "uuid": str(uuidlib.uuid4()), "trusted": []}
            atomic_write_json(self.path, self.doc)
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path}: cannot read the target state: {e}") from e

    @property
    def uuid(self) -> uuidlib.UUID:
        return uuidlib.UUID(self.doc["uuid"])

    def trusted(self) -> set[str]:
        return set(self.doc.get("trusted", []))

    def save_trusted(self, addresses: set[str]) -> None:
        self.doc["trusted"] = sorted(addresses)
        atomic_write_json(self.path, self.doc)

    def watermarks(self) -> dict[str, int]:
        marks = self.doc.get("acked", {})
        return {str(k): int(v) for k, v in marks.items()} if isinstance(marks, dict) else {}

    def save_watermarks(self, marks: dict[str, int]) -> None:
        self.doc["acked"] = dict(sorted(marks.items()))
        atomic_write_json(self.path, self.doc)


def parse_address(address: str) -> tuple[str, int]:
    return parse_host_port(address, "replica address", "10.0.0.2:3232")


class ReplicaLink(asyncio.Protocol):
    """One connection to one pool server, for one replica of the volume."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.volume = connector.volume
        self.address = connector.address
        self.transport: asyncio.Transport | None = None
        self.decoder = wire.Decoder()
        self.out: list[Any] = []
        self.flushing = False
        self.attached = False
        self.closed = False
        self.handshake: asyncio.Future[wire.Message] | None = None
        self.fd = -1  # our own descriptor of the socket, for writev

    # -- Link ----------------------------------------------------------------------
    def send(self, parts: list[Any]) -> None:
        """Queue a message.  One with a payload leaves now, with those queued before it,
        so the caller's buffer is free again when this returns (nothing is copied);
        the others leave together at the end of this turn of the loop."""
        if self.closed:
            return
        self.out += parts
        if len(parts) > 1:
            self._flush()
        elif not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        out, self.out = self.out, []
        t = self.transport
        if not out or t is None or self.closed:
            return
        if self.fd < 0 or t.get_write_buffer_size():
            # behind what is queued already, to keep the order; the transport may keep
            # a reference to what it queues, and callers reuse their buffers: copy
            t.writelines([p if type(p) is bytes else bytes(p) for p in out])
            return
        # straight to the socket, one system call; the transport queues (copies) only
        # what the socket does not take now
        try:
            sent = os.writev(self.fd, out)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self.close(f"send failed: {e}")
            return
        for part in out:
            n = len(part)
            if sent >= n:
                sent -= n
                continue
            # what the socket did not take waits in the transport, which may keep a
            # reference rather than a copy: the caller's buffer is reused once send()
            # returns, so it must be a copy (found by the fault suite: a payload
            # overwritten by the next write's data before it left)
            rest = memoryview(part)[sent:] if sent else part
            t.write(rest if type(rest) is bytes else bytes(rest))
            sent = 0

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            log.info(
                "event=replica_link_close volume=%s replica=%s reason=%r",
                self.volume.name,
                self.address,
                reason,
            )
            if self.transport is not None:
                self.transport.abort()

    # -- asyncio -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            self.fd = os.dup(sock.fileno())

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except wire.ProtocolError as e:
            self.close(f"protocol error from the pool server: {e}")
            return
        for msg in messages:
            if not self.attached:
                if self.handshake is not None and not self.handshake.done():
                    self.handshake.set_result(msg)
                continue
            try:
                self.volume.on_reply(self.address, self, msg)
            except Exception:
                log.exception(
                    "event=reply_failed volume=%s replica=%s", self.volume.name, self.address
                )
                self.close("internal error while handling a reply")
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(ConnectionError("connection closed by the pool server"))
        if self.attached:
            self.attached = False
            self.volume.detach(self.address, self, f"connection lost: {exc or 'closed'}")
        self.connector.lost()

    # -- handshake -----------------------------------------------------------------
    async def request(self, op: int, payload: dict[str, Any]) -> wire.Message:
        assert self.transport is not None
        if self.closed:
            raise ConnectionError("connection closed by the pool server")
        self.handshake = asyncio.get_running_loop().create_future()
        self.transport.writelines(wire.encode(op, tag=0, data=wire.json_payload(payload)))
        return await asyncio.wait_for(self.handshake, HANDSHAKE_TIMEOUT)


class Connector:
    """Keeps one replica connected, and reconnects it after a loss."""

    def __init__(
        self,
        volume: ReplicatedVolume,
        address: str,
        size: int,
        block_size: int,
        secret: bytes | None,
    ) -> None:
        self.volume = volume
        self.address = address
        self.host, self.port = parse_address(address)
        self.size = size
        self.block_size = block_size
        self.secret = secret
        self.link: ReplicaLink | None = None
        self.backoff = BACKOFF_MIN
        self.stopped = False
        self.task: asyncio.Task[None] | None = None
        self.last_error = ""

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def lost(self) -> None:
        if not self.stopped and (self.task is None or self.task.done()):
            self.task = asyncio.get_running_loop().create_task(self._run(delay=self.backoff))

    async def stop(self) -> None:
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
        if self.link is not None:
            self.link.close("target stopping")

    async def _run(self, delay: float = 0.0) -> None:
        while not self.stopped:
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._connect()
                self.backoff = BACKOFF_MIN
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not isinstance(e, TimeoutError | OSError | ConnectionError | ValueError):
                    log.exception(
                        "event=replica_connect_error volume=%s replica=%s",
                        self.volume.name,
                        self.address,
                    )
                reason = str(e) or type(e).__name__
                if reason != self.last_error:
                    log.warning(
                        "event=replica_connect_failed volume=%s replica=%s error=%r",
                        self.volume.name,
                        self.address,
                        reason,
                    )
                    self.last_error = reason
                if self.link is not None:
                    self.link.close(reason)
                    self.link = None
                delay = self.backoff
                self.backoff = min(BACKOFF_MAX, self.backoff * 2)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, link = await asyncio.wait_for(
            loop.create_connection(lambda: ReplicaLink(self), self.host, self.port),
            HANDSHAKE_TIMEOUT,
        )
        self.link = link
        hello = await link.request(Op.HELLO, {"client": f"target:{self.volume.name}"})
        _check(hello, "HELLO")
        info = wire.parse_json(hello.data)
        if info.get("auth"):
            if self.secret is None:
                raise ConnectionError("the pool server requires a secret (--secret-file)")
            nonce = pysecrets.token_bytes(wire.CHALLENGE_BYTES)
            challenge = bytes.fromhex(str(info.get("challenge", "")))
            mac = wire.client_proof(self.secret, challenge)
            reply = await link.request(Op.AUTH, {"mac": mac.hex(), "nonce": nonce.hex()})
            _check(reply, "AUTH")
            proof = bytes.fromhex(str(wire.parse_json(reply.data).get("mac", "")))
            if not hmac.compare_digest(proof, wire.server_proof(self.secret, nonce)):
                raise ConnectionError("the pool server could not prove it knows the secret")
        opened = await link.request(
            Op.OPEN,
            {
                "volume": self.volume.name,
                "size": self.size,
                "block_size": self.block_size,
                "create": True,
                # fences this connection's earlier ones: the pool server refuses changes
                # that arrive late on a connection this one replaced
                "session": self.volume.new_session(),
            },
        )
        _check(opened, "OPEN")
        if link.closed:
            raise ConnectionError("connection closed during the handshake")
        link.attached = True
        self.last_error = ""
        self.volume.attach(self.address, link, wire.parse_json(opened.data))


def _check(msg: wire.Message, what: str) -> None:
    if msg.status != Status.OK:
        try:
            text = str(wire.parse_json(msg.data).get("error", ""))
        except wire.ProtocolError:
            text = ""
        raise ConnectionError(f"{what} refused: {Status(msg.status).name} {text}".strip())
