"""cairn.storage.iscsi_initiator (module and role) with the host's real iscsiadm against a
real Cairn volume: a node agent on 127.0.0.110 serving a 1-replica volume with CHAP.

Every ansible-playbook run happens in a private mount namespace (``unshare -m``) in which
a temporary folder is mounted over /etc/iscsi, so the host's own open-iscsi files are never
touched (the test checks that).  This kernel has no iSCSI initiator: iscsiadm refuses to
run SendTargets discovery unless the kernel lists its ``tcp`` transport in
/sys/class/iscsi_transport, although discovery itself is done by iscsiadm in user space.
The namespace therefore also gets a tmpfs over /sys/class listing that transport (and
nothing else); discovery, its CHAP and the node records are then iscsiadm's real work over
TCP with the Cairn target.  Login needs the kernel module itself (/sys/module/iscsi_tcp,
not faked), so the login phase must fail with the module's "kernel lacks iscsi_tcp"
message.  iscsid cannot start here either (no NETLINK_ISCSI), which is why the test gives
the iface its own initiator name (iface.initiatorname) instead of asking iscsid.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .agent_node import AgentNode
from .ansible_run import ansible_env, ansible_playbook, collections_tree, recap
from .conftest import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PLAYBOOKS = REPO / "tests" / "integration" / "playbooks"
ADDRESS = "127.0.0.110"
CHAP_USER = "initiator-test"
CHAP_SECRET = "chap-Secret-4711-xyz"
NEW_NAME = "iqn.2026-01.io.cairn.test:initiator-b"
IQN = "iqn.2026-11.io.cairn:vol1"

NAMESPACE_SCRIPT = """\
set -e
mount --bind "$CAIRN_ETC" /etc/iscsi
mount --bind "$CAIRN_LOCK" /run/lock
mount -t tmpfs cairn-sys-class "$CAIRN_SYS"
mkdir -p "$CAIRN_SYS/iscsi_transport/tcp"
echo 1 > "$CAIRN_SYS/iscsi_transport/tcp/handle"
echo 0x39 > "$CAIRN_SYS/iscsi_transport/tcp/caps"
mount --bind "$CAIRN_SYS" /sys/class
exec "$@"
"""


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc-iscsi"
        self.etc.mkdir()
        shutil.copy("/etc/iscsi/iscsid.conf", self.etc / "iscsid.conf")
        (self.etc / "initiatorname.iscsi").write_text(
            "## DO NOT EDIT OR REMOVE THIS FILE!\nInitiatorName=iqn.1993-08.org.debian:01:test\n"
        )
        (self.etc / "initiatorname.iscsi").chmod(0o600)
        for d in ("lock", "sys-class"):
            (root / d).mkdir()
        self.script = root / "ns.sh"
        self.script.write_text(NAMESPACE_SCRIPT)
        self.collections = collections_tree(root)
        self.node = AgentNode(root, "target-b", ADDRESS)
        self.secret_file = root / "chap-secret"
        self.secret_file.write_text(CHAP_SECRET)
        self.runs = 0

    def start(self) -> None:
        self.node.start()
        self.node.call(
            "POST",
            "/v1/pools",
            {
                "name": "p1",
                "path": str(self.root / "pool"),
                "listen": f"{ADDRESS}:{free_port(ADDRESS)}",
            },
        )
        self.portal = f"{ADDRESS}:{free_port(ADDRESS)}"
        self.node.call(
            "POST",
            "/v1/volumes",
            {
                "name": "vol1",
                "size": 16 << 20,
                "replicas": ["target-b/p1"],
                "portal": self.portal,
                "chap": {"username": CHAP_USER, "secret": CHAP_SECRET},
            },
        )

    def play(self, playbook: str, extra: dict[str, Any], *flags: str) -> tuple[int, str]:
        """Run ``playbook`` in the namespace; (exit code, output)."""
        self.runs += 1
        vars_file = self.root / f"vars-{self.runs}.json"
        vars_file.write_text(json.dumps(extra))
        env = ansible_env(
            self.root,
            CAIRN_ETC=str(self.etc),
            CAIRN_LOCK=str(self.root / "lock"),
            CAIRN_SYS=str(self.root / "sys-class"),
        )
        argv = [
            "unshare",
            "-m",
            "sh",
            str(self.script),
            ansible_playbook(),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"@{vars_file}",
            *flags,
            str(PLAYBOOKS / playbook),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        out = done.stdout + done.stderr
        (self.root / f"out-{self.runs}.txt").write_text(out)  # kept for a look after a failure
        return done.returncode, out

    def module_play(self, phase: str, *flags: str) -> tuple[int, str]:
        return self.play(
            "iscsi_initiator.yml",
            {
                "cairn_phase": phase,
                "initiator_name": NEW_NAME,
                "portal": self.portal,
                "target": IQN,
                "chap_user": CHAP_USER,
                "chap_secret": CHAP_SECRET,
                "pid_file": str(self.root / "iscsid.pid"),
            },
            *flags,
        )

    def node_record(self) -> Path:
        host, port = self.portal.split(":")
        (path,) = (self.etc / "nodes" / IQN).glob(f"{host},{port},*/cairn0")
        return path


def settings(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([^#=\s][^=]*?)\s*=\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    for tool in ("iscsiadm", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/install.sh installs open-iscsi)")
    if not Path("/etc/iscsi/iscsid.conf").exists():
        pytest.fail("/etc/iscsi/iscsid.conf is missing: install open-iscsi")
    host_before = snapshot(Path("/etc/iscsi"))
    lab = Lab(tmp_path_factory.mktemp("initiator"))
    try:
        lab.start()
        yield lab
    finally:
        lab.node.cleanup()
    assert snapshot(Path("/etc/iscsi")) == host_before, "the host's /etc/iscsi changed"


def test_module_against_a_cairn_target(lab: Lab) -> None:
    conf_before = (lab.etc / "iscsid.conf").read_text()
    before = snapshot(lab.etc)

    # check mode with diff: predicts the changes, writes nothing
    rc, out = lab.module_play("configure", "--check", "--diff")
    assert rc == 0, out
    assert recap(out)["changed"] == 2, out
    assert f"+InitiatorName={NEW_NAME}" in out
    assert "-InitiatorName=iqn.1993-08.org.debian:01:test" in out
    assert "+node.session.timeo.replacement_timeout = 30" in out
    assert "+node.session.auth.password = ********" in out
    assert snapshot(lab.etc) == before
    assert CHAP_SECRET not in out

    # the real run: name, iscsid.conf, iface, discovery with CHAP, the node record
    rc, out = lab.module_play("configure", "--diff")
    assert rc == 0, out
    assert recap(out)["changed"] == 2, out
    assert f"discovered={IQN} restarted=False" in out  # no iscsid runs: no restart due
    assert CHAP_SECRET not in out
    name_file = lab.etc / "initiatorname.iscsi"
    assert name_file.read_text() == (
        f"## DO NOT EDIT OR REMOVE THIS FILE!\nInitiatorName={NEW_NAME}\n"
    )
    conf = (lab.etc / "iscsid.conf").read_text()
    new = settings(lab.etc / "iscsid.conf")
    assert new["iscsid.startup"] == "/bin/true"
    assert new["node.session.timeo.replacement_timeout"] == "30"
    assert new["node.conn[0].timeo.login_timeout"] == "10"
    assert new["node.session.iscsi.FastAbort"] == "No"
    changed_keys = (
        "iscsid.startup",
        "node.session.timeo.replacement_timeout",
        "node.conn[0].timeo.login_timeout",
        "node.session.iscsi.FastAbort",
    )
    kept = [
        line
        for line in conf_before.splitlines()
        if not any(line.startswith(k + " ") for k in changed_keys)
    ]
    assert [
        line
        for line in conf.splitlines()
        if not any(line.startswith(k + " ") for k in changed_keys)
    ] == kept
    assert len(conf.splitlines()) == len(conf_before.splitlines())
    # the node record iscsiadm wrote from discovery, with the settings and CHAP
    record = settings(lab.node_record())
    assert record["node.name"] == IQN
    assert record["node.startup"] == "automatic"
    assert record["node.session.timeo.replacement_timeout"] == "20"
    assert record["node.session.auth.authmethod"] == "CHAP"
    assert record["node.session.auth.username"] == CHAP_USER
    assert record["node.session.auth.password"] == CHAP_SECRET
    assert record["iface.iscsi_ifacename"] == "cairn0"
    assert record["iface.initiatorname"] == NEW_NAME
    assert lab.node_record().stat().st_mode & 0o777 == 0o600
    host, port = lab.portal.split(":")
    st = settings(lab.etc / "send_targets" / f"{host},{port}" / "st_config")
    assert st["discovery.sendtargets.auth.password"] == CHAP_SECRET
    assert settings(lab.etc / "ifaces" / "cairn0")["iface.initiatorname"] == NEW_NAME

    # the same again changes nothing
    after = snapshot(lab.etc)
    rc, out = lab.module_play("configure", "--diff")
    assert rc == 0, out
    assert recap(out)["changed"] == 0, out
    assert snapshot(lab.etc) == after

    # login: this kernel has no iscsi_tcp, and the module says so
    rc, out = lab.module_play("login")
    assert rc == 2, out
    assert (
        f"cannot log in to {IQN} at {lab.portal}: the kernel lacks iscsi_tcp, "
        "the iSCSI initiator (modprobe iscsi_tcp: "
    ) in out
    assert "cairn_initiator_login: false" in out
    assert recap(out)["failed"] == 1, out
    assert CHAP_SECRET not in out

    # absent: no session to log out, the record goes
    rc, out = lab.module_play("logout")
    assert rc == 0, out
    assert recap(out)["changed"] == 1, out
    assert not list((lab.etc / "nodes").glob("*/*/cairn0"))


def test_role_up_to_discovery(lab: Lab) -> None:
    """The role with the portal and IQN looked up from the agent, CHAP from cairn_volumes,
    cairn_initiator_login false; then true, which fails with the kernel's reason."""
    for f in ("nodes", "send_targets"):
        shutil.rmtree(lab.etc / f, ignore_errors=True)
    extra = {
        "cairn_api_url": lab.node.url,
        "cairn_token_file": str(lab.node.token_file),
        "cairn_initiator_name": NEW_NAME,
        "cairn_initiator_iface_settings": {"iface.initiatorname": NEW_NAME},
        "cairn_initiator_iscsid_pid_file": str(lab.root / "iscsid.pid"),
        "cairn_initiator_login": False,
        "cairn_volumes": [
            {
                "name": "vol1",
                "size": "16M",
                "replicas": 1,
                "target_host": "localhost",
                "chap": {"username": CHAP_USER, "secret": CHAP_SECRET},
            }
        ],
    }
    rc, out = lab.play("iscsi_role.yml", extra)
    assert rc == 0, out
    assert recap(out)["changed"] >= 1, out
    assert CHAP_SECRET not in out
    record = settings(lab.node_record())
    assert record["node.session.auth.password"] == CHAP_SECRET
    assert record["node.startup"] == "automatic"
    rc, out = lab.play("iscsi_role.yml", extra)
    assert rc == 0 and recap(out)["changed"] == 0, out
    rc, out = lab.play("iscsi_role.yml", dict(extra, cairn_initiator_login=True))
    assert rc == 2, out
    assert "the kernel lacks iscsi_tcp" in out
    assert CHAP_SECRET not in out  # not in the failed loop item either
