from __future__ import annotations

from ansible_collections.cairn.storage.plugins.modules import snapshot
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import FakeAgent, Runner

ARGS = {"volume": "db", "name": "s1"}


def test_take_then_idempotent(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    r = runner.run(snapshot.main, ARGS, check=True, diff=True)
    assert r["changed"] and r["diff"] == {"before": {}, "after": {"snapshot": "s1"}}
    assert agent.changes() == []
    r = runner.run(snapshot.main, ARGS)
    assert r["changed"] and r["snapshot"]["name"] == "s1"
    assert agent.changes() == [("POST", "/v1/volumes/db/snapshots", {"name": "s1"})]
    r = runner.run(snapshot.main, ARGS)
    assert not r["changed"] and r["snapshot"]["name"] == "s1"


def test_delete_then_idempotent(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.snapshots["db"] = [{"name": "s1"}]
    args = dict(ARGS, state="absent")
    r = runner.run(snapshot.main, args, check=True, diff=True)
    assert r["changed"] and r["diff"] == {"before": {"snapshot": "s1"}, "after": {}}
    assert agent.changes() == []
    assert runner.run(snapshot.main, args)["changed"]
    assert agent.changes() == [("DELETE", "/v1/volumes/db/snapshots/s1", {"confirm": "s1"})]
    assert not runner.run(snapshot.main, args)["changed"]


def test_delete_refused_while_a_clone_needs_it(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.snapshots["db"] = [{"name": "s1"}]
    agent.errors[("DELETE", "/v1/volumes/db/snapshots/s1")] = (
        409, "target of volume db: snapshot s1 has clones: db-test")  # fmt: skip
    r = runner.fail(snapshot.main, dict(ARGS, state="absent"))
    assert (
        "cannot delete snapshot s1 of volume db (delete the clones made from it first)" in r["msg"]
    )
    assert "snapshot s1 has clones: db-test (HTTP 409" in r["msg"]


def test_rollback_needs_confirm(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.snapshots["db"] = [{"name": "s1"}]
    r = runner.fail(snapshot.main, dict(ARGS, state="rolled_back"))
    assert "loses every write to volume db since snapshot s1" in r["msg"]
    assert "confirm_rollback: true" in r["msg"]
    assert agent.calls == []


def test_rollback(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.snapshots["db"] = [{"name": "s1"}]
    args = dict(ARGS, state="rolled_back", confirm_rollback=True)
    r = runner.run(snapshot.main, args, check=True, diff=True)
    assert r["changed"] and agent.changes() == []
    assert r["diff"]["after"] == {"volume": "db", "data": "snapshot s1"}
    r = runner.run(snapshot.main, args)
    assert r["changed"] and r["rollback"]["snapshot"] == "s1"
    assert agent.changes() == [
        ("POST", "/v1/volumes/db/rollback", {"snapshot": "s1", "confirm": "db"})
    ]


def test_rollback_to_a_missing_snapshot(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.snapshots["db"] = [{"name": "s0"}]
    r = runner.fail(snapshot.main, dict(ARGS, state="rolled_back", confirm_rollback=True))
    assert r["msg"] == "volume db has no snapshot s1 to roll back to (it has: s0)"


def test_rollback_with_initiators(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.snapshots["db"] = [{"name": "s1"}]
    agent.errors[("POST", "/v1/volumes/db/rollback")] = (
        409, "target of volume db: initiators are logged in")  # fmt: skip
    r = runner.fail(snapshot.main, dict(ARGS, state="rolled_back", confirm_rollback=True))
    assert "(log every initiator out of the volume first)" in r["msg"]
    assert "initiators are logged in (HTTP 409" in r["msg"]


def test_errors(runner: Runner, agent: FakeAgent) -> None:
    r = runner.fail(snapshot.main, ARGS)
    assert "cannot list the snapshots of volume db (api_url must point" in r["msg"]
    assert r["status"] == 404
    agent.add_volume("db")
    agent.errors[("POST", "/v1/volumes/db/snapshots")] = (409, "target of volume db: not in quorum")
    r = runner.fail(snapshot.main, ARGS)
    assert r["msg"].startswith("cannot snapshot volume db: POST /v1/volumes/db/snapshots: "
                               "target of volume db: not in quorum (HTTP 409")  # fmt: skip
    r = runner.fail(snapshot.main, dict(ARGS, name="bad/name"))
    assert "letters, digits" in r["msg"]
    r = runner.fail(snapshot.main, dict(ARGS, state="gone"))
    assert "state" in r["msg"]


def test_absent_when_the_volume_is_gone(runner: Runner, agent: FakeAgent) -> None:
    r = runner.run(snapshot.main, dict(ARGS, state="absent"))
    assert not r["changed"] and agent.changes() == []
