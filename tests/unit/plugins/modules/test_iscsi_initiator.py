"""iscsi_initiator with ``run_command`` answered by a fake iscsiadm that keeps its node
records as files in a temporary database folder, the way open-iscsi 2.1 lays them out, and
temporary initiatorname.iscsi / iscsid.conf files."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.cairn.storage.plugins.module_utils import iscsi
from ansible_collections.cairn.storage.plugins.modules import iscsi_initiator as mod
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import (
    ModuleExit,
    ModuleFail,
    _exit_json,
    _fail_json,
)

IQN = "iqn.2026-11.io.cairn:vol1"
PORTAL = "10.0.0.1:3260"
SECRET = "chap-s3cret-xyz"
SECRET_IN = "mutual-s3cret-abc"

CONF = """\
# iscsid.conf of the package
#
# iscsid.startup = /bin/systemctl start iscsid.socket
iscsid.startup = /bin/systemctl start iscsid.socket

# To request that the iscsi service scripts startup a session, use "automatic":
# node.startup = automatic
node.startup = manual

# node.session.timeo.replacement_timeout = 120
node.session.timeo.replacement_timeout = 120
#node.session.auth.authmethod = CHAP
"""

NAME_FILE = """\
## DO NOT EDIT OR REMOVE THIS FILE!
## If you remove this file, the iSCSI daemon will not start.
InitiatorName=iqn.1993-08.org.debian:01:aaaa
"""


class FakeIscsiadm:
    """iscsiadm, systemctl, service and modprobe as far as the module uses them."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.calls: list[list[str]] = []
        self.sessions: list[tuple[str, str, str]] = []  # (target, portal, iface)
        self.targets = {PORTAL: [IQN, "iqn.2026-11.io.cairn:other"]}
        self.ifaces: dict[str, dict[str, str]] = {}
        self.systemd_active = True
        self.service_status = 0
        self.login_rc = 0
        self.discover_error: str | None = None

    # node records as files: nodes/IQN/HOST,PORT,TPGT/IFACE
    def node_path(self, target: str, portal: str, iface: str) -> Path:
        return self.db / "nodes" / target / (portal.replace(":", ",") + ",1") / iface

    def nodes(self) -> list[tuple[str, str, str]]:
        out = []
        for f in sorted((self.db / "nodes").glob("*/*/*")):
            host, port, dummy = f.parent.name.split(",")
            out.append((f.parent.parent.name, f"{host}:{port}", f.name))
        return out

    def new_node(self, target: str, portal: str, iface: str) -> None:
        path = self.node_path(target, portal, iface)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# BEGIN RECORD 2.1.8\nnode.name = {target}\nnode.tpgt = 1\n"
            f"node.startup = manual\niface.iscsi_ifacename = {iface}\n"
            "node.session.auth.authmethod = None\n# END RECORD\n"
        )
        path.chmod(0o600)

    def changes(self, since: int = 0) -> list[list[str]]:
        """The calls (from the ``since``-th on) that change something: not reads."""
        out = []
        for argv in self.calls[since:]:
            a = argv[1:]
            if a[:2] == ["-m", "session"]:
                continue
            if a[:2] == ["-m", "node"] and len(a) in (2, 8):
                continue  # list, or show one record
            if a[:2] == ["-m", "iface"] and len(a) in (2, 4):
                continue
            if "status" in a or "is-active" in a:
                continue
            out.append(argv)
        return out

    def __call__(self, argv: list[str], data: Any = None, **kw: Any) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        tool = os.path.basename(argv[0])
        a = argv[1:]
        if tool == "systemctl":
            if a[0] == "is-active":
                return (0 if self.systemd_active else 3), "", ""
            return 0, "", ""
        if tool == "service":
            return (self.service_status if a[1] == "status" else 0), "", ""
        if tool == "modprobe":
            return 1, "", "modprobe: FATAL: Module iscsi_tcp not found in directory /lib/modules"
        if tool == "iscsid":
            return 0, "", ""
        assert tool == "iscsiadm", argv
        opts = dict(zip(a[::2], a[1::2]))
        mode = opts["-m"]
        if mode == "session":
            if not self.sessions:
                return 21, "", "iscsiadm: No active sessions.\n"
            text = "iSCSI Transport Class version 2.0-870\nversion 2.1.8\n"
            for i, (t, p, f) in enumerate(self.sessions, 1):
                text += (
                    f"Target: {t} (non-flash)\n\tCurrent Portal: {p},1\n"
                    f"\tPersistent Portal: {p},1\n\t\t**********\n\t\tInterface:\n"
                    f"\t\t**********\n\t\tIface Name: {f}\n\t\tSID: {i}\n"
                    "\t\tiSCSI Connection State: LOGGED IN\n"
                    "\t\tiSCSI Session State: LOGGED_IN\n"
                )
            return 0, text, ""
        if mode == "iface" and "-I" not in opts:
            names = ["default", "iser", *self.ifaces]
            return 0, "".join(f"{n} tcp,<empty>,<empty>,<empty>,<empty>\n" for n in names), ""
        if mode == "iface":
            name = opts["-I"]
            if "-o" not in opts:
                if name not in self.ifaces:
                    return 6, "", f"iSCSI ERROR: Failed to open /etc/iscsi/ifaces/{name}\n"
                rec = dict(
                    {"iface.iscsi_ifacename": name, "iface.transport_name": "tcp"},
                    **self.ifaces[name],
                )
                body = "".join(f"{k} = {v}\n" for k, v in rec.items())
                return 0, f"# BEGIN RECORD 2.1.8\n{body}# END RECORD\n", ""
            if opts["-o"] == "new":
                self.ifaces[name] = {}
                return 0, f"New interface {name} added\n", ""
            if opts["-o"] == "update":
                self.ifaces[name][opts["-n"]] = opts["-v"]
                return 0, f"{name} updated.\n", ""
        if mode == "discoverydb":
            portal = opts["-p"]
            st = self.db / "send_targets" / portal.replace(":", ",") / "st_config"
            if "--discover" not in a:
                st.parent.mkdir(parents=True, exist_ok=True)
                st.write_text(
                    "# BEGIN RECORD 2.1.8\ndiscovery.type = sendtargets\n"
                    "discovery.sendtargets.auth.authmethod = None\n# END RECORD\n"
                )
                return 0, f"New discovery record for [{portal.replace(':', ',')}] added.\n", ""
            if self.discover_error:
                return 12, "", self.discover_error
            if portal not in self.targets:
                return 4, "", "iscsiadm: cannot make connection to 10.0.0.9: Connection refused"
            for t in self.targets[portal]:
                if not self.node_path(t, portal, opts["-I"]).exists():
                    self.new_node(t, portal, opts["-I"])
            return 0, "".join(f"{portal},1 {t}\n" for t in self.targets[portal]), ""
        if mode == "node":
            if "-T" not in opts:
                nodes = self.nodes()
                if not nodes:
                    return 21, "", "iscsiadm: No records found\n"
                return 0, "".join(f"{p},1 {t}\n" for t, p, dummy in nodes), ""
            key = (opts["-T"], opts["-p"], opts["-I"])
            path = self.node_path(*key)
            op = opts.get("-o")
            if op == "new":
                self.new_node(*key)
                return 0, "New iSCSI node [tcp:...] added\n", ""
            if not path.exists():
                return 21, "", "iscsiadm: No records found\n"
            if op is None and "--login" in a:
                if self.login_rc:
                    return self.login_rc, "", "iscsiadm: Could not login"
                self.sessions.append(key)
                return 0, "Login ... successful.\n", ""
            if op is None and "--logout" in a:
                self.sessions.remove(key)
                return 0, "Logout ... successful.\n", ""
            if op is None:
                text = path.read_text()
                return 0, re.sub(r"(password\S* = )(.+)", r"\1********", text), ""
            if op == "update":
                path.write_text(iscsi.set_settings(path.read_text(), {opts["-n"]: opts["-v"]}))
                return 0, "", ""
            if op == "delete":
                path.unlink()
                return 0, "", ""
        raise AssertionError(f"unexpected {argv}")


