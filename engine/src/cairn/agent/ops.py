"""The operations of the node agent: validate, change the desired state, act on the
children and on peer agents.  One method per operation; no HTTP routing here (api.py).

Every failure is an ``OpError`` carrying the HTTP status the API answers with: 400 bad
input, 404 no such thing, 409 conflict with the current state, 503 not reachable now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import aiohttp

from cairn.agent.client import ApiError, peer_request, ssl_context, target_request
from cairn.agent.config import NAME_RE, NodeConfig
from cairn.agent.pool_requests import destroy_replicas, pool_volumes
from cairn.agent.state import DesiredState
from cairn.agent.supervisor import ChildSpec, Supervisor
from cairn.daemon import parse_host_port
from cairn.units import parse_size

log = logging.getLogger("cairn.agent")

POOL_PORT = 3232
PORTAL_PORT = 3260
READY_TIMEOUT = 30.0
IQN_PREFIX = "iqn.2026-11.io.cairn"


class OpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _name(body: dict[str, Any], key: str = "name") -> str:
    name = body.get(key)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise OpError(400, f"{key}: letters, digits, '.', '_' or '-', at most 63 characters")
    return name


def _size(value: Any, key: str = "size") -> int:
    if isinstance(value, bool):
        raise OpError(400, f"{key}: a number of bytes or a string such as '10G'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        try:
            size = parse_size(value)
        except ValueError as e:
            raise OpError(400, f"{key}: {e}") from None
    else:
        raise OpError(400, f"{key}: a number of bytes or a string such as '10G'")
    if size <= 0:
        raise OpError(400, f"{key}: must be positive")
    return size


def _confirm(body: dict[str, Any], name: str, what: str) -> None:
    if body.get("confirm") != name:
        raise OpError(400, f'this destroys {what}: send {{"confirm": "{name}"}} to do it')


def _host_port(text: Any, key: str) -> tuple[str, int]:
    if not isinstance(text, str):
        raise OpError(400, f"{key}: HOST:PORT")
    try:
        return parse_host_port(text, key, "10.0.0.1:3260")
    except ValueError as e:
        raise OpError(400, str(e)) from None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _tcp_open(host: str, port: int) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()
    return True


def parse_replica(text: Any) -> tuple[str, str]:
    if not isinstance(text, str) or text.count("/") != 1:
        raise OpError(400, f"replica {text!r} must be NODE/POOL")
    node, pool = text.split("/")
    if not NAME_RE.match(node) or not NAME_RE.match(pool):
        raise OpError(400, f"replica {text!r} must be NODE/POOL")
    return node, pool


class Agent:
    """The node's desired state, its children and its peers."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.state = DesiredState.load(config.state_dir)
        self.supervisor = Supervisor(config.state_dir)
        self.lock = asyncio.Lock()
        self.session: aiohttp.ClientSession | None = None

    # -- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Stop what a previous agent left running, then start every pool, then every
        volume, from the desired state."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=ssl_context(self.config.ca_file) if self.config.ca_file else True
            )
        )
        await self.supervisor.stop_stale()
        for name, pool in self.state.pools.items():
            self.supervisor.start(self._pool_spec(name, pool))
        await self._wait_ready([f"pool-{n}" for n in self.state.pools])
        for name, vol in self.state.volumes.items():
            self.supervisor.start(self._volume_spec(name, vol))
        await self._wait_ready([f"volume-{n}" for n in self.state.volumes])

    async def _wait_ready(self, names: list[str]) -> None:
        await asyncio.gather(*(self.supervisor.wait_ready(n, READY_TIMEOUT) for n in names))

    async def stop(self) -> None:
        await self.supervisor.stop_all()
        if self.session is not None:
            await self.session.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None, "the agent is not started"
        return self.session

    # -- children --------------------------------------------------------------------

    def pool_address(self, pool: dict[str, Any]) -> str:
        """Where targets reach the pool server: its listen address, with this node's
        address in place of a wildcard."""
        host, port = parse_host_port(pool["listen"], "listen", "", listen=True)
        if host in ("0.0.0.0", "::"):
            host = self.config.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _pool_spec(self, name: str, pool: dict[str, Any]) -> ChildSpec:
        argv = ["pool", "serve", "--name", name, "--listen", pool["listen"]]
        if pool["backend"] == "zfs":
            argv += ["--backend", "zfs", "--zpool", pool["zpool"]]
        else:
            argv += ["--path", pool["path"]]
        if self.config.secret_file is not None:
            argv += ["--secret-file", str(self.config.secret_file)]
        host, port = parse_host_port(self.pool_address(pool), "listen", "")

        async def probe() -> bool:
            return await _tcp_open(host, port)

        return ChildSpec(f"pool-{name}", "pool", argv, probe)

    def volume_dir(self, name: str) -> Path:
        return self.config.state_dir / "volumes" / name

    def _volume_argv(self, name: str, vol: dict[str, Any]) -> list[str]:
        argv = [
            "target", "serve", "--volume", name, "--size", str(vol["size"]),
            "--portal", vol["portal"], "--iqn", vol["iqn"],
            "--block-size", str(vol["block_size"]),
            "--state-dir", str(self.volume_dir(name)),
            "--status-listen", f"127.0.0.1:{vol['status_port']}",
        ]  # fmt: skip
        for r in vol["replicas"]:
            argv += ["--replica", vol["addresses"][r]]
        if vol.get("consistency_factor") is not None:
            argv += ["--consistency-factor", str(vol["consistency_factor"])]
        for key in ("hold_time", "replica_timeout"):
            if vol.get(key) is not None:
                argv += ["--" + key.replace("_", "-"), str(vol[key])]
        if self.config.secret_file is not None:
            argv += ["--secret-file", str(self.config.secret_file)]
        if vol.get("chap"):
            argv += ["--chap-secret-file", str(self.volume_dir(name) / "chap.conf")]
        for entry in vol.get("acl") or []:
            argv += ["--allow-initiator", entry]
        return argv

    def _volume_spec(self, name: str, vol: dict[str, Any]) -> ChildSpec:
        port = int(vol["status_port"])
        self.volume_dir(name).mkdir(parents=True, exist_ok=True)
        if vol.get("chap"):
            self._write_chap(name, vol["chap"])

        async def probe() -> bool:
            try:
                status, _ = await target_request(self.http, port, "GET", "/status", timeout=2)
            except ApiError:
                return False
            return status == 200

        return ChildSpec(f"volume-{name}", "volume", self._volume_argv(name, vol), probe)

    def _write_chap(self, name: str, chap: dict[str, Any]) -> None:
        lines = [f"username={chap['username']}", f"secret={chap['secret']}"]
        if chap.get("target_username"):
            lines += [
                f"target_username={chap['target_username']}",
                f"target_secret={chap['target_secret']}",
            ]
        path = self.volume_dir(name) / "chap.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")

    def child_info(self, name: str) -> dict[str, Any] | None:
        child = self.supervisor.children.get(name)
        return child.info() if child is not None else None

    # -- pools -----------------------------------------------------------------------

    def pool_doc(self, name: str) -> dict[str, Any]:
        pool = self.state.pools[name]
        doc: dict[str, Any] = {
            "name": name,
            "node": self.config.name,
            "backend": pool["backend"],
            "listen": pool["listen"],
            "address": self.pool_address(pool),
            "process": self.child_info(f"pool-{name}"),
        }
        if pool["backend"] == "zfs":
            doc["zpool"] = pool["zpool"]
        else:
            doc["path"] = pool["path"]
            doc["capacity"] = pool_capacity(pool)
        return doc

    def list_pools(self) -> list[dict[str, Any]]:
        return [self.pool_doc(n) for n in sorted(self.state.pools)]

    async def show_pool(self, name: str) -> dict[str, Any]:
        """One pool, with the volumes that have a replica on it (asked of its server)."""
        if name not in self.state.pools:
            raise OpError(404, f"no pool {name!r} on node {self.config.name}")
        doc = self.pool_doc(name)
        try:
            doc["volumes"] = await pool_volumes(doc["address"], self.config.secret_file)
        except RuntimeError as e:
            doc["volumes"], doc["volumes_error"] = None, str(e)
        return doc

    async def create_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _name(body)
        backend = body.get("backend", "embedded")
        if backend not in ("embedded", "zfs"):
            raise OpError(400, "backend: 'embedded' or 'zfs'")
        unknown = set(body) - {"name", "backend", "path", "zpool", "listen"}
        if unknown:
            raise OpError(400, f"{sorted(unknown)[0]}: unknown field")
        async with self.lock:
            if name in self.state.pools:
                raise OpError(409, f"pool {name!r} exists")
            pool: dict[str, Any] = {"backend": backend}
            if backend == "zfs":
                if not isinstance(body.get("zpool"), str) or not body["zpool"]:
                    raise OpError(400, "zpool: required with backend zfs")
                pool["zpool"] = body["zpool"]
            else:
                path = body.get("path") or str(self.config.state_dir / "pools" / name)
                if not isinstance(path, str) or not os.path.isabs(path):
                    raise OpError(400, "path: an absolute directory")
                if any(p.get("path") == path for p in self.state.pools.values()):
                    raise OpError(409, f"path: another pool uses {path}")
                pool["path"] = path
            used = {self.pool_address(p) for p in self.state.pools.values()}
            if body.get("listen") is not None:
                host, port = _host_port(body["listen"], "listen")
                pool["listen"] = body["listen"]
                if self.pool_address(pool) in used:
                    raise OpError(409, f"listen: another pool listens on {body['listen']}")
            else:
                port = POOL_PORT
                while f"{self.config.address}:{port}" in used:
                    port += 1
                pool["listen"] = f"{self.config.address}:{port}"
            new = self.state.snapshot()
            new["pools"][name] = pool
            self.state.commit(new)
            self.supervisor.start(self._pool_spec(name, pool))
            await self.supervisor.wait_ready(f"pool-{name}", READY_TIMEOUT)
            return self.pool_doc(name)

    async def delete_pool(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.lock:
            if name not in self.state.pools:
                raise OpError(404, f"no pool {name!r} on node {self.config.name}")
            _confirm(body, name, f"the pool {name!r} (its server stops; data stays on disk)")
            force = body.get("force") is True
            users = await self._pool_users(f"{self.config.name}/{name}", force)
            if users and not force:
                raise OpError(
                    409,
                    f"pool {name!r} holds replicas of {', '.join(users)}: move them first, "
                    'or send "force": true',
                )
            await self.supervisor.stop(f"pool-{name}")
            new = self.state.snapshot()
            del new["pools"][name]
            self.state.commit(new)
            return {"deleted": name, "volumes_affected": users}

    async def _pool_users(self, replica: str, force: bool) -> list[str]:
        users = [v for v, vol in self.state.volumes.items() if replica in vol["replicas"]]
        for peer, url in self.config.peers.items():
            try:
                vols = await peer_request(self.http, url, self.config.token(), "GET", "/v1/volumes")
            except ApiError as e:
                if force:
                    continue
                raise OpError(503, f"cannot ask {peer} whether it uses {replica}: {e}") from e
            users += [f"{peer}:{v['name']}" for v in vols if replica in v.get("replicas", [])]
        return users

    # -- volumes ---------------------------------------------------------------------

    async def _resolve(self, replica: str) -> str:
        """The pool server address of ``NODE/POOL``."""
        node, pool = parse_replica(replica)
        if node == self.config.name:
            if pool not in self.state.pools:
                raise OpError(404, f"no pool {pool!r} on node {node} (replica {replica})")
            return self.pool_address(self.state.pools[pool])
        url = self.config.peers.get(node)
        if url is None:
            raise OpError(404, f"unknown node {node!r} (replica {replica}): not in peers")
        try:
            pools = await peer_request(self.http, url, self.config.token(), "GET", "/v1/pools")
        except ApiError as e:
            raise OpError(503, f"cannot resolve {replica}: {e.message}") from e
        for p in pools:
            if p.get("name") == pool:
                return str(p["address"])
        raise OpError(404, f"no pool {pool!r} on node {node} (replica {replica})")

    def volume_doc(self, name: str) -> dict[str, Any]:
        vol = self.state.volumes[name]
        doc = {
            "name": name,
            "node": self.config.name,
            "size": vol["size"],
            "block_size": vol["block_size"],
            "portal": vol["portal"],
            "iqn": vol["iqn"],
            "replicas": list(vol["replicas"]),
            "addresses": dict(vol["addresses"]),
            "consistency_factor": vol.get("consistency_factor"),
            "chap": {"username": vol["chap"]["username"]} if vol.get("chap") else None,
            "acl": list(vol.get("acl") or []),
            "status_port": vol["status_port"],
            "process": self.child_info(f"volume-{name}"),
        }
        if vol.get("origin"):
            doc["origin"] = vol["origin"]
        if vol.get("allow_same_node"):
            doc["allow_same_node"] = True
        return doc

    def _volume(self, name: str) -> dict[str, Any]:
        if name not in self.state.volumes:
            raise OpError(404, f"no volume {name!r} on node {self.config.name}")
        return self.state.volumes[name]

    def list_volumes(self) -> list[dict[str, Any]]:
        return [self.volume_doc(n) for n in sorted(self.state.volumes)]

    async def show_volume(self, name: str) -> dict[str, Any]:
        vol = self._volume(name)
        doc = self.volume_doc(name)
        try:
            status, st = await target_request(
                self.http, vol["status_port"], "GET", "/status", timeout=5
            )
            doc["status"] = st if status == 200 else None
            doc["status_error"] = None if status == 200 else st.get("error")
        except ApiError as e:
            doc["status"], doc["status_error"] = None, e.message
        return doc

    async def volume_status(self, name: str) -> dict[str, Any]:
        return await self._target(name, "GET", "/status")

    def _check_nodes(self, replicas: list[str], same_node: bool = False) -> None:
        """Each replica on a different node, unless the volume allows them on one
        (``allow_same_node``: one-machine setups such as ``cairn up``)."""
        if same_node:
            return
        nodes = [parse_replica(r)[0] for r in replicas]
        for n in set(nodes):
            if nodes.count(n) > 1:
                raise OpError(
                    400, f"replicas: two replicas on node {n} ({', '.join(replicas)}); "
                    "each replica must be on a different node",
                )  # fmt: skip

    async def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _name(body)
        allowed = {
            "name", "size", "replicas", "block_size", "portal", "iqn", "consistency_factor",
            "chap", "acl", "hold_time", "replica_timeout", "allow_same_node",
        }  # fmt: skip
        unknown = set(body) - allowed
        if unknown:
            raise OpError(400, f"{sorted(unknown)[0]}: unknown field")
        size = _size(body.get("size"))
        block_size = body.get("block_size", 512)
        if block_size not in (512, 4096):
            raise OpError(400, "block_size: 512 or 4096")
        if size % block_size:
            raise OpError(400, f"size: must be a multiple of the block size {block_size}")
        replicas = body.get("replicas")
        if not isinstance(replicas, list) or not replicas:
            raise OpError(400, "replicas: a non-empty list of NODE/POOL")
        for r in replicas:
            parse_replica(r)
        same_node = body.get("allow_same_node", False)
        if not isinstance(same_node, bool):
            raise OpError(400, "allow_same_node: true or false")
        self._check_nodes(replicas, same_node)
        if len(set(replicas)) != len(replicas):
            raise OpError(400, f"replicas: {', '.join(replicas)} names a pool twice")
        cf = body.get("consistency_factor")
        if cf is not None and (
            not isinstance(cf, int) or isinstance(cf, bool) or not 1 <= cf <= len(replicas)
        ):
            raise OpError(400, f"consistency_factor: an integer from 1 to {len(replicas)}")
        chap = body.get("chap")
        if chap is not None:
            chap = _chap(chap)
        acl = body.get("acl") or []
        if not isinstance(acl, list) or not all(isinstance(a, str) and a for a in acl):
            raise OpError(400, "acl: a list of initiator names (iqn....) or networks (CIDR)")
        iqn = body.get("iqn") or f"{IQN_PREFIX}:{name}"
        if not isinstance(iqn, str) or not iqn.startswith(("iqn.", "eui.", "naa.")):
            raise OpError(400, "iqn: an iqn./eui./naa. name")
        extra = {}
        for key in ("hold_time", "replica_timeout"):
            v = body.get(key)
            if v is not None:
                if not isinstance(v, int | float) or isinstance(v, bool) or v <= 0:
                    raise OpError(400, f"{key}: a positive number of seconds")
                extra[key] = v
        if same_node:
            extra["allow_same_node"] = True
        async with self.lock:
            if name in self.state.volumes:
                raise OpError(409, f"volume {name!r} exists")
            portal = self._portal(body.get("portal"))
            addresses = {r: await self._resolve(r) for r in replicas}
            vol = {
                "size": size, "block_size": block_size, "portal": portal, "iqn": iqn,
                "replicas": list(replicas), "addresses": addresses,
                "consistency_factor": cf, "chap": chap, "acl": acl,
                "status_port": _free_port(), **extra,
            }  # fmt: skip
            return await self._add_volume(name, vol)

    def _portal(self, portal: Any) -> str:
        used = {v["portal"] for v in self.state.volumes.values()}
        if portal is not None:
            _host_port(portal, "portal")
            if portal in used:
                raise OpError(409, f"portal: another volume serves {portal}")
            return str(portal)
        port = PORTAL_PORT
        while f"{self.config.address}:{port}" in used:
            port += 1
        return f"{self.config.address}:{port}"

    async def _add_volume(self, name: str, vol: dict[str, Any]) -> dict[str, Any]:
        new = self.state.snapshot()
        new["volumes"][name] = vol
        self.state.commit(new)
        self.supervisor.start(self._volume_spec(name, vol))
        await self.supervisor.wait_ready(f"volume-{name}", READY_TIMEOUT)
        return self.volume_doc(name)

    async def delete_volume(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Stop the target, forget the volume, delete its data on every pool.  Refused
        while clones depend on it unless ``force`` (the data the clones need stays)."""
        unknown = set(body) - {"confirm", "force"}
        if unknown:
            raise OpError(400, f"{sorted(unknown)[0]}: unknown field")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise OpError(400, "force: true or false")
        async with self.lock:
            vol = self._volume(name)
            _confirm(body, name, f"the volume {name!r} and its data on every replica")
            clones = sorted(
                c for c, v in self.state.volumes.items()
                if (v.get("origin") or {}).get("volume") == name
            )  # fmt: skip
            if clones and not force:
                raise OpError(
                    409,
                    f"volume {name!r} has clones {', '.join(clones)} that depend on its "
                    'snapshots: delete them first, or send "force": true (the data they '
                    "need stays on the pools)",
                )
            await self.supervisor.stop(f"volume-{name}")
            new = self.state.snapshot()
            del new["volumes"][name]
            self.state.commit(new)
            shutil.rmtree(self.volume_dir(name), ignore_errors=True)
            left = await destroy_replicas(vol["addresses"], name, force, self.config.secret_file)
            return {"deleted": name, "replicas": vol["replicas"], "left": left}

    async def resize_volume(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"size"}
        if unknown:
            raise OpError(400, f"{sorted(unknown)[0]}: unknown field (only size changes)")
        size = _size(body.get("size"))
        async with self.lock:
            vol = self._volume(name)
            if size < vol["size"]:
                raise OpError(400, f"size: {size} is below {vol['size']}: a volume never shrinks")
            if size % vol["block_size"]:
                raise OpError(400, f"size: must be a multiple of {vol['block_size']}")
            if size > vol["size"]:
                await self._target(name, "POST", "/resize", {"size": size})
                new = self.state.snapshot()
                new["volumes"][name]["size"] = size
                self.state.commit(new)
                self.supervisor.set_argv(
                    f"volume-{name}", self._volume_argv(name, new["volumes"][name])
                )
            return self.volume_doc(name)

    async def add_replica(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        replica = body.get("pool")
        parse_replica(replica)
        assert isinstance(replica, str)
        async with self.lock:
            vol = self._volume(name)
            if replica in vol["replicas"]:
                raise OpError(409, f"{replica} is already a replica of {name}")
            self._check_nodes([*vol["replicas"], replica], vol.get("allow_same_node", False))
            address = await self._resolve(replica)
            await self._target(name, "POST", "/replicas", {"add": address})
            new = self.state.snapshot()
            v = new["volumes"][name]
            v["replicas"].append(replica)
            v["addresses"][replica] = address
            self.state.commit(new)
            self.supervisor.set_argv(f"volume-{name}", self._volume_argv(name, v))
            return self.volume_doc(name)

    async def remove_replica(self, name: str, replica: str) -> dict[str, Any]:
        async with self.lock:
            vol = self._volume(name)
            if replica not in vol["replicas"]:
                raise OpError(404, f"{replica} is not a replica of {name}")
            if len(vol["replicas"]) == 1:
                raise OpError(409, f"{replica} is the last replica of {name}")
            address = vol["addresses"][replica]
            await self._target(name, "POST", "/replicas", {"remove": address})
            new = self.state.snapshot()
            v = new["volumes"][name]
            v["replicas"].remove(replica)
            del v["addresses"][replica]
            self.state.commit(new)
            self.supervisor.set_argv(f"volume-{name}", self._volume_argv(name, v))
            # forced: a clone on that pool keeps what it needs of the replica's snapshots
            left = await destroy_replicas({replica: address}, name, True, self.config.secret_file)
            return {**self.volume_doc(name), "left": left}

    # -- snapshots, clones, rollback (the target owns the point in time) ---------------

    async def _target(self, name: str, method: str, path: str, body: Any = None) -> Any:
        vol = self._volume(name)
        try:
            status, doc = await target_request(self.http, vol["status_port"], method, path, body)
        except ApiError as e:
            raise OpError(503, f"target of volume {name}: {e.message}") from e
        if status >= 400:
            err = doc.get("error") if isinstance(doc, dict) else None
            code = status if status in (400, 404, 409, 503) else 500
            raise OpError(code, f"target of volume {name}: {err or doc}")
        return doc

    async def list_snapshots(self, name: str) -> Any:
        return await self._target(name, "GET", "/snapshots")

    async def create_snapshot(self, name: str, body: dict[str, Any]) -> Any:
        snap = _name(body)
        return await self._target(name, "POST", "/snapshots", {"name": snap})

    async def delete_snapshot(self, name: str, snap: str, body: dict[str, Any]) -> Any:
        self._volume(name)
        _confirm(body, snap, f"the snapshot {snap!r} of {name}")
        return await self._target(name, "DELETE", f"/snapshots/{snap}")

    async def rollback(self, name: str, body: dict[str, Any]) -> Any:
        self._volume(name)
        snap = _name(body, "snapshot")
        _confirm(body, name, f"every write to {name!r} since the snapshot {snap!r}")
        return await self._target(name, "POST", "/rollback", {"snapshot": snap})

    async def clone(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A new volume from a snapshot: the target makes the clones on the replicas that
        hold the snapshot; this agent then serves the clone with its own target."""
        clone = _name(body)
        snap = _name(body, "snapshot")
        async with self.lock:
            src = self._volume(name)
            if clone in self.state.volumes:
                raise OpError(409, f"volume {clone!r} exists")
            portal = self._portal(body.get("portal"))
            doc = await self._target(name, "POST", "/clones", {"snapshot": snap, "name": clone})
            by_address = {a: r for r, a in src["addresses"].items()}
            addresses = {}
            for a in doc.get("replicas", []):
                addresses[by_address.get(a, a)] = a
            if not addresses:
                raise OpError(500, f"target of volume {name}: the clone has no replicas")
            vol = {
                "size": int(doc.get("size") or src["size"]),
                "block_size": src["block_size"], "portal": portal,
                "iqn": body.get("iqn") or f"{IQN_PREFIX}:{clone}",
                "replicas": list(addresses), "addresses": addresses,
                "consistency_factor": None, "chap": src.get("chap"), "acl": src.get("acl", []),
                "status_port": _free_port(), "origin": {"volume": name, "snapshot": snap},
            }  # fmt: skip
            for key in ("hold_time", "replica_timeout", "allow_same_node"):
                if src.get(key) is not None:
                    vol[key] = src[key]
            return await self._add_volume(clone, vol)


def _chap(chap: Any) -> dict[str, Any]:
    if not isinstance(chap, dict):
        raise OpError(400, "chap: {username, secret[, target_username, target_secret]}")
    out = {}
    for key in ("username", "secret", "target_username", "target_secret"):
        v = chap.get(key)
        if v is None:
            continue
        if not isinstance(v, str) or not re.fullmatch(r"[\x21-\x7e]+", v):
            raise OpError(400, f"chap.{key}: printable characters without spaces")
        out[key] = v
    for key in ("username", "secret"):
        if key not in out:
            raise OpError(400, f"chap.{key}: required")
    if ("target_username" in out) != ("target_secret" in out):
        raise OpError(400, "chap.target_username and chap.target_secret: both or neither")
    for key in ("secret", "target_secret"):
        if key in out and not 12 <= len(out[key]) <= 255:
            raise OpError(400, f"chap.{key}: 12 to 255 characters (RFC 7143)")
    return out


def pool_capacity(pool: dict[str, Any]) -> dict[str, int] | None:
    """Size, used and free bytes of the file system under an embedded pool."""
    path = Path(pool["path"])
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    return {"size": total, "used": total - st.f_bfree * st.f_frsize, "free": free}
