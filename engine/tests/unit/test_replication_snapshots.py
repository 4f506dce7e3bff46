"""Snapshots and rollback of a ``ReplicatedVolume`` against in-memory replicas
(``replication_sim``): the write barrier, quorum, and the sequence rule of a rollback."""

from __future__ import annotations

import pytest

from cairn.replication.control import OperationError, Rollback, Snapshot

from .replication_sim import BS
from .test_replication_volume import block, ident, start


def snapshot_ids(rep, name, nblocks):  # type: ignore[no-untyped-def]
    snap = rep.snapshots[name]
    return [ident(snap.get(lba, (0, bytes(BS)))[1]) for lba in range(nblocks)]


def test_the_barrier_waits_for_writes_in_flight_and_holds_new_ones():
    w, c = start()
    c.write(0, 4)  # sent, not yet answered
    snap = Snapshot(w.volume, "s1")
    assert w.volume.writes_in_flight() > 0
    assert not snap.pending.done
    c.write(8, 2)  # issued after the barrier: held, sent to no replica
    assert len(w.volume._held) == 1
    assert all(not link.to_replica or all(m.offset != 8 * BS for m in link.to_replica)
               for link in w.links if link is not None)  # fmt: skip
    w.run(100_000)
    assert snap.pending.done and snap.pending.error is None, snap.pending.error
    assert sorted(snap.pending.value) == sorted(w.addresses)
    for rep in w.replicas:  # the write before is in every snapshot, the one after in none
        ids = snapshot_ids(rep, "s1", 16)
        assert ids[:4] == [1] * 4 and ids[8:10] == [0, 0], ids
    assert c.acked[8] == 2  # released after the snapshot
    c.final_check()


@pytest.mark.parametrize("seed", range(40))
def test_every_replica_snapshots_the_same_point_under_random_delivery(seed):
    w, c = start(seed=seed)
    rng = w.rng
    last: dict[int, int] = {}  # lba -> the last write issued to it before the barrier
    for _ in range(rng.randrange(1, 30)):
        lba = rng.randrange(60)
        c.write(lba, 1)
        last[lba] = c.next_id - 1
        w.run(rng.randrange(0, 20))
    snap = Snapshot(w.volume, "s")
    for _ in range(rng.randrange(0, 20)):
        c.write(rng.randrange(60), 1)
        w.run(rng.randrange(0, 20))
    w.run(1_000_000)
    assert snap.pending.error is None, snap.pending.error
    views = [snapshot_ids(rep, "s", 64) for rep in w.replicas]
    # exactly the writes issued before the barrier, on every replica
    assert views[0] == [last.get(lba, 0) for lba in range(64)]
    assert all(v == views[0] for v in views)
    assert w.volume._barriers == 0 and not w.volume._held
    c.final_check()


def test_a_hung_replica_is_degraded_by_the_timeout_and_the_snapshot_goes_on():
    w, c = start()
    w.hung[2] = True
    c.write(0, 2)
    w.run(1000)
    snap = Snapshot(w.volume, "s")
    w.run(1000)
    assert not snap.pending.done  # waits for replica 2's answer
    w.advance(1.5)
    w.run(1000)
    assert snap.pending.error is None
    assert sorted(snap.pending.value) == sorted(w.addresses[:2])
    assert "s" not in w.replicas[2].snapshots


def test_not_in_quorum_is_refused_and_nothing_is_held():
    w, c = start()
    w.down[1] = w.down[2] = True
    w.disconnect(1, "killed")
    w.disconnect(2, "killed")
    snap = Snapshot(w.volume, "s")
    assert isinstance(snap.pending.error, OperationError) and snap.pending.error.status == 409
    assert "not in quorum" in str(snap.pending.error)
    assert w.volume._barriers == 0


def test_an_existing_name_is_a_conflict_and_writes_go_on():
    w, c = start()
    first = Snapshot(w.volume, "s")
    w.run(10_000)
    assert first.pending.error is None
    again = Snapshot(w.volume, "s")
    c.write(0, 1)
    w.run(10_000)
    assert isinstance(again.pending.error, OperationError)
    assert again.pending.error.status == 409 and "exists" in str(again.pending.error)
    assert c.acked == {0: 1}


def test_cancel_releases_the_held_writes():
    w, c = start()
    w.hung[0] = w.hung[1] = w.hung[2] = True
    c.write(0, 1)
    snap = Snapshot(w.volume, "s")
    c.write(1, 1)
    snap.cancel("gave up")
    assert w.volume._barriers == 0 and not w.volume._held
    assert str(snap.pending.error) == "gave up"


def test_rollback_is_numbered_like_a_write_and_a_missing_replica_is_rebuilt_to_it():
    w, c = start()
    c.write(0, 4)
    w.run(10_000)
    s = Snapshot(w.volume, "s")
    w.run(10_000)
    c.write(0, 2)  # after the snapshot: rolled back later
    c.write(10, 1)
    w.run(10_000)
    w.down[2] = True  # misses the rollback, holding the newer writes
    w.disconnect(2, "killed")
    rb = Rollback(w.volume, "s", set(s.pending.value))
    w.run(10_000)
    assert rb.pending.error is None, rb.pending.error
    seq = rb.pending.value["seq"]
    assert seq > max(rep.high_seq for rep in w.replicas[2:])
    for rep in w.replicas[:2]:
        assert [ident(rep.data_of(i)) for i in range(12)] == [1] * 4 + [0] * 8
        assert rep.seq_of(0) == rep.seq_of(1) == rep.seq_of(10) == seq
        assert rep.seq_of(2) < seq  # unchanged blocks keep their number
    assert w.volume.replicas[0].acked_seq == seq
    w.down[2] = False
    w.settle()  # replica 2's prefix is below the rollback's number: rebuilt
    assert w.volume.replicas[2].stats["rebuilds"] == 1
    assert [ident(w.replicas[2].data_of(i)) for i in range(12)] == [1] * 4 + [0] * 8
    assert w.replicas[2].data_of(0) == block(1, 0)
    c.write(20, 1)
    w.run(10_000)
    assert c.acked[20] == c.next_id - 1


def test_rollback_needs_a_quorum_of_holders_and_degrades_healthy_replicas_without_it():
    w, c = start()
    rb = Rollback(w.volume, "s", {w.addresses[0]})
    assert isinstance(rb.pending.error, OperationError) and rb.pending.error.status == 409
    s = Snapshot(w.volume, "s")
    w.run(10_000)
    holders = set(s.pending.value) - {w.addresses[1]}  # pretend 1 did not take it
    rb = Rollback(w.volume, "s", holders)
    w.run(10_000)
    assert rb.pending.error is None
    assert rb.pending.value["degraded"] == [w.addresses[1]]
    w.settle()
    assert all(r.state == "healthy" for r in w.volume.replicas)


def test_a_replica_restored_from_before_the_rollback_is_stale():
    w, c = start()
    c.write(0, 2)
    w.run(10_000)
    s = Snapshot(w.volume, "s")
    w.run(10_000)
    c.write(0, 2)
    w.run(10_000)
    old = w.snapshot(1)
    rb = Rollback(w.volume, "s", set(s.pending.value))
    w.run(10_000)
    assert rb.pending.error is None
    w.advance(6)  # the watermarks are saved
    w.disconnect(1, "killed")
    w.replicas[1] = old  # back from a copy taken before the rollback
    w.connect(1)
    assert w.volume.replicas[1].lost_writes
    w.settle()
    assert [ident(w.replicas[1].data_of(i)) for i in range(2)] == [1, 1]
