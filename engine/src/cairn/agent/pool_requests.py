"""What the agent asks pool servers directly, over the replication protocol: the
volumes a pool holds (INFO), and deleting a volume's data (DESTROY), which ``volume
delete`` and ``replica remove`` do once the target no longer uses a replica.

The agent talks to each pool server directly (the replication secret, when the node
has one, authenticates it), so a replica on another node needs no second agent.  A pool
that cannot be reached, or refuses, is reported with its reason: the operation itself
is done (the target no longer uses the replica), only its bytes are left behind, and
the operator sees where.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cairn.pool.client import PoolClient, PoolError
from cairn.pool.secret import SecretError, load_secret
from cairn.replication.wire import ProtocolError, Status

log = logging.getLogger("cairn.agent")

#: how long a replica still open (its target's connection closing) is waited for
OPEN_WAIT = 10.0


def _client(address: str, secret: bytes | None) -> PoolClient:
    host, _, port = address.rpartition(":")
    return PoolClient(host.strip("[]"), int(port), timeout=30, secret=secret, client="cairn-agent")


def _destroy(address: str, volume: str, force: bool, secret: bytes | None) -> None:
    with _client(address, secret) as c:
        c.destroy(volume, force=force)


def _info(address: str, secret: bytes | None, timeout: float = 30) -> dict[str, object]:
    c = _client(address, secret)
    c.timeout = timeout
    with c:
        return c.info()


def _volumes(address: str, secret: bytes | None) -> list[str]:
    return sorted(str(v) for v in _info(address, secret).get("volumes", []))  # type: ignore[attr-defined]


async def allocated(addresses: list[str], secret_file: Path | None) -> dict[str, dict[str, int]]:
    """For each pool server of ``addresses`` that answers within 2 s: the bytes its open
    volumes occupy, by volume name (the metrics' ``used``)."""
    try:
        secret = load_secret(secret_file) if secret_file is not None else None
    except SecretError:
        return {}

    async def one(address: str) -> dict[str, int] | None:
        try:
            info = await asyncio.to_thread(_info, address, secret, 2.0)
        except (PoolError, ProtocolError, OSError):
            return None
        got = info.get("allocated")
        return {str(k): int(v) for k, v in got.items()} if isinstance(got, dict) else None

    unique = sorted(set(addresses))
    said = await asyncio.gather(*(one(a) for a in unique))
    return {a: d for a, d in zip(unique, said, strict=True) if d is not None}


async def pool_volumes(address: str, secret_file: Path | None) -> list[str]:
    """The volumes whose replica is on the pool server at ``address``; ``RuntimeError``
    with the reason when it cannot say."""
    try:
        secret = load_secret(secret_file) if secret_file is not None else None
        return await asyncio.to_thread(_volumes, address, secret)
    except (SecretError, PoolError, ProtocolError, OSError) as e:
        raise RuntimeError(f"pool server {address}: {e}") from None


async def destroy_replica(
    address: str, volume: str, force: bool, secret_file: Path | None
) -> str | None:
    """Delete ``volume`` from the pool server at ``address``; None when done (or it was
    not there), else why not."""
    try:
        secret = load_secret(secret_file) if secret_file is not None else None
    except SecretError as e:
        return str(e)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OPEN_WAIT
    while True:
        try:
            await asyncio.to_thread(_destroy, address, volume, force, secret)
        except PoolError as e:
            if e.status == Status.NOT_FOUND:
                return None
            if e.status == Status.CONFLICT and "is open" in str(e) and loop.time() < deadline:
                await asyncio.sleep(0.2)  # the target's connection is still closing
                continue
            return str(e)
        except (OSError, ProtocolError) as e:
            return f"pool server {address}: {e}"
        log.info("event=replica_data_deleted volume=%s pool=%s", volume, address)
        return None


async def destroy_replicas(
    addresses: dict[str, str], volume: str, force: bool, secret_file: Path | None
) -> dict[str, str]:
    """Delete ``volume`` on every pool of ``addresses`` (replica -> pool address), at
    once; returns the replicas left behind with the reason."""
    names = list(addresses)
    said = await asyncio.gather(
        *(destroy_replica(addresses[r], volume, force, secret_file) for r in names)
    )
    left = {r: why for r, why in zip(names, said, strict=True) if why is not None}
    for r, why in left.items():
        log.warning("event=replica_data_left volume=%s replica=%s reason=%r", volume, r, why)
    return left
