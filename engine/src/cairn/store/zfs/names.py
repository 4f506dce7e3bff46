"""Names of the ZFS store: volume and snapshot names as ZFS dataset and snapshot names.

Cairn names (``cairn.store.embedded.NAME_RE``: letters, digits and ``. _ : + -``) are
almost ZFS names; only ``+`` is not allowed by ZFS.  A name is encoded with ``:`` as the
escape character (``:`` becomes ``::`` and ``+`` becomes ``:p``), so the common names
(``pvc-1234``, ``vol_a.1``) are the dataset names unchanged and decoding is exact.

A ZFS snapshot of a volume is named ``<encoded name>.<owner>``, ``owner`` being the first 8
hex digits of the UUID of the volume that took it.  The suffix keeps snapshots of an
origin and of its clone apart when ``zfs promote`` moves the origin's snapshots to the
clone (force deletion of an origin), and tells a volume's own snapshots from those it
inherited that way.
"""

from __future__ import annotations

import os
import re
import uuid as uuidlib

from cairn.blockdev import StoreError
from cairn.store.embedded import NAME_RE

#: ZFS refuses full names (``pool/a/b@snap``) of 256 characters or more.
MAX_ZFS_NAME = 255
#: Datasets being created (by clone or create) start with this and are renamed into place
#: when complete; leftovers of a process that died are destroyed when a pool is opened.
TMP_PREFIX = "_new-"
#: Read-only clones through which a process reads a snapshot (zfs-fuse has no
#: ``.zfs/snapshot`` directory); destroyed with the view, or when a pool is opened after
#: the process died.
VIEW_PREFIX = "_view-"
_TMP_RE = re.compile(r"^_(?:new|view)-(\d+)-[0-9a-f]+$")
_OWNER_LEN = 8


def check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise StoreError(
            f"invalid {kind} name {name!r}: use 1-128 letters, digits and . _ : + - "
            "(not starting with a punctuation mark)"
        )


def encode(name: str) -> str:
    """The ZFS name component for a Cairn name."""
    return name.replace(":", "::").replace("+", ":p")


def decode(component: str) -> str | None:
    """The Cairn name of a ZFS name component, or None if it is not an encoded name."""
    out = []
    i = 0
    while i < len(component):
        c = component[i]
        if c == ":":
            nxt = component[i + 1 : i + 2]
            if nxt == ":":
                out.append(":")
            elif nxt == "p":
                out.append("+")
            else:
                return None
            i += 2
            continue
        out.append(c)
        i += 1
    name = "".join(out)
    return name if NAME_RE.fullmatch(name) else None


def owner_tag(volume_uuid: str) -> str:
    return uuidlib.UUID(volume_uuid).hex[:_OWNER_LEN]


def snapshot_component(name: str, volume_uuid: str) -> str:
    """The ZFS snapshot name (after the ``@``) of snapshot ``name`` of a volume."""
    return f"{encode(name)}.{owner_tag(volume_uuid)}"


def parse_snapshot_component(component: str) -> tuple[str, str] | None:
    """(Cairn snapshot name, owner tag) of a ZFS snapshot name, or None for snapshots
    that the store did not make."""
    if len(component) <= _OWNER_LEN + 1 or component[-_OWNER_LEN - 1] != ".":
        return None
    owner = component[-_OWNER_LEN:]
    if not re.fullmatch(r"[0-9a-f]+", owner):
        return None
    name = decode(component[: -_OWNER_LEN - 1])
    return None if name is None else (name, owner)


def check_length(kind: str, name: str, full: str) -> None:
    if len(full) > MAX_ZFS_NAME:
        raise StoreError(
            f"{kind} name {name!r} is too long for ZFS: {full!r} has {len(full)} characters, "
            f"ZFS allows {MAX_ZFS_NAME}"
        )


def tmp_component() -> str:
    return f"{TMP_PREFIX}{os.getpid()}-{uuidlib.uuid4().hex[:12]}"


def view_component() -> str:
    return f"{VIEW_PREFIX}{os.getpid()}-{uuidlib.uuid4().hex[:12]}"


def is_view(name: str) -> bool:
    """Whether a dataset (name or last component) is a clone a snapshot is read through."""
    return name.rsplit("/", 1)[-1].startswith(VIEW_PREFIX)


def tmp_owner_pid(component: str) -> int | None:
    """The pid of the process that is building (or reading through) a dataset named
    ``component``, or None if it is not such a name."""
    m = _TMP_RE.match(component)
    return int(m.group(1)) if m else None


def root_dataset(zpool_or_dataset: str) -> str:
    """The root dataset of a ZFS store: ``tank`` means ``tank/cairn``; a dataset name
    (``tank/x/y``) is used as given."""
    name = str(zpool_or_dataset).strip().strip("/")
    if not name or "@" in name or "//" in name:
        raise StoreError(f"invalid ZFS pool or dataset name {zpool_or_dataset!r}")
    return name if "/" in name else f"{name}/cairn"
