"""What every Cairn daemon (target, pool server) shares: its HOST:PORT addresses and
the way it runs its event loop."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any


def parse_host_port(
    text: str, what: str, example: str, *, listen: bool = False, any_port: bool = False
) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` (IPv6 hosts in brackets).  ``listen``: an empty
    host means every address; ``any_port``: port 0 (the kernel picks one) is allowed.
    ``ValueError`` names ``what`` and shows ``example``."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    low = 0 if any_port else 1
    if not sep or not port.isdigit() or not low <= int(port) < 65536 or not (host or listen):
        raise ValueError(f"{what} {text!r} must be HOST:PORT (e.g. {example})")
    return host or "0.0.0.0", int(port)


def run_daemon(main: Coroutine[Any, Any, int], errors: type[Exception]) -> int:
    """Run ``main`` on uvloop (asyncio without it); an ``errors`` exception is printed for
    the operator and gives exit code 2."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run  # type: ignore[assignment]
    try:
        return runner(main)
    except errors as e:
        print(f"cairn: error: {e}", file=sys.stderr)
        return 2
