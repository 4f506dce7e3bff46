"""``cairn pool list|show|create|delete``: the pools of one node, through its agent."""

from __future__ import annotations

import argparse
from typing import Any

from cairn.agent.client import AgentClient
from cairn.cli.agentcmds import command, emit_json, fields, need_yes, proc_state, size, table


def add_actions(psub: Any) -> None:
    command(psub, "list", list_pools, "list the node's pools")
    p = command(psub, "show", show_pool, "show one pool")
    p.add_argument("name")
    p = command(psub, "create", create_pool, "create a pool and start its server")
    p.add_argument("name")
    p.add_argument("--backend", choices=["embedded", "zfs"], default="embedded")
    p.add_argument(
        "--path",
        default=None,
        help="embedded: its directory (absolute; default STATE_DIR/pools/NAME)",
    )
    p.add_argument("--zpool", default=None, help="zfs: the ZFS pool")
    p.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="where its server listens (default ADDRESS:3232 or the next free)",
    )
    p = command(
        psub, "delete", delete_pool, "stop a pool's server and forget it (the data stays on disk)"
    )
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="yes, delete it")
    p.add_argument("--force", action="store_true", help="even while volumes have replicas there")


def _free(p: dict[str, Any]) -> str:
    cap = p.get("capacity")
    return size(cap["free"]) if cap else "-"


def list_pools(args: argparse.Namespace, api: AgentClient) -> int:
    pools = api.call("GET", "/v1/pools")
    if args.json:
        emit_json(pools)
        return 0
    table(
        None,
        ["NAME", "NODE", "BACKEND", "ADDRESS", "WHERE", "FREE", "SERVER"],
        (
            [
                p["name"],
                p["node"],
                p["backend"],
                p["address"],
                p.get("path") or p.get("zpool"),
                _free(p),
                proc_state(p),
            ]
            for p in pools
        ),
    )
    return 0


def show(p: dict[str, Any]) -> None:
    proc = p.get("process") or {}
    cap = p.get("capacity") or {}
    fields(
        f"pool {p['node']}/{p['name']}",
        [
            ("backend", p["backend"]),
            ("listen", p["listen"]),
            ("address", p["address"]),
            ("path" if "path" in p else "zpool", p.get("path") or p.get("zpool")),
            ("capacity", size(cap.get("size")) if cap else None),
            ("free", size(cap.get("free")) if cap else None),
            ("server", proc.get("state")),
            ("pid", proc.get("pid")),
            ("restarts", proc.get("restarts")),
            *_volumes(p),
        ],
    )


def _volumes(p: dict[str, Any]) -> list[tuple[str, Any]]:
    if "volumes" not in p:  # a create's answer: not asked of the server
        return []
    if p["volumes"] is None:
        return [("volumes", f"unknown: {p.get('volumes_error')}")]
    return [("volumes", ", ".join(p["volumes"]) or "none")]


def show_pool(args: argparse.Namespace, api: AgentClient) -> int:
    p = api.call("GET", f"/v1/pools/{args.name}")
    emit_json(p) if args.json else show(p)
    return 0


def create_pool(args: argparse.Namespace, api: AgentClient) -> int:
    body: dict[str, Any] = {"name": args.name, "backend": args.backend}
    for key in ("path", "zpool", "listen"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    p = api.call("POST", "/v1/pools", body)
    emit_json(p) if args.json else show(p)
    return 0


def delete_pool(args: argparse.Namespace, api: AgentClient) -> int:
    need_yes(args, f"the pool {args.name!r} (its server stops; the data stays on disk)")
    body: dict[str, Any] = {"confirm": args.name}
    if args.force:
        body["force"] = True
    doc = api.call("DELETE", f"/v1/pools/{args.name}", body)
    if args.json:
        emit_json(doc)
    else:
        affected = doc.get("volumes_affected") or []
        extra = f" (volumes affected: {', '.join(affected)})" if affected else ""
        print(f"deleted pool {doc['deleted']}{extra}")
    return 0
