"""molecule/cluster verify: what site.yml promised, checked on the hosts themselves.

Each test reads the real thing (systemd, the agent's API over the internal network,
`zpool status`, `cairn volume show --json`, data through libiscsi from client1) and
compares it with the inventory."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cairn_mh import (
    CAIRN,
    Scenario,
    qemu_io,
    read_region_sha256,
    write_random_region,
    zpool_status,
)

STORAGE = ["storage1", "storage2", "storage3"]
MiB = 1 << 20


def declared_volume(scenario: Scenario, name: str = "vol1") -> dict[str, Any]:
    vols = scenario.hostvars["storage1"]["cairn_volumes"]
    return dict(next(v for v in vols if v["name"] == name))


@pytest.mark.parametrize("name", STORAGE)
def test_agent_running_and_answering(scenario: Scenario, name: str) -> None:
    host = scenario.host(name)
    unit = host.service("cairn-agent")
    assert unit.is_running, f"cairn-agent.service is not active on {name}"
    assert unit.is_enabled, f"cairn-agent.service is not enabled on {name}"
    health = scenario.api(name, "/v1/health")
    assert health.get("ok") is True and health.get("node") == name, health
    # a request that needs the token is accepted with it
    assert isinstance(scenario.api(name, "/v1/pools"), list)
    version = host.run("%s --version", CAIRN)
    assert version.rc == 0 and version.stdout.startswith("cairn "), version.stderr


@pytest.mark.parametrize("name", STORAGE)
def test_zfs_pool_online_with_declared_layout(scenario: Scenario, name: str) -> None:
    hv = scenario.hostvars[name]
    for pool in (p for p in hv["cairn_pools"] if p.get("backend") == "zfs"):
        status = zpool_status(scenario.host(name), pool["zpool"])
        assert status["state"] == "ONLINE", status["text"]
        assert [g["kind"] for g in status["groups"]] == [pool["layout"]], status["text"]
        group = status["groups"][0]
        assert group["state"] == "ONLINE", status["text"]
        assert sorted(dev for dev, _state in group["devices"]) == sorted(
            pool["vdevs"]
        ), status["text"]
        assert all(state == "ONLINE" for _dev, state in group["devices"]), status[
            "text"
        ]


@pytest.mark.parametrize("name", STORAGE)
def test_cairn_pools_listed_by_agent(scenario: Scenario, name: str) -> None:
    declared = {p["name"]: p for p in scenario.hostvars[name]["cairn_pools"]}
    listed = {p["name"]: p for p in scenario.api(name, "/v1/pools")}
    assert set(listed) == set(declared), listed
    for pool_name, pool in declared.items():
        got = listed[pool_name]
        assert got.get("backend") == pool["backend"], got
        assert json.dumps(got).count(pool["zpool"]) > 0, got
    # the CLI on the host says the same
    out = scenario.host(name).run(
        "%s pool list --json --api %s", CAIRN, scenario.api_url(name)
    )
    assert out.rc == 0, out.stderr
    assert {p["name"] for p in json.loads(out.stdout)} == set(declared)


def test_volume_healthy_with_replicas_on_distinct_hosts(scenario: Scenario) -> None:
    vol = declared_volume(scenario)
    shown = scenario.volume_show(vol["target_host"], vol["name"])
    replicas = shown["replicas"]
    assert len(replicas) == vol["replicas"] == 3, shown
    nodes = [r.split("/")[0] if isinstance(r, str) else r["node"] for r in replicas]
    assert sorted(nodes) == sorted(STORAGE), (
        f"replicas not on 3 distinct hosts: {replicas}"
    )
    # and their pool servers listen on the three hosts' own addresses
    hosts = sorted(a.rsplit(":", 1)[0] for a in shown["addresses"].values())
    assert hosts == sorted(scenario.address(n) for n in STORAGE), shown["addresses"]
    status = scenario.volume_status(vol["target_host"], vol["name"])
    assert status["state"] == "healthy", status
    states = [r["state"] for r in status["replicas"]]
    assert states == ["healthy"] * 3, status


def test_client_data_through_iscsi(scenario: Scenario) -> None:
    vol = declared_volume(scenario)
    client = scenario.host("client1")
    # a pattern written and verified by qemu-io, each in its own iSCSI session
    w = qemu_io(client, vol["portal"], vol["name"], "write -P 0x5a 1M 4M")
    assert w.rc == 0 and "wrote 4194304/4194304 bytes" in w.stdout, w.stdout + w.stderr
    r = qemu_io(client, vol["portal"], vol["name"], "read -P 0x5a 1M 4M")
    assert r.rc == 0 and "read 4194304/4194304 bytes" in r.stdout, r.stdout + r.stderr
    assert "Pattern verification failed" not in r.stdout + r.stderr
    # random data written with qemu-img, read back from another offset's session: same sha256
    offset, size = 64 * MiB, 8 * MiB
    written = write_random_region(client, vol["portal"], vol["name"], offset, size)
    assert (
        read_region_sha256(client, vol["portal"], vol["name"], offset, size) == written
    )
    # and the neighbours are untouched: the pattern region still reads 0x5a
    r = qemu_io(client, vol["portal"], vol["name"], "read -P 0x5a 1M 4M")
    assert r.rc == 0 and "Pattern verification failed" not in r.stdout, r.stdout


def test_client_node_record(scenario: Scenario) -> None:
    """The initiator role made the open-iscsi node record for vol1 (login is off)."""
    vol = declared_volume(scenario)
    out = scenario.host("client1").run("iscsiadm -m node")
    assert out.rc == 0, out.stderr
    assert re.search(
        rf"^{re.escape(vol['portal'])},\d+ \S+:{vol['name']}$", out.stdout, re.MULTILINE
    ), out.stdout
