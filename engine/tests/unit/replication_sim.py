"""An in-memory world for ``ReplicatedVolume``: replicas that answer the replication
protocol like a pool server, links that keep each connection in order, and a scheduler
that delivers messages in a seeded random order, with faults.

The replicas here decode the very bytes the volume sends (``wire``) and answer with
``wire`` messages; only the sockets and the disk are missing.  The real pool server and
real processes are exercised by the integration and fault suites.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cairn.replication import wire
from cairn.replication.volume import ReplicatedVolume
from cairn.replication.wire import Op, Status

BS = 512


@dataclass
class MemReplica:
    """One replica's state, as a pool server would keep it."""

    blocks: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # lba -> (seq, data)
    meta: dict[str, Any] = field(default_factory=dict)
    high_seq: int = 0
    clean_seq: int = 0
    no_space: bool = False
    pinned: bool = False  # a write failed: clean_seq stays until the replica is rebuilt
    largest: int = 0  # the longest WRITE or READ asked of it, in bytes
    snapshots: dict[str, dict[int, tuple[int, bytes]]] = field(default_factory=dict)

    def seq_of(self, lba: int) -> int:
        return self.blocks.get(lba, (0, b""))[0]

    def data_of(self, lba: int) -> bytes:
        return self.blocks.get(lba, (0, bytes(BS)))[1]

    def info(self) -> dict[str, Any]:
        return {"high_seq": self.high_seq, "clean_seq": self.clean_seq, "meta": dict(self.meta)}

    def _stamp(self, seq: int) -> None:
        if not self.pinned:
            self.clean_seq = max(self.clean_seq, seq)
        self.high_seq = max(self.high_seq, seq)

    def handle(self, m: wire.Message) -> list[Any]:
        def reply(status: int = 0, data: bytes = b"") -> list[Any]:
            return wire.encode(m.op, tag=m.tag, status=status, data=data, reply=True)

        lba, n = m.offset // BS, m.length // BS
        if m.op in (Op.WRITE, Op.READ):
            self.largest = max(self.largest, m.length)
        if m.op == Op.WRITE:
            if self.no_space:
                self.pinned = True
                return reply(Status.NO_SPACE, wire.json_payload({"error": "no space"}))
            for i in range(n):
                self.blocks[lba + i] = (m.seq, bytes(m.data[i * BS : (i + 1) * BS]))
            self._stamp(m.seq)
            return reply()
        if m.op == Op.UNMAP:
            for i in range(n):
                self.blocks[lba + i] = (m.seq, bytes(BS))
            self._stamp(m.seq)
            return reply()
        if m.op == Op.READ:
            return reply(data=b"".join(self.data_of(lba + i) for i in range(n)))
        if m.op == Op.FLUSH:
            return reply()
        if m.op == Op.DIFF:
            runs: list[tuple[int, int]] = []
            for i in range(lba, lba + n):
                if self.seq_of(i) > m.seq:
                    if runs and runs[-1][0] + runs[-1][1] == i:
                        runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                    else:
                        runs.append((i, 1))
            return wire.encode(
                m.op, tag=m.tag, length=m.length, data=wire.pack_runs(runs), reply=True
            )
        if m.op == Op.READ_SEQS:
            data = b"".join(self.data_of(lba + i) for i in range(n))
            return reply(data=data + wire.pack_seqs([self.seq_of(lba + i) for i in range(n)]))
        if m.op == Op.REBUILD:
            seqs = wire.unpack_seqs(m.data[n * BS :])
            applied = 0
            for i in range(n):
                if seqs[i] > self.seq_of(lba + i):
                    self.blocks[lba + i] = (seqs[i], bytes(m.data[i * BS : (i + 1) * BS]))
                    self.high_seq = max(self.high_seq, seqs[i])
                    applied += 1
            return reply(data=wire.COUNT.pack(applied))
        if m.op == Op.SNAPSHOT:
            name = wire.parse_json(m.data)["name"]
            if name in self.snapshots:
                return reply(Status.CONFLICT, wire.json_payload({"error": f"{name} exists"}))
            self.snapshots[name] = dict(self.blocks)
            return reply(data=wire.json_payload({"name": name, "high_seq": self.high_seq}))
        if m.op == Op.ROLLBACK:
            name = wire.parse_json(m.data)["snapshot"]
            if name not in self.snapshots:
                return reply(Status.NOT_FOUND, wire.json_payload({"error": f"no {name}"}))
            snap = self.snapshots[name]
            for lba in set(self.blocks) | set(snap) | {0}:
                if lba == 0 or self.blocks.get(lba) != snap.get(lba):
                    self.blocks[lba] = (m.seq, snap.get(lba, (0, bytes(BS)))[1])
            self._stamp(m.seq)
            return reply(data=wire.json_payload({"blocks": 0}))
        if m.op == Op.SET_META:
            self.meta = wire.parse_json(m.data)
            if self.meta.get("clean"):
                self.clean_seq = self.high_seq
                self.pinned = False
            return reply()
        return reply(Status.BAD_REQUEST)