class Host:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.etc = tmp / "etc"
        self.etc.mkdir()
        self.name_file = self.etc / "initiatorname.iscsi"
        self.name_file.write_text(NAME_FILE)
        self.name_file.chmod(0o600)
        self.conf = self.etc / "iscsid.conf"
        self.conf.write_text(CONF)
        self.db = tmp / "db"
        self.db.mkdir()
        self.sys_module = tmp / "sys-module"
        self.sys_module.mkdir()
        self.by_path = tmp / "by-path"
        self.by_path.mkdir()
        self.systemd = tmp / "run-systemd"
        self.systemd.mkdir()
        self.tools = {"iscsiadm", "systemctl", "service", "modprobe", "iscsid"}
        self.fake = FakeIscsiadm(self.db)

    def args(self, args: dict[str, Any], check: bool, diff: bool) -> dict[str, Any]:
        full: dict[str, Any] = {
            "initiator_name_file": str(self.name_file),
            "iscsid_conf_file": str(self.conf),
            "iscsi_db_dir": str(self.db),
            "iscsid_pid_file": str(self.tmp / "iscsid.pid"),
        }
        full.update(args)
        full["_ansible_check_mode"] = check
        full["_ansible_diff"] = diff
        return full

    def run(self, args: dict[str, Any], check: bool = False, diff: bool = False) -> dict:
        r = self._run(args, check, diff)
        assert not r.get("failed"), r
        return r

    def fail(self, args: dict[str, Any], check: bool = False, diff: bool = False) -> dict:
        r = self._run(args, check, diff)
        assert r.get("failed"), r
        return r

    def _run(self, args: dict[str, Any], check: bool, diff: bool) -> dict:
        def bin_path(module: Any, name: str, required: bool = False, **kw: Any) -> Any:
            if name in self.tools:
                return "/usr/sbin/" + name
            if required:
                module.fail_json(msg=f"Failed to find required executable {name}")
            return None

        full = self.args(args, check, diff)
        with contextlib.ExitStack() as stack:
            stack.enter_context(patch_module_args(full))
            for name, value in (
                ("exit_json", _exit_json),
                ("fail_json", _fail_json),
                ("get_bin_path", bin_path),
            ):
                stack.enter_context(mock.patch.object(basic.AnsibleModule, name, value))
            stack.enter_context(
                mock.patch.object(
                    basic.AnsibleModule,
                    "run_command",
                    lambda module, argv, **kw: self.fake(argv, **kw),
                )
            )
            stack.enter_context(mock.patch.object(mod, "SYS_MODULE_DIR", str(self.sys_module)))
            stack.enter_context(mock.patch.object(mod, "BY_PATH_DIR", str(self.by_path)))
            stack.enter_context(mock.patch.object(mod, "SYSTEMD_DIR", str(self.systemd)))
            stack.enter_context(mock.patch.object(mod, "POLL_INTERVAL", 0.01))
            try:
                mod.main()
            except (ModuleExit, ModuleFail) as e:
                return e.result
        raise AssertionError("no exit_json or fail_json")

    def argv_text(self) -> str:
        return "\n".join(" ".join(c) for c in self.fake.calls)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


