"""``cairn zpool ...``: this host's ZFS pools through :mod:`cairn.zfs.pools` (docs/zfs.md).

The collection's ``zpool`` module runs these commands with ``--json`` on the managed host,
so the pool logic (idempotence, device checks after ``realpath``, layout rules) lives in
one place, the engine.  Every command prints one JSON document with ``--json``:

* ``status``: the pool (:func:`status_doc`), or ``{"name", "imported": false}`` (exit 3);
* the others: ``changed``, ``check``, ``message``, ``commands`` (the ``zpool``/``zfs``
  commands run, or that would run with ``--check``), ``before`` and ``after`` (the pool's
  layout, groups and the requested properties, see :func:`view`) and ``pool``;
* a refusal or failure: ``error``, ``kind`` and ``exit_code``.

``--check`` runs the very same logic with the mutating ``zpool``/``zfs`` commands recorded
instead of run: what is read (status, device signatures) is real, so a check reports the
same refusals and the same ``changed`` as the real run would.

Exit codes: 0 done (changed or not); 1 failed (a ``zpool`` command, a timeout); 2 bad input
(argparse, a layout that is malformed or contradicts the pool); 3 no such pool or device;
4 refused because it would lose data (a device that holds something without ``--force``,
a pool with datasets without ``--force``, ``destroy`` without ``--confirm NAME``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from cairn.zfs.commands import CommandResult, RunningCommand, ZfsCommands, ZfsError
from cairn.zfs.pools import (
    DeviceNotFound,
    DeviceRefused,
    Layout,
    LayoutError,
    PoolError,
    PoolInUse,
    PoolNotFound,
    Pools,
    PoolStatus,
    ResilverTimeout,
    Result,
    Vdev,
    normalize_groups,
    resilver_progress_of,
    resolve_device,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED = range(5)

#: ``zpool``/``zfs`` subcommands that change something; ``--check`` records them instead.
MUTATING_ZPOOL = frozenset(
    {"create", "add", "replace", "attach", "detach", "offline", "online", "export", "import"}
    | {"destroy", "set", "clear", "scrub", "remove"}
)
MUTATING_ZFS = frozenset({"create", "destroy", "set", "mount", "unmount", "umount", "rename"})


class Refusal(Exception):
    """A request the CLI refuses before asking ZFS, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Finished(RunningCommand):
    """A command ``--check`` did not start: done at once, exit code 0."""

    def __init__(self, argv: tuple[str, ...]) -> None:
        self.argv = argv
        self.what = argv[0]
        self.limit = 0.0

    def done(self, wait: float = 0.0) -> bool:
        return True

    def result(self, *, check: bool = True) -> CommandResult:
        return CommandResult(self.argv, 0, "", "")


class RecordingCommands(ZfsCommands):
    """:class:`ZfsCommands` that remembers the mutating commands; with ``dry_run`` it
    only remembers them (exit code 0, no output) and runs the reading ones."""

    def __init__(self, *, dry_run: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dry_run = dry_run
        self.recorded: list[list[str]] = []

    def _mutates(self, argv: Sequence[str]) -> bool:
        if len(argv) < 2:
            return False
        if argv[0] == self.zpool_bin:
            return argv[1] in MUTATING_ZPOOL
        if argv[0] == self.zfs_bin:
            return argv[1] in MUTATING_ZFS
        return False

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        what: str | None = None,
    ) -> CommandResult:
        if self._mutates(argv):
            self.recorded.append(list(argv))
            if self.dry_run:
                return CommandResult(tuple(argv), 0, "", "")
        return super().run(argv, check=check, timeout=timeout, what=what)

    def spawn(
        self, argv: Sequence[str], *, timeout: float | None = None, what: str | None = None
    ) -> RunningCommand:
        if self._mutates(argv):
            self.recorded.append(list(argv))
            if self.dry_run:
                return _Finished(tuple(argv))
        return super().spawn(argv, timeout=timeout, what=what)


# -- documents ---------------------------------------------------------------------------------


