"""The shared-memory ring between a target and the pool servers on its machine
(``cairn.replication.ring``): allocation, reuse only after release, retirement, and the
pool server's checks before it maps one."""

from __future__ import annotations

import os
import random

import pytest

from cairn.replication.ring import (
    DATA,
    DESC,
    MappedRing,
    Region,
    RingError,
    RingHost,
    SharedRing,
)

MIB = 1 << 20


def test_regions_are_handed_out_in_order_and_reused_only_when_free() -> None:
    ring = SharedRing(DATA + 4 * MIB, gen=1)
    a = ring.alloc(MIB)
    b = ring.alloc(MIB)
    c = ring.alloc(MIB)
    d = ring.alloc(MIB)
    assert a and b and c and d
    assert [r.start for r in (a, b, c, d)] == [DATA + i * MIB for i in range(4)]
    assert ring.alloc(1) is None  # full
    b.release()  # out of order: a still holds the front
    assert ring.alloc(MIB) is None
    a.release()  # a and b free: the front moves past both
    e = ring.alloc(2 * MIB)
    assert e is not None and e.start == DATA  # wrapped into the freed space
    assert ring.alloc(1) is None
    for r in (c, d, e):
        r.release()
    assert not ring.regions
    ring.close()


def test_regions_never_overlap_a_live_region() -> None:
    """Random sizes and release orders: every live region is disjoint from the others."""
    rng = random.Random(7)
    ring = SharedRing(DATA + 2 * MIB, gen=1)
    live: list[Region] = []
    for _ in range(5000):
        if live and rng.random() < 0.5:
            live.pop(rng.randrange(len(live)) if rng.random() < 0.2 else 0).release()
            continue
        r = ring.alloc(rng.choice((512, 4096, 65536, 300_000, MIB)))
        if r is None:
            continue
        assert DATA <= r.start < r.end <= ring.size
        for other in live:
            assert r.end <= other.start or other.end <= r.start, (r.start, other.start)
        live.append(r)
    ring.close()


def test_locate_finds_views_of_live_regions_only() -> None:
    ring = SharedRing(DATA + 2 * MIB, gen=3)
    r = ring.alloc(8192)
    assert r is not None
    view = ring.data(r)
    found = ring.locate(view[4096:8192])
    assert found == (r, r.start + 4096)
    assert ring.locate(memoryview(bytearray(4096))) is None
    assert ring.locate(b"x" * 4096) is None
    r.release()
    assert ring.locate(view) is None  # freed: not a place to name any more
    del view, found
    ring.close()


def test_host_lends_and_places_only_when_a_pool_server_maps_the_ring() -> None:
    host = RingHost(DATA + 2 * MIB)
    ring = host.ring()
    assert ring is not None
    assert host.payload_buffer(4096) is None  # nobody maps it: no point
    assert host.place(b"a" * 4096) is None
    ring.users = 1
    lent = host.payload_buffer(4096)
    assert lent is not None
    handle, buf = lent
    buf[:] = b"b" * 4096
    placed = host.place(buf)
    assert placed is not None
    region, desc = placed
    assert DESC.unpack(desc) == (ring.gen, region.start)
    assert region.refs == 2  # the lender's and the placement's
    host.release_payload_buffer(handle)
    region.release()
    assert not ring.regions
    # data from elsewhere is copied in
    placed = host.place(b"c" * 512)
    assert placed is not None
    region, desc = placed
    assert bytes(ring.data(region)) == b"c" * 512
    region.release()
    del buf
    host.close()


def test_a_retired_ring_is_never_allocated_again_and_closes_when_free() -> None:
    host = RingHost(DATA + 2 * MIB)
    old = host.ring()
    assert old is not None
    old.users = 1
    placed = host.place(b"x" * 4096)
    assert placed is not None
    region, _ = placed
    lent = host.payload_buffer(4096)
    assert lent is not None
    handle, buf = lent
    assert old.locate(buf) is not None
    host.retire(old)
    assert old.alloc(512) is None
    assert old.locate(buf) is None
    new = host.ring()
    assert new is not None and new is not old and new.gen == old.gen + 1
    # a lent buffer is still written into: the mapping stays while it lives
    assert old in host.old and old.mapped
    buf[:] = b"y" * 4096
    host.release_payload_buffer(handle)
    del buf, lent
    assert old in host.old  # the region sent to a pool server is still in use
    region.release()  # the last region: forgotten, and unmapped
    assert old not in host.old and not old.mapped and old.fd == -1
    assert host.status()["retired"] == 1
    host.close()


def test_a_retired_ring_without_lent_buffers_is_unmapped_at_once() -> None:
    host = RingHost(DATA + 2 * MIB)
    old = host.ring()
    assert old is not None
    old.users = 1
    placed = host.place(b"x" * 4096)
    assert placed is not None
    host.retire(old)
    assert not old.mapped  # the pool servers read through their own mappings
    placed[0].release()
    assert old not in host.old
    host.close()


def test_a_pool_server_maps_a_ring_read_only_with_the_right_token() -> None:
    ring = SharedRing(DATA + MIB, gen=5)
    r = ring.alloc(4096)
    assert r is not None
    ring.data(r)[:] = b"z" * 4096
    req = ring.attach_request()
    mapped = MappedRing(req)
    assert bytes(mapped.data(r.start, 4096)) == b"z" * 4096
    with pytest.raises(TypeError):
        mapped.view[DATA] = 0  # read-only
    with pytest.raises(RingError, match="outside"):
        mapped.data(ring.size - 100, 4096)
    with pytest.raises(RingError, match="outside"):
        mapped.data(0, 16)  # the header is not data
    mapped.close()
    with pytest.raises(RingError, match="header does not match"):
        MappedRing({**req, "token": "00" * 16})
    with pytest.raises(RingError, match="header does not match"):
        MappedRing({**req, "gen": 6})
    with pytest.raises(RingError, match="size"):
        MappedRing({**req, "size": ring.size * 2})
    r.release()
    ring.close()


def test_a_pool_server_refuses_files_that_are_not_rings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "secret"
    f.write_bytes(b"x" * (DATA + MIB))
    fd = os.open(f, os.O_RDONLY)
    try:
        req = {"path": f"/proc/{os.getpid()}/fd/{fd}", "gen": 1, "size": DATA + MIB, "token": ""}
        with pytest.raises(RingError, match="not a Cairn ring"):
            MappedRing(req)
    finally:
        os.close(fd)
    with pytest.raises(RingError, match="not a process's descriptor"):
        MappedRing({"path": str(f), "gen": 1, "size": DATA + MIB, "token": ""})
    with pytest.raises(RingError, match="needs"):
        MappedRing({"path": "/proc/1/fd/0"})
