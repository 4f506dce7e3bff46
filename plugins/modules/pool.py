#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pool
short_description: Create or forget a Cairn pool on one node
description:
  - Creates a pool (the place where a node keeps replicas) through the node agent's API
    (C(POST /v1/pools)), or stops its server and forgets it (C(DELETE /v1/pools/NAME)).
  - A pool belongs to the node whose agent O(api_url) points at.
  - Forgetting a pool never deletes data, the agent leaves its files or datasets on disk.
  - A pool is not changed in place. When an existing pool has another backend, path,
    zpool or listen address than requested, the module fails and says so.
version_added: "0.1.0"
author:
  - Cairn developers (@cairn)
options:
  name:
    description: The pool's name (letters, digits, C(.), C(_) or C(-), at most 63 characters).
    type: str
    required: true
  state:
    description:
      - V(present) creates the pool when it does not exist.
      - V(absent) stops its server and forgets it; the data stays on disk.
    type: str
    choices: [present, absent]
    default: present
  backend:
    description:
      - V(embedded) keeps replicas as files under O(path).
      - V(zfs) keeps them in datasets of O(zpool).
    type: str
    choices: [embedded, zfs]
    default: embedded
  path:
    description:
      - The absolute directory of an embedded pool.
      - The agent's default is C(STATE_DIR/pools/NAME).
    type: path
  zpool:
    description: The ZFS pool of a V(zfs) pool. Required with O(backend=zfs).
    type: str
  listen:
    description:
      - Where the pool server listens, C(HOST:PORT).
      - The agent's default is the node's address, port 3232 or the next free one.
    type: str
  force:
    description:
      - With O(state=absent), forget the pool even while volumes have replicas on it
        (they lose that replica until it is moved) and skip peers that do not answer.
    type: bool
    default: false
extends_documentation_fragment:
  - cairn.storage.cairn_api
notes:
  - Supports C(check_mode) and C(diff).
seealso:
  - module: cairn.storage.volume
  - module: cairn.storage.cairn_info
"""

EXAMPLES = r"""
- name: An embedded pool on this node
  cairn.storage.pool:
    name: p1
    path: /var/lib/cairn/pools/p1
    listen: 10.0.0.1:3232

- name: A pool in a ZFS pool
  cairn.storage.pool:
    name: fast
    backend: zfs
    zpool: tank

- name: Forget a pool that still holds replicas (the data stays on disk)
  cairn.storage.pool:
    name: p1
    state: absent
    force: true
"""

RETURN = r"""
pool:
  description: The pool as the agent describes it (C(GET /v1/pools)); empty when absent.
  returned: always
  type: dict
  sample:
    name: p1
    node: node-a
    backend: embedded
    path: /var/lib/cairn/pools/p1
    listen: 10.0.0.1:3232
    address: 10.0.0.1:3232
volumes_affected:
  description: The volumes that had a replica on the pool when it was forgotten.
  returned: when the pool was forgotten (not in check mode)
  type: list
  elements: str
  sample: ["node-b:db"]
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cairn.storage.plugins.module_utils.cairn_api import (
    CairnApiError,
    cairn_argument_spec,
    check_name,
    client_from_module,
    fail_api,
)

FIELDS = ("backend", "path", "zpool", "listen")


def pool_view(pool):
    """The fields the module compares and shows in the diff."""
    if not pool:
        return {}
    view = {"name": pool.get("name"), "backend": pool.get("backend"), "listen": pool.get("listen")}
    if pool.get("backend") == "zfs":
        view["zpool"] = pool.get("zpool")
    else:
        view["path"] = pool.get("path")
    return view


def main():
    argument_spec = cairn_argument_spec()
    argument_spec.update(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        backend=dict(type="str", choices=["embedded", "zfs"], default="embedded"),
        path=dict(type="path"),
        zpool=dict(type="str"),
        listen=dict(type="str"),
        force=dict(type="bool", default=False),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("backend", "zfs", ("zpool",))],
        mutually_exclusive=[("path", "zpool")],
    )
    p = module.params
    name = p["name"]
    if p["path"] is not None:
        p["path"] = os.path.normpath(p["path"])
    problem = check_name(name, "name")
    if problem:
        module.fail_json(msg=problem)
    if p["backend"] == "embedded" and p["zpool"]:
        module.fail_json(msg="zpool is for backend zfs; an embedded pool takes path")
    client = client_from_module(module)
    try:
        current = client.pool(name)
    except CairnApiError as e:
        fail_api(module, e, "cannot list the pools of the agent at %s" % p["api_url"])

    before = pool_view(current)
    result = dict(changed=False, pool=current or {})

    if p["state"] == "absent":
        if current is None:
            module.exit_json(**result)
        result.update(changed=True, pool={})
        if module._diff:
            result["diff"] = dict(before=before, after={})
        if module.check_mode:
            module.exit_json(**result)
        body = {"confirm": name}
        if p["force"]:
            body["force"] = True
        try:
            done = client.delete("/v1/pools/%s" % name, body)
        except CairnApiError as e:
            hint = ""
            if e.status == 409:
                hint = " (move the replicas first with cairn.storage.replica, or set force: true)"
            fail_api(module, e, "cannot forget pool %s%s" % (name, hint))
        result["volumes_affected"] = (done or {}).get("volumes_affected") or []
        module.exit_json(**result)

    wanted = {
        "backend": p["backend"],
        "path": p["path"],
        "zpool": p["zpool"],
        "listen": p["listen"],
    }
    if current is not None:
        differ = []
        for key in FIELDS:
            if wanted[key] is not None and key in before and wanted[key] != before[key]:
                differ.append("%s is %s, not %s" % (key, before[key], wanted[key]))
            elif wanted[key] is not None and key not in before and key != "backend":
                differ.append("backend is %s, which has no %s" % (before.get("backend"), key))
        if differ:
            module.fail_json(
                msg="pool %s exists with other settings: %s. A pool is not changed in place: "
                "forget it (state: absent; the data stays on disk) and create it again"
                % (name, "; ".join(differ)),
                pool=current,
            )
        module.exit_json(**result)

    body = {"name": name, "backend": p["backend"]}
    for key in ("path", "zpool", "listen"):
        if p[key] is not None:
            body[key] = p[key]
    after = {"name": name}
    after.update((k, v) for k, v in body.items() if k != "name")
    result["changed"] = True
    if module._diff:
        result["diff"] = dict(before={}, after=after)
    if module.check_mode:
        result["pool"] = after
        module.exit_json(**result)
    try:
        created = client.post("/v1/pools", body)
    except CairnApiError as e:
        fail_api(module, e, "cannot create pool %s" % name)
    result["pool"] = created
    if module._diff:
        result["diff"]["after"] = pool_view(created)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