def _vdev_doc(vdev: Vdev) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": vdev.name,
        "type": vdev.kind,
        "state": vdev.state,
        "read_errors": vdev.read_errors,
        "write_errors": vdev.write_errors,
        "checksum_errors": vdev.checksum_errors,
    }
    if vdev.is_leaf:
        doc["path"] = vdev.path
    if vdev.note:
        doc["note"] = vdev.note
    if vdev.children:
        doc["children"] = [_vdev_doc(child) for child in vdev.children]
    return doc


def _groups(status: PoolStatus) -> list[dict[str, Any]]:
    return [
        {"layout": group.layout, "devices": [m.path for m in group.members()]}
        for group in status.groups
    ]


def status_doc(status: PoolStatus, properties: Mapping[str, str]) -> dict[str, Any]:
    """The whole pool: health, layout, groups, device tree, scan, resilver, sizes."""
    progress = resilver_progress_of(status)
    return {
        "name": status.name,
        "imported": True,
        "health": status.state,
        "layout": status.layout,
        "groups": _groups(status),
        "vdevs": [_vdev_doc(group) for group in status.groups],
        "sections": {
            name: [_vdev_doc(vdev) for vdev in vdevs] for name, vdevs in status.sections.items()
        },
        "devices": [leaf.path for leaf in status.leaves()],
        "scan": {k: (v.value if k == "state" else v) for k, v in asdict(status.scan).items()},
        "resilver": {
            "in_progress": progress.in_progress,
            "percent": progress.percent,
            "remaining": progress.remaining,
            "replacing": [list(pair) for pair in progress.replacing],
        },
        "size": status.size,
        "allocated": status.allocated,
        "free": status.free,
        "sizes_exact": status.sizes_exact,
        "status": status.status,
        "action": status.action,
        "errors": status.errors,
        "properties": dict(properties),
    }


def view(doc: Mapping[str, Any] | None, keys: Sequence[str] = ()) -> dict[str, Any]:
    """What a diff shows of a pool: imported or not, layout, groups, the named properties."""
    if not doc or not doc.get("imported"):
        return {"imported": False}
    if "layout" not in doc:  # an import under --check: the layout is known after it
        return {"imported": True}
    props = doc.get("properties") or {}
    return {
        "imported": True,
        "layout": doc["layout"],
        "groups": [dict(g) for g in doc["groups"]],
        "properties": {k: props.get(k) for k in keys},
    }


# -- reading -----------------------------------------------------------------------------------


def parse_properties(text: str, *, tabbed: bool) -> dict[str, str]:
    """``zpool get`` output: ``-H -o property,value`` (tab separated) or the table that
    zfs-fuse prints (NAME PROPERTY VALUE SOURCE; a value may hold spaces)."""
    found = {}
    for line in text.splitlines():
        if tabbed:
            prop, sep, value = line.partition("\t")
            if sep:
                found[prop] = value
            continue
        fields = line.split()
        if len(fields) < 4 or fields[:2] == ["NAME", "PROPERTY"]:
            continue
        found[fields[1]] = " ".join(fields[2:-1])
    return found


def get_properties(
    commands: ZfsCommands, name: str, keys: Sequence[str] = ("all",)
) -> dict[str, str]:
    which = ",".join(keys) or "all"
    result = commands.zpool("get", "-H", "-o", "property,value", which, name, check=False)
    if result.returncode == 0:
        return parse_properties(result.stdout, tabbed=True)
    if "invalid property '-H'" in result.stderr or "invalid option" in result.stderr:
        return parse_properties(commands.zpool("get", which, name).stdout, tabbed=False)
    raise ZfsError(
        "zpool get failed", argv=result.argv, returncode=result.returncode, stderr=result.stderr
    )


def read_pool(pools: Pools, name: str) -> dict[str, Any] | None:
    """The pool's :func:`status_doc`, or None when it is not imported."""
    try:
        status = pools.status(name)
    except PoolNotFound:
        return None
    return status_doc(status, get_properties(pools.commands, name))


def importable(commands: ZfsCommands, search_dirs: Sequence[str]) -> list[str]:
    """Names of the pools ``zpool import`` finds in ``search_dirs`` (default ``/dev``)."""
    argv = [commands.zpool_bin, "import"]
    for directory in search_dirs:
        argv += ["-d", directory]
    # only lists what could be imported: run even under --check, and not recorded
    result = ZfsCommands.run(commands, argv, check=False, what="zpool import (list)")
    return [
        line.split(":", 1)[1].strip()
        for line in result.stdout.splitlines()
        if line.strip().startswith("pool:")
    ]


