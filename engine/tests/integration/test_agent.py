"""The node agent with real processes: three agents (each one a "node" on its own
loopback address, peers of each other), a pool on each, a 3-replica volume whose target
the first agent runs, and the faults the agent must repair by itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .agent_node import AgentNode, pid_alive, wait_for
from .conftest import free_port

pytestmark = pytest.mark.integration

SIZE = 32 << 20
PATTERN = 0x5A


class Nodes:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes = [
            AgentNode(root, f"node-{c}", f"127.0.0.{20 + i}") for i, c in enumerate("abc")
        ]
        for n in self.nodes:
            n.peers = {m.name: m.url for m in self.nodes if m is not n}
        self.portal_port = free_port()

    @property
    def a(self) -> AgentNode:
        return self.nodes[0]

    def report(self) -> str:
        return "\n".join(n.report() for n in self.nodes)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.a.call("GET", "/v1/volumes/vol/status")
        return doc

    def wait_healthy(self, timeout: float = 60) -> dict[str, Any]:
        def healthy() -> Any:
            st = self.status()
            ok = st["state"] == "healthy" and all(r["state"] == "healthy" for r in st["replicas"])
            return st if ok and len(st["replicas"]) == 3 else None

        return wait_for(healthy, timeout, "the volume is healthy with 3 replicas", self.report)

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.portal_port}/iqn.2026-11.io.cairn:vol/0"


def qemu_io(*commands: str, url: str) -> str:
    import subprocess

    argv = ["qemu-io", "-f", "raw"]
    for c in commands:
        argv += ["-c", c]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "error" not in out.lower() and "fail" not in out.lower(), out
    return out


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    if shutil.which("qemu-io") is None:
        pytest.fail("qemu-io is not installed (scripts/install.sh installs qemu-utils)")
    ns = Nodes(tmp_path_factory.mktemp("agents"))
    try:
        for n in ns.nodes:
            n.start()
        for n in ns.nodes:
            n.call(
                "POST", "/v1/pools", {"name": "p1", "listen": f"{n.address}:{free_port(n.address)}"}
            )
        ns.a.call(
            "POST",
            "/v1/volumes",
            {
                "name": "vol",
                "size": "32M",
                "replicas": ["node-a/p1", "node-b/p1", "node-c/p1"],
                "portal": f"127.0.0.1:{ns.portal_port}",
                "replica_timeout": 1.0,
                "hold_time": 4.0,
            },
        )
        ns.wait_healthy()
        qemu_io(f"write -P {PATTERN} 0 1M", f"write -P {PATTERN + 1} 8M 512k", url=ns.url)
        yield ns
    finally:
        for n in reversed(ns.nodes):
            n.cleanup()


def check_data(ns: Nodes) -> None:
    qemu_io(f"read -P {PATTERN} 0 1M", f"read -P {PATTERN + 1} 8M 512k", url=ns.url)


# --------------------------------------------------------------------------- the API


def test_volume_is_healthy_with_three_replicas_on_three_nodes(nodes):
    st = nodes.wait_healthy()
    vol = nodes.a.call("GET", "/v1/volumes/vol")
    assert vol["replicas"] == ["node-a/p1", "node-b/p1", "node-c/p1"]
    # each replica resolved to its node's pool server (peers answered GET /v1/pools)
    expected = {f"{n.name}/p1": n.call("GET", "/v1/pools/p1")["address"] for n in nodes.nodes}
    assert vol["addresses"] == expected
    assert {r["address"] for r in st["replicas"]} == set(expected.values())
    assert vol["status"]["state"] == "healthy" and vol["process"]["state"] == "running"
    assert st["size"] == SIZE
    check_data(nodes)


def test_token_is_required_except_for_health(nodes):
    assert nodes.a.api(token=None).call("GET", "/v1/health")["node"] == "node-a"
    for token in (None, "wrong-token-000000000000"):
        for method, path in (("GET", "/v1/pools"), ("GET", "/v1/volumes/vol"),
                             ("DELETE", "/v1/volumes/vol"), ("GET", "/openapi.json")):  # fmt: skip
            status, doc = nodes.a.api(token=token).raw(method, path, {"confirm": "vol"})
            assert status == 401 and "token" in doc["error"], (method, path, status, doc)
    assert nodes.a.call("GET", "/v1/volumes/vol")["name"] == "vol"  # nothing was deleted


def test_placement_and_bad_input_are_refused(nodes):
    api = nodes.a.api()
    cases = [
        ({"name": "two", "size": "8M", "replicas": ["node-a/p1", "node-b/p1", "node-b/p2"]}, 400,
         "two replicas on node node-b"),
        ({"name": "two", "size": "8M", "replicas": ["node-a/p1", "node-a/p1"]}, 400,
         "two replicas on node node-a"),
        ({"name": "x", "size": "8M", "replicas": ["node-z/p1"]}, 404, "unknown node"),
        ({"name": "x", "size": "8M", "replicas": ["node-b/nope"]}, 404, "no pool 'nope'"),
        ({"name": "x", "size": "8M", "replicas": ["p1"]}, 400, "NODE/POOL"),
        ({"name": "x", "size": "-1", "replicas": ["node-a/p1"]}, 400, "size"),
        ({"name": "x/y", "size": "8M", "replicas": ["node-a/p1"]}, 400, "name"),
        ({"name": "vol", "size": "8M", "replicas": ["node-a/p1"]}, 409, "exists"),
        ({"name": "x", "size": "8M", "replicas": ["node-a/p1"], "colour": 1}, 400, "colour"),
    ]  # fmt: skip
    for body, status, text in cases:
        got, doc = api.raw("POST", "/v1/volumes", body)
        assert got == status and text in doc["error"], (body, got, doc)
    # shrinking, deleting without confirm, a pool in use, an unknown volume
    assert api.raw("PATCH", "/v1/volumes/vol", {"size": "16M"})[0] == 400
    got, doc = api.raw("DELETE", "/v1/volumes/vol", {})
    assert got == 400 and '"confirm": "vol"' in doc["error"]
    got, doc = api.raw("DELETE", "/v1/pools/p1", {"confirm": "p1"})
    assert got == 409 and "vol" in doc["error"]
    got, doc = nodes.nodes[1].api().raw("DELETE", "/v1/pools/p1", {"confirm": "p1"})
    assert got == 409 and "node-a:vol" in doc["error"], doc  # a peer's volume uses it
    assert api.raw("GET", "/v1/volumes/nope")[0] == 404
    got, doc = api.raw("GET", "/v1/nothing")
    assert got == 404 and doc["error"].startswith("no such endpoint")
    got, doc = api.raw("POST", "/v1/pools", None)
    assert got == 400
    assert nodes.a.call("GET", "/v1/volumes")[0]["name"] == "vol"
    assert [v["name"] for v in nodes.a.call("GET", "/v1/volumes")] == ["vol"]
    nodes.wait_healthy()


def test_openapi_answers_match_the_document(nodes):
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    doc = nodes.a.call("GET", "/openapi.json")
    validate(doc)

    def check(method: str, path: str, template: str, body: Any = None) -> None:
        status, answer = nodes.a.api().raw(method, path, body)
        op = doc["paths"][template][method.lower()]
        assert str(status) in op["responses"], (method, path, status, answer)
        schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
        Draft202012Validator({**schema, "components": doc["components"]}).validate(answer)

    check("GET", "/v1/health", "/v1/health")
    check("GET", "/v1/pools", "/v1/pools")
    check("GET", "/v1/pools/p1", "/v1/pools/{pool}")
    check("GET", "/v1/volumes", "/v1/volumes")
    check("GET", "/v1/volumes/vol", "/v1/volumes/{vol}")
    check("GET", "/v1/volumes/vol/status", "/v1/volumes/{vol}/status")
    check("GET", "/v1/volumes/nope", "/v1/volumes/{vol}")
    check("PATCH", "/v1/volumes/vol", "/v1/volumes/{vol}", {"size": 1})
    check(
        "POST",
        "/v1/volumes",
        "/v1/volumes",
        {"name": "vol", "size": 4096, "replicas": ["node-a/p1"]},
    )
    # and a document that does not match is caught (the check can fail)
    bad = dict(nodes.a.call("GET", "/v1/pools/p1"))
    del bad["address"]
    with pytest.raises(Exception, match="address"):
        Draft202012Validator({"$ref": "#/components/schemas/Pool", **doc}).validate(bad)


def test_metrics_of_a_real_volume(nodes):
    qemu_io(f"write -P {PATTERN + 2} 16M 256k", f"read -P {PATTERN + 2} 16M 256k", url=nodes.url)
    st = nodes.status()
    text = nodes.a.metrics()
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    def value(family: str, **labels: str) -> float:
        for s in fams[family].samples:
            if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith(
                "_created"
            ):
                return float(s.value)
        raise AssertionError(f"no {family} {labels} in:\n{text}")

    assert value("cairn_volume_up", volume="vol") == 1
    assert value("cairn_volume_size_bytes", volume="vol") == SIZE
    assert value("cairn_volume_status", volume="vol", state="healthy") == 1
    assert value("cairn_volume_status", volume="vol", state="degraded") == 0
    assert value("cairn_volume_replicas", volume="vol", state="healthy") == 3
    assert value("cairn_volume_replicas", volume="vol", state="degraded") == 0
    assert value("cairn_volume_replicas_total", volume="vol") == 3
    # counters move with the I/O (the scrape came after the status document)
    for k in ("reads", "writes", "read_bytes", "write_bytes"):
        assert value(f"cairn_volume_{k}", volume="vol") >= st["stats"][k] > 0, k
    assert value("cairn_volume_write_bytes", volume="vol") >= (1 << 20) + (512 << 10) + (256 << 10)
    # latency: the time reads and writes took in all, at most the test's own length
    for k in ("read", "write"):
        took = value(f"cairn_volume_{k}_time_seconds", volume="vol")
        assert 0 < took >= st["stats"][f"{k}_time_us"] / 1e6 and took < 600, (k, took)
    # used: what the pools say the replicas occupy (at least the bytes written here)
    used = [value("cairn_replica_used_bytes", volume="vol", replica=f"{n}/p1")
            for n in ("node-a", "node-b", "node-c")]  # fmt: skip
    assert all(u >= 256 << 10 for u in used), used
    assert value("cairn_volume_used_bytes", volume="vol") == max(used)
    for n in ("node-a", "node-b", "node-c"):
        assert value("cairn_replica_status", volume="vol", replica=f"{n}/p1", state="healthy") == 1
        assert value("cairn_replica_inflight", volume="vol", replica=f"{n}/p1") >= 0
    assert value("cairn_pool_up", pool="p1") == 1
    assert value("cairn_pool_capacity_bytes", pool="p1") > 0
    assert fams["cairn_child_restarts"].type == "counter"


def test_remove_and_add_a_replica(nodes):
    """Scale down to two replicas and back: the target's replica set and the desired
    state follow; the returning replica is rebuilt before the volume is healthy again."""
    nodes.wait_healthy()
    vol = nodes.a.call("DELETE", "/v1/volumes/vol/replicas/node-c/p1")
    assert vol["replicas"] == ["node-a/p1", "node-b/p1"]
    st = nodes.status()
    assert len(st["replicas"]) == 2 and st["state"] == "healthy", st
    desired = json.loads((nodes.a.state_dir / "desired.json").read_text())
    assert desired["volumes"]["vol"]["replicas"] == ["node-a/p1", "node-b/p1"]
    api = nodes.a.api()
    got, doc = api.raw("POST", "/v1/volumes/vol/replicas", {"pool": "node-a/p2"})
    assert got == 400 and "two replicas on node node-a" in doc["error"]
    got, doc = api.raw("DELETE", "/v1/volumes/vol/replicas/node-c/p1")
    assert got == 404
    qemu_io(f"write -P {PATTERN + 4} 24M 256k", url=nodes.url)  # missed by node-c
    vol = nodes.a.call("POST", "/v1/volumes/vol/replicas", {"pool": "node-c/p1"})
    assert vol["replicas"] == ["node-a/p1", "node-b/p1", "node-c/p1"]
    nodes.wait_healthy(120)
    qemu_io(f"read -P {PATTERN + 4} 24M 256k", url=nodes.url)
    check_data(nodes)


# --------------------------------------------------------------------------- faults


def test_a_killed_target_is_restarted_and_the_volume_heals(nodes):
    pid = nodes.a.child_pid("volume-vol")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: nodes.a.child_pid("volume-vol") != pid, 30, "a new target", nodes.report)
    nodes.wait_healthy(90)
    proc = nodes.a.call("GET", "/v1/volumes/vol")["process"]
    assert proc["restarts"] >= 1 and proc["last_exit"]["signal"] == "SIGKILL", proc
    check_data(nodes)


def test_a_killed_pool_server_is_restarted_and_rebuilt(nodes):
    b = nodes.nodes[1]
    pid = b.child_pid("pool-p1")
    os.kill(pid, signal.SIGKILL)
    address = b.call("GET", "/v1/pools/p1")["address"]

    def replica_state() -> str:
        return next(r["state"] for r in nodes.status()["replicas"] if r["address"] == address)

    # the target notices (degraded) while writes go on, then the agent brings it back
    wait_for(lambda: replica_state() != "healthy", 30, "the replica leaves healthy", nodes.report)
    qemu_io(f"write -P {PATTERN + 3} 20M 1M", url=nodes.url)
    wait_for(lambda: b.child_pid("pool-p1") != pid, 30, "a new pool server", nodes.report)
    st = nodes.wait_healthy(120)
    assert b.call("GET", "/v1/pools/p1")["process"]["restarts"] >= 1
    rep = next(r for r in st["replicas"] if r["address"] == address)
    assert rep["stats"].get("rebuilds", 0) >= 1, rep
    qemu_io(f"read -P {PATTERN + 3} 20M 1M", url=nodes.url)
    check_data(nodes)


def test_sigterm_stops_every_child_and_a_restart_resumes(nodes):
    a = nodes.a
    pids = a.child_pids()
    assert len(pids) == 2  # pool-p1 and volume-vol
    version = a.call("GET", "/v1/health")["version"]
    assert a.stop(signal.SIGTERM) == 0
    for pid in pids:
        assert not pid_alive(pid), pid
    assert list((a.state_dir / "run").glob("*.pid")) == []
    desired = json.loads((a.state_dir / "desired.json").read_text())
    assert desired["version"] == version and set(desired["volumes"]) == {"vol"}

    a.start()
    assert a.call("GET", "/v1/health")["version"] == version
    assert set(a.child_pids()).isdisjoint(pids)
    nodes.wait_healthy(120)
    check_data(nodes)


def test_an_agent_killed_hard_leaves_no_second_server_on_restart(nodes):
    """SIGKILL the agent: its children live on; the next agent stops them (pid files)
    before it starts new ones, so one pool never has two servers."""
    a = nodes.a
    old = a.child_pids()
    a.stop(signal.SIGKILL)
    assert all(pid_alive(p) for p in old)
    a.start()
    assert all(not pid_alive(p) for p in old), old
    assert set(a.child_pids()).isdisjoint(old)
    nodes.wait_healthy(120)
    check_data(nodes)


def test_a_snapshot_below_quorum_waits_then_fails_with_the_reason(nodes):
    """Two of three pools down (their agents paused, so nobody restarts them): `cairn
    snapshot create` waits its bounded time, then fails (exit 4) saying why; once the
    pools are back the same command works."""
    import subprocess
    import time

    from .conftest import find_cairn

    def snapshot(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [find_cairn(), "snapshot", *argv, "--api", nodes.a.url,
               "--token-file", str(nodes.a.token_file)]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    others = nodes.nodes[1:]
    for n in others:
        os.kill(n.proc.pid, signal.SIGSTOP)
    try:
        for n in others:
            os.kill(n.child_pid("pool-p1"), signal.SIGKILL)
        wait_for(lambda: not nodes.status()["writable"], 30, "the volume leaves quorum",
                 nodes.report)  # fmt: skip
        t0 = time.monotonic()
        done = snapshot("create", "vol", "below")
        waited = time.monotonic() - t0
    finally:
        for n in others:
            os.kill(n.proc.pid, signal.SIGCONT)
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "not in quorum after 10 s" in done.stderr and "1 of 3 replicas healthy" in done.stderr
    assert waited >= 9, waited  # it waited for quorum before giving up
    nodes.wait_healthy(120)
    done = snapshot("create", "vol", "below")
    assert done.returncode == 0, done.stderr
    assert snapshot("delete", "vol", "below", "--yes").returncode == 0
    check_data(nodes)
