"""``cairn pool ...``: the command-line side of the pool server."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cairn.replication.wire import DEFAULT_PORT


def add_parser(sub: Any) -> None:
    """Add ``pool`` and its actions to the ``cairn`` command's subparsers."""
    pool = sub.add_parser(
        "pool",
        help="run a pool server that holds replicas",
        description="Run a pool server that holds replicas of volumes for their targets.",
    )
    psub = pool.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = psub.add_parser(
        "serve",
        help="serve the replicas of one pool over the replication protocol",
        description=(
            "Serve the replicas kept in the embedded store in PATH (created when absent) "
            "over the replication protocol. Prints 'ready pool=NAME listen=HOST:PORT' on "
            "stdout when listening; logs go to stderr. SIGTERM or SIGINT stop it cleanly."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--name", required=True, help="the pool's name")
    serve.add_argument("--path", required=True, type=Path, help="directory of the embedded store")
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


def run(args: argparse.Namespace) -> int:
    from cairn.pool.server import PoolServeOptions, serve

    if args.action == "serve":
        return serve(
            PoolServeOptions(
                name=args.name, path=args.path, listen=args.listen, secret_file=args.secret_file
            )
        )
    raise SystemExit(f"cairn pool: unknown action {args.action!r}")
