#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: replica
short_description: Add or remove one replica of a Cairn volume
description:
  - Adds the pool O(replica) (C(NODE/POOL)) to the replica set of volume O(volume)
    (C(POST /v1/volumes/VOLUME/replicas)); the target rebuilds it online.
  - Or removes it (C(DELETE /v1/volumes/VOLUME/replicas/NODE/POOL)); its data on that
    pool is deleted, the other replicas keep the volume's data.
  - Moving a replica is an add, a wait until healthy, then a remove.
  - O(api_url) points at the agent of the node whose target serves the volume.
version_added: "0.1.0"
author:
  - Cairn developers (@cairn)
options:
  volume:
    description: The volume's name.
    type: str
    required: true
  replica:
    description: The pool, as C(NODE/POOL).
    type: str
    required: true
    aliases: [pool]
  state:
    description:
      - V(present) adds the replica when the volume does not have it.
      - V(absent) removes it (and deletes its data on that pool) when the volume has it.
    type: str
    choices: [present, absent]
    default: present
  wait_healthy:
    description:
      - Wait until the volume and every replica are healthy (a new replica has finished
        its rebuild), polling C(GET /v1/volumes/VOLUME/status).
      - Also waits when nothing changed, so a task can stand for "this replica is there
        and in sync".
    type: bool
    default: false
  wait_timeout:
    description: Seconds O(wait_healthy) waits before the module fails.
    type: int
    default: 600
  poll_interval:
    description: Seconds between two status requests while waiting.
    type: float
    default: 1.0
extends_documentation_fragment:
  - cairn.storage.cairn_api
notes:
  - Supports C(check_mode) (no waiting) and C(diff).
  - Each replica must be on a different node unless the volume was created with
    C(allow_same_node); the module refuses a second replica on a node before asking the agent.
  - The last replica of a volume is never removed.
seealso:
  - module: cairn.storage.volume
"""

EXAMPLES = r"""
- name: Move db's replica from node-c to node-d, one step at a time
  block:
    - name: Add the new replica and wait for its rebuild
      cairn.storage.replica:
        volume: db
        replica: node-d/p1
        wait_healthy: true
        wait_timeout: 3600

    - name: Then remove the old one
      cairn.storage.replica:
        volume: db
        replica: node-c/p1
        state: absent
        wait_healthy: true
"""

RETURN = r"""
volume:
  description: The volume as the agent describes it after the change.
  returned: always
  type: dict
  sample:
    name: db
    replicas: [node-a/p1, node-b/p1, node-d/p1]
replicas:
  description: The volume's replicas after the change (predicted in check mode).
  returned: always
  type: list
  elements: str
  sample: [node-a/p1, node-b/p1, node-d/p1]
status:
  description: The target's status document once healthy.
  returned: when O(wait_healthy=true) and not in check mode
  type: dict
  sample:
    state: healthy
    replicas:
      - address: 10.0.0.4:3232
        state: healthy
left:
  description:
    - The removed replica, with the reason, when its data could not be deleted from its pool.
  returned: when the replica was removed
  type: dict
  sample: {}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cairn.storage.plugins.module_utils.cairn_api import (
    CairnApiError,
    cairn_argument_spec,
    client_from_module,
    fail_api,
    parse_replica,
    placement_problem,
    wait_healthy,
)


def main():
    argument_spec = cairn_argument_spec()
    argument_spec.update(
        volume=dict(type="str", required=True),
        replica=dict(type="str", required=True, aliases=["pool"]),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        wait_healthy=dict(type="bool", default=False),
        wait_timeout=dict(type="int", default=600),
        poll_interval=dict(type="float", default=1.0),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    name, replica = p["volume"], p["replica"]
    try:
        node, pool = parse_replica(replica)
    except ValueError as e:
        module.fail_json(msg=str(e))

    client = client_from_module(module)
    try:
        current = client.volume(name)
    except CairnApiError as e:
        fail_api(module, e, "cannot read volume %s" % name)
    if current is None:
        module.fail_json(
            msg="no volume %s on the agent at %s (api_url must point at the node whose "
            "target serves it)" % (name, p["api_url"])
        )
    before = list(current.get("replicas") or [])
    result = dict(changed=False, volume=current, replicas=before)

    if p["state"] == "present" and replica not in before:
        after = before + [replica]
        problem = placement_problem(after, bool(current.get("allow_same_node")))
        if problem:
            module.fail_json(
                msg="cannot add %s to volume %s: %s" % (replica, name, problem), **result
            )
        method, path, body = "POST", "/v1/volumes/%s/replicas" % name, {"pool": replica}
        what = "cannot add replica %s to volume %s" % (replica, name)
    elif p["state"] == "absent" and replica in before:
        if len(before) == 1:
            module.fail_json(
                msg="%s is the last replica of volume %s; add another first, or delete the "
                "volume with cairn.storage.volume" % (replica, name),
                **result,
            )
        after = [r for r in before if r != replica]
        method, path, body = "DELETE", "/v1/volumes/%s/replicas/%s/%s" % (name, node, pool), None
        what = "cannot remove replica %s from volume %s" % (replica, name)
    else:
        after = None

    if after is not None:
        result.update(changed=True, replicas=after)
        if module._diff:
            result["diff"] = dict(before={"replicas": before}, after={"replicas": after})
        if module.check_mode:
            module.exit_json(**result)
        try:
            doc = client.request(method, path, body)
        except CairnApiError as e:
            failed = dict(result)
            failed.update(changed=False, replicas=before)
            fail_api(module, e, what, **failed)
        if isinstance(doc, dict):
            left = doc.pop("left", None)
            if left:
                result["left"] = left
                for r, reason in sorted(left.items()):
                    module.warn(
                        "replica %s is removed but its data stays on its pool: %s" % (r, reason)
                    )
            elif method == "DELETE":
                result["left"] = {}
            result["volume"] = doc
            result["replicas"] = list(doc.get("replicas") or after)

    if p["wait_healthy"] and not module.check_mode:
        try:
            result["status"] = wait_healthy(
                client, name, len(result["replicas"]), p["wait_timeout"], p["poll_interval"]
            )
        except CairnApiError as e:
            fail_api(module, e, "after the change, volume %s" % name, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
