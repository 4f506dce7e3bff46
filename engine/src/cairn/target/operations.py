"""Snapshots, clones, rollback and online grow of a replicated volume, for the target's
HTTP API (``cairn.target.api``); docs/replication.md, "Snapshots, clones, rollback and
grow".

The point in time is the target's: ``cairn.replication.control`` holds writes behind a
barrier and sends the wire operations; this module waits for quorum (a bounded time),
keeps the **snapshot book** in the state directory and turns replies into HTTP answers.

The book (``<state-dir>/<volume>.snapshots.json``, replaced atomically) records each
snapshot, when it was taken and which replicas hold it, and the deletes still owed to
replicas that were offline when a snapshot was deleted: a replica gets those on its next
connection, after OPEN and before it is attached (so before it can vote again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cairn.blockdev import Pending
from cairn.replication import wire
from cairn.replication.control import OperationError, Rollback, Snapshot, reply_status
from cairn.replication.volume import HEALTHY, ReplicatedVolume
from cairn.replication.wire import Op, Status
from cairn.store._fs import atomic_write_json
from cairn.store.embedded import NAME_RE

log = logging.getLogger("cairn.target")

#: how long an operation waits for the volume to be in quorum before it is refused
QUORUM_WAIT = 10.0
#: how long the replicas may take to answer an operation
OPERATION_TIMEOUT = 60.0


class SnapshotBook:
    """The snapshots of one volume and the deletes owed to offline replicas."""

    def __init__(self, directory: Path, volume: str) -> None:
        self.path = directory / f"{volume}.snapshots.json"
        self.doc: dict[str, Any]
        try:
            self.doc = json.loads(self.path.read_text())
            if not isinstance(self.doc, dict) or self.doc.get("format") != 1:
                raise ValueError("unknown format")
        except FileNotFoundError:
            self.doc = {"format": 1, "volume": volume, "snapshots": {}, "deletes": {}}
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path}: cannot read the snapshot book: {e}") from e

    def _save(self) -> None:
        atomic_write_json(self.path, self.doc)

    @property
    def snapshots(self) -> dict[str, Any]:
        return self.doc["snapshots"]  # type: ignore[no-any-return]

    def get(self, name: str) -> dict[str, Any]:
        entry = self.snapshots.get(name)
        if entry is None:
            raise OperationError(404, f"no snapshot {name!r}")
        return entry  # type: ignore[no-any-return]

    def add(self, name: str, created: float, replicas: list[str]) -> None:
        self.snapshots[name] = {"created": created, "replicas": sorted(replicas)}
        self._save()

    def set_holders(self, name: str, replicas: list[str]) -> None:
        self.snapshots[name]["replicas"] = sorted(replicas)
        self._save()

    def remove(self, name: str, owed: list[str]) -> None:
        """Forget snapshot ``name``; the replicas in ``owed`` still have to delete it."""
        self.snapshots.pop(name, None)
        for address in owed:
            names = self.doc["deletes"].setdefault(address, [])
            if name not in names:
                names.append(name)
        self._save()

    def owed(self, address: str) -> list[str]:
        """The snapshots replica ``address`` has to delete before it votes again."""
        return list(self.doc["deletes"].get(address, []))

    def deleted(self, address: str, name: str) -> None:
        names = self.doc["deletes"].get(address, [])
        if name in names:
            names.remove(name)
            if not names:
                del self.doc["deletes"][address]
            self._save()

    def pending_on(self, name: str) -> list[str]:
        return sorted(a for a, names in self.doc["deletes"].items() if name in names)


async def settle(p: Pending, timeout: float) -> Any:
    """Wait for a ``Pending``; its value, or its error raised."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(_p: Pending) -> None:
        if not fut.done():
            fut.set_result(None)

    p.add_done_callback(done)
    await asyncio.wait_for(fut, timeout)
    if p.error is not None:
        raise p.error
    return p.value


