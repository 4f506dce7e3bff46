#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: snapshot
short_description: Take, delete or roll back to a snapshot of a Cairn volume
description:
  - Takes a snapshot of volume O(volume) on every healthy replica at one point in time
    (C(POST /v1/volumes/VOLUME/snapshots)); the volume must be in quorum.
  - Deletes it on every replica that holds it (C(DELETE /v1/volumes/VOLUME/snapshots/NAME)).
    The agent refuses while a clone depends on it.
  - Rolls the volume back to it with O(state=rolled_back) and O(confirm_rollback=true)
    (C(POST /v1/volumes/VOLUME/rollback)); only while no initiator is logged in.
  - O(api_url) points at the agent of the node whose target serves the volume.
version_added: "0.1.0"
author:
  - Cairn developers (@cairn)
options:
  volume:
    description: The volume's name.
    type: str
    required: true
  name:
    description: The snapshot's name (letters, digits, C(.), C(_) or C(-), at most 63 characters).
    type: str
    required: true
  state:
    description:
      - V(present) takes the snapshot when the volume has none of that name.
      - V(absent) deletes it when it exists.
      - V(rolled_back) rolls the volume back to it. Every write since the snapshot is
        lost, so it needs O(confirm_rollback=true). The agent cannot tell whether the
        volume is already at the snapshot, so this state always reports a change.
    type: str
    choices: [present, absent, rolled_back]
    default: present
  confirm_rollback:
    description: Must be V(true) with O(state=rolled_back).
    type: bool
    default: false
extends_documentation_fragment:
  - cairn.storage.cairn_api
notes:
  - Supports C(check_mode) and C(diff).
seealso:
  - module: cairn.storage.clone
"""

EXAMPLES = r"""
- name: Snapshot db before the upgrade
  cairn.storage.snapshot:
    volume: db
    name: before-upgrade

- name: Roll db back to it (stop the initiators first)
  cairn.storage.snapshot:
    volume: db
    name: before-upgrade
    state: rolled_back
    confirm_rollback: true

- name: Delete the snapshot
  cairn.storage.snapshot:
    volume: db
    name: before-upgrade
    state: absent
"""

RETURN = r"""
snapshot:
  description: The snapshot as the target lists it; empty when absent.
  returned: always
  type: dict
  sample:
    name: before-upgrade
    created: "2026-11-02T10:00:00Z"
    replicas: ["10.0.0.1:3232", "10.0.0.2:3232"]
rollback:
  description: The target's answer to the rollback (snapshot, seq, replicas, degraded).
  returned: when rolled back (not in check mode)
  type: dict
  sample:
    snapshot: before-upgrade
    degraded: []
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cairn.storage.plugins.module_utils.cairn_api import (
    CairnApiError,
    cairn_argument_spec,
    check_name,
    client_from_module,
    fail_api,
)


def main():
    argument_spec = cairn_argument_spec()
    argument_spec.update(
        volume=dict(type="str", required=True),
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent", "rolled_back"], default="present"),
        confirm_rollback=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    volume, name, state = p["volume"], p["name"], p["state"]
    problem = check_name(name, "name")
    if problem:
        module.fail_json(msg=problem)
    if state == "rolled_back" and not p["confirm_rollback"]:
        module.fail_json(
            msg="state=rolled_back loses every write to volume %s since snapshot %s: set "
            "confirm_rollback: true to do it" % (volume, name)
        )

    client = client_from_module(module)
    try:
        snaps = client.snapshots(volume)
    except CairnApiError as e:
        if e.status == 404 and state == "absent":
            # no volume, so no snapshot of it either: a teardown runs again cleanly
            module.exit_json(changed=False, snapshot={})
        hint = ""
        if e.status == 404:
            hint = " (api_url must point at the node whose target serves it)"
        fail_api(module, e, "cannot list the snapshots of volume %s%s" % (volume, hint))
    current = None
    for s in snaps:
        if s.get("name") == name:
            current = s
    before = {"snapshot": name} if current is not None else {}
    result = dict(changed=False, snapshot=current or {})

    if state == "present":
        if current is not None:
            module.exit_json(**result)
        result["changed"] = True
        if module._diff:
            result["diff"] = dict(before={}, after={"snapshot": name})
        if module.check_mode:
            module.exit_json(**result)
        try:
            result["snapshot"] = client.post("/v1/volumes/%s/snapshots" % volume, {"name": name})
        except CairnApiError as e:
            fail_api(module, e, "cannot snapshot volume %s" % volume)
        module.exit_json(**result)

    if state == "absent":
        if current is None:
            module.exit_json(**result)
        result.update(changed=True, snapshot={})
        if module._diff:
            result["diff"] = dict(before=before, after={})
        if module.check_mode:
            module.exit_json(**result)
        try:
            client.delete("/v1/volumes/%s/snapshots/%s" % (volume, name), {"confirm": name})
        except CairnApiError as e:
            hint = ""
            if e.status == 409:
                hint = " (delete the clones made from it first)"
            fail_api(module, e, "cannot delete snapshot %s of volume %s%s" % (name, volume, hint))
        module.exit_json(**result)

    # rolled_back
    if current is None:
        module.fail_json(
            msg="volume %s has no snapshot %s to roll back to (it has: %s)"
            % (volume, name, ", ".join(s.get("name", "?") for s in snaps) or "none")
        )
    result["changed"] = True
    if module._diff:
        result["diff"] = dict(
            before={"volume": volume, "data": "current"},
            after={"volume": volume, "data": "snapshot %s" % name},
        )
    if module.check_mode:
        module.exit_json(**result)
    try:
        result["rollback"] = client.post(
            "/v1/volumes/%s/rollback" % volume, {"snapshot": name, "confirm": volume}
        )
    except CairnApiError as e:
        hint = ""
        if e.status == 409:
            hint = " (log every initiator out of the volume first)"
        fail_api(module, e, "cannot roll volume %s back to %s%s" % (volume, name, hint))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
