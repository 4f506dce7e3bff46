"""The replicated volume: a block device whose writes go to every replica and finish
when a quorum of healthy replicas has them (sans-IO).

The network side (``cairn.target.replicas``) connects to the pool servers and tells
this object when a replica is open (``attach``), gone (``detach``), what it answered
(``on_reply``) and what time it is (``tick``); this object sends through the replica's
``Link`` and never waits.  docs/replication.md states the invariants; in short:

- every write and unmap gets the next sequence number and is sent, in that order, to
  every healthy and rebuilding replica; each replica applies its messages in order, so
  a replica that never failed holds exactly the writes up to its highest number (its
  *prefix*);
- a write is acknowledged once CF healthy replicas have it, either by answering it or
  because their rebuild covered it; a slow minority is never waited for;
- a replica that errors, stops answering or falls too far behind is degraded: its link
  is closed and it comes back through ``attach`` and a rebuild (``rebuild.py``);
- with no healthy replica (start, or all lost), the replica with the longest prefix
  among CF attached ones becomes healthy: every acknowledged write is on CF replicas and
  any CF replicas include one of them, so that prefix holds every acknowledged write;
- below quorum, writes wait up to ``hold_time`` and then fail with ``QuorumError``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cairn.blockdev import (
    Buffer,
    LbaStatus,
    MediumError,
    NoSpaceError,
    Pending,
    QuorumError,
    StoreError,
)
from cairn.replication import wire
from cairn.replication.wire import Op, Status

log = logging.getLogger("cairn.replication")

HEALTHY = "healthy"
DEGRADED = "degraded"
REBUILDING = "rebuilding"
OFFLINE = "offline"

WRITE, UNMAP, FLUSH, READ = 1, 2, 3, 4
MAX_MESSAGE = 1 << 20  # the most data one WRITE or READ to a replica carries
#: reads go to one replica until it has this many bytes of reads in flight (``_reader``)
READ_SPREAD = 256 << 10


class Link(Protocol):
    """The way to one replica: ``send`` queues a message (header and payload buffers,
    kept as they are until sent), ``close`` drops the connection (``detach`` follows)."""

    def send(self, parts: list[Any]) -> None: ...

    def close(self, reason: str) -> None: ...


class SeqSource(Protocol):
    def next(self) -> int: ...


@dataclass(eq=False)
class Replica:
    address: str
    state: str = OFFLINE
    trusted: bool = False
    link: Link | None = None
    high_seq: int = 0  # the highest number it held when it opened
    prefix: int = 0  # it holds every write numbered up to this (when it opened)
    covered: int = 0  # every write numbered up to this is on it (rebuild or applied)
    acked_seq: int = 0  # the highest number it has answered for (kept across restarts)
    lost_writes: bool = False  # it came back without writes it had answered for
    reason: str = ""
    inflight: dict[int, _Op] = field(default_factory=dict)
    inflight_bytes: int = 0  # of writes
    reading: int = 0  # bytes of reads in flight
    local: bool = False  # reached through the local socket: its pool server is on this machine
    rebuild: Any = None  # ``rebuild.Rebuild`` while it runs
    stats: dict[str, int] = field(
        default_factory=lambda: {"writes": 0, "reads": 0, "errors": 0, "rebuilds": 0}
    )


class _Op:
    __slots__ = (
        "kind",
        "tag",
        "seq",
        "lba",
        "count",
        "data",
        "pending",
        "acked",
        "sent_at",
        "deadline",
        "done",
        "tried",
    )

    def __init__(self, kind: int, lba: int, count: int, data: Any, deadline: float) -> None:
        self.kind = kind
        self.tag = 0
        self.seq = 0
        self.lba = lba
        self.count = count
        self.data = data
        self.pending = Pending()
        self.acked: set[Replica] = set()
        self.sent_at = 0.0
        self.deadline = deadline
        self.done = False
        self.tried: set[Replica] = set()


class StateStore(Protocol):
    """Where the target keeps which replicas are trusted (``TargetState``)."""

    def trusted(self) -> set[str]: ...

    def save_trusted(self, addresses: set[str]) -> None: ...

    def watermarks(self) -> dict[str, int]: ...

    def save_watermarks(self, marks: dict[str, int]) -> None: ...


class ReplicatedVolume:
    """``BlockDevice`` over the replicas at ``addresses`` (asynchronous)."""

    asynchronous = True

    def __init__(
        self,
        name: str,
        size: int,
        block_size: int,
        addresses: list[str],
        seqs: SeqSource,
        state: StateStore,
        consistency_factor: int | None = None,
        hold_time: float = 20.0,
        replica_timeout: float = 5.0,
        max_behind: int = 256 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(set(addresses)) != len(addresses) or not addresses:
            raise ValueError("replica addresses must be given, each once")
        rf = len(addresses)
        cf = consistency_factor if consistency_factor is not None else rf // 2 + 1
        if not rf // 2 + 1 <= cf <= rf:
            raise ValueError(
                f"consistency factor {cf} must be between {rf // 2 + 1} (a majority of the "
                f"{rf} replicas) and {rf}"
            )
        self.name = name
        self._bs = block_size
        self._nb = size // block_size
        self.cf = cf
        self.hold_time = hold_time
        self.replica_timeout = replica_timeout
        self.max_behind = max_behind
        self._clock = clock
        self._seqs = seqs
        self._state = state
        trusted = state.trusted()
        marks = state.watermarks()
        self.replicas = [
            Replica(a, trusted=a in trusted, acked_seq=marks.get(a, 0)) for a in addresses
        ]
        self._marks_saved = dict(marks)
        self._marks_due = 0.0
        self._by_address = {r.address: r for r in self.replicas}
        self._tag = 0
        self.last_seq = 0
        self._ops: dict[int, _Op] = {}  # writes, unmaps, flushes not yet acknowledged
        self._held: deque[_Op] = deque()  # waiting for quorum, in order
        self._reads: deque[_Op] = deque()  # waiting for a healthy replica
        self._calls: dict[int, tuple[Replica, Callable[[Replica, wire.Message | None], None]]] = {}
        self._marking: set[Replica] = set()  # told they are clean after an election
        self._marking_since = 0.0
        self.events: deque[tuple[float, str]] = deque(maxlen=50)
        # read_time_us, write_time_us: the time the reads and writes took in all, from
        # the device call to the answer (their mean latency is its rate over theirs)
        self.stats = {
            "reads": 0, "writes": 0, "read_bytes": 0, "write_bytes": 0, "held": 0,
            "read_time_us": 0, "write_time_us": 0,
        }  # fmt: skip
        self.rebuild_window = 4  # chunks in flight per rebuild
        self.rebuild_chunk = 1 << 20
        self.rebuild_rate = 0  # bytes per second per rebuild, 0: no limit
        # while the volume has foreground I/O, a rebuild copies at most this much per
        # second (0: no such limit), so that the I/O keeps most of its speed; idle, it
        # goes as fast as it can (``rebuild_rate`` still caps it)
        self.rebuild_busy_rate = 64 << 20
        self.last_io = -1e9  # clock time of the last read or write
        self._cf_given = consistency_factor is not None
        #: the shared-memory rings for pool servers on this machine
        #: (``cairn.replication.ring.RingHost``), or None: data always in the messages
        self.shared: Any = None
        #: pool servers on this machine are reached through their local socket
        self.local_links = False
        # write barriers in force (``hold_writes``) and who waits for the writes in
        # flight to be answered
        self._barriers = 0
        self._drain_waiters: list[Pending] = []
        #: what the target knows of the volume's snapshots (``cairn.target.operations``)
        self.book: Any = None

    # ------------------------------------------------------------------ properties
    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def num_blocks(self) -> int:
        return self._nb

    def healthy(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == HEALTHY]

    @property
    def writable(self) -> bool:
        return sum(1 for r in self.replicas if r.state == HEALTHY) >= self.cf

    def why_not_writable(self) -> str:
        n = len(self.healthy())
        parts = [
            f"{r.address} {r.state}" + (f" ({r.reason})" if r.reason else "")
            for r in self.replicas
            if r.state != HEALTHY
        ]
        return f"{n} of {len(self.replicas)} replicas healthy, {self.cf} needed: " + ", ".join(
            parts
        )

    def _note(self, text: str) -> None:
        self.events.append((time.time(), text))

    def next_tag(self) -> int:
        self._tag += 1
        return self._tag

    # ------------------------------------------------------------------ BlockDevice
    def read(self, lba: int, count: int) -> Pending:
        step = MAX_MESSAGE // self._bs
        if count > step:  # a replica takes at most MAX_MESSAGE per request
            parts = [self.read(lba + i, min(step, count - i)) for i in range(0, count, step)]
            return Pending.gather(parts).then(lambda _: b"".join(p.value for p in parts))
        op = _Op(READ, lba, count, None, self._clock() + self.hold_time)
        self.stats["reads"] += 1
        self.last_io = self._clock()
        self.stats["read_bytes"] += count * self._bs
        self._send_read(op)
        return op.pending

    read_extents = read

    def payload_buffer(self, nbytes: int) -> tuple[int, memoryview] | None:
        """A buffer in the shared ring for the data of a write (so that it is not
        copied there), or None; give it back with ``release_payload_buffer``."""
        shared = self.shared
        return shared.payload_buffer(nbytes) if shared is not None else None

    def release_payload_buffer(self, handle: int) -> None:
        self.shared.release_payload_buffer(handle)

    def write(self, lba: int, data: Buffer, fua: bool = False) -> Pending:
        if len(data) > MAX_MESSAGE:  # one message per MAX_MESSAGE, in order
            view = memoryview(data)
            parts = [
                self.write(lba + i // self._bs, view[i : i + MAX_MESSAGE])
                for i in range(0, len(view), MAX_MESSAGE)
            ]
            return Pending.gather(parts)
        # the caller reuses its buffer once this returns: the links keep this copy
        # Sent at once (the links write it before this returns, or copy what the
        # socket does not take), so the caller's buffer is not kept; a held write is
        # copied, since it leaves later.
        op = _Op(WRITE, lba, len(data) // self._bs, data, self._clock() + self.hold_time)
        self.stats["writes"] += 1
        self.last_io = self._clock()
        self.stats["write_bytes"] += len(data)
        self._submit(op)
        return op.pending

    def unmap(self, lba: int, count: int) -> Pending:
        op = _Op(UNMAP, lba, count, None, self._clock() + self.hold_time)
        self._submit(op)
        return op.pending

    def flush(self) -> Pending:
        op = _Op(FLUSH, 0, 0, None, self._clock() + self.hold_time)
        self._submit(op)
        return op.pending

    def lba_status(self, lba: int, max_count: int) -> LbaStatus:
        # The replicas know; asking them is not worth a round trip here: every block
        # is reported mapped, which SBC allows for a thin unit that cannot tell.
        return LbaStatus(lba, max_count, False)

    # ------------------------------------------------------------------ writes
    def _submit(self, op: _Op) -> None:
        if self._held or self._barriers or not self.writable:
            if op.data is not None and type(op.data) is not bytes:
                op.data = bytes(op.data)
            if not self._held and not self._barriers:
                log.warning(
                    "event=writes_held volume=%s reason=%r", self.name, self.why_not_writable()
                )
            self.stats["held"] += 1
            self._held.append(op)
            return
        self._dispatch(op)

    def _dispatch(self, op: _Op) -> None:
        op.tag = tag = self.next_tag()
        bs = self._bs
        placed = None
        if op.kind == WRITE:
            op.seq = self._next_seq()
            msg = wire.encode(
                Op.WRITE,
                tag=tag,
                seq=op.seq,
                offset=op.lba * bs,
                length=len(op.data),
                data=op.data,
            )
            to = [r for r in self.replicas if r.state in (HEALTHY, REBUILDING)]
            if self.shared is not None:
                placed = self.shared.place(op.data)
        elif op.kind == UNMAP:
            op.seq = self._next_seq()
            msg = wire.encode(
                Op.UNMAP, tag=tag, seq=op.seq, offset=op.lba * bs, length=op.count * bs
            )
            to = [r for r in self.replicas if r.state in (HEALTHY, REBUILDING)]
        else:
            msg = wire.encode(Op.FLUSH, tag=tag)
            to = self.healthy()
        self._ops[tag] = op
        now = self._clock()
        op.sent_at = now
        size = op.count * self._bs if op.kind == WRITE else 0
        if placed is None:
            for r in to:
                self._send(r, msg, op, size)
        else:
            # pool servers that map the ring get where the data is, the others the data
            region, desc = placed
            shm = wire.encode(
                Op.WRITE_SHM, tag=tag, seq=op.seq, offset=op.lba * bs, length=size, data=desc
            )
            for r in to:
                if getattr(r.link, "ring", None) is region.ring:
                    self._send(r, shm, op, size, region)
                else:
                    self._send(r, msg, op, size)
            region.release()
        op.data = None  # on its way (or copied by the links): not kept
        self._check(op)

    def _send(self, r: Replica, msg: list[Any], op: _Op, size: int, region: Any = None) -> None:
        """Send ``msg`` for ``op``; a WRITE_SHM names ``region`` of the shared ring."""
        assert r.link is not None
        op.sent_at = self._clock()
        r.inflight[op.tag] = op
        r.inflight_bytes += size
        if region is None:
            r.link.send(msg)
        else:
            r.link.send_shm(msg, op.tag, region)  # type: ignore[attr-defined]

    def new_session(self) -> int:
        """A number for a new connection to a replica, above every number (write or
        session) handed out before, across restarts: its OPEN fences the older ones."""
        return self._next_seq()

    def next_seq(self) -> int:
        """The next sequence number, for an operation numbered like a write (a
        rollback)."""
        return self._next_seq()

    def now(self) -> float:
        return self._clock()

    def rebuild_limit(self, now: float) -> int:
        """Bytes per second a rebuild may copy now (0: no limit)."""
        busy = self.rebuild_busy_rate if now - self.last_io < 1.0 else 0
        limits = [x for x in (self.rebuild_rate, busy) if x]
        return min(limits) if limits else 0

    def _next_seq(self) -> int:
        seq = self._seqs.next()
        if seq <= self.last_seq:
            raise StoreError(f"sequence source returned {seq}, not above {self.last_seq}")
        self.last_seq = seq
        return seq

    def _has(self, r: Replica, op: _Op) -> bool:
        return r in op.acked or (op.kind != FLUSH and op.seq <= r.covered)

    def _check(self, op: _Op) -> None:
        if op.done:
            return
        n = 0
        for r in self.replicas:
            if r.state == HEALTHY and self._has(r, op):
                n += 1
        if n >= self.cf:
            op.done = True
            self._ops.pop(op.tag, None)
            if op.kind == WRITE:  # started at deadline - hold_time
                took = self._clock() - op.deadline + self.hold_time
                self.stats["write_time_us"] += int(took * 1e6)
            op.pending.resolve()

    def _recheck_all(self) -> None:
        for op in list(self._ops.values()):
            self._check(op)
        # flushes that lost replicas: send again to the healthy ones that lack them
        for op in list(self._ops.values()):
            if op.kind == FLUSH and not op.done:
                for r in self.healthy():
                    if r not in op.acked and op.tag not in r.inflight:
                        self._send(r, wire.encode(Op.FLUSH, tag=op.tag), op, 0)
        if self.writable and not self._barriers:
            while self._held and self.writable:
                self._dispatch(self._held.popleft())

    # ------------------------------------------------------------------ reads
    def _send_read(self, op: _Op) -> None:
        candidates = [r for r in self.replicas if r.state == HEALTHY and r not in op.tried]
        if not candidates:
            candidates = [r for r in self.replicas if r.state == HEALTHY]
            op.tried.clear()
        if not candidates:
            self._reads.append(op)
            return
        r = min(candidates, key=_reader)
        op.tried.add(r)
        op.tag = tag = self.next_tag()
        r.reading += op.count * self._bs
        self._send(
            r,
            wire.encode(Op.READ, tag=tag, offset=op.lba * self._bs, length=op.count * self._bs),
            op,
            0,
        )

    def _retry_reads(self) -> None:
        if self._reads and self.healthy():
            waiting, self._reads = self._reads, deque()
            for op in waiting:
                self._send_read(op)

    # ------------------------------------------------------------------ link events
    def attach(self, address: str, link: Link, info: dict[str, Any]) -> None:
        """Replica ``address`` is open (its OPEN reply is ``info``)."""
        r = self._by_address[address]
        if r.link is not None and r.link is not link:
            r.link.close("replaced by a new connection")
            self.detach(address, r.link, "replaced by a new connection")
        r.link = link
        r.local = getattr(link, "kind", "") == "local"
        r.high_seq = int(info.get("high_seq", 0))
        meta = info.get("meta") or {}
        clean = int(info.get("clean_seq", r.high_seq))
        r.prefix = int(meta.get("prefix", clean)) if meta.get("rebuilding") else clean
        r.state = DEGRADED
        r.reason = "connected, not yet rebuilt"
        r.lost_writes = r.prefix < r.acked_seq
        if r.lost_writes:
            # restored from an old copy, or its disk lost data: it may lack writes it
            # confirmed, so it must not vote in an election; a rebuild repairs it
            r.reason = (
                f"came back complete only up to seq {r.prefix} but had confirmed "
                f"{r.acked_seq}: stale data"
            )
            log.warning(
                "event=replica_stale volume=%s replica=%s reason=%r",
                self.name,
                address,
                r.reason,
            )
        if r.high_seq > self.last_seq:
            self.last_seq = r.high_seq
            advance = getattr(self._seqs, "advance", None)
            if advance is not None:
                advance(r.high_seq)
        log.info(
            "event=replica_attached volume=%s replica=%s high_seq=%d prefix=%d trusted=%s",
            self.name,
            address,
            r.high_seq,
            r.prefix,
            r.trusted,
        )
        self._note(f"{address} attached (prefix {r.prefix})")
        self._place()

    def detach(self, address: str, link: Link | None, reason: str) -> None:
        """The connection to replica ``address`` is gone."""
        r = self._by_address[address]
        if link is not None and r.link is not link:
            return
        was = r.state
        r.link = None
        self._lose(r, OFFLINE, reason)
        if was != OFFLINE:
            log.warning(
                "event=replica_offline volume=%s replica=%s reason=%r", self.name, address, reason
            )

    def degrade(self, r: Replica, reason: str) -> None:
        """Stop trusting ``r``: its link is closed and it comes back through a rebuild."""
        if r.state in (DEGRADED, OFFLINE) and r.link is None:
            return
        log.warning(
            "event=replica_degraded volume=%s replica=%s reason=%r", self.name, r.address, reason
        )
        link = r.link
        r.link = None
        self._lose(r, DEGRADED, reason)
        if link is not None:
            link.close(reason)

    def _lose(self, r: Replica, state: str, reason: str) -> None:
        was_healthy = r.state == HEALTHY
        r.state = state
        r.reason = reason
        r.covered = 0
        self._note(f"{r.address} {state}: {reason}")
        if r.rebuild is not None:
            rb, r.rebuild = r.rebuild, None
            rb.abort(reason)
        for other in self.replicas:
            if other.rebuild is not None and other.rebuild.source is r:
                rb, other.rebuild = other.rebuild, None
                rb.abort(f"source {r.address} lost: {reason}")
                self.degrade(other, f"rebuild source {r.address} lost")
        if was_healthy and r.trusted:
            # before anything is acknowledged without it (docs/replication.md)
            r.trusted = False
            self._save_trusted()
        inflight, r.inflight = r.inflight, {}
        r.inflight_bytes = 0
        r.reading = 0
        for tag, (owner, fn) in list(self._calls.items()):
            if owner is r:
                del self._calls[tag]
                fn(r, None)
        for op in inflight.values():
            if op.kind == READ and not op.done:
                self._send_read(op)
        for op in list(self._ops.values()):
            self._check(op)
        if self._drain_waiters:
            self._check_drained()
        if not self.healthy():
            self._place()

    def _save_trusted(self) -> None:
        self._state.save_trusted({r.address for r in self.replicas if r.trusted})

    def _place(self) -> None:
        """Decide what attached, untrusted replicas do: with a healthy replica, rebuild
        from it; with none, elect the longest prefix among CF attached replicas."""
        healthy = self.healthy()
        if not healthy:
            if self._marking:
                return  # an election is being recorded on the elected replicas
            attached = [r for r in self.replicas if r.link is not None and not r.lost_writes]
            if len(attached) < self.cf:
                return
            best = max(attached, key=lambda r: (r.prefix, r.trusted))
            if best.rebuild is not None:
                rb, best.rebuild = best.rebuild, None
                rb.abort("elected as the reference")
            # those with exactly the same prefix hold exactly the same writes
            same = [
                r
                for r in attached
                if r is not best
                and r.rebuild is None
                and r.prefix == best.prefix
                and r.high_seq == r.prefix
                and best.high_seq == best.prefix
            ]
            self._record_election(
                best,
                same,
                "elected: longest prefix of "
                + ", ".join(f"{r.address}={r.prefix}" for r in attached),
            )
            return
        waiting = [
            r
            for r in self.replicas
            if r.state == DEGRADED
            and r.link is not None
            and r.rebuild is None
            and r not in self._marking
        ]
        for r in waiting:
            if r.high_seq == 0 and self.last_seq == 0 and not self._ops and not self._held:
                # nothing was ever written: an empty replica is up to date
                self._become_healthy(r, 0, "new, nothing written yet")
                continue
            from cairn.replication.rebuild import Rebuild

            source = min(healthy, key=lambda x: len(x.inflight))
            r.rebuild = Rebuild(self, r, source)
            r.rebuild.start()

    def _record_election(self, best: Replica, same: list[Replica], why: str) -> None:
        """Tell ``best`` and ``same`` that they are clean before any of them confirms a
        write, then make them healthy together (so no write is sent to only some of
        them). A replica elected with a held-back clean number (a write it failed, a
        rebuild that stopped) would otherwise report that old number after the next
        target restart, below the writes it confirmed since, and look stale to every
        later election. Writes wait meanwhile, as below quorum."""
        meta = {"rebuilding": False, "clean": True, "elected_at": best.prefix}
        group = [best, *same]
        answers: dict[Replica, wire.Message | None] = {}

        def parts(tag: int) -> list[Any]:
            return wire.encode(Op.SET_META, tag=tag, data=wire.json_payload(meta))

        def marked(r: Replica, msg: wire.Message | None) -> None:
            self._marking.discard(r)
            answers[r] = msg
            if not self._marking:
                finish()

        def finish() -> None:
            ok = [
                r
                for r in group
                if (m := answers.get(r)) is not None
                and m.status == Status.OK
                and r.link is not None
                and r.state == DEGRADED
                and r.rebuild is None
            ]
            if best in ok:
                self._elected(best)
                # all of them before a held write is sent: each must get every one
                for r in ok:
                    why_r = why if r is best else "same prefix as the reference"
                    self._become_healthy(r, r.prefix, why_r, recheck=False)
                self._recheck_all()
                self._retry_reads()
            for r in group:
                m = answers.get(r)
                if m is not None and m.status != Status.OK:
                    self.degrade(r, f"elected, but it cannot record it: {wire.error_text(m)}")
            self._place()  # rebuild the others from it, or elect again without it

        self._note(f"{best.address} {why}")
        self._marking.update(group)
        self._marking_since = self._clock()
        for r in group:
            self.call(r, parts, marked)

    def _elected(self, best: Replica) -> None:
        """``best`` holds every write up to its prefix and none after: writes numbered
        above it that are still waiting reached no healthy replica, and never will
        (sending them again could put old data over newer): they fail."""
        for op in list(self._ops.values()):
            if not op.done and op.kind != FLUSH and op.seq > best.prefix:
                op.done = True
                self._ops.pop(op.tag, None)
                op.pending.fail(
                    QuorumError(
                        f"volume {self.name}: the replicas that took this write were lost "
                        "before enough of them had it"
                    )
                )

    def _become_healthy(self, r: Replica, covered: int, why: str, recheck: bool = True) -> None:
        r.state = HEALTHY
        r.lost_writes = False
        r.reason = ""
        r.covered = covered
        if not r.trusted:
            r.trusted = True
            self._save_trusted()
        log.info("event=replica_healthy volume=%s replica=%s why=%r", self.name, r.address, why)
        self._note(f"{r.address} healthy: {why}")
        if recheck:
            self._recheck_all()
            self._retry_reads()

    def start_rebuilding(self, r: Replica) -> int:
        """``r`` takes live writes from now on; returns the last number before it did."""
        r.state = REBUILDING
        r.reason = ""
        return self.last_seq

    def rebuilt(self, r: Replica, covered: int) -> None:
        r.rebuild = None
        r.stats["rebuilds"] += 1
        self._become_healthy(r, covered, "rebuild complete")

    def call(
        self,
        r: Replica,
        parts_fn: Callable[[int], list[Any]],
        done: Callable[[Replica, wire.Message | None], None],
    ) -> None:
        """Send a control or rebuild message to ``r``; ``done`` gets the reply, or None
        when the replica went away first."""
        assert r.link is not None
        tag = self.next_tag()
        self._calls[tag] = (r, done)
        r.link.send(parts_fn(tag))

    # ------------------------------------------------------------------ replies
    def on_reply(self, address: str, link: Link, msg: wire.Message) -> None:
        r = self._by_address[address]
        if r.link is not link:
            return
        call = self._calls.pop(msg.tag, None)
        if call is not None:
            call[1](r, msg)
            return
        op = r.inflight.pop(msg.tag, None)
        if op is None:
            return
        if op.kind == WRITE:
            r.inflight_bytes -= op.count * self._bs
        elif op.kind == READ:
            r.reading -= op.count * self._bs
        if msg.status != Status.OK:
            error = _reply_error(msg)
            r.stats["errors"] += 1
            if op.kind == READ:
                if isinstance(error, MediumError | NoSpaceError | StoreError):
                    self.degrade(r, f"read failed: {error}")
                if not op.done:
                    self._send_read(op)
                return
            self.degrade(r, f"{_KIND[op.kind]} failed: {error}")
            return
        if op.kind == READ:
            op.done = True
            r.stats["reads"] += 1
            took = self._clock() - op.deadline + self.hold_time
            self.stats["read_time_us"] += int(took * 1e6)
            op.pending.resolve(msg.data)
            return
        r.stats["writes"] += 1
        if op.seq > r.acked_seq and r.state == HEALTHY:
            r.acked_seq = op.seq  # what it confirmed while its answer counted
        op.acked.add(r)
        if not op.done:
            self._check(op)
        if self._drain_waiters:
            self._check_drained()

    # ------------------------------------------------------------------ barrier
    def hold_writes(self) -> Pending:
        """A write barrier: writes, unmaps and flushes issued from now on are held, in
        order (as below quorum), until ``release_writes``.  The returned Pending
        resolves once every write and unmap sent before has been answered by every
        healthy replica (one that stops answering is degraded by the timeout, which
        ends the wait too)."""
        self._barriers += 1
        p = Pending()
        self._drain_waiters.append(p)
        self._check_drained()
        return p

    def release_writes(self) -> None:
        """End a barrier; the held writes go, in order, once none is left."""
        if self._barriers <= 0:
            raise RuntimeError("release_writes without hold_writes")
        self._barriers -= 1
        if not self._barriers:
            self._recheck_all()

    def writes_in_flight(self) -> int:
        """Writes and unmaps sent to healthy replicas and not yet answered by them."""
        return sum(
            1
            for r in self.replicas
            if r.state == HEALTHY
            for op in r.inflight.values()
            if op.kind != READ and op.kind != FLUSH
        )

    def _check_drained(self) -> None:
        if self._drain_waiters and not self.writes_in_flight():
            waiters, self._drain_waiters = self._drain_waiters, []
            for p in waiters:
                p.resolve()

    def call_each(self, replicas: list[Replica], parts_fn: Callable[[int], list[Any]]) -> Pending:
        """Send a control message to each of ``replicas`` (connected ones); resolves
        with ``{address: reply, or None when it went away first}``."""
        targets = [r for r in replicas if r.link is not None]
        p = Pending()
        results: dict[str, wire.Message | None] = {
            r.address: None for r in replicas if r.link is None
        }
        if not targets:
            p.resolve(results)
            return p

        def done(r: Replica, msg: wire.Message | None) -> None:
            results[r.address] = msg
            if all(t.address in results for t in targets) and not p.done:
                p.resolve(results)

        for r in targets:
            self.call(r, parts_fn, done)
        return p

    def replica(self, address: str) -> Replica | None:
        return self._by_address.get(address)

    def resize(self, size: int) -> None:
        """The volume now has ``size`` bytes (every replica that votes has grown)."""
        if size % self._bs or size < self._nb * self._bs:
            raise ValueError(f"size {size} is not a larger multiple of {self._bs}")
        self._nb = size // self._bs

    # ------------------------------------------------------------------ time
    def tick(self) -> None:
        """Called a few times a second: replica timeouts, held writes, stuck reads."""
        now = self._clock()
        for r in self.replicas:
            if r.state not in (HEALTHY, REBUILDING) or not r.inflight:
                continue
            oldest = next(iter(r.inflight.values()))
            if now - oldest.sent_at > self.replica_timeout:
                self.degrade(r, f"no answer for {now - oldest.sent_at:.1f} s")
            elif r.inflight_bytes > self.max_behind:
                self.degrade(r, f"{r.inflight_bytes >> 20} MiB behind")
        for queue in (self._held, self._reads):
            while queue and queue[0].deadline <= now:
                op = queue.popleft()
                op.done = True
                op.pending.fail(QuorumError(f"volume {self.name}: {self.why_not_writable()}"))
        for op in list(self._ops.values()):
            if not op.done and op.deadline <= now and not self.writable:
                op.done = True
                self._ops.pop(op.tag, None)
                op.pending.fail(QuorumError(f"volume {self.name}: {self.why_not_writable()}"))
        if self._marking and now - self._marking_since > self.replica_timeout:
            # one that does not answer holds up the election: it goes, the rest carry on
            for r in list(self._marking):
                self.degrade(r, f"no answer to the election for {now - self._marking_since:.1f} s")
        for r in self.replicas:
            if r.rebuild is not None:
                r.rebuild.tick(now)
        if now >= self._marks_due:
            self._marks_due = now + 5.0
            marks = {r.address: r.acked_seq for r in self.replicas if r.acked_seq}
            if marks != self._marks_saved:
                # lags by up to 5 s: a replica that comes back after a target restart
                # with less than this is known to have lost data
                self._state.save_watermarks(marks)
                self._marks_saved = marks

    # ------------------------------------------------------------------ scale
    def add_replica(self, address: str) -> Replica:
        """One more replica: it is rebuilt once it connects, then it votes."""
        if address in self._by_address:
            raise ValueError(f"{address} is already a replica of {self.name}")
        r = Replica(address)
        self.replicas.append(r)
        self._by_address[address] = r
        self._recompute_cf()
        log.info(
            "event=replica_added volume=%s replica=%s rf=%d cf=%d",
            self.name,
            address,
            len(self.replicas),
            self.cf,
        )
        self._note(f"{address} added")
        return r

    def remove_replica(self, address: str) -> None:
        """Drop a replica; refused when the others could not keep the volume writable."""
        r = self._by_address.get(address)
        if r is None:
            raise ValueError(f"{address} is not a replica of {self.name}")
        rest = [x for x in self.replicas if x is not r]
        if not rest:
            raise ValueError(f"{address} is the last replica of {self.name}")
        cf = self.cf if self._cf_given else len(rest) // 2 + 1
        if sum(1 for x in rest if x.state == HEALTHY) < min(cf, len(rest)):
            raise ValueError(f"removing {address} would leave fewer than {cf} healthy replicas")
        link = r.link
        r.link = None
        self._lose(r, OFFLINE, "removed")
        if link is not None:
            link.close("removed from the volume")
        self.replicas.remove(r)
        del self._by_address[address]
        self._recompute_cf()
        self._save_trusted()
        self._note(f"{address} removed")
        log.info(
            "event=replica_removed volume=%s replica=%s rf=%d cf=%d",
            self.name,
            address,
            len(self.replicas),
            self.cf,
        )
        self._recheck_all()

    def _recompute_cf(self) -> None:
        rf = len(self.replicas)
        if self._cf_given:
            self.cf = max(rf // 2 + 1, min(self.cf, rf))
        else:
            self.cf = rf // 2 + 1

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        return {
            "volume": self.name,
            "size": self._nb * self._bs,
            "block_size": self._bs,
            "replication_factor": len(self.replicas),
            "consistency_factor": self.cf,
            "writable": self.writable,
            "state": "healthy"
            if len(self.healthy()) == len(self.replicas)
            else ("degraded" if self.writable else "offline"),
            "reason": "" if self.writable else self.why_not_writable(),
            "last_seq": self.last_seq,
            "held_writes": len(self._held),
            "stats": dict(self.stats),
            "replicas": [
                {
                    "address": r.address,
                    "state": r.state,
                    "trusted": r.trusted,
                    "reason": r.reason,
                    "seq": max(r.high_seq, r.acked_seq, r.covered),
                    "inflight": len(r.inflight),
                    "link": getattr(r.link, "kind", None) if r.link is not None else None,
                    "rebuild": r.rebuild.progress() if r.rebuild is not None else None,
                    "stats": dict(r.stats),
                }
                for r in self.replicas
            ],
            "events": [{"time": t, "event": e} for t, e in self.events],
            "shared_memory": self.shared.status() if self.shared is not None else None,
        }


_KIND = {WRITE: "write", UNMAP: "unmap", FLUSH: "flush", READ: "read"}


def _reader(r: Replica) -> tuple[bool, int, bool]:
    """Which healthy replica a read goes to: the smallest key (the first of equals, in
    the volume's order).  A replica with less than READ_SPREAD of reads in flight takes
    the read, one on this machine first: small reads at any queue depth go to one pool
    server, so one process wakes per batch, not three (docs/replication.md, Reads).
    When all have that much, the least loaded: large reads spread over all replicas."""
    busy = r.reading >= READ_SPREAD
    return (busy, r.reading if busy else 0, not r.local)


def _reply_error(msg: wire.Message) -> StoreError:
    text = wire.error_text(msg)
    if msg.status == Status.NO_SPACE:
        return NoSpaceError(text)
    if msg.status == Status.MEDIUM_ERROR:
        return MediumError(text)
    return StoreError(text)