NEW_NAME = "iqn.2026-01.com.example:db-host"
NODE = {"portal": PORTAL, "target": IQN}


# ---- initiator name ----------------------------------------------------------------------


def test_name_change_restarts_iscsid_through_systemd(host: Host) -> None:
    r = host.run({"initiator_name": NEW_NAME}, diff=True)
    assert r["changed"] and r["iscsid_restarted"] and r["initiator_name"] == NEW_NAME
    assert host.name_file.read_text() == NAME_FILE.replace(
        "iqn.1993-08.org.debian:01:aaaa", NEW_NAME
    )  # the comments stay
    assert oct(host.name_file.stat().st_mode & 0o777) == "0o600"
    assert ["/usr/sbin/systemctl", "restart", "iscsid"] in host.fake.calls
    (d,) = r["diff"]
    assert "InitiatorName=iqn.1993-08.org.debian:01:aaaa" in d["before"]
    assert f"InitiatorName={NEW_NAME}" in d["after"]


def test_same_name_no_change_no_restart(host: Host) -> None:
    r = host.run({"initiator_name": "iqn.1993-08.org.debian:01:aaaa"}, diff=True)
    assert not r["changed"] and not r["iscsid_restarted"] and "diff" not in r
    assert host.fake.calls == []
    assert host.name_file.read_text() == NAME_FILE


def test_name_change_while_iscsid_stopped_needs_no_restart(host: Host) -> None:
    host.fake.systemd_active = False
    r = host.run({"initiator_name": NEW_NAME})
    assert r["changed"] and not r["iscsid_restarted"]
    assert host.fake.changes() == []


def test_name_change_restart_through_service_without_systemd(host: Host) -> None:
    host.systemd.rmdir()
    r = host.run({"initiator_name": NEW_NAME})
    assert r["iscsid_restarted"]
    assert host.fake.calls[-1] == ["/usr/sbin/service", "iscsid", "restart"]


