from __future__ import annotations

from ansible_collections.cairn.storage.plugins.modules import clone
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import FakeAgent, Runner

ARGS = {"name": "db-test", "volume": "db", "snapshot": "s1", "portal": "10.0.0.1:3270"}


def setup(agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.snapshots["db"] = [{"name": "s1"}]


def test_make_then_idempotent(runner: Runner, agent: FakeAgent) -> None:
    setup(agent)
    r = runner.run(clone.main, ARGS, check=True, diff=True)
    assert r["changed"] and agent.changes() == []
    assert r["diff"]["after"] == ARGS
    r = runner.run(clone.main, ARGS, diff=True)
    assert r["changed"] and r["volume"]["origin"] == {"volume": "db", "snapshot": "s1"}
    assert r["url"] == "iscsi://10.0.0.1:3270/iqn.2026-11.io.cairn:db-test/0"
    assert agent.changes() == [
        (
            "POST",
            "/v1/volumes/db/clones",
            {"name": "db-test", "snapshot": "s1", "portal": "10.0.0.1:3270"},
        )
    ]
    r = runner.run(clone.main, ARGS, diff=True)
    assert not r["changed"] and "diff" not in r and len(agent.changes()) == 1


def test_existing_volume_of_another_origin(runner: Runner, agent: FakeAgent) -> None:
    setup(agent)
    agent.add_volume("db-test")
    r = runner.fail(clone.main, ARGS)
    assert "volume db-test exists and is not a clone, not a clone of db@s1" in r["msg"]
    agent.volumes["db-test"]["origin"] = {"volume": "db", "snapshot": "s0"}
    r = runner.fail(clone.main, ARGS)
    assert "is a clone of db@s0, not a clone of db@s1" in r["msg"]
    agent.volumes["db-test"]["origin"] = {"volume": "db", "snapshot": "s1"}
    r = runner.fail(clone.main, ARGS)
    assert "portal is 10.0.0.1:3260, not 10.0.0.1:3270" in r["msg"]
    assert agent.changes() == []


def test_missing_snapshot(runner: Runner, agent: FakeAgent) -> None:
    setup(agent)
    r = runner.fail(clone.main, dict(ARGS, snapshot="s9"))
    assert r["msg"] == ("cannot clone db@s9 as db-test: POST /v1/volumes/db/clones: target of "
                        "volume db: no snapshot s9 (HTTP 404, not found)")  # fmt: skip


def test_arguments(runner: Runner, agent: FakeAgent) -> None:
    r = runner.fail(clone.main, {"name": "db-test"})
    assert "missing: volume, snapshot" in r["msg"]
    r = runner.fail(clone.main, dict(ARGS, name="db"))
    assert "a clone needs its own name" in r["msg"]
    r = runner.fail(clone.main, {"name": "db-test", "state": "absent"})
    assert "set confirm_destroy: true" in r["msg"]
    assert agent.calls == []


def test_delete(runner: Runner, agent: FakeAgent) -> None:
    setup(agent)
    runner.run(clone.main, ARGS)
    args = {"name": "db-test", "state": "absent", "confirm_destroy": True}
    r = runner.run(clone.main, args, check=True, diff=True)
    assert r["changed"] and r["diff"]["before"]["snapshot"] == "s1" and r["diff"]["after"] == {}
    assert "db-test" in agent.volumes
    r = runner.run(clone.main, args)
    assert r["changed"] and "db-test" not in agent.volumes
    assert agent.changes()[-1] == ("DELETE", "/v1/volumes/db-test", {"confirm": "db-test"})
    assert not runner.run(clone.main, args)["changed"]


def test_delete_refuses_a_volume_that_is_no_clone(runner: Runner, agent: FakeAgent) -> None:
    setup(agent)
    r = runner.fail(clone.main, {"name": "db", "state": "absent", "confirm_destroy": True})
    assert "volume db is not a clone; delete it with cairn.storage.volume" in r["msg"]
    assert agent.changes() == []


def test_delete_with_clones_of_its_own(runner: Runner, agent: FakeAgent) -> None:
    setup(agent)
    runner.run(clone.main, ARGS)
    agent.add_volume("db-test-2", origin={"volume": "db-test", "snapshot": "x"})
    args = {"name": "db-test", "state": "absent", "confirm_destroy": True}
    r = runner.fail(clone.main, args)
    assert "(delete its own clones first, or set force: true)" in r["msg"]
    assert runner.run(clone.main, dict(args, force=True))["changed"]
