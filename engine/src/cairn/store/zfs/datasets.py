"""The dataset operations of the ZFS store, as ``zfs`` commands (``cairn.zfs.commands``).

Every failure becomes a store error that names the dataset: ``NotFoundError`` when it does
not exist, ``ExistsError`` when the name is taken, ``NoSpaceError`` when the pool is full,
``BusyError`` when ZFS keeps calling it busy, ``StoreError`` otherwise (with the command,
exit code and stderr of the ``zfs`` run).  Only the options zfs-fuse 0.7 knows are used:
``zfs get -H -p`` for exact values, ``zfs list -H`` without ``-p``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from cairn.blockdev import NoSpaceError, StoreError
from cairn.store.errors import BusyError, ExistsError, NotFoundError
from cairn.zfs.commands import ZfsCommands, ZfsError

#: How long a destroy, rename or promote is retried while ZFS answers "busy": zfs-fuse
#: lets go of a just-closed file or just-unmounted filesystem a moment later.
BUSY_WAIT = 15.0


@dataclass(frozen=True)
class Filesystem:
    name: str
    mountpoint: str
    mounted: bool
    #: the snapshot this dataset was cloned from (``pool/a@s``), or None
    origin: str | None


def store_error(exc: ZfsError, what: str) -> StoreError:
    text = exc.stderr.lower()
    detail = exc.stderr.strip() or str(exc)
    if "does not exist" in text or "no such" in text:
        return NotFoundError(f"{what}: {detail}")
    if "already exists" in text:
        return ExistsError(f"{what}: {detail}")
    if "out of space" in text or "no space" in text or "quota exceeded" in text:
        return NoSpaceError(f"{what}: no space left in the pool ({detail})")
    if "busy" in text:
        return BusyError(f"{what}: {detail}")
    return StoreError(f"{what}: {exc}")


class Datasets:
    """``zfs`` create, clone, snapshot, rename, promote, destroy, list and get."""

    def __init__(self, commands: ZfsCommands | None = None) -> None:
        self.cmd = commands or ZfsCommands()

    def _zfs(self, what: str, *args: str, busy_retry: bool = False) -> str:
        deadline = time.monotonic() + BUSY_WAIT
        pause = 0.01
        while True:
            try:
                return self.cmd.zfs(*args).stdout
            except ZfsError as exc:
                if busy_retry and "busy" in exc.stderr.lower() and time.monotonic() < deadline:
                    time.sleep(pause)  # usually one short pause is enough
                    pause = min(0.2, pause * 2)
                    continue
                raise store_error(exc, what) from None

    # -- reading -----------------------------------------------------------------------

    def get(self, target: str, *props: str) -> dict[str, str]:
        """Exact values (``zfs get -H -p``) of ``props`` of one dataset or snapshot."""
        out = self._zfs(
            f"properties of {target}",
            "get",
            "-H",
            "-p",
            "-o",
            "property,value",
            ",".join(props),
            target,
        )
        values = {}
        for line in out.splitlines():
            prop, _, value = line.partition("\t")
            if prop:
                values[prop] = value
        return values

    def exists(self, name: str) -> bool:
        try:
            self.get(name, "type")
        except NotFoundError:
            return False
        return True

    def filesystems(self, root: str) -> list[Filesystem]:
        """``root`` and the filesystems under it, parents first."""
        out = self._zfs(
            f"datasets under {root}",
            "list",
            "-H",
            "-r",
            "-t",
            "filesystem",
            "-o",
            "name,mountpoint,mounted,origin",
            root,
        )
        found = []
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) != 4:
                continue
            name, mountpoint, mounted, origin = fields
            found.append(
                Filesystem(name, mountpoint, mounted == "yes", None if origin == "-" else origin)
            )
        return found

    def filesystem(self, name: str) -> Filesystem:
        props = self.get(name, "mountpoint", "mounted", "origin")
        origin = props.get("origin", "-")
        return Filesystem(
            name,
            props.get("mountpoint", "-"),
            props.get("mounted") == "yes",
            None if origin in ("-", "") else origin,
        )

    def snapshots(self, root: str) -> list[str]:
        """Full names of the snapshots of ``root`` and the datasets under it, each
        dataset's in the order they were taken."""
        out = self._zfs(
            f"snapshots of {root}", "list", "-H", "-r", "-t", "snapshot", "-o", "name", root
        )
        return [line.strip() for line in out.splitlines() if line.strip()]

    def creation(self, target: str) -> float:
        value = self.get(target, "creation").get("creation", "0")
        return float(value) if value.isdigit() else 0.0

    # -- changing ----------------------------------------------------------------------

    def create(self, name: str, props: Mapping[str, str], *, parents: bool = False) -> None:
        args = ["create", *(["-p"] if parents else [])]
        for key, value in props.items():
            args += ["-o", f"{key}={value}"]
        self._zfs(f"create dataset {name}", *args, name)

    def clone(self, snapshot: str, name: str, props: Mapping[str, str]) -> None:
        args = ["clone"]
        for key, value in props.items():
            args += ["-o", f"{key}={value}"]
        self._zfs(f"clone {snapshot} as {name}", *args, snapshot, name)

    def snapshot(self, name: str) -> None:
        self._zfs(f"snapshot {name}", "snapshot", name)

    def unmount(self, name: str) -> None:
        try:
            self.cmd.zfs("unmount", name)
        except ZfsError as exc:
            if "not currently mounted" not in exc.stderr:
                raise store_error(exc, f"unmount {name}") from None

    def rename(self, old: str, new: str) -> None:
        """Rename a filesystem.  zfs-fuse calls a mounted clone busy, so it is unmounted
        first and mounted again under its new name."""
        self.unmount(old)
        self._zfs(f"rename {old} to {new}", "rename", old, new, busy_retry=True)
        self.mount(new)

    def promote(self, name: str) -> None:
        self._zfs(f"promote {name}", "promote", name, busy_retry=True)

    def mount(self, name: str) -> None:
        self._zfs(f"mount {name}", "mount", name)

    def destroy(self, name: str, *, recursive: bool = False) -> None:
        """Destroy a dataset (with its snapshots when ``recursive``) or a snapshot.
        Never ``-R``: clones are never destroyed implicitly."""
        if "@" not in name:
            # zfs-fuse calls a mounted filesystem busy once, then lets it go
            self.unmount(name)
        args = ["destroy", *(["-r"] if recursive else []), name]
        self._zfs(f"destroy {name}", *args, busy_retry=True)