class MemLink:
    """One connection: messages to the replica and replies back, each in order."""

    def __init__(self, world: World, index: int) -> None:
        self.world = world
        self.index = index
        self.to_replica: deque[wire.Message] = deque()
        self.to_volume: deque[wire.Message] = deque()
        self.decoder = wire.Decoder()
        self.closed = False
        self.kind = world.kinds[index]  # "local": its pool server is on the target's machine

    def send(self, parts: list[Any]) -> None:
        if not self.closed:
            self.to_replica.extend(self.decoder.feed(b"".join(bytes(p) for p in parts)))

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.world.closed_links.append((self.index, reason))


class SimState:
    def __init__(self) -> None:
        self.saved: set[str] = set()
        self.marks: dict[str, int] = {}

    def trusted(self) -> set[str]:
        return set(self.saved)

    def save_trusted(self, addresses: set[str]) -> None:
        self.saved = set(addresses)

    def watermarks(self) -> dict[str, int]:
        return dict(self.marks)

    def save_watermarks(self, marks: dict[str, int]) -> None:
        self.marks = dict(marks)


class SimSeqs:
    """Numbers that survive a target restart, as ``SeqAllocator`` guarantees."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last

    def advance(self, floor: int) -> None:
        self.last = max(self.last, floor)


class World:
    def __init__(self, rf: int, nblocks: int, seed: int, hold: float = 3.0) -> None:
        self.rng = random.Random(seed)
        self.rf = rf
        self.nblocks = nblocks
        self.now = 0.0
        self.hold = hold
        self.replicas = [MemReplica() for _ in range(rf)]
        self.addresses = [f"10.0.0.{i + 1}:3232" for i in range(rf)]
        self.state = SimState()
        self.seqs = SimSeqs()
        self.links: list[MemLink | None] = [None] * rf
        self.down = [False] * rf  # the pool server is not running
        self.hung = [False] * rf  # it runs but answers nothing
        self.kinds = ["tcp"] * rf  # how each replica's link is connected (``MemLink.kind``)
        self.closed_links: list[tuple[int, str]] = []
        self.volume = self._new_volume()

    def _new_volume(self) -> ReplicatedVolume:
        return ReplicatedVolume(
            "vol",
            self.nblocks * BS,
            BS,
            self.addresses,
            self.seqs,
            self.state,
            hold_time=self.hold,
            replica_timeout=1.0,
            clock=lambda: self.now,
        )

    # ------------------------------------------------------------------ connections
    def connect(self, i: int) -> None:
        if self.down[i] or (self.links[i] is not None and not self.links[i].closed):
            return
        link = MemLink(self, i)
        self.links[i] = link
        self.volume.attach(self.addresses[i], link, self.replicas[i].info())

    def disconnect(self, i: int, reason: str) -> None:
        link = self.links[i]
        if link is not None:
            link.closed = True
            self.links[i] = None
            self.volume.detach(self.addresses[i], link, reason)

    def restart_target(self) -> None:
        for i in range(self.rf):
            if self.links[i] is not None:
                self.links[i].closed = True  # type: ignore[union-attr]
                self.links[i] = None
        old = self.volume
        self.volume = self._new_volume()
        return old  # type: ignore[return-value]

    # ------------------------------------------------------------------ delivery
    def step(self) -> bool:
        """Deliver one message somewhere; False when nothing could move."""
        choices = []
        for i, link in enumerate(self.links):
            if link is None:
                continue
            if link.closed:
                # the network side notices and reports the loss
                self.links[i] = None
                self.volume.detach(self.addresses[i], link, "closed")
                return True
            if link.to_replica and not self.hung[i] and not self.down[i]:
                choices.append((i, "in"))
            if link.to_volume:
                choices.append((i, "out"))
        if not choices:
            return False
        i, way = self.rng.choice(choices)
        link = self.links[i]
        assert link is not None
        if way == "in":
            msg = link.to_replica.popleft()
            for reply in wire.Decoder().feed(
                b"".join(bytes(p) for p in self.replicas[i].handle(msg))
            ):
                link.to_volume.append(reply)
        else:
            self.volume.on_reply(self.addresses[i], link, link.to_volume.popleft())
        return True

    def run(self, steps: int) -> None:
        for _ in range(steps):
            if not self.step():
                break

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.volume.tick()

    def settle(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            for i in range(self.rf):
                if self.links[i] is None and not self.down[i]:
                    self.connect(i)
            if not self.step():
                self.advance(0.2)
                if all(r.state == "healthy" for r in self.volume.replicas) and not any(
                    lk is not None and (lk.to_replica or lk.to_volume) for lk in self.links
                ):
                    return
        raise AssertionError(f"did not settle: {self.volume.status()}")

    def snapshot(self, i: int) -> MemReplica:
        return copy.deepcopy(self.replicas[i])
