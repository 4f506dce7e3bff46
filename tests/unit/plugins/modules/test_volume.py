from __future__ import annotations

from ansible_collections.cairn.storage.plugins.modules import volume
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import (
    FakeAgent,
    GiB,
    Runner,
)

REPLICAS = ["node-a/p1", "node-b/p1", "node-c/p1"]
ARGS = {"name": "db", "size": "1G", "replicas": REPLICAS}


def test_create_then_idempotent(runner: Runner, agent: FakeAgent) -> None:
    agent.add_pool("p1")
    args = dict(ARGS, portal="10.0.0.1:3260", acl=["iqn.2026-01.com.example:h"],
                chap={"username": "u", "secret": "s3cret-s3cret"}, block_size=4096)  # fmt: skip
    r = runner.run(volume.main, args, diff=True)
    assert r["changed"] and r["url"] == "iscsi://10.0.0.1:3260/iqn.2026-11.io.cairn:db/0"
    ((method, path, body),) = agent.changes()
    assert (method, path) == ("POST", "/v1/volumes")
    assert body == {"name": "db", "size": GiB, "replicas": REPLICAS, "portal": "10.0.0.1:3260",
                    "block_size": 4096, "acl": ["iqn.2026-01.com.example:h"],
                    "chap": {"username": "u", "secret": "s3cret-s3cret"}}  # fmt: skip
    assert r["diff"]["before"] == {}
    assert r["diff"]["after"]["size"] == GiB and r["diff"]["after"]["chap_username"] == "u"
    assert "s3cret" not in repr(r)
    again = runner.run(volume.main, dict(args, size="1024M"), diff=True)
    assert not again["changed"] and "diff" not in again
    assert len(agent.changes()) == 1


def test_check_mode_create(runner: Runner, agent: FakeAgent) -> None:
    r = runner.run(volume.main, ARGS, check=True, diff=True)
    assert r["changed"] and r["diff"]["after"]["replicas"] == REPLICAS
    assert agent.changes() == [] and agent.volumes == {}


