"""molecule/default verify: inventories/local's promise, checked inside the host: the
agent runs under systemd, the three embedded pools serve, vol1 is healthy with its three
replicas (one per pool), and data written through libiscsi on 127.0.0.1:3260 reads back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cairn_mh import (
    CAIRN,
    Scenario,
    qemu_io,
    read_region_sha256,
    write_random_region,
)

HOST = "local"
MiB = 1 << 20


def cli(scenario: Scenario, *args: str) -> Any:
    """`cairn ... --json` on the host, against its agent on the host's own loopback."""
    out = scenario.host(HOST).run(" ".join([CAIRN, *args, "--json"]))
    assert out.rc == 0, f"cairn {' '.join(args)}: {out.stdout}{out.stderr}"
    return json.loads(out.stdout)


def test_agent_running(scenario: Scenario) -> None:
    unit = scenario.host(HOST).service("cairn-agent")
    assert unit.is_running, "cairn-agent.service is not active"
    assert unit.is_enabled, "cairn-agent.service is not enabled"
    api = scenario.hostvars[HOST]["cairn_address"]
    health = scenario.host(HOST).run(
        "python3 -c 'import urllib.request,sys; sys.stdout.write("
        f'urllib.request.urlopen("http://{api}:6060/v1/health").read().decode())\''
    )
    assert health.rc == 0, health.stderr
    doc = json.loads(health.stdout)
    assert doc.get("ok") is True and doc.get("node") == HOST, doc


def test_three_pools_listening_where_declared(scenario: Scenario) -> None:
    declared = {p["name"]: p for p in scenario.hostvars[HOST]["cairn_pools"]}
    listed = {p["name"]: p for p in cli(scenario, "pool", "list")}
    assert set(listed) == set(declared) == {"pool1", "pool2", "pool3"}, listed
    sockets = scenario.host(HOST).socket
    for name, pool in declared.items():
        assert sockets(f"tcp://{pool['listen']}").is_listening, (
            f"{name}: {pool['listen']}"
        )


def test_vol1_healthy_with_three_replicas(scenario: Scenario) -> None:
    (vol,) = scenario.hostvars[HOST]["cairn_volumes"]
    shown = cli(scenario, "volume", "show", vol["name"])
    assert sorted(shown["replicas"]) == ["local/pool1", "local/pool2", "local/pool3"], (
        shown
    )
    assert shown["portal"] == vol["portal"], shown
    status = shown["status"]
    assert status["state"] == "healthy", status
    assert [r["state"] for r in status["replicas"]] == ["healthy"] * 3, status
    assert shown["size"] == 1 << 30, shown


@pytest.mark.parametrize("offset", [0, 512 * MiB])
def test_data_through_iscsi(scenario: Scenario, offset: int) -> None:
    (vol,) = scenario.hostvars[HOST]["cairn_volumes"]
    host = scenario.host(HOST)
    w = qemu_io(host, vol["portal"], vol["name"], f"write -P 0x6b {offset} 2M")
    assert w.rc == 0 and "wrote 2097152/2097152 bytes" in w.stdout, w.stdout + w.stderr
    r = qemu_io(host, vol["portal"], vol["name"], f"read -P 0x6b {offset} 2M")
    assert r.rc == 0 and "read 2097152/2097152 bytes" in r.stdout, r.stdout + r.stderr
    assert "Pattern verification failed" not in r.stdout
    region = offset + 4 * MiB
    written = write_random_region(host, vol["portal"], vol["name"], region, 4 * MiB)
    assert (
        read_region_sha256(host, vol["portal"], vol["name"], region, 4 * MiB) == written
    )
