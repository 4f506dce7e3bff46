"""``cairn node run``: the node agent (docs/agent.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("cairn.agent")


def add_parser(sub: Any) -> None:
    node = sub.add_parser(
        "node",
        help="run the node agent",
        description="Run the node agent: this host's pool servers and targets, its API and "
        "metrics.",
    )
    nsub = node.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = nsub.add_parser(
        "run",
        help="run the agent (foreground, or --daemon)",
        description=(
            "Run the node agent from the node file: start every pool server and target of "
            "the desired state (STATE_DIR/desired.json), keep them running, serve the API "
            "and the metrics. Prints 'ready node=NAME api=URL metrics=HOST:PORT' on stdout "
            "once the API answers. SIGTERM or SIGINT stop the targets, then the pool "
            "servers, then the agent (exit 0)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--config", type=Path, default=Path("/etc/cairn/node.yml"))
    run.add_argument(
        "--daemon",
        action="store_true",
        help="detach (double fork) where there is no systemd; returns once the API answers",
    )
    run.add_argument(
        "--pid-file",
        type=Path,
        default=None,
        help="with --daemon: where the agent's pid goes (default STATE_DIR/agent.pid)",
    )


class AgentStartError(Exception):
    pass


async def run_agent(
    config: Any,
    ready_fd: int | None = None,
    on_ready: Callable[[Any], Awaitable[None]] | None = None,
) -> int:
    """Run the agent until SIGTERM or SIGINT.  ``on_ready(agent)`` runs once the API
    answers (``cairn up`` makes its pools and volume there); a signal cancels it."""
    from aiohttp import web

    from cairn.agent import api, metrics
    from cairn.agent.ops import Agent
    from cairn.daemon import parse_host_port

    agent = Agent(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    runners: list[web.AppRunner] = []
    try:
        ssl_ctx = None
        if config.tls:
            import ssl

            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
        for app, listen, ctx in (
            (api.make_app(agent), config.api_listen, ssl_ctx),
            (metrics.make_app(agent), config.metrics_listen, None),
        ):
            host, port = parse_host_port(listen, "listen", "0.0.0.0:6060", listen=True)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            try:
                await web.TCPSite(runner, host, port, ssl_context=ctx, reuse_address=True).start()
            except OSError as e:
                raise AgentStartError(f"cannot listen on {listen}: {e.strerror or e}") from e
        scheme = "https" if ssl_ctx else "http"
        line = (
            f"ready node={config.name} api={scheme}://{config.api_listen} "
            f"metrics={config.metrics_listen}"
        )
        print(line, flush=True)
        log.info("event=agent_ready node=%s state_version=%d", config.name, agent.state.version)
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)
        if on_ready is not None:
            hook = asyncio.ensure_future(on_ready(agent))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({hook, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not hook.done():
                hook.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hook
            else:
                stopped.cancel()
                hook.result()  # its error stops the agent
        await stop.wait()
        log.info("event=agent_stopping node=%s", config.name)
    finally:
        for runner in runners:
            await runner.cleanup()
        await agent.stop()
    log.info("event=agent_stopped node=%s", config.name)
    return 0


def _daemonize(pid_file: Path, log_file: Path) -> int | None:
    """Double fork.  In the original process: wait for the agent to say it is ready and
    return the exit code.  In the daemon: return None, with the write end of the ready
    pipe in ``_READY_FD``."""
    global _READY_FD
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        chunks = []
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
        said = b"".join(chunks).decode(errors="replace")
        if said.startswith("ok"):
            return 0
        print(f"cairn: error: the agent did not start: {said or 'see ' + str(log_file)}",
              file=sys.stderr)  # fmt: skip
        return 1
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    _READY_FD = w
    return None


_READY_FD: int | None = None


def run(args: argparse.Namespace) -> int:
    from cairn.agent.config import ConfigError, load
    from cairn.agent.state import StateError
    from cairn.daemon import run_daemon

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"cairn: error: {args.config}: {e}", file=sys.stderr)
        return 2
    if args.action != "run":
        raise SystemExit(f"cairn node: unknown action {args.action!r}")
    config.state_dir.mkdir(parents=True, exist_ok=True)
    pid_file = args.pid_file or config.state_dir / "agent.pid"
    if args.daemon:
        code = _daemonize(pid_file, config.state_dir / "logs" / "agent.log")
        if code is not None:
            return code
    ready = _READY_FD
    try:
        code = run_daemon(run_agent(config, ready), AgentStartError)
    except StateError as e:
        print(f"cairn: error: {e}", file=sys.stderr)
        code = 2
    finally:
        if args.daemon:
            with contextlib.suppress(OSError):
                pid_file.unlink()
    if ready is not None and code != 0:
        with contextlib.suppress(OSError):
            os.write(ready, f"exit code {code}; see {config.state_dir}/logs/agent.log".encode())
    return code
