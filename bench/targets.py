"""The targets under benchmark, each on its own loopback port: tgt and ``cairn target serve``.

Every target keeps its data in a directory of its own and its stderr in a log file; ``stop``
always leaves no process behind (it kills what does not exit in time).
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path

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
        with open(self.stderr_path, "wb") as err:
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
