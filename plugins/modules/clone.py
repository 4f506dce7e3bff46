#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: clone
short_description: Make or delete a clone of a Cairn volume's snapshot
description:
  - Makes volume O(name) from snapshot O(snapshot) of volume O(volume)
    (C(POST /v1/volumes/VOLUME/clones)), on the pools that hold the snapshot, served by
    its own target on the same node.
  - A clone is a volume; O(state=absent) deletes it and its data like
    M(cairn.storage.volume) does, and needs O(confirm_destroy=true).
  - An existing volume O(name) that is not a clone of O(volume)@O(snapshot) is a failure.
  - O(api_url) points at the agent of the node whose target serves O(volume).
version_added: "0.1.0"
author:
  - Cairn developers (@cairn)
options:
  name:
    description: The clone's name, a new volume.
    type: str
    required: true
  volume:
    description: The volume the snapshot belongs to. Required with O(state=present).
    type: str
  snapshot:
    description: The snapshot to clone. Required with O(state=present).
    type: str
  portal:
    description:
      - Where the clone's target listens, C(HOST:PORT).
      - The agent picks a free port on the node's address otherwise.
    type: str
  iqn:
    description: The clone's target name. The agent's default is C(iqn.2026-11.io.cairn:NAME).
    type: str
  state:
    description:
      - V(present) makes the clone when no volume O(name) exists.
      - V(absent) deletes the clone and its data (needs O(confirm_destroy)).
    type: str
    choices: [present, absent]
    default: present
  confirm_destroy:
    description: Must be V(true) with O(state=absent), the clone's data is deleted.
    type: bool
    default: false
  force:
    description:
      - With O(state=absent), delete the clone even while clones of its own snapshots exist.
    type: bool
    default: false
extends_documentation_fragment:
  - cairn.storage.cairn_api
notes:
  - Supports C(check_mode) and C(diff).
seealso:
  - module: cairn.storage.snapshot
  - module: cairn.storage.volume
"""

EXAMPLES = r"""
- name: A test copy of db as it was before the upgrade
  cairn.storage.clone:
    name: db-test
    volume: db
    snapshot: before-upgrade
    portal: 10.0.0.1:3270

- name: Delete the test copy
  cairn.storage.clone:
    name: db-test
    state: absent
    confirm_destroy: true
"""

RETURN = r"""
volume:
  description: The clone as the agent describes it; its C(origin) names the volume and snapshot.
  returned: always
  type: dict
  sample:
    name: db-test
    origin: {volume: db, snapshot: before-upgrade}
    portal: 10.0.0.1:3270
url:
  description: The clone's iSCSI URL.
  returned: when the clone exists
  type: str
  sample: iscsi://10.0.0.1:3270/iqn.2026-11.io.cairn:db-test/0
left:
  description: Replicas whose data could not be deleted from their pool, with the reason.
  returned: when the clone was deleted
  type: dict
  sample: {}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cairn.storage.plugins.module_utils.cairn_api import (
    CairnApiError,
    cairn_argument_spec,
    check_name,
    client_from_module,
    fail_api,
)


def clone_view(doc):
    if not doc:
        return {}
    origin = doc.get("origin") or {}
    return {
        "name": doc.get("name"),
        "volume": origin.get("volume"),
        "snapshot": origin.get("snapshot"),
        "portal": doc.get("portal"),
        "iqn": doc.get("iqn"),
    }


def main():
    argument_spec = cairn_argument_spec()
    argument_spec.update(
        name=dict(type="str", required=True),
        volume=dict(type="str"),
        snapshot=dict(type="str"),
        portal=dict(type="str"),
        iqn=dict(type="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        confirm_destroy=dict(type="bool", default=False),
        force=dict(type="bool", default=False),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("state", "present", ("volume", "snapshot"))],
    )
    p = module.params
    name = p["name"]
    problem = check_name(name, "name")
    if problem:
        module.fail_json(msg=problem)
    if p["state"] == "absent" and not p["confirm_destroy"]:
        module.fail_json(
            msg="state=absent deletes clone %s and its data: set confirm_destroy: true to do it"
            % name
        )
    if p["state"] == "present" and p["volume"] == name:
        module.fail_json(msg="a clone needs its own name, not its volume's (%s)" % name)

    client = client_from_module(module)
    try:
        current = client.volume(name)
    except CairnApiError as e:
        fail_api(module, e, "cannot read volume %s" % name)
    before = clone_view(current)
    result = dict(changed=False, volume=current or {})
    if current is not None:
        result["url"] = "iscsi://%s/%s/0" % (current["portal"], current["iqn"])

    if p["state"] == "absent":
        if current is None:
            module.exit_json(**result)
        if not current.get("origin"):
            module.fail_json(
                msg="volume %s is not a clone; delete it with cairn.storage.volume" % name, **result
            )
        result.update(changed=True, volume={})
        result.pop("url", None)
        if module._diff:
            result["diff"] = dict(before=before, after={})
        if module.check_mode:
            module.exit_json(**result)
        body = {"confirm": name}
        if p["force"]:
            body["force"] = True
        try:
            done = client.delete("/v1/volumes/%s" % name, body)
        except CairnApiError as e:
            hint = " (delete its own clones first, or set force: true)" if e.status == 409 else ""
            fail_api(module, e, "cannot delete clone %s%s" % (name, hint))
        result["left"] = (done or {}).get("left") or {}
        for replica, reason in sorted(result["left"].items()):
            module.warn(
                "clone %s is deleted but its data stays on %s: %s" % (name, replica, reason)
            )
        module.exit_json(**result)

    wanted = {
        "name": name,
        "volume": p["volume"],
        "snapshot": p["snapshot"],
        "portal": p["portal"],
        "iqn": p["iqn"],
    }
    if current is not None:
        if (before["volume"], before["snapshot"]) != (p["volume"], p["snapshot"]):
            origin = (
                "a clone of %s@%s" % (before["volume"], before["snapshot"])
                if before["volume"]
                else "not a clone"
            )
            module.fail_json(
                msg="volume %s exists and is %s, not a clone of %s@%s; pick another name, or "
                "delete it first" % (name, origin, p["volume"], p["snapshot"]),
                **result,
            )
        differ = [
            "%s is %s, not %s" % (k, before[k], wanted[k])
            for k in ("portal", "iqn")
            if wanted[k] is not None and wanted[k] != before[k]
        ]
        if differ:
            module.fail_json(
                msg="clone %s exists with other settings: %s; these are fixed when it is made"
                % (name, "; ".join(differ)),
                **result,
            )
        module.exit_json(**result)

    result["changed"] = True
    if module._diff:
        result["diff"] = dict(
            before={}, after=dict((k, v) for k, v in wanted.items() if v is not None)
        )
    if module.check_mode:
        module.exit_json(**result)
    body = {"name": name, "snapshot": p["snapshot"]}
    for key in ("portal", "iqn"):
        if p[key] is not None:
            body[key] = p[key]
    try:
        doc = client.post("/v1/volumes/%s/clones" % p["volume"], body)
    except CairnApiError as e:
        fail_api(module, e, "cannot clone %s@%s as %s" % (p["volume"], p["snapshot"], name))
    result.update(volume=doc, url="iscsi://%s/%s/0" % (doc["portal"], doc["iqn"]))
    if module._diff:
        result["diff"]["after"] = clone_view(doc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