def test_name_change_restart_by_pid_file(host: Host) -> None:
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        (host.tmp / "iscsid.pid").write_text(f"{child.pid}\n")
        r = host.run({"initiator_name": NEW_NAME, "iscsid_restart": "pidfile"})
        assert r["iscsid_restarted"]
        assert child.wait(timeout=5) == -15  # SIGTERM
        assert host.fake.calls[-1] == [
            "/usr/sbin/iscsid",
            "-c",
            str(host.conf),
            "-i",
            str(host.name_file),
            "-p",
            str(host.tmp / "iscsid.pid"),
        ]
    finally:
        child.kill()
        child.wait()


def test_name_change_restart_never_reports_pending(host: Host) -> None:
    r = host.run({"initiator_name": NEW_NAME, "iscsid_restart": "never"})
    assert r["changed"] and not r["iscsid_restarted"] and r["restart_pending"]
    assert host.fake.calls == []


def test_name_check_mode_writes_nothing(host: Host) -> None:
    r = host.run({"initiator_name": NEW_NAME}, check=True, diff=True)
    assert r["changed"] and r["iscsid_restarted"]
    assert f"InitiatorName={NEW_NAME}" in r["diff"][0]["after"]
    assert host.name_file.read_text() == NAME_FILE
    assert host.fake.changes() == []


def test_bad_name_refused(host: Host) -> None:
    r = host.fail({"initiator_name": "db-host"})
    assert "is not an iSCSI name" in r["msg"]
    assert host.name_file.read_text() == NAME_FILE


def test_missing_name_file_is_created(host: Host) -> None:
    host.name_file.unlink()
    host.fake.systemd_active = False
    r = host.run({"initiator_name": NEW_NAME})
    assert r["changed"] and host.name_file.read_text() == f"InitiatorName={NEW_NAME}\n"
    assert oct(host.name_file.stat().st_mode & 0o777) == "0o600"


# ---- iscsid.conf -------------------------------------------------------------------------


def test_iscsid_conf_keeps_other_lines_and_comments(host: Host) -> None:
    args = {
        "iscsid_conf": {
            "node.startup": "automatic",
            "node.session.timeo.replacement_timeout": 30,
            "node.session.auth.chap_algs": "SHA256,MD5",
            "node.session.iscsi.FastAbort": False,
        }
    }
    r = host.run(args, diff=True)
    assert r["changed"] and not r["iscsid_restarted"]  # node.* are defaults of new records
    text = host.conf.read_text()
    assert (
        text
        == CONF.replace("node.startup = manual", "node.startup = automatic").replace(
            "node.session.timeo.replacement_timeout = 120\n#",
            "node.session.timeo.replacement_timeout = 30\n#",
        )
        + "node.session.auth.chap_algs = SHA256,MD5\nnode.session.iscsi.FastAbort = No\n"
    )
    (d,) = r["diff"]
    assert d["before"] == CONF and d["after"] == text
    again = host.run(args, diff=True)
    assert not again["changed"] and "diff" not in again
    assert host.fake.calls == []


def test_iscsid_conf_commented_key_goes_after_its_comment(host: Host) -> None:
    host.run({"iscsid_conf": {"node.session.auth.authmethod": "CHAP"}})
    lines = host.conf.read_text().splitlines()
    i = lines.index("#node.session.auth.authmethod = CHAP")
    assert lines[i + 1] == "node.session.auth.authmethod = CHAP"


def test_iscsid_setting_restarts_iscsid(host: Host) -> None:
    r = host.run({"iscsid_conf": {"iscsid.safe_logout": "Yes"}})
    assert r["changed"] and r["iscsid_restarted"]


def test_iscsid_conf_check_mode(host: Host) -> None:
    r = host.run({"iscsid_conf": {"node.startup": "automatic"}}, check=True, diff=True)
    assert r["changed"] and "node.startup = automatic" in r["diff"][0]["after"]
    assert host.conf.read_text() == CONF


def test_password_in_iscsid_conf_is_refused(host: Host) -> None:
    r = host.fail({"iscsid_conf": {"node.session.auth.password": SECRET}})
    assert "must not hold node.session.auth.password" in r["msg"] and "chap" in r["msg"]
    assert host.conf.read_text() == CONF


# ---- discovery, node record, CHAP --------------------------------------------------------


