# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""A size as the agent reads it (``10G``, ``512M``, bytes) in bytes."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: size_bytes
short_description: A Cairn size (C(10G), C(512M), bytes) in bytes
version_added: "0.1.0"
author:
  - Cairn developers
description:
  - Reads a size as the node agent and the M(cairn.storage.volume) module read it, the
    suffixes K, M, G, T and P being powers of 1024 (C(G), C(GiB) and C(GB) alike).
  - Fails with the reason for anything else.
options:
  _input:
    description: The size.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: 10 GiB in bytes
  ansible.builtin.debug:
    msg: "{{ '10G' | cairn.storage.size_bytes }}"   # 10737418240
"""

RETURN = r"""
_value:
  description: The size in bytes.
  type: int
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.cairn.storage.plugins.module_utils.cairn_api import parse_size


def size_bytes(value):
    try:
        return parse_size(value)
    except ValueError as e:
        raise AnsibleFilterError("size_bytes: %s" % e) from None


class FilterModule(object):
    def filters(self):
        return {"size_bytes": size_bytes}
