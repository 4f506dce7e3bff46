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


def test_a_link_lost_with_writes_in_flight_retires_the_ring():
    """Unanswered WRITE_SHMs on a lost link: their ring is never allocated from again,
    and the other links move to a new one; answered ones free their regions."""
    from cairn.replication.ring import DATA, RingHost

    async def main() -> None:
        host = RingHost(DATA + (2 << 20))
        replicas: list[SimpleNamespace] = []
        tags = iter(range(100, 200))
        replies: list[int] = []
        volume = SimpleNamespace(
            name="v",
            shared=host,
            replicas=replicas,
            next_tag=lambda: next(tags),
            on_reply=lambda address, link, msg: replies.append(msg.tag),
            detach=lambda address, link, reason: None,
        )
        links = []
        for i in range(2):
            connector = SimpleNamespace(
                volume=volume, address=f"a:{i}", rings=host, lost=lambda link: None
            )
            link = ReplicaLink(connector)
            link.attached = True
            replicas.append(SimpleNamespace(link=link))
            links.append(link)
        ring = host.ring()
        assert ring is not None
        for link in links:
            link.use_ring(ring)
        placed = host.place(b"x" * 4096)
        assert placed is not None
        region, desc = placed
        parts = wire.encode(Op.WRITE_SHM, tag=1, seq=1, offset=0, length=4096, data=desc)
        lost, other = links
        lost.send_shm(parts, 1, region)
        other.send_shm(parts, 1, region)
        region.release()
        # the other pool server answers; the first one's connection is lost unanswered
        other.data_received(b"".join(wire.encode(Op.WRITE_SHM, tag=1, reply=True)))
        assert region.refs == 1 and not ring.retired and replies == [1]
        lost.connection_lost(None)
        assert ring.retired and region.refs == 0 and ring.users == 0
        assert host.current is not None and host.current is not ring
        assert other.attaching is not None and other.attaching[1] is host.current
        assert other.ring is None  # data goes in the messages until the pool server maps it

    asyncio.run(main())


def _hello_server(replies: dict[str, object]):
    """A protocol that answers every HELLO with ``replies`` (a fake pool server)."""

    class Hello(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.decoder = wire.Decoder()

        def data_received(self, data):
            for m in self.decoder.feed(data):
                payload = wire.json_payload(replies)
                self.transport.writelines(wire.encode(m.op, tag=m.tag, data=payload, reply=True))

    return Hello


def test_a_target_moves_to_the_local_socket_only_when_the_same_server_answers_there():
    """``Connector._go_local``: the same instance on the local socket: the TCP link is
    closed and the local one used; another instance, or nothing listening: the TCP
    link stays, and the reason is logged once."""
    import uuid

    from cairn.target.replicas import Connector

    async def main() -> list[tuple[str, bool]]:
        loop = asyncio.get_running_loop()
        volume = SimpleNamespace(name="v", local_links=True, shared=None)
        connector = Connector(volume, "127.0.0.1:1", 1 << 20, 512, None)  # type: ignore[arg-type]
        results = []
        for case in ("same", "other", "absent"):
            name = f"cairn-test-{uuid.uuid4().hex}"
            server = None
            if case != "absent":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind("\0" + name)
                sock.listen(4)
                answer = {"instance": "abc" if case == "same" else "xyz"}
                server = await loop.create_unix_server(_hello_server(answer), sock=sock)
            a, b = socket.socketpair()
            _, tcp = await loop.create_connection(lambda: ReplicaLink(connector), sock=a)
            connector.link = tcp
            link, info = await connector._go_local(tcp, {"local": name, "instance": "abc"})
            results.append((getattr(link, "kind", "?"), tcp.closed))
            assert connector.link is link
            if link is not tcp:
                assert info == {"instance": "abc"}
                link.close("done")
            tcp.close("done")
            b.close()
            if server is not None:
                server.close()
        return results

    assert uvloop.run(main()) == [("local", True), ("tcp", False), ("tcp", False)]


def test_a_pool_server_that_takes_nothing_more_is_degraded_past_the_queue_limit():
    """What its socket does not take waits in the target's memory: up to QUEUE_LIMIT.
    Past it the replica is degraded (its link closed, the copies freed), once."""
    from cairn.target import replicas

    async def main() -> list[str]:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        degraded: list[str] = []
        replica = SimpleNamespace(link=None)
        volume = SimpleNamespace(
            name="v",
            replica=lambda address: replica,
            degrade=lambda r, reason: degraded.append(reason),
        )
        connector = SimpleNamespace(volume=volume, address="a:1")
        loop = asyncio.get_running_loop()
        _, link = await loop.create_connection(lambda: ReplicaLink(connector), sock=a)
        if link.fd < 0:
            import os

            link.fd = os.dup(a.fileno())
        replica.link = link
        chunk = bytearray(1 << 20)
        for i in range((replicas.QUEUE_LIMIT >> 20) - 1):  # below the limit: kept
            link.send(
                wire.encode(Op.WRITE, tag=i, seq=i + 1, offset=0, length=len(chunk), data=chunk)
            )
        await asyncio.sleep(0.01)
        assert degraded == []
        for i in range(3):  # past it: degraded once
            link.send(
                wire.encode(
                    Op.WRITE, tag=100 + i, seq=100 + i, offset=0, length=len(chunk), data=chunk
                )
            )
        await asyncio.sleep(0.01)
        link.transport.abort()
        b.close()
        return degraded

    degraded = uvloop.run(main())
    assert len(degraded) == 1 and "does not keep up" in degraded[0], degraded


def test_a_move_to_the_local_socket_that_is_cancelled_closes_both_links():
    """Cancelled while the local socket's HELLO is unanswered (the replica is removed,
    the target stops): neither connection is left open."""
    import uuid

    from cairn.target.replicas import Connector

    class Silent(asyncio.Protocol):
        pass

    async def main() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        volume = SimpleNamespace(name="v", local_links=True, shared=None)
        connector = Connector(volume, "127.0.0.1:1", 1 << 20, 512, None)  # type: ignore[arg-type]
        name = f"cairn-test-{uuid.uuid4().hex}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("\0" + name)
        sock.listen(4)
        server = await loop.create_unix_server(Silent, sock=sock)
        a, b = socket.socketpair()
        _, tcp = await loop.create_connection(lambda: ReplicaLink(connector), sock=a)
        connector.link = tcp
        task = loop.create_task(connector._go_local(tcp, {"local": name, "instance": "abc"}))
        await asyncio.sleep(0.2)
        local = connector.link
        assert local is not tcp and local.kind == "local"
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        b.close()
        server.close()
        return tcp.closed, local.closed

    assert uvloop.run(main()) == (True, True)
