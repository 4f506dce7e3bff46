"""ZFS pools: create, expand, replace, offline/online, export/import, destroy, status.

Every mutating call first reads what the pool is now (``zpool status`` parsed into
:class:`PoolStatus`), then acts only when the request asks for something that is not
already so, and returns a :class:`Result` that says whether it changed anything.  Repeating
a request is therefore harmless; a request that contradicts the pool (create with another
layout, expand with another kind of group) is refused with the reason.

Device paths are compared after ``os.path.realpath``: ``/dev/disk/by-id/...``, ``/dev/sdb``
and a symlink to a file all name the same device once resolved.  The path handed to
``zpool`` is the one the caller gave (made absolute), so a stable by-id name stays stable.

Devices new to a pool are checked before ``zpool`` sees them: they must exist, be a block
device or a regular file of at least 64 MiB, belong to no imported pool, and carry no
filesystem, partition table or ZFS label (another pool's) unless ``force`` is given.

The text of ``zpool status`` has no parsable form in any version; :func:`parse_status`
reads the layout zfs-fuse 0.7 prints (``scrub:``) and the one newer ZFS prints (``scan:``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TypeGuard

from cairn.zfs.commands import ZfsCommands, ZfsError, parse_nicenum

log = logging.getLogger("cairn.zfs")

#: The smallest device ZFS accepts (SPA_MINDEVSIZE).
MIN_DEVICE_BYTES = 64 << 20


class Layout(StrEnum):
    """How the data devices of a pool are grouped."""

    STRIPE = "stripe"
    MIRROR = "mirror"
    RAIDZ1 = "raidz1"
    RAIDZ2 = "raidz2"


#: Fewest devices per group, and why.  ZFS itself takes a raidz of parity+1 devices, but
#: such a group stores one disk of data at the cost of a mirror with slower writes; Cairn
#: asks for at least two data devices per raidz group.
MIN_GROUP_DEVICES: dict[Layout, tuple[int, str]] = {
    Layout.STRIPE: (1, "a stripe needs at least one device"),
    Layout.MIRROR: (2, "a mirror group needs at least 2 devices"),
    Layout.RAIDZ1: (
        3,
        "a raidz1 group needs at least 3 devices (2 data + 1 parity); for 2 devices use a mirror",
    ),
    Layout.RAIDZ2: (
        4,
        "a raidz2 group needs at least 4 devices (2 data + 2 parity); "
        "for 3 devices use a 3-way mirror or raidz1",
    ),
}


class PoolError(Exception):
    """A request this module refuses, with a message an operator can act on."""


class LayoutError(PoolError, ValueError):
    """The requested layout is malformed or contradicts the pool's layout."""


class DeviceRefused(PoolError):
    """A device cannot be used: missing, too small, in use, or holding data."""


class PoolNotFound(PoolError, LookupError):
    """No imported pool of that name."""


class DeviceNotFound(PoolError, LookupError):
    """The pool has no such device."""


class PoolInUse(PoolError):
    """The pool holds replicas (datasets), so it is not destroyed without force."""


class ResilverTimeout(PoolError, TimeoutError):
    """The resilver did not finish within the time given."""


@dataclass(frozen=True)
class Result:
    """What a mutating call did.  ``changed`` is False when the pool already was as asked."""

    changed: bool
    message: str


# -- the parsed form of zpool status ---------------------------------------------------------

_GROUP_NAME = re.compile(r"^(mirror|raidz[123]?|replacing|spare)-\d+$")
_DEVICE_DIRS = (
    "/dev",
    "/dev/disk/by-id",
    "/dev/disk/by-path",
    "/dev/disk/by-vdev",
    "/dev/disk/by-partuuid",
    "/dev/mapper",
)


def resolve_device(path: str) -> str:
    """The real path of a device as a caller or ``zpool status`` names it.

    Absolute paths are resolved through symlinks.  A bare name (``sdb``, a by-id name, as
    kernel ZFS prints them) is looked up in the usual ``/dev`` directories first.
    """
    if not os.path.isabs(path):
        for directory in _DEVICE_DIRS:
            candidate = os.path.join(directory, path)
            if os.path.exists(candidate):
                return os.path.realpath(candidate)
    return os.path.realpath(path)


@dataclass(frozen=True)
class Vdev:
    """One line of the config tree of ``zpool status``, with the lines nested under it.

    ``kind`` is ``disk`` for a leaf (a disk, partition or file), ``root`` for the pool's
    own line, else the group type: ``mirror``, ``raidz1``, ``raidz2``, ``raidz3``,
    ``replacing`` or ``spare``.
    """

    name: str
    kind: str
    state: str
    read_errors: int = 0
    write_errors: int = 0
    checksum_errors: int = 0
    note: str = ""
    children: tuple[Vdev, ...] = ()

    @property
    def is_leaf(self) -> bool:
        return self.kind == "disk"

    @property
    def guid(self) -> str | None:
        """The GUID when ZFS shows one in place of a missing device's name."""
        return self.name if self.name.isdigit() and self.note.startswith("was ") else None

    @property
    def path(self) -> str:
        """The device path as ZFS knows it (for a missing device, the one it ``was``)."""
        return self.note[4:].strip() if self.guid else self.name

    def leaves(self) -> Iterator[Vdev]:
        if self.is_leaf:
            yield self
        for child in self.children:
            yield from child.leaves()

    def members(self) -> tuple[Vdev, ...]:
        """The leaves that make up this vdev's slots: during a replacement the new device
        stands for its slot, in a spare-in-use the original device does."""
        if self.is_leaf:
            return (self,)
        if self.kind == "replacing" and self.children:
            return self.children[-1].members()
        if self.kind == "spare" and self.children:
            return self.children[0].members()
        return tuple(m for child in self.children for m in child.members())

    @property
    def layout(self) -> str:
        """The layout this top-level vdev gives the pool: a lone device is a stripe."""
        return Layout.STRIPE.value if self.kind in ("disk", "replacing", "spare") else self.kind


