"""ext4 on a Cairn volume, through QEMU's iSCSI initiator and the kernel's loop device.

The kernel here has no iSCSI initiator, so the LUN reaches the kernel this way::

    cairn target serve  <--iSCSI--  qemu-storage-daemon --blockdev driver=iscsi,...
                                        --export type=fuse,mountpoint=LUN_FILE,writable=on
    mkfs.ext4 LUN_FILE;  mount -o loop LUN_FILE MNT

Files are written, checksummed and ``sync``-ed (ext4 commits its journal and flushes; the
loop device turns the flush into an fsync of the FUSE file, which qemu-storage-daemon turns
into SYNCHRONIZE CACHE).  Then the target is killed with SIGKILL and restarted, and the
files must still match.  Needs root, /dev/fuse and loop devices (``modprobe fuse loop``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

VOLUME_SIZE = 256 << 20
EXPORT_TIMEOUT = 30.0
TOOLS = {
    "qemu-storage-daemon": "qemu-system-common",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
    "sync": "coreutils",
    "fusermount3": "fuse3",
}


# --------------------------------------------------------------------------- prerequisites


def _modprobe(module: str) -> str:
    if shutil.which("modprobe") is None:
        return "modprobe not found (apt-get install kmod)"
    done = subprocess.run(["modprobe", module], capture_output=True, text=True, timeout=60)
    return (done.stderr or done.stdout).strip()


def _has_filesystem(name: str) -> bool:
    try:
        lines = Path("/proc/filesystems").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[-1] == name for line in lines if line.strip())


@pytest.fixture(autouse=True)
def _require_fuse_and_loop() -> None:
    """Fail (not skip) with what is missing.  Loads the fuse and loop modules when their
    devices are absent, as a fresh Debian host would need."""
    problems = []
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        problems.append("not installed: " + ", ".join(missing))
    if os.geteuid() != 0:
        problems.append("must run as root (loop devices, mount, FUSE allow_other)")
    else:
        if not Path("/dev/fuse").exists() or not _has_filesystem("fuse"):
            why = _modprobe("fuse")
            if not Path("/dev/fuse").exists():
                problems.append(f"/dev/fuse missing and `modprobe fuse` did not help: {why}")
        if not Path("/dev/loop-control").exists():
            why = _modprobe("loop")
            if not Path("/dev/loop-control").exists():
                problems.append(f"/dev/loop-control missing and `modprobe loop` did not: {why}")
        if not _has_filesystem("ext4"):
            why = _modprobe("ext4")
            if not _has_filesystem("ext4"):
                problems.append(f"the kernel has no ext4 and `modprobe ext4` did not help: {why}")
    if problems:
        pytest.fail("ext4 test prerequisites: " + "; ".join(problems), pytrace=False)


# --------------------------------------------------------------------------- commands


@dataclass
class Result:
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit code {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


_stuck: list[subprocess.Popen[str]] = []


def run(argv: Sequence[str], timeout: float = 120) -> Result:
    """Run a command; on timeout kill it, but never wait forever for it: a process in
    uninterruptible sleep on a dead device (umount, sync) is left for the cleanup."""
    argv = [str(a) for a in argv]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return Result(argv, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            _stuck.append(proc)
            out, err = "", ""
        return Result(argv, None, out, err + f"\n[timed out after {timeout} s]")


def ok(argv: Sequence[str], timeout: float = 120) -> Result:
    r = run(argv, timeout)
    assert r.returncode == 0, r.describe()
    return r


def mount_entry(path: Path) -> tuple[str, str] | None:
    """(mount id, filesystem type) of the mount at ``path``, or None."""
    target = os.path.realpath(path)
    found = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if fields[4].replace("\\040", " ") == target:
            found = (fields[0], right.split()[0])  # the last one is on top
    return found


# --------------------------------------------------------------------------- the stack


@dataclass
class Export:
    """One qemu-storage-daemon exporting the LUN as a FUSE file."""

    proc: subprocess.Popen[bytes]
    path: Path
    log: Path

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@dataclass
class Stack:
    """The qemu-storage-daemon / loop / mount stack of one test, always torn down."""

    workdir: Path
    exports: list[Export] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)

    @property
    def lun_file(self) -> Path:
        return self.workdir / "lun"

    @property
    def mnt(self) -> Path:
        return self.workdir / "mnt"

    def export(self, t, size: int) -> Export:
        self.lun_file.touch()
        log = self.workdir / f"qsd.{len(self.exports) + 1}.log"
        blockdev = (
            f"driver=iscsi,node-name=n0,transport=tcp,portal={t.portal},target={t.iqn},lun={t.lun}"
        )
        fuse = f"type=fuse,id=e0,node-name=n0,mountpoint={self.lun_file},writable=on"
        cmd = ["qemu-storage-daemon", "--blockdev", blockdev, "--export", fuse]
        with open(log, "wb") as out:
            out.write(("$ " + " ".join(cmd) + "\n").encode())
            out.flush()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        e = Export(proc, self.lun_file, log)
        self.exports.append(e)
        deadline = time.monotonic() + EXPORT_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"qemu-storage-daemon exited with {proc.returncode}:\n{e.log_text()}"
                )
            entry = mount_entry(self.lun_file)
            if entry and entry[1] == "fuse" and self.lun_file.stat().st_size == size:
                return e
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the FUSE export at {self.lun_file} did not come up with {size} bytes "
                    f"within {EXPORT_TIMEOUT:.0f} s (mount: {entry}, size: "
                    f"{self.lun_file.stat().st_size}):\n{e.log_text()}"
                )
            time.sleep(0.05)

    def stop_export(self, e: Export, timeout: float = 30) -> int | None:
        """SIGTERM (it flushes and unmounts its FUSE file), SIGKILL after ``timeout``."""
        if e.proc.poll() is None:
            e.proc.send_signal(signal.SIGTERM)
            try:
                e.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                e.proc.kill()
                e.proc.wait(10)
        if mount_entry(e.path):
            run(["fusermount3", "-u", "-z", e.path], timeout=30)
        return e.proc.returncode

    def loops(self) -> list[str]:
        """Loop devices backed by the LUN file now."""
        r = run(["losetup", "--noheadings", "--associated", self.lun_file], timeout=30)
        return [line.split(":")[0] for line in r.stdout.splitlines() if line.strip()]

    def mount(self, *options: str) -> Path:
        """``mount -o loop``: the kernel detaches the loop device itself at the unmount."""
        self.mnt.mkdir(exist_ok=True)
        assert not self.loops(), f"loop devices still on {self.lun_file}: {self.loops()}"
        options = ("loop", *options)
        ok(["mount", "-t", "ext4", "-o", ",".join(options), self.lun_file, self.mnt], 60)
        self.mounts.append(self.mnt)
        return self.mnt

    def umount(self, timeout: float = 90) -> Result:
        r = run(["umount", self.mnt], timeout=timeout)
        if r.returncode == 0:
            deadline = time.monotonic() + 10
            while self.loops():
                assert time.monotonic() < deadline, f"loop device left: {self.loops()}"
                time.sleep(0.05)
        return r

    def cleanup(self) -> None:
        """Stop every qemu-storage-daemon first: with it gone the kernel fails whatever I/O
        still waits on it (with a dead target, ``umount -l`` would block on that I/O).  Then
        lazy-unmount the filesystem (its loop device goes when the filesystem lets go of it)
        and any FUSE file left mounted."""
        for e in self.exports:
            with contextlib.suppress(Exception):
                self.stop_export(e, timeout=3)
        for mnt in self.mounts:
            if mount_entry(mnt):
                run(["umount", "-l", mnt], timeout=30)
        if mount_entry(self.lun_file):
            run(["fusermount3", "-u", "-z", self.lun_file], timeout=30)
        while _stuck:
            with contextlib.suppress(subprocess.TimeoutExpired):
                _stuck.pop().wait(10)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "ext4")
    s.workdir.mkdir()
    try:
        yield s
    finally:
        s.cleanup()


# --------------------------------------------------------------------------- files


def make_files(seed: int = 20240101) -> dict[str, bytes]:
    """A fixed set of files: a few bytes to several MiB, nested directories, random content
    (os.urandom; the sizes are fixed)."""
    rng = random.Random(seed)
    sizes = {
        "empty": 0,
        "hello.txt": 12,
        "one-block.bin": 4096,
        "a/odd.bin": 4097,
        "a/b/medium.bin": 300 * 1024 + 7,
        "a/b/c/one-mib.bin": 1 << 20,
        "a/b/c/d/large.bin": 6 * (1 << 20) + 513,
        "a/big.bin": 9 * (1 << 20),
    }
    for i in range(40):
        sizes[f"many/f{i:03d}.dat"] = rng.randrange(1, 20000)
    files = {name: os.urandom(size) for name, size in sizes.items()}
    files["hello.txt"] = b"hello cairn\n"
    return files


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def check_files(root: Path, expected: dict[str, str], when: str) -> None:
    """Every file is there with the recorded sha256, and no file is extra."""
    found = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and "lost+found" not in p.parts
    }
    wrong = sorted(n for n in expected if found.get(n) != expected[n])
    extra = sorted(set(found) - set(expected))
    assert not wrong and not extra, (
        f"{when}: {len(wrong)} of {len(expected)} files missing or different: {wrong[:20]}; "
        f"unexpected files: {extra[:20]}"
    )


def describe_stack(t, s: Stack) -> str:
    logs = "\n".join(f"--- {e.log.name} ---\n{e.log_text()}" for e in s.exports)
    return f"{logs}\n--- target ---\n{t.stderr_text()[-6000:]}"


def count_logins(t) -> int:
    """Logins of QEMU's initiator in the current run of the target's log (Cairn's format)."""
    log = t.stderr_path.read_text(errors="replace")
    return sum(
        1
        for line in log.splitlines()
        if "event=login" in line and "initiator=iqn.2008-11.org.linux-kvm" in line
    )


def format_and_fill(t, stack: Stack) -> tuple[Export, dict[str, str]]:
    """Export the LUN, make ext4 on it, mount it, write the files and ``sync``.  Returns the
    export and the sha256 of every file."""
    export = stack.export(t, VOLUME_SIZE)
    # no lazy initialisation: nothing but our files is written in the background
    no_lazy_init = "lazy_itable_init=0,lazy_journal_init=0"
    r = run(["mkfs.ext4", "-q", "-F", "-E", no_lazy_init, stack.lun_file], timeout=120)
    assert r.returncode == 0, r.describe() + describe_stack(t, stack)
    mnt = stack.mount()
    files = make_files()
    write_files(mnt, files)
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    check_files(mnt, expected, "before sync")
    r = run(["sync"], timeout=120)
    assert r.returncode == 0, r.describe() + describe_stack(t, stack)
    return export, expected


# --------------------------------------------------------------------------- the tests


def wait_for_new_login(t, before: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while count_logins(t) <= before:
        assert time.monotonic() < deadline, (
            "no new login of qemu-storage-daemon in the target's log:\n" + t.stderr_text()[-4000:]
        )
        time.sleep(0.05)


def fresh_mount_and_check(
    t, stack: Stack, expected: dict[str, str], target_kind: str, old: Export, when: str
) -> None:
    """Export the LUN again through a new qemu-storage-daemon, check the filesystem with
    ``e2fsck -fn``, mount it read-only on a new loop device and compare every file.  A new
    process means a new iSCSI login and a new FUSE mount (no page cache of the old one),
    and the loop device is attached afresh: the data can only come from the target."""
    assert mount_entry(stack.lun_file) is None, "the old FUSE export is still mounted"
    logins = count_logins(t) if target_kind == "cairn" else 0
    export = stack.export(t, VOLUME_SIZE)
    assert export.proc.pid != old.proc.pid and old.proc.poll() is not None
    if target_kind == "cairn":
        wait_for_new_login(t, logins)
    r = run(["e2fsck", "-f", "-n", stack.lun_file], timeout=180)
    assert r.returncode == 0, (
        "e2fsck -fn found problems:\n" + r.describe() + describe_stack(t, stack)
    )
    mnt = stack.mount("ro")
    check_files(mnt, expected, when)
    r = stack.umount()
    assert r.returncode == 0, r.describe()
    assert stack.stop_export(export) == 0, describe_stack(t, stack)


def test_ext4_files_survive_sigkill_of_the_target(cairn_target, stack, target_kind):
    """The issue's scenario: files written, checksummed, ``sync``, target SIGKILLed and
    restarted; the filesystem is unmounted cleanly through the same qemu-storage-daemon
    (which reconnects), then checked and read through a new one."""
    t = cairn_target(volume="ext4", size=VOLUME_SIZE)
    first, expected = format_and_fill(t, stack)

    assert t.kill() == -signal.SIGKILL
    t.start()  # same port and data directory

    # The old qemu-storage-daemon reconnects to the restarted target; the unmount writes
    # what ext4 still has to (journal checkpoint, superblock) and qemu-storage-daemon
    # flushes when it stops.  The file contents were clean in the page cache since the
    # sync, so nothing writes them again: what is read afterwards is what the target kept.
    r = stack.umount()
    assert r.returncode == 0, r.describe() + describe_stack(t, stack)
    rc = stack.stop_export(first)
    assert rc == 0, f"qemu-storage-daemon exited with {rc}\n" + describe_stack(t, stack)

    when = "after SIGKILL of the target and a fresh mount"
    fresh_mount_and_check(t, stack, expected, target_kind, first, when)


def test_ext4_recovers_when_target_and_initiator_die(cairn_target, stack, target_kind):
    """Harder: after the ``sync`` both the target and qemu-storage-daemon are SIGKILLed, as
    in a power cut, so nothing the kernel still holds reaches the volume again (not even
    the unmount's journal checkpoint).  After the restart, journal recovery
    (``e2fsck -p``) must leave a clean filesystem with every file intact."""
    t = cairn_target(volume="ext4crash", size=VOLUME_SIZE)
    first, expected = format_and_fill(t, stack)

    assert t.kill() == -signal.SIGKILL
    first.proc.kill()
    first.proc.wait(30)
    # The FUSE connection is gone with its daemon, so the kernel's remaining writes fail;
    # take the mount (its loop device follows) and the dead FUSE file away.
    r = run(["umount", "-l", stack.mnt], timeout=60)
    assert r.returncode == 0, r.describe()
    r = run(["fusermount3", "-u", "-z", stack.lun_file], timeout=60)
    assert r.returncode == 0, r.describe()
    t.start()

    # replay the journal through a first new export, then check and read through another
    replay = stack.export(t, VOLUME_SIZE)
    r = run(["e2fsck", "-f", "-p", stack.lun_file], timeout=180)
    # 0: clean, 1: errors corrected (journal replayed); anything else is a failure
    assert r.returncode in (0, 1), "e2fsck -fp:\n" + r.describe() + describe_stack(t, stack)
    assert stack.stop_export(replay) == 0, describe_stack(t, stack)
    when = "after SIGKILL of target and initiator, and journal recovery"
    fresh_mount_and_check(t, stack, expected, target_kind, replay, when)
