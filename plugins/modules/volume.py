#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: volume
short_description: Create, grow or delete a replicated Cairn volume
description:
  - Creates a volume served by the iSCSI target of the node whose agent O(api_url) points
    at, with its replicas on the pools O(replicas) name (C(POST /v1/volumes)).
  - Grows an existing volume online when O(size) is larger (C(PATCH /v1/volumes/NAME)).
    A smaller O(size) is refused, a volume never shrinks.
  - Never changes the replica set of an existing volume. When it differs from O(replicas)
    the module fails and names the M(cairn.storage.replica) tasks to run instead.
  - Other settings (block size, portal, IQN, consistency factor, CHAP user, ACL) are
    fixed at creation. When a given one differs from the volume's, the module fails.
  - Deletes the volume and its data on every replica with O(state=absent), only with
    O(confirm_destroy=true).
version_added: "0.1.0"
author:
  - Cairn developers (@cairn)
options:
  name:
    description: The volume's name (letters, digits, C(.), C(_) or C(-), at most 63 characters).
    type: str
    required: true
  state:
    description:
      - V(present) creates the volume, or grows it to O(size).
      - V(absent) deletes it and its data on every replica (needs O(confirm_destroy)).
    type: str
    choices: [present, absent]
    default: present
  size:
    description:
      - The size in bytes, or with a K, M, G, T or P suffix (powers of 1024, so V(10G),
        V(10GiB) and V(10GB) are all 10 GiB).
      - Required with O(state=present). A multiple of O(block_size).
    type: str
  replicas:
    description:
      - The pools that hold a copy, each as C(NODE/POOL).
      - Each on a different node unless O(allow_same_node=true); the module refuses
        other lists before asking the agent.
      - Required with O(state=present).
    type: list
    elements: str
  block_size:
    description: The logical block size; fixed at creation.
    type: int
    choices: [512, 4096]
  portal:
    description:
      - Where the target listens, C(HOST:PORT). The agent's default is the node's
        address, port 3260 or the next free one.
    type: str
  iqn:
    description: The target's name. The agent's default is C(iqn.2026-11.io.cairn:NAME).
    type: str
  consistency_factor:
    description: How many replicas must acknowledge a write (the agent's default is a majority).
    type: int
  chap:
    description: CHAP credentials an initiator must present (and mutual CHAP).
    type: dict
    suboptions:
      username:
        description: The initiator's CHAP user name.
        type: str
        required: true
      secret:
        description: The initiator's CHAP secret, 12 to 255 characters.
        type: str
        required: true
      target_username:
        description: The target's user name for mutual CHAP (with O(chap.target_secret)).
        type: str
      target_secret:
        description: The target's secret for mutual CHAP, 12 to 255 characters.
        type: str
  acl:
    description: Initiator names (C(iqn....)) or networks (CIDR) allowed to log in; all when empty.
    type: list
    elements: str
  allow_same_node:
    description:
      - Allow several replicas on one node (one-machine setups only; losing that host
        loses every copy).
    type: bool
    default: false
  confirm_destroy:
    description:
      - Must be V(true) with O(state=absent), the volume's data is deleted on every replica.
    type: bool
    default: false
  force:
    description:
      - With O(state=absent), delete the volume even while clones made from its snapshots
        exist (the pools keep what the clones need).
    type: bool
    default: false
  wait_healthy:
    description:
      - After a creation or a grow, wait until the volume and all its replicas are healthy.
    type: bool
    default: false
  wait_timeout:
    description: Seconds O(wait_healthy) waits before the module fails.
    type: int
    default: 120
extends_documentation_fragment:
  - cairn.storage.cairn_api
notes:
  - Supports C(check_mode) and C(diff). CHAP secrets are never shown and cannot be
    compared, the agent does not return them.
seealso:
  - module: cairn.storage.replica
  - module: cairn.storage.snapshot
  - module: cairn.storage.clone
"""

EXAMPLES = r"""
- name: A 10 GiB volume with three replicas on three nodes
  cairn.storage.volume:
    name: db
    size: 10G
    replicas: [node-a/p1, node-b/p1, node-c/p1]
    portal: 10.0.0.1:3260
    chap:
      username: db-client
      secret: "{{ vault_db_chap_secret }}"
    acl: [iqn.2026-01.com.example:db-host]
    wait_healthy: true

- name: Grow it online (the same task with a larger size)
  cairn.storage.volume:
    name: db
    size: 20G
    replicas: [node-a/p1, node-b/p1, node-c/p1]

- name: Delete it and its data on every replica
  cairn.storage.volume:
    name: db
    state: absent
    confirm_destroy: true
"""

RETURN = r"""
volume:
  description: The volume as the agent describes it (C(GET /v1/volumes/NAME)); empty when absent.
  returned: always
  type: dict
  sample:
    name: db
    node: node-a
    size: 10737418240
    block_size: 512
    portal: 10.0.0.1:3260
    iqn: iqn.2026-11.io.cairn:db
    replicas: [node-a/p1, node-b/p1, node-c/p1]
url:
  description: The volume's iSCSI URL (C(iscsi://PORTAL/IQN/0)), as libiscsi and QEMU take it.
  returned: when the volume exists
  type: str
  sample: iscsi://10.0.0.1:3260/iqn.2026-11.io.cairn:db/0
left:
  description: Replicas whose data could not be deleted from their pool, with the reason.
  returned: when the volume was deleted
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
    format_size,
    parse_size,
    placement_problem,
    wait_healthy,
)

