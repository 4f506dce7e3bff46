# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Replica placement for the volume role: which pools hold a new volume's replicas."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: place_replicas
short_description: Choose the pools of a new volume's replicas, one node per replica
version_added: "0.1.0"
author:
  - Cairn developers
description:
  - Takes the pools of the storage hosts, in inventory order, and picks O(count) of them
    as C(NODE/POOL), going round the nodes so that each replica lands on a different node.
  - With O(allow_same_node=true), when there are fewer nodes than replicas, it goes round
    again and takes each node's next pool (one-machine setups only).
  - Fails, naming the nodes and pools it had, when the replicas cannot be placed.
options:
  _input:
    description: The pools, each C(NODE/POOL) or a dict with C(node) and C(pool).
    type: list
    elements: raw
    required: true
  count:
    description: How many replicas.
    type: int
    required: true
  allow_same_node:
    description: Allow several replicas on one node.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Three replicas on the pools of three storage hosts
  ansible.builtin.set_fact:
    replicas: "{{ [{'node': 'a', 'pool': 'p1'}, {'node': 'b', 'pool': 'p1'},
                   {'node': 'c', 'pool': 'p1'}] | cairn.storage.place_replicas(3) }}"
  # ['a/p1', 'b/p1', 'c/p1']
"""

RETURN = r"""
_value:
  description: The chosen replicas, C(NODE/POOL).
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError


def place_replicas(pools, count, allow_same_node=False):
    try:
        count = int(count)
    except (TypeError, ValueError):
        raise AnsibleFilterError(
            "place_replicas: count must be an integer, not %r" % (count,)
        ) from None
    if count < 1:
        raise AnsibleFilterError("place_replicas: count must be at least 1, not %d" % count)
    by_node = {}
    order = []
    for entry in pools or []:
        if isinstance(entry, str) and entry.count("/") == 1 and "" not in entry.split("/"):
            entry = dict(zip(("node", "pool"), entry.split("/")))
        if not isinstance(entry, dict) or not entry.get("node") or not entry.get("pool"):
            raise AnsibleFilterError(
                "place_replicas: each pool is NODE/POOL or a dict with node and pool, not %r"
                % (entry,)
            )
        node = str(entry["node"])
        if node not in by_node:
            by_node[node] = []
            order.append(node)
        name = str(entry["pool"])
        if name not in by_node[node]:
            by_node[node].append(name)
    available = sum(len(v) for v in by_node.values())
    have = ", ".join("%s (%s)" % (n, ", ".join(by_node[n])) for n in order) or "none"
    if not allow_same_node and count > len(order):
        raise AnsibleFilterError(
            "cannot place %d replicas on different nodes: the storage hosts have pools on %d "
            "node(s): %s. Add pools on more hosts (cairn_pools), lower the replica count, or "
            "set allow_same_node: true for a one-machine setup" % (count, len(order), have)
        )
    if count > available:
        raise AnsibleFilterError(
            "cannot place %d replicas: only %d pool(s) exist: %s" % (count, available, have)
        )
    chosen = []
    depth = 0
    while len(chosen) < count:
        for node in order:
            if depth < len(by_node[node]) and len(chosen) < count:
                chosen.append("%s/%s" % (node, by_node[node][depth]))
        depth += 1
    return chosen


class FilterModule(object):
    def filters(self):
        return {"place_replicas": place_replicas}
