"""The agent's relays to the target's operations: grow (POST /resize), snapshots
(POST/GET /snapshots, DELETE /snapshots/NAME), clone (POST /clones, then a target of
the agent's own for the clone) and rollback (POST /rollback)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from .agent_node import AgentNode, wait_for
from .conftest import free_port
from .test_agent import qemu_io

pytestmark = pytest.mark.integration


@pytest.fixture
def node(tmp_path) -> Iterator[AgentNode]:
    if shutil.which("qemu-io") is None:
        pytest.fail("qemu-io is not installed (scripts/install.sh installs qemu-utils)")
    n = AgentNode(tmp_path, "node-r", "127.0.0.40")
    try:
        n.start()
        n.call("POST", "/v1/pools", {"name": "p1", "listen": f"{n.address}:{free_port(n.address)}"})
        yield n
    finally:
        n.cleanup()


def url(vol: dict) -> str:
    return f"iscsi://{vol['portal']}/{vol['iqn']}/0"


def healthy(n: AgentNode, name: str) -> dict:
    return wait_for(
        lambda: (st := n.call("GET", f"/v1/volumes/{name}/status"))["state"] == "healthy" and st,
        60, f"{name} healthy", n.report,
    )  # fmt: skip


def test_grow_snapshot_clone_rollback(node):
    vol = node.call("POST", "/v1/volumes", {"name": "v", "size": "16M", "replicas": ["node-r/p1"],
                                            "portal": f"127.0.0.1:{free_port()}"})  # fmt: skip
    healthy(node, "v")
    qemu_io("write -P 17 0 64k", url=url(vol))

    # grow online; shrink refused
    grown = node.call("PATCH", "/v1/volumes/v", {"size": "24M"})
    assert grown["size"] == 24 << 20
    assert node.call("GET", "/v1/volumes/v/status")["size"] == 24 << 20
    desired = json.loads((node.state_dir / "desired.json").read_text())
    assert desired["volumes"]["v"]["size"] == 24 << 20
    assert node.api().raw("PATCH", "/v1/volumes/v", {"size": "16M"})[0] == 400

    # snapshot, list
    node.call("POST", "/v1/volumes/v/snapshots", {"name": "s1"})
    listing = node.call("GET", "/v1/volumes/v/snapshots")
    assert "s1" in json.dumps(listing)
    status, doc = node.api().raw("POST", "/v1/volumes/v/snapshots", {"name": "s1"})
    assert status == 409, doc  # the target's refusal, relayed
    qemu_io("write -P 18 0 64k", url=url(vol))

    # clone: a new volume with the snapshot's data, served by this agent
    clone = node.call("POST", "/v1/volumes/v/clones", {"name": "c", "snapshot": "s1"})
    assert clone["origin"] == {"volume": "v", "snapshot": "s1"}
    assert clone["replicas"] == ["node-r/p1"]
    healthy(node, "c")
    qemu_io("read -P 17 0 64k", url=url(clone))

    # rollback needs confirm, then brings the snapshot's data back
    assert node.api().raw("POST", "/v1/volumes/v/rollback", {"snapshot": "s1"})[0] == 400
    node.call("POST", "/v1/volumes/v/rollback", {"snapshot": "s1", "confirm": "v"})
    qemu_io("read -P 17 0 64k", url=url(vol))

    # delete the snapshot (confirm), then the clone volume (confirm)
    assert node.api().raw("DELETE", "/v1/volumes/v/snapshots/s1", {})[0] == 400
    status, doc = node.api().raw("DELETE", "/v1/volumes/v/snapshots/s1", {"confirm": "s1"})
    assert status in (200, 409), doc  # 409 while the clone depends on it
    node.call("DELETE", "/v1/volumes/c", {"confirm": "c"})
    assert [v["name"] for v in node.call("GET", "/v1/volumes")] == ["v"]
