#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: engine
short_description: Install the Cairn engine in a virtual environment and run its node agent
description:
  - Installs one version of the Cairn engine (the Python package C(cairn-engine)) into a
    virtual environment from a wheelhouse on the host
    (C(pip install --no-index --find-links WHEELHOUSE cairn-engine==VERSION)); no index
    and no internet are used.
  - Writes the node file C(CONFIG_DIR/node.yml) from O(config) (the format of the agent's
    documentation, checked by the engine's own loader before it replaces the old file), the
    API token file (mode 0600) and, under systemd, a unit C(SERVICE_NAME.service).
  - Starts, stops or removes the agent, under systemd or as C(cairn node run --daemon)
    where there is no systemd, and waits until its API answers with the token.
  - Idempotent. The installed version is read with C(VENV/bin/cairn --version). The agent
    is restarted only when its version, node file or unit changed. The token is read by the
    agent at each request, so a new token needs no restart.
version_added: "0.1.0"
author:
  - Cairn developers (@cairn)
options:
  version:
    description:
      - The engine version to install, as in the wheel's file name (C(0.1.0)).
      - Another version than the installed one upgrades or downgrades in place.
      - Required unless O(state=absent).
    type: str
  wheelhouse:
    description:
      - A directory on the host with the engine's wheel and every wheel it depends on, or a
        tar file of these wheels (unpacked into a temporary directory to install).
      - Required when the installed version is not O(version).
    type: path
  package:
    description: The distribution name of the engine.
    type: str
    default: cairn-engine
  venv:
    description: The virtual environment; the agent's command is C(VENV/bin/cairn).
    type: path
    default: /opt/cairn/venv
  python:
    description:
      - The interpreter the virtual environment is made from (a name in C(PATH) or a
        path). It must be Python 3.11 or newer.
    type: str
    default: python3
  config_dir:
    description: Where C(node.yml) (and by default the token) go.
    type: path
    default: /etc/cairn
  config:
    description:
      - The node file as a mapping (C(name), C(address), C(state_dir), C(api), C(metrics),
        C(peers), C(replication)); see the agent's documentation.
      - C(state_dir) is required. C(api.token_file) is set to O(token_file).
      - Required unless O(state=absent).
    type: dict
  token:
    description:
      - The API's bearer token (at least 16 characters), written to O(token_file) with mode
        0600. Every agent of a cluster must have the same token.
      - Without it, O(token_file) must already hold one.
    type: str
  token_file:
    description: The token file. The default is C(CONFIG_DIR/token).
    type: path
  service_manager:
    description:
      - V(systemd) runs the agent from a unit; V(daemon) runs
        C(cairn node run --config CONFIG --daemon) (pid in C(STATE_DIR/agent.pid));
        V(none) only installs and configures.
      - V(auto) is V(systemd) when C(/run/systemd/system) exists, else V(daemon).
    type: str
    choices: [auto, systemd, daemon, none]
    default: auto
  service_name:
    description: The systemd unit's name (without C(.service)).
    type: str
    default: cairn-agent
  unit_dir:
    description: Where the systemd unit file goes.
    type: path
    default: /etc/systemd/system
  state:
    description:
      - V(started) installs, configures and runs the agent.
      - V(stopped) installs and configures it and stops it.
      - V(absent) stops it and removes the virtual environment and the unit. The node file,
        the token and the state directory (pools, desired state) stay.
    type: str
    choices: [started, stopped, absent]
    default: started
  api_url:
    description:
      - Where to check that the agent answers after a start. The default comes from the
        node file's C(api.listen) (a wildcard address is reached on 127.0.0.1).
    type: str
  ca_file:
    description: PEM certificates to check the agent's TLS certificate against.
    type: path
  wait_timeout:
    description: Seconds to wait for the agent's API after a start or restart.
    type: int
    default: 120
  stop_timeout:
    description: Seconds to wait for the agent to stop (it stops its targets and pools first).
    type: int
    default: 60
notes:
  - Supports C(check_mode) and C(diff) (the node file and the unit; never the token).
  - The node file is written as YAML whose strings are quoted, in a fixed key order, so that
    the same O(config) always gives the same file.
seealso:
  - module: cairn.storage.cairn_info
"""

EXAMPLES = r"""
- name: Engine 0.1.0 with its agent, from wheels copied to the host
  cairn.storage.engine:
    version: 0.1.0
    wheelhouse: /opt/cairn/wheelhouse/0.1.0
    python: python3.11
    token: "{{ vault_cairn_token }}"
    config:
      name: node-a
      address: 10.0.0.1
      state_dir: /var/lib/cairn
      api: {listen: 10.0.0.1:6060}
      metrics: {listen: 10.0.0.1:9500}
      peers: {node-b: "http://10.0.0.2:6060", node-c: "http://10.0.0.3:6060"}

- name: Stop the agent, keep everything installed
  cairn.storage.engine:
    version: 0.1.0
    state: stopped
    config: "{{ cairn_node_config }}"

- name: Remove the engine (node file, token and data stay)
  cairn.storage.engine:
    state: absent
"""

RETURN = r"""
version:
  description: The engine version installed now (none after O(state=absent)).
  returned: always
  type: str
  sample: 0.1.1
previous_version:
  description: The version installed before the task (none when there was none).
  returned: always
  type: str
  sample: 0.1.0
config_path:
  description: The node file.
  returned: always
  type: str
  sample: /etc/cairn/node.yml
api_url:
  description: Where the agent answers.
  returned: unless O(state=absent)
  type: str
  sample: http://10.0.0.1:6060
service_manager:
  description: What runs the agent, V(systemd), V(daemon) or V(none).
  returned: always
  type: str
  sample: daemon
restarted:
  description: The running agent was stopped and started again (new version, node file or unit).
  returned: always
  type: bool
pid:
  description: The agent's pid in V(daemon) mode.
  returned: when the agent runs in daemon mode
  type: int
  sample: 4242
node:
  description: The node name the agent answers with (C(GET /v1/health)).
  returned: when the agent was started or found running
  type: str
  sample: node-a
"""

import copy
import json
import os
import shutil
import signal
import tarfile
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.cairn.storage.plugins.module_utils.engine_install import (
    DEFAULT_PACKAGE,
    MIN_PYTHON,
    agent_alive,
    default_api_url,
    parse_cairn_version,
    parse_python_version,
    read_pid,
    render_node_file,
    render_unit,
    state_dir_of,
    wheel_prefix,
)

SYSTEMD_RUN_DIR = "/run/systemd/system"
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
# the engine's own loader checks the node file before it replaces the old one
CHECK_CONFIG = (
    "import sys\n"
    "from pathlib import Path\n"
    "from cairn.agent.config import ConfigError, load\n"
    "try:\n"
    "    load(Path(sys.argv[1]))\n"
    "except ConfigError as e:\n"
    "    print(e)\n"
    "    raise SystemExit(2)\n"
)


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def file_mode(path):
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return None


def wheel_names(wheelhouse):
    """The files of a wheelhouse: a directory of wheels or a tar file of them."""
    if os.path.isdir(wheelhouse):
        return sorted(os.listdir(wheelhouse))
    with tarfile.open(wheelhouse) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def unpack_wheels(archive, into):
    """The wheels of the tar file ``archive`` into the directory ``into`` (plain files with
    plain names only: nothing is written outside it)."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name
            if not member.isfile() or "/" in name or name.startswith(".") or name in ("", ".."):
                raise ValueError("%s: %r is not a wheel file" % (archive, name))
            source = tar.extractfile(member)
            with open(os.path.join(into, name), "wb") as f:
                shutil.copyfileobj(source, f)


def tail(path, lines=15):
    text = read_text(path) or ""
    return "\n".join(text.splitlines()[-lines:])


class Engine:
    """One host's engine: what is there, what is wanted, and the steps between."""

    def __init__(self, module):
        self.module = module
        p = module.params
        self.p = p
        self.venv = p["venv"]
        self.venv_python = os.path.join(self.venv, "bin", "python")
        self.cairn = os.path.join(self.venv, "bin", "cairn")
        self.config_path = os.path.join(p["config_dir"], "node.yml")
        self.token_file = p["token_file"] or os.path.join(p["config_dir"], "token")
        self.unit_path = os.path.join(p["unit_dir"], "%s.service" % p["service_name"])
        self.manager = self._manager()
        self.python = None

    # -- what is there ----------------------------------------------------------------

    def _manager(self):
        wanted = self.p["service_manager"]
        if wanted != "auto":
            return wanted
        return "systemd" if os.path.isdir(SYSTEMD_RUN_DIR) else "daemon"

    def run(self, argv, what, check_rc=True, **kwargs):
        rc, out, err = self.module.run_command(argv, **kwargs)
        if check_rc and rc != 0:
            self.module.fail_json(
                msg="%s failed (exit %d): %s" % (what, rc, (err or out).strip()[-2000:]),
                cmd=argv,
                rc=rc,
                stdout=out,
                stderr=err,
            )
        return rc, out, err

    def python_version(self, python):
        rc, out, err = self.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            "asking %s its version" % python,
            check_rc=False,
        )
        return parse_python_version(out) if rc == 0 else None

    def check_python(self):
        """Fail unless the interpreter of the venv (or the one it would be made from) is
        3.11 or newer."""
        minimum = "%d.%d" % MIN_PYTHON
        if os.path.exists(self.venv_python):
            found = self.python_version(self.venv_python)
            if found is None or found[:2] < MIN_PYTHON:
                self.module.fail_json(
                    msg="the virtual environment %s runs Python %s; the engine needs %s or "
                    "newer: remove it (state: absent) and give python: a newer interpreter"
                    % (self.venv, ".".join(map(str, found or ())) or "that does not start", minimum)
                )
            return
        python = self.p["python"]
        if not os.path.isabs(python):
            found_path = self.module.get_bin_path(python)
            if found_path is None:
                self.module.fail_json(
                    msg="python: %s is not in PATH; the engine needs Python %s or newer "
                    "(install it, e.g. the python3.11 package, and name it here)"
                    % (python, minimum)
                )
            python = found_path
        found = self.python_version(python)
        if found is None:
            self.module.fail_json(msg="python: %s does not run" % python)
        if found[:2] < MIN_PYTHON:
            self.module.fail_json(
                msg="python: %s is Python %s; the engine needs %s or newer (install a newer "
                "interpreter and name it in python:)" % (python, ".".join(map(str, found)), minimum)
            )
        self.python = python

    def installed_version(self):
        if not os.path.exists(self.cairn):
            return None
        rc, out, err = self.run([self.cairn, "--version"], "cairn --version", check_rc=False)
        version = parse_cairn_version(out + "\n" + err) if rc == 0 else None
        if version is None:
            self.module.warn(
                "%s --version did not answer (exit %d: %s); the engine is installed again"
                % (self.cairn, rc, (err or out).strip()[-300:])
            )
        return version

    def pid_file(self, config):
        state_dir = (config or {}).get("state_dir") or state_dir_of(read_text(self.config_path))
        return os.path.join(state_dir, "agent.pid") if state_dir else None

    def running(self, config):
        if self.manager == "systemd":
            rc, out, err = self.run(
                ["systemctl", "is-active", self.p["service_name"]], "systemctl", check_rc=False
            )
            return out.strip() == "active"
        if self.manager == "daemon":
            pid_file = self.pid_file(config)
            return bool(pid_file) and agent_alive(read_pid(pid_file), self.config_path)
        return False

    def enabled(self):
        rc, out, err = self.run(
            ["systemctl", "is-enabled", self.p["service_name"]], "systemctl", check_rc=False
        )
        return out.strip() == "enabled"

    # -- writing ----------------------------------------------------------------------

    def write_file(self, path, content, mode):
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w") as f:
                f.write(content)
            self.module.atomic_move(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        os.chmod(path, mode)

    def check_config_file(self, text):
        """The engine's loader reads ``text`` as the node file: fail with its message."""
        fd, tmp = tempfile.mkstemp(dir=self.p["config_dir"], prefix=".node.yml.check.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            rc, out, err = self.run(
                [self.venv_python, "-c", CHECK_CONFIG, tmp], "checking the node file", False
            )
        finally:
            os.unlink(tmp)
        if rc != 0:
            self.module.fail_json(
                msg="config: the engine refuses the node file: %s" % (out or err).strip()[-1000:]
            )

    def install(self, version):
        if not os.path.exists(self.venv_python):
            self.run([self.python, "-m", "venv", self.venv], "creating the venv %s" % self.venv)
        wheelhouse = self.p["wheelhouse"]
        unpacked = None
        if not os.path.isdir(wheelhouse):
            unpacked = tempfile.mkdtemp(prefix=".cairn-wheels.", dir=os.path.dirname(wheelhouse))
            try:
                unpack_wheels(wheelhouse, unpacked)
            except (OSError, ValueError, tarfile.TarError) as e:
                shutil.rmtree(unpacked, ignore_errors=True)
                self.module.fail_json(msg="wheelhouse: cannot unpack %s: %s" % (wheelhouse, e))
        package = self.p["package"]
        try:
            self.run(
                [self.venv_python, "-m", "pip", "install", "--no-index", "--find-links",
                 unpacked or wheelhouse, "%s==%s" % (package, version)],
                "pip install %s==%s from %s" % (package, version, wheelhouse),
                environ_update=PIP_ENV,
            )  # fmt: skip
        finally:
            if unpacked:
                shutil.rmtree(unpacked, ignore_errors=True)
        now = self.installed_version()
        if now != version:
            self.module.fail_json(
                msg="installed %s==%s, but %s --version says %s: the wheel's version and the "
                "engine's cairn.__version__ differ" % (package, version, self.cairn, now)
            )

    # -- the agent --------------------------------------------------------------------

    def start(self, config):
        if self.manager == "systemd":
            self.run(["systemctl", "start", self.p["service_name"]], "systemctl start")
            return
        rc, out, err = self.run(
            [self.cairn, "node", "run", "--config", self.config_path, "--daemon"],
            "starting the agent",
            check_rc=False,
        )
        if rc != 0:
            log = os.path.join(config["state_dir"], "logs", "agent.log")
            self.module.fail_json(
                msg="the agent did not start (exit %d): %s; last lines of %s:\n%s"
                % (rc, (err or out).strip(), log, tail(log)),
                rc=rc,
            )

    def stop(self, config):
        if self.manager == "systemd":
            self.run(["systemctl", "stop", self.p["service_name"]], "systemctl stop")
            return
        pid_file = self.pid_file(config)
        pid = read_pid(pid_file) if pid_file else None
        if not agent_alive(pid, self.config_path):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            return
        deadline = time.time() + self.p["stop_timeout"]
        while agent_alive(pid, self.config_path):
            if time.time() >= deadline:
                self.module.fail_json(
                    msg="the agent (pid %d) did not stop within %d s of SIGTERM; see %s"
                    % (pid, self.p["stop_timeout"], os.path.dirname(pid_file) + "/logs/agent.log")
                )
            time.sleep(0.2)

    def wait_api(self, config, token):
        """Wait until ``GET /v1/health`` answers with this node's name and the token is
        accepted (``GET /v1/pools``); the node name."""
        url = (self.p["api_url"] or default_api_url(config)).rstrip("/")
        deadline = time.time() + self.p["wait_timeout"]
        last = "no answer yet"
        while True:
            node, problem, fatal = self.probe(url, config, token)
            if problem is None:
                return url, node
            if fatal:
                self.module.fail_json(msg=problem, api_url=url)
            last = problem
            if time.time() >= deadline:
                self.module.fail_json(
                    msg="the agent's API at %s did not answer within %d s (%s); see %s"
                    % (url, self.p["wait_timeout"], last,
                       os.path.join(config["state_dir"], "logs", "agent.log")),
                    api_url=url,
                )  # fmt: skip
            time.sleep(0.5)

    def probe(self, url, config, token):
        """``(node, None, False)`` when the agent answers as this node and takes the
        token; else ``(None, why, fatal)``: fatal when waiting cannot help."""
        try:
            doc = json.loads(self.get(url + "/v1/health", None).read())
        except Exception as e:  # not up yet: refused, 503, half-started
            return None, str(e), False
        node = doc.get("node") if isinstance(doc, dict) else None
        if config.get("name") and node != config["name"]:
            return None, "%s answers as node %s, not %s: another agent listens there" % (
                url, node, config["name"]), True  # fmt: skip
        try:
            self.get(url + "/v1/pools", token).read()
        except Exception as e:
            if getattr(e, "code", None) == 401:
                return None, "%s refuses the token in %s" % (url, self.token_file), True
            return None, str(e), False
        return node, None, False

    def get(self, url, token):
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = "Bearer %s" % token
        return open_url(
            url, headers=headers, method="GET", timeout=10, ca_path=self.p["ca_file"],
            validate_certs=True, follow_redirects="none",
        )  # fmt: skip


def absent(engine, result):
    module = engine.module
    result.update(version=None, previous_version=engine.installed_version())
    running = engine.running(engine.p["config"])
    unit = engine.manager == "systemd" and os.path.exists(engine.unit_path)
    venv = os.path.exists(engine.venv)
    result["changed"] = running or unit or venv
    if module._diff and result["changed"]:
        result["diff"] = dict(
            before={"version": result["previous_version"], "running": running,
                    "unit": engine.unit_path if unit else None},
            after={"version": None, "running": False, "unit": None},
        )  # fmt: skip
    if module.check_mode or not result["changed"]:
        return result
    if running:
        engine.stop(engine.p["config"])
    if unit:
        engine.run(["systemctl", "disable", engine.p["service_name"]], "systemctl", False)
        os.unlink(engine.unit_path)
        engine.run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    if venv:
        shutil.rmtree(engine.venv)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            version=dict(type="str"),
            wheelhouse=dict(type="path"),
            package=dict(type="str", default=DEFAULT_PACKAGE),
            venv=dict(type="path", default="/opt/cairn/venv"),
            python=dict(type="str", default="python3"),
            config_dir=dict(type="path", default="/etc/cairn"),
            config=dict(type="dict"),
            token=dict(type="str", no_log=True),
            token_file=dict(type="path", no_log=False),
            service_manager=dict(
                type="str", choices=["auto", "systemd", "daemon", "none"], default="auto"
            ),
            service_name=dict(type="str", default="cairn-agent"),
            unit_dir=dict(type="path", default="/etc/systemd/system"),
            state=dict(type="str", choices=["started", "stopped", "absent"], default="started"),
            api_url=dict(type="str"),
            ca_file=dict(type="path"),
            wait_timeout=dict(type="int", default=120),
            stop_timeout=dict(type="int", default=60),
        ),
        required_if=[
            ("state", "started", ("version", "config")),
            ("state", "stopped", ("version", "config")),
        ],
        supports_check_mode=True,
    )
    p = module.params
    engine = Engine(module)
    if engine.manager == "systemd" and not os.path.isdir(SYSTEMD_RUN_DIR):
        module.fail_json(
            msg="service_manager: systemd, but systemd does not run on this host (no %s); "
            "use daemon" % SYSTEMD_RUN_DIR
        )
    result = dict(
        changed=False,
        config_path=engine.config_path,
        service_manager=engine.manager,
        restarted=False,
    )
    if p["state"] == "absent":
        result = absent(engine, result)
        module.exit_json(**result)

    # -- the wanted node file and token -----------------------------------------------
    config = copy.deepcopy(p["config"])
    if not config.get("state_dir"):
        module.fail_json(msg="config: state_dir is required (where the agent keeps its state)")
    api = config.setdefault("api", {}) or {}
    config["api"] = api
    if api.get("token_file") and os.path.normpath(api["token_file"]) != engine.token_file:
        if p["token_file"]:
            module.fail_json(
                msg="config: api.token_file is %s but token_file is %s: give one of them"
                % (api["token_file"], p["token_file"])
            )
        engine.token_file = os.path.normpath(api["token_file"])
    api["token_file"] = engine.token_file
    config_text = render_node_file(config)

    token = p["token"]
    if token is not None:
        token = token.strip()
        if len(token) < 16 or any(c.isspace() for c in token):
            module.fail_json(msg="token: must be at least 16 characters without blanks")
        token_ok = (read_text(engine.token_file) == token + "\n"
                    and file_mode(engine.token_file) == 0o600)  # fmt: skip
    else:
        existing = (read_text(engine.token_file) or "").strip()
        if len(existing) < 16:
            module.fail_json(
                msg="no token: give token:, or put one (16+ characters) in %s" % engine.token_file
            )
        token, token_ok = existing, True

    # -- the engine -------------------------------------------------------------------
    engine.check_python()
    version = p["version"]
    previous = engine.installed_version()
    result.update(version=version, previous_version=previous)
    need_install = previous != version
    if need_install:
        wheelhouse = p["wheelhouse"]
        if not wheelhouse:
            module.fail_json(
                msg="version %s is not installed in %s (it has %s): give wheelhouse:, a "
                "directory with the engine's wheels" % (version, engine.venv, previous or "none")
            )
        try:
            names = wheel_names(wheelhouse)
        except (OSError, tarfile.TarError) as e:
            if module.check_mode and not os.path.exists(wheelhouse):
                names = None  # the role copies it in a real run
            else:
                module.fail_json(
                    msg="wheelhouse: %s is neither a directory nor a tar file of wheels: %s"
                    % (wheelhouse, e)
                )
        prefix = wheel_prefix(p["package"], version)
        if names is not None and not any(n.lower().startswith(prefix) for n in names):
            start = wheel_prefix(p["package"], "")[:-1]
            module.fail_json(
                msg="wheelhouse: %s has no wheel of %s %s (it has: %s); build one with "
                "pip wheel -c engine/constraints.txt engine/ -w DIR"
                % (wheelhouse, p["package"], version,
                   ", ".join(n for n in names if n.lower().startswith(start)) or "none"),
            )  # fmt: skip

    old_config = read_text(engine.config_path)
    config_changed = old_config != config_text
    unit_text = old_unit = None
    unit_changed = False
    if engine.manager == "systemd":
        unit_text = render_unit(engine.venv, engine.config_path, config.get("name") or "",
                                p["stop_timeout"])  # fmt: skip
        old_unit = read_text(engine.unit_path)
        unit_changed = old_unit != unit_text
    running = engine.running(config)
    enabled = engine.enabled() if engine.manager == "systemd" else True
    wants_running = p["state"] == "started" and engine.manager != "none"
    restart = running and wants_running and (need_install or config_changed or unit_changed)
    start = wants_running and not running
    stop = running and p["state"] == "stopped"
    enable = engine.manager == "systemd" and p["state"] == "started" and not enabled

    changed = need_install or config_changed or unit_changed or not token_ok
    changed = changed or restart or start or stop or enable
    result["changed"] = changed
    if module._diff and changed:
        diffs = []
        if need_install:
            diffs.append(dict(before_header="version", after_header="version",
                              before="%s\n" % previous, after="%s\n" % version))  # fmt: skip
        if config_changed:
            diffs.append(dict(before_header=engine.config_path, after_header=engine.config_path,
                              before=old_config or "", after=config_text))  # fmt: skip
        if unit_changed:
            diffs.append(dict(before_header=engine.unit_path, after_header=engine.unit_path,
                              before=old_unit or "", after=unit_text))  # fmt: skip
        if start or stop or restart:
            before = "running" if running else "stopped"
            after = "restarted" if restart else ("running" if wants_running else "stopped")
            diffs.append(dict(before_header="agent", after_header="agent",
                              before=before + "\n", after=after + "\n"))  # fmt: skip
        result["diff"] = diffs
    result["restarted"] = restart
    if module.check_mode:
        if p["state"] == "started" and engine.manager != "none":
            result["api_url"] = (p["api_url"] or default_api_url(config)).rstrip("/")
        module.exit_json(**result)

    # -- apply --------------------------------------------------------------------------
    if need_install:
        engine.install(version)
    if not os.path.isdir(p["config_dir"]):
        os.makedirs(p["config_dir"], 0o755)
    if not token_ok:
        engine.write_file(engine.token_file, token + "\n", 0o600)
    if config_changed:
        engine.check_config_file(config_text)
        engine.write_file(engine.config_path, config_text, 0o644)
    if unit_changed:
        engine.write_file(engine.unit_path, unit_text, 0o644)
        engine.run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    if enable:
        engine.run(["systemctl", "enable", p["service_name"]], "systemctl enable")
    if restart or stop:
        engine.stop(config)
    if restart or start:
        engine.start(config)
    if wants_running:
        url, node = engine.wait_api(config, token)
        result.update(api_url=url, node=node)
        if engine.manager == "daemon":
            result["pid"] = read_pid(engine.pid_file(config))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