class ScanState(StrEnum):
    NONE = "none"
    IN_PROGRESS = "in_progress"
    FINISHED = "finished"
    CANCELED = "canceled"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ScanInfo:
    """The ``scrub:`` (zfs-fuse) or ``scan:`` (newer ZFS) line of ``zpool status``."""

    kind: str  # "none", "scrub" or "resilver"
    state: ScanState
    percent: float | None = None
    remaining: str | None = None
    errors: int | None = None
    text: str = ""


def parse_scan(text: str) -> ScanInfo:
    text = " ".join(text.split())
    if not text or text.startswith("none requested"):
        return ScanInfo("none", ScanState.NONE, text=text)
    kind = "resilver" if "resilver" in text else "scrub" if "scrub" in text else "none"
    if "in progress" in text:
        state = ScanState.IN_PROGRESS
    elif any(word in text for word in ("completed", "resilvered", "repaired")):
        state = ScanState.FINISHED
    elif "stopped" in text or "canceled" in text:
        state = ScanState.CANCELED
    else:
        state = ScanState.UNKNOWN
    percent = re.search(r"([\d.]+)% done", text)
    remaining = re.search(r"(\S+) to go", text)
    errors = re.search(r"with (\d+) errors", text)
    return ScanInfo(
        kind=kind,
        state=state,
        percent=float(percent.group(1)) if percent else None,
        remaining=remaining.group(1) if remaining else None,
        errors=int(errors.group(1)) if errors else None,
        text=text,
    )


@dataclass(frozen=True)
class PoolStatus:
    """A pool as ``zpool status`` and ``zpool list`` describe it.

    ``groups`` are the top-level data vdevs; ``sections`` the others by heading
    (``logs``, ``cache``, ``spares``).  Sizes are bytes, None until filled from
    ``zpool list``; ``sizes_exact`` is False when they were read from rounded figures.
    """

    name: str
    state: str
    root: Vdev
    groups: tuple[Vdev, ...]
    sections: Mapping[str, tuple[Vdev, ...]] = field(default_factory=dict)
    scan: ScanInfo = field(default_factory=lambda: ScanInfo("none", ScanState.NONE))
    status: str = ""
    action: str = ""
    errors: str = ""
    size: int | None = None
    allocated: int | None = None
    free: int | None = None
    sizes_exact: bool = False

    @property
    def health(self) -> str:
        return self.state

    @property
    def layout(self) -> str:
        """``stripe``, ``mirror``, ``raidz1``, ``raidz2`` (or ``raidz3``); ``mixed`` when the
        groups differ, ``none`` for a pool without data vdevs."""
        layouts = {group.layout for group in self.groups}
        if not layouts:
            return "none"
        return layouts.pop() if len(layouts) == 1 else "mixed"

    def leaves(self) -> Iterator[Vdev]:
        """Every device of the pool: data, log, cache and spare, old and new in a replace."""
        yield from self.root.leaves()
        for vdevs in self.sections.values():
            for vdev in vdevs:
                yield from vdev.leaves()

    def group_members(self) -> list[tuple[str, ...]]:
        """The device paths of each data group, as ZFS names them."""
        return [tuple(member.path for member in group.members()) for group in self.groups]

    def find(self, device: str) -> Vdev | None:
        """The leaf for ``device``: a path (compared after realpath) or a GUID."""
        wanted = resolve_device(device)
        for leaf in self.leaves():
            if device == leaf.name or resolve_device(leaf.path) == wanted:
                return leaf
        return None

    def parent_of(self, leaf: Vdev) -> Vdev | None:
        def walk(node: Vdev) -> Vdev | None:
            for child in node.children:
                if child is leaf:
                    return node
                found = walk(child)
                if found is not None:
                    return found
            return None

        return walk(self.root)

    def replacing_vdevs(self) -> list[Vdev]:
        """The ``replacing-N`` vdevs: a replacement still attached (old, then new device)."""
        found = []

        def walk(node: Vdev) -> None:
            if node.kind == "replacing" and len(node.children) >= 2:
                found.append(node)
            for child in node.children:
                walk(child)

        walk(self.root)
        return found

    def replacing(self) -> list[tuple[str, str]]:
        """(old, new) device paths of replacements still attached."""
        return [
            (node.children[0].members()[0].path, node.children[-1].members()[0].path)
            for node in self.replacing_vdevs()
        ]


@dataclass
class _Node:
    depth: int
    name: str
    state: str
    counts: tuple[int, int, int]
    note: str
    children: list[_Node] = field(default_factory=list)

    def freeze(self, kind: str | None = None) -> Vdev:
        m = _GROUP_NAME.match(self.name)
        if kind is None:
            kind = m.group(1) if m and self.children else "disk"
        if kind == "raidz":  # very old versions print raidz for single parity
            kind = "raidz1"
        return Vdev(
            name=self.name,
            kind=kind,
            state=self.state,
            read_errors=self.counts[0],
            write_errors=self.counts[1],
            checksum_errors=self.counts[2],
            note=self.note,
            children=tuple(child.freeze() for child in self.children),
        )


