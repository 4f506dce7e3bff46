#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: zpool
short_description: Create, grow, repair, move and destroy a ZFS pool of a Cairn host
description:
  - Manages one ZFS pool on the managed host through the Cairn engine's C(cairn zpool)
    command (O(cairn_bin)), so the pool logic is the engine's (see C(docs/zfs.md)).
  - Creates a pool with a V(stripe), V(mirror), V(raidz1) or V(raidz2) layout of one or
    several groups, adds the groups it lacks, sets pool properties, replaces a disk,
    exports and imports it, and destroys it only when O(confirm_destroy=true).
  - Device paths are compared after resolving links, so C(/dev/disk/by-id/...) and
    C(/dev/sdb) name the same disk.
  - A device that holds something (a filesystem, a partition table, the label of an
    exported or destroyed pool) is refused unless O(force=true). A device of an imported
    pool is always refused.
  - Groups are only ever added; a group that is in the pool but not in the request stays.
    A request whose layout differs from the pool's fails, it never rebuilds a pool.
version_added: "0.1.0"
author:
  - Cairn developers (@cairn)
options:
  name:
    description: The ZFS pool's name.
    type: str
    required: true
  state:
    description:
      - V(present) creates the pool when it is not imported, adds the groups of O(vdevs) or
        O(groups) it lacks, sets O(properties) and does O(replace).
      - V(absent) destroys the pool and all its data; needs O(confirm_destroy=true).
      - V(exported) exports it (the data stays on its devices).
      - V(imported) imports an exported pool, looking for its devices in O(search_dirs),
        then sets O(properties).
    type: str
    choices: [present, absent, exported, imported]
    default: present
  layout:
    description:
      - The layout of O(vdevs). V(stripe) makes each device a group of its own.
      - Required with O(vdevs).
    type: str
    choices: [stripe, mirror, raidz1, raidz2]
  vdevs:
    description:
      - Devices (block devices, or files of at least 64 MiB given as absolute paths) that
        form one group of O(layout) (each its own group for V(stripe)).
    type: list
    elements: str
  groups:
    description:
      - Several groups, each with its own O(groups[].layout) and O(groups[].vdevs). All must
        have one layout and (except stripes) one width.
    type: list
    elements: dict
    suboptions:
      layout:
        description: The group's layout.
        type: str
        choices: [stripe, mirror, raidz1, raidz2]
        required: true
      vdevs:
        description: The group's devices.
        type: list
        elements: str
        required: true
  properties:
    description:
      - Pool properties (C(zpool set)), applied at creation and set whenever they differ.
      - C(true) and C(false) (YAML's C(on) and C(off)) are passed as V(on) and V(off).
    type: dict
    default: {}
  mountpoint:
    description: Where the pool's root dataset is mounted when the pool is created.
    type: path
  replace:
    description:
      - Replace device O(replace.old) with O(replace.new) (with O(state=present)). No change
        when the replacement is done or under way.
    type: dict
    suboptions:
      old:
        description: The device to replace (a path, or the GUID ZFS shows for a missing one).
        type: str
        required: true
      new:
        description: The new device.
        type: str
        required: true
  wait:
    description: After a replacement, wait until the resilver has finished.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait for the resilver with O(wait=true).
    type: int
    default: 3600
  search_dirs:
    description:
      - With O(state=imported), where to look for the pool's devices (default C(/dev)).
        Pools on files need the files' directory.
    type: list
    elements: path
    default: []
  force:
    description:
      - Use devices that hold data (overwrites it).
      - With O(state=absent), destroy the pool even though datasets (replicas) live in it.
      - With O(state=exported) or O(state=imported), C(zpool export -f) or C(zpool import -f).
    type: bool
    default: false
  confirm_destroy:
    description: Must be V(true) for O(state=absent) to destroy a pool that exists.
    type: bool
    default: false
  cairn_bin:
    description: The engine's C(cairn) command on the managed host.
    type: path
    default: /opt/cairn/venv/bin/cairn
notes:
  - Supports C(check_mode) (the engine runs every check and reports the C(zpool) commands it
    would run) and C(diff) (layout, groups and the requested properties).
  - zfs-fuse's C(zpool replace) returns only once the resilver is over; kernel ZFS resilvers
    in the background (use O(wait) or poll C(cairn zpool status NAME --json)).
seealso:
  - module: cairn.storage.pool
"""

EXAMPLES = r"""
- name: A mirror of two disks
  cairn.storage.zpool:
    name: tank
    layout: mirror
    vdevs: [/dev/disk/by-id/ata-A, /dev/disk/by-id/ata-B]
    properties:
      autoreplace: true

- name: Two raidz2 groups (a second run changes nothing; a third group added later is added)
  cairn.storage.zpool:
    name: tank
    groups:
      - {layout: raidz2, vdevs: [/dev/sdb, /dev/sdc, /dev/sdd, /dev/sde]}
      - {layout: raidz2, vdevs: [/dev/sdf, /dev/sdg, /dev/sdh, /dev/sdi]}

- name: Replace a failed disk and wait for the resilver
  cairn.storage.zpool:
    name: tank
    replace: {old: /dev/sdc, new: /dev/sdj}
    wait: true

- name: Move a pool to another host
  cairn.storage.zpool:
    name: tank
    state: exported

- name: Destroy a pool and everything in it
  cairn.storage.zpool:
    name: scratch
    state: absent
    confirm_destroy: true
    force: true
"""

RETURN = r"""
pool:
  description:
    - The pool as C(cairn zpool status --json) describes it after the task (health, layout,
      groups, device tree, scan, resilver, sizes, properties); empty when not imported.
    - In check mode, the pool as it is (the diff shows what would change).
  returned: always
  type: dict
  sample:
    name: tank
    health: ONLINE
    layout: mirror
    groups: [{layout: mirror, devices: [/dev/sdb, /dev/sdc]}]
    resilver: {in_progress: false, percent: null, remaining: null, replacing: []}
    properties: {autoreplace: "on"}
messages:
  description: What each step did or found already done.
  returned: always
  type: list
  elements: str
  sample: ["pool 'tank' created: mirror, 1 group(s) of 2 devices"]
commands:
  description: The C(zpool)/C(zfs) commands run (in check mode, that would run).
  returned: always
  type: list
  elements: list
  sample: [["zpool", "create", "tank", "mirror", "/dev/sdb", "/dev/sdc"]]
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

LAYOUTS = ["stripe", "mirror", "raidz1", "raidz2"]
EXIT_NOT_FOUND = 3
EXIT_MEANING = {
    1: "zpool failed",
    2: "bad input",
    3: "not found",
    4: "refused: it would lose data",
}


class Cairn(object):
    """Runs ``cairn zpool ACTION NAME ... --json`` and collects what the steps did."""

    def __init__(self, module):
        self.module = module
        self.bin = module.params["cairn_bin"]
        self.messages = []
        self.commands = []
        self.changed = False
        self.steps = []

    def call(self, action, *args, **kw):
        """The JSON document of one action; a refusal or failure ends the module."""
        argv = [self.bin, "zpool", action, self.module.params["name"]]
        argv.extend(args)
        argv.append("--json")
        if kw.get("check") and self.module.check_mode:
            argv.append("--check")
        rc, out, err = self.module.run_command(argv, environ_update={"LC_ALL": "C"})
        try:
            doc = json.loads(out)
        except ValueError:
            doc = None
        if rc == EXIT_NOT_FOUND and action == "status" and isinstance(doc, dict):
            return doc
        if rc != 0 or not isinstance(doc, dict):
            error = doc.get("error") if isinstance(doc, dict) else None
            if action == "add" and error and "already in pool" in error:
                error += (
                    ". Was a disk replaced? Declare the pool's devices as they are now "
                    "(vdevs or groups)"
                )
            self.module.fail_json(
                msg="cairn zpool %s %s: %s (exit %s, %s)"
                % (
                    action,
                    self.module.params["name"],
                    error or err.strip() or out.strip() or "no output",
                    rc,
                    EXIT_MEANING.get(rc, "error"),
                ),
                rc=rc,
                cmd=argv,
                stdout=out,
                stderr=err,
                messages=self.messages,
                commands=self.commands,
            )
        if "changed" in doc:
            self.steps.append(doc)
            self.changed = self.changed or doc["changed"]
            self.messages.append(doc.get("message", ""))
            self.commands.extend(doc.get("commands") or [])
        return doc


def prop_value(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def requested_groups(module):
    """(layout, [group, ...]) of ``vdevs`` or ``groups``; (None, []) when neither."""
    p = module.params
    if p["vdevs"]:
        if not p["layout"]:
            module.fail_json(msg="vdevs needs layout (one of %s)" % ", ".join(LAYOUTS))
        return p["layout"], [list(p["vdevs"])]
    if p["groups"]:
        layouts = sorted(set(g["layout"] for g in p["groups"]))
        if len(layouts) > 1:
            module.fail_json(
                msg="groups of one pool share one layout; got %s (a pool is only as "
                "redundant as its weakest group)" % ", ".join(layouts)
            )
        for group in p["groups"]:
            if not group["vdevs"]:
                module.fail_json(msg="each group needs vdevs")
        return layouts[0], [list(g["vdevs"]) for g in p["groups"]]
    return None, []


def group_args(layout, groups):
    args = ["--layout", layout]
    if layout == "stripe":
        args.append("--vdev")
        args.extend(d for g in groups for d in g)
        return args
    for group in groups:
        args.append("--group")
        args.extend(group)
    return args


def diff_view(doc, keys):
    """Layout, groups and the requested properties of a pool document (or a view)."""
    if not doc or not doc.get("imported"):
        return {"imported": False}
    view = {"imported": True}
    if "layout" in doc:
        view["layout"] = doc["layout"]
        view["groups"] = doc.get("groups") or []
    props = doc.get("properties") or {}
    view["properties"] = dict((k, props.get(k)) for k in keys)
    return view


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(
                type="str", choices=["present", "absent", "exported", "imported"], default="present"
            ),
            layout=dict(type="str", choices=LAYOUTS),
            vdevs=dict(type="list", elements="str"),
            groups=dict(
                type="list",
                elements="dict",
                options=dict(
                    layout=dict(type="str", choices=LAYOUTS, required=True),
                    vdevs=dict(type="list", elements="str", required=True),
                ),
            ),
            properties=dict(type="dict", default={}),
            mountpoint=dict(type="path"),
            replace=dict(
                type="dict",
                options=dict(
                    old=dict(type="str", required=True), new=dict(type="str", required=True)
                ),
            ),
            wait=dict(type="bool", default=False),
            wait_timeout=dict(type="int", default=3600),
            search_dirs=dict(type="list", elements="path", default=[]),
            force=dict(type="bool", default=False),
            confirm_destroy=dict(type="bool", default=False),
            cairn_bin=dict(type="path", default="/opt/cairn/venv/bin/cairn"),
        ),
        supports_check_mode=True,
        mutually_exclusive=[("vdevs", "groups")],
        required_by={"layout": ("vdevs",)},
    )
    p = module.params
    name = p["name"]
    if not os.path.isfile(p["cairn_bin"]) or not os.access(p["cairn_bin"], os.X_OK):
        module.fail_json(
            msg="cairn_bin %s is not an executable on this host: install the engine "
            "(cairn.storage's install role) or set cairn_bin to its cairn command" % p["cairn_bin"]
        )
    if p["state"] != "present":
        for option in ("vdevs", "groups", "replace"):
            if p[option]:
                module.fail_json(msg="%s is for state present, not %s" % (option, p["state"]))
    layout, groups = requested_groups(module)
    properties = dict((str(k), prop_value(v)) for k, v in p["properties"].items())
    prop_args = []
    for key in sorted(properties):
        prop_args.extend(["--property", "%s=%s" % (key, properties[key])])
    force = ["--force"] if p["force"] else []
    keys = sorted(properties)

    cairn = Cairn(module)
    first = cairn.call("status")

    if p["state"] == "present":
        if not first.get("imported"):
            if not groups:
                module.fail_json(
                    msg="pool %s is not imported; to create it give layout and vdevs (or "
                    "groups); to import an exported pool use state: imported" % name
                )
            extra = ["--mountpoint", p["mountpoint"]] if p["mountpoint"] else []
            cairn.call(
                "create", *(group_args(layout, groups) + prop_args + extra + force), check=True
            )
        else:
            if groups:
                cairn.call("add", *(group_args(layout, groups) + force), check=True)
            if properties:
                cairn.call("set", *prop_args, check=True)
        if p["replace"]:
            args = [p["replace"]["old"], p["replace"]["new"]] + force
            if p["wait"]:
                args += ["--wait", "--timeout", str(p["wait_timeout"])]
            cairn.call("replace", *args, check=True)
    elif p["state"] == "absent":
        if first.get("imported"):
            if not p["confirm_destroy"]:
                module.fail_json(
                    msg="state absent destroys pool %s and all its data: set confirm_destroy: "
                    "true to do it" % name,
                    pool=first,
                )
            cairn.call("destroy", "--confirm", name, *force, check=True)
    elif p["state"] == "exported":
        cairn.call("export", *force, check=True)
    else:
        args = []
        for directory in p["search_dirs"]:
            args.extend(["--dir", directory])
        cairn.call("import", *(args + force), check=True)
        if properties and (first.get("imported") or not module.check_mode):
            cairn.call("set", *prop_args, check=True)

    if module.check_mode:
        # what the steps predict, in order: groups from create/add/replace, properties
        # from set, imported from export/import/destroy
        final = diff_view(first, keys)
        for step in cairn.steps:
            predicted = step.get("after") or {}
            if not step.get("changed"):
                continue
            if not predicted.get("imported"):
                final = {"imported": False}
                continue
            final["imported"] = True
            for key in ("layout", "groups"):
                if key in predicted:
                    final[key] = predicted[key]
            props = final.setdefault("properties", {})
            props.update(
                (k, v) for k, v in (predicted.get("properties") or {}).items() if k in keys
            )
        pool = first if first.get("imported") else {}
        after_view = final
    else:
        final = first
        if cairn.changed:  # the last step's document holds the pool as it is now
            final = cairn.steps[-1].get("pool") or {"name": name, "imported": False}
        pool = final if final.get("imported") else {}
        after_view = diff_view(final, keys)
    result = dict(
        changed=cairn.changed,
        messages=[m for m in cairn.messages if m],
        commands=cairn.commands,
        pool=pool,
    )
    if module._diff and cairn.changed:
        result["diff"] = dict(before=diff_view(first, keys), after=after_view)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
