"""``cairn up``: Cairn on one machine in one command (docs/agent.md).

A node agent in the foreground with N embedded pools on 127.0.0.2, 127.0.0.3, ... and
one N-replica volume on 127.0.0.1:3260.  Everything lives under ``--data``: the node
file, the API token, the agent's desired state and the pools.  A second run finds the
desired state there and resumes the same pools and volume; Ctrl-C stops the target,
then the pools, then the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from cairn.units import approx_size, parse_size

DEFAULT_DATA = Path("/var/lib/cairn/up")
DEFAULT_REPLICAS = 3
DEFAULT_SIZE = 1 << 30
MAX_REPLICAS = 9
NODE = "local"
POOL_PORT = 3232
HEALTHY_WAIT = 60.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="try Cairn on this machine: pools and a replicated volume, in the foreground",
        description=(
            "Start a node agent in the foreground with N embedded pools on 127.0.0.2, "
            "127.0.0.3, ... and one volume replicated to all of them, served on "
            "127.0.0.1:3260. Prints the volume's iSCSI URL (the one line on stdout that "
            "starts with iscsi://) and how to look at it. Ctrl-C stops everything "
            "cleanly; running it again with the same --data resumes the same data."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="N",
        help=f"pools, one replica on each (1 to {MAX_REPLICAS}; default {DEFAULT_REPLICAS}; "
        "a resumed volume keeps its own)",
    )
    p.add_argument(
        "--size",
        default=None,
        help="the volume's size, bytes or with a K/M/G/T suffix (default 1GiB; a resumed "
        "volume grows to a larger size and never shrinks)",
    )
    p.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"where everything lives ({DEFAULT_DATA})"
    )
    p.add_argument("--volume", default="vol1", help="the volume's name (vol1)")
    p.add_argument("--portal", default="127.0.0.1:3260", help="the target's HOST:PORT")
    p.add_argument("--api-listen", default="127.0.0.1:6060", help="the agent API's HOST:PORT")
    p.add_argument("--metrics-listen", default="127.0.0.1:9500", help="the metrics' HOST:PORT")
    p.add_argument(
        "--pool-port",
        type=int,
        default=POOL_PORT,
        help="the port of every pool server (each on its own loopback address)",
    )


class UpError(Exception):
    """Said to the operator, exit 2."""


def _token(data: Path) -> Path:
    path = data / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def _node_file(args: argparse.Namespace) -> Path:
    """Write DATA/node.yml (every run: the listen options may change) and return it."""
    data = args.data.resolve()
    doc = {
        "name": NODE,
        "address": "127.0.0.1",
        "state_dir": str(data / "agent"),
        "api": {"listen": args.api_listen, "token_file": str(_token(data))},
        "metrics": {"listen": args.metrics_listen},
    }
    path = data / "node.yml"
    path.write_text(
        "# written by `cairn up`; `cairn node run --config` this file runs the same agent\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    return path


def _plan(args: argparse.Namespace, state: Any) -> tuple[int, int]:
    """The replica count and size to run with, checked against a resumed volume."""
    size = DEFAULT_SIZE if args.size is None else parse_size(args.size)
    if size <= 0 or size % 512:
        raise UpError(f"--size: {args.size} must be a positive multiple of 512 bytes")
    replicas = DEFAULT_REPLICAS if args.replicas is None else args.replicas
    if not 1 <= replicas <= MAX_REPLICAS:
        raise UpError(f"--replicas: from 1 to {MAX_REPLICAS}")
    vol = state.volumes.get(args.volume)
    if vol is None:
        return replicas, size
    have = len(vol["replicas"])
    if args.replicas is not None and args.replicas != have:
        raise UpError(
            f"volume {args.volume} in {args.data} has {have} replicas, not {args.replicas}: "
            f"run without --replicas to resume it, change it with `cairn replica add|remove` "
            "while it runs, or use another --data"
        )
    if args.size is not None and size < vol["size"]:
        raise UpError(
            f"volume {args.volume} in {args.data} is {approx_size(vol['size'])}: a volume "
            f"never shrinks (--size {args.size})"
        )
    return have, max(size, vol["size"])


def _hints(args: argparse.Namespace, doc: dict[str, Any], token: Path) -> str:
    url = f"iscsi://{doc['portal']}/{doc['iqn']}/0"
    tf = f"--token-file {token}"
    if args.api_listen != "127.0.0.1:6060":
        tf = f"--api http://{args.api_listen} {tf}"
    # the command as the operator can type it: on PATH, or where this one runs from
    me = "cairn" if shutil.which("cairn") else os.path.abspath(sys.argv[0])
    lines = [
        "cairn: look at it from another shell:",
        f"  {me} volume show {args.volume} {tf}",
        f"  {me} volume watch {args.volume} {tf}",
        f"  {me} snapshot create {args.volume} snap1 {tf}",
        f"  curl -s http://{args.metrics_listen}/metrics | grep '^cairn_volume'",
        f"  iscsi-ls -s iscsi://{doc['portal']}",
        f"  qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'read -P 0x5a 0 1M' {url}",
        f"cairn: stop with Ctrl-C; `cairn up --data {args.data}` resumes the same data.",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from cairn.agent.config import ConfigError, load
    from cairn.agent.ops import OpError
    from cairn.agent.state import DesiredState, StateError
    from cairn.cli.node import AgentStartError, run_agent
    from cairn.daemon import run_daemon

    try:
        args.data.mkdir(parents=True, exist_ok=True)
        state_dir = args.data.resolve() / "agent"
        replicas, size = _plan(args, DesiredState.load(state_dir))
        config = load(_node_file(args))
    except (UpError, ConfigError, StateError) as e:
        print(f"cairn: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"cairn: error: {args.data}: {e}", file=sys.stderr)
        return 2

    async def make(agent: Any) -> None:
        try:
            await _ensure(agent, args, replicas, size)
        except OpError as e:
            raise AgentStartError(e.message) from None

    return run_daemon(run_agent(config, on_ready=make), AgentStartError)


async def _ensure(agent: Any, args: argparse.Namespace, replicas: int, size: int) -> None:
    """Create what is missing (the pools, then the volume), grow the volume to ``size``,
    wait until it is healthy and print its URL."""
    pools = [f"pool{i}" for i in range(1, replicas + 1)]
    vol = agent.state.volumes.get(args.volume)
    if vol is not None:
        pools = [r.split("/", 1)[1] for r in vol["replicas"]]
    for i, name in enumerate(pools):
        if name not in agent.state.pools:
            await agent.create_pool({"name": name, "listen": f"127.0.0.{i + 2}:{args.pool_port}"})
    if vol is None:
        doc = await agent.create_volume(
            {
                "name": args.volume,
                "size": size,
                "replicas": [f"{NODE}/{p}" for p in pools],
                "portal": args.portal,
                "allow_same_node": True,
            }
        )
        what = "created"
    else:
        doc = agent.volume_doc(args.volume)
        what = "resumed"
        if size > vol["size"]:
            doc = await agent.resize_volume(args.volume, {"size": size})
            what = f"resumed, grown to {approx_size(size)},"
    state = await _wait_healthy(agent, args.volume)
    print(
        f"cairn: volume {args.volume} {what} {approx_size(doc['size'])} with "
        f"{len(doc['replicas'])} replicas on {', '.join(pools)} under {args.data}: {state}",
        file=sys.stderr,
    )
    print(f"iscsi://{doc['portal']}/{doc['iqn']}/0", flush=True)
    print(_hints(args, doc, agent.config.token_file), file=sys.stderr, flush=True)


async def _wait_healthy(agent: Any, volume: str) -> str:
    """The volume's state once healthy, or what it is after ``HEALTHY_WAIT`` seconds
    (with the reason), so that the operator sees a volume that does not come up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEALTHY_WAIT
    said = "unknown"
    while True:
        try:
            st = await agent.volume_status(volume)
            said = st.get("state", "unknown")
            if said == "healthy":
                return said
            if st.get("reason"):
                said = f"{said} ({st['reason']})"
        except Exception as e:  # noqa: BLE001 - the target is still starting
            said = f"not answering yet ({e})"
        if loop.time() > deadline:
            return said
        await asyncio.sleep(0.2)
