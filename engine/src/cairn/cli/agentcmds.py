"""What the operator commands that talk to a node agent share (docs/operations.md):
``--api``, ``--token-file``, ``--json``, the client, tables, and the exit codes.

Exit codes: 0 done; 1 failed (the agent's 500, anything else); 2 usage or bad input
(argparse, the agent's 400, a destructive command without ``--yes``); 3 not found (404);
4 conflict with the current state (409); 5 the agent is unreachable or refused the token
(503, 401, an unreadable token file).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cairn.agent.client import AgentClient, ApiError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_UNREACHABLE = range(6)
DEFAULT_API = "http://127.0.0.1:6060"
DEFAULT_TOKEN_FILE = Path("/etc/cairn/token")
_BY_STATUS = {
    400: EXIT_USAGE,
    401: EXIT_UNREACHABLE,
    403: EXIT_UNREACHABLE,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    503: EXIT_UNREACHABLE,
}

Handler = Callable[[argparse.Namespace, AgentClient], int]


class Refused(Exception):
    """A command refused before asking the agent (exit ``code``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def common() -> argparse.ArgumentParser:
    """The options every agent command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("agent")
    g.add_argument("--api", default=DEFAULT_API, metavar="URL", help="the node agent's API")
    g.add_argument(
        "--token-file",
        type=Path,
        default=DEFAULT_TOKEN_FILE,
        metavar="F",
        help="file holding the API's bearer token",
    )
    g.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        metavar="F",
        help="with an https:// API: the certificate(s) to check the agent's against "
        "(default: the system's)",
    )
    g.add_argument("--json", action="store_true", help="print the API's JSON answer")
    return p


def command(sub: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=help + ".",
        parents=[common()],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.set_defaults(agent_handler=handler)
    return p


def need_yes(args: argparse.Namespace, what: str) -> None:
    if not args.yes:
        raise Refused(EXIT_USAGE, f"this destroys {what}: add --yes to do it")


def client(args: argparse.Namespace) -> AgentClient:
    try:
        token = args.token_file.read_text().strip()
    except OSError as e:
        raise Refused(EXIT_UNREACHABLE, f"cannot read the token file: {e}") from None
    if not token or not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise Refused(EXIT_UNREACHABLE, f"{args.token_file} does not hold one token (one line)")
    ca = getattr(args, "ca_file", None)
    if ca is not None and not ca.is_file():
        raise Refused(EXIT_USAGE, f"--ca-file: no such file {ca}")
    return AgentClient(args.api, token, ca_file=ca)


def run(args: argparse.Namespace) -> int:
    """Run the agent command of ``args``; print the error and map it to an exit code."""
    try:
        return int(args.agent_handler(args, client(args)))
    except Refused as e:
        print(f"cairn: error: {e}", file=sys.stderr)
        return e.code
    except ApiError as e:
        print(f"cairn: error: {e.message} (HTTP {e.status})", file=sys.stderr)
        return _BY_STATUS.get(e.status, EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


# -- output ----------------------------------------------------------------------------


def console() -> Any:
    from rich.console import Console

    # Not a terminal (a pipe, a test): wide enough that nothing is wrapped or cut.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=1)
    print()


def table(title: str | None, headers: list[str], rows: Iterable[Iterable[Any]]) -> None:
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for h in headers:
        t.add_column(h, overflow="fold")
    for row in rows:
        t.add_row(*("-" if v is None else str(v) for v in row))
    out = console()
    if out.is_terminal:
        out.print(t)
        return
    with out.capture() as cap:
        out.print(t)
    lines = [line.rstrip() for line in cap.get().splitlines()]
    print("\n".join(line for line in lines if line))


def fields(title: str, items: Iterable[tuple[str, Any]]) -> None:
    """A two-column table of one thing's fields."""
    table(title, ["FIELD", "VALUE"], items)


def size(n: Any) -> str:
    from cairn.units import approx_size

    return "-" if n is None else approx_size(int(n))


def proc_state(doc: dict[str, Any]) -> str:
    p = doc.get("process") or {}
    return str(p.get("state", "-"))
