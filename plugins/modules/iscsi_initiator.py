#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Cairn developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: iscsi_initiator
short_description: Configure open-iscsi and log in to a Cairn volume's target
description:
  - Sets the host's initiator name (C(initiatorname.iscsi)) and restarts iscsid when it
    changed, since iscsid reads the name only when it starts.
  - Sets C(iscsid.conf) settings; every other line of the file, comments included, stays.
  - Runs SendTargets discovery on O(portal) through O(iface), with CHAP for discovery
    (O(discovery_auth)); it only adds node records that do not exist yet, so settings of
    existing records are never overwritten by a later discovery.
  - Makes sure the node record of O(target) at O(portal) through O(iface) exists, with
    O(node_settings) and session CHAP (O(chap)).
  - Logs in or out, idempotent per target, portal and interface (O(state)), and can wait
    for the block device by its stable path in C(/dev/disk/by-path).
  - Each part runs only when its options are given; they run in the order above.
version_added: "0.1.0"
author:
  - Cairn developers (@cairn)
options:
  initiator_name:
    description:
      - The initiator's iSCSI name (C(iqn.YYYY-MM.reverse.domain:id) or C(eui.)).
      - When it changes, iscsid is restarted (see O(iscsid_restart)).
    type: str
  initiator_name_file:
    description: Where open-iscsi keeps the initiator name.
    type: path
    default: /etc/iscsi/initiatorname.iscsi
  iscsid_conf:
    description:
      - Settings of C(iscsid.conf), C(key -> value); booleans become C(Yes)/C(No).
      - Keys C(node.*) and C(discovery.*) are the defaults of records created later;
        C(iscsid.*) keys are read by iscsid at start, so a change restarts it.
      - Passwords are refused here (they would be shown in logs); give them with
        O(chap) or O(discovery_auth), which are never logged.
    type: dict
  iscsid_conf_file:
    description: The iscsid configuration file.
    type: path
    default: /etc/iscsi/iscsid.conf
  iscsid_restart:
    description:
      - How iscsid is restarted after the initiator name or an C(iscsid.*) setting changed.
        It is restarted only when it runs.
      - V(auto) uses systemd when it is the init system, else the C(service) command when
        there is one, else V(pidfile).
      - V(pidfile) signals the process of O(iscsid_pid_file) and starts C(iscsid) again
        (hosts and containers without a service manager).
      - V(never) leaves it to the operator (the result says that a restart is due).
    type: str
    choices: [auto, systemd, service, pidfile, never]
    default: auto
  iscsid_service:
    description: The service name of iscsid for V(systemd) and V(service).
    type: str
    default: iscsid
  iscsid_pid_file:
    description: The pid file of iscsid for O(iscsid_restart=pidfile).
    type: path
    default: /run/iscsid.pid
  iscsi_db_dir:
    description:
      - Where iscsiadm keeps its records (C(nodes/), C(send_targets/), C(ifaces/)).
      - By default C(/etc/iscsi) (Debian, Ubuntu), or C(/var/lib/iscsi) when only that
        one has a C(nodes) folder (RHEL family).
    type: path
  portal:
    description:
      - The target portal, C(HOST:PORT) (port 3260 when omitted).
      - Required with O(discover) and O(target).
    type: str
  iface:
    description:
      - The iscsiadm interface the node record and the session use.
      - An interface other than V(default) is created when missing (transport C(tcp)).
    type: str
    default: default
  iface_settings:
    description:
      - Settings of O(iface), C(key -> value), such as C(iface.net_ifacename) or
        C(iface.initiatorname). Not for V(default).
    type: dict
  discover:
    description:
      - Run SendTargets discovery on O(portal). New node records are added, existing ones
        are kept as they are. Skipped in check mode (it writes records).
    type: bool
    default: false
  discovery_auth:
    description:
      - CHAP for the discovery session, written into the discovery record's file (mode
        0600), never on a command line.
    type: dict
    suboptions:
      username:
        description: The initiator's CHAP user name.
        type: str
        required: true
      password:
        description: The initiator's CHAP secret.
        type: str
        required: true
      username_in:
        description: The target's user name for mutual CHAP.
        type: str
      password_in:
        description: The target's secret for mutual CHAP.
        type: str
  target:
    description: The target's name (IQN) whose node record, settings and session are managed.
    type: str
  node_settings:
    description:
      - Settings of the node record, C(key -> value), set with C(iscsiadm -o update)
        (for example C(node.startup), C(node.session.timeo.replacement_timeout)).
      - Passwords are refused here; use O(chap).
    type: dict
  chap:
    description:
      - CHAP for the session (C(node.session.auth.*)), written into the node record's file
        (mode 0600), never on a command line.
    type: dict
    suboptions:
      username:
        description: The initiator's CHAP user name.
        type: str
        required: true
      password:
        description: The initiator's CHAP secret.
        type: str
        required: true
      username_in:
        description: The target's user name for mutual CHAP.
        type: str
      password_in:
        description: The target's secret for mutual CHAP.
        type: str
  state:
    description:
      - What becomes of the node record of O(target) and its session.
      - V(present) makes the record exist with its settings; a session is left as it is.
      - V(logged_in) also logs in unless a session of O(target) at O(portal) through
        O(iface) exists.
      - V(logged_out) logs such a session out and keeps the record.
      - V(absent) logs out and deletes the record.
    type: str
    choices: [present, logged_in, logged_out, absent]
    default: present
  lun:
    description: The LUN whose device O(wait) waits for.
    type: int
    default: 0
  wait:
    description:
      - With O(state=logged_in), wait until C(/dev/disk/by-path/ip-PORTAL-iscsi-TARGET-lun-LUN)
        exists; its real path is returned as RV(device).
    type: bool
    default: false
  wait_timeout:
    description: Seconds O(wait) waits before the module fails.
    type: int
    default: 60
