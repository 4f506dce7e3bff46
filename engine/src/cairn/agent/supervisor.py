"""The children of the agent: one ``cairn pool serve`` per pool and one ``cairn target
serve`` per volume, each in its own process group.

- stdout and stderr of a child go to ``STATE_DIR/logs/NAME.log``; its pid and command
  line to ``STATE_DIR/run/NAME.pid`` (JSON), so that an agent that died and comes back
  finds what it left running (``stop_stale``) and stops it before it starts a new one:
  two servers on one pool must never run at once.
- A child that exits on its own is started again after a delay (``Backoff``): 1 s,
  doubling to 30 s while it keeps failing within a minute of its start.
- ``stop`` sends SIGTERM to the child's process group, SIGKILL after ``grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("cairn.agent")

STOP_GRACE = 10.0


def cairn_command() -> list[str]:
    """How the agent runs ``cairn``: this Python with the CLI module, so that the children
    are the same installation as the agent and their command line is exactly what the pid
    file records."""
    return [sys.executable, "-m", "cairn.cli.main"]


class Backoff:
    """Delays between restarts: ``first`` doubling to ``cap`` while the child fails within
    ``reset_after`` seconds of its start; a child that ran that long starts over at
    ``first``."""

    def __init__(self, first: float = 1.0, cap: float = 30.0, reset_after: float = 60.0):
        self.first = first
        self.cap = cap
        self.reset_after = reset_after
        self.current = 0.0

    def next_delay(self, uptime: float) -> float:
        if self.current == 0.0 or uptime >= self.reset_after:
            self.current = self.first
        else:
            self.current = min(self.current * 2, self.cap)
        return self.current


Probe = Callable[[], Awaitable[bool]]


@dataclass
class ChildSpec:
    name: str  # file names: logs/NAME.log, run/NAME.pid ("pool-p1", "volume-db")
    kind: str  # "pool" or "volume"
    argv: list[str]  # the arguments after ``cairn``
    probe: Probe | None = None  # answers True once the child serves


@dataclass
class Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    state: str = "starting"  # starting, running, backoff, stopping, stopped
    started_at: float = 0.0  # monotonic
    started_wall: float = 0.0
    starts: int = 0
    last_exit: dict[str, Any] | None = None
    backoff: Backoff = field(default_factory=Backoff)
    stopping: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def info(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "state": self.state,
            "pid": self.pid,
            "starts": self.starts,
            "restarts": max(self.starts - 1, 0),
            "uptime_s": round(time.monotonic() - self.started_at, 1) if self.pid else None,
            "next_delay_s": self.backoff.current if self.state == "backoff" else None,
            "last_exit": self.last_exit,
        }


def tail_lines(path: Path, n: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return f.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """``pid`` runs and is not a zombie (an orphan's zombie may linger in a container
    whose init does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class Supervisor:
    def __init__(self, state_dir: Path, grace: float = STOP_GRACE) -> None:
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.run = state_dir / "run"
        self.grace = grace
        self.children: dict[str, Child] = {}
        self.command = cairn_command()
        for d in (self.logs, self.run):
            d.mkdir(parents=True, exist_ok=True)

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    # -- what a dead agent left behind -----------------------------------------------

    async def stop_stale(self) -> list[str]:
        """Stop every process a pid file names that still runs the command line recorded
        there (so a pid reused by something else is left alone).  Returns their names."""
        stopped = []
        for f in sorted(self.run.glob("*.pid")):
            try:
                doc = json.loads(f.read_text())
                pid, argv = int(doc["pid"]), list(doc["argv"])
            except (OSError, ValueError, KeyError, TypeError):
                f.unlink(missing_ok=True)
                continue
            if _alive(pid) and _cmdline(pid) == argv:
                log.warning("event=stale_child name=%s pid=%d action=stop", f.stem, pid)
                await self._terminate(pid)
                stopped.append(f.stem)
            f.unlink(missing_ok=True)
        return stopped

    async def _terminate(self, pid: int) -> None:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while _alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if _alive(pid):
            log.warning("event=child_kill pid=%d reason=no_exit_after_%ss", pid, self.grace)
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid):
                await asyncio.sleep(0.05)

    # -- running ---------------------------------------------------------------------

    def start(self, spec: ChildSpec) -> Child:
        if spec.name in self.children:
            raise ValueError(f"child {spec.name} is already supervised")
        child = Child(spec)
        self.children[spec.name] = child
        child.task = asyncio.get_running_loop().create_task(self._loop(child))
        return child

    def set_argv(self, name: str, argv: list[str]) -> None:
        """The command line of the next start of ``name`` (the running one is kept)."""
        self.children[name].spec.argv = list(argv)

    async def _spawn(self, child: Child) -> None:
        argv = [*self.command, *child.spec.argv]
        logf = self.log_file(child.spec.name)
        with open(logf, "ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            out.write(f"--- {stamp} agent starts: cairn {' '.join(child.spec.argv)}\n".encode())
            out.flush()
            child.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        child.starts += 1
        child.started_at = time.monotonic()
        child.started_wall = time.time()
        child.state = "starting"
        tmp = self.pid_file(child.spec.name).with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": child.proc.pid, "argv": argv}))
        os.replace(tmp, self.pid_file(child.spec.name))
        log.info("event=child_started name=%s pid=%d", child.spec.name, child.proc.pid)

    async def _loop(self, child: Child) -> None:
        while not child.stopping:
            try:
                await self._spawn(child)
            except OSError as e:
                child.last_exit = {"error": str(e), "time": time.time(), "log": []}
                rc = None
            else:
                assert child.proc is not None
                if child.spec.probe is not None:
                    asyncio.get_running_loop().create_task(self._watch_ready(child))
                else:
                    child.state = "running"
                rc = await child.proc.wait()
                self.pid_file(child.spec.name).unlink(missing_ok=True)
            if child.stopping:
                break
            uptime = time.monotonic() - child.started_at
            delay = child.backoff.next_delay(uptime)
            if rc is not None:
                child.last_exit = {
                    "code": rc if rc >= 0 else None,
                    "signal": signal.Signals(-rc).name if rc < 0 else None,
                    "time": time.time(),
                    "uptime_s": round(uptime, 1),
                    "log": tail_lines(self.log_file(child.spec.name)),
                }
            child.state = "backoff"
            log.warning(
                "event=child_exited name=%s code=%s uptime_s=%.1f restart_in_s=%.0f",
                child.spec.name, rc, uptime, delay,
            )  # fmt: skip
            child.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wake.wait(), delay)
        child.state = "stopped"

    async def _watch_ready(self, child: Child) -> None:
        proc = child.proc
        assert child.spec.probe is not None
        while child.proc is proc and proc is not None and proc.returncode is None:
            try:
                if await child.spec.probe():
                    if child.proc is proc and child.state == "starting":
                        child.state = "running"
                    return
            except Exception:  # a probe that fails just means "not yet"
                pass
            await asyncio.sleep(0.1)

    async def wait_ready(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child = self.children.get(name)
            if child is None:
                return False
            if child.state == "running":
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self, name: str) -> None:
        """Stop ``name`` for good: SIGTERM to its group, SIGKILL after the grace time."""
        child = self.children.get(name)
        if child is None:
            return
        child.stopping = True
        child.state = "stopping"
        child.wake.set()
        proc = child.proc
        if proc is not None and proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.grace)
            except TimeoutError:
                log.warning("event=child_kill name=%s reason=no_exit_after_%ss", name, self.grace)
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        if child.task is not None:
            await child.task
        self.pid_file(name).unlink(missing_ok=True)
        del self.children[name]
        log.info("event=child_stopped name=%s", name)

    async def restart(self, name: str) -> None:
        """Stop the running process of ``name`` and start it again at once (with the
        command line ``set_argv`` gave)."""
        spec = self.children[name].spec
        await self.stop(name)
        self.start(spec)

    async def stop_all(self) -> None:
        """Targets first (their initiators see the volume go), then the pool servers."""
        for kind in ("volume", "pool"):
            names = [n for n, c in self.children.items() if c.spec.kind == kind]
            await asyncio.gather(*(self.stop(n) for n in names))
