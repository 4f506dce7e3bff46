"""A small blocking client of a pool server (one request at a time, plain socket), for
tests and tools.  Targets use the asynchronous client of the replication layer.

::

    with PoolClient("127.0.0.2", 3232, secret=b"...") as c:
        c.open("vol0", 1 << 30)
        c.write(0, b"x" * 4096, seq=1)
"""

from __future__ import annotations

import hmac
import os
import socket
from typing import Any

from cairn.replication.wire import (
    CHALLENGE_BYTES,
    COUNT,
    Decoder,
    Message,
    Op,
    Payload,
    ProtocolError,
    Status,
    client_proof,
    encode,
    json_payload,
    pack_seqs,
    parse_json,
    server_proof,
    unpack_runs,
    unpack_seqs,
)


class PoolError(Exception):
    """The pool server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        try:
            name = Status(status).name
        except ValueError:
            name = str(status)
        super().__init__(f"{name}: {message}" if message else name)
        self.status = status
        self.message = message


class PoolClient:
    """One connection to a pool server.  ``connect`` (called by the first request if
    needed) says HELLO and, with a secret, authenticates both ways."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 10,
        secret: bytes | str | None = None,
        client: str = "cairn-pool-client",
        local: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        #: connect to this local socket (a HELLO's ``local``) instead of host:port
        self.local = local
        self.timeout = timeout
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.client = client
        self.sock: socket.socket | None = None
        self.server_info: dict[str, Any] = {}
        self._decoder = Decoder()
        self._ready: list[Message] = []
        self._tag = 0
        self.block_size = 512

    # -- connection ----------------------------------------------------------------

    def connect(self) -> PoolClient:
        if self.sock is not None:
            return self
        if self.local is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect("\0" + self.local)  # the abstract namespace
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._decoder = Decoder()
        self._ready = []
        try:
            self.hello()
            if self.secret is not None:
                self.auth()
        except BaseException:
            self.disconnect()
            raise
        return self

    def disconnect(self) -> None:
        """Drop the connection without a CLOSE."""
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def close(self) -> None:
        """Say CLOSE (when connected) and drop the connection."""
        if self.sock is None:
            return
        try:
            self.request(Op.CLOSE)
        except (OSError, PoolError, ProtocolError):
            pass
        finally:
            self.disconnect()

    def __enter__(self) -> PoolClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messages --------------------------------------------------------------------

    def send(self, parts: list[Payload]) -> None:
        """Send raw buffers (a message from ``wire.encode``, or anything else)."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        total = sum(memoryview(p).nbytes for p in parts)
        sent = self.sock.sendmsg(parts)
        if sent < total:
            self.sock.sendall(b"".join(bytes(p) for p in parts)[sent:])

    def receive(self) -> Message:
        """The next message from the server; ``ConnectionError`` when it closed."""
        assert self.sock is not None, "not connected"
        while not self._ready:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"pool server {self.host}:{self.port} closed the connection")
            self._ready.extend(self._decoder.feed(chunk))
        return self._ready.pop(0)

    def request(
        self,
        op: int,
        *,
        seq: int = 0,
        offset: int = 0,
        length: int = 0,
        data: Payload = b"",
        check: bool = True,
    ) -> Message:
        """Send one request and wait for its reply; ``PoolError`` on an error status
        unless ``check`` is false."""
        if self.sock is None:
            self.connect()
        self._tag += 1
        tag = self._tag
        self.send(encode(op, tag=tag, seq=seq, offset=offset, length=length, data=data))
        reply = self.receive()
        if not reply.reply or reply.tag != tag or reply.op != int(op) & 0x7F:
            raise ProtocolError(
                f"expected the reply to op {int(op)} tag {tag}, got op {reply.op} "
                f"tag {reply.tag} (reply={reply.reply})"
            )
        if check and reply.status != Status.OK:
            message = ""
            if reply.data:
                try:
                    message = str(parse_json(reply.data).get("error", ""))
                except ProtocolError:
                    message = bytes(reply.data[:200]).decode(errors="replace")
            raise PoolError(reply.status, message)
        return reply

    def _json(self, op: int, obj: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        reply = self.request(op, data=json_payload(obj) if obj is not None else b"", **kw)
        return parse_json(reply.data) if reply.data else {}

    # -- operations ------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        self.server_info = self._json(Op.HELLO, {"client": self.client})
        return self.server_info

    def auth(self) -> None:
        """Prove we know the secret and check that the server does too."""
        if self.secret is None:
            raise ValueError("no secret to authenticate with")
        challenge = bytes.fromhex(str(self.server_info.get("challenge", "")))
        nonce = os.urandom(CHALLENGE_BYTES)
        reply = self._json(
            Op.AUTH, {"mac": client_proof(self.secret, challenge).hex(), "nonce": nonce.hex()}
        )
        try:
            mac = bytes.fromhex(str(reply.get("mac", "")))
        except ValueError:
            mac = b""
        if not hmac.compare_digest(mac, server_proof(self.secret, nonce)):
            self.disconnect()
            raise PoolError(
                Status.AUTH_FAILED, "the pool server did not prove that it knows the secret"
            )

    def open(
        self,
        volume: str,
        size: int,
        block_size: int = 512,
        create: bool = True,
        session: int | None = None,
    ) -> dict[str, Any]:
        req: dict[str, Any] = {
            "volume": volume,
            "size": size,
            "block_size": block_size,
            "create": create,
        }
        if session is not None:
            req["session"] = session
        info = self._json(Op.OPEN, req)
        self.block_size = int(info.get("block_size", block_size))
        return info

    def write(self, offset: int, data: Payload, seq: int) -> None:
        self.request(Op.WRITE, seq=seq, offset=offset, length=memoryview(data).nbytes, data=data)

    def unmap(self, offset: int, length: int, seq: int) -> None:
        self.request(Op.UNMAP, seq=seq, offset=offset, length=length)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.request(Op.READ, offset=offset, length=length).data)

    def flush(self) -> None:
        self.request(Op.FLUSH)

    def diff(self, offset: int, length: int, threshold: int) -> list[tuple[int, int]]:
        """Runs (lba, block count) of the blocks in the range whose seq is above
        ``threshold``; asks as often as the server needs to cover the whole range."""
        runs: list[tuple[int, int]] = []
        pos, end = offset, offset + length
        while pos < end:
            reply = self.request(Op.DIFF, seq=threshold, offset=pos, length=end - pos)
            if reply.length <= 0:
                raise ProtocolError(f"DIFF at {pos} made no progress")
            for lba, count in unpack_runs(reply.data):
                if runs and runs[-1][0] + runs[-1][1] == lba:
                    runs[-1] = (runs[-1][0], runs[-1][1] + count)
                else:
                    runs.append((lba, count))
            pos += reply.length
        return runs

    def read_seqs(self, offset: int, length: int) -> tuple[bytes, list[int]]:
        reply = self.request(Op.READ_SEQS, offset=offset, length=length)
        data = bytes(reply.data)
        return data[:length], unpack_seqs(data[length:])

    def rebuild(self, offset: int, data: Payload, seqs: list[int]) -> int:
        """Offer blocks with their seqs; returns how many the replica took (those newer
        than what it holds)."""
        payload = bytes(data) + pack_seqs(seqs)
        reply = self.request(
            Op.REBUILD, offset=offset, length=memoryview(data).nbytes, data=payload
        )
        return int(COUNT.unpack(reply.data)[0])

    def info(self) -> dict[str, Any]:
        return self._json(Op.INFO)

    def set_meta(self, meta: dict[str, Any]) -> None:
        self.request(Op.SET_META, data=json_payload(meta))

    def resize(self, size: int) -> None:
        self.request(Op.RESIZE, offset=size)

    def snapshot(self, name: str) -> dict[str, Any]:
        return self._json(Op.SNAPSHOT, {"name": name})

    def snapshot_delete(self, name: str) -> None:
        self.request(Op.SNAPSHOT_DELETE, data=json_payload({"name": name}))

    def snapshots(self) -> list[dict[str, Any]]:
        return list(self._json(Op.SNAPSHOT_LIST)["snapshots"])

    def clone(self, snapshot: str, name: str) -> dict[str, Any]:
        return self._json(Op.CLONE, {"snapshot": snapshot, "name": name})

    def destroy(self, name: str, force: bool = False) -> None:
        """Delete closed volume ``name`` and its snapshots from the pool."""
        self.request(Op.DESTROY, data=json_payload({"name": name, "force": force}))

    def rollback(self, snapshot: str, seq: int) -> int:
        return int(self._json(Op.ROLLBACK, {"snapshot": snapshot}, seq=seq)["blocks"])


__all__ = ["PoolClient", "PoolError"]