notes:
  - Supports C(check_mode) and C(diff) for every file it changes and every record setting.
  - Login needs the kernel's C(iscsi_tcp) module (and iscsid). Without it the module fails
    and says so; discovery by iscsiadm also needs the kernel's iSCSI transport.
  - Secrets are written into files only root reads; iscsiadm would show them in the
    process list and in logs had they been on its command line.
requirements:
  - open-iscsi (iscsiadm, iscsid)
seealso:
  - module: cairn.storage.volume
  - module: cairn.storage.cairn_info
"""

EXAMPLES = r"""
- name: Name, timeouts, and a logged-in session to a Cairn volume
  cairn.storage.iscsi_initiator:
    initiator_name: iqn.2026-01.com.example:db-host
    iscsid_conf:
      node.session.timeo.replacement_timeout: 30
      node.startup: automatic
    portal: 10.0.0.1:3260
    discover: true
    discovery_auth:
      username: db-client
      password: "{{ vault_db_chap_secret }}"
    target: iqn.2026-11.io.cairn:db
    chap:
      username: db-client
      password: "{{ vault_db_chap_secret }}"
    state: logged_in
    wait: true
  register: db_lun

- name: Format it
  community.general.filesystem:
    dev: "{{ db_lun.device }}"
    fstype: xfs

- name: Log out and forget the target
  cairn.storage.iscsi_initiator:
    portal: 10.0.0.1:3260
    target: iqn.2026-11.io.cairn:db
    state: absent
"""

RETURN = r"""
initiator_name:
  description: The initiator name in O(initiator_name_file) after the task.
  returned: always
  type: str
  sample: iqn.2026-01.com.example:db-host
iscsid_restarted:
  description: Whether iscsid was (or in check mode would be) restarted.
  returned: always
  type: bool
restart_pending:
  description:
    - The initiator name or an iscsid setting changed but iscsid was not restarted
      (O(iscsid_restart=never)).
  returned: always
  type: bool
discovered:
  description: What discovery on O(portal) returned.
  returned: when O(discover) ran
  type: list
  elements: dict
  sample: [{portal: "10.0.0.1:3260", tpgt: 1, target: iqn.2026-11.io.cairn:db}]
node:
  description: The node record's settings after the task (passwords masked).
  returned: when O(target) is given and the record exists
  type: dict
logged_in:
  description: Whether a session of O(target) at O(portal) through O(iface) exists after the task.
  returned: when O(target) is given
  type: bool
device:
  description: The real path of the LUN's block device.
  returned: when O(wait) found it
  type: str
  sample: /dev/sdb
