"""The targets under benchmark, each on its own loopback port: tgt, ``cairn target serve``
on its embedded or null store, and ``cairn target serve --replica ...`` with its pool
servers (``cairn pool serve``), each pool server a process of its own.

Every target keeps its data in a directory of its own and its stderr in a log file; ``stop``
always leaves no process behind (it kills what does not exit in time).
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
IQN_PREFIX = "iqn.2024-01.io.cairn.bench"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
ADMIN_TIMEOUT = 30.0


class TargetError(Exception):
    """A target did not start, or did not stop, as it should."""


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on at ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port_closed(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) != 0:
                return
        time.sleep(0.05)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ("" when unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def find_cairn() -> str:
    """The ``cairn`` command: ``$CAIRN_BIN``, the one beside this Python, or on PATH."""
    env = os.environ.get("CAIRN_BIN")
    if env:
        return env
    beside = Path(sys.executable).parent / "cairn"
    if beside.exists():
        return str(beside)
    found = shutil.which("cairn")
    if not found:
        raise TargetError("the cairn command is not installed (make install)")
    return found


def proc_status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field (``VmHWM``, ``VmRSS``...) of ``/proc/PID/status``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` (all its threads) so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    """One target on ``HOST:port`` serving one volume of ``size`` bytes."""

    name: str
    label: str
    size: int
    data_dir: Path
    log_dir: Path
    port: int = field(default_factory=free_port)
    lun: int = 0
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    started: bool = False
    died: bool = False

    @property
    def iqn(self) -> str:
        return f"{IQN_PREFIX}:{self.name}"

    @property
    def portal(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"iscsi://{self.portal}/{self.iqn}/{self.lun}"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"target-{self.name}.stderr.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def is_alive(self) -> bool:
        """``alive`` as a callable, for watchers."""
        return self.alive

    def peak_rss_kib(self) -> int | None:
        """VmHWM: the most resident memory the target process has had so far."""
        return proc_status_kib(self.proc.pid, "VmHWM") if self.alive and self.proc else None

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.proc.pid) if self.alive and self.proc else None

    def pool_peaks_kib(self) -> dict[str, int | None]:
        """VmHWM of the processes that serve the target's data besides the target itself
        (the pool servers of a replicated volume); none for the others."""
        return {}

    def problem(self) -> str | None:
        """Why the target's last figure may not mean what it says (None: it does)."""
        return None

    def warm(self) -> None:
        """Bring into the page cache what the target's read pass cannot reach (nothing,
        but for replicated targets)."""

    def flush(self) -> None:
        """Write the target's dirty data to disk (fsync of every file it keeps), so that
        no write-back of an earlier run lands in a later one.  Unlike sync(2) this waits
        for nothing but the target's own files."""
        for path in sorted(self.data_dir.rglob("*")):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue  # gone meanwhile, a socket, a link
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fsync(fd)
            finally:
                os.close(fd)

    def stderr_tail(self, lines: int = 40) -> str:
        return tail(self.stderr_path, lines)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> int | None:
        raise NotImplementedError

    def _reap(self, timeout: float) -> int | None:
        """Wait for the process to exit, killing it after ``timeout`` seconds."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.exit_code = self.proc.returncode
        return self.exit_code


@dataclass
class CairnTarget(Target):
    """``cairn target serve`` on the embedded store or the null store."""

    store: str = "embedded"
    _stdout: bytearray = field(default_factory=bytearray)
    _drain: threading.Thread | None = None

    def command(self) -> list[str]:
        return [
            find_cairn(), "--log-level", "warning", "target", "serve",
            "--volume", self.name, "--size", str(self.size), "--data", str(self.data_dir),
            "--portal", self.portal, "--iqn", self.iqn, "--store", self.store,
        ]  # fmt: skip

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.stderr_path, "ab") as err:
            err.write(("$ " + " ".join(cmd) + "\n").encode())
            err.flush()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        line = _first_line(self.proc, START_TIMEOUT)
        if line is None:
            exited = self.proc.poll() is not None
            self.stop()
            why = f"exited with {self.exit_code}" if exited else "printed no URL in time"
            raise TargetError(f"{' '.join(cmd)}\n{why}; its stderr:\n{self.stderr_tail()}")
        if line.strip() != self.url:
            self.stop()
            raise TargetError(f"{self.label} printed {line.strip()!r}, expected {self.url!r}")
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()

    def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self._stdout += chunk

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self._reap(STOP_TIMEOUT)
        if self._drain is not None:
            self._drain.join(5)
        return rc


class ProcessError(TargetError):
    """A helper process did not start."""


@dataclass
class PoolServer:
    """One ``cairn pool serve`` process on ``host`` (its own loopback address), keeping
    its replicas in ``path``.  The first start takes any free port; later starts (after
    ``stop``) take the same one, where the target expects the replica."""

    name: str
    host: str
    path: Path
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    _drain: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [
            find_cairn(), "--log-level", "warning", "pool", "serve", "--name", self.name,
            "--path", str(self.path), "--listen", f"{self.host}:{self.port}",
        ]  # fmt: skip

    def start(self, attempts: int = 1) -> None:
        """Start the process and wait for its ``ready`` line; ``attempts`` > 1 retries
        (the port may still be held a moment after a stop)."""
        for attempt in range(attempts):
            try:
                self._start_once()
                return
            except ProcessError:
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.5)

    def _start_once(self) -> None:
        cmd = self.command()
        with open(self.log_path, "ab") as err:
            err.write(("$ " + " ".join(cmd) + "\n").encode())
            err.flush()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        line = _first_line(self.proc, START_TIMEOUT)
        prefix = f"ready pool={self.name} listen="
        if line is None or not line.startswith(prefix):
            self.stop()
            why = f"printed {line.strip()!r}" if line else f"exited with {self.exit_code}"
            raise ProcessError(f"{' '.join(cmd)}\n{why}; its stderr:\n{tail(self.log_path)}")
        port = int(line.strip().rpartition(":")[2])
        if self.port and port != self.port:
            self.stop()
            raise ProcessError(f"pool server {self.name} listens on {port}, not {self.port}")
        self.port = port
        self._drain = threading.Thread(target=_drain, args=(self.proc,), daemon=True)
        self._drain.start()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self._drain is not None:
            self._drain.join(5)
        self.exit_code = self.proc.returncode
        return self.exit_code

    def peak_rss_kib(self) -> int | None:
        return proc_status_kib(self.proc.pid, "VmHWM") if self.alive and self.proc else None

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.proc.pid) if self.alive and self.proc else None


@dataclass
class ReplicatedTarget(CairnTarget):
    """``cairn target serve --replica ...`` over ``replicas`` pool servers, each a process
    of its own on 127.0.0.2, 127.0.0.3, ... with its data in ``data_dir/pool<i>``; the
    target keeps its state in ``data_dir/state`` and serves its status API on a free port.

    Peak memory is the target process's (the budget applies to it); ``pool_peaks_kib``
    gives the pool servers'.  CPU time is the target's plus every pool server's, so that
    the CPU time per I/O counts all the work replication takes.  ``flush`` covers the
    pools' files too (they are under ``data_dir``)."""

    replicas: int = 3
    rebuild_rate: int = 0  # bytes per second one rebuild may copy (0: no limit)
    status_port: int = field(default_factory=free_port)
    pools: list[PoolServer] = field(default_factory=list)
    stopped_pools: set[int] = field(default_factory=set)  # stopped on purpose
    pool_failures: list[str] = field(default_factory=list)  # pool servers that failed to stop

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def status_url(self) -> str:
        return f"http://{HOST}:{self.status_port}/status"

    @property
    def alive(self) -> bool:
        """The target and every pool server that should be running are running."""
        return (
            self.proc is not None
            and self.proc.poll() is None
            and all(p.alive for i, p in enumerate(self.pools) if i not in self.stopped_pools)
        )

    def command(self) -> list[str]:
        cmd = [
            find_cairn(), "--log-level", "warning", "target", "serve",
            "--volume", self.name, "--size", str(self.size), "--portal", self.portal,
            "--iqn", self.iqn, "--state-dir", str(self.state_dir),
            "--status-listen", f"{HOST}:{self.status_port}",
        ]  # fmt: skip
        if self.rebuild_rate:
            cmd += ["--rebuild-rate", str(self.rebuild_rate)]
        for pool in self.pools:
            cmd += ["--replica", pool.address]
        return cmd

    def pool_log(self, index: int) -> Path:
        return self.log_dir / f"target-{self.name}.pool{index}.stderr.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(self.replicas):
                pool = PoolServer(
                    f"{self.name}-pool{i}", f"127.0.0.{2 + i}", self.data_dir / f"pool{i}",
                    self.pool_log(i),
                )  # fmt: skip
                self.pools.append(pool)
                pool.start()
            super().start()
            self.wait_healthy(START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def restart(self, rebuild_rate: int | None = None) -> None:
        """Stop the target alone and start it again (the pools keep running), with
        another ``rebuild_rate`` when given; returns once the volume is healthy."""
        if rebuild_rate is not None:
            self.rebuild_rate = rebuild_rate
        CairnTarget.stop(self)
        with open(self.stderr_path, "ab") as err:
            err.write(b"# restarted\n")
        self._stdout = bytearray()
        try:
            super().start()
            self.wait_healthy(START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        """Stop the target, then the pool servers; the target's exit code."""
        rc = None
        try:
            rc = super().stop()
        finally:
            for i, pool in enumerate(self.pools):
                was_running = pool.alive
                code = pool.stop()
                if code not in (0, None) and (was_running or i not in self.stopped_pools):
                    what = "when stopped" if was_running else "on its own"
                    self.pool_failures.append(
                        f"pool server {pool.name} exited with {code} {what}:\n"
                        f"{tail(pool.log_path, 20)}"
                    )
        return rc

    def stop_pool(self, index: int) -> None:
        self.stopped_pools.add(index)
        self.pools[index].stop()

    def start_pool(self, index: int) -> None:
        self.pools[index].start(attempts=10)
        self.stopped_pools.discard(index)

    def pool_peaks_kib(self) -> dict[str, int | None]:
        return {p.name: p.peak_rss_kib() for p in self.pools}

    def warm(self) -> None:
        """Read every file of every pool server: a read pass through the target reads each
        block from one replica only, and a run may read it from another."""
        buf = bytearray(1 << 20)
        for pool in self.pools:
            for path in sorted(pool.path.rglob("*")):
                try:
                    with open(path, "rb", buffering=0) as f:
                        while f.readinto(buf):
                            pass
                except OSError:  # a directory, or gone
                    continue

    def cpu_seconds(self) -> float | None:
        """The target's CPU time plus every pool server's (None without the target's)."""
        own = super().cpu_seconds()
        if own is None:
            return None
        return own + sum(p.cpu_seconds() or 0.0 for p in self.pools)

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.status_url, timeout=timeout) as r:
            doc: dict[str, Any] = json.loads(r.read())
        return doc

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        while True:
            if not self.alive:
                raise TargetError(f"{self.label} stopped:\n{self.stderr_tail()}")
            try:
                doc = self.status()
                if doc.get("state") == "healthy":
                    return doc
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                states = [(r.get("address"), r.get("state"), r.get("reason")) for r in
                          doc.get("replicas", [])]  # fmt: skip
                raise TargetError(
                    f"{self.label}: the volume is not healthy after {timeout:.0f} s "
                    f"(state {doc.get('state')!r}, replicas {states})"
                )
            time.sleep(0.1)

    def problem(self) -> str | None:
        for i, pool in enumerate(self.pools):
            if i not in self.stopped_pools and not pool.alive:
                code = pool.proc.returncode if pool.proc else None
                return f"pool server {pool.name} exited with {code}"
        try:
            doc = self.status()
        except (OSError, ValueError) as e:
            return f"no status from {self.status_url}: {e}"
        if doc.get("state") != "healthy":
            states = [(r.get("address"), r.get("state"), r.get("reason")) for r in
                      doc.get("replicas", [])]  # fmt: skip
            return f"the volume is {doc.get('state')}: {states}"
        return None

    def stderr_tail(self, lines: int = 40) -> str:
        parts = [tail(self.stderr_path, lines)]
        for i, pool in enumerate(self.pools):
            text = tail(self.pool_log(i), lines // 2)
            if text:
                parts.append(f"--- {pool.name} ({self.pool_log(i)}) ---\n{text}")
        return "\n".join(parts)


def _drain(proc: subprocess.Popen[bytes]) -> None:
    """Read ``proc``'s stdout until it closes, so the process never blocks on it."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while os.read(fd, 65536):
        pass


def _first_line(proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """The first line ``proc`` writes on stdout; None if it exits or times out first."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not sel.select(min(left, 0.5)):
                continue
            # One byte at a time: nothing past the line is taken from the pipe.
            chunk = os.read(fd, 1)
            if not chunk:
                return None
            buf += chunk
    return buf.decode(errors="replace")


TGTD_RUN_DIR = Path("/var/run/tgtd")


def tgtd_sockets(control: int) -> list[Path]:
    """The control socket of tgtd instance ``control`` and its lock file."""
    return [TGTD_RUN_DIR / f"socket.{control}", TGTD_RUN_DIR / f"socket.{control}.lock"]


def free_control_port() -> int:
    """A tgtd instance number (``-C``, at most 32767) that no tgtd has used here.

    It only names tgtd's control socket; the iSCSI port is chosen apart from it."""
    rng = random.SystemRandom()
    for _ in range(1000):
        control = rng.randrange(20000, 32768)
        if not any(path.exists() for path in tgtd_sockets(control)):
            return control
    raise TargetError(f"no free tgtd control port in 20000-32767 ({TGTD_RUN_DIR} is full)")


@dataclass
class TgtTarget(Target):
    """tgtd with a sparse backing file; tgt keeps LUN 0 for its controller, so the disk is
    LUN 1.  Its instance number (``-C``, the name of its control socket) keeps it apart from
    other tgtd processes on the machine."""

    lun: int = 1
    control: int = field(default_factory=free_control_port)  # tgtd's -C

    @property
    def backing_file(self) -> Path:
        return self.data_dir / f"{self.name}.img"

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["tgtadm", "-C", str(self.control), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=ADMIN_TIMEOUT)
        if check and done.returncode != 0:
            raise TargetError(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()}")
        return done

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.backing_file, "wb") as f:
            f.truncate(self.size)
        cmd = ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal={self.portal}"]
        with open(self.stderr_path, "wb") as err:
            err.write(("$ " + " ".join(cmd) + "\n").encode())
            err.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            self._wait_ready()
            self._configure()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while self.tgtadm(
            "--lld", "iscsi", "--mode", "target", "--op", "show", check=False
        ).returncode:
            if self.proc.poll() is not None:
                raise TargetError(f"tgtd exited with {self.proc.returncode}:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise TargetError(f"tgtd did not answer tgtadm:\n{self.stderr_tail()}")
            time.sleep(0.05)

    def _configure(self) -> None:
        iscsi = ("--lld", "iscsi")
        self.tgtadm(*iscsi, "--mode", "target", "--op", "new", "--tid", "1",
                    "--targetname", self.iqn)  # fmt: skip
        self.tgtadm(*iscsi, "--mode", "logicalunit", "--op", "new", "--tid", "1",
                    "--lun", str(self.lun), "--backing-store", str(self.backing_file))  # fmt: skip
        self.tgtadm(*iscsi, "--mode", "target", "--op", "bind", "--tid", "1",
                    "--initiator-address", "ALL")  # fmt: skip

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            # tgtd ignores SIGTERM while it has targets: take them down, then the daemon.
            try:
                self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "delete", "--force",
                            "--tid", "1", check=False)  # fmt: skip
                self.tgtadm("--mode", "system", "--op", "delete", check=False)
            except (OSError, subprocess.TimeoutExpired):
                pass
        rc = self._reap(STOP_TIMEOUT)
        wait_port_closed(HOST, self.port)
        for path in tgtd_sockets(self.control):
            path.unlink(missing_ok=True)
        return rc
