"""The day-2 playbooks (playbooks/snapshot.yml, clone.yml, resize.yml, replica.yml,
drain.yml) through ``ansible-playbook`` against four real node agents (node-a..node-d on
127.0.0.130-133, one pool each) with an inventory of four hosts in cairn_storage and
cairn_targets, the way an operator runs them: ``-e name=value`` only.  Each result is
checked with the engine's CLI (``cairn volume show --json``, ``cairn snapshot list
--json``) and with real iSCSI clients from libiscsi (qemu-io, iscsi-readcapacity16).
Each destructive playbook must refuse without its confirm variable."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .agent_node import AgentNode, wait_for
from .ansible_run import collections_tree, recap, run_playbook
from .conftest import find_cairn, free_port
from .test_agent import qemu_io

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PLAYBOOKS = REPO / "playbooks"
MiB = 1 << 20
ADDRESSES = [f"127.0.0.{130 + i}" for i in range(4)]  # this test's loopback addresses


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes = [AgentNode(root, f"node-{c}", ADDRESSES[i]) for i, c in enumerate("abcd")]
        for n in self.nodes:
            n.peers = {m.name: m.url for m in self.nodes if m is not n}
        self.by_name = {n.name: n for n in self.nodes}
        self.collections = collections_tree(root)
        hosts = {
            n.name: {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "cairn_api_url": n.url,
                "cairn_token_file": str(n.token_file),
            }
            for n in self.nodes
        }
        self.inventory = root / "inventory.json"
        self.portal = f"{ADDRESSES[0]}:{free_port(ADDRESSES[0])}"
        # vol1 is declared with its target_host (the plays ask node-a only); its clone is
        # not, so the plays find it by asking every agent of cairn_targets
        volumes = [
            {
                "name": "vol1",
                "size": "16M",
                "replicas": ["node-a/p1", "node-b/p1", "node-c/p1"],
                "target_host": "node-a",
                "portal": self.portal,
            }
        ]
        self.inventory.write_text(
            json.dumps(
                {
                    "all": {
                        "vars": {"cairn_volumes": volumes},
                        "children": {
                            "cairn_storage": {"hosts": hosts},
                            "cairn_targets": {"hosts": {h: {} for h in hosts}},
                        },
                    }
                }
            )
        )
        self.runs = 0

    @property
    def a(self) -> AgentNode:
        return self.nodes[0]

    def play(
        self, playbook: str, *extra: str, rc: int = 0, check: bool = False
    ) -> tuple[dict[str, int], str]:
        """Run ``playbooks/PLAYBOOK`` with ``-e`` for each of ``extra`` (and ``--check``);
        the PLAY RECAP's counts for localhost and the whole output.  ``rc`` is the exit
        code expected."""
        self.runs += 1
        code, out = run_playbook(
            self.root,
            self.inventory,
            PLAYBOOKS / playbook,
            *extra,
            check=check,
            log=self.root / f"run-{self.runs}-{playbook}.log",
            ANSIBLE_LOCALHOST_WARNING="0",
            ANSIBLE_PIPELINING="1",
        )
        assert code == rc, f"{playbook} {extra}: exit {code}, not {rc}\n{out}"
        return recap(out), out

    def cli(self, *args: str, node: AgentNode | None = None) -> Any:
        """``cairn ARGS --json`` against ``node``'s agent (node-a by default), parsed."""
        n = node or self.a
        argv = [find_cairn(), *args, "--json", "--api", n.url, "--token-file", str(n.token_file)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        return json.loads(done.stdout)

    def url(self, volume: str) -> str:
        doc = self.cli("volume", "show", volume)
        return f"iscsi://{doc['portal']}/{doc['iqn']}/0"

    def report(self) -> str:
        return "\n".join(n.report() for n in self.nodes)


def healthy(doc: dict[str, Any], count: int) -> bool:
    st = doc.get("status") or {}
    reps = st.get("replicas") or []
    return (
        st.get("state") == "healthy"
        and len(reps) == count
        and all(r["state"] == "healthy" for r in reps)
    )


def readcapacity(url: str) -> int:
    """The volume's size in bytes as iscsi-readcapacity16 (libiscsi) reports it."""
    done = subprocess.run(["iscsi-readcapacity16", url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    m = re.search(r"^Total size:\s*(\d+)", done.stdout, re.MULTILINE)
    assert m, done.stdout
    return int(m.group(1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    for tool in ("qemu-io", "iscsi-readcapacity16"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/install.sh installs it)")
    lab = Lab(tmp_path_factory.mktemp("day2"))
    try:
        with ThreadPoolExecutor(len(lab.nodes)) as pool:  # four agents start side by side
            list(pool.map(AgentNode.start, lab.nodes))
        for n in lab.nodes:
            n.call(
                "POST", "/v1/pools", {"name": "p1", "listen": f"{n.address}:{free_port(n.address)}"}
            )
        lab.a.call(
            "POST",
            "/v1/volumes",
            {
                "name": "vol1",
                "size": "16M",
                "replicas": ["node-a/p1", "node-b/p1", "node-c/p1"],
                "portal": lab.portal,
            },
        )
        wait_for(
            lambda: healthy(lab.a.call("GET", "/v1/volumes/vol1"), 3), 30, "vol1 healthy",
            lab.report,
        )  # fmt: skip
        qemu_io("write -P 0x5a 0 1M", url=lab.url("vol1"))
        yield lab
    finally:
        for n in lab.nodes:
            n.cleanup()


def refused(out: str, text: str) -> None:
    assert text in out, out


def test_snapshot(lab: Lab) -> None:
    recap, out = lab.play("snapshot.yml", "volume=vol1", "snapshot=s1")
    assert recap["failed"] == 0 and recap["changed"] == 1, out
    snaps = lab.cli("snapshot", "list", "vol1")
    assert [s["name"] for s in snaps["snapshots"]] == ["s1"], snaps
    assert "snapshot s1 taken" in out, out
    # the very same run again changes nothing
    recap, out = lab.play("snapshot.yml", "volume=vol1", "snapshot=s1")
    assert recap["failed"] == 0 and recap["changed"] == 0, out
    assert "snapshot s1 is already present" in out, out
    # written after the snapshot: the clone below must not see it
    qemu_io("write -P 0x66 0 512k", url=lab.url("vol1"))
    # destructive without the confirm variables: refused, before any agent is asked
    recap, out = lab.play("snapshot.yml", "volume=vol1", "snapshot=s1", "state=absent", rc=2)
    refused(out, "state=absent deletes snapshot s1 of volume vol1: pass -e confirm_delete=true")
    recap, out = lab.play(
        "snapshot.yml", "volume=vol1", "snapshot=s1", "snapshot_rollback=true", rc=2
    )
    refused(out, "pass -e confirm_rollback=true to do it")
    assert [s["name"] for s in lab.cli("snapshot", "list", "vol1")["snapshots"]] == ["s1"]
    qemu_io("read -P 0x66 0 512k", url=lab.url("vol1"))
    # the rollback with its confirm variable: the write after s1 is gone
    recap, out = lab.play(
        "snapshot.yml", "volume=vol1", "snapshot=s1", "snapshot_rollback=true",
        "confirm_rollback=true",
    )  # fmt: skip
    assert recap["failed"] == 0 and recap["changed"] == 1, out
    assert "rolled back to snapshot s1" in out, out
    qemu_io("read -P 0x5a 0 1M", url=lab.url("vol1"))
    qemu_io("write -P 0x66 0 512k", url=lab.url("vol1"))  # again, for the clone


def test_clone(lab: Lab) -> None:
    portal = f"{ADDRESSES[0]}:{free_port(ADDRESSES[0])}"
    args = ("volume=vol1", "snapshot=s1", "clone=vol1-c", f"portal={portal}")
    recap, out = lab.play("clone.yml", *args)
    assert recap["failed"] == 0 and recap["changed"] == 1, out
    clone = lab.cli("volume", "show", "vol1-c")
    assert clone["origin"] == {"volume": "vol1", "snapshot": "s1"}, clone
    assert clone["portal"] == portal and sorted(clone["replicas"]) == [
        "node-a/p1", "node-b/p1", "node-c/p1",
    ], clone  # fmt: skip
    url = lab.url("vol1-c")
    assert url in out, out
    # the data written before the snapshot is in the clone, not what came after
    qemu_io("read -P 0x5a 0 1M", "read -P 0 1M 1M", url=url)
    qemu_io("read -P 0x66 0 512k", "read -P 0x5a 512k 512k", url=lab.url("vol1"))
    recap, out = lab.play("clone.yml", *args)
    assert recap["failed"] == 0 and recap["changed"] == 0, out
    recap, out = lab.play("clone.yml", "clone=vol1-c", "state=absent", rc=2)
    refused(out, "state=absent deletes clone vol1-c and its data: pass -e confirm_delete=true")
    recap, out = lab.play("clone.yml", "volume=vol1", "snapshot=nope", "clone=x", rc=2)
    refused(out, "volume vol1 has no snapshot nope (it has: s1)")
    assert lab.cli("volume", "show", "vol1-c")["name"] == "vol1-c"


def test_resize(lab: Lab) -> None:
    url = lab.url("vol1")
    assert readcapacity(url) == 16 * MiB
    # --check predicts the change and makes none
    recap, out = lab.play("resize.yml", "volume=vol1", "size=32M", check=True)
    assert recap["failed"] == 0 and recap["changed"] == 1, out
    assert lab.cli("volume", "show", "vol1")["size"] == 16 * MiB
    recap, out = lab.play("resize.yml", "volume=vol1", "size=32M")
    assert recap["failed"] == 0 and recap["changed"] == 1, out
    assert "(16.00 MiB)" in out and "(32.00 MiB)" in out, out
    assert "before 16777216 bytes" in out and "after 33554432 bytes" in out, out
    doc = lab.cli("volume", "show", "vol1")
    assert doc["size"] == 32 * MiB and healthy(doc, 3), doc
    assert readcapacity(url) == 32 * MiB  # what an initiator sees
    qemu_io("write -P 0x77 31M 1M", "read -P 0x66 0 512k", url=url)
    recap, out = lab.play("resize.yml", "volume=vol1", "size=32M")
    assert recap["failed"] == 0 and recap["changed"] == 0, out
    recap, out = lab.play("resize.yml", "volume=vol1", "size=8M", rc=2)
    refused(out, "would shrink it, and a volume never shrinks")
    assert lab.cli("volume", "show", "vol1")["size"] == 32 * MiB


def test_replica_move(lab: Lab) -> None:
    recap, out = lab.play("replica.yml", "volume=vol1-c", "remove=node-b/p1", rc=2)
    refused(
        out, "remove=node-b/p1 deletes that replica's data from its pool: pass -e confirm_remove"
    )
    assert sorted(lab.cli("volume", "show", "vol1-c")["replicas"]) == [
        "node-a/p1", "node-b/p1", "node-c/p1",
    ]  # fmt: skip
    # a move in one run: the clone's node-b/p1 to node-d/p1 (added, rebuilt, then the old
    # one removed); the clone is found by asking every agent
    move = ("volume=vol1-c", "add=node-d/p1", "remove=node-b/p1", "confirm_remove=true")
    recap, out = lab.play("replica.yml", *move)
    assert recap["failed"] == 0 and recap["changed"] == 2, out  # add, remove
    doc = lab.cli("volume", "show", "vol1-c")
    assert sorted(doc["replicas"]) == ["node-a/p1", "node-c/p1", "node-d/p1"], doc
    assert healthy(doc, 3), doc
    assert "node-d/p1 added and rebuilt; node-b/p1 removed" in out, out
    qemu_io("read -P 0x5a 0 1M", "read -P 0 1M 1M", url=lab.url("vol1-c"))


def test_drain(lab: Lab) -> None:
    recap, out = lab.play("drain.yml", "drain_host=node-c", rc=2)
    refused(out, "pass -e confirm_drain=true to do it")
    recap, out = lab.play("drain.yml", "drain_host=node-x", "confirm_drain=true", rc=2)
    refused(out, "drain_host=node-x is not a host of the inventory group cairn_storage")
    c = lab.by_name["node-c"]
    assert [p["name"] for p in lab.cli("pool", "list", node=c)] == ["p1"]

    # --check shows the plan and changes nothing
    recap, out = lab.play("drain.yml", "drain_host=node-c", "confirm_drain=true", check=True)
    assert recap["failed"] == 0 and recap["changed"] == 5, out  # 2 x (add, remove), pools
    assert (
        "would be drained (check mode, nothing changed): vol1: node-c/p1 -> node-d/p1; "
        "vol1-c: node-c/p1 -> node-b/p1" in out
    ), out
    assert [p["name"] for p in lab.cli("pool", "list", node=c)] == ["p1"]
    assert len(lab.cli("volume", "show", "vol1")["replicas"]) == 3

    recap, out = lab.play("drain.yml", "drain_host=node-c", "confirm_drain=true")
    assert recap["failed"] == 0, out
    # vol1 (a, b, c) goes to node-d; its clone (a, c, d since the move) to node-b, the
    # only storage host without a replica of it
    for name, to in (("vol1", "node-d/p1"), ("vol1-c", "node-b/p1")):
        doc = lab.cli("volume", "show", name)
        assert sorted(doc["replicas"]) == sorted(["node-a/p1", "node-b/p1", "node-d/p1"]), doc
        assert healthy(doc, 3), doc
        assert f"{name}: node-c/p1 -> {to}" in out, out
    assert lab.cli("pool", "list", node=c) == []
    # the data is intact, through the target, from the replicas it has now
    qemu_io("read -P 0x66 0 512k", "read -P 0x5a 512k 512k", "read -P 0x77 31M 1M",
            url=lab.url("vol1"))  # fmt: skip
    qemu_io("read -P 0x5a 0 1M", url=lab.url("vol1-c"))
    # node-b next: every other host with a pool (node-a, node-d) holds a replica of vol1
    # already, so no pool qualifies; the play says so and changes nothing
    recap, out = lab.play("drain.yml", "drain_host=node-b", "confirm_drain=true", rc=2)
    refused(out, "no pool can take the replica node-b/p1 of volume vol1 (replicas ")
    assert sorted(lab.cli("volume", "show", "vol1")["replicas"]) == [
        "node-a/p1", "node-b/p1", "node-d/p1",
    ]  # fmt: skip
    assert [p["name"] for p in lab.cli("pool", "list", node=lab.by_name["node-b"])] == ["p1"]


def test_remove_refused_below_the_consistency_factor(lab: Lab) -> None:
    """A remove that would leave fewer healthy replicas than the consistency factor is
    refused by the play, before the agent is asked, and nothing changes."""
    d = lab.by_name["node-d"]
    d.call("POST", "/v1/pools", {"name": "p2", "listen": f"{d.address}:{free_port(d.address)}"})
    replicas = ["node-a/p1", "node-b/p1", "node-d/p2"]
    lab.a.call("POST", "/v1/volumes", {"name": "vol2", "size": "4M", "replicas": replicas})
    wait_for(
        lambda: healthy(lab.a.call("GET", "/v1/volumes/vol2"), 3), 30, "vol2 healthy", lab.report
    )
    # node-d/p2 goes away (forced: vol2 still has a replica there): vol2 is degraded
    d.call("DELETE", "/v1/pools/p2", {"confirm": "p2", "force": True})
    wait_for(
        lambda: lab.a.call("GET", "/v1/volumes/vol2")["status"]["state"] == "degraded",
        30, "vol2 degraded", lab.report,
    )  # fmt: skip
    recap, out = lab.play(
        "replica.yml", "volume=vol2", "remove=node-b/p1", "confirm_remove=true", rc=2
    )
    refused(
        out,
        "refusing to remove node-b/p1 from volume vol2: 1 of the 2 replicas left "
        "(node-a/p1, node-d/p2) would be healthy (node-a/p1), below the consistency factor 2",
    )
    assert lab.cli("volume", "show", "vol2")["replicas"] == replicas
