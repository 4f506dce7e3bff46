"""Fixtures that run a real iSCSI target on loopback for clients nobody here wrote.

The target under test is ``cairn target serve`` by default.  Set
``CAIRN_TEST_TARGET=tgt`` to run the very same tests against tgt (``tgtd`` with a backing
file), which is how the harness itself was proven and how a surprising result is checked
against a peer.

Targets listen on ``127.0.0.1`` on a free port, keep their data in the test's temporary
directory and are always killed on teardown.  A target's stderr goes to a file whose tail is
attached to the report of a failing test.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

TARGET_KIND = os.environ.get("CAIRN_TEST_TARGET", "cairn").strip().lower()
if TARGET_KIND not in ("cairn", "tgt"):
    raise pytest.UsageError(f"CAIRN_TEST_TARGET must be 'cairn' or 'tgt', not {TARGET_KIND!r}")

HOST = "127.0.0.1"
IQN_PREFIX = "iqn.2024-01.io.cairn.test"
START_TIMEOUT = float(os.environ.get("CAIRN_TEST_START_TIMEOUT", "30"))
STOP_TIMEOUT = 30.0

_SIZE_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as ``4096``, ``64M``, ``1G``, ``2GiB``.

    Suffixes are binary (K = 1024), as in ``qemu-img`` and ``truncate``."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", size.upper())
    if not m:
        raise ValueError(f"bad size {size!r}")
    return int(m.group(1)) * _SIZE_SUFFIXES[m.group(2)]


_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on at ``host`` right now, and not handed out before in
    this run: the kernel may give the same free port to two calls in a row, and two
    servers of one test told to listen there would collide."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port


def wait_port_closed(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) != 0:
                return
        time.sleep(0.05)


def tail(path: Path, lines: int = 200) -> str:
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
        raise RuntimeError("the cairn command is not installed (pip install -e engine)")
    return found


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Chap:
    """CHAP credentials: the initiator's (one-way) and optionally the target's (mutual)."""

    username: str
    secret: str
    target_username: str | None = None
    target_secret: str | None = None

    def file_text(self) -> str:
        lines = ["# written by the Cairn integration tests", f"username={self.username}"]
        lines.append(f"secret={self.secret}")
        if self.target_username is not None:
            lines.append(f"target_username={self.target_username}")
        if self.target_secret is not None:
            lines.append(f"target_secret={self.target_secret}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TargetConfig:
    volume: str = "vol0"
    size: int | str = "64M"
    block_size: int = 512
    chap: Chap | None = None
    allow: tuple[str, ...] = ()
    store: str = "embedded"
    extra_args: tuple[str, ...] = ()

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)


class TargetStartError(Exception):
    """The target exited (or never became ready) instead of listening."""

    def __init__(self, message: str, returncode: int | None, stderr: str):
        super().__init__(f"{message}\n--- target stderr ---\n{stderr}")
        self.returncode = returncode
        self.stderr = stderr


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One iSCSI target under test on ``host:port``; subclasses say how it runs."""

    kind = "abstract"
    config: TargetConfig
    workdir: Path
    host: str = HOST
    port: int = 0
    lun: int = 0
    starts: int = 0
    last_returncode: int | None = None
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port(self.host)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)

    # -- names and addresses
    @property
    def iqn(self) -> str:
        return f"{IQN_PREFIX}:{self.config.volume}"

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def url(self) -> str:
        """The LUN's libiscsi URL without credentials."""
        return f"iscsi://{self.portal}/{self.iqn}/{self.lun}"

    @property
    def portal_url(self) -> str:
        return f"iscsi://{self.portal}"

    def url_with(
        self,
        user: str | None = None,
        secret: str | None = None,
        target_user: str | None = None,
        target_secret: str | None = None,
        portal_only: bool = False,
    ) -> str:
        """A libiscsi URL carrying CHAP credentials.

        One-way CHAP goes in the user part (``NAME%SECRET@``); the target's credentials for
        mutual CHAP in libiscsi's URL arguments ``target_user`` and ``target_password``."""
        cred = ""
        if user is not None:
            cred = user + (f"%{secret}" if secret is not None else "") + "@"
        url = f"iscsi://{cred}{self.portal}"
        if not portal_only:
            url += f"/{self.iqn}/{self.lun}"
        args = []
        if target_user is not None:
            args.append(f"target_user={target_user}")
        if target_secret is not None:
            args.append(f"target_password={target_secret}")
        if args:
            url += "?" + "&".join(args)
        return url

    @property
    def size_bytes(self) -> int:
        return self.config.size_bytes

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"stderr.{self.starts}.log"

    def stderr_text(self) -> str:
        return "".join(f"=== {p.name} ===\n{tail(p, 10_000)}\n" for p in self.logs if p.exists())

    # -- lifecycle
    def start(self) -> Target:
        raise NotImplementedError

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop with ``sig``; return the exit code (negative: killed by that signal)."""
        raise NotImplementedError

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    def restart(self, sig: int = signal.SIGTERM, **changes: object) -> Target:
        """Stop (if running) and start again on the same port and data, with ``changes``
        applied to the configuration (for instance ``size="128M"``)."""
        if self.alive:
            self.stop(sig)
        self.reconfigure(**changes)
        return self.start()

    def reconfigure(self, **changes: object) -> None:
        """Change the configuration used by the next start."""
        if changes:
            self.config = replace(self.config, **_config_args(changes))  # type: ignore[arg-type]

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.alive:
                self.stop(signal.SIGKILL, timeout=10)


@dataclass
class CairnTarget(Target):
    """``cairn target serve`` as a subprocess."""

    kind = "cairn"
    proc: subprocess.Popen[bytes] | None = None
    url_line: str | None = None
    extra_stdout: bytearray = field(default_factory=bytearray)
    _drain: threading.Thread | None = None

    def command(self) -> list[str]:
        c = self.config
        cmd = [find_cairn(), "target", "serve", "--volume", c.volume, "--size", str(c.size)]
        cmd += ["--data", str(self.data_dir), "--portal", self.portal, "--iqn", self.iqn]
        cmd += ["--block-size", str(c.block_size), "--store", c.store]
        if c.chap is not None:
            secret_file = self.workdir / "chap.conf"
            secret_file.write_text(c.chap.file_text())
            secret_file.chmod(0o600)
            cmd += ["--chap-secret-file", str(secret_file)]
        for entry in c.allow:
            cmd += ["--allow-initiator", entry]
        cmd += list(c.extra_args)
        return cmd

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> CairnTarget:
        assert not self.alive, "already running"
        self.starts += 1
        log = self.stderr_path
        self.logs.append(log)
        cmd = self.command()
        with open(log, "wb") as err:
            err.write(("$ " + " ".join(cmd) + "\n").encode())
            err.flush()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        line, rest = _read_line(self.proc, START_TIMEOUT)
        if line is None:
            rc = self.proc.poll()
            if rc is None:
                self.proc.kill()
                self.proc.wait()
                raise TargetStartError(
                    f"cairn did not print its URL within {START_TIMEOUT:.0f} s", None, tail(log)
                )
            self.last_returncode = rc
            raise TargetStartError(f"cairn exited with {rc} before listening", rc, tail(log))
        self.extra_stdout += rest
        self.url_line = line.decode(errors="replace").rstrip("\r\n")
        expected = f"iscsi://{self.portal}/{self.iqn}/0"
        if self.url_line != expected:
            self.proc.kill()
            self.proc.wait()
            raise TargetStartError(
                f"cairn printed {self.url_line!r}, expected exactly {expected!r}", None, tail(log)
            )
        self._drain = threading.Thread(target=self._drain_stdout, args=(self.proc,), daemon=True)
        self._drain.start()
        return self

    def _drain_stdout(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            self.extra_stdout += chunk

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        if self.proc is None:
            return self.last_returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.last_returncode = self.proc.returncode
                raise AssertionError(
                    f"cairn did not exit within {timeout:.0f} s of signal {sig}; killed it"
                ) from None
        if self._drain is not None:
            self._drain.join(5)
        self.last_returncode = self.proc.returncode
        return self.last_returncode

    def vm_hwm_kib(self) -> int | None:
        """Peak resident set size of the daemon process (VmHWM), in KiB."""
        if not self.alive:
            return None
        return read_vm_hwm(self.proc.pid)  # type: ignore[union-attr]

    def run_to_exit(self, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run the serve command with the current configuration and expect it to exit on
        its own (for refused configurations).  Returns the finished process; kills it and
        fails if it starts listening instead."""
        self.starts += 1
        log = self.stderr_path
        self.logs.append(log)
        try:
            done = subprocess.run(
                self.command(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"cairn kept running for {timeout:.0f} s; stdout: {e.stdout!r}"
            ) from None
        log.write_text(done.stderr)
        return done


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes | None, bytes]:
    """The first line of ``proc``'s stdout (None on timeout or exit) and whatever came
    after it in the same read."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, bytes(buf)
            if not sel.select(min(left, 0.5)):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return None, bytes(buf)
            buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    return line + b"\n", rest


def read_vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class TgtTarget(Target):
    """tgt (``tgtd`` plus ``tgtadm``) serving a file, configured like a Cairn target.

    tgt keeps LUN 0 for its controller, so the disk is LUN 1.  Volume semantics the
    Cairn daemon has (create, reopen, grow, refuse to shrink) are emulated on the backing
    file so that the same tests run unchanged.  The control port (tgtd's ``-C``) is
    derived from the iSCSI port, which keeps concurrent instances apart."""

    kind = "tgt"
    lun: int = 1
    proc: subprocess.Popen[bytes] | None = None

    @property
    def control(self) -> int:
        """tgtd's control port (``-C``), which names its admin socket: derived from the
        iSCSI port, since tgtd takes only 0-32767 there."""
        return self.port & 0x7FFF

    @property
    def backing_file(self) -> Path:
        return self.data_dir / f"{self.config.volume}.img"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise TargetStartError(
                f"{' '.join(cmd)} failed: {done.stderr.strip()}",
                done.returncode,
                tail(self.stderr_path),
            )
        return done

    def _prepare_backing_file(self) -> None:
        want = self.config.size_bytes
        if self.backing_file.exists():
            have = self.backing_file.stat().st_size
            if want < have:
                raise TargetStartError(
                    f"volume {self.config.volume} is {have} bytes; refusing to shrink it to {want}",
                    2,
                    "",
                )
        with open(self.backing_file, "ab") as f:
            if f.tell() < want:
                f.truncate(want)

    def start(self) -> TgtTarget:
        assert not self.alive, "already running"
        self._prepare_backing_file()
        self.starts += 1
        log = self.stderr_path
        self.logs.append(log)
        for stale in Path("/var/run/tgtd").glob(f"socket.{self.control}*"):
            stale.unlink(missing_ok=True)
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal={self.portal}"],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise TargetStartError("tgtd exited", self.proc.returncode, tail(log))
            if self.tgtadm("--mode", "target", "--op", "show", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TargetStartError("tgtd did not answer tgtadm", None, tail(log))
            time.sleep(0.05)
        c = self.config
        self.tgtadm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", self.iqn)
        self.tgtadm(
            "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", str(self.lun),
            "--backing-store", str(self.backing_file), "--blocksize", str(c.block_size),
        )  # fmt: skip
        if c.chap is not None:
            self.tgtadm("--mode", "account", "--op", "new", "--user", c.chap.username,
                        "--password", c.chap.secret)  # fmt: skip
            self.tgtadm(
                "--mode", "account", "--op", "bind", "--tid", "1", "--user", c.chap.username
            )
            if c.chap.target_username is not None:
                self.tgtadm("--mode", "account", "--op", "new", "--user", c.chap.target_username,
                            "--password", c.chap.target_secret or "")  # fmt: skip
                self.tgtadm("--mode", "account", "--op", "bind", "--tid", "1",
                            "--user", c.chap.target_username, "--outgoing")  # fmt: skip
        if not c.allow:
            self.tgtadm("--mode", "target", "--op", "bind", "--tid", "1",
                        "--initiator-address", "ALL")  # fmt: skip
        for entry in c.allow:
            what = (
                "--initiator-name"
                if entry.startswith(("iqn.", "eui.", "naa."))
                else "--initiator-address"
            )
            self.tgtadm("--mode", "target", "--op", "bind", "--tid", "1", what, entry)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        if self.proc is None:
            return self.last_returncode
        if self.proc.poll() is None:
            if sig == signal.SIGTERM:
                # tgtd ignores SIGTERM while it has targets: take them down, then the daemon.
                self.tgtadm(
                    "--mode", "target", "--op", "delete", "--force", "--tid", "1", check=False
                )
                subprocess.run(
                    ["tgtadm", "-C", str(self.control), "--mode", "system", "--op", "delete"],
                    capture_output=True,
                    timeout=30,
                )
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.last_returncode = self.proc.returncode
        wait_port_closed(self.host, self.port)
        return self.last_returncode

    def run_to_exit(self, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        try:
            self.start()
        except TargetStartError as e:
            return subprocess.CompletedProcess([], e.returncode or 1, "", str(e))
        self.kill()
        raise AssertionError("tgt started although the configuration should be refused")


def _config_args(args: dict[str, object]) -> dict[str, object]:
    """Accept ``chap`` as a dict of ``Chap`` fields and ``allow`` as any sequence."""
    args = dict(args)
    if isinstance(args.get("chap"), dict):
        args["chap"] = Chap(**args["chap"])  # type: ignore[arg-type]
    if "allow" in args:
        args["allow"] = tuple(args["allow"])  # type: ignore[arg-type]
    return args


TARGET_CLASSES: dict[str, type[Target]] = {"cairn": CairnTarget, "tgt": TgtTarget}

_TARGETS_KEY = pytest.StashKey[list[Target]]()


def _factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kind: str
) -> Iterator[object]:
    needed = ["tgtd", "tgtadm"] if kind == "tgt" else []
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    if kind == "cairn":
        check_cairn_serve_available()
    made: list[Target] = request.node.stash.setdefault(_TARGETS_KEY, [])

    def make(start: bool = True, **kwargs: object) -> Target:
        config = TargetConfig(**_config_args(kwargs))  # type: ignore[arg-type]
        workdir = tmp_path_factory.mktemp(f"{kind}-{config.volume}")
        target = TARGET_CLASSES[kind](config=config, workdir=workdir)
        made.append(target)
        if start:
            target.start()
        return target

    yield make
    for target in made:
        target.cleanup()


_serve_checked: dict[str, str | None] = {}


def check_cairn_serve_available() -> None:
    """Fail (not skip) with a clear message when ``cairn target serve`` is missing."""
    if "result" not in _serve_checked:
        try:
            done = subprocess.run(
                [find_cairn(), "target", "serve", "--help"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            _serve_checked["result"] = (
                None if done.returncode == 0 else (done.stderr or done.stdout).strip()[-2000:]
            )
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            _serve_checked["result"] = str(e)
    problem = _serve_checked["result"]
    if problem:
        pytest.fail(
            "`cairn target serve --help` does not work, so there is no target to test "
            f"(run with CAIRN_TEST_TARGET=tgt to test the harness against tgt):\n{problem}",
            pytrace=False,
        )


@pytest.fixture
def target_kind() -> str:
    """``cairn`` or ``tgt``: the implementation behind ``cairn_target``."""
    return TARGET_KIND


@pytest.fixture
def cairn_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """Factory: ``cairn_target(volume=, size=, block_size=, chap=, allow=, store=)`` starts
    the target under test (``CAIRN_TEST_TARGET``, default cairn) and returns it running.
    Pass ``start=False`` to configure one without starting it."""
    yield from _factory(request, tmp_path_factory, TARGET_KIND)


@pytest.fixture
def tgt_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """Factory like ``cairn_target`` that always runs tgt, the peer."""
    yield from _factory(request, tmp_path_factory, "tgt")


# --------------------------------------------------------------------------- clients


@dataclass
class ClientResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit code {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


class Clients:
    """Runs the initiator tools (libiscsi, QEMU) with a timeout and keeps what they said."""

    def __init__(self) -> None:
        self.history: list[ClientResult] = []

    def run(
        self, argv: Sequence[str], timeout: float = 120, input: str | None = None
    ) -> ClientResult:
        argv = [str(a) for a in argv]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, input=input,
                errors="replace",
            )  # fmt: skip
            result = ClientResult(argv, done.returncode, done.stdout, done.stderr)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
            result = ClientResult(
                argv, -9, out or "", (err or "") + f"\n[timed out after {timeout} s]"
            )
        self.history.append(result)
        return result

    def ok(self, argv: Sequence[str], timeout: float = 120) -> ClientResult:
        """Run and assert exit code 0."""
        result = self.run(argv, timeout)
        assert result.returncode == 0, result.describe()
        return result


@pytest.fixture
def clients() -> Clients:
    for tool in ("iscsi-ls", "iscsi-inq", "iscsi-readcapacity16", "qemu-io", "qemu-img"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} not installed (apt-get install libiscsi-bin qemu-utils qemu-block-extra)"
            )
    return Clients()


# --------------------------------------------------------------------------- reporting


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when in ("setup", "call") and report.failed:
        for target in item.stash.get(_TARGETS_KEY, []):
            text = target.stderr_text()
            if text:
                report.sections.append(
                    (f"{target.kind} target {target.config.volume} stderr ({target.workdir})", text)
                )