# -- predictions for --check -------------------------------------------------------------------


def _predict_groups(
    before: Mapping[str, Any] | None, layout: str, groups: Sequence[Sequence[str]]
) -> list[dict[str, Any]]:
    current = [dict(g) for g in (before or {}).get("groups", [])]
    known = {frozenset(resolve_device(d) for d in g["devices"]) for g in current}
    kind = layout if layout != Layout.STRIPE.value else "stripe"
    for group in groups:
        if frozenset(resolve_device(d) for d in group) not in known:
            current.append({"layout": kind, "devices": list(group)})
    return current


def _predicted(
    before: Mapping[str, Any] | None,
    *,
    layout: str | None = None,
    groups: Sequence[Sequence[str]] = (),
    properties: Mapping[str, str] | None = None,
    replace: tuple[str, str] | None = None,
    imported: bool | None = None,
) -> dict[str, Any]:
    if imported is False:
        return {"name": (before or {}).get("name"), "imported": False}
    doc: dict[str, Any] = {"imported": True, "layout": "none", "groups": [], "properties": {}}
    doc.update({k: v for k, v in (before or {}).items() if k in ("name", "layout", "groups")})
    doc["properties"] = dict((before or {}).get("properties") or {})
    if layout is not None:
        doc["groups"] = _predict_groups(before, layout, groups)
        layouts = {g["layout"] for g in doc["groups"]}
        doc["layout"] = layouts.pop() if len(layouts) == 1 else "mixed"
    if properties:
        doc["properties"].update(properties)
    if replace is not None:
        old, new = resolve_device(replace[0]), replace[1]
        doc["groups"] = [
            {
                "layout": g["layout"],
                "devices": [new if resolve_device(d) == old else d for d in g["devices"]],
            }
            for g in doc["groups"]
        ]
    return doc


# -- the commands ------------------------------------------------------------------------------


def _property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value:
        raise argparse.ArgumentTypeError(f"a property is KEY=VALUE, not {text!r}")
    return key.strip(), value


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument(
        "--check",
        action="store_true",
        help="report what would change (the same checks as a real run) without changing it",
    )
    p.add_argument("--zpool-bin", default="zpool", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--zfs-bin", default="zfs", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds one zpool/zfs command may take (replace --wait: the whole wait)",
    )
    return p


