"""``cairn snapshot list|create|delete|rollback`` and ``cairn clone create``: a volume's
snapshots and clones, through the agent that serves the volume."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cairn.agent.client import AgentClient
from cairn.cli.agentcmds import command, emit_json, need_yes, size, table


def add_groups(sub: Any) -> None:
    group = sub.add_parser(
        "snapshot",
        help="a volume's snapshots (node agent)",
        description="A volume's snapshots, through the agent that serves the volume.",
    )
    ssub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = command(ssub, "list", list_snapshots, "list a volume's snapshots")
    p.add_argument("volume")
    p = command(ssub, "create", create_snapshot, "snapshot a volume on every healthy replica")
    p.add_argument("volume")
    p.add_argument("snapshot")
    p = command(ssub, "delete", delete_snapshot, "delete a snapshot on every replica")
    p.add_argument("volume")
    p.add_argument("snapshot")
    p.add_argument("--yes", action="store_true", help="yes, delete it")
    p = command(
        ssub,
        "rollback",
        rollback,
        "bring a volume back to a snapshot (no initiator may be logged in)",
    )
    p.add_argument("volume")
    p.add_argument("snapshot")
    p.add_argument("--yes", action="store_true", help="yes, lose the writes since")

    group = sub.add_parser(
        "clone",
        help="volumes made from snapshots (node agent)",
        description="Volumes made from a snapshot, served by the agent that serves the origin.",
    )
    csub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = command(csub, "create", create_clone, "a new volume from a volume's snapshot")
    p.add_argument("volume", help="the origin volume")
    p.add_argument("snapshot")
    p.add_argument("name", help="the new volume's name")
    p.add_argument("--portal", default=None, metavar="HOST:PORT")
    p.add_argument("--iqn", default=None)


def _when(t: Any) -> str:
    if isinstance(t, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    return "-" if t is None else str(t)


def list_snapshots(args: argparse.Namespace, api: AgentClient) -> int:
    doc = api.call("GET", f"/v1/volumes/{args.volume}/snapshots")
    if args.json:
        emit_json(doc)
        return 0
    table(
        None,
        ["NAME", "CREATED", "REPLICAS", "SIZE", "USED"],
        (
            [
                s["name"],
                _when(s.get("created")),
                ", ".join(s.get("replicas") or []),
                size(s.get("size")),
                size(s.get("used")),
            ]
            for s in doc.get("snapshots", [])
        ),
    )
    return 0


def create_snapshot(args: argparse.Namespace, api: AgentClient) -> int:
    doc = api.call("POST", f"/v1/volumes/{args.volume}/snapshots", {"name": args.snapshot})
    if args.json:
        emit_json(doc)
    else:
        print(f"snapshot {args.volume}@{doc['name']} on {', '.join(doc.get('replicas') or [])}")
    return 0


def delete_snapshot(args: argparse.Namespace, api: AgentClient) -> int:
    need_yes(args, f"the snapshot {args.snapshot!r} of {args.volume}")
    doc = api.call(
        "DELETE", f"/v1/volumes/{args.volume}/snapshots/{args.snapshot}", {"confirm": args.snapshot}
    )
    emit_json(doc) if args.json else print(f"deleted snapshot {args.volume}@{args.snapshot}")
    return 0


def rollback(args: argparse.Namespace, api: AgentClient) -> int:
    need_yes(args, f"every write to {args.volume!r} since the snapshot {args.snapshot!r}")
    doc = api.call(
        "POST",
        f"/v1/volumes/{args.volume}/rollback",
        {"snapshot": args.snapshot, "confirm": args.volume},
    )
    if args.json:
        emit_json(doc)
    else:
        print(
            f"rolled {args.volume} back to {args.snapshot} "
            f"on {', '.join(doc.get('replicas') or [])}"
        )
    return 0


def create_clone(args: argparse.Namespace, api: AgentClient) -> int:
    body = {"name": args.name, "snapshot": args.snapshot}
    for key in ("portal", "iqn"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    v = api.call("POST", f"/v1/volumes/{args.volume}/clones", body)
    if args.json:
        emit_json(v)
    else:
        print(
            f"created volume {v['name']} from {args.volume}@{args.snapshot}: "
            f"{size(v['size'])}, replicas {', '.join(v['replicas'])}, "
            f"iscsi://{v['portal']}/{v['iqn']}/0"
        )
    return 0
