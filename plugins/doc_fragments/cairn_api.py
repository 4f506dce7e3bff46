# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # How every module of cairn.storage reaches a node agent (plugins/module_utils/cairn_api.py).
    DOCUMENTATION = r"""
options:
  api_url:
    description:
      - The node agent's API, C(http://HOST:PORT) or C(https://HOST:PORT).
      - The request goes from the managed host, so the default is the agent on that host.
    type: str
    default: http://127.0.0.1:6060
  token_file:
    description:
      - The file on the managed host whose first line is the agent's bearer token
        (the agent's C(api.token_file)).
    type: path
    default: /etc/cairn/token
  ca_file:
    description:
      - A PEM file on the managed host with the certificates that the agent's TLS
        certificate is checked against (with an C(https) O(api_url)).
      - Without it the system's trusted certificates are used.
    type: path
  timeout:
    description: Seconds to wait for each answer of the agent.
    type: int
    default: 60
"""
