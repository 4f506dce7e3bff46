from __future__ import annotations

from ansible_collections.cairn.storage.plugins.modules import cairn_info
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import FakeAgent, Runner


def test_everything(runner: Runner, agent: FakeAgent) -> None:
    agent.add_pool("p1")
    agent.add_volume("db")
    agent.add_volume("logs")
    agent.snapshots["db"] = [{"name": "s1"}]
    r = runner.run(cairn_info.main, {}, check=True)
    assert not r["changed"] and r["node"] == "node-a"
    assert [p["name"] for p in r["pools"]] == ["p1"]
    assert [v["name"] for v in r["volumes"]] == ["db", "logs"]
    assert r["volumes"][0]["status"]["state"] == "healthy"
    assert r["volumes"][0]["snapshots"] == [{"name": "s1"}]
    assert r["volumes"][1]["snapshots"] == []
    assert agent.changes() == []


def test_some_volumes_without_extras(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.add_volume("logs")
    r = runner.run(cairn_info.main, {"volumes": ["logs"], "gather_status": False,
                                     "gather_snapshots": False})  # fmt: skip
    assert [v["name"] for v in r["volumes"]] == ["logs"]
    assert "status" not in r["volumes"][0] and "snapshots" not in r["volumes"][0]
    r = runner.fail(cairn_info.main, {"volumes": ["nope"]})
    assert r["msg"] == "no volume nope on node node-a (it serves: db, logs)"


def test_a_target_that_does_not_answer(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.errors[("GET", "/v1/volumes/db/snapshots")] = (503, "target of volume db: refused")
    r = runner.run(cairn_info.main, {})
    assert r["volumes"][0]["snapshots"] is None
    assert r["volumes"][0]["snapshots_error"] == "target of volume db: refused"


def test_agent_unreachable(runner: Runner, agent: FakeAgent) -> None:
    agent.unreachable = True
    r = runner.fail(cairn_info.main, {})
    assert r["msg"].startswith("cannot read the agent at http://agent.test:6060: GET /v1/health:")