def _layout_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--layout",
        required=required,
        choices=[layout.value for layout in Layout],
        help="stripe: each device a group; mirror, raidz1, raidz2: groups of devices",
    )
    p.add_argument(
        "--vdev",
        nargs="+",
        action="extend",
        default=[],
        metavar="DEV",
        help="devices: one group (mirror, raidz) or one group each (stripe)",
    )
    p.add_argument(
        "--group",
        nargs="+",
        action="append",
        default=[],
        metavar="DEV",
        help="the devices of one group; repeat --group for several groups",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="use devices that hold data (a filesystem, a partition table, an exported "
        "pool's label): overwrites it",
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``zpool`` and its actions to the ``cairn`` command's subparsers (``cairn``'s
    main hands the parsed arguments to :func:`run`)."""
    zpool: argparse.ArgumentParser = sub.add_parser(
        "zpool",
        help="this host's ZFS pools: create, grow, replace disks, export, import, destroy",
        description="Create, grow, repair, move and destroy this host's ZFS pools, "
        "idempotently (docs/zfs.md). Exit codes: 0 done, 1 failed, 2 bad input, "
        "3 no such pool or device, 4 refused because it would lose data.",
    )
    zpool.set_defaults(zpool_command=True)
    zsub = zpool.add_subparsers(
        dest="action",
        metavar="ACTION",
        required=True,
    )
    common = _common()

    status = zsub.add_parser(
        "status", parents=[common], help="a pool's health, layout, devices, resilver, sizes"
    )
    status.add_argument("name")

    create = zsub.add_parser(
        "create",
        parents=[common],
        help="create a pool (no change when it exists with these groups)",
        description="Create pool NAME. An existing pool of this layout that has every group "
        "given is left alone, and its properties set to the --property values; an existing "
        "pool that differs is refused (exit 2).",
    )
    create.add_argument("name")
    _layout_args(create, required=True)
    create.add_argument(
        "--property", action="append", type=_property, default=[], metavar="KEY=VALUE"
    )
    create.add_argument("--mountpoint", default=None, help="where the root dataset is mounted")

    add = zsub.add_parser(
        "add",
        parents=[common],
        help="add devices (stripe) or groups of the pool's layout; those in the pool are skipped",
    )
    add.add_argument("name")
    _layout_args(add, required=True)

    replace = zsub.add_parser(
        "replace",
        parents=[common],
        help="replace device OLD by NEW (no change when done or under way)",
    )
    replace.add_argument("name")
    replace.add_argument("old")
    replace.add_argument("new")
    replace.add_argument("--force", action="store_true", help="use NEW even if it holds data")
    replace.add_argument(
        "--wait", action="store_true", help="return when the resilver has finished"
    )

    setp = zsub.add_parser("set", parents=[common], help="set pool properties that differ")
    setp.add_argument("name")
    setp.add_argument(
        "--property", action="append", type=_property, required=True, metavar="KEY=VALUE"
    )

    export = zsub.add_parser("export", parents=[common], help="export a pool (keep its data)")
    export.add_argument("name")
    export.add_argument("--force", action="store_true", help="zpool export -f")

    imp = zsub.add_parser("import", parents=[common], help="import an exported pool")
    imp.add_argument("name")
    imp.add_argument(
        "--dir",
        action="append",
        default=[],
        metavar="DIR",
        help="where to look for its devices (default /dev); file devices need their directory",
    )
    imp.add_argument("--force", action="store_true", help="zpool import -f")

    destroy = zsub.add_parser(
        "destroy",
        parents=[common],
        help="destroy a pool and all its data (needs --confirm NAME)",
    )
    destroy.add_argument("name")
    destroy.add_argument(
        "--confirm", default=None, metavar="NAME", help="the pool's name again: destroy it"
    )
    destroy.add_argument(
        "--force", action="store_true", help="destroy it even though datasets live in it"
    )
    for action, parser in zsub.choices.items():  # known while the action parser runs
        parser.set_defaults(action=action)
    return zpool


def request_groups(args: argparse.Namespace) -> list[list[str]]:
    """The groups of ``--vdev``/``--group``, validated by the engine's layout rules."""
    if args.vdev and args.group:
        raise LayoutError("give --vdev (one group) or --group (each group), not both")
    devices_or_groups: object = args.group or args.vdev
    return normalize_groups(args.layout, devices_or_groups)


def _set_properties(
    pools: Pools, name: str, wanted: Mapping[str, str], current: Mapping[str, str]
) -> list[str]:
    changed = []
    for key, value in wanted.items():
        if current.get(key) != value:
            pools.commands.zpool("set", f"{key}={value}", name)
            changed.append(key)
    return changed