class Operations:
    """The handlers behind the API's snapshot, clone, rollback and resize endpoints."""

    def __init__(
        self,
        volume: ReplicatedVolume,
        book: SnapshotBook,
        connectors: list[Any],
        lun: Any = None,
        sessions: Callable[[], list[str]] | None = None,
        fence: Callable[[str | None], None] | None = None,
    ) -> None:
        self.volume = volume
        #: ``fence(reason)`` refuses new logins with the reason; ``fence(None)`` ends it
        self.fence = fence or (lambda _reason: None)
        self.book = book
        self.connectors = connectors
        self.lun = lun
        self.sessions = sessions or (lambda: [])
        self.quorum_wait = QUORUM_WAIT
        self.timeout = OPERATION_TIMEOUT
        self.lock = asyncio.Lock()  # one operation at a time

    # -- helpers -------------------------------------------------------------------
    async def _quorum(self) -> None:
        v = self.volume
        deadline = time.monotonic() + self.quorum_wait
        while not v.writable and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if not v.writable:
            raise OperationError(
                409, f"not in quorum after {self.quorum_wait:g} s: {v.why_not_writable()}"
            )

    async def _each(self, addresses: list[str], parts: Callable[[int], list[Any]]) -> Any:
        replicas = [r for a in addresses if (r := self.volume.replica(a)) is not None]
        try:
            return await settle(self.volume.call_each(replicas, parts), self.timeout)
        except TimeoutError:
            raise OperationError(409, "the replicas did not answer in time") from None

    @staticmethod
    def _name(body: dict[str, Any], key: str, what: str) -> str:
        name = body.get(key)
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise OperationError(
                400,
                f'the body needs "{key}": a {what} name of 1-128 letters, digits and '
                ". _ : + - (not starting with a punctuation mark)",
            )
        return name

    def _connected(self, addresses: list[str]) -> list[str]:
        return [a for a in addresses if (r := self.volume.replica(a)) and r.link is not None]

    # -- snapshots -----------------------------------------------------------------
    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = self._name(body, "name", "snapshot")
        async with self.lock:
            if name in self.book.snapshots:
                raise OperationError(409, f"snapshot {name!r} exists")
            owed = self.book.pending_on(name)
            if owed:
                raise OperationError(
                    409,
                    f"snapshot {name!r} was deleted and {', '.join(owed)} still hold it "
                    "(offline): use another name",
                )
            await self._quorum()
            op = Snapshot(self.volume, name)
            try:
                took = await settle(op.pending, self.timeout)
            except TimeoutError:
                op.cancel("timed out")
                raise OperationError(
                    409, f"snapshot {name!r}: the replicas did not answer"
                ) from None
            except OperationError:
                partial = sorted(op.took)
                if partial:  # best effort: do not leave a snapshot on a minority
                    payload = wire.json_payload({"name": name})
                    self.volume.call_each(
                        [r for a in partial if (r := self.volume.replica(a))],
                        lambda tag: wire.encode(Op.SNAPSHOT_DELETE, tag=tag, data=payload),
                    )
                raise
            created = time.time()
            self.book.add(name, created, sorted(took))
        log.info("event=snapshot volume=%s snapshot=%s replicas=%s",
                 self.volume.name, name, ",".join(sorted(took)))  # fmt: skip
        return {"name": name, "created": created, "replicas": sorted(took)}

    async def listing(self) -> dict[str, Any]:
        book = self.book.snapshots
        figures: dict[str, dict[str, Any]] = {}
        connected = self._connected([r.address for r in self.volume.replicas])
        replies = await self._each(connected, lambda tag: wire.encode(Op.SNAPSHOT_LIST, tag=tag))
        for address, msg in replies.items():
            if msg is None or msg.status != Status.OK:
                continue
            for s in wire.parse_json(msg.data).get("snapshots", []):
                if s.get("name") in book:
                    figures.setdefault(s["name"], {})[address] = s
        out = []
        for name, entry in sorted(book.items(), key=lambda kv: kv[1]["created"]):
            per = figures.get(name, {})
            out.append(
                {
                    "name": name,
                    "created": entry["created"],
                    "replicas": entry["replicas"],
                    "size": max((s["size"] for s in per.values()), default=None),
                    "used": max((s["used"] for s in per.values()), default=None),
                    "unique": max((s["unique"] for s in per.values()), default=None),
                    "reported_by": sorted(per),
                }
            )
        return {"snapshots": out}

    async def delete(self, name: str) -> dict[str, Any]:
        async with self.lock:
            entry = self.book.get(name)
            holders = [a for a in entry["replicas"] if self.volume.replica(a) is not None]
            payload = wire.json_payload({"name": name})
            replies = await self._each(
                self._connected(holders),
                lambda tag: wire.encode(Op.SNAPSHOT_DELETE, tag=tag, data=payload),
            )
            gone: list[str] = []
            conflicts: list[str] = []
            for address, msg in replies.items():
                if msg is None:
                    continue
                if msg.status in (Status.OK, Status.NOT_FOUND):
                    gone.append(address)
                elif msg.status == Status.CONFLICT:
                    conflicts.append(wire.error_text(msg))
                else:
                    log.warning("event=snapshot_delete_failed volume=%s snapshot=%s "
                                "replica=%s error=%r", self.volume.name, name, address,
                                wire.error_text(msg))  # fmt: skip
            rest = [a for a in holders if a not in gone]
            if conflicts:
                self.book.set_holders(name, rest)
                raise OperationError(409, conflicts[0])
            self.book.remove(name, rest)
        log.info("event=snapshot_deleted volume=%s snapshot=%s owed=%s",
                 self.volume.name, name, ",".join(rest) or "-")  # fmt: skip
        return {"deleted": name, "replicas": sorted(gone), "pending": rest}

    # -- clones --------------------------------------------------------------------
    async def clone(self, body: dict[str, Any]) -> dict[str, Any]:
        snap = self._name(body, "snapshot", "snapshot")
        name = self._name(body, "name", "volume")
        if name == self.volume.name:
            raise OperationError(409, f"volume {name!r} exists: it is this volume")
        async with self.lock:
            entry = self.book.get(snap)
            holders = self._connected(entry["replicas"])
            if not holders:
                raise OperationError(409, f"no replica that holds snapshot {snap!r} is connected")
            payload = wire.json_payload({"snapshot": snap, "name": name})
            replies = await self._each(
                holders, lambda tag: wire.encode(Op.CLONE, tag=tag, data=payload)
            )
        made: list[str] = []
        errors: list[tuple[int, str]] = []
        size = None
        for address, msg in replies.items():
            if msg is not None and msg.status == Status.OK:
                made.append(address)
                size = wire.parse_json(msg.data).get("size", size)
            elif msg is None:
                errors.append((409, f"{address}: connection lost"))
            else:
                errors.append((reply_status(msg), f"{address}: {wire.error_text(msg)}"))
        if not made:
            raise OperationError(errors[0][0], "; ".join(e for _, e in errors))
        log.info("event=clone volume=%s snapshot=%s clone=%s replicas=%s",
                 self.volume.name, snap, name, ",".join(sorted(made)))  # fmt: skip
        doc: dict[str, Any] = {"name": name, "snapshot": snap, "size": size,
                               "replicas": sorted(made)}  # fmt: skip
        if errors:
            doc["errors"] = [e for _, e in errors]
        return doc

    # -- rollback ------------------------------------------------------------------
    async def rollback(self, body: dict[str, Any]) -> dict[str, Any]:
        snap = self._name(body, "snapshot", "snapshot")
        async with self.lock:
            entry = self.book.get(snap)
            # no new login from here on (fenced first, so none slips in between the
            # check and the rollback), none logged in now
            self.fence(f"a rollback to snapshot {snap!r} is in progress")
            try:
                logged_in = self.sessions()
                if logged_in:
                    raise OperationError(
                        409, "initiators are logged in: " + ", ".join(sorted(set(logged_in)))
                    )
                await self._quorum()
                op = Rollback(self.volume, snap, set(entry["replicas"]))
                try:
                    result = await settle(op.pending, self.timeout)
                except TimeoutError:
                    op.cancel("timed out")
                    raise OperationError(
                        409, f"rollback to {snap!r}: the replicas did not answer"
                    ) from None
            finally:
                self.fence(None)
        log.info("event=rollback volume=%s snapshot=%s seq=%d replicas=%s degraded=%s",
                 self.volume.name, snap, result["seq"], ",".join(result["replicas"]),
                 ",".join(result["degraded"]) or "-")  # fmt: skip
        return {"snapshot": snap, **result}

    # -- grow ----------------------------------------------------------------------
    async def resize(self, body: dict[str, Any]) -> dict[str, Any]:
        v = self.volume
        size = body.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise OperationError(400, 'the body needs "size": the new size in bytes')
        old = v.num_blocks * v.block_size
        if size % v.block_size:
            raise OperationError(400, f"size {size} is not a multiple of {v.block_size}")
        if size < old:
            raise OperationError(400, f"shrinking from {old} to {size} bytes is not supported")
        if size == old:
            return {"size": size, "changed": False}
        async with self.lock:
            await self._quorum()
            sizes = [c.size for c in self.connectors]
            for c in self.connectors:
                c.size = size  # a replica that connects later grows in its OPEN
            connected = self._connected([r.address for r in v.replicas])
            replies = await self._each(
                connected, lambda tag: wire.encode(Op.RESIZE, tag=tag, offset=size)
            )
            grown = [a for a, m in replies.items() if m is not None and m.status == Status.OK]
            errors = [
                f"{a}: {wire.error_text(m) if m is not None else 'connection lost'}"
                for a, m in replies.items()
                if a not in grown
            ]
            voters = [a for a in grown if (r := v.replica(a)) and r.state == HEALTHY]
            if len(voters) < v.cf:
                for c, s in zip(self.connectors, sizes, strict=True):
                    c.size = s
                raise OperationError(
                    409,
                    f"grown on {len(voters)} healthy replicas, {v.cf} needed: " + "; ".join(errors),
                )
            for a in connected:
                r = v.replica(a)
                if a not in grown and r is not None:
                    v.degrade(r, f"could not grow to {size} bytes")
            v.resize(size)
            if self.lun is not None:
                self.lun.capacity_changed()
        log.info("event=resized volume=%s size=%d replicas=%s",
                 v.name, size, ",".join(sorted(grown)))  # fmt: skip
        return {"size": size, "changed": True, "replicas": sorted(grown)}


async def settle_owed(link: Any, book: SnapshotBook | None, address: str) -> None:
    """Deliver the snapshot deletes owed to replica ``address`` over its new connection
    (during the handshake, before the replica is attached)."""
    if book is None:
        return
    for name in book.owed(address):
        reply = await link.request(Op.SNAPSHOT_DELETE, {"name": name})
        if reply.status in (Status.OK, Status.NOT_FOUND):
            book.deleted(address, name)
            log.info("event=snapshot_delete_delivered replica=%s snapshot=%s", address, name)
        else:
            log.warning("event=snapshot_delete_refused replica=%s snapshot=%s error=%r",
                        address, name, wire.error_text(reply))  # fmt: skip
