from __future__ import annotations

from ansible_collections.cairn.storage.plugins.modules import pool
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import FakeAgent, Runner

ARGS = {"name": "p1", "path": "/srv/cairn/p1", "listen": "10.0.0.1:3232"}


def test_create_then_idempotent(runner: Runner, agent: FakeAgent) -> None:
    r = runner.run(pool.main, ARGS, diff=True)
    assert r["changed"] and r["pool"]["name"] == "p1"
    assert agent.changes() == [("POST", "/v1/pools", dict(ARGS, backend="embedded"))]
    assert r["diff"]["before"] == {}
    assert r["diff"]["after"]["path"] == "/srv/cairn/p1"
    again = runner.run(pool.main, ARGS, diff=True)
    assert not again["changed"] and "diff" not in again
    assert len(agent.changes()) == 1


def test_check_mode_predicts_and_changes_nothing(runner: Runner, agent: FakeAgent) -> None:
    r = runner.run(pool.main, ARGS, check=True, diff=True)
    assert r["changed"] and r["diff"]["after"]["listen"] == "10.0.0.1:3232"
    assert agent.changes() == [] and agent.pools == {}
    agent.add_pool("p1", path="/srv/cairn/p1")
    r = runner.run(pool.main, dict(ARGS, state="absent"), check=True)
    assert r["changed"] and agent.changes() == [] and "p1" in agent.pools


def test_path_is_normalised(runner: Runner, agent: FakeAgent) -> None:
    agent.add_pool("p1", path="/srv/cairn/p1")
    r = runner.run(pool.main, {"name": "p1", "path": "/srv//cairn/p1/"})
    assert not r["changed"]


def test_other_settings_are_a_failure(runner: Runner, agent: FakeAgent) -> None:
    agent.add_pool("p1", path="/srv/cairn/p1", listen="10.0.0.1:3232")
    r = runner.fail(pool.main, dict(ARGS, path="/srv/other", listen="10.0.0.1:3300"))
    assert "pool p1 exists with other settings" in r["msg"]
    assert "path is /srv/cairn/p1, not /srv/other" in r["msg"]
    assert "listen is 10.0.0.1:3232, not 10.0.0.1:3300" in r["msg"]
    assert "state: absent" in r["msg"]
    r = runner.fail(pool.main, {"name": "p1", "backend": "zfs", "zpool": "tank"})
    assert "backend is embedded, not zfs" in r["msg"]
    assert agent.changes() == []


def test_zfs(runner: Runner, agent: FakeAgent) -> None:
    r = runner.run(pool.main, {"name": "z", "backend": "zfs", "zpool": "tank"})
    assert r["changed"]
    assert agent.changes()[0][2] == {"name": "z", "backend": "zfs", "zpool": "tank"}
    assert not runner.run(pool.main, {"name": "z", "backend": "zfs", "zpool": "tank"})["changed"]


def test_argument_validation(runner: Runner, agent: FakeAgent) -> None:
    r = runner.fail(pool.main, {"name": "z", "backend": "zfs"})
    assert "zpool" in r["msg"]
    r = runner.fail(pool.main, {"name": "z", "path": "/a", "zpool": "tank"})
    assert "mutually exclusive" in r["msg"]
    r = runner.fail(pool.main, {"name": "z", "zpool": "tank"})
    assert "zpool is for backend zfs" in r["msg"]
    r = runner.fail(pool.main, {"name": "bad name"})
    assert "letters, digits" in r["msg"]
    r = runner.fail(pool.main, {"name": "z", "backend": "lvm"})
    assert "backend" in r["msg"]
    assert agent.calls == []


def test_absent(runner: Runner, agent: FakeAgent) -> None:
    agent.add_pool("p1")
    r = runner.run(pool.main, {"name": "p1", "state": "absent"}, diff=True)
    assert r["changed"] and r["volumes_affected"] == []
    assert r["diff"] == {"before": {"name": "p1", "backend": "embedded", "listen": "10.0.0.1:3232",
                                    "path": "/var/lib/cairn/pools/p1"}, "after": {}}  # fmt: skip
    assert agent.changes() == [("DELETE", "/v1/pools/p1", {"confirm": "p1"})]
    assert not runner.run(pool.main, {"name": "p1", "state": "absent"})["changed"]


def test_absent_in_use_needs_force(runner: Runner, agent: FakeAgent) -> None:
    agent.add_pool("p1")
    agent.add_volume("db")
    r = runner.fail(pool.main, {"name": "p1", "state": "absent"})
    assert r["status"] == 409 and "holds replicas of db" in r["msg"]
    assert "cairn.storage.replica" in r["msg"] and "force: true" in r["msg"]
    assert r["agent_error"].startswith("pool 'p1' holds replicas")
    r = runner.run(pool.main, {"name": "p1", "state": "absent", "force": True})
    assert r["changed"] and r["volumes_affected"] == ["db"]
    assert agent.changes()[-1] == ("DELETE", "/v1/pools/p1", {"confirm": "p1", "force": True})


def test_agent_errors(runner: Runner, agent: FakeAgent) -> None:
    agent.errors[("POST", "/v1/pools")] = (400, "path: an absolute directory")
    r = runner.fail(pool.main, ARGS)
    assert r["msg"] == (
        "cannot create pool p1: POST /v1/pools: path: an absolute directory (HTTP 400, bad input)"
    )
    agent.errors[("GET", "/v1/pools")] = (503, "starting")
    r = runner.fail(pool.main, ARGS)
    assert "cannot list the pools of the agent at http://agent.test:6060" in r["msg"]
    assert r["status"] == 503
    agent.unreachable = True
    r = runner.fail(pool.main, ARGS)
    assert "cannot reach the agent" in r["msg"] and r["status"] is None


def test_token_file_missing(runner: Runner, tmp_path) -> None:
    r = runner.fail(pool.main, dict(ARGS, token_file=str(tmp_path / "none")))
    assert "cannot read the token file" in r["msg"]
