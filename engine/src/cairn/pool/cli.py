"""``cairn pool ...``: the command-line side of the pool server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cairn.cli.agent_pools import add_actions
from cairn.replication.wire import DEFAULT_PORT


def add_parser(sub: Any) -> None:
    """Add ``pool`` and its actions to the ``cairn`` command's subparsers."""
    pool = sub.add_parser(
        "pool",
        help="pools: run a pool server; list, show, create, delete through the node agent",
        description="Run a pool server that holds replicas of volumes for their targets "
        "(serve), or manage a node's pools through its agent (list, show, create, delete).",
    )
    psub = pool.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_actions(psub)
    serve = psub.add_parser(
        "serve",
        help="serve the replicas of one pool over the replication protocol",
        description=(
            "Serve the replicas kept in the embedded store in DIR (created when absent), "
            "or with --backend zfs in datasets of the ZFS pool POOL (POOL/cairn/VOLUME), "
            "over the replication protocol. Prints 'ready pool=NAME listen=HOST:PORT' on "
            "stdout when listening; logs go to stderr. SIGTERM or SIGINT stop it cleanly."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--name", required=True, help="the pool's name")
    serve.add_argument(
        "--backend",
        choices=("embedded", "zfs"),
        default="embedded",
        help="where replicas live: sparse files in --path, or ZFS datasets in --zpool",
    )
    serve.add_argument(
        "--path",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory of the embedded store (--backend embedded)",
    )
    serve.add_argument(
        "--zpool",
        default=None,
        metavar="POOL",
        help="ZFS pool (volumes in POOL/cairn/VOLUME) or root dataset POOL/DATASET (--backend zfs)",
    )
    serve.add_argument(
        "--listen",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help="HOST:PORT to listen on (port 0: any free port, printed when ready)",
    )
    serve.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        help="file holding the secret clients must prove they know (mutual HMAC-SHA256); "
        "without it, no authentication",
    )
    serve.add_argument(
        "--scheduling",
        choices=("batch", "normal"),
        default="batch",
        help="batch: run as SCHED_BATCH (sched(7)), so that a message does not make the "
        "pool server preempt the process that sent it, and a target on the same CPUs sends "
        "a batch to all its replicas before they run (docs/replication.md); normal: the "
        "kernel's default policy",
    )


def run(args: argparse.Namespace) -> int:
    from cairn.pool.server import PoolServeOptions, serve

    if args.action == "serve":
        needs = {"embedded": ("--path DIR", args.path), "zfs": ("--zpool POOL", args.zpool)}
        option, value = needs[args.backend]
        if value is None:
            print(f"cairn: error: --backend {args.backend} needs {option}", file=sys.stderr)
            return 2
        return serve(
            PoolServeOptions(
                name=args.name,
                path=args.path,
                listen=args.listen,
                secret_file=args.secret_file,
                backend=args.backend,
                zpool=args.zpool,
                scheduling=args.scheduling,
            )
        )
    raise SystemExit(f"cairn pool: unknown action {args.action!r}")