def _count(token: str) -> int | None:
    try:
        return parse_nicenum(token)
    except ValueError:
        return None


def _parse_tree_line(line: str) -> _Node:
    body = line[1:] if line.startswith("\t") else line
    depth = (len(body) - len(body.lstrip(" "))) // 2
    tokens = body.split()
    name = tokens[0]
    state = tokens[1] if len(tokens) > 1 else ""
    counts = [_count(t) for t in tokens[2:5]]
    if len(counts) == 3 and all(c is not None for c in counts):
        read, write, cksum = (c or 0 for c in counts)
        note = " ".join(tokens[5:])
    else:
        read = write = cksum = 0
        note = " ".join(tokens[2:])
    return _Node(depth, name, state, (read, write, cksum), note)


def _parse_config(lines: list[str]) -> tuple[Vdev, tuple[Vdev, ...], dict[str, tuple[Vdev, ...]]]:
    root: _Node | None = None
    sections: dict[str, _Node] = {}
    stack: list[_Node] = []
    for line in lines:
        if not line.strip():
            continue
        tokens = line.split()
        if root is None and tokens[0] == "NAME" and "STATE" in tokens:
            continue
        node = _parse_tree_line(line)
        if node.depth == 0:
            if root is None:
                root = node
            else:  # a heading: logs, cache, spares (newer versions: special, dedup)
                sections[node.name] = node
            stack = [node]
            continue
        while stack and stack[-1].depth >= node.depth:
            stack.pop()
        if not stack:
            raise ValueError(f"zpool status: a device line without a parent: {line!r}")
        stack[-1].children.append(node)
        stack.append(node)
    if root is None:
        raise ValueError("zpool status: the config section names no pool")
    frozen_root = root.freeze(kind="root")
    frozen_sections = {
        name: tuple(child.freeze() for child in node.children) for name, node in sections.items()
    }
    return frozen_root, frozen_root.children, frozen_sections


_KEY_LINE = re.compile(r"^ *([a-z]+): ?(.*)$")


def parse_status(text: str) -> list[PoolStatus]:
    """Every pool in the text of ``zpool status [POOL...]``, in order."""
    pools: list[PoolStatus] = []
    block: list[str] = []
    for line in text.splitlines():
        m = _KEY_LINE.match(line)
        if m and m.group(1) == "pool" and block:
            pools.append(_parse_one_status(block))
            block = []
        block.append(line)
    if any(line.strip() for line in block):
        pools.append(_parse_one_status(block))
    return pools


def _parse_one_status(lines: list[str]) -> PoolStatus:
    fields: dict[str, list[str]] = {}
    config: list[str] = []
    key = ""
    in_config = False
    for line in lines:
        m = None if line.startswith("\t") else _KEY_LINE.match(line)
        if m:
            key = m.group(1)
            in_config = key == "config"
            fields[key] = [m.group(2).strip()] if m.group(2).strip() else []
        elif in_config:
            config.append(line)
        elif key and line.strip():  # a continuation line of the last key
            fields[key].append(line.strip())
    if "pool" not in fields or not fields["pool"]:
        raise ValueError("zpool status: no 'pool:' line")
    root, groups, sections = _parse_config(config)

    def text(key: str) -> str:
        return " ".join(fields.get(key, []))

    name = text("pool")
    if root.name != name:
        raise ValueError(f"zpool status: config of {root.name!r} under pool {name!r}")
    return PoolStatus(
        name=name,
        state=text("state") or root.state,
        root=root,
        groups=groups,
        sections=sections,
        scan=parse_scan(text("scan") or text("scrub")),
        status=text("status"),
        action=text("action"),
        errors=text("errors"),
    )


@dataclass(frozen=True)
class ResilverProgress:
    """How far a pool's resilver is.

    ``in_progress`` is True while the scan says so or a replacement is still attached (the
    old device is detached only at the end).  ``percent`` is None when there is nothing to
    report; ``remaining`` is the estimate as ``zpool`` prints it.
    """

    in_progress: bool
    percent: float | None
    remaining: str | None
    replacing: tuple[tuple[str, str], ...]
    text: str

    @property
    def done(self) -> bool:
        return not self.in_progress


def resilver_progress_of(status: PoolStatus) -> ResilverProgress:
    """Progress from one reading of ``zpool status``.

    A replacement is attached before its resilver starts and detached a moment after it
    ends; meanwhile the scan line still shows the previous scan.  The new device tells the
    two apart: it carries a ``resilvered`` note only once it has been resilvered.
    """
    scan = status.scan
    scanning = scan.kind == "resilver" and scan.state is ScanState.IN_PROGRESS
    attached = status.replacing_vdevs()
    if scanning:
        percent = scan.percent
    elif attached:
        finishing = all("resilvered" in node.children[-1].note for node in attached)
        percent = 100.0 if finishing else 0.0
    elif scan.kind == "resilver" and scan.state is ScanState.FINISHED:
        percent = 100.0
    else:
        percent = None
    return ResilverProgress(
        in_progress=scanning or bool(attached),
        percent=percent,
        remaining=scan.remaining if scanning else None,
        replacing=tuple(status.replacing()),
        text=scan.text,
    )


# -- what a device holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """Something found on a device: ``kind`` is a short key, ``description`` a phrase."""

    kind: str
    description: str


