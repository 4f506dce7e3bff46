"""``cairn volume ...``: ask a replicating target about its volume, scale its replicas.

These talk to the target's HTTP/JSON API (``target serve --status-listen HOST:PORT``,
docs/replication.md).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from typing import Any

from cairn.cli.agent_volumes import add_actions
from cairn.cli.agent_watch import add_action
from cairn.daemon import parse_host_port
from cairn.units import approx_size as _human

EXIT_FAILED = 1


def add_parser(sub: Any) -> None:
    volume = sub.add_parser(
        "volume",
        help="inspect a replicated volume and scale its replicas",
        description="Manage volumes through the node agent (list, show, create, delete, "
        "grow, watch), or inspect one through its target's own API (status, replica-add, "
        "replica-remove with --target).",
    )
    vsub = volume.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = vsub.add_parser("status", help="the volume's state and each replica's")
    status.add_argument("--target", required=True, metavar="HOST:PORT", help="the target's API")
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    for name, what in (
        ("add", "add a replica (it is rebuilt, then votes)"),
        ("remove", "remove a replica (quorum is recomputed)"),
    ):
        p = vsub.add_parser(f"replica-{name}", help=what, description=what)
        p.add_argument("--target", required=True, metavar="HOST:PORT", help="the target's API")
        p.add_argument("replica", metavar="HOST:PORT", help="the replica's pool server")
    add_actions(vsub)
    add_action(vsub)


def _call(target: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    host, port = parse_host_port(target, "--target", "127.0.0.1:3270")
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(
            method,
            path,
            body=payload,
            headers={"Content-Type": "application/json"} if payload else {},
        )
        resp = conn.getresponse()
        doc = json.loads(resp.read() or b"{}")
    finally:
        conn.close()
    if resp.status != 200:
        raise ValueError(doc.get("error", f"HTTP {resp.status}"))
    return doc


def print_status(doc: dict[str, Any]) -> None:
    print(
        f"volume {doc['volume']}: {doc['state']}, {_human(doc['size'])}, "
        f"RF {doc['replication_factor']}, CF {doc['consistency_factor']}, "
        f"{'writable' if doc['writable'] else 'NOT writable'}, last seq {doc['last_seq']}"
    )
    if doc.get("reason"):
        print(f"  why: {doc['reason']}")
    if doc.get("held_writes"):
        print(f"  writes waiting for quorum: {doc['held_writes']}")
    print(f"  {'REPLICA':24} {'STATE':11} {'SEQ':>10}  REBUILD / REASON")
    for r in doc["replicas"]:
        extra = r.get("reason", "")
        rb = r.get("rebuild")
        if rb:
            total = rb.get("total_bytes")
            pct = f"{100 * rb['done_bytes'] / total:.0f}%" if total else "scanning"
            eta = f", ETA {rb['eta_s']} s" if rb.get("eta_s") is not None else ""
            extra = (
                f"{pct} from {rb['source']} ({_human(rb['done_bytes'])}"
                f" at {_human(rb['rate_bytes_per_s'])}/s{eta})"
            )
        print(f"  {r['address']:24} {r['state']:11} {r['seq']:>10}  {extra}")
    shm = doc.get("shared_memory")
    if shm:
        if shm.get("error"):
            print(f"  shared memory: unavailable ({shm['error']})")
        else:
            print(
                f"  shared memory: ring {shm['generation']} ({_human(shm['ring_bytes'])}) "
                f"mapped by {shm['pool_servers']} pool server(s) on this machine; "
                f"{shm['retired']} retired, full {shm['full']} time(s)"
            )


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "status":
            doc = _call(args.target, "GET", "/status")
            if args.json:
                json.dump(doc, sys.stdout, indent=1)
                print()
            else:
                print_status(doc)
            return 0
        key = "add" if args.action == "replica-add" else "remove"
        doc = _call(args.target, "POST", "/replicas", {key: args.replica})
        print(json.dumps(doc))
        return 0
    except (OSError, ValueError) as e:
        print(f"cairn: error: {e}", file=sys.stderr)
        return EXIT_FAILED