def execute(args: argparse.Namespace, pools: Pools) -> dict[str, Any]:
    """Run one action; the JSON document it prints (without exit code)."""
    commands = pools.commands
    name = args.name
    props: dict[str, str] = dict(getattr(args, "property", None) or [])
    keys = list(props)
    before = read_pool(pools, name)
    predicted: dict[str, Any] | None = None
    result: Result
    if args.action == "create":
        groups = request_groups(args)
        result = pools.create(
            name,
            args.layout,
            groups,
            force=args.force,
            properties=props if before is None else None,
            mountpoint=args.mountpoint,
        )
        if before is not None and props:
            changed = _set_properties(pools, name, props, before["properties"])
            if changed:
                result = Result(True, f"{result.message}; set {', '.join(changed)}")
        predicted = _predicted(before, layout=args.layout, groups=groups, properties=props)
    elif args.action == "add":
        groups = request_groups(args)
        if before is None:
            raise PoolNotFound(f"pool '{name}' is not imported")
        result = pools.expand(name, args.layout, groups, force=args.force)
        predicted = _predicted(before, layout=args.layout, groups=groups)
    elif args.action == "replace":
        result = pools.replace(
            name,
            args.old,
            args.new,
            force=args.force,
            wait=args.wait and not args.check,
            timeout=args.timeout if args.wait else 24 * 3600.0,
        )
        predicted = _predicted(before, replace=(args.old, args.new))
    elif args.action == "set":
        if before is None:
            raise PoolNotFound(f"pool '{name}' is not imported")
        changed = _set_properties(pools, name, props, before["properties"])
        what = f"set {', '.join(changed)}" if changed else "properties already set"
        result = Result(bool(changed), f"pool '{name}': {what}")
        predicted = _predicted(before, properties=props)
    elif args.action == "export":
        result = pools.export(name, force=args.force)
        predicted = _predicted(before, imported=False)
    elif args.action == "import":
        if before is None and name not in importable(commands, args.dir):
            where = ", ".join(args.dir) or "/dev"
            raise PoolNotFound(f"pool '{name}' is neither imported nor found in {where}")
        result = pools.import_(name, search_dirs=args.dir, force=args.force)
        predicted = before or {"name": name, "imported": True}
    elif args.action == "destroy":
        if before is not None and args.confirm != name:
            raise Refusal(
                EXIT_REFUSED,
                f"destroying pool '{name}' loses all its data: add --confirm {name} to do it",
            )
        result = pools.destroy(name, force=args.force)
        predicted = _predicted(before, imported=False)
    else:  # pragma: no cover - argparse keeps to the actions above
        raise Refusal(EXIT_USAGE, f"unknown action {args.action}")
    recorded = commands.recorded if isinstance(commands, RecordingCommands) else []
    if args.check:
        after_doc = predicted if result.changed else before
    else:
        after_doc = read_pool(pools, name) if result.changed else before
    return {
        "changed": result.changed,
        "check": bool(args.check),
        "message": result.message,
        "commands": recorded,
        "before": view(before, keys),
        "after": view(after_doc, keys),
        "pool": after_doc if after_doc and after_doc.get("imported") else None,
    }


def _exit_code(error: Exception) -> int:
    if isinstance(error, Refusal):
        return error.code
    if isinstance(error, LayoutError):
        return EXIT_USAGE
    if isinstance(error, PoolNotFound | DeviceNotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, DeviceRefused | PoolInUse):
        return EXIT_REFUSED
    return EXIT_FAILED  # ZfsError, ResilverTimeout, other PoolError


def _print_text(doc: Mapping[str, Any]) -> None:
    if "message" in doc:
        would = doc["check"] and doc["changed"]
        print(("would change: " if would else "") + doc["message"])
        for argv in doc["commands"]:
            print(("would run: " if doc["check"] else "ran: ") + " ".join(argv))
        return
    if not doc.get("imported"):
        print(f"pool '{doc['name']}' is not imported")
        return
    print(f"pool {doc['name']}: {doc['health']}, {doc['layout']}")
    for group in doc["groups"]:
        print(f"  {group['layout']}: {' '.join(group['devices'])}")
    resilver = doc["resilver"]
    if resilver["in_progress"]:
        print(f"  resilver: {resilver['percent']}% done, {resilver['remaining'] or '?'} to go")


def run(
    args: argparse.Namespace,
    make_pools: Callable[[RecordingCommands], Pools] | None = None,
) -> int:
    """``cairn zpool ACTION``: print the result and return the exit code."""
    commands = RecordingCommands(
        dry_run=bool(getattr(args, "check", False)),
        zpool=args.zpool_bin,
        zfs=args.zfs_bin,
        timeout=args.timeout,
    )
    pools = make_pools(commands) if make_pools is not None else Pools(commands)
    try:
        if args.action == "status":
            found = read_pool(pools, args.name)
            doc = found if found is not None else {"name": args.name, "imported": False}
            code = EXIT_OK if found is not None else EXIT_NOT_FOUND
        else:
            doc = execute(args, pools)
            code = EXIT_OK
    except (PoolError, ZfsError, Refusal, ResilverTimeout) as error:
        code = _exit_code(error)
        message = str(error)
        if args.json:
            print(json.dumps({"error": message, "kind": type(error).__name__, "exit_code": code}))
        print(f"cairn zpool {args.action}: {message}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_text(doc)
    return code


__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "RecordingCommands",
    "Refusal",
    "add_parser",
    "execute",
    "get_properties",
    "parse_properties",
    "run",
    "status_doc",
    "view",
]