"""

import glob
import os
import signal
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cairn.storage.plugins.module_utils.iscsi import (
    END_RECORD,
    by_path,
    changed_settings,
    is_secret,
    masked,
    normalize_portal,
    parse_node_list,
    parse_record,
    parse_sessions,
    parse_settings,
    portal_parts,
    read_initiator_name,
    set_initiator_name,
    set_settings,
    setting_value,
)

# where the kernel shows its modules and udev the stable names (replaced in unit tests)
SYS_MODULE_DIR = "/sys/module"
BY_PATH_DIR = "/dev/disk/by-path"
SYSTEMD_DIR = "/run/systemd/system"
POLL_INTERVAL = 0.5

# iscsiadm exit codes (open-iscsi's include/iscsi_err.h)
ERR_NO_OBJS_FOUND = 21
ERR_SESS_EXISTS = 15
ERR_TRANS_NOT_FOUND = 12

KERNEL_HINT = (
    "Load it (modprobe iscsi_tcp; on Ubuntu it is in linux-modules-extra-$(uname -r)) or "
    "use a kernel with CONFIG_ISCSI_TCP. Containers need it loaded on their host. Where no "
    "initiator can run, stop before login (state=present; the role's "
    "cairn_initiator_login: false)."
)


class Initiator(object):
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.check = module.check_mode
        self.changed = False
        self.diff = []
        self.result = {"iscsid_restarted": False, "restart_pending": False}
        self.iscsiadm = module.get_bin_path("iscsiadm", required=True)
        self.db_dir = self.p["iscsi_db_dir"] or default_db_dir()
        self.iface_missing = False

    # ---- helpers -------------------------------------------------------------------
    def run(self, argv, what, ok_rcs=(0,), data=None):
        rc, out, err = self.module.run_command(argv, data=data)
        if rc not in ok_rcs:
            self.fail_command(argv, what, rc, out, err)
        return rc, out, err

    def fail_command(self, argv, what, rc, out, err):
        text = (err or out or "").strip()
        msg = "%s failed: %s exited %d: %s" % (what, " ".join(argv), rc, text)
        if kernel_lacks_transport(rc, text):
            msg += ". The kernel lacks the iSCSI initiator (iscsi_tcp). " + KERNEL_HINT
        self.module.fail_json(msg=msg, rc=rc, stdout=out, stderr=err)

    def write_file(self, path, before, after, mode, label):
        """Write ``after`` to ``path`` when it differs; diff and changed either way."""
        if before == after:
            return False
        self.changed = True
        self.diff.append(
            {
                "before_header": path,
                "after_header": path,
                "before": before or "",
                "after": after,
                "label": label,
            }
        )
        if not self.check:
            write_atomic(self.module, path, after, mode)
        return True

    def node_argv(self, *extra):
        return [
            self.iscsiadm,
            "-m",
            "node",
            "-T",
            self.p["target"],
            "-p",
            self.portal,
            "-I",
            self.p["iface"],
        ] + list(extra)

    # ---- initiator name and iscsid.conf ---------------------------------------------
    def initiator_name(self):
        path = self.p["initiator_name_file"]
        before = read_text(self.module, path)
        current = read_initiator_name(before or "")
        wanted = self.p["initiator_name"]
        if wanted is None or wanted == current:
            self.result["initiator_name"] = current
            return False
        check_iscsi_name(self.module, wanted)
        after = set_initiator_name(before or "", wanted)
        self.write_file(path, before, after, 0o600, "initiator name")
        self.result["initiator_name"] = wanted
        return True

    def iscsid_conf(self):
        wanted = self.p["iscsid_conf"]
        if not wanted:
            return False
        path = self.p["iscsid_conf_file"]
        before = read_text(self.module, path)
        if before is None:
            self.module.fail_json(msg="%s does not exist; is open-iscsi installed?" % path)
        wanted = dict((k, setting_value(v)) for k, v in wanted.items())
        todo = changed_settings(parse_settings(before), wanted)
        if not todo:
            return False
        self.write_file(path, before, set_settings(before, todo), 0o600, "iscsid.conf")
        return any(k.startswith("iscsid.") for k in todo)

    def restart_iscsid(self):
        how = self.p["iscsid_restart"]
        if how == "never":
            self.result["restart_pending"] = True
            return
        if how == "auto":
            if os.path.isdir(SYSTEMD_DIR):
                how = "systemd"
            elif self.module.get_bin_path("service"):
                how = "service"
            else:
                how = "pidfile"
        name = self.p["iscsid_service"]
        if how == "systemd":
            ctl = self.module.get_bin_path("systemctl", required=True)
            rc, dummy, dummy = self.module.run_command([ctl, "is-active", "--quiet", name])
            if rc != 0:
                return  # not running: it reads the new name when it starts
            self.result["iscsid_restarted"] = True
            if not self.check:
                self.run([ctl, "restart", name], "restarting iscsid")
        elif how == "service":
            svc = self.module.get_bin_path("service", required=True)
            rc, dummy, dummy = self.module.run_command([svc, name, "status"])
            if rc != 0:
                return
            self.result["iscsid_restarted"] = True
            if not self.check:
                self.run([svc, name, "restart"], "restarting iscsid")
        else:
            pid = running_pid(self.p["iscsid_pid_file"])
            if pid is None:
                return
            self.result["iscsid_restarted"] = True
            if not self.check:
                self.restart_by_pid(pid)

    def restart_by_pid(self, pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 15
        while process_alive(pid):
            if time.time() > deadline:
                self.module.fail_json(
                    msg="iscsid (pid %d) did not stop within 15 s after "
                    "SIGTERM; restart it by hand" % pid
                )
            time.sleep(0.1)
        iscsid = self.module.get_bin_path("iscsid", required=True)
        argv = [
            iscsid,
            "-c",
            self.p["iscsid_conf_file"],
            "-i",
            self.p["initiator_name_file"],
            "-p",
            self.p["iscsid_pid_file"],
        ]
        self.run(argv, "starting iscsid")

    # ---- interface, discovery, node record ------------------------------------------
    def iface(self):
        name = self.p["iface"]
        settings = self.p["iface_settings"]
        if name == "default":
            if settings:
                self.module.fail_json(msg="iface_settings need an iface other than default")
            return
        # "iscsiadm -m iface -I NAME" of a missing iface fails like a broken database
        # (exit 6), so look at the list first: "NAME transport,hwaddress,ip,net,initiator"
        dummy, listing, dummy = self.run([self.iscsiadm, "-m", "iface"], "listing ifaces")
        exists = name in [line.split()[0] for line in listing.splitlines() if line.strip()]
        current = {}
        if exists:
            dummy, out, dummy = self.run(
                [self.iscsiadm, "-m", "iface", "-I", name], "reading iface %s" % name
            )
            current = parse_record(out)
        rc = 0 if exists else ERR_NO_OBJS_FOUND
        # in check mode a missing iface stays missing: no record can name it yet
        self.iface_missing = not exists and self.check
        before = masked(current)
        if rc != 0:
            self.changed = True
            if not self.check:
                self.run(
                    [self.iscsiadm, "-m", "iface", "-I", name, "-o", "new"],
                    "creating iface %s" % name,
                )
        wanted = dict((k, setting_value(v)) for k, v in (settings or {}).items())
        refuse_secrets(self.module, "iface_settings", wanted)
        todo = changed_settings(current, wanted)
        for key, value in sorted(todo.items()):
            self.changed = True
            if not self.check:
                self.run(
                    [
                        self.iscsiadm,
                        "-m",
                        "iface",
                        "-I",
                        name,
                        "-o",
                        "update",
                        "-n",
                        key,
                        "-v",
                        value,
                    ],
                    "setting %s of iface %s" % (key, name),
                )
        if rc != 0 or todo:
            after = dict(current, **todo)
            after.setdefault("iface.iscsi_ifacename", name)
            self.diff.append(settings_diff("iface %s" % name, before, after, rc != 0))

    def discovery(self):
        host, port = portal_parts(self.portal)
        st_dir = os.path.join(self.db_dir, "send_targets", "%s,%s" % (host, port))
        st_config = os.path.join(st_dir, "st_config")
        base = [
            self.iscsiadm,
            "-m",
            "discoverydb",
            "-t",
            "sendtargets",
            "-p",
            self.portal,
            "-I",
            self.p["iface"],
        ]
        auth = self.p["discovery_auth"]
        if auth:
            if not os.path.exists(st_config):
                self.changed = True
                if not self.check:
                    self.run(
                        base + ["-o", "new"], "creating the discovery record of %s" % self.portal
                    )
            before = read_text(self.module, st_config) or ""
            wanted = chap_settings("discovery.sendtargets.auth.", auth)
            todo = changed_settings(parse_settings(before), wanted)
            if todo:
                self.changed = True
                self.diff.append(
                    settings_diff(
                        st_config,
                        masked(parse_settings(before)),
                        masked(dict(parse_settings(before), **wanted)),
                        not before,
                    )
                )
                if not self.check:
                    text = before or read_text(self.module, st_config) or ""
                    write_atomic(self.module, st_config, set_settings(text, todo), 0o600)
        if self.check:
            return  # discovery writes node records: nothing in check mode
        known = self.node_keys()
        dummy, out, dummy = self.run(
            base + ["--discover", "-o", "new"], "SendTargets discovery on %s" % self.portal
        )
        found = parse_node_list(out)
        self.result["discovered"] = found
        if self.node_keys() != known:
            self.changed = True
        target = self.p["target"]
        if target and target not in [t["target"] for t in found]:
            self.module.fail_json(
                msg="discovery on %s found %s, not %s; check the target name and that the "
                "target's ACL admits this initiator"
                % (
                    self.portal,
                    ", ".join(sorted(set(t["target"] for t in found))) or "no target",
                    target,
                ),
                discovered=found,
            )

    def node_keys(self):
        rc, out, dummy = self.run(
            [self.iscsiadm, "-m", "node"], "listing node records", ok_rcs=(0, ERR_NO_OBJS_FOUND)
        )
        return sorted((n["target"], n["portal"], n["tpgt"]) for n in parse_node_list(out))

    def read_node(self):
        if self.iface_missing:
            return None
        rc, out, dummy = self.run(
            self.node_argv(),
            "reading the node record of %s at %s" % (self.p["target"], self.portal),
            ok_rcs=(0, ERR_NO_OBJS_FOUND),
        )
        return parse_record(out) if rc == 0 else None

    def node_file(self):
        """The file of the node record (open-iscsi 2.x: nodes/IQN/HOST,PORT,TPGT/IFACE;
        older: nodes/IQN/HOST,PORT,TPGT as a file for the default iface)."""
        host, port = portal_parts(self.portal)
        pattern = os.path.join(
            self.db_dir,
            "nodes",
            glob.escape(self.p["target"]),
            glob.escape("%s,%s" % (host, port)) + ",*",
        )
        for path in sorted(glob.glob(pattern)):
            if os.path.isdir(path):
                candidate = os.path.join(path, self.p["iface"])
                if os.path.isfile(candidate):
                    return candidate
            elif self.p["iface"] == "default":
                return path
        return None

    def node_record(self):
        state = self.p["state"]
        current = self.read_node()
        if current is None and state in ("absent", "logged_out"):
            return None
        if state == "absent":
            return None  # deleted after the logout
        before = masked(current or {})
        if current is None:
            self.changed = True
            if not self.check:
                self.run(
                    self.node_argv("-o", "new"),
                    "creating the node record of %s at %s" % (self.p["target"], self.portal),
                )
                current = self.read_node() or {}
            else:
                current = {}
        wanted = dict((k, setting_value(v)) for k, v in (self.p["node_settings"] or {}).items())
        todo = changed_settings(current, wanted)
        for key, value in sorted(todo.items()):
            self.changed = True
            if not self.check:
                self.run(
                    self.node_argv("-o", "update", "-n", key, "-v", value),
                    "setting %s of the node record" % key,
                )
        after = dict(current, **todo)
        # CHAP: the record shows passwords as ********, so compare with its file
        chap = self.p["chap"]
        if chap:
            wanted_chap = chap_settings("node.session.auth.", chap)
            path = self.node_file()
            text = read_text(self.module, path) if path else None
            on_file = parse_settings(text or "")
            chap_todo = changed_settings(on_file, wanted_chap)
            if chap_todo:
                self.changed = True
                after.update(wanted_chap)
                if not self.check:
                    if path is None or text is None:
                        self.module.fail_json(
                            msg="the node record of %s at %s through %s "
                            "has no file under %s; set iscsi_db_dir"
                            % (self.p["target"], self.portal, self.p["iface"], self.db_dir)
                        )
                    if END_RECORD not in text:
                        self.module.fail_json(
                            msg="%s is not a node record this module "
                            "knows (no '%s' line)" % (path, END_RECORD)
                        )
                    write_atomic(self.module, path, set_settings(text, chap_todo), 0o600)
        if before != masked(after):
            self.diff.append(
                settings_diff(
                    "node %s %s %s" % (self.p["target"], self.portal, self.p["iface"]),
                    before,
                    masked(after),
                    not before,
                )
            )
        return masked(after)

    # ---- sessions --------------------------------------------------------------------
    def session(self):
        rc, out, err = self.module.run_command([self.iscsiadm, "-m", "session", "-P", "1"])
        if rc not in (0, ERR_NO_OBJS_FOUND):
            if kernel_lacks_transport(rc, (err or out or "")) or rc == ERR_TRANS_NOT_FOUND:
                return None  # no initiator in this kernel: no session either
            self.fail_command(
                [self.iscsiadm, "-m", "session", "-P", "1"], "listing sessions", rc, out, err
            )
        for s in parse_sessions(out if rc == 0 else ""):
            if (
                s["target"] == self.p["target"]
                and s["portal"] == self.portal
                and s["iface"] == self.p["iface"]
            ):
                return s
        return None

    def check_kernel(self):
        if os.path.isdir(os.path.join(SYS_MODULE_DIR, "iscsi_tcp")):
            return
        why = "not loaded"
        modprobe = self.module.get_bin_path("modprobe")
        if modprobe:
            rc, out, err = self.module.run_command([modprobe, "iscsi_tcp"])
            if rc == 0 and os.path.isdir(os.path.join(SYS_MODULE_DIR, "iscsi_tcp")):
                return
            why = "modprobe iscsi_tcp: %s" % ((err or out).strip() or "exit %d" % rc)
        self.module.fail_json(
            msg="cannot log in to %s at %s: the kernel lacks iscsi_tcp, the iSCSI initiator "
            "(%s). %s" % (self.p["target"], self.portal, why, KERNEL_HINT)
        )

    def login_state(self):
        state = self.p["state"]
        sess = self.session()
        if state == "logged_in" and sess is None:
            self.changed = True
            if not self.check:
                self.check_kernel()
                self.run(
                    self.node_argv("--login"),
                    "login to %s at %s through %s"
                    % (self.p["target"], self.portal, self.p["iface"]),
                    ok_rcs=(0, ERR_SESS_EXISTS),
                )
            self.result["logged_in"] = True
        elif state in ("logged_out", "absent") and sess is not None:
            self.changed = True
            if not self.check:
                self.run(
                    self.node_argv("--logout"),
                    "logout from %s at %s through %s"
                    % (self.p["target"], self.portal, self.p["iface"]),
                )
            self.result["logged_in"] = False
        else:
            self.result["logged_in"] = sess is not None
        if state == "absent":
            current = self.read_node()
            if current is not None:
                self.changed = True
                self.diff.append(
                    settings_diff(
                        "node %s %s %s" % (self.p["target"], self.portal, self.p["iface"]),
                        masked(current),
                        {},
                        False,
                    )
                )
                if not self.check:
                    self.run(self.node_argv("-o", "delete"), "deleting the node record")

    def wait_device(self):
        name = by_path(self.portal, self.p["target"], self.p["lun"])
        path = os.path.join(BY_PATH_DIR, name)
        if self.check:
            return
        deadline = time.time() + self.p["wait_timeout"]
        while not os.path.exists(path):
            if time.time() >= deadline:
                self.module.fail_json(
                    msg="%s did not appear within %d s of the login to %s at %s through %s; "
                    "see 'iscsiadm -m session -P 3' (is LUN %d attached?) and the kernel log, "
                    "and check that the target's ACL admits this initiator"
                    % (
                        path,
                        self.p["wait_timeout"],
                        self.p["target"],
                        self.portal,
                        self.p["iface"],
                        self.p["lun"],
                    ),
                    **self.result,
                )
            time.sleep(POLL_INTERVAL)
        self.result["device"] = os.path.realpath(path)

    # ---- all -------------------------------------------------------------------------
    def main(self):
        p = self.p
        self.portal = None
        if p["portal"]:
            try:
                self.portal = normalize_portal(p["portal"])
            except ValueError as e:
                self.module.fail_json(msg=str(e))
        if (p["discover"] or p["target"]) and not self.portal:
            self.module.fail_json(msg="portal is required with discover or target")
        if p["state"] != "present" and not p["target"]:
            self.module.fail_json(msg="state=%s needs target" % p["state"])
        refuse_secrets(self.module, "iscsid_conf", p["iscsid_conf"] or {})
        refuse_secrets(self.module, "node_settings", p["node_settings"] or {})

        name_changed = self.initiator_name()
        daemon_changed = self.iscsid_conf()
        if name_changed or daemon_changed:
            self.restart_iscsid()
        if p["discover"] or p["target"]:
            self.iface()
        if p["discover"]:
            self.discovery()
        if p["target"]:
            node = self.node_record()
            if node:
                self.result["node"] = node
            self.login_state()
            if p["wait"] and p["state"] == "logged_in":
                self.wait_device()
        result = dict(self.result, changed=self.changed)
        if self.module._diff and self.diff:
            result["diff"] = self.diff
        self.module.exit_json(**result)


# ---- functions without state --------------------------------------------------------------


def default_db_dir():
    for d in ("/etc/iscsi", "/var/lib/iscsi"):
        if os.path.isdir(os.path.join(d, "nodes")):
            return d
    return "/etc/iscsi"


def kernel_lacks_transport(rc, text):
    return (
        rc == ERR_TRANS_NOT_FOUND
        or "driver tcp is not loaded" in text
        or ("iSCSI driver not found" in text)
    )


def check_iscsi_name(module, name):
    if not (name.startswith("iqn.") or name.startswith("eui.") or name.startswith("naa.")):
        module.fail_json(
            msg="initiator_name %r is not an iSCSI name (iqn.YYYY-MM.domain:id, "
            "eui. or naa.)" % name
        )
    if len(name) > 223 or any(c.isspace() for c in name):
        module.fail_json(msg="initiator_name %r: at most 223 characters, no spaces" % name)


def refuse_secrets(module, option, settings):
    bad = sorted(k for k in settings if is_secret(k))
    if bad:
        module.fail_json(
            msg="%s must not hold %s: it would be shown in logs; give CHAP "
            "with the chap or discovery_auth options (never logged)" % (option, ", ".join(bad))
        )


def chap_settings(prefix, auth):
    out = {
        prefix + "authmethod": "CHAP",
        prefix + "username": auth["username"],
        prefix + "password": auth["password"],
    }
    if auth.get("username_in") or auth.get("password_in"):
        out[prefix + "username_in"] = auth.get("username_in") or ""
        out[prefix + "password_in"] = auth.get("password_in") or ""
    return out


def settings_diff(header, before, after, created):
    def render(d):
        return "".join("%s = %s\n" % (k, d[k]) for k in sorted(d))

    return {
        "before_header": header if not created else "%s (absent)" % header,
        "after_header": header,
        "before": render(before),
        "after": render(after),
    }


def read_text(module, path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        if not os.path.exists(path):
            return None
        module.fail_json(msg="cannot read %s: %s" % (path, e))


def write_atomic(module, path, text, mode):
    """Write ``text`` to ``path`` by a rename, keeping an existing file's mode."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    if os.path.exists(path):
        mode = os.stat(path).st_mode & 0o7777
    tmp = "%s.cairn-tmp" % path
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    module.atomic_move(tmp, path)
    os.chmod(path, mode)  # atomic_move gives a new file the umask's mode