def test_discovery_node_settings_and_chap(host: Host) -> None:
    args = dict(
        NODE,
        discover=True,
        node_settings={"node.startup": "automatic"},
        chap={
            "username": "cli",
            "password": SECRET,
            "username_in": "tgt",
            "password_in": SECRET_IN,
        },
        discovery_auth={"username": "cli", "password": SECRET},
    )
    r = host.run(args, diff=True)
    assert r["changed"]
    assert r["discovered"] == [
        {"portal": PORTAL, "tpgt": 1, "target": IQN},
        {"portal": PORTAL, "tpgt": 1, "target": "iqn.2026-11.io.cairn:other"},
    ]
    record = host.fake.node_path(IQN, PORTAL, "default").read_text()
    settings = iscsi.parse_settings(record)
    assert settings["node.startup"] == "automatic"
    assert settings["node.session.auth.authmethod"] == "CHAP"
    assert settings["node.session.auth.username"] == "cli"
    assert settings["node.session.auth.password"] == SECRET
    assert settings["node.session.auth.username_in"] == "tgt"
    assert settings["node.session.auth.password_in"] == SECRET_IN
    assert record.endswith("# END RECORD\n")
    st = (host.db / "send_targets" / "10.0.0.1,3260" / "st_config").read_text()
    assert "discovery.sendtargets.auth.password = " + SECRET in st
    # secrets are in files only: not on any command line, not in the result or the diff
    assert SECRET not in host.argv_text() and SECRET_IN not in host.argv_text()
    assert SECRET not in repr(r) and SECRET_IN not in repr(r)
    assert r["node"]["node.session.auth.password"] == "********"
    assert [
        "/usr/sbin/iscsiadm",
        "-m",
        "discoverydb",
        "-t",
        "sendtargets",
        "-p",
        PORTAL,
        "-I",
        "default",
        "--discover",
        "-o",
        "new",
    ] in host.fake.calls
    # the same again: nothing changes, no write command runs
    n = len(host.fake.calls)
    again = host.run(args, diff=True)
    assert not again["changed"] and "diff" not in again, again
    # only discovery itself runs again (it adds records that are new, none here)
    assert host.fake.changes(n) == [
        [
            "/usr/sbin/iscsiadm",
            "-m",
            "discoverydb",
            "-t",
            "sendtargets",
            "-p",
            PORTAL,
            "-I",
            "default",
            "--discover",
            "-o",
            "new",
        ]
    ]


def test_discovery_keeps_settings_of_existing_records(host: Host) -> None:
    host.run(dict(NODE, discover=True, node_settings={"node.startup": "automatic"}))
    r = host.run(dict(NODE, discover=True))
    assert not r["changed"]
    path = host.fake.node_path(IQN, PORTAL, "default")
    assert "node.startup = automatic" in path.read_text()


def test_discovery_without_the_target_fails_clearly(host: Host) -> None:
    r = host.fail(dict(NODE, target="iqn.2026-11.io.cairn:nope", discover=True))
    assert r["msg"] == (
        "discovery on 10.0.0.1:3260 found iqn.2026-11.io.cairn:other, "
        "iqn.2026-11.io.cairn:vol1, not iqn.2026-11.io.cairn:nope; check the target name "
        "and that the target's ACL admits this initiator"
    )


def test_node_check_mode_changes_nothing(host: Host) -> None:
    args = dict(
        NODE,
        discover=True,
        node_settings={"node.startup": "automatic"},
        chap={"username": "cli", "password": SECRET},
        discovery_auth={"username": "cli", "password": SECRET},
    )
    r = host.run(args, check=True, diff=True)
    assert r["changed"] and "node.startup = automatic" in "".join(d["after"] for d in r["diff"])
    assert host.fake.changes() == []
    assert not (host.db / "nodes").exists() and not (host.db / "send_targets").exists()
    assert SECRET not in repr(r)


def test_node_without_discovery_is_created(host: Host) -> None:
    r = host.run(dict(NODE, node_settings={"node.session.timeo.replacement_timeout": 15}))
    assert r["changed"] and r["node"]["node.session.timeo.replacement_timeout"] == "15"
    assert [
        "/usr/sbin/iscsiadm",
        "-m",
        "node",
        "-T",
        IQN,
        "-p",
        PORTAL,
        "-I",
        "default",
        "-o",
        "new",
    ] in host.fake.calls
    assert not host.run(dict(NODE, node_settings={"node.session.timeo.replacement_timeout": 15}))[
        "changed"
    ]