def test_grow_online(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", GiB)
    r = runner.run(volume.main, dict(ARGS, size="2G"), check=True, diff=True)
    assert r["changed"] and agent.changes() == []
    assert r["diff"]["before"]["size"] == GiB and r["diff"]["after"]["size"] == 2 * GiB
    r = runner.run(volume.main, dict(ARGS, size="2G"), diff=True)
    assert r["changed"] and r["volume"]["size"] == 2 * GiB
    assert agent.changes() == [("PATCH", "/v1/volumes/db", {"size": 2 * GiB})]
    assert not runner.run(volume.main, dict(ARGS, size="2G"))["changed"]


def test_shrink_is_refused(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", 2 * GiB)
    r = runner.fail(volume.main, dict(ARGS, size="1G"))
    assert r["msg"] == (
        "volume db is 2G (2147483648 bytes); size 1G (1073741824 bytes) would shrink it, "
        "and a volume never shrinks. Keep size at 2G or larger"
    )
    r = runner.fail(volume.main, dict(ARGS, size="1G"), check=True)
    assert "never shrinks" in r["msg"]
    assert agent.changes() == []


def test_placement_refused_before_the_api(runner: Runner, agent: FakeAgent) -> None:
    r = runner.fail(volume.main, dict(ARGS, replicas=["node-a/p1", "node-a/p2", "node-b/p1"]))
    assert "node-a/p1, node-a/p2 are all on node node-a" in r["msg"]
    assert "allow_same_node" in r["msg"]
    r = runner.fail(volume.main, dict(ARGS, replicas=["node-a/p1", "node-a/p1"],
                                      allow_same_node=True))  # fmt: skip
    assert "named twice" in r["msg"]
    r = runner.fail(volume.main, dict(ARGS, replicas=["node-a"]))
    assert "must be NODE/POOL" in r["msg"]
    assert agent.calls == []


def test_allow_same_node(runner: Runner, agent: FakeAgent) -> None:
    agent.add_pool("p1")
    agent.add_pool("p2")
    args = dict(ARGS, replicas=["node-a/p1", "node-a/p2"], allow_same_node=True)
    r = runner.run(volume.main, args)
    assert r["changed"] and agent.changes()[0][2]["allow_same_node"] is True


def test_replica_set_differs(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", GiB)
    r = runner.fail(volume.main, dict(ARGS, replicas=["node-a/p1", "node-b/p1", "node-d/p1"]))
    assert "volume db has replicas node-a/p1, node-b/p1, node-c/p1" in r["msg"]
    assert "use cairn.storage.replica" in r["msg"]
    assert "add node-d/p1, then remove node-c/p1" in r["msg"]
    assert agent.changes() == []
    # the order does not matter
    assert not runner.run(volume.main, dict(ARGS, replicas=list(reversed(REPLICAS))))["changed"]


def test_fixed_settings_differ(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db", GiB, chap={"username": "u"})
    r = runner.fail(volume.main, dict(ARGS, portal="10.0.0.1:3300", block_size=4096,
                                      chap={"username": "v", "secret": "0123456789abc"},
                                      acl=["10.0.0.0/24"]))  # fmt: skip
    for part in ("portal is 10.0.0.1:3260, not 10.0.0.1:3300", "block_size is 512, not 4096",
                 "chap username is u, not v", "acl is [], not ['10.0.0.0/24']",
                 "fixed when a volume is created"):  # fmt: skip
        assert part in r["msg"]
    assert "0123456789abc" not in repr(r)


def test_size_validation(runner: Runner, agent: FakeAgent) -> None:
    r = runner.fail(volume.main, dict(ARGS, size="lots"))
    assert r["msg"].startswith("size: size 'lots' is not a number")
    r = runner.fail(volume.main, dict(ARGS, size="1000", block_size=512))
    assert "not a multiple of the block size 512" in r["msg"]
    r = runner.fail(volume.main, {"name": "db"})
    assert "state is present but all of the following are missing: size, replicas" in r["msg"]
    r = runner.fail(volume.main, dict(ARGS, consistency_factor=4))
    assert "consistency_factor: an integer from 1 to 3" in r["msg"]
    r = runner.fail(volume.main, dict(ARGS, block_size=1024))
    assert "block_size" in r["msg"]
    r = runner.fail(volume.main, dict(ARGS, chap={"username": "u", "secret": "0123456789abc",
                                                  "target_username": "t"}))  # fmt: skip
    assert "target_username" in r["msg"] and "0123456789abc" not in repr(r)
    assert agent.changes() == []


def test_agent_refusal_message(runner: Runner, agent: FakeAgent) -> None:
    agent.add_pool("p1")
    r = runner.fail(volume.main, dict(ARGS, replicas=["node-a/p1", "node-q/p1"]))
    assert r["msg"] == (
        "cannot create volume db: POST /v1/volumes: unknown node 'node-q' (replica node-q/p1): "
        "not in peers (HTTP 404, not found)"
    )
    assert r["status"] == 404


def test_absent_needs_confirm(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    r = runner.fail(volume.main, {"name": "db", "state": "absent"})
    assert "set confirm_destroy: true" in r["msg"] and "its data on every replica" in r["msg"]
    assert agent.calls == []
    r = runner.run(volume.main, {"name": "db", "state": "absent", "confirm_destroy": True},
                   check=True, diff=True)  # fmt: skip
    assert r["changed"] and r["diff"]["after"] == {} and r["diff"]["before"]["name"] == "db"
    assert agent.changes() == []
    r = runner.run(volume.main, {"name": "db", "state": "absent", "confirm_destroy": True})
    assert r["changed"] and r["left"] == {}
    assert agent.changes() == [("DELETE", "/v1/volumes/db", {"confirm": "db"})]
    r = runner.run(volume.main, {"name": "db", "state": "absent", "confirm_destroy": True})
    assert not r["changed"]


def test_absent_with_clones_needs_force(runner: Runner, agent: FakeAgent) -> None:
    agent.add_volume("db")
    agent.add_volume("db-test", origin={"volume": "db", "snapshot": "s1"})
    args = {"name": "db", "state": "absent", "confirm_destroy": True}
    r = runner.fail(volume.main, args)
    assert r["status"] == 409 and "has clones db-test" in r["msg"]
    assert "cairn.storage.clone" in r["msg"] and "force: true" in r["msg"]
    r = runner.run(volume.main, dict(args, force=True))
    assert r["changed"]
    assert agent.changes()[-1] == ("DELETE", "/v1/volumes/db", {"confirm": "db", "force": True})


def test_left_replicas_are_warnings(runner: Runner, agent: FakeAgent, monkeypatch) -> None:
    agent.add_volume("db")
    route = agent.route

    def with_left(method, path, body):
        doc = route(method, path, body)
        if method == "DELETE":
            doc["left"] = {"node-c/p1": "pool not reachable"}
        return doc

    monkeypatch.setattr(agent, "route", with_left)
    r = runner.run(volume.main, {"name": "db", "state": "absent", "confirm_destroy": True})
    assert r["left"] == {"node-c/p1": "pool not reachable"}
    assert "its data on node-c/p1 stays" in r["warnings"][0]


def test_wait_healthy(runner: Runner, agent: FakeAgent) -> None:
    agent.add_pool("p1")
    r = runner.run(volume.main, dict(ARGS, wait_healthy=True))
    assert r["status"]["state"] == "healthy"
    agent.statuses["db"] = [{"volume": "db", "size": 1, "state": "offline", "replicas": []}] * 50
    r = runner.fail(volume.main, dict(ARGS, size="2G", wait_healthy=True, wait_timeout=0))
    assert "is not healthy with 3 replicas after 0 s (state offline" in r["msg"]
    assert r["changed"]
