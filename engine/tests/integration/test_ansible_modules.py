"""The collection's modules (plugins/modules/) against three real node agents, through
``ansible-playbook`` and tests/integration/playbooks/cairn_modules.yml: pools, a 3-replica
volume, its growth, a snapshot, a clone whose replica moves, cairn_info, a rollback and the
deletes; a second identical run changes nothing.  The results are checked with the agents'
API and the data with qemu-io (libiscsi), a client nobody here wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .agent_node import AgentNode
from .ansible_run import ansible_env, ansible_playbook, collections_tree, recap
from .conftest import free_port
from .test_agent import qemu_io

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PLAYBOOK = REPO / "tests" / "integration" / "playbooks" / "cairn_modules.yml"
MiB = 1 << 20


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes = [
            AgentNode(root, f"node-{c}", f"127.0.0.{55 + i}") for i, c in enumerate("abc")
        ]
        for n in self.nodes:
            n.peers = {m.name: m.url for m in self.nodes if m is not n}
        # ansible_collections/cairn/storage -> the repository (it is not moved)
        self.collections = collections_tree(root)
        a = self.nodes[0].address
        self.vars: dict[str, Any] = {
            "token_file": str(self.nodes[0].token_file),
            "volume_portal": f"{a}:{free_port(a)}",
            "clone_portal": f"{a}:{free_port(a)}",
            "nodes": [
                {
                    "name": n.name,
                    "api_url": n.url,
                    "pool_dir": str(n.dir / "pools"),
                    "pools_list": [
                        {"name": p, "listen": f"{n.address}:{free_port(n.address)}"}
                        for p in (["p1", "p2"] if i == 2 else ["p1"])
                    ],
                }
                for i, n in enumerate(self.nodes)
            ],
        }
        self.runs = 0

    def url(self, name: str) -> str:
        doc = self.nodes[0].call("GET", f"/v1/volumes/{name}")
        return f"iscsi://{doc['portal']}/{doc['iqn']}/0"

    def play(self, phase: str, **extra: Any) -> dict[str, int]:
        """Run the playbook for ``phase``; the PLAY RECAP's counts for localhost."""
        self.runs += 1
        vars_file = self.root / f"vars-{self.runs}.json"
        vars_file.write_text(json.dumps(dict(self.vars, cairn_phase=phase, **extra)))
        env = ansible_env(self.root)
        argv = [ansible_playbook(), "-i", "localhost,", "-c", "local", "-e", f"@{vars_file}",
                str(PLAYBOOK)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"{phase}: exit {done.returncode}\n{out}\n{self.report()}"
        return recap(done.stdout)

    def report(self) -> str:
        return "\n".join(n.report() for n in self.nodes)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if shutil.which("qemu-io") is None:
        pytest.fail("qemu-io is not installed (scripts/install.sh installs qemu-utils)")
    lab = Lab(tmp_path_factory.mktemp("ansible"))
    try:
        for n in lab.nodes:
            n.start()
        yield lab
    finally:
        for n in lab.nodes:
            n.cleanup()


def test_every_module_against_real_agents(lab: Lab) -> None:
    a, b, c = lab.nodes
    # create: three pools, one on each node (and a second on node-c), a 16 MiB volume
    recap = lab.play("create", volume_size="16M")
    assert recap["failed"] == 0 and recap["changed"] == 2, recap  # a loop counts once
    vol = a.call("GET", "/v1/volumes/vol1")
    assert vol["size"] == 16 * MiB
    assert vol["replicas"] == ["node-a/p1", "node-b/p1", "node-c/p1"]
    assert vol["status"]["state"] == "healthy"
    assert [p["name"] for p in c.call("GET", "/v1/pools")] == ["p1", "p2"]
    url = lab.url("vol1")
    qemu_io("write -P 0x5a 0 1M", url=url)

    # full: grown online, snapshot, clone, the clone's replica moved from c/p1 to c/p2
    recap = lab.play("full", volume_size="32M")
    assert recap["failed"] == 0 and recap["changed"] == 5, recap  # grow, snap, clone, -1, +1
    assert a.call("GET", "/v1/volumes/vol1")["size"] == 32 * MiB
    snaps = a.call("GET", "/v1/volumes/vol1/snapshots")["snapshots"]
    assert [s["name"] for s in snaps] == ["s1"]
    clone = a.call("GET", "/v1/volumes/vol1-clone")
    assert clone["origin"] == {"volume": "vol1", "snapshot": "s1"}
    assert sorted(clone["replicas"]) == ["node-a/p1", "node-b/p1", "node-c/p2"]
    assert clone["status"]["state"] == "healthy"
    assert clone["portal"] == lab.vars["clone_portal"]
    qemu_io("read -P 0x5a 0 1M", "read -P 0 1M 1M", url=lab.url("vol1-clone"))
    qemu_io("read -P 0x5a 0 1M", "read -P 0 16M 1M", url=url)

    # the very same run again changes nothing
    recap = lab.play("full", volume_size="32M")
    assert recap["failed"] == 0 and recap["changed"] == 0, recap

    # rollback: writes after s1 are gone
    qemu_io("write -P 0x11 0 1M", url=url)
    recap = lab.play("rollback", volume_size="32M")
    assert recap["failed"] == 0 and recap["changed"] == 1, recap
    qemu_io("read -P 0x5a 0 1M", url=url)

    # teardown: clone, snapshot, volume, pools; then again, nothing left to change
    recap = lab.play("teardown", volume_size="32M")
    assert recap["failed"] == 0 and recap["changed"] == 4, recap
    for n in lab.nodes:
        assert n.call("GET", "/v1/volumes") == []
        assert n.call("GET", "/v1/pools") == []
    recap = lab.play("teardown", volume_size="32M")
    assert recap["failed"] == 0 and recap["changed"] == 0, recap
