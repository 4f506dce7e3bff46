"""Operations on every replica of a ``ReplicatedVolume`` at one point of its history
(sans-IO, like the volume): a snapshot behind a write barrier, and a rollback.

A **snapshot** holds new writes (``hold_writes``), waits until every write in flight is
answered by every healthy replica, sends SNAPSHOT to each healthy replica, then lets the
held writes go.  Every healthy replica therefore snapshots exactly the writes numbered
before the barrier.  It needs CF healthy replicas before it starts, and CF that took it.

A **rollback** is numbered like a write (docs/replication.md, "Snapshots"): behind the
same barrier it takes the next sequence number R and sends ROLLBACK with R to each
healthy replica that holds the snapshot; each rewrites, with R, every block that
differs from the snapshot.  Healthy replicas that lack the snapshot, failed it, or were
rebuilding are degraded: they come back through a rebuild, whose DIFF above their
prefix (which is below R) copies every rewritten block.
"""

from __future__ import annotations

from typing import Any

from cairn.blockdev import Pending
from cairn.replication import wire
from cairn.replication.volume import HEALTHY, REBUILDING, ReplicatedVolume
from cairn.replication.wire import Op, Status


class OperationError(Exception):
    """The operation was refused or failed; ``status`` is the HTTP status it deserves
    (409: a conflict such as no quorum, 404: no such snapshot, 400: a bad request)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def reply_status(msg: wire.Message) -> int:
    """The HTTP status a pool server's refusal deserves."""
    if msg.status == Status.CONFLICT:
        return 409
    if msg.status == Status.NOT_FOUND:
        return 404
    if msg.status == Status.BAD_REQUEST:
        return 400
    return 409


class Barrier:
    """One write barrier of ``volume``: ``release`` ends it, once, however the
    operation ends (done, failed, or given up by the caller)."""

    def __init__(self, volume: ReplicatedVolume) -> None:
        self.volume = volume
        self.held = True
        self.drained = volume.hold_writes()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.volume.release_writes()


class Snapshot:
    """Take snapshot ``name`` on every healthy replica at one point in time.
    ``pending`` resolves with ``{address: the replica's SNAPSHOT reply (JSON)}`` for the
    replicas that took it (at least CF), or fails with ``OperationError``; ``cancel``
    releases the held writes early (the caller's time limit)."""

    def __init__(self, volume: ReplicatedVolume, name: str) -> None:
        self.volume = volume
        self.name = name
        self.pending = Pending()
        #: the replicas that took it when too few did (the caller deletes it there)
        self.took: dict[str, Any] = {}
        if not volume.writable:
            self.barrier = None
            self.pending.fail(OperationError(409, f"not in quorum: {volume.why_not_writable()}"))
            return
        self.barrier = Barrier(volume)
        self.barrier.drained.add_done_callback(lambda _p: self._drained())

    def cancel(self, reason: str) -> None:
        if self.barrier is not None:
            self.barrier.release()
        if not self.pending.done:
            self.pending.fail(OperationError(409, reason))

    def _drained(self) -> None:
        v = self.volume
        if self.pending.done:
            return
        healthy = v.healthy()
        if len(healthy) < v.cf:
            self._fail(409, f"not in quorum: {v.why_not_writable()}")
            return
        payload = wire.json_payload({"name": self.name})
        sent = v.call_each(healthy, lambda tag: wire.encode(Op.SNAPSHOT, tag=tag, data=payload))
        sent.add_done_callback(lambda p: self._answered(p.value))

    def _answered(self, replies: dict[str, wire.Message | None]) -> None:
        assert self.barrier is not None
        self.barrier.release()
        if self.pending.done:
            return
        took: dict[str, Any] = {}
        errors: list[tuple[int, str]] = []
        for address, msg in replies.items():
            if msg is None:
                errors.append((409, f"{address}: connection lost"))
            elif msg.status != Status.OK:
                errors.append((reply_status(msg), f"{address}: {wire.error_text(msg)}"))
            else:
                took[address] = wire.parse_json(msg.data)
        if len(took) < self.volume.cf:
            status = errors[0][0] if errors else 409
            self.pending.fail(
                OperationError(
                    status,
                    f"snapshot {self.name!r} taken by {len(took)} replicas, "
                    f"{self.volume.cf} needed: " + "; ".join(e for _, e in errors),
                )
            )
            self.took = took
            return
        self.pending.resolve(took)

    def _fail(self, status: int, message: str) -> None:
        assert self.barrier is not None
        self.barrier.release()
        self.pending.fail(OperationError(status, message))