_LABEL_SIZE = 256 << 10
_NVLIST_OFFSET = 16 << 10
_NVLIST_SIZE = 112 << 10
_DATA_TYPE_UINT64 = 8
_DATA_TYPE_STRING = 9
_POOL_STATES = {
    0: "active",
    1: "exported",
    2: "destroyed",
    3: "hot spare",
    4: "cache device",
    5: "uninitialized",
}


def parse_label_nvlist(buf: bytes) -> dict[str, int | str]:
    """Top-level number and string pairs of an XDR-encoded nvlist (a ZFS vdev label).

    Nested lists and arrays are skipped.  A damaged or truncated list ends the walk and
    gives what was read so far; anything that is not an XDR nvlist gives ``{}``.
    """
    # header: encoding (1 = XDR), endianness, 2 reserved; then version and flags
    if len(buf) < 12 or buf[0] != 1:
        return {}
    values: dict[str, int | str] = {}
    pos = 12
    while pos + 8 <= len(buf):
        encoded_size, _decoded_size = struct.unpack_from(">II", buf, pos)
        if encoded_size == 0 or encoded_size % 4 or pos + encoded_size > len(buf):
            break
        p = pos + 8
        (name_len,) = struct.unpack_from(">I", buf, p)
        p += 4
        if name_len == 0 or p + name_len + 8 > pos + encoded_size:
            break
        name = buf[p : p + name_len].decode("ascii", errors="replace")
        p += (name_len + 3) & ~3
        data_type, count = struct.unpack_from(">II", buf, p)
        p += 8
        if count == 1 and data_type == _DATA_TYPE_UINT64 and p + 8 <= pos + encoded_size:
            (values[name],) = struct.unpack_from(">Q", buf, p)
        elif count == 1 and data_type == _DATA_TYPE_STRING and p + 4 <= pos + encoded_size:
            (str_len,) = struct.unpack_from(">I", buf, p)
            values[name] = buf[p + 4 : p + 4 + str_len].decode("utf-8", errors="replace")
        pos += encoded_size
    return values


def _device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _pread(fd: int, size: int, offset: int) -> bytes:
    return os.pread(fd, size, offset) if offset >= 0 else b""


def _zfs_label(fd: int, size: int) -> Signature | None:
    aligned = size - size % _LABEL_SIZE
    offsets = [0, _LABEL_SIZE]
    if aligned >= 4 * _LABEL_SIZE:
        offsets += [aligned - 2 * _LABEL_SIZE, aligned - _LABEL_SIZE]
    for offset in offsets:
        nvlist = parse_label_nvlist(_pread(fd, _NVLIST_SIZE, offset + _NVLIST_OFFSET))
        if "version" not in nvlist or "state" not in nvlist:
            continue
        state_code = nvlist["state"]
        state = _POOL_STATES.get(state_code, str(state_code)) if isinstance(state_code, int) else ""
        pool = nvlist.get("name")
        what = f"pool '{pool}'" if pool else "a pool"
        return Signature("zfs", f"a ZFS label of {what} (state: {state})")
    return None


def _ext_superblock(sb: bytes) -> Signature | None:
    if len(sb) < 0x88 or sb[0x38:0x3A] != b"\x53\xef":
        return None
    compat, incompat = struct.unpack_from("<II", sb, 0x5C)
    if incompat & (0x40 | 0x80 | 0x200):  # extents, 64bit, flex_bg
        kind = "ext4"
    elif compat & 0x4:  # has_journal
        kind = "ext3"
    else:
        kind = "ext2"
    label = sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", errors="replace")
    uuid = sb[0x68:0x78].hex()
    uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
    named = f", label '{label}'" if label else ""
    return Signature(kind, f"an {kind} filesystem (UUID {uuid}{named})")


def read_signatures(path: str) -> list[Signature]:
    """What the first and last bytes of ``path`` (a file or block device) say it holds:
    a ZFS label, an ext2/3/4, XFS or swap signature, an LVM label, a GPT or MBR."""
    found: list[Signature] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = _device_size(fd)
        head = _pread(fd, 8192, 0)
        label = _zfs_label(fd, size)
        if label:
            found.append(label)
        ext = _ext_superblock(head[1024:2048])
        if ext:
            found.append(ext)
        if head[:4] == b"XFSB":
            found.append(Signature("xfs", "an XFS filesystem"))
        if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
            found.append(Signature("swap", "a swap area"))
        if any(head[s : s + 8] == b"LABELONE" for s in (0, 512, 1024, 1536)):
            found.append(Signature("lvm2", "an LVM physical volume label"))
        if head[512:520] == b"EFI PART" or head[4096:4104] == b"EFI PART":
            found.append(Signature("gpt", "a GPT partition table"))
        elif head[510:512] == b"\x55\xaa":
            found.append(
                Signature("mbr", "an MBR partition table or boot sector (0x55AA at byte 510)")
            )
    finally:
        os.close(fd)
    return found


_BLKID_KINDS = {"zfs_member": "zfs", "dos": "mbr"}


def parse_blkid_export(text: str) -> list[Signature]:
    """Signatures from ``blkid -p -o export DEVICE`` (KEY=VALUE lines)."""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    found = []
    if "TYPE" in values:
        kind = _BLKID_KINDS.get(values["TYPE"], values["TYPE"])
        label = f", label '{values['LABEL']}'" if values.get("LABEL") else ""
        found.append(Signature(kind, f"a signature of type {values['TYPE']} (blkid{label})"))
    if "PTTYPE" in values:
        kind = _BLKID_KINDS.get(values["PTTYPE"], values["PTTYPE"])
        found.append(Signature(kind, f"a {values['PTTYPE']} partition table (blkid)"))
    return found


