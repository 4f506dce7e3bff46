"""``cairn target serve``: one volume, one iSCSI target, one process."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.daemon import parse_host_port, run_daemon
from cairn.iscsi.chap import ChapConfig, load_chap_file
from cairn.iscsi.targets import Acl, StaticDirectory, TargetSpec
from cairn.volume import LocalVolume

log = logging.getLogger("cairn.target")


class ServeError(Exception):
    """The target cannot start; the message tells the operator why."""


@dataclass
class ServeOptions:
    volume: str
    size: int
    data: Path | None
    portal: str
    iqn: str
    block_size: int = 512
    chap_secret_file: Path | None = None
    allow_initiator: list[str] = field(default_factory=list)
    store: str = "embedded"
    nop_interval: float = 5.0
    # replication (docs/replication.md): with replicas, ``data`` is not used
    replicas: list[str] = field(default_factory=list)
    consistency_factor: int | None = None
    state_dir: Path | None = None
    secret_file: Path | None = None
    hold_time: float = 20.0
    replica_timeout: float = 5.0
    status_listen: str | None = None
    rebuild_rate: int = 0
    rebuild_busy_rate: int = 64 << 20
    shared_memory: bool = True  # a ring for the pool servers on this machine
    local_socket: bool = True  # their local socket instead of TCP


def parse_portal(portal: str) -> tuple[str, int]:
    try:
        return parse_host_port(portal, "portal", "127.0.0.1:3260", listen=True)
    except ValueError as e:
        raise ServeError(str(e)) from None


def naa_from_uuid(u: uuidlib.UUID) -> bytes:
    """An 8-byte NAA locally assigned identifier (NAA 3) derived from the volume UUID."""
    return ((0x3 << 60) | (u.int & ((1 << 60) - 1))).to_bytes(8, "big")


def validate_iqn(iqn: str) -> str:
    iqn = iqn.strip().lower()
    if not iqn.startswith(("iqn.", "eui.", "naa.")) or len(iqn) > 223 or " " in iqn:
        raise ServeError(
            f"target name {iqn!r} must be an iqn./eui./naa. name of at most 223 characters"
        )
    return iqn


def open_device(opts: ServeOptions) -> tuple[LocalVolume, uuidlib.UUID]:
    """The block device the volume's LUN serves, and the volume's UUID."""
    from cairn.blockdev import StoreError
    from cairn.store import EmbeddedPool, NullStore
    from cairn.volume import MemorySeqSource, SeqAllocator

    if opts.store == "null":
        null = NullStore(opts.size, opts.block_size)
        null_uuid = uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"cairn-null:{opts.volume}")
        return LocalVolume(null, MemorySeqSource()), null_uuid
    if opts.data is None:
        raise ServeError("a volume without replicas needs --data")
    try:
        pool = EmbeddedPool(opts.data)
        store = pool.open_or_create(opts.volume, opts.size, opts.block_size)
        seqs = SeqAllocator(opts.data / f"{opts.volume}.seq", floor=store.high_seq)
    except StoreError as e:
        raise ServeError(str(e)) from e
    return LocalVolume(store, seqs), uuidlib.UUID(str(store.uuid))


def open_replicated(opts: ServeOptions) -> tuple[Any, uuidlib.UUID, list[Any]]:
    """The replicated volume over ``opts.replicas`` and a connector per replica (not
    started yet)."""
    from cairn.blockdev import StoreError
    from cairn.pool.secret import load_secret  # the same file format as the pool servers'
    from cairn.replication.ring import RingHost
    from cairn.replication.volume import ReplicatedVolume
    from cairn.target.replicas import Connector, TargetState, parse_address
    from cairn.volume import SeqAllocator

    if opts.state_dir is None:
        raise ServeError("a replicated volume needs --state-dir (sequence numbers, trust)")
    if opts.size % opts.block_size:
        raise ServeError(f"--size must be a multiple of the block size {opts.block_size}")
    try:
        for a in opts.replicas:
            parse_address(a)
        secret = load_secret(opts.secret_file) if opts.secret_file is not None else None
        state = TargetState(opts.state_dir, opts.volume)
        seqs = SeqAllocator(opts.state_dir / f"{opts.volume}.seq")
        device = ReplicatedVolume(
            opts.volume,
            opts.size,
            opts.block_size,
            opts.replicas,
            seqs,
            state,
            consistency_factor=opts.consistency_factor,
            hold_time=opts.hold_time,
            replica_timeout=opts.replica_timeout,
        )
    except (ValueError, StoreError) as e:
        raise ServeError(str(e)) from e
    from cairn.target.operations import SnapshotBook

    try:
        device.book = SnapshotBook(opts.state_dir, opts.volume)
    except ValueError as e:
        raise ServeError(str(e)) from e
    device.rebuild_rate = opts.rebuild_rate
    device.rebuild_busy_rate = opts.rebuild_busy_rate
    if opts.shared_memory:
        device.shared = RingHost()
    device.local_links = opts.local_socket
    connectors = [Connector(device, a, opts.size, opts.block_size, secret) for a in opts.replicas]
    return device, state.uuid, connectors


async def run(opts: ServeOptions) -> int:
    from cairn.scsi import LogicalUnit, ScsiTarget
    from cairn.target.portal import Portal

    host, port = parse_portal(opts.portal)
    iqn = validate_iqn(opts.iqn)
    chap: ChapConfig | None = None
    if opts.chap_secret_file is not None:
        try:
            chap = load_chap_file(opts.chap_secret_file)
        except (OSError, ValueError) as e:
            raise ServeError(f"CHAP secret file: {e}") from e
    try:
        acl = Acl.parse(opts.allow_initiator)
    except ValueError as e:
        raise ServeError(str(e)) from e

    connectors: list[Any] = []
    if opts.replicas:
        device, vol_uuid, connectors = open_replicated(opts)
    else:
        device, vol_uuid = open_device(opts)
    lu = LogicalUnit(device, serial=vol_uuid.hex[:16], naa=naa_from_uuid(vol_uuid), thin=True)
    scsi = ScsiTarget({0: lu})
    spec = TargetSpec(iqn=iqn, chap=chap, acl=acl, alias=opts.volume)
    directory = StaticDirectory(portal=f"{host}:{port}", specs={iqn: spec}, discovery_chap=chap)
    portal = Portal(directory, lambda _spec: scsi, nop_interval=opts.nop_interval)
    try:
        await portal.start(host, port)
    except OSError as e:
        if not connectors:  # a local store (a replicated volume holds nothing yet)
            device.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ticker = None
    status_server = None
    if connectors:
        for c in connectors:
            c.start()

        def tick() -> None:
            nonlocal ticker
            device.tick()
            ticker = loop.call_later(0.1, tick)

        ticker = loop.call_later(0.1, tick)
        if opts.status_listen:
            from cairn.target.api import start_status_server

            status_server = await start_status_server(
                opts.status_listen,
                device,
                connectors,
                lun=lu,
                sessions=portal.logged_in,
                fence=lambda reason: directory.fence(iqn, reason),
            )
    log.info(
        "event=serving volume=%s iqn=%s portal=%s:%d size=%d block_size=%d store=%s "
        "chap=%s acl_entries=%d",
        opts.volume,
        iqn,
        host,
        port,
        device.num_blocks * device.block_size,
        device.block_size,
        opts.store,
        "mutual" if chap and chap.mutual else ("one-way" if chap else "none"),
        len(opts.allow_initiator),
    )
    url_host = f"[{host}]" if ":" in host else host
    print(f"iscsi://{url_host}:{port}/{iqn}/0", flush=True)
    await stop.wait()
    log.info("event=stopping volume=%s", opts.volume)
    await portal.stop()
    if connectors:
        if ticker is not None:
            ticker.cancel()
        if status_server is not None:
            status_server.close()
        for c in connectors:
            await c.stop()
        shared = getattr(device, "shared", None)
        if shared is not None:
            shared.close()
    else:
        await loop.run_in_executor(None, device.flush)
        device.close()
    log.info("event=stopped volume=%s", opts.volume)
    return 0


def serve(opts: ServeOptions) -> int:
    return run_daemon(run(opts), ServeError)