def test_chap_change_rewrites_only_the_record_file(host: Host) -> None:
    host.run(dict(NODE, chap={"username": "cli", "password": SECRET}))
    r = host.run(dict(NODE, chap={"username": "cli", "password": SECRET + "2"}), diff=True)
    assert r["changed"]
    assert (
        f"node.session.auth.password = {SECRET}2"
        in host.fake.node_path(IQN, PORTAL, "default").read_text()
    )
    assert SECRET not in repr(r) and SECRET not in host.argv_text()
    assert oct(host.fake.node_path(IQN, PORTAL, "default").stat().st_mode & 0o777) == "0o600"


def test_custom_iface_created_with_settings(host: Host) -> None:
    args = dict(
        NODE, iface="cairn0", iface_settings={"iface.initiatorname": NEW_NAME}, discover=True
    )
    r = host.run(args, diff=True)
    assert r["changed"] and host.fake.ifaces == {"cairn0": {"iface.initiatorname": NEW_NAME}}
    assert host.fake.node_path(IQN, PORTAL, "cairn0").exists()
    assert any(d["after_header"] == "iface cairn0" for d in r["diff"])
    assert not host.run(args)["changed"]


def test_portal_default_port_and_bad_portal(host: Host) -> None:
    r = host.run({"portal": "10.0.0.1", "target": IQN})
    assert host.fake.node_path(IQN, PORTAL, "default").exists() and r["changed"]
    assert "is not HOST:PORT" in host.fail({"portal": "10.0.0.1:x", "target": IQN})["msg"]


# ---- login, logout -----------------------------------------------------------------------


def loaded(host: Host) -> None:
    (host.sys_module / "iscsi_tcp").mkdir()


def test_login_idempotent_per_target_portal_iface(host: Host) -> None:
    loaded(host)
    r = host.run(dict(NODE, state="logged_in"))
    assert r["changed"] and r["logged_in"]
    assert host.fake.sessions == [(IQN, PORTAL, "default")]
    n = len(host.fake.calls)
    r = host.run(dict(NODE, state="logged_in"))
    assert not r["changed"] and r["logged_in"]
    assert not any("--login" in c for c in host.fake.calls[n:])
    # another iface to the same target and portal is another session
    r = host.run(dict(NODE, state="logged_in", iface="cairn1"))
    assert r["changed"]
    assert host.fake.sessions == [(IQN, PORTAL, "default"), (IQN, PORTAL, "cairn1")]
    # and another portal of the same target too
    host.fake.targets["10.0.0.2:3260"] = [IQN]
    r = host.run(dict(NODE, state="logged_in", portal="10.0.0.2:3260"))
    assert r["changed"] and len(host.fake.sessions) == 3


def test_login_check_mode(host: Host) -> None:
    r = host.run(dict(NODE, state="logged_in"), check=True)
    assert r["changed"] and host.fake.changes() == [] and host.fake.sessions == []


def test_login_without_iscsi_tcp_says_so(host: Host) -> None:
    r = host.fail(dict(NODE, state="logged_in"))
    assert r["msg"].startswith(
        "cannot log in to iqn.2026-11.io.cairn:vol1 at 10.0.0.1:3260: the kernel lacks "
        "iscsi_tcp, the iSCSI initiator (modprobe iscsi_tcp: modprobe: FATAL: Module "
        "iscsi_tcp not found in directory /lib/modules)."
    )
    assert "cairn_initiator_login: false" in r["msg"]
    assert ["/usr/sbin/modprobe", "iscsi_tcp"] in host.fake.calls
    assert not any("--login" in c for c in host.fake.calls)


def test_login_failure_names_the_command(host: Host) -> None:
    loaded(host)
    host.fake.login_rc = 24
    r = host.fail(dict(NODE, state="logged_in"))
    assert r["msg"].startswith(
        "login to iqn.2026-11.io.cairn:vol1 at 10.0.0.1:3260 through default failed: "
    )
    assert "exited 24: iscsiadm: Could not login" in r["msg"]


