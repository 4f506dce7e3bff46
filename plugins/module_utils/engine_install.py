# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Pure helpers of the ``engine`` module: the node file and the systemd unit as text, the
installed version, the agent's pid file.  Nothing here runs a command."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

MIN_PYTHON = (3, 11)
DEFAULT_PACKAGE = "cairn-engine"
HEADER = "# Managed by Ansible (cairn.storage.engine); changes made here are overwritten.\n"

# the node file's keys in the order docs/agent.md shows them; others follow, sorted
_TOP_ORDER = ("name", "address", "state_dir", "api", "metrics", "peers", "replication")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
_VERSION_OUT = re.compile(r"^\s*cairn\s+(\S+)\s*$", re.MULTILINE)
_PYTHON_OUT = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def _key(key):
    key = str(key)
    if _PLAIN_KEY.match(key) and key.lower() not in _YAML_WORDS:
        return key
    return json.dumps(key)


def _scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a YAML double-quoted scalar


def _ordered(mapping, top):
    keys = list(mapping)
    if not top:
        return sorted(keys, key=str)
    first = [k for k in _TOP_ORDER if k in mapping]
    return first + sorted((k for k in keys if k not in _TOP_ORDER), key=str)


def _lines(mapping, indent, top=False):
    pad = " " * indent
    for key in _ordered(mapping, top):
        value = mapping[key]
        if isinstance(value, dict) and value:
            yield "%s%s:" % (pad, _key(key))
            yield from _lines(value, indent + 2)
        elif isinstance(value, (list, tuple)) and value:
            yield "%s%s:" % (pad, _key(key))
            for item in value:
                if isinstance(item, (dict, list, tuple)):
                    yield "%s  - %s" % (pad, json.dumps(item, sort_keys=True))
                else:
                    yield "%s  - %s" % (pad, _scalar(item))
        elif isinstance(value, dict):
            yield "%s%s: {}" % (pad, _key(key))
        elif isinstance(value, (list, tuple)):
            yield "%s%s: []" % (pad, _key(key))
        else:
            yield "%s%s: %s" % (pad, _key(key), _scalar(value))


def render_node_file(config):
    """The node file (docs/agent.md "Running it") for the mapping ``config``: block YAML,
    keys in a fixed order, every string quoted, so that equal mappings give equal text."""
    return HEADER + "\n".join(_lines(config, 0, top=True)) + "\n"


def render_unit(venv, config_path, node_name, stop_timeout):
    """The systemd unit that runs the agent in the foreground (``Type=simple``).

    ``KillMode=mixed``: SIGTERM goes to the agent alone, which stops its targets, then its
    pool servers; whatever is left after ``TimeoutStopSec`` gets SIGKILL."""
    return (
        HEADER
        + "[Unit]\n"
        + "Description=Cairn node agent %s\n" % node_name
        + "After=network-online.target\n"
        + "Wants=network-online.target\n"
        + "\n[Service]\n"
        + "Type=simple\n"
        + "ExecStart=%s node run --config %s\n" % (os.path.join(venv, "bin", "cairn"), config_path)
        + "Restart=on-failure\n"
        + "RestartSec=5\n"
        + "KillMode=mixed\n"
        + "TimeoutStopSec=%d\n" % stop_timeout
        + "LimitNOFILE=65536\n"
        + "\n[Install]\n"
        + "WantedBy=multi-user.target\n"
    )


def parse_cairn_version(output):
    """``0.1.0`` from ``cairn --version``'s ``cairn 0.1.0``; ``None`` when it says else."""
    m = _VERSION_OUT.search(output or "")
    return m.group(1) if m else None


def parse_python_version(output):
    """``(3, 11, 2)`` from ``3.11.2``; ``None`` otherwise."""
    m = _PYTHON_OUT.match((output or "").strip())
    return tuple(int(x) for x in m.groups()) if m else None


def wheel_prefix(package, version):
    """The file name start of a wheel of ``package`` ``version`` (PEP 427 escaping)."""
    return "%s-%s-" % (re.sub(r"[-_.]+", "_", package).lower(), version)


def default_api_url(config):
    """Where the agent's API answers, from the node file's ``api.listen``: a wildcard
    address is reached on 127.0.0.1; ``https`` when the API has a certificate."""
    api = config.get("api") or {}
    listen = str(api.get("listen") or "0.0.0.0:6060")
    host, _sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    if ":" in host:
        host = "[%s]" % host
    scheme = "https" if api.get("tls_cert") else "http"
    return "%s://%s:%s" % (scheme, host, port or "6060")


def read_pid(pid_file):
    """The pid in ``pid_file``, or ``None`` when there is none."""
    try:
        with open(pid_file) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def agent_alive(pid, config_path, proc="/proc"):
    """The process ``pid`` runs and is ``cairn node run --config CONFIG_PATH`` (a pid
    reused by another program is not the agent)."""
    if not pid:
        return False
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as f:
            argv = f.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return False
    if "node" not in argv or "run" not in argv:
        return False
    return config_path in argv or ("--config=%s" % config_path) in argv


def state_dir_of(node_file_text):
    """``state_dir`` of a node file written by ``render_node_file`` (no YAML parser on the
    managed host is needed); ``None`` when it has none."""
    m = re.search(r"^state_dir:\s*(.+?)\s*$", node_file_text or "", re.MULTILINE)
    if not m:
        return None
    value = m.group(1)
    if value.startswith('"'):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value.strip("'")