# -- requests --------------------------------------------------------------------------------

DeviceGroups = Sequence[str | os.PathLike[str]] | Sequence[Sequence[str | os.PathLike[str]]]


def _is_path(item: object) -> TypeGuard[str | os.PathLike[str]]:
    return isinstance(item, str | os.PathLike)


def _device_arg(device: str | os.PathLike[str]) -> str:
    """The path to hand to ``zpool``: absolute, links kept (zfs-fuse wants full paths)."""
    path = os.fspath(device)
    if os.path.isabs(path):
        return path
    if not os.path.exists(path) and os.path.exists(os.path.join("/dev", path)):
        return os.path.join("/dev", path)
    return os.path.abspath(path)


def normalize_groups(layout: Layout | str, devices_or_groups: object) -> list[list[str]]:
    """The groups a request names, validated against the layout's rules.

    A flat list of devices is one group for mirror and raidz, one group per device for a
    stripe.  A list of lists names several groups (a stripe flattens them).
    """
    try:
        layout = Layout(layout)
    except ValueError:
        choices = ", ".join(item.value for item in Layout)
        raise LayoutError(f"unknown layout {layout!r}; choose one of {choices}") from None
    items: list[object]
    if isinstance(devices_or_groups, str | os.PathLike):
        items = [devices_or_groups]
    elif isinstance(devices_or_groups, Sequence):
        items = list(devices_or_groups)
    else:
        raise LayoutError("devices must be a list of device paths or a list of groups")
    if not items:
        raise LayoutError("no devices given")
    groups: list[list[str]] = []
    if all(_is_path(item) for item in items):
        devices = [_device_arg(item) for item in items if _is_path(item)]
        groups = [[d] for d in devices] if layout is Layout.STRIPE else [devices]
    elif all(isinstance(item, Sequence) and not _is_path(item) for item in items):
        for item in items:
            assert isinstance(item, Sequence)
            if not item or not all(_is_path(d) for d in item):
                raise LayoutError(f"a group must be a non-empty list of device paths: {item!r}")
            group = [_device_arg(d) for d in item if _is_path(d)]
            groups.extend([[d] for d in group] if layout is Layout.STRIPE else [group])
    else:
        raise LayoutError("give either a list of devices or a list of groups, not both")
    minimum, why = MIN_GROUP_DEVICES[layout]
    for group in groups:
        if len(group) < minimum:
            raise LayoutError(f"{why}; got {len(group)}: {', '.join(group)}")
    seen: dict[str, str] = {}
    for group in groups:
        for device in group:
            real = resolve_device(device)
            if real in seen:
                same = "" if seen[real] == device else f" (as {seen[real]})"
                raise LayoutError(f"device {device} is given twice{same}; both are {real}")
            seen[real] = device
    widths = {len(group) for group in groups}
    if layout is not Layout.STRIPE and len(widths) > 1:
        raise LayoutError(
            f"{layout} groups of different widths ({', '.join(map(str, sorted(widths)))}) "
            "would give the pool a mismatched replication level; give groups of one width"
        )
    return groups


def vdev_spec(layout: Layout, groups: Sequence[Sequence[str]]) -> list[str]:
    """The vdev arguments of ``zpool create``/``zpool add`` for ``groups``."""
    if layout is Layout.STRIPE:
        return [device for group in groups for device in group]
    return [word for group in groups for word in (layout.value, *group)]


def _group_key(devices: Iterable[str]) -> frozenset[str]:
    return frozenset(resolve_device(d) for d in devices)


def _describe_groups(status: PoolStatus) -> str:
    parts = []
    for group in status.groups:
        members = ", ".join(m.path for m in group.members())
        parts.append(members if group.layout == "stripe" else f"{group.name} [{members}]")
    return "; ".join(parts) or "no data devices"


# -- the API ---------------------------------------------------------------------------------

InUse = Callable[[str], Iterable[str]] | Iterable[str] | None


