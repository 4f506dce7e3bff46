#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cairn_info
short_description: Gather the pools, volumes and snapshots of a Cairn node
description:
  - Reads what the node agent at O(api_url) knows, changes nothing.
  - The pools of the node (C(GET /v1/pools)), the volumes whose target runs there with
    each target's status (C(GET /v1/volumes/NAME)) and each volume's snapshots
    (C(GET /v1/volumes/NAME/snapshots)).
  - A volume whose target does not answer is still listed, with C(status_error) or
    C(snapshots_error) saying why.
version_added: "0.1.0"
author:
  - Cairn developers (@cairn)
options:
  volumes:
    description: Only these volumes (all when not given). An unknown name is a failure.
    type: list
    elements: str
  gather_status:
    description: Ask each target for its status (C(status) of each volume).
    type: bool
    default: true
  gather_snapshots:
    description: List each volume's snapshots (C(snapshots) of each volume).
    type: bool
    default: true
extends_documentation_fragment:
  - cairn.storage.cairn_api
notes:
  - Supports C(check_mode); it never changes anything.
seealso:
  - module: cairn.storage.volume
"""

EXAMPLES = r"""
- name: What runs on this node
  cairn.storage.cairn_info:
  register: cairn

- name: Every volume is healthy
  ansible.builtin.assert:
    that: item.status.state == 'healthy'
  loop: "{{ cairn.volumes }}"
  loop_control:
    label: "{{ item.name }}"
"""

RETURN = r"""
node:
  description: The node's name (C(GET /v1/health)).
  returned: always
  type: str
  sample: node-a
pools:
  description: The node's pools as the agent describes them.
  returned: always
  type: list
  elements: dict
  sample:
    - name: p1
      backend: embedded
      listen: 10.0.0.1:3232
volumes:
  description:
    - The volumes whose target runs on this node, each with C(status) (the target's status
      document, or null with C(status_error)) and C(snapshots) (or C(snapshots_error)).
  returned: always
  type: list
  elements: dict
  sample:
    - name: db
      size: 10737418240
      replicas: [node-a/p1, node-b/p1, node-c/p1]
      status: {state: healthy}
      snapshots: [{name: before-upgrade}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cairn.storage.plugins.module_utils.cairn_api import (
    CairnApiError,
    cairn_argument_spec,
    client_from_module,
    fail_api,
)


def main():
    argument_spec = cairn_argument_spec()
    argument_spec.update(
        volumes=dict(type="list", elements="str"),
        gather_status=dict(type="bool", default=True),
        gather_snapshots=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    client = client_from_module(module)
    try:
        node = (client.get("/v1/health") or {}).get("node")
        pools = client.get("/v1/pools") or []
        listed = client.get("/v1/volumes") or []
    except CairnApiError as e:
        fail_api(module, e, "cannot read the agent at %s" % p["api_url"])

    names = [v["name"] for v in listed]
    if p["volumes"] is not None:
        unknown = [n for n in p["volumes"] if n not in names]
        if unknown:
            module.fail_json(
                msg="no volume %s on node %s (it serves: %s)"
                % (", ".join(unknown), node, ", ".join(names) or "none")
            )
        listed = [v for v in listed if v["name"] in p["volumes"]]

    volumes = []
    for v in listed:
        doc = v
        if p["gather_status"]:
            try:
                doc = client.get("/v1/volumes/%s" % v["name"])
            except CairnApiError as e:
                if e.status == 404:  # deleted meanwhile
                    continue
                doc = dict(v, status=None, status_error=str(e))
        if p["gather_snapshots"]:
            try:
                doc["snapshots"] = client.snapshots(v["name"])
            except CairnApiError as e:
                doc["snapshots"], doc["snapshots_error"] = None, e.message
        volumes.append(doc)
    module.exit_json(changed=False, node=node, pools=pools, volumes=volumes)


if __name__ == "__main__":
    main()
