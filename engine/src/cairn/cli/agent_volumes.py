"""``cairn volume list|show|create|delete|grow`` and ``cairn replica add|remove``: the
volumes whose target runs on one node, through its agent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cairn.agent.client import AgentClient
from cairn.cli.agentcmds import (
    EXIT_USAGE,
    Refused,
    command,
    emit_json,
    fields,
    need_yes,
    proc_state,
    size,
    table,
)


def add_actions(vsub: Any) -> None:
    command(vsub, "list", list_volumes, "list the volumes served by the node")
    p = command(vsub, "show", show_volume, "show one volume, its state and its replicas'")
    p.add_argument("name")
    p = command(vsub, "create", create_volume, "create a replicated volume and start its target")
    p.add_argument("name")
    p.add_argument("--size", required=True, help="bytes, or with a K/M/G/T suffix")
    p.add_argument(
        "--replica",
        action="append",
        required=True,
        metavar="NODE/POOL",
        help="a pool holding a replica; repeat for each (one per node)",
    )
    p.add_argument("--block-size", type=int, choices=[512, 4096], default=512)
    p.add_argument(
        "--portal",
        default=None,
        metavar="HOST:PORT",
        help="where the target listens (default ADDRESS:3260 or the next free)",
    )
    p.add_argument("--iqn", default=None, help="default iqn.2026-11.io.cairn:NAME")
    p.add_argument(
        "--consistency-factor",
        type=int,
        default=None,
        metavar="N",
        help="replicas that must have a write (default: a majority)",
    )
    p.add_argument(
        "--allow-initiator",
        action="append",
        default=[],
        metavar="IQN|CIDR",
        help="admit only these initiators; repeat for more",
    )
    p.add_argument(
        "--chap-user",
        default=None,
        metavar="NAME",
        help="require CHAP: the initiator's user name (with --chap-secret-file)",
    )
    p.add_argument(
        "--chap-secret-file",
        type=Path,
        default=None,
        metavar="F",
        help="file holding the initiator's CHAP secret (12 to 255 characters)",
    )
    p.add_argument(
        "--chap-target-user",
        default=None,
        metavar="NAME",
        help="mutual CHAP: the target's user name (with --chap-target-secret-file)",
    )
    p.add_argument(
        "--chap-target-secret-file",
        type=Path,
        default=None,
        metavar="F",
        help="file holding the target's CHAP secret for mutual CHAP",
    )
    p.add_argument(
        "--allow-same-node",
        action="store_true",
        help="let replicas share a node (one-machine setups: no protection against "
        "losing that node)",
    )
    p = command(
        vsub, "delete", delete_volume, "stop a volume's target and delete it on every replica"
    )
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="yes, delete it")
    p.add_argument(
        "--force",
        action="store_true",
        help="even while clones depend on it (the data they need stays on the pools)",
    )
    p = command(vsub, "grow", grow_volume, "grow a volume online (shrinking is refused)")
    p.add_argument("name")
    p.add_argument("--size", required=True, help="the new size (bytes, or K/M/G/T)")


def add_replica_group(sub: Any) -> None:
    group = sub.add_parser(
        "replica",
        help="add or remove a volume's replicas (node agent)",
        description="Add or remove a volume's replicas through the agent that serves the volume.",
    )
    rsub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, handler, what in (
        ("add", add_replica, "add a replica (it is rebuilt, then votes)"),
        ("remove", remove_replica, "remove a replica (quorum is recomputed)"),
    ):
        p = command(rsub, name, handler, what)
        p.add_argument("volume")
        p.add_argument("pool", metavar="NODE/POOL")


def _replica_states(v: dict[str, Any]) -> dict[str, str]:
    st = v.get("status") or {}
    by_addr = {r["address"]: r["state"] for r in st.get("replicas", [])}
    return {r: by_addr.get(a, "-") for r, a in v.get("addresses", {}).items()}


def list_volumes(args: argparse.Namespace, api: AgentClient) -> int:
    vols = api.call("GET", "/v1/volumes")
    if args.json:
        emit_json(vols)
        return 0
    table(
        None,
        ["NAME", "SIZE", "REPLICAS", "PORTAL", "IQN", "TARGET"],
        (
            [
                v["name"],
                size(v["size"]),
                ", ".join(v["replicas"]),
                v["portal"],
                v["iqn"],
                proc_state(v),
            ]
            for v in vols
        ),
    )
    return 0


def show(v: dict[str, Any]) -> None:
    st = v.get("status") or {}
    origin = v.get("origin")
    fields(
        f"volume {v['name']} (node {v['node']})",
        [
            ("state", st.get("state") or f"unknown ({v.get('status_error')})"),
            ("size", f"{size(v['size'])} ({v['size']} bytes)"),
            ("block size", v["block_size"]),
            ("portal", v["portal"]),
            ("iqn", v["iqn"]),
            ("url", f"iscsi://{v['portal']}/{v['iqn']}/0"),
            ("consistency factor", st.get("consistency_factor", v.get("consistency_factor"))),
            ("writable", st.get("writable")),
            ("origin", f"{origin['volume']}@{origin['snapshot']}" if origin else None),
            ("target", proc_state(v)),
        ],
    )
    states = _replica_states(v)
    table(
        None,
        ["REPLICA", "ADDRESS", "STATE"],
        ([r, a, states.get(r)] for r, a in v["addresses"].items()),
    )


def show_volume(args: argparse.Namespace, api: AgentClient) -> int:
    v = api.call("GET", f"/v1/volumes/{args.name}")
    emit_json(v) if args.json else show(v)
    return 0


def _secret(path: Path, option: str) -> str:
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise Refused(EXIT_USAGE, f"{option}: cannot read {path}: {e.strerror or e}") from None
    if not text or "\n" in text:
        raise Refused(EXIT_USAGE, f"{option}: {path} must hold the secret on one line")
    return text


def _chap_args(args: argparse.Namespace) -> dict[str, str]:
    """The ``chap`` field of a create, the secrets read from their files (never on the
    command line, where other users of the host see them)."""
    chap: dict[str, str] = {}
    for user, secret, ukey, skey in (
        ("chap_user", "chap_secret_file", "username", "secret"),
        ("chap_target_user", "chap_target_secret_file", "target_username", "target_secret"),
    ):
        u, f = getattr(args, user), getattr(args, secret)
        if (u is None) != (f is None):
            opt_u, opt_f = ("--" + user.replace("_", "-"), "--" + secret.replace("_", "-"))
            raise Refused(EXIT_USAGE, f"{opt_u} and {opt_f}: give both or neither")
        if u is not None:
            chap[ukey] = u
            chap[skey] = _secret(f, "--" + secret.replace("_", "-"))
    if chap and "username" not in chap:
        raise Refused(EXIT_USAGE, "mutual CHAP (--chap-target-user) needs --chap-user too")
    return chap


def create_volume(args: argparse.Namespace, api: AgentClient) -> int:
    body: dict[str, Any] = {
        "name": args.name,
        "size": args.size,
        "replicas": args.replica,
        "block_size": args.block_size,
    }
    for key in ("portal", "iqn", "consistency_factor"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.allow_initiator:
        body["acl"] = args.allow_initiator
    if args.allow_same_node:
        body["allow_same_node"] = True
    chap = _chap_args(args)
    if chap:
        body["chap"] = chap
    v = api.call("POST", "/v1/volumes", body)
    if args.json:
        emit_json(v)
    else:
        print(
            f"created volume {v['name']}: {size(v['size'])}, replicas "
            f"{', '.join(v['replicas'])}, iscsi://{v['portal']}/{v['iqn']}/0"
        )
    return 0


def _left(doc: dict[str, Any]) -> None:
    for replica, why in (doc.get("left") or {}).items():
        print(f"cairn: warning: the data on {replica} was left behind: {why}", file=sys.stderr)


def delete_volume(args: argparse.Namespace, api: AgentClient) -> int:
    need_yes(args, f"the volume {args.name!r} and its data on every replica")
    body: dict[str, Any] = {"confirm": args.name}
    if args.force:
        body["force"] = True
    doc = api.call("DELETE", f"/v1/volumes/{args.name}", body)
    emit_json(doc) if args.json else print(f"deleted volume {args.name}")
    _left(doc)
    return 0


def grow_volume(args: argparse.Namespace, api: AgentClient) -> int:
    v = api.call("PATCH", f"/v1/volumes/{args.name}", {"size": args.size})
    if args.json:
        emit_json(v)
    else:
        print(f"volume {v['name']} is now {size(v['size'])} ({v['size']} bytes)")
    return 0


def add_replica(args: argparse.Namespace, api: AgentClient) -> int:
    v = api.call("POST", f"/v1/volumes/{args.volume}/replicas", {"pool": args.pool})
    if args.json:
        emit_json(v)
    else:
        print(
            f"added {args.pool} to {v['name']} (rebuilding; `cairn volume watch {v['name']}`)"
            f"; replicas: {', '.join(v['replicas'])}"
        )
    return 0


def remove_replica(args: argparse.Namespace, api: AgentClient) -> int:
    if args.pool.count("/") != 1:
        from cairn.cli.agentcmds import EXIT_USAGE, Refused

        raise Refused(EXIT_USAGE, f"{args.pool!r}: a replica is NODE/POOL")
    v = api.call("DELETE", f"/v1/volumes/{args.volume}/replicas/{args.pool}")
    if args.json:
        emit_json(v)
    else:
        print(f"removed {args.pool} from {v['name']}; replicas: {', '.join(v['replicas'])}")
    _left(v)
    return 0
