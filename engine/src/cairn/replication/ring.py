"""Shared memory between a target and the pool servers on its own machine.

A write to a replica normally carries its data in the message.  When a pool server
runs on the target's machine (its HELLO says so: same boot id), the target puts the
data once in a *ring*, a memory file (``memfd``) that it shares with every such pool
server, and sends each of them a 40+16-byte WRITE_SHM message that says where the
data is.  One copy into the ring (none when the iSCSI layer received the data there
directly, see ``RingHost.payload_buffer``) replaces one copy through the loopback
network per replica.  Replicas on other machines get the data in the message, as
always; a ring that is full, or a pool server that cannot map it, falls back to that
too, so nothing ever waits for ring space.

Safety rests on one rule: **a region is never written again while a pool server
might still read it.**  Each message that names a region holds a reference on it
until that replica's answer arrives.  A connection that closes while it holds
references (a replica that stopped answering, or was killed) may leave a live pool
server that reads those regions later; so the whole ring is *retired*: nothing is
allocated in it again, a new ring replaces it, and the old one is unmapped by the
target once the references of the other connections are gone.  (A late message from
such a connection is also refused by the pool server's session fence before it
reads anything; the retirement makes the ring safe without relying on that.)

The pool server maps a ring read-only, only after authentication, only if the file
is a memory file of a Cairn ring and its header carries the 16-byte token that came
with the request (so that a peer cannot make it map another process's file or
another target's ring).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import secrets
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cairn.replication")

MAGIC = b"CAIRNRNG"
#: magic, token, size, generation; the data area starts at ``DATA``
RING_HEADER = struct.Struct(">8s16sQQ")
DATA = 4096
#: the WRITE_SHM payload: ring generation and the data's offset in the ring
DESC = struct.Struct(">QQ")
MEMFD_NAME = "cairn-ring"
ALIGN = 64
DEFAULT_SIZE = 16 << 20


class RingError(Exception):
    """A ring cannot be created or mapped; the message says why (the caller then
    carries data in the messages)."""


class Region:
    """Bytes ``start``..``end`` of a ring, in use until ``refs`` drops to 0."""

    __slots__ = ("ring", "start", "end", "refs")

    def __init__(self, ring: SharedRing, start: int, end: int) -> None:
        self.ring = ring
        self.start = start
        self.end = end
        self.refs = 1

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.ring._freed()


class SharedRing:
    """The target's side of one ring: a memory file, mapped read-write, handed out in
    regions in FIFO order (a region is reused only once it and every region allocated
    before it are free, which replies in order make the common case)."""

    def __init__(self, size: int, gen: int) -> None:
        if size < DATA + (1 << 20):
            raise RingError(f"a ring needs at least {DATA + (1 << 20)} bytes, not {size}")
        self.size = size
        self.gen = gen
        self.token = secrets.token_bytes(16)
        try:
            self.fd = os.memfd_create(f"{MEMFD_NAME}-{gen}", os.MFD_CLOEXEC)
        except (AttributeError, OSError) as e:
            raise RingError(f"cannot create a memory file: {e}") from e
        try:
            os.ftruncate(self.fd, size)
            self.mm = mmap.mmap(self.fd, size)
        except OSError as e:
            os.close(self.fd)
            raise RingError(f"cannot map a {size}-byte memory file: {e}") from e
        RING_HEADER.pack_into(self.mm, 0, MAGIC, self.token, size, gen)
        self.view = memoryview(self.mm)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        self.regions: deque[Region] = deque()
        self.head = DATA  # where the next region starts
        self.retired = False
        self.users = 0  # connections whose pool server has this ring mapped
        self.on_empty: Callable[[SharedRing], None] | None = None

    def attach_request(self) -> dict[str, Any]:
        """What a pool server on this machine needs to map the ring."""
        return {
            "path": f"/proc/{os.getpid()}/fd/{self.fd}",
            "gen": self.gen,
            "size": self.size,
            "token": self.token.hex(),
        }

    # -- allocation ------------------------------------------------------------------
    def alloc(self, nbytes: int) -> Region | None:
        """A region of ``nbytes`` with one reference (the caller's), or None when the
        ring is retired or has no room now."""
        if self.retired or nbytes <= 0:
            return None
        need = (nbytes + ALIGN - 1) & ~(ALIGN - 1)
        regions = self.regions
        head = self.head
        if not regions:
            head = DATA
            if DATA + need > self.size:
                return None
        else:
            tail = regions[0].start
            if regions[-1].start >= tail:  # not wrapped: head..size and DATA..tail free
                if head + need > self.size:
                    if DATA + need > tail:
                        return None
                    head = DATA
            elif head + need > tail:  # free: head..tail
                return None
        region = Region(self, head, head + nbytes)
        self.head = head + need
        regions.append(region)
        return region

    def _freed(self) -> None:
        regions = self.regions
        while regions and regions[0].refs <= 0:
            regions.popleft()
        if not regions:
            self.head = DATA
            if self.retired and self.on_empty is not None:
                self.on_empty(self)

    def data(self, region: Region) -> memoryview:
        return self.view[region.start : region.end]

    @property
    def mapped(self) -> bool:
        return not self.mm.closed

    def locate(self, data: Any) -> tuple[Region, int] | None:
        """The live region that holds ``data`` (a view of this ring) and the data's
        offset in the ring; None when ``data`` is not in this ring."""
        if type(data) is not memoryview or data.obj is not self.mm or self.retired:
            return None
        off = ctypes.addressof(ctypes.c_char.from_buffer(data)) - self.base
        end = off + data.nbytes
        for region in self.regions:
            if region.start <= off and end <= region.end and region.refs > 0:
                return region, off
        return None

    # -- life ------------------------------------------------------------------------
    def retire(self) -> None:
        """Never allocate here again.  The target's own mapping goes at once when no
        buffer of it is lent (the pool servers read through theirs), else once every
        region is free."""
        if not self.retired:
            self.retired = True
            if not self.regions and self.on_empty is not None:
                self.on_empty(self)
            else:
                self.close()

    def close(self) -> bool:
        """Unmap and close (the pool servers' mappings stay valid until they drop
        them); False while a view of it is still held (a lent buffer), and then the
        mapping goes with the last such view."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.mm.closed:
            return True
        try:
            self.view.release()
            self.mm.close()
        except BufferError:
            return False
        return True


class RingHost:
    """The rings of one volume's target: the current one, its replacement after a
    retirement, and the buffers lent to the iSCSI layer from it."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self.gen = 0
        self.current: SharedRing | None = None
        self.error = ""  # why there is no ring, when creating one failed
        self.old: set[SharedRing] = set()  # retired rings with regions in use
        self._lent: dict[int, Region] = {}
        self._handle = 0
        self.stats = {"rings": 0, "retired": 0, "placed_bytes": 0, "lent": 0, "full": 0}

    def status(self) -> dict[str, Any]:
        ring = self.current
        return {
            "ring_bytes": self.size,
            "generation": ring.gen if ring is not None else 0,
            "pool_servers": ring.users if ring is not None else 0,
            "error": self.error,
            **self.stats,
        }

    def ring(self) -> SharedRing | None:
        """The current ring (created on first use and after a retirement)."""
        if self.current is None and not self.error:
            self.gen += 1
            try:
                ring = SharedRing(self.size, self.gen)
            except RingError as e:
                self.error = str(e)
                return None
            ring.on_empty = self._empty
            self.current = ring
            self.stats["rings"] += 1
        return self.current

    def retire(self, ring: SharedRing) -> None:
        """A connection that used ``ring`` closed with regions in flight: see the
        module's docstring."""
        if ring.retired:
            return
        log.info("event=ring_retired gen=%d regions_in_use=%d", ring.gen, len(ring.regions))
        self.stats["retired"] += 1
        if ring is self.current:
            self.current = None
        self.old.add(ring)
        ring.retire()

    def _empty(self, ring: SharedRing) -> None:
        self.old.discard(ring)
        ring.close()

    def close(self) -> None:
        for ring in [*self.old, *([self.current] if self.current else [])]:
            ring.close()
        self.old.clear()
        self.current = None

    # -- buffers for the iSCSI layer (``BlockDevice.payload_buffer``) -----------------
    def payload_buffer(self, nbytes: int) -> tuple[int, memoryview] | None:
        ring = self.current
        if ring is None or not ring.users:
            return None
        region = ring.alloc(nbytes)
        if region is None:
            self.stats["full"] += 1
            return None
        self._handle += 1
        self._lent[self._handle] = region
        self.stats["lent"] += 1
        return self._handle, ring.data(region)

    def release_payload_buffer(self, handle: int) -> None:
        region = self._lent.pop(handle, None)
        if region is not None:
            region.release()

    # -- writes ----------------------------------------------------------------------
    def place(self, data: Any) -> tuple[Region, bytes] | None:
        """Make ``data`` available in the current ring: found there (a lent buffer) or
        copied there.  Returns the region, with a reference the caller releases, and
        the WRITE_SHM payload naming it; None when no pool server maps the ring or it
        has no room (the data then goes in the messages)."""
        ring = self.current
        if ring is None or not ring.users:
            return None
        found = ring.locate(data)
        if found is not None:
            region, off = found
            region.refs += 1
            return region, DESC.pack(ring.gen, off)
        n = len(data) if type(data) is not memoryview else data.nbytes
        fresh = ring.alloc(n)
        if fresh is None:
            self.stats["full"] += 1
            return None
        ring.view[fresh.start : fresh.end] = data
        self.stats["placed_bytes"] += n
        return fresh, DESC.pack(ring.gen, fresh.start)


class MappedRing:
    """A pool server's read-only mapping of a target's ring."""

    def __init__(self, request: dict[str, Any]) -> None:
        path = request.get("path")
        gen = request.get("gen")
        size = request.get("size")
        token = request.get("token")
        if (
            not isinstance(path, str)
            or not isinstance(gen, int)
            or not isinstance(size, int)
            or not isinstance(token, str)
        ):
            raise RingError("ATTACH_RING needs path, gen, size and token")
        if not path.startswith("/proc/"):
            raise RingError(f"{path}: not a process's descriptor")
        try:
            target = os.readlink(path)
        except OSError as e:
            raise RingError(f"{path}: {e.strerror or e}") from None
        if not target.startswith(f"/memfd:{MEMFD_NAME}"):
            raise RingError(f"{path}: not a Cairn ring ({target})")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise RingError(f"cannot open {path}: {e.strerror or e}") from None
        try:
            if os.fstat(fd).st_size != size or size <= DATA:
                raise RingError(f"{path}: size is not {size}")
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except OSError as e:
            raise RingError(f"cannot map {path}: {e.strerror or e}") from None
        finally:
            os.close(fd)
        magic, have_token, have_size, have_gen = RING_HEADER.unpack_from(mm, 0)
        if magic != MAGIC or have_token.hex() != token or have_size != size or have_gen != gen:
            mm.close()
            raise RingError(f"{path}: the ring's header does not match the request")
        self.gen = gen
        self.size = size
        self.mm = mm
        self.view = memoryview(mm)

    def data(self, offset: int, length: int) -> memoryview:
        if offset < DATA or length < 0 or offset + length > self.size:
            raise RingError(
                f"bytes {offset}..{offset + length} are outside the ring's data area "
                f"({DATA}..{self.size})"
            )
        return self.view[offset : offset + length]

    def close(self) -> None:
        try:
            self.view.release()
            self.mm.close()
        except BufferError:
            pass  # unmapped with the last view of it
