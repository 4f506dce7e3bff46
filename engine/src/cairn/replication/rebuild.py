"""Bringing one replica up to date from a healthy one, while the volume serves I/O.

1. The replica is told (and persists) that it is being rebuilt and from which prefix:
   if anything stops the rebuild half way, it reports that prefix, not its highest
   number, the next time it opens.
2. It takes live writes from then on (``start_rebuilding``): everything numbered after
   ``s_start`` reaches it directly.
3. The source lists the blocks whose number is above the replica's prefix (DIFF), and
   they are copied a chunk at a time with their numbers (READ_SEQS on the source, then
   REBUILD on the replica, which applies a block only if it is newer than its own).
   A few chunks are in flight at once: memory stays bounded, and an optional rate keeps
   foreground I/O going.
4. The replica is told it is clean, and becomes healthy: it holds every write up to
   ``s_start`` (copied) and every one after (live).

Any failure degrades the replica with the reason; it comes back through a new
connection (the link reconnects with backoff) and a new rebuild.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from cairn.replication import wire
from cairn.replication.wire import Op, Status

if TYPE_CHECKING:
    from cairn.replication.volume import Replica, ReplicatedVolume

log = logging.getLogger("cairn.replication")

SCAN_BLOCKS_MAX = 1 << 21  # blocks per DIFF request (1 GiB of 512-byte blocks)


class Rebuild:
    def __init__(self, volume: ReplicatedVolume, replica: Replica, source: Replica) -> None:
        self.volume = volume
        self.replica = replica
        self.source = source
        self.threshold = replica.prefix
        self.phase = "marking"
        self.s_start = 0
        self.runs: deque[tuple[int, int]] = deque()
        self.scan_pos = 0
        self.total_bytes = 0
        self.done_bytes = 0
        self.applied_blocks = 0
        self.inflight = 0
        self.aborted = False
        self.started = time.monotonic()
        self.copy_started = 0.0
        self.window = volume.rebuild_window
        self.chunk_blocks = max(1, volume.rebuild_chunk // volume.block_size)
        # bytes per second (``ReplicatedVolume.rebuild_limit``): a budget refilled by
        # ``tick``, at most one second's worth, spent by each chunk sent
        self._budget = float(1 << 20)
        self._last_tick = 0.0

    # ------------------------------------------------------------------ steps
    def start(self) -> None:
        log.info(
            "event=rebuild_start volume=%s replica=%s source=%s from_seq=%d",
            self.volume.name,
            self.replica.address,
            self.source.address,
            self.threshold,
        )
        meta = {"rebuilding": True, "prefix": self.threshold, "source": self.source.address}
        self.volume.call(
            self.replica,
            lambda tag: wire.encode(Op.SET_META, tag=tag, data=wire.json_payload(meta)),
            self._marked,
        )

    def _marked(self, r: Replica, msg: wire.Message | None) -> None:
        if self.aborted or msg is None:
            return
        if msg.status != Status.OK:
            self._fail(f"the replica cannot record the rebuild: {wire.error_text(msg)}")
            return
        self.s_start = self.volume.start_rebuilding(r)
        self.phase = "scanning"
        self._scan()

    def _scan(self) -> None:
        nb = self.volume.num_blocks
        if self.scan_pos >= nb:
            self.phase = "copying"
            self.copy_started = time.monotonic()
            self._pump()
            return
        bs = self.volume.block_size
        n = min(SCAN_BLOCKS_MAX, nb - self.scan_pos)
        pos = self.scan_pos
        self.volume.call(
            self.source,
            lambda tag: wire.encode(
                Op.DIFF, tag=tag, seq=self.threshold, offset=pos * bs, length=n * bs
            ),
            lambda src, msg: self._scanned(msg),
        )

    def _scanned(self, msg: wire.Message | None) -> None:
        if self.aborted or msg is None:
            return
        if msg.status != Status.OK:
            self._fail(f"DIFF on {self.source.address} failed: {wire.error_text(msg)}")
            return
        step = self.chunk_blocks
        for lba, count in wire.unpack_runs(msg.data):
            self.total_bytes += count * self.volume.block_size
            while count > 0:
                k = min(step, count)
                self.runs.append((lba, k))
                lba += k
                count -= k
        # the reply says how much of the range it covers (a long list of runs is cut)
        covered = msg.length // self.volume.block_size
        if covered <= 0:
            self._fail(f"DIFF on {self.source.address} covered nothing")
            return
        self.scan_pos += covered
        self._scan()

    def _pump(self) -> None:
        if self.aborted or self.phase != "copying":
            return
        bs = self.volume.block_size
        while self.runs and self.inflight < self.window:
            if self._budget <= 0 and self.volume.rebuild_limit(self.volume.now()):
                return  # ``tick`` refills the budget and pumps again
            lba, count = self.runs.popleft()
            self.inflight += 1
            self._budget -= count * bs
            self._fetch(lba, count)
        if not self.runs and not self.inflight:
            self._finish()

    def _fetch(self, lba: int, count: int) -> None:
        bs = self.volume.block_size

        def request(tag: int) -> list[Any]:
            return wire.encode(Op.READ_SEQS, tag=tag, offset=lba * bs, length=count * bs)

        def got(src: Replica, msg: wire.Message | None) -> None:
            self._read(lba, count, msg)

        self.volume.call(self.source, request, got)

    def _read(self, lba: int, count: int, msg: wire.Message | None) -> None:
        if self.aborted or msg is None:
            return
        if msg.status != Status.OK:
            self._fail(
                f"reading blocks {lba}+{count} from {self.source.address} failed: "
                f"{wire.error_text(msg)}"
            )
            return
        bs = self.volume.block_size
        payload = msg.data  # data then one number per block: what REBUILD takes
        self.volume.call(
            self.replica,
            lambda tag: wire.encode(
                Op.REBUILD, tag=tag, offset=lba * bs, length=count * bs, data=payload
            ),
            lambda r, reply: self._applied(count, reply),
        )

    def _applied(self, count: int, msg: wire.Message | None) -> None:
        if self.aborted or msg is None:
            return
        if msg.status != Status.OK:
            self._fail(f"the replica could not apply rebuilt blocks: {wire.error_text(msg)}")
            return
        if len(msg.data) >= 4:
            self.applied_blocks += wire.COUNT.unpack_from(msg.data)[0]
        self.inflight -= 1
        self.done_bytes += count * self.volume.block_size
        self._pump()

    def _finish(self) -> None:
        self.phase = "finishing"
        meta = {"rebuilding": False, "clean": True, "rebuilt_from": self.source.address}
        self.volume.call(
            self.replica,
            lambda tag: wire.encode(Op.SET_META, tag=tag, data=wire.json_payload(meta)),
            self._cleaned,
        )

    def _cleaned(self, r: Replica, msg: wire.Message | None) -> None:
        if self.aborted or msg is None:
            return
        if msg.status != Status.OK:
            self._fail(f"the replica cannot record the end of its rebuild: {wire.error_text(msg)}")
            return
        took = time.monotonic() - self.started
        log.info(
            "event=rebuild_done volume=%s replica=%s source=%s bytes=%d applied_blocks=%d "
            "seconds=%.1f",
            self.volume.name,
            r.address,
            self.source.address,
            self.done_bytes,
            self.applied_blocks,
            took,
        )
        self.phase = "done"
        self.volume.rebuilt(r, self.s_start)

    # ------------------------------------------------------------------ control
    def _fail(self, reason: str) -> None:
        log.warning(
            "event=rebuild_failed volume=%s replica=%s reason=%r",
            self.volume.name,
            self.replica.address,
            reason,
        )
        self.abort(reason)
        self.replica.rebuild = None
        self.volume.degrade(self.replica, f"rebuild failed: {reason}")

    def abort(self, reason: str) -> None:
        self.aborted = True
        self.phase = "aborted"

    def tick(self, now: float) -> None:
        elapsed = now - self._last_tick if self._last_tick else 0.0
        self._last_tick = now
        rate = self.volume.rebuild_limit(now)
        if rate:
            self._budget = min(float(rate), self._budget + elapsed * rate)
        else:
            self._budget = float(1 << 20)
        self._pump()

    def progress(self) -> dict[str, Any]:
        elapsed = time.monotonic() - (self.copy_started or self.started)
        rate = self.done_bytes / elapsed if self.copy_started and elapsed > 0 else 0.0
        left = self.total_bytes - self.done_bytes
        return {
            "phase": self.phase,
            "source": self.source.address,
            "from_seq": self.threshold,
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes if self.phase != "scanning" else None,
            "rate_bytes_per_s": round(rate),
            "eta_s": round(left / rate, 1) if rate > 0 and self.phase == "copying" else None,
        }
