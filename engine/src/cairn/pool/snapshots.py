"""Snapshots, clones and rollback of one replica, for the pool server's SNAPSHOT,
SNAPSHOT_DELETE, SNAPSHOT_LIST, CLONE and ROLLBACK requests (docs/replication.md).

The stores do the work (docs/store.md, docs/zfs.md); this module adds what replication
needs around them:

- an operation that the store does not allow beside a flush raises ``Busy`` while the
  replica flushes in a worker thread (the server retries it once the flush is done);
- a rollback is *numbered like a write*: every block whose content differs from the
  snapshot's is rewritten from the snapshot with the rollback's seq (blocks the snapshot
  never held are unmapped with it), and block 0 is always rewritten, so a replica that
  did the rollback has ``high_seq`` at least the rollback's seq.  Sequence numbers
  therefore still only grow, and rebuild (DIFF above a prefix) and stale detection need
  no special case: a replica that missed the rollback has a shorter prefix.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

from cairn.pool.replicas import Busy, Replica

#: blocks compared per step of a rollback
CHUNK = 1 << 16
#: bytes read from the snapshot per piece of a rollback
PIECE = 1 << 20


def _seqs(seqs: list[int]) -> np.ndarray:
    return np.frombuffer(array("Q", seqs), dtype=np.uint64)


def _idle(rep: Replica) -> None:
    if rep.flushing:
        raise Busy(rep)


def info(s: Any, block_size: int) -> dict[str, Any]:
    return {
        "name": s.name,
        "created": s.created,
        "size": s.num_blocks * block_size,
        "high_seq": s.high_seq,
        "used": s.used_bytes,
        "unique": s.unique_bytes,
    }


def create(rep: Replica, name: str) -> dict[str, Any]:
    """Snapshot ``name`` of the replica: what the store reports of it."""
    _idle(rep)
    return info(rep.store.snapshot_create(name), rep.block_size)


def delete(rep: Replica, name: str) -> None:
    """Delete snapshot ``name`` (``BusyError`` from the store while a clone depends on
    it)."""
    _idle(rep)
    rep.store.snapshot_delete(name)


def listing(rep: Replica) -> list[dict[str, Any]]:
    return [info(s, rep.block_size) for s in rep.store.snapshot_list()]


def clone(rep: Replica, pool: Any, snapshot: str, name: str) -> dict[str, Any]:
    """Volume ``name`` from ``snapshot`` of the replica, made by the store at once; it is
    closed again (a target opens it)."""
    _idle(rep)
    vol = pool.clone(rep.name, snapshot, name)
    try:
        return {
            "volume": name,
            "uuid": str(vol.uuid),
            "size": vol.num_blocks * vol.block_size,
            "high_seq": vol.high_seq,
        }
    finally:
        vol.close()


def rollback(rep: Replica, snapshot: str, seq: int) -> int:
    """Make the replica's contents those of ``snapshot``: rewrite, with ``seq``, every
    block that differs from it (and block 0).  Returns the blocks rewritten.  The size
    stays; blocks beyond the snapshot's size are unmapped."""
    store = rep.store
    snap = store.snapshot_open(snapshot)
    try:
        nb, sn, shift = store.num_blocks, snap.num_blocks, rep.shift
        piece = max(1, PIECE >> shift)
        done = 0
        pos = 0
        while pos < nb:
            m = min(CHUNK, nb - pos)
            head = _seqs(store.block_seqs(pos, m))
            old = np.zeros(m, dtype=np.uint64)
            k = max(0, min(m, sn - pos))
            if k:
                old[:k] = _seqs(snap.block_seqs(pos, k))
            differ = head != old
            if pos == 0:
                differ[0] = True
            if differ.any():
                # runs of blocks to rewrite, cut where the snapshot holds nothing
                hole = old == 0
                cut = np.flatnonzero((differ[1:] != differ[:-1]) | (hole[1:] != hole[:-1]))
                bounds = [0, *(cut + 1).tolist(), m]
                for s, e in zip(bounds[:-1], bounds[1:], strict=True):
                    if not differ[s]:
                        continue
                    if hole[s]:
                        store.unmap(pos + s, e - s, seq)
                    else:
                        for a in range(s, e, piece):
                            n = min(piece, e - a)
                            store.write(pos + a, snap.read(pos + a, n), seq)
                    done += e - s
            pos += m
        return done
    finally:
        snap.close()