class Rollback:
    """Roll every replica back to ``snapshot``, which the replicas at ``holders`` hold.
    ``pending`` resolves with ``{"seq": R, "replicas": [addresses rolled back],
    "degraded": [addresses to be rebuilt]}`` or fails with ``OperationError``."""

    def __init__(self, volume: ReplicatedVolume, snapshot: str, holders: set[str]) -> None:
        self.volume = volume
        self.snapshot = snapshot
        self.holders = holders
        self.pending = Pending()
        self.seq = 0
        if not self._enough():
            self.barrier = None
            return
        self.barrier = Barrier(volume)
        self.barrier.drained.add_done_callback(lambda _p: self._drained())

    def _enough(self) -> bool:
        v = self.volume
        able = [r for r in v.healthy() if r.address in self.holders]
        if len(able) >= v.cf:
            return True
        if not self.pending.done:
            self.pending.fail(
                OperationError(
                    409,
                    f"not in quorum: {len(able)} healthy replicas hold snapshot "
                    f"{self.snapshot!r}, {v.cf} needed ({v.why_not_writable() or 'all healthy'})",
                )
            )
        return False

    def cancel(self, reason: str) -> None:
        if self.barrier is not None:
            self.barrier.release()
        if not self.pending.done:
            self.pending.fail(OperationError(409, reason))

    def _drained(self) -> None:
        if self.pending.done:
            return
        if not self._enough():
            assert self.barrier is not None
            self.barrier.release()
            return
        v = self.volume
        able = [r for r in v.healthy() if r.address in self.holders]
        # numbered like a write: above every block any replica holds now
        self.seq = seq = v.next_seq()
        payload = wire.json_payload({"snapshot": self.snapshot})
        sent = v.call_each(
            able, lambda tag: wire.encode(Op.ROLLBACK, tag=tag, seq=seq, data=payload)
        )
        sent.add_done_callback(lambda p: self._answered(p.value))

    def _answered(self, replies: dict[str, wire.Message | None]) -> None:
        v = self.volume
        done: list[str] = []
        errors: list[tuple[int, str]] = []
        for address, msg in replies.items():
            if msg is not None and msg.status == Status.OK:
                done.append(address)
            elif msg is None:
                errors.append((409, f"{address}: connection lost"))
            else:
                errors.append((reply_status(msg), f"{address}: {wire.error_text(msg)}"))
        degraded: list[str] = []
        for r in list(v.replicas):
            if r.address in done and r.state == HEALTHY:
                r.acked_seq = max(r.acked_seq, self.seq)
                r.covered = max(r.covered, self.seq)
            elif r.state in (HEALTHY, REBUILDING) or r.link is not None:
                degraded.append(r.address)
                v.degrade(r, f"rolled back to {self.snapshot!r} without it: to be rebuilt")
        assert self.barrier is not None
        self.barrier.release()
        if self.pending.done:
            return
        if len(done) < v.cf:
            status = errors[0][0] if errors else 409
            self.pending.fail(
                OperationError(
                    status,
                    f"rollback to {self.snapshot!r} done by {len(done)} replicas, {v.cf} "
                    "needed: " + "; ".join(e for _, e in errors),
                )
            )
            return
        self.pending.resolve({"seq": self.seq, "replicas": sorted(done), "degraded": degraded})