def running_pid(pid_file):
    try:
        with open(pid_file) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if process_alive(pid) else None


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie is gone for our purpose
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def main():
    auth_spec = dict(
        username=dict(type="str", required=True),
        password=dict(type="str", required=True, no_log=True),
        username_in=dict(type="str"),
        password_in=dict(type="str", no_log=True),
    )
    module = AnsibleModule(
        argument_spec=dict(
            initiator_name=dict(type="str"),
            initiator_name_file=dict(type="path", default="/etc/iscsi/initiatorname.iscsi"),
            iscsid_conf=dict(type="dict"),
            iscsid_conf_file=dict(type="path", default="/etc/iscsi/iscsid.conf"),
            iscsid_restart=dict(
                type="str",
                default="auto",
                choices=["auto", "systemd", "service", "pidfile", "never"],
            ),
            iscsid_service=dict(type="str", default="iscsid"),
            iscsid_pid_file=dict(type="path", default="/run/iscsid.pid"),
            iscsi_db_dir=dict(type="path"),
            portal=dict(type="str"),
            iface=dict(type="str", default="default"),
            iface_settings=dict(type="dict"),
            discover=dict(type="bool", default=False),
            discovery_auth=dict(type="dict", options=auth_spec),
            target=dict(type="str"),
            node_settings=dict(type="dict"),
            chap=dict(type="dict", options=auth_spec),
            state=dict(
                type="str",
                default="present",
                choices=["present", "logged_in", "logged_out", "absent"],
            ),
            lun=dict(type="int", default=0),
            wait=dict(type="bool", default=False),
            wait_timeout=dict(type="int", default=60),
        ),
        required_by={"chap": "target", "node_settings": "target", "discovery_auth": "portal"},
        supports_check_mode=True,
    )
    Initiator(module).main()


if __name__ == "__main__":
    main()
