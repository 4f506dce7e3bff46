"""The pool server's SNAPSHOT, SNAPSHOT_DELETE, SNAPSHOT_LIST, CLONE and ROLLBACK
requests on a real server process (docs/replication.md, "Snapshots")."""

from __future__ import annotations

import pytest

from cairn.pool.client import PoolError
from cairn.replication.wire import Status

from .test_pool_server import MiB, pattern, shared_server  # noqa: F401

pytestmark = pytest.mark.integration


def test_snapshot_list_clone_and_delete_refused_while_the_clone_exists(shared_server):  # noqa: F811
    with shared_server.client() as c:
        c.open("snapsrc", 4 * MiB, 512)
        c.write(0, pattern(1, MiB), seq=1)
        info = c.snapshot("s1")
        assert info["name"] == "s1" and info["high_seq"] == 1 and info["size"] == 4 * MiB
        with pytest.raises(PoolError) as e:
            c.snapshot("s1")
        assert e.value.status == Status.CONFLICT
        c.write(0, pattern(2, MiB), seq=2)
        assert [s["name"] for s in c.snapshots()] == ["s1"]
        clone = c.clone("s1", "snapclone")
        assert clone["volume"] == "snapclone" and clone["high_seq"] == 1
        with pytest.raises(PoolError) as e:
            c.snapshot_delete("s1")
        assert e.value.status == Status.CONFLICT and "snapclone" in str(e.value)
        with pytest.raises(PoolError) as e:
            c.clone("nope", "other")
        assert e.value.status == Status.NOT_FOUND
        assert c.read(0, MiB) == pattern(2, MiB)
    with shared_server.client() as d:
        info = d.open("snapclone", 4 * MiB, 512, create=False)
        assert info["high_seq"] == 1
        assert d.read(0, MiB) == pattern(1, MiB)
        d.write(0, pattern(3, 4096), seq=2)
    with shared_server.client() as c:
        c.open("snapsrc", 4 * MiB, 512)
        assert c.read(0, MiB) == pattern(2, MiB)  # the clone's write stays in the clone


def test_rollback_rewrites_what_changed_with_its_own_seq(shared_server):  # noqa: F811
    with shared_server.client() as c:
        c.open("rbsrc", 4 * MiB, 512)
        c.write(MiB, pattern(1, MiB), seq=1)
        c.snapshot("before")
        c.write(MiB, pattern(2, 4096), seq=2)  # overwrites 8 blocks
        c.write(3 * MiB, pattern(3, 4096), seq=3)  # where the snapshot held nothing
        blocks = c.rollback("before", seq=10)
        assert blocks == 8 + 8 + 1  # changed blocks, and block 0 always
        assert c.read(MiB, MiB) == pattern(1, MiB)
        assert c.read(3 * MiB, 4096) == bytes(4096)
        _, seqs = c.read_seqs(MiB, 8192)
        assert seqs == [10] * 8 + [1] * 8  # rewritten ones carry the rollback's seq
        _, seqs = c.read_seqs(0, 512)
        assert seqs == [10]
        assert c.info()["high_seq"] == 10 and c.info()["clean_seq"] == 10
        with pytest.raises(PoolError) as e:
            c.rollback("missing", seq=11)
        assert e.value.status == Status.NOT_FOUND
        c.snapshot_delete("before")
        assert c.snapshots() == []


def test_destroy_refuses_open_and_cloned_volumes_then_frees_the_space(shared_server):  # noqa: F811
    pool_dir = shared_server.path
    with shared_server.client() as c:
        c.open("gone", 8 * MiB, 512)
        c.write(0, pattern(4, 4 * MiB), seq=1)
        c.snapshot("s")
        c.clone("s", "gone-clone")
        with shared_server.client() as d:
            with pytest.raises(PoolError) as e:
                d.destroy("gone")  # still open on c
            assert e.value.status == Status.CONFLICT and "is open" in str(e.value)
    used = _du(pool_dir)
    with shared_server.client() as d:
        with pytest.raises(PoolError) as e:
            d.destroy("gone")  # a clone depends on its snapshot
        assert e.value.status == Status.CONFLICT and "gone-clone" in str(e.value)
        d.destroy("gone-clone")
        d.destroy("gone")
        with pytest.raises(PoolError) as e:
            d.destroy("gone")
        assert e.value.status == Status.NOT_FOUND
        with pytest.raises(PoolError) as e:
            d.open("gone", 8 * MiB, 512, create=False)
        assert e.value.status == Status.NOT_FOUND
        info = d.open("gone", 8 * MiB, 512)  # a new volume of that name starts empty
        assert info["high_seq"] == 0 and d.read(0, MiB) == bytes(MiB)
    assert _du(pool_dir) <= used - 3 * MiB, (used, _du(pool_dir))


def test_destroy_with_force_keeps_what_a_clone_needs(shared_server):  # noqa: F811
    with shared_server.client() as c:
        c.open("forced", 4 * MiB, 512)
        c.write(0, pattern(5, MiB), seq=1)
        c.snapshot("s")
        c.clone("s", "forced-clone")
    with shared_server.client() as d:
        d.destroy("forced", force=True)
        d.open("forced-clone", 4 * MiB, 512, create=False)
        assert d.read(0, MiB) == pattern(5, MiB)


def _du(path) -> int:  # bytes allocated under ``path``
    import os

    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total