FIXED = ("block_size", "portal", "iqn", "consistency_factor")


def volume_view(doc):
    """The fields the module compares and shows in the diff."""
    if not doc:
        return {}
    chap = doc.get("chap") or {}
    return {
        "name": doc.get("name"),
        "size": doc.get("size"),
        "replicas": list(doc.get("replicas") or []),
        "block_size": doc.get("block_size"),
        "portal": doc.get("portal"),
        "iqn": doc.get("iqn"),
        "consistency_factor": doc.get("consistency_factor"),
        "chap_username": chap.get("username"),
        "acl": list(doc.get("acl") or []),
        "allow_same_node": bool(doc.get("allow_same_node")),
    }


def volume_url(doc):
    return "iscsi://%s/%s/0" % (doc["portal"], doc["iqn"])


def differences(current, p):
    """What of the requested settings differs from the volume's (other than size)."""
    out = []
    for key in FIXED:
        if p[key] is not None and p[key] != current[key]:
            out.append("%s is %s, not %s" % (key, current[key], p[key]))
    if p["chap"] is not None and p["chap"]["username"] != current["chap_username"]:
        out.append(
            "chap username is %s, not %s" % (current["chap_username"], p["chap"]["username"])
        )
    if p["acl"] is not None and sorted(p["acl"]) != sorted(current["acl"]):
        out.append("acl is %s, not %s" % (current["acl"], p["acl"]))
    if p["allow_same_node"] and not current["allow_same_node"]:
        out.append("allow_same_node is false")
    return out


def create_body(p, size):
    body = {"name": p["name"], "size": size, "replicas": list(p["replicas"])}
    for key in FIXED + ("acl",):
        if p[key] is not None:
            body[key] = p[key]
    if p["chap"] is not None:
        body["chap"] = dict((k, v) for k, v in p["chap"].items() if v is not None)
    if p["allow_same_node"]:
        body["allow_same_node"] = True
    return body


def main():
    argument_spec = cairn_argument_spec()
    argument_spec.update(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        size=dict(type="str"),
        replicas=dict(type="list", elements="str"),
        block_size=dict(type="int", choices=[512, 4096]),
        portal=dict(type="str"),
        iqn=dict(type="str"),
        consistency_factor=dict(type="int"),
        chap=dict(
            type="dict",
            options=dict(
                username=dict(type="str", required=True),
                secret=dict(type="str", required=True, no_log=True),
                target_username=dict(type="str"),
                target_secret=dict(type="str", no_log=True),
            ),
            required_together=[("target_username", "target_secret")],
        ),
        acl=dict(type="list", elements="str"),
        allow_same_node=dict(type="bool", default=False),
        confirm_destroy=dict(type="bool", default=False),
        force=dict(type="bool", default=False),
        wait_healthy=dict(type="bool", default=False),
        wait_timeout=dict(type="int", default=120),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("state", "present", ("size", "replicas"))],
    )
    p = module.params
    name = p["name"]
    problem = check_name(name, "name")
    if problem:
        module.fail_json(msg=problem)

    if p["state"] == "absent":
        if not p["confirm_destroy"]:
            module.fail_json(
                msg="state=absent deletes volume %s and its data on every replica: "
                "set confirm_destroy: true to do it" % name
            )
        return absent(module, name)

    # everything the agent would refuse anyway, refused before asking it
    try:
        size = parse_size(p["size"])
    except ValueError as e:
        module.fail_json(msg="size: %s" % e)
    if not p["replicas"]:
        module.fail_json(msg="replicas: at least one NODE/POOL")
    problem = placement_problem(p["replicas"], p["allow_same_node"])
    if problem:
        module.fail_json(msg=problem)
    if p["consistency_factor"] is not None and not 1 <= p["consistency_factor"] <= len(
        p["replicas"]
    ):
        module.fail_json(
            msg="consistency_factor: an integer from 1 to %d (the number of replicas)"
            % len(p["replicas"])
        )

    client = client_from_module(module)
    try:
        current = client.volume(name)
    except CairnApiError as e:
        fail_api(module, e, "cannot read volume %s" % name)
    if current is None:
        return create(module, client, size)
    return update(module, client, current, size)