def test_logout_and_absent(host: Host) -> None:
    loaded(host)
    host.run(dict(NODE, state="logged_in"))
    r = host.run(dict(NODE, state="logged_out"), check=True)
    assert r["changed"] and host.fake.sessions
    r = host.run(dict(NODE, state="logged_out"))
    assert r["changed"] and not r["logged_in"] and host.fake.sessions == []
    assert host.fake.node_path(IQN, PORTAL, "default").exists()
    assert not host.run(dict(NODE, state="logged_out"))["changed"]
    host.run(dict(NODE, state="logged_in"))
    r = host.run(dict(NODE, state="absent"), diff=True)
    assert r["changed"] and host.fake.sessions == []
    assert not host.fake.node_path(IQN, PORTAL, "default").exists()
    assert r["diff"][-1]["after"] == ""
    assert not host.run(dict(NODE, state="absent"))["changed"]


def test_wait_for_the_device(host: Host) -> None:
    loaded(host)
    disk = host.tmp / "sdb"
    disk.write_text("")
    (host.by_path / f"ip-{PORTAL}-iscsi-{IQN}-lun-0").symlink_to(disk)
    r = host.run(dict(NODE, state="logged_in", wait=True))
    assert r["device"] == str(disk)


def test_wait_timeout_message(host: Host) -> None:
    loaded(host)
    r = host.fail(dict(NODE, state="logged_in", wait=True, wait_timeout=0, lun=1))
    assert r["msg"] == (
        f"{host.by_path}/ip-10.0.0.1:3260-iscsi-iqn.2026-11.io.cairn:vol1-lun-1 did not "
        "appear within 0 s of the login to iqn.2026-11.io.cairn:vol1 at 10.0.0.1:3260 "
        "through default; see 'iscsiadm -m session -P 3' (is LUN 1 attached?) and the "
        "kernel log, and check that the target's ACL admits this initiator"
    )
    assert r["logged_in"]


def test_discovery_without_kernel_transport_says_so(host: Host) -> None:
    host.fake.discover_error = (
        "iscsiadm: iSCSI driver tcp is not loaded. Load the module then retry the command.\n"
    )
    r = host.fail(dict(NODE, discover=True))
    assert "SendTargets discovery on 10.0.0.1:3260 failed" in r["msg"]
    assert "The kernel lacks the iSCSI initiator (iscsi_tcp)" in r["msg"]


def test_options_that_need_others(host: Host) -> None:
    assert "portal is required" in host.fail({"target": IQN})["msg"]
    assert "needs target" in host.fail({"portal": PORTAL, "state": "logged_in"})["msg"]
    r = host.fail(dict(NODE, node_settings={"node.session.auth.password_in": "x"}))
    assert "node_settings must not hold" in r["msg"]


# ---- the text functions ------------------------------------------------------------------


def test_parse_sessions() -> None:
    text = (
        "Target: iqn.a:1 (non-flash)\n\tCurrent Portal: 10.0.0.5:3260,1\n"
        "\tPersistent Portal: 10.0.0.1:3260,1\n\t\tIface Name: default\n\t\tSID: 3\n"
        "\t\tiSCSI Session State: LOGGED_IN\n"
        "Target: iqn.a:2 (non-flash)\n\tCurrent Portal: [fe80::1]:3260,1\n"
        "\tPersistent Portal: [fe80::1]:3260,1\n\t\tIface Name: if1\n\t\tSID: 4\n"
    )
    assert iscsi.parse_sessions(text) == [
        {
            "target": "iqn.a:1",
            "portal": "10.0.0.1:3260",
            "iface": "default",
            "sid": 3,
            "state": "LOGGED_IN",
        },
        {"target": "iqn.a:2", "portal": "[fe80::1]:3260", "iface": "if1", "sid": 4, "state": None},
    ]


def test_normalize_portal() -> None:
    assert iscsi.normalize_portal("h") == "h:3260"
    assert iscsi.normalize_portal("[fe80::1]") == "[fe80::1]:3260"
    assert iscsi.normalize_portal("[fe80::1]:3261") == "[fe80::1]:3261"
    with pytest.raises(ValueError, match="IPv6"):
        iscsi.normalize_portal("fe80::1")


def test_set_settings_in_a_record_goes_before_its_end() -> None:
    text = "# BEGIN RECORD 2.1.8\nnode.name = x\n# END RECORD\n"
    assert iscsi.set_settings(text, {"a.b": "1", "node.name": "y"}) == (
        "# BEGIN RECORD 2.1.8\nnode.name = y\na.b = 1\n# END RECORD\n"
    )
    assert iscsi.set_settings("k = 1\nk = 2\n", {"k": "3"}) == "k = 3\n"
