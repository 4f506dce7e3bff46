"""The replicas a pool server holds open: one shared store per volume, its metadata and
its clean sequence number.

Several connections may open the same replica (a target reconnecting, a rebuild
reading while the target writes): they share one open store, counted by references, and
the store is flushed and closed when the last one lets go.

Threading: everything here runs on the event loop's thread except ``store.flush``,
which runs in a worker thread (the store allows flush alone beside I/O).  Operations that
the store does not allow beside a flush (resize) wait for it: ``Busy`` tells the caller
to retry when ``when_idle`` calls back.

Files beside the pool's own (``<pool>/replication/``), named by the volume's UUID so a
volume deleted and created again does not inherit them:

* ``<uuid>.meta.json``: the object last stored with SET_META, replaced atomically;
* ``<uuid>.clean``: 4 KiB, written in full when the replica is first opened, then
  updated in place (24 bytes, one sector, ``fdatasync``) when a write fails or SET_META
  declares the replica clean.  In-place updates need no new space, so a failure is
  recorded even when the pool is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cairn.blockdev import StoreError
from cairn.store import EmbeddedPool, EmbeddedVolume, NotFoundError
from cairn.store._fs import atomic_write, atomic_write_json, fsync_dir, os_error
from cairn.store.errors import BusyError

log = logging.getLogger("cairn.pool")

STATE_DIR = "replication"
CLEAN = struct.Struct(">8sQQ")  # magic, pinned (0/1), clean seq
CLEAN_MAGIC = b"CRNCLEAN"
CLEAN_FILE_SIZE = 4096


class Busy(Exception):
    """The replica is flushing in a worker thread; retry after ``replica.when_idle``."""

    def __init__(self, replica: Replica) -> None:
        super().__init__(f"replica {replica.name!r} is busy")
        self.replica = replica


class OpenRefused(Exception):
    """OPEN cannot be done as asked (size, block size); the message says why."""


class Replica:
    """One open replica, shared by the connections that opened it."""

    def __init__(
        self, registry: Replicas, name: str, store: EmbeddedVolume, state_dir: Path
    ) -> None:
        self.registry = registry
        self.name = name
        self.store = store
        self.uuid = str(store.uuid)
        self.block_size = store.block_size
        self.shift = self.block_size.bit_length() - 1
        self.refs = 0
        # the highest session an OPEN brought (the target's number for its connection):
        # connections of older sessions may no longer change the replica
        self.session = 0
        self.flushing = False
        self._flush_next: list[Callable[[BaseException | None], None]] = []
        self._idle_waiters: list[Callable[[], None]] = []
        self._meta_path = state_dir / f"{self.uuid}.meta.json"
        self._clean_path = state_dir / f"{self.uuid}.clean"
        self.meta: dict[str, Any] = self._load_meta()
        self._clean_fd = -1
        self.pinned: int | None = None
        self._load_clean()

    # -- metadata and clean seq ----------------------------------------------------

    def _load_meta(self) -> dict[str, Any]:
        try:
            text = self._meta_path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(
                f"replica {self.name!r}: cannot read {self._meta_path}: {exc}"
            ) from exc
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise StoreError(f"replica {self.name!r}: {self._meta_path} is not a JSON object")
        return obj

    def _load_clean(self) -> None:
        path = self._clean_path
        try:
            if not path.exists():
                atomic_write(path, CLEAN.pack(CLEAN_MAGIC, 0, 0).ljust(CLEAN_FILE_SIZE, b"\0"))
            self._clean_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            raw = os.pread(self._clean_fd, CLEAN.size, 0)
        except OSError as exc:
            self.close_files()
            raise os_error(exc, f"replica {self.name!r}: clean state {path}") from None
        if len(raw) == CLEAN.size and raw.startswith(CLEAN_MAGIC):
            _, pinned, seq = CLEAN.unpack(raw)
            self.pinned = int(seq) if pinned else None
        else:
            # Unreadable: claim nothing is clean, so the replica is rebuilt in full.
            log.warning(
                "event=clean_state_damaged pool=%s volume=%s path=%s",
                self.registry.pool_name,
                self.name,
                path,
            )
            self.pinned = 0

    def _store_clean(self) -> None:
        flag, seq = (0, 0) if self.pinned is None else (1, self.pinned)
        try:
            os.pwrite(self._clean_fd, CLEAN.pack(CLEAN_MAGIC, flag, seq), 0)
            os.fdatasync(self._clean_fd)
        except OSError as exc:
            log.error(
                "event=clean_state_not_saved pool=%s volume=%s clean_seq=%s error=%r",
                self.registry.pool_name,
                self.name,
                seq if flag else "high",
                exc.strerror or str(exc),
            )

    @property
    def high_seq(self) -> int:
        return self.store.high_seq

    @property
    def clean_seq(self) -> int:
        """Every write or unmap with a seq up to this one sent here was applied."""
        high = self.store.high_seq
        return high if self.pinned is None else min(self.pinned, high)

    def write_failed(self, seq: int) -> None:
        """A write or unmap numbered ``seq`` was not applied: the clean seq stops below
        it (and stays there, across restarts, until SET_META says clean)."""
        if seq <= 0:
            return
        limit = min(seq - 1, self.store.high_seq)
        if self.pinned is None or limit < self.pinned:
            self.pinned = limit
            self._store_clean()

    def flush_failed(self) -> None:
        """A flush failed: only what the last good flush covered is known durable."""
        flushed = int(getattr(self.store, "flushed_seq", 0))
        if self.pinned is None or flushed < self.pinned:
            self.pinned = flushed
            self._store_clean()

    def set_meta(self, meta: dict[str, Any]) -> None:
        """Persist ``meta`` (replacing the previous object); ``{"clean": true}`` in it
        declares every write up to the high seq applied."""
        try:
            atomic_write_json(self._meta_path, meta)
        except OSError as exc:
            raise os_error(exc, f"replica {self.name!r}: metadata") from None
        self.meta = meta
        if meta.get("clean") is True and self.pinned is not None:
            self.pinned = None
            self._store_clean()

    # -- flushing and exclusive work ------------------------------------------------

    def request_flush(self, done: Callable[[BaseException | None], None]) -> None:
        """Make every write applied so far durable, then call ``done(error)`` on the
        loop.  Flushes run one at a time per replica in a worker thread; requests that
        arrive while one runs share the next."""
        self._flush_next.append(done)
        if not self.flushing:
            self._start_flush()

    def _start_flush(self) -> None:
        batch, self._flush_next = self._flush_next, []
        self.flushing = True
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self.store.flush)
        self.registry._flushes.add(fut)

        def finished(f: asyncio.Future[None]) -> None:
            self.registry._flushes.discard(f)
            self.flushing = False
            err: BaseException | None
            if f.cancelled():
                err = StoreError(f"replica {self.name!r}: flush cancelled")
            else:
                err = f.exception()
            if err is not None:
                log.error(
                    "event=flush_failed pool=%s volume=%s error=%r",
                    self.registry.pool_name,
                    self.name,
                    str(err),
                )
                self.flush_failed()
            for cb in batch:
                self._call(cb, err)
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                self._call(waiter)
            if self.flushing:  # a waiter started one
                return
            if self._flush_next:
                self._start_flush()
            elif self.refs == 0:
                self.registry._close(self)

        fut.add_done_callback(finished)

    def _call(self, cb: Callable[..., None], *args: Any) -> None:
        try:
            cb(*args)
        except Exception:
            log.exception(
                "event=callback_failed pool=%s volume=%s", self.registry.pool_name, self.name
            )

    def when_idle(self, cb: Callable[[], None]) -> None:
        """Call ``cb`` on the loop once no flush runs (at once if none does)."""
        if not self.flushing:
            asyncio.get_running_loop().call_soon(cb)
        else:
            self._idle_waiters.append(cb)

    def resize(self, size: int) -> None:
        """Grow to ``size`` bytes; ``Busy`` while a flush runs."""
        bs = self.block_size
        current = self.store.num_blocks * bs
        if size % bs or size <= 0:
            raise OpenRefused(f"size {size} is not a positive multiple of the block size {bs}")
        if size < current:
            raise OpenRefused(
                f"volume {self.name!r} has {current} bytes; shrinking it to {size} bytes "
                "is not supported"
            )
        if size == current:
            return
        if self.flushing:
            raise Busy(self)
        self.store.resize(size // bs)
        log.info(
            "event=resized pool=%s volume=%s size=%d", self.registry.pool_name, self.name, size
        )

    def close_files(self) -> None:
        if self._clean_fd >= 0:
            os.close(self._clean_fd)
            self._clean_fd = -1


class Replicas:
    """The open replicas of one pool, by volume name."""

    def __init__(self, pool: EmbeddedPool, pool_name: str) -> None:
        self.pool = pool
        self.pool_name = pool_name
        self.state_dir = pool.path / STATE_DIR
        if not self.state_dir.exists():
            self.state_dir.mkdir()
            fsync_dir(pool.path)
        self.open: dict[str, Replica] = {}
        #: volumes a DESTROY is deleting in a worker thread: not to be opened meanwhile
        self.destroying: set[str] = set()
        self._flushes: set[asyncio.Future[None]] = set()
        self.closed = False

    def acquire(self, name: str, size: int, block_size: int, create: bool) -> Replica:
        """Open replica ``name`` (creating it when absent and ``create``) and take a
        reference.  Raises ``OpenRefused``, ``NotFoundError``, ``Busy`` or
        ``StoreError``."""
        if block_size not in (512, 4096):
            raise OpenRefused(f"block size must be 512 or 4096, not {block_size}")
        if size <= 0 or size % block_size:
            raise OpenRefused(
                f"size {size} is not a positive multiple of the block size {block_size}"
            )
        if name in self.destroying:
            raise BusyError(f"volume {name!r} is being deleted from pool {self.pool_name}")
        rep = self.open.get(name)
        if rep is None:
            rep = self._open(name, size, block_size, create)
        else:
            self.check_block_size(rep, block_size)
            rep.resize(size)
        rep.refs += 1
        return rep

    def check_block_size(self, rep: Replica, block_size: int) -> None:
        if rep.block_size != block_size:
            raise OpenRefused(
                f"volume {rep.name!r} exists with block size {rep.block_size}, not {block_size}"
            )

    def _open(self, name: str, size: int, block_size: int, create: bool) -> Replica:
        created = False
        try:
            store = self.pool.open_volume(name)
        except NotFoundError:
            if not create:
                raise
            store = self.pool.create_volume(name, size, block_size)
            created = True
        rep: Replica | None = None
        try:
            rep = Replica(self, name, store, self.state_dir)
            self.check_block_size(rep, block_size)
            rep.resize(size)
        except BaseException:
            if rep is not None:
                rep.close_files()
            store.close()
            raise
        self.open[name] = rep
        log.info(
            "event=replica_open pool=%s volume=%s uuid=%s size=%d block_size=%d created=%s "
            "high_seq=%d clean_seq=%d",
            self.pool_name,
            name,
            rep.uuid,
            store.num_blocks * store.block_size,
            store.block_size,
            str(created).lower(),
            rep.high_seq,
            rep.clean_seq,
        )
        return rep

    def release(self, rep: Replica) -> None:
        """Drop a reference; the last one flushes (in a worker thread) and closes."""
        if self.closed:
            return
        rep.refs -= 1
        if rep.refs > 0:
            return
        rep.request_flush(lambda _err: None)  # closed by the flush's completion

    def _close(self, rep: Replica) -> None:
        if (rep.refs > 0 and not self.closed) or self.open.get(rep.name) is not rep:
            return
        del self.open[rep.name]
        try:
            rep.store.close()
        except StoreError as exc:
            log.error(
                "event=close_failed pool=%s volume=%s error=%r", self.pool_name, rep.name, str(exc)
            )
        finally:
            rep.close_files()
        log.info("event=replica_closed pool=%s volume=%s", self.pool_name, rep.name)

    def destroy(self, name: str, force: bool) -> None:
        """Delete closed volume ``name``, its snapshots and its replication state (run in
        a worker thread; ``destroying`` keeps it from being opened meanwhile)."""
        uuid = next((v.uuid for v in self.pool.list_volumes() if v.name == name), None)
        self.pool.delete_volume(name, force=force)
        if uuid is not None:
            for suffix in (".meta.json", ".clean"):
                with contextlib.suppress(FileNotFoundError):
                    (self.state_dir / f"{uuid}{suffix}").unlink()
        log.info("event=replica_destroyed pool=%s volume=%s force=%s",
                 self.pool_name, name, str(force).lower())  # fmt: skip

    async def close_all(self) -> None:
        """Wait for flushes in progress, then flush and close every open replica."""
        self.closed = True
        while self._flushes:
            await asyncio.gather(*list(self._flushes), return_exceptions=True)
            await asyncio.sleep(0)  # let their completions run
        for rep in list(self.open.values()):
            self._close(rep)
