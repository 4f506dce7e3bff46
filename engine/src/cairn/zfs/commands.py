"""Running ``zpool`` and ``zfs``: argument lists, never a shell; parsable output; errors.

Every command runs with ``LC_ALL=C`` and a timeout.  A non-zero exit becomes a
:class:`ZfsError` that carries the command, its exit code and its stderr, so the boundary
that catches it (an HTTP answer, an Ansible ``fail_json``) can say exactly what failed.

Versions differ in what they accept.  zfs-fuse 0.7 (pool version 23) has ``-H`` for
``zpool list`` but no ``-p``, so sizes come back rounded (``123M``); ``zfs get`` has
``-H -p`` everywhere.  :meth:`ZfsCommands.zpool_list_exact` finds out once, by asking, and
:func:`parse_nicenum` reads the rounded form when exact bytes are not on offer.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_TIMEOUT = 120.0

#: Columns of ``zpool list`` that every supported version knows.
POOL_LIST_COLUMNS = ("name", "size", "alloc", "free", "health")


class ZfsError(Exception):
    """A ``zpool``/``zfs`` command failed: it exited non-zero, timed out or is missing."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        self.message = message
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(str(self))

    @property
    def command(self) -> str:
        """The command as one line, for messages (it never ran through a shell)."""
        return " ".join(self.argv)

    def __str__(self) -> str:
        parts = [self.message]
        if self.argv:
            parts.append(f"command: {self.command}")
        if self.returncode is not None:
            parts.append(f"exit code {self.returncode}")
        detail = self.stderr.strip()
        if detail:
            parts.append(f"stderr: {detail}")
        return "; ".join(parts)


