"""The ``cairn`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cairn import __version__
from cairn.cli import agent_snapshots, agent_volumes, agentcmds
from cairn.cli import node as node_cli
from cairn.cli import up as up_cli
from cairn.cli import volume as volume_cli
from cairn.cli import zpool as zpool_cli
from cairn.pool import cli as pool_cli
from cairn.units import parse_size

EXIT_USAGE = 2


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn",
        description="Cairn replicated block storage: iSCSI targets backed by replica stores.",
    )
    parser.add_argument("--version", action="version", version=f"cairn {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log on stderr (default: info)",
    )
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    target = sub.add_parser(
        "target", help="run and inspect iSCSI targets", description="Run and inspect iSCSI targets."
    )
    tsub = target.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = tsub.add_parser(
        "serve",
        help="serve one volume as an iSCSI target",
        description=(
            "Serve one volume as an iSCSI target (LUN 0). The volume lives in the embedded "
            "store in DATA; it is created when absent and reopened otherwise (the size must "
            "match or grow). Prints the iSCSI URL on stdout when ready; logs go to stderr. "
            "SIGTERM stops it cleanly."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--volume", required=True, help="volume name")
    serve.add_argument(
        "--size",
        required=True,
        type=_size,
        help="volume size in bytes or with a K/M/G/T suffix (powers of 1024)",
    )
    serve.add_argument(
        "--data",
        type=Path,
        default=None,
        help="directory of the embedded store (created when absent); required without --replica",
    )
    serve.add_argument("--portal", default="127.0.0.1:3260", help="HOST:PORT to listen on")
    serve.add_argument("--iqn", required=True, help="the target's iSCSI name (iqn....)")
    serve.add_argument(
        "--block-size",
        type=int,
        choices=[512, 4096],
        default=512,
        help="logical block size in bytes",
    )
    serve.add_argument(
        "--chap-secret-file",
        type=Path,
        default=None,
        help="file with username=, secret= (and target_username=, "
        "target_secret= for mutual CHAP); without it, no authentication",
    )
    serve.add_argument(
        "--allow-initiator",
        action="append",
        default=[],
        metavar="IQN|CIDR",
        help="admit only these initiators (names and/or networks); "
        "repeat for more; default: everyone",
    )
    serve.add_argument(
        "--store",
        choices=["embedded", "null"],
        default="embedded",
        help="'null' discards writes and reads zeros (benchmarks only)",
    )
    serve.add_argument(
        "--nop-interval",
        type=float,
        default=5.0,
        help="seconds of silence before the target pings an initiator (0: never)",
    )
    rep = serve.add_argument_group(
        "replication", "replicas on pool servers (docs/replication.md); replaces --data"
    )
    rep.add_argument(
        "--replica",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a pool server holding a replica of the volume; repeat for each replica",
    )
    rep.add_argument(
        "--consistency-factor",
        type=int,
        default=None,
        metavar="N",
        help="healthy replicas that must have a write before it is acknowledged "
        "(default: a majority, floor(RF/2)+1)",
    )
    rep.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the target keeps its sequence numbers, the volume UUID and which "
        "replicas are trusted",
    )
    rep.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        help="shared secret of the pool servers (HMAC authentication)",
    )
    rep.add_argument(
        "--hold-time",
        type=float,
        default=20.0,
        help="seconds a write waits for quorum before it fails",
    )
    rep.add_argument(
        "--replica-timeout",
        type=float,
        default=5.0,
        help="seconds without an answer after which a replica is degraded",
    )
    rep.add_argument(
        "--rebuild-rate",
        type=_size,
        default=0,
        help="bytes per second one rebuild may copy (K/M/G suffixes; 0: no limit)",
    )
    rep.add_argument(
        "--rebuild-busy-rate",
        type=_size,
        default=64 << 20,
        help="bytes per second one rebuild may copy while initiators do I/O, so that "
        "their I/O keeps most of its speed (0: no such limit); idle, it runs at full speed",
    )
    rep.add_argument(
        "--shared-memory",
        choices=("auto", "off"),
        default="auto",
        help="auto: pool servers on this machine get the data of writes through a "
        "shared-memory ring instead of the network (docs/replication.md); off: always "
        "through the network",
    )
    rep.add_argument(
        "--local-socket",
        choices=("auto", "off"),
        default="auto",
        help="auto: talk to pool servers on this machine through their local (Unix) socket "
        "instead of loopback TCP, which costs about half the system time per message "
        "(docs/replication.md); off: always TCP",
    )
    rep.add_argument(
        "--status-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve the volume's status and replica scaling API (HTTP/JSON) here",
    )
    pool_cli.add_parser(sub)
    volume_cli.add_parser(sub)
    node_cli.add_parser(sub)
    up_cli.add_parser(sub)
    zpool_cli.add_parser(sub)
    agent_volumes.add_replica_group(sub)
    agent_snapshots.add_groups(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from cairn import logs

    logs.setup(args.log_level)
    if getattr(args, "agent_handler", None) is not None:
        return agentcmds.run(args)
    if getattr(args, "zpool_command", False):  # its --group option takes args.group
        return zpool_cli.run(args)
    if args.group == "target" and args.action == "serve":
        from cairn.target.serve import ServeOptions, serve

        if args.size <= 0:
            parser.error("--size must be positive")
        if not args.replica and args.data is None:
            parser.error("--data is required without --replica")
        if args.replica and args.store != "embedded":
            parser.error("--store null cannot be combined with --replica")
        opts = ServeOptions(
            volume=args.volume,
            size=args.size,
            data=args.data,
            portal=args.portal,
            iqn=args.iqn,
            block_size=args.block_size,
            chap_secret_file=args.chap_secret_file,
            allow_initiator=args.allow_initiator,
            store=args.store,
            nop_interval=args.nop_interval,
            replicas=args.replica,
            consistency_factor=args.consistency_factor,
            state_dir=args.state_dir,
            secret_file=args.secret_file,
            hold_time=args.hold_time,
            replica_timeout=args.replica_timeout,
            status_listen=args.status_listen,
            rebuild_rate=args.rebuild_rate,
            rebuild_busy_rate=args.rebuild_busy_rate,
            shared_memory=args.shared_memory == "auto",
            local_socket=args.local_socket == "auto",
        )
        return serve(opts)
    if args.group == "pool":
        return pool_cli.run(args)
    if args.group == "volume":
        return volume_cli.run(args)
    if args.group == "node":
        return node_cli.run(args)
    if args.group == "up":
        return up_cli.run(args)
    parser.error("unknown command")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
