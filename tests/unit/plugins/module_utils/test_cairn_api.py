"""The client and helpers of module_utils/cairn_api.py."""

from __future__ import annotations

import pytest
from ansible_collections.cairn.storage.plugins.module_utils import cairn_api
from ansible_collections.cairn.storage.plugins.module_utils.cairn_api import (
    CairnApiError,
    CairnClient,
    cairn_argument_spec,
    format_size,
    parse_replica,
    parse_size,
    placement_problem,
    read_token,
    wait_healthy,
)
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import API, TOKEN, FakeAgent


@pytest.fixture
def client(agent: FakeAgent, tmp_path, monkeypatch) -> CairnClient:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\nignored second line\n")
    monkeypatch.setattr(cairn_api, "open_url", agent.open_url)
    return CairnClient(API + "/", str(token), timeout=5)


def test_argument_spec_defaults() -> None:
    spec = cairn_argument_spec()
    assert spec["api_url"]["default"] == "http://127.0.0.1:6060"
    assert spec["token_file"] == {"type": "path", "default": "/etc/cairn/token"}
    assert spec["ca_file"] == {"type": "path"}
    assert spec["timeout"]["type"] == "int"
    assert cairn_argument_spec() is not spec  # a fresh copy for each module


def test_bearer_token_and_json(client: CairnClient, agent: FakeAgent) -> None:
    assert client.get("/v1/health")["node"] == "node-a"
    assert agent.seen_headers["Authorization"] == "Bearer " + TOKEN
    assert agent.seen_headers["Content-Type"] == "application/json"
    created = client.post("/v1/pools", {"name": "p1"})
    assert created["name"] == "p1"
    assert agent.calls[-1] == ("POST", "/v1/pools", {"name": "p1"})


def test_error_carries_status_and_agent_message(client: CairnClient, agent: FakeAgent) -> None:
    agent.add_pool("p1")
    with pytest.raises(CairnApiError) as e:
        client.post("/v1/pools", {"name": "p1"})
    assert e.value.status == 409
    assert e.value.message == "pool 'p1' exists"
    assert (
        str(e.value)
        == "POST /v1/pools: pool 'p1' exists (HTTP 409, conflict with the current state)"
    )


@pytest.mark.parametrize("status", [400, 404, 409, 503, 500])
def test_every_status(client: CairnClient, agent: FakeAgent, status: int) -> None:
    agent.errors[("GET", "/v1/pools")] = (status, "because %d" % status)
    with pytest.raises(CairnApiError) as e:
        client.get("/v1/pools")
    assert (e.value.status, e.value.message) == (status, "because %d" % status)
    assert cairn_api.STATUS_MEANING[status] in str(e.value)


def test_get_or_none(client: CairnClient, agent: FakeAgent) -> None:
    assert client.volume("nope") is None
    agent.errors[("GET", "/v1/volumes/db")] = (503, "peer down")
    with pytest.raises(CairnApiError):
        client.volume("db")


def test_bad_token_is_refused(agent: FakeAgent, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cairn_api, "open_url", agent.open_url)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    with pytest.raises(CairnApiError) as e:
        CairnClient(API, str(wrong)).get("/v1/pools")
    assert e.value.status == 401 and "bearer token" in e.value.message