class ZfsTimeout(ZfsError):
    """A command did not finish within its timeout (it was killed)."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class LibzfsCore:
    """Whether pyzfs (``libzfs_core``) can be used here, and why not when it cannot."""

    available: bool
    reason: str


@lru_cache(maxsize=1)
def libzfs_core() -> LibzfsCore:
    """Try to import pyzfs once.

    pyzfs wraps ``libzfs_core``, which covers datasets, snapshots, clones and send/receive,
    not pool layout: :mod:`cairn.zfs.pools` drives ``zpool`` in either case.  Importing it
    also loads the shared library, so a missing library shows up here as well.
    """
    try:
        importlib.import_module("libzfs_core")
    except ImportError as exc:
        return LibzfsCore(False, f"pyzfs is not importable: {exc}")
    except OSError as exc:  # the module is there but libzfs_core.so is not
        return LibzfsCore(False, f"pyzfs cannot load libzfs_core: {exc}")
    return LibzfsCore(True, "pyzfs (libzfs_core) is importable")


_NICENUM = re.compile(r"^(\d+(?:\.\d+)?)([KMGTPEZ]?)$")
_NICENUM_UNITS = "KMGTPEZ"


def parse_nicenum(text: str) -> int | None:
    """Bytes (or a count) from ZFS's short form: ``0``, ``432K``, ``1.50G``, ``123M``.

    ZFS prints at most three significant digits, so the result is approximate unless the
    text had no suffix.  ``-`` (no value) gives None.
    """
    text = text.strip().upper()
    if text in ("", "-"):
        return None
    if len(text) > 1 and text.endswith("B"):  # newer versions print 0B, 4.50KB in places
        text = text[:-1]
    m = _NICENUM.match(text)
    if not m:
        raise ValueError(f"not a ZFS size: {text!r}")
    number, unit = m.groups()
    scale = 1 << (10 * (_NICENUM_UNITS.index(unit) + 1)) if unit else 1
    return int(float(number) * scale) if "." in number else int(number) * scale


@dataclass(frozen=True)
class PoolListing:
    """One line of ``zpool list``.  Sizes are bytes; ``exact`` is False when they were read
    from the rounded short form (zfs-fuse), True when the tool printed exact bytes."""

    name: str
    size: int | None
    allocated: int | None
    free: int | None
    health: str
    exact: bool


def parse_pool_list(text: str, *, exact: bool) -> list[PoolListing]:
    """Parse ``zpool list -H [-p] -o name,size,alloc,free,health`` (tab separated)."""
    pools = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(POOL_LIST_COLUMNS):
            raise ValueError(f"unexpected zpool list line: {line!r}")
        name, size, alloc, free, health = fields
        pools.append(
            PoolListing(
                name=name,
                size=parse_nicenum(size),
                allocated=parse_nicenum(alloc),
                free=parse_nicenum(free),
                health=health.strip(),
                exact=exact,
            )
        )
    return pools


class RunningCommand:
    """A command started by :meth:`ZfsCommands.spawn`, for callers that watch something
    else while it runs (zfs-fuse's ``zpool replace`` returns only when the resilver ends)."""

    def __init__(
        self, argv: tuple[str, ...], proc: subprocess.Popen[str], what: str, limit: float
    ) -> None:
        self.argv = argv
        self.what = what
        self.limit = limit
        self._proc = proc
        self._deadline = time.monotonic() + limit

    def done(self, wait: float = 0.0) -> bool:
        """Whether it has exited, after waiting up to ``wait`` seconds.  Past its timeout
        it is killed and :class:`ZfsTimeout` raised."""
        left = self._deadline - time.monotonic()
        try:
            self._proc.wait(timeout=max(0.0, min(wait, left)))
            return True
        except subprocess.TimeoutExpired:
            if time.monotonic() < self._deadline:
                return False
        self._proc.kill()
        _out, err = self._proc.communicate()
        raise ZfsTimeout(
            f"{self.what} did not finish within {self.limit:g} s", argv=self.argv, stderr=err
        )

    def result(self, *, check: bool = True) -> CommandResult:
        """Wait for the end (within the timeout) and collect the output."""
        while not self.done(wait=1.0):
            pass
        out, err = self._proc.communicate()
        result = CommandResult(self.argv, self._proc.returncode, out, err)
        if check and result.returncode != 0:
            raise ZfsError(
                f"{self.what} failed", argv=self.argv, returncode=result.returncode, stderr=err
            )
        return result


class ZfsCommands:
    """Runs ``zpool`` and ``zfs`` with a timeout and turns failures into :class:`ZfsError`."""

    def __init__(
        self,
        *,
        zpool: str = "zpool",
        zfs: str = "zfs",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.zpool_bin = zpool
        self.zfs_bin = zfs
        self.timeout = timeout
        self._list_exact: bool | None = None
        self._env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        what: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` (a list, no shell).  With ``check``, a non-zero exit raises."""
        argv = tuple(argv)
        limit = self.timeout if timeout is None else timeout
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=limit,
                env=self._env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            raise ZfsTimeout(
                f"{what or argv[0]} did not finish within {limit:g} s", argv=argv, stderr=stderr
            ) from exc
        except FileNotFoundError as exc:
            raise ZfsError(f"{argv[0]} is not installed or not on PATH", argv=argv) from exc
        result = CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise ZfsError(
                f"{what or argv[0]} failed",
                argv=argv,
                returncode=proc.returncode,
                stderr=proc.stderr,
            )
        return result

    def spawn(
        self, argv: Sequence[str], *, timeout: float | None = None, what: str | None = None
    ) -> RunningCommand:
        """Start ``argv`` (a list, no shell) without waiting for it."""
        argv = tuple(argv)
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                env=self._env,
            )
        except FileNotFoundError as exc:
            raise ZfsError(f"{argv[0]} is not installed or not on PATH", argv=argv) from exc
        limit = self.timeout if timeout is None else timeout
        return RunningCommand(argv, proc, what or argv[0], limit)

    def zpool(self, *args: str, check: bool = True, timeout: float | None = None) -> CommandResult:
        return self.run((self.zpool_bin, *args), check=check, timeout=timeout, what="zpool")

    def zfs(self, *args: str, check: bool = True, timeout: float | None = None) -> CommandResult:
        return self.run((self.zfs_bin, *args), check=check, timeout=timeout, what="zfs")

    def zpool_list_exact(self) -> bool:
        """Whether ``zpool list`` takes ``-p`` (exact bytes).  Asked once, then remembered."""
        if self._list_exact is None:
            probe = self.zpool("list", "-H", "-p", "-o", "name", check=False)
            if probe.returncode == 0:
                self._list_exact = True
            elif "invalid option" in probe.stderr:
                self._list_exact = False
            else:  # the daemon is down or similar: say so rather than guess
                raise ZfsError(
                    "zpool list failed",
                    argv=probe.argv,
                    returncode=probe.returncode,
                    stderr=probe.stderr,
                )
        return self._list_exact

    def list_pools(self, name: str | None = None) -> list[PoolListing]:
        """Imported pools (or the one named) with size, allocated, free and health."""
        exact = self.zpool_list_exact()
        args = ["list", "-H", *(["-p"] if exact else []), "-o", ",".join(POOL_LIST_COLUMNS)]
        if name is not None:
            args.append(name)
        return parse_pool_list(self.zpool(*args).stdout, exact=exact)

    def pool_names(self) -> list[str]:
        out = self.zpool("list", "-H", "-o", "name").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def datasets(self, root: str) -> list[str]:
        """Filesystems and volumes at and under ``root``, parents before children."""
        out = self.zfs("list", "-H", "-r", "-o", "name", "-t", "filesystem,volume", root).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def get_properties(self, target: str, *names: str) -> dict[str, str]:
        """``zfs get -H -p`` of ``names`` (exact values) on one dataset."""
        out = self.zfs("get", "-H", "-p", "-o", "property,value", ",".join(names), target).stdout
        values = {}
        for line in out.splitlines():
            prop, _, value = line.partition("\t")
            if prop:
                values[prop] = value
        return values


__all__ = [
    "CommandResult",
    "LibzfsCore",
    "PoolListing",
    "RunningCommand",
    "ZfsCommands",
    "ZfsError",
    "ZfsTimeout",
    "libzfs_core",
    "parse_nicenum",
    "parse_pool_list",
]
