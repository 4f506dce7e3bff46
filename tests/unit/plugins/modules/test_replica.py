from __future__ import annotations

from ansible_collections.cairn.storage.plugins.modules import replica
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import FakeAgent, Runner

TWO = ["node-a/p1", "node-b/p1"]


def test_add_then_idempotent(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", replicas=TWO)
    r = runner.run(replica.main, {"volume": "db", "replica": "node-c/p1"}, diff=True)
    assert r["changed"] and r["replicas"] == TWO + ["node-c/p1"]
    assert r["diff"] == {"before": {"replicas": TWO}, "after": {"replicas": TWO + ["node-c/p1"]}}
    assert agent.changes() == [("POST", "/v1/volumes/db/replicas", {"pool": "node-c/p1"})]
    r = runner.run(replica.main, {"volume": "db", "pool": "node-c/p1"}, diff=True)
    assert not r["changed"] and "diff" not in r and len(agent.changes()) == 1


def test_remove_then_idempotent(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    args = {"volume": "db", "replica": "node-c/p1", "state": "absent"}
    r = runner.run(replica.main, args, check=True, diff=True)
    assert r["changed"] and r["replicas"] == TWO and agent.changes() == []
    r = runner.run(replica.main, args)
    assert r["changed"] and r["replicas"] == TWO and r["left"] == {}
    assert agent.changes() == [("DELETE", "/v1/volumes/db/replicas/node-c/p1", None)]
    assert not runner.run(replica.main, args)["changed"]


def test_check_mode_add(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", replicas=TWO)
    r = runner.run(replica.main, {"volume": "db", "replica": "node-c/p1", "wait_healthy": True},
                   check=True)  # fmt: skip
    assert r["changed"] and agent.changes() == [] and "status" not in r
    assert agent.volumes["db"]["replicas"] == TWO


def test_placement_refused_before_the_api(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", replicas=TWO)
    r = runner.fail(replica.main, {"volume": "db", "replica": "node-b/p2"})
    assert "cannot add node-b/p2 to volume db" in r["msg"]
    assert "node-b/p1, node-b/p2 are all on node node-b" in r["msg"]
    assert agent.changes() == []
    agent.volumes["db"]["allow_same_node"] = True
    agent.peer_pools["node-b"].append("p2")
    assert runner.run(replica.main, {"volume": "db", "replica": "node-b/p2"})["changed"]


def test_last_replica(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", replicas=["node-a/p1"])
    r = runner.fail(replica.main, {"volume": "db", "replica": "node-a/p1", "state": "absent"})
    assert "node-a/p1 is the last replica of volume db" in r["msg"]
    assert agent.changes() == []


def test_bad_input(runner: Runner, agent: FakeAgent) -> None:
    r = runner.fail(replica.main, {"volume": "db", "replica": "p1"})
    assert r["msg"] == "replica 'p1' must be NODE/POOL"
    r = runner.fail(replica.main, {"volume": "nope", "replica": "node-a/p1"})
    assert "no volume nope on the agent at http://agent.test:6060" in r["msg"]
    assert "api_url must point at the node whose target serves it" in r["msg"]


def test_agent_refusal(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", replicas=TWO)
    r = runner.fail(replica.main, {"volume": "db", "replica": "node-q/p1"})
    assert r["msg"] == (
        "cannot add replica node-q/p1 to volume db: POST /v1/volumes/db/replicas: unknown "
        "node 'node-q' (replica node-q/p1): not in peers (HTTP 404, not found)"
    )
    agent.errors[("POST", "/v1/volumes/db/replicas")] = (503, "cannot resolve node-c/p1")
    r = runner.fail(replica.main, {"volume": "db", "replica": "node-c/p1"})
    assert r["status"] == 503 and "not reachable now" in r["msg"]
    assert not r["changed"] and r["replicas"] == TWO


def rebuilding(agent: FakeAgent, name: str) -> dict:
    st = agent.status(name)
    st["state"] = "degraded"
    st["replicas"][-1].update(state="rebuilding", rebuild={"done_bytes": 1, "total_bytes": 2})
    return st


def test_wait_healthy_after_add(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", replicas=TWO)
    agent.add_volume("tmp", replicas=TWO + ["node-c/p1"])
    agent.statuses["db"] = [rebuilding(agent, "tmp")] * 3
    args = {"volume": "db", "replica": "node-c/p1", "wait_healthy": True, "poll_interval": 0.01}
    r = runner.run(replica.main, args)
    assert r["changed"] and r["status"]["state"] == "healthy"
    assert len(agent.requests("GET")) >= 4
    # nothing to change: it still waits, and reports no change
    agent.statuses["db"] = [rebuilding(agent, "db")]
    r = runner.run(replica.main, args)
    assert not r["changed"] and r["status"]["state"] == "healthy"


def test_wait_healthy_times_out(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.statuses["db"] = [rebuilding(agent, "db")] * 1000
    args = {"volume": "db", "replica": "node-c/p1", "wait_healthy": True, "wait_timeout": 0,
            "poll_interval": 0.01}  # fmt: skip
    r = runner.fail(replica.main, args)
    assert "after the change, volume db" in r["msg"]
    assert "not healthy with 3 replicas after 0 s" in r["msg"] and "rebuild 50%" in r["msg"]