def test_token_file_problems(tmp_path) -> None:
    with pytest.raises(CairnApiError, match="cannot read the token file .*missing"):
        read_token(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(CairnApiError, match="is empty"):
        read_token(str(empty))


def test_unreachable(client: CairnClient, agent: FakeAgent) -> None:
    agent.unreachable = True
    with pytest.raises(CairnApiError) as e:
        client.get("/v1/pools")
    assert e.value.status is None
    assert "cannot reach the agent at http://agent.test:6060" in str(e.value)


def test_ca_file_and_timeout_reach_open_url(tmp_path, monkeypatch) -> None:
    seen = {}

    def fake(url, **kw):
        seen.update(kw, url=url)

        class R:
            def read(self):
                return b'{"ok": true}'

        return R()

    token = tmp_path / "t"
    token.write_text(TOKEN)
    monkeypatch.setattr(cairn_api, "open_url", fake)
    CairnClient("https://a:6060", str(token), ca_file="/etc/cairn/ca.crt", timeout=7).get("/x")
    assert seen["url"] == "https://a:6060/x"
    assert seen["ca_path"] == "/etc/cairn/ca.crt" and seen["timeout"] == 7
    assert seen["validate_certs"] is True and seen["method"] == "GET"


def test_not_json(tmp_path, monkeypatch) -> None:
    class R:
        def read(self):
            return b"<html>"

    token = tmp_path / "t"
    token.write_text(TOKEN)
    monkeypatch.setattr(cairn_api, "open_url", lambda url, **kw: R())
    with pytest.raises(CairnApiError, match="not JSON"):
        CairnClient(API, str(token)).get("/v1/pools")


@pytest.mark.parametrize(
    "text, size",
    [("512", 512), (4096, 4096), ("16M", 16 << 20), ("1G", 1 << 30), ("2GiB", 2 << 30),
     ("3gb", 3 << 30), ("1T", 1 << 40), (" 10 K ", 10 << 10)],
)  # fmt: skip
def test_parse_size(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "1X", "-1G", "0", "1.5G", True])
def test_parse_size_refuses(text) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(n) for n in (512, 1 << 20, 3 << 30, 1536, 1 << 40)] == [
        "512", "1M", "3G", "1536", "1T"
    ]  # fmt: skip


def test_placement() -> None:
    assert placement_problem(["a/p1", "b/p1", "c/p1"]) is None
    problem = placement_problem(["a/p1", "a/p2", "b/p1"])
    assert "a/p1, a/p2 are all on node a" in problem and "different node" in problem
    assert placement_problem(["a/p1", "a/p2"], allow_same_node=True) is None
    assert "named twice" in placement_problem(["a/p1", "a/p1"], allow_same_node=True)
    assert "must be NODE/POOL" in placement_problem(["a"])
    assert parse_replica("node-a/p1") == ("node-a", "p1")
    for bad in ("a/b/c", "/p", "a/", "a b/p"):
        with pytest.raises(ValueError):
            parse_replica(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_wait_healthy(client: CairnClient, agent: FakeAgent) -> None:
    agent.add_volume("db")
    rebuilding = agent.status("db")
    rebuilding["state"] = "degraded"
    rebuilding["replicas"][2].update(
        state="rebuilding", rebuild={"done_bytes": 1, "total_bytes": 4}
    )
    agent.statuses["db"] = [rebuilding, rebuilding]
    clock = Clock()
    st = wait_healthy(client, "db", 3, 30, 1.0, clock, clock.sleep)
    assert st["state"] == "healthy" and clock.now == 2.0


def test_wait_healthy_times_out_with_the_state(client: CairnClient, agent: FakeAgent) -> None:
    agent.add_volume("db")
    rebuilding = agent.status("db")
    rebuilding["state"] = "degraded"
    rebuilding["replicas"][2].update(
        state="rebuilding", rebuild={"done_bytes": 1, "total_bytes": 4}
    )
    agent.statuses["db"] = [rebuilding] * 100
    clock = Clock()
    with pytest.raises(CairnApiError) as e:
        wait_healthy(client, "db", 3, 5, 1.0, clock, clock.sleep)
    assert "not healthy with 3 replicas after 5 s" in str(e.value)
    assert "state degraded" in str(e.value) and "rebuilding (rebuild 25%)" in str(e.value)


def test_wait_healthy_counts_replicas(client: CairnClient, agent: FakeAgent) -> None:
    agent.add_volume("db")
    clock = Clock()
    with pytest.raises(CairnApiError, match="with 4 replicas"):
        wait_healthy(client, "db", 4, 3, 1.0, clock, clock.sleep)


def test_wait_healthy_passes_other_errors(client: CairnClient, agent: FakeAgent) -> None:
    clock = Clock()
    with pytest.raises(CairnApiError) as e:
        wait_healthy(client, "nope", 3, 3, 1.0, clock, clock.sleep)
    assert e.value.status == 404
