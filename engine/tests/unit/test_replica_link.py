"""The target's link to a replica sends what it was given, even when the caller reuses
its buffer at once and the socket cannot take everything (the transport then holds the
rest: it must hold a copy, since the loop's transports keep references)."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import uvloop

from cairn.replication import wire
from cairn.replication.wire import Op
from cairn.target.replicas import ReplicaLink


def test_a_payload_the_socket_did_not_take_is_sent_as_it_was():
    async def main() -> bytes:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connector = SimpleNamespace(volume=SimpleNamespace(name="v"), address="a:1")
        loop = asyncio.get_running_loop()
        _, link = await loop.create_connection(lambda: ReplicaLink(connector), sock=a)
        if link.fd < 0:  # socketpair has no TCP_NODELAY: what connection_made skipped
            import os

            link.fd = os.dup(a.fileno())
        buf = bytearray(b"A" * (1 << 20))
        link.send(wire.encode(Op.WRITE, tag=1, seq=1, offset=0, length=len(buf), data=buf))
        buf[:] = b"B" * len(buf)  # the caller reuses its buffer right away
        link.send(wire.encode(Op.WRITE, tag=2, seq=2, offset=0, length=len(buf), data=buf))
        b.setblocking(False)
        got = bytearray()
        want = 2 * (wire.HEADER_SIZE + len(buf))
        for _ in range(1000):
            await asyncio.sleep(0.002)
            try:
                while chunk := b.recv(1 << 20):
                    got += chunk
            except BlockingIOError:
                pass
            if len(got) >= want:
                break
        link.transport.abort()
        return bytes(got)

    got = uvloop.run(main())
    msgs = wire.Decoder().feed(got)
    assert [m.tag for m in msgs] == [1, 2]
    assert bytes(msgs[0].data) == b"A" * (1 << 20)
    assert bytes(msgs[1].data) == b"B" * (1 << 20)