def create(module, client, size):
    p = module.params
    block_size = p["block_size"] or 512
    if size % block_size:
        module.fail_json(msg="size: %d is not a multiple of the block size %d" % (size, block_size))
    body = create_body(p, size)
    result = dict(changed=True, volume={})
    if module._diff:
        after = dict((k, v) for k, v in body.items() if k != "chap")
        if p["chap"] is not None:
            after["chap_username"] = p["chap"]["username"]
        result["diff"] = dict(before={}, after=after)
    if module.check_mode:
        module.exit_json(**result)
    try:
        doc = client.post("/v1/volumes", body)
    except CairnApiError as e:
        fail_api(module, e, "cannot create volume %s" % p["name"])
    result.update(volume=doc, url=volume_url(doc))
    if module._diff:
        result["diff"]["after"] = volume_view(doc)
    finish(module, client, result, len(p["replicas"]))


def update(module, client, current, size):
    p = module.params
    name = p["name"]
    before = volume_view(current)
    result = dict(changed=False, volume=current, url=volume_url(current))
    if sorted(before["replicas"]) != sorted(p["replicas"]):
        add = [r for r in p["replicas"] if r not in before["replicas"]]
        remove = [r for r in before["replicas"] if r not in p["replicas"]]
        steps = ["add %s" % r for r in add] + ["remove %s" % r for r in remove]
        module.fail_json(
            msg="volume %s has replicas %s, not %s. This module never changes the replica "
            "set; use cairn.storage.replica (one change at a time, with wait_healthy: true) "
            "to %s"
            % (
                name,
                ", ".join(before["replicas"]),
                ", ".join(p["replicas"]),
                ", then ".join(steps),
            ),
            **result,
        )
    differ = differences(before, p)
    if differ:
        module.fail_json(
            msg="volume %s exists with other settings: %s. These are fixed when a volume "
            "is created" % (name, "; ".join(differ)),
            **result,
        )
    if size < before["size"]:
        module.fail_json(
            msg="volume %s is %s (%d bytes); size %s (%d bytes) would shrink it, and a volume "
            "never shrinks. Keep size at %s or larger"
            % (
                name,
                format_size(before["size"]),
                before["size"],
                p["size"],
                size,
                format_size(before["size"]),
            ),
            **result,
        )
    if size == before["size"]:
        finish(module, client, result, len(before["replicas"]))
    if size % before["block_size"]:
        module.fail_json(
            msg="size: %d is not a multiple of the block size %d" % (size, before["block_size"]),
            **result,
        )
    result["changed"] = True
    after = dict(before, size=size)
    if module._diff:
        result["diff"] = dict(before=before, after=after)
    if module.check_mode:
        module.exit_json(**result)
    try:
        doc = client.patch("/v1/volumes/%s" % name, {"size": size})
    except CairnApiError as e:
        fail_api(module, e, "cannot grow volume %s to %d bytes" % (name, size))
    result["volume"] = doc
    finish(module, client, result, len(before["replicas"]))


def finish(module, client, result, count):
    p = module.params
    if p["wait_healthy"] and not module.check_mode:
        try:
            result["status"] = wait_healthy(client, p["name"], count, p["wait_timeout"])
        except CairnApiError as e:
            fail_api(module, e, "volume %s" % p["name"], **result)
    module.exit_json(**result)


def absent(module, name):
    p = module.params
    client = client_from_module(module)
    try:
        current = client.volume(name)
    except CairnApiError as e:
        fail_api(module, e, "cannot read volume %s" % name)
    result = dict(changed=False, volume={})
    if current is None:
        module.exit_json(**result)
    result["changed"] = True
    if module._diff:
        result["diff"] = dict(before=volume_view(current), after={})
    if module.check_mode:
        module.exit_json(**result)
    body = {"confirm": name}
    if p["force"]:
        body["force"] = True
    try:
        done = client.delete("/v1/volumes/%s" % name, body)
    except CairnApiError as e:
        hint = ""
        if e.status == 409:
            hint = " (delete its clones first with cairn.storage.clone, or set force: true)"
        fail_api(module, e, "cannot delete volume %s%s" % (name, hint))
    left = (done or {}).get("left") or {}
    for replica, reason in sorted(left.items()):
        module.warn(
            "volume %s is deleted but its data on %s stays until that pool's volume is "
            "deleted by hand: %s" % (name, replica, reason)
        )
    result["left"] = left
    module.exit_json(**result)


if __name__ == "__main__":
    main()