class Pools:
    """Pools of this host, driven through ``zpool``/``zfs``.  Calls block: from asyncio
    code, run them in a worker thread (``asyncio.to_thread``)."""

    def __init__(self, commands: ZfsCommands | None = None, *, busy_wait: float = 10.0) -> None:
        self.commands = commands or ZfsCommands()
        #: How long export and destroy retry while ZFS answers "pool is busy".  zfs-fuse
        #: lets go of a just-unmounted filesystem a moment after the unmount returns.
        self.busy_wait = busy_wait

    def _zpool_retry_busy(self, *args: str) -> None:
        deadline = time.monotonic() + self.busy_wait
        while True:
            result = self.commands.zpool(*args, check=False)
            if result.returncode == 0:
                return
            if "busy" not in result.stderr or time.monotonic() >= deadline:
                raise ZfsError(
                    "zpool failed",
                    argv=result.argv,
                    returncode=result.returncode,
                    stderr=result.stderr,
                )
            time.sleep(0.2)

    # reading

    def names(self) -> list[str]:
        return self.commands.pool_names()

    def exists(self, name: str) -> bool:
        return name in self.names()

    def status(self, name: str) -> PoolStatus:
        """The pool's state, layout, device tree, scan and sizes."""
        result = self.commands.zpool("status", name, check=False)
        if result.returncode != 0:
            if "no such pool" in result.stderr:
                raise PoolNotFound(f"pool '{name}' is not imported")
            raise ZfsError(
                "zpool failed",
                argv=result.argv,
                returncode=result.returncode,
                stderr=result.stderr,
            )
        parsed = [p for p in parse_status(result.stdout) if p.name == name]
        if not parsed:
            raise ZfsError(f"zpool status printed no pool '{name}'", argv=result.argv)
        listing = self.commands.list_pools(name)
        status = parsed[0]
        if listing:
            status = replace(
                status,
                size=listing[0].size,
                allocated=listing[0].allocated,
                free=listing[0].free,
                sizes_exact=listing[0].exact,
            )
        return status

    def resilver_progress(self, name: str) -> ResilverProgress:
        return resilver_progress_of(self.status(name))

    def wait_resilver(
        self,
        name: str,
        *,
        timeout: float = 3600.0,
        interval: float = 1.0,
        on_progress: Callable[[ResilverProgress], None] | None = None,
    ) -> ResilverProgress:
        """Poll until no resilver runs; ``on_progress`` sees every reading, the last too."""
        deadline = time.monotonic() + timeout
        while True:
            progress = self.resilver_progress(name)
            if on_progress is not None:
                on_progress(progress)
            if progress.done:
                return progress
            if time.monotonic() >= deadline:
                raise ResilverTimeout(
                    f"pool '{name}': resilver still running after {timeout:g} s "
                    f"({progress.percent if progress.percent is not None else '?'}% done)"
                )
            time.sleep(interval)

    def device_owners(self) -> dict[str, str]:
        """Every device of every imported pool (real path) and the pool it belongs to."""
        owners = {}
        for pool in self.names():
            try:
                status = self.status(pool)
            except PoolNotFound:  # exported meanwhile
                continue
            for leaf in status.leaves():
                owners[resolve_device(leaf.path)] = pool
        return owners

    # checking devices new to a pool

    def check_devices(
        self, devices: Sequence[str], *, force: bool, owners: Mapping[str, str] | None = None
    ) -> None:
        """Refuse devices that are missing, too small, in an imported pool, or that hold
        data (unless ``force``).  One message lists every device refused and why."""
        owners = self.device_owners() if owners is None else owners
        problems: list[str] = []
        holding: list[str] = []
        for device in devices:
            real = resolve_device(device)
            shown = device if real == device else f"{device} ({real})"
            try:
                st = os.stat(real)
            except OSError as exc:
                problems.append(f"{shown} cannot be used: {exc.strerror}")
                continue
            if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
                problems.append(f"{shown} is neither a block device nor a regular file")
                continue
            if real in owners:
                problems.append(f"{shown} is in use by imported pool '{owners[real]}'")
                continue
            try:
                signatures = self._signatures(real, block=stat.S_ISBLK(st.st_mode))
                fd = os.open(real, os.O_RDONLY)
                try:
                    size = _device_size(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                problems.append(f"{shown} cannot be read: {exc.strerror}")
                continue
            if size < MIN_DEVICE_BYTES:
                problems.append(
                    f"{shown} has {size // (1 << 20)} MiB; ZFS needs at least "
                    f"{MIN_DEVICE_BYTES >> 20} MiB per device"
                )
            if signatures and not force:
                held = " and ".join(s.description for s in signatures)
                holding.append(f"{shown} holds {held}")
        if holding:
            problems.append("; ".join(holding) + " (force=True overwrites it)")
        if problems:
            raise DeviceRefused("; ".join(problems))

    def _signatures(self, path: str, *, block: bool) -> list[Signature]:
        found = read_signatures(path)
        if block:
            result = self.commands.run(["blkid", "-p", "-o", "export", path], check=False)
            if result.returncode == 0:
                kinds = {s.kind for s in found}
                found += [s for s in parse_blkid_export(result.stdout) if s.kind not in kinds]
            elif result.returncode != 2:  # 2: blkid found nothing
                raise DeviceRefused(
                    f"{path}: blkid could not probe it (exit code {result.returncode}): "
                    f"{result.stderr.strip()}"
                )
        return found

    # creating and growing

    def create(
        self,
        name: str,
        layout: Layout | str,
        devices_or_groups: DeviceGroups,
        force: bool = False,
        properties: Mapping[str, str] | None = None,
        mountpoint: str | None = None,
    ) -> Result:
        """Create pool ``name``.  An existing pool whose groups include every requested
        group, of the same layout, is left alone; any other existing pool is an error.
        ``properties`` are pool properties (``zpool create -o``), applied at creation."""
        groups = normalize_groups(layout, devices_or_groups)
        layout = Layout(layout)
        if self.exists(name):
            return self._same_pool(self.status(name), layout, groups)
        devices = [d for group in groups for d in group]
        self.check_devices(devices, force=force)
        argv = ["create"]
        if force:
            argv.append("-f")
        for key, value in (properties or {}).items():
            argv += ["-o", f"{key}={value}"]
        if mountpoint is not None:
            argv += ["-m", mountpoint]
        argv += [name, *vdev_spec(layout, groups)]
        self.commands.zpool(*argv)
        log.info(
            "event=pool_created pool=%s layout=%s groups=%d devices=%d",
            name,
            layout,
            len(groups),
            len(devices),
        )
        return Result(True, f"pool '{name}' created: {layout}, {self._groups_phrase(groups)}")

    @staticmethod
    def _groups_phrase(groups: Sequence[Sequence[str]]) -> str:
        if all(len(g) == 1 for g in groups):
            return f"{len(groups)} device(s)"
        return f"{len(groups)} group(s) of {len(groups[0])} devices"

    def _same_pool(self, status: PoolStatus, layout: Layout, groups: list[list[str]]) -> Result:
        existing = {_group_key(members) for members in status.group_members()}
        wanted = [_group_key(group) for group in groups]
        if status.layout != layout.value or any(key not in existing for key in wanted):
            raise LayoutError(
                f"pool '{status.name}' exists and does not match the request: it is "
                f"{status.layout} ({_describe_groups(status)}); requested {layout} "
                f"({'; '.join(', '.join(g) for g in groups)}). expand adds groups of the "
                "same layout; another layout needs a new pool"
            )
        extra = len(existing) - len(set(wanted))
        more = f" (and {extra} more group(s) added since)" if extra else ""
        return Result(False, f"pool '{status.name}' exists with this layout{more}")

    def expand(
        self,
        name: str,
        layout: Layout | str,
        devices_or_groups: DeviceGroups,
        force: bool = False,
    ) -> Result:
        """Add devices (stripe) or whole groups (mirror, raidz) of the pool's own layout.
        Groups already in the pool are skipped; a layout other than the pool's is refused."""
        groups = normalize_groups(layout, devices_or_groups)
        layout = Layout(layout)
        status = self.status(name)
        if status.layout != layout.value:
            if status.layout == "mixed":
                why = "the pool already mixes layouts; fix it before growing it"
            else:
                why = (
                    "a pool is only as redundant as its weakest group, and zpool refuses a "
                    "mismatched replication level"
                )
            raise LayoutError(
                f"pool '{name}' is {status.layout} ({_describe_groups(status)}); adding "
                f"{layout} would mix layouts: {why}"
            )
        existing = {
            _group_key(members): group
            for members, group in zip(status.group_members(), status.groups, strict=True)
        }
        in_pool = {resolve_device(leaf.path): leaf for leaf in status.leaves()}
        new_groups = []
        for group in groups:
            key = _group_key(group)
            if key in existing:
                continue
            inside = [d for d in group if resolve_device(d) in in_pool]
            if inside:
                raise DeviceRefused(
                    f"{', '.join(inside)}: already in pool '{name}' but not as this group "
                    f"({_describe_groups(status)}); a group is added whole"
                )
            new_groups.append(group)
        if not new_groups:
            return Result(False, f"pool '{name}' already has these devices")
        if layout is not Layout.STRIPE:
            widths = {len(g.members()) for g in status.groups}
            if widths and len(new_groups[0]) not in widths:
                raise LayoutError(
                    f"pool '{name}' has {layout} groups of {min(widths)} devices; a group of "
                    f"{len(new_groups[0])} would give it a mismatched replication level"
                )
        self.check_devices([d for g in new_groups for d in g], force=force)
        argv = ["add", *(["-f"] if force else []), name, *vdev_spec(layout, new_groups)]
        self.commands.zpool(*argv)
        log.info("event=pool_expanded pool=%s layout=%s groups=%d", name, layout, len(new_groups))
        return Result(True, f"pool '{name}' grew by {self._groups_phrase(new_groups)}")

    # devices

    def _leaf(self, status: PoolStatus, device: str) -> Vdev:
        leaf = status.find(device)
        if leaf is None:
            raise DeviceNotFound(
                f"pool '{status.name}' has no device {device} "
                f"(it has {', '.join(v.path for v in status.leaves())})"
            )
        return leaf

    def replace(
        self,
        name: str,
        old_device: str,
        new_device: str,
        force: bool = False,
        *,
        wait: bool = False,
        timeout: float = 24 * 3600.0,
        interval: float = 1.0,
        on_progress: Callable[[ResilverProgress], None] | None = None,
    ) -> Result:
        """Replace ``old_device`` by ``new_device``.  Done or under way already: no change.

        Kernel ZFS returns at once and resilvers in the background; zfs-fuse's ``zpool
        replace`` returns only when the resilver is over.  Either way ``on_progress`` sees
        the progress every ``interval`` seconds while the command runs, and with ``wait``
        until the resilver ends.  ``timeout`` bounds the whole call."""
        status = self.status(name)
        old = status.find(old_device)
        new = status.find(new_device)
        if old is not None and new is not None and old is new:
            if old.state == "ONLINE":
                return Result(False, f"{old_device} is already in pool '{name}' and online")
            argv = ["replace", *(["-f"] if force else []), name, old.name]
            message = f"{old_device} of pool '{name}' was rebuilt in place"
        elif old is None:
            if new is not None:
                return Result(False, f"{new_device} already replaced {old_device} in pool '{name}'")
            raise DeviceNotFound(
                f"pool '{name}' has neither {old_device} nor {new_device} "
                f"(it has {', '.join(v.path for v in status.leaves())})"
            )
        elif new is not None:
            parent = status.parent_of(old)
            if parent is not None and parent.kind == "replacing" and new in parent.children:
                progress = resilver_progress_of(status)
                return Result(
                    False,
                    f"{old_device} is being replaced by {new_device} in pool '{name}' "
                    f"({progress.percent if progress.percent is not None else '?'}% done)",
                )
            raise DeviceRefused(f"{new_device} is already in pool '{name}'")
        else:
            self.check_devices([_device_arg(new_device)], force=force)
            argv = [
                "replace",
                *(["-f"] if force else []),
                name,
                old.name,
                _device_arg(new_device),
            ]
            message = f"{old_device} of pool '{name}' was replaced by {new_device}"
        deadline = time.monotonic() + timeout
        running = self.commands.spawn(
            (self.commands.zpool_bin, *argv), timeout=timeout, what="zpool"
        )
        while not running.done(wait=interval):
            if on_progress is not None:
                on_progress(self.resilver_progress(name))
        running.result()
        log.info("event=device_replaced pool=%s old=%s new=%s", name, old_device, new_device)
        if wait:
            left = max(0.0, deadline - time.monotonic())
            self.wait_resilver(name, timeout=left, interval=interval, on_progress=on_progress)
        elif on_progress is not None:
            on_progress(self.resilver_progress(name))
        return Result(True, message)

    def offline(self, name: str, device: str, temporary: bool = False) -> Result:
        leaf = self._leaf(self.status(name), device)
        if leaf.state == "OFFLINE":
            return Result(False, f"{device} of pool '{name}' is already offline")
        self.commands.zpool("offline", *(["-t"] if temporary else []), name, leaf.name)
        log.info("event=device_offline pool=%s device=%s", name, leaf.path)
        return Result(True, f"{device} of pool '{name}' is offline")

    def online(self, name: str, device: str, *, timeout: float = 24 * 3600.0) -> Result:
        """Bring ``device`` back.  zfs-fuse's ``zpool online`` returns only once the device
        has been resilvered, hence the long ``timeout``."""
        leaf = self._leaf(self.status(name), device)
        if leaf.state == "ONLINE":
            return Result(False, f"{device} of pool '{name}' is already online")
        self.commands.zpool("online", name, leaf.name, timeout=timeout)
        after = self._leaf(self.status(name), device)
        log.info("event=device_online pool=%s device=%s state=%s", name, leaf.path, after.state)
        if after.state != "ONLINE":
            raise DeviceRefused(
                f"{device} of pool '{name}' is {after.state} after zpool online "
                f"({after.note or 'no reason given'})"
            )
        return Result(True, f"{device} of pool '{name}' is online")

    # whole pools

    def export(self, name: str, force: bool = False) -> Result:
        if not self.exists(name):
            return Result(False, f"pool '{name}' is not imported")
        os.sync()
        self._zpool_retry_busy("export", *(["-f"] if force else []), name)
        log.info("event=pool_exported pool=%s", name)
        return Result(True, f"pool '{name}' exported")

    def import_(
        self, name: str, search_dirs: Sequence[str] | None = None, force: bool = False
    ) -> Result:
        """Import pool ``name``, looking for its devices in ``search_dirs`` (default: the
        ``zpool`` default, ``/dev``).  Files as devices need their directory given."""
        if self.exists(name):
            return Result(False, f"pool '{name}' is already imported")
        argv = ["import"]
        for directory in search_dirs or ():
            argv += ["-d", os.fspath(directory)]
        if force:
            argv.append("-f")
        self.commands.zpool(*argv, name)
        log.info("event=pool_imported pool=%s", name)
        return Result(True, f"pool '{name}' imported")

    def replicas(self, name: str, in_use: InUse = None) -> list[str]:
        """Datasets under the pool's root (every one may hold a replica), plus those
        ``in_use`` names (a list, or a callable given the pool name) that are in the pool."""
        found = [d for d in self.commands.datasets(name) if d != name]
        named = in_use(name) if callable(in_use) else (in_use or ())
        for dataset in named:
            if (dataset == name or dataset.startswith(name + "/")) and dataset not in found:
                found.append(dataset)
        return found

    def destroy(self, name: str, force: bool = False, in_use: InUse = None) -> Result:
        """Destroy the pool unless a replica lives there (any dataset under the root, or
        one ``in_use`` names); ``force`` destroys it anyway, replicas and all."""
        if not self.exists(name):
            return Result(False, f"pool '{name}' does not exist")
        replicas = self.replicas(name, in_use)
        if replicas and not force:
            shown = ", ".join(replicas[:5]) + (
                f" and {len(replicas) - 5} more" if len(replicas) > 5 else ""
            )
            raise PoolInUse(
                f"pool '{name}' holds {len(replicas)} dataset(s) that may be replicas: "
                f"{shown}; move or delete them, or destroy with force=True"
            )
        os.sync()
        # zfs-fuse is safer unmounting before the pool goes (deepest first)
        for dataset in reversed(self.commands.datasets(name)):
            if self.commands.get_properties(dataset, "mounted").get("mounted") == "yes":
                self.commands.zfs("unmount", *(["-f"] if force else []), dataset)
        self._zpool_retry_busy("destroy", *(["-f"] if force else []), name)
        log.info("event=pool_destroyed pool=%s datasets=%d", name, len(replicas))
        return Result(True, f"pool '{name}' destroyed")


__all__ = [
    "DeviceNotFound",
    "DeviceRefused",
    "Layout",
    "LayoutError",
    "MIN_DEVICE_BYTES",
    "MIN_GROUP_DEVICES",
    "PoolError",
    "PoolInUse",
    "PoolNotFound",
    "PoolStatus",
    "Pools",
    "Result",
    "ResilverProgress",
    "ResilverTimeout",
    "ScanInfo",
    "ScanState",
    "Signature",
    "Vdev",
    "normalize_groups",
    "parse_blkid_export",
    "parse_label_nvlist",
    "parse_scan",
    "parse_status",
    "read_signatures",
    "resilver_progress_of",
    "resolve_device",
    "vdev_spec",
]
