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
from cairn.replication.ring import Region, RingHost, SharedRing
from cairn.replication.volume import ReplicatedVolume
from cairn.replication.wire import Op, Status
from cairn.store._fs import atomic_write_json, boot_id
from cairn.target.operations import settle_owed

log = logging.getLogger("cairn.target")

BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
HANDSHAKE_TIMEOUT = 10.0
#: bytes a link may hold in the target's memory for a pool server whose socket takes no
#: more: beyond, that replica does not keep up with the others and is degraded (and
#: rebuilt later), so that a slow replica cannot grow the target without bound
QUEUE_LIMIT = 8 << 20


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

    def __init__(self, connector: Connector, kind: str = "tcp") -> None:
        self.connector = connector
        self.kind = kind  # "tcp", or "local": the pool server's local socket
        # kept: each asyncio.get_running_loop() costs a getpid() system call
        self.loop = asyncio.get_running_loop()
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
        # the shared-memory ring the pool server has mapped (same machine), the
        # regions its unanswered WRITE_SHMs name, and a ring being attached
        self.ring: SharedRing | None = None
        self.shm_refs: dict[int, Region] = {}
        self.attaching: tuple[int, SharedRing] | None = None
        self.overfull = False  # ``_overfull`` is scheduled

    # -- shared memory ---------------------------------------------------------------
    def send_shm(self, parts: list[Any], tag: int, region: Region) -> None:
        """Send a WRITE_SHM naming ``region``, which stays in use until the answer."""
        if self.closed:
            return
        region.refs += 1
        self.shm_refs[tag] = region
        # small and immutable (header and ring address): leaves with the others at
        # the end of this turn of the loop, one system call for all of them
        self.out += parts
        if not self.flushing:
            self.flushing = True
            self.loop.call_soon(self._flush)

    def use_ring(self, ring: SharedRing | None) -> None:
        """Name ``ring`` from now on (None: no ring, data in the messages)."""
        if self.ring is not None:
            self.ring.users -= 1
        self.ring = ring
        if ring is not None:
            ring.users += 1

    def drop_ring(self) -> None:
        """Stop naming the ring; if WRITE_SHMs are unanswered, nothing may ever be
        written into their regions again (``cairn.replication.ring``): retire it."""
        self.use_ring(None)
        host = self.connector.rings
        if not self.shm_refs or host is None:
            return
        refs, self.shm_refs = self.shm_refs, {}
        retired = {region.ring for region in refs.values() if not region.ring.retired}
        for ring in retired:
            host.retire(ring)
        for region in refs.values():
            region.release()
        fresh = host.ring() if retired else None
        if fresh is None:
            return
        # the other pool servers on this machine move to the replacement
        for r in self.volume.replicas:
            link = r.link
            if isinstance(link, ReplicaLink) and link is not self and link.ring in retired:
                link.attach_ring(fresh)

    def attach_ring(self, ring: SharedRing) -> None:
        """Ask the pool server to map ``ring`` (a replacement after a retirement); its
        answer comes through ``data_received``, and until then data goes in the
        messages."""
        if self.closed or not self.attached:
            return
        self.use_ring(None)
        tag = self.volume.next_tag()
        self.attaching = (tag, ring)
        self.send(
            wire.encode(Op.ATTACH_RING, tag=tag, data=wire.json_payload(ring.attach_request()))
        )

    def _attached_ring(self, msg: wire.Message) -> None:
        assert self.attaching is not None
        _, ring = self.attaching
        self.attaching = None
        if msg.status == Status.OK and not ring.retired:
            self.use_ring(ring)
        elif msg.status != Status.OK:
            log.warning(
                "event=ring_refused volume=%s replica=%s error=%r",
                self.volume.name,
                self.address,
                wire.error_text(msg),
            )

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
            self.loop.call_soon(self._flush)

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
            self._check_queue(t)
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
        self._check_queue(t)

    def _check_queue(self, t: asyncio.Transport) -> None:
        if not self.overfull and t.get_write_buffer_size() > QUEUE_LIMIT:
            self.overfull = True  # decided outside the volume's own call into send()
            self.loop.call_soon(self._overfull)

    def _overfull(self) -> None:
        self.overfull = False
        t = self.transport
        queued = t.get_write_buffer_size() if t is not None and not self.closed else 0
        if queued <= QUEUE_LIMIT:
            return
        r = self.volume.replica(self.address)
        if r is not None and r.link is self:
            self.volume.degrade(r, f"does not keep up: {queued >> 20} MiB waiting to be sent to it")

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.drop_ring()
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
            if self.shm_refs:
                region = self.shm_refs.pop(msg.tag, None)
                if region is not None:
                    region.release()
            if self.attaching is not None and msg.tag == self.attaching[0]:
                self._attached_ring(msg)
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
        self.drop_ring()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(ConnectionError("connection closed by the pool server"))
        if self.attached:
            self.attached = False
            self.volume.detach(self.address, self, f"connection lost: {exc or 'closed'}")
        self.connector.lost(self)

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
        self.last_ring_error = ""
        self.last_local_error = ""

    @property
    def rings(self) -> RingHost | None:
        return self.volume.shared  # type: ignore[no-any-return]

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def lost(self, link: ReplicaLink) -> None:
        if link is not self.link:  # one given up on, or left for the local socket
            return
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
        if self.volume.local_links and info.get("local") and info.get("boot_id") == _BOOT_ID:
            link, info = await self._go_local(link, info)
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
        # snapshot deletes it missed while offline, before it can vote again
        await settle_owed(link, self.volume.book, self.address)
        if self.rings is not None and info.get("shm") and info.get("boot_id") == _BOOT_ID:
            await self._share_ring(link)
        if link.closed:
            raise ConnectionError("connection closed during the handshake")
        link.attached = True
        self.last_error = ""
        self.volume.attach(self.address, link, wire.parse_json(opened.data))

    async def _go_local(
        self, tcp: ReplicaLink, info: dict[str, Any]
    ) -> tuple[ReplicaLink, dict[str, Any]]:
        """The pool server is on this machine and listens on a local socket too: go on
        there (the same protocol; about half the system time per message).  It must be
        the same server (its ``instance``); when it cannot be reached or is not, stay on
        TCP (said once per reason)."""
        loop = asyncio.get_running_loop()
        name = str(info["local"])
        local: ReplicaLink | None = None
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:  # connected here: the event loop's own path rejects abstract names
                await asyncio.wait_for(loop.sock_connect(sock, "\0" + name), HANDSHAKE_TIMEOUT)
            except BaseException:
                sock.close()
                raise
            _, local = await loop.create_unix_connection(
                lambda: ReplicaLink(self, "local"), sock=sock
            )
            self.link = local
            hello = await local.request(Op.HELLO, {"client": f"target:{self.volume.name}"})
            _check(hello, "HELLO")
            there = wire.parse_json(hello.data)
            if there.get("instance") != info.get("instance"):
                raise ConnectionError(f"another pool server answers on local socket {name!r}")
        except BaseException as e:
            if local is not None:
                local.close(f"local socket not used: {e}")
            if not isinstance(e, OSError | TimeoutError | ConnectionError | ValueError):
                # cancelled (the replica is being removed, the target stops): stop() may
                # have closed only the local link, so the TCP one is closed here
                tcp.close("handshake abandoned")
                self.link = tcp
                raise
            self.link = tcp
            reason = str(e) or type(e).__name__
            if reason != self.last_local_error:
                log.warning(
                    "event=local_socket_not_used volume=%s replica=%s error=%r",
                    self.volume.name,
                    self.address,
                    reason,
                )
                self.last_local_error = reason
            return tcp, info
        tcp.close("moved to the pool server's local socket")
        self.last_local_error = ""
        return local, there

    async def _share_ring(self, link: ReplicaLink) -> None:
        """The pool server is on this machine: let it map the volume's ring.  When it
        cannot, the data goes in the messages (said once per reason)."""
        assert self.rings is not None
        ring = self.rings.ring()
        error = self.rings.error
        if ring is not None:
            reply = await link.request(Op.ATTACH_RING, ring.attach_request())
            if reply.status == Status.OK:
                if not ring.retired:
                    link.use_ring(ring)
                self.last_ring_error = ""
                log.info("event=ring_shared volume=%s replica=%s", self.volume.name, self.address)
                return
            error = wire.error_text(reply)
        if error != self.last_ring_error:
            log.warning(
                "event=ring_not_shared volume=%s replica=%s error=%r",
                self.volume.name,
                self.address,
                error,
            )
            self.last_ring_error = error


_BOOT_ID = boot_id().hex()


def _check(msg: wire.Message, what: str) -> None:
    if msg.status != Status.OK:
        raise ConnectionError(f"{what} refused: {wire.error_text(msg)}")
