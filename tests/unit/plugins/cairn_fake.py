"""A node agent in memory, behind a stand-in for ``open_url``, and a runner for modules.

``FakeAgent`` answers the routes of the agent's API (engine/src/cairn/agent/api.py) the way
the agent does: the same documents, statuses and ``{"error": ...}`` bodies, so the modules
are tested through their real HTTP client (module_utils/cairn_api.py) with no socket."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from typing import Any
from unittest import mock
from urllib.error import HTTPError

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

API = "http://agent.test:6060"
TOKEN = "unit-token-0123456789"
GiB = 1 << 30
MiB = 1 << 20


class Response:
    def __init__(self, doc: Any) -> None:
        self.raw = json.dumps(doc).encode()

    def read(self) -> bytes:
        return self.raw


class ApiAnswer(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class FakeAgent:
    """The desired state of one node plus its peers' pools, and every request made."""

    def __init__(self, node: str = "node-a") -> None:
        self.node = node
        self.pools: dict[str, dict[str, Any]] = {}
        self.peer_pools: dict[str, list[str]] = {"node-b": ["p1"], "node-c": ["p1"]}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, list[dict[str, Any]]] = {}
        self.statuses: dict[str, list[dict[str, Any]]] = {}  # queued status documents
        self.calls: list[tuple[str, str, Any]] = []
        self.errors: dict[tuple[str, str], tuple[int, str]] = {}
        self.unreachable = False
        self.seen_headers: dict[str, str] = {}

    # -- set up ------------------------------------------------------------------------

    def add_pool(self, name: str, **kw: Any) -> dict[str, Any]:
        pool = {"name": name, "node": self.node, "backend": "embedded",
                "path": "/var/lib/cairn/pools/%s" % name, "listen": "10.0.0.1:3232",
                "address": "10.0.0.1:3232", "process": None}  # fmt: skip
        pool.update(kw)
        if pool["backend"] == "zfs":
            pool.pop("path", None)
        self.pools[name] = pool
        return pool

    def add_volume(self, name: str, size: int = GiB, replicas: Any = None, **kw: Any) -> Any:
        replicas = list(replicas or ["node-a/p1", "node-b/p1", "node-c/p1"])
        vol = {"name": name, "node": self.node, "size": size, "block_size": 512,
               "portal": "10.0.0.1:3260", "iqn": "iqn.2026-11.io.cairn:%s" % name,
               "replicas": replicas,
               "addresses": {r: "10.0.0.%d:3232" % (i + 1) for i, r in enumerate(replicas)},
               "consistency_factor": None, "chap": None, "acl": [], "status_port": 34001,
               "process": None}  # fmt: skip
        vol.update(kw)
        self.volumes[name] = vol
        self.snapshots.setdefault(name, [])
        return vol

    def status(self, name: str) -> dict[str, Any]:
        if self.statuses.get(name):
            return self.statuses[name].pop(0)
        vol = self.volumes[name]
        return {"volume": name, "size": vol["size"], "state": "healthy", "writable": True,
                "replicas": [{"address": a, "state": "healthy", "rebuild": None}
                             for a in vol["addresses"].values()]}  # fmt: skip

    def requests(self, method: str | None = None) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if method is None or c[0] == method]

    def changes(self) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] != "GET"]

    # -- the stand-in for open_url ------------------------------------------------------

    def open_url(self, url: str, data: Any = None, headers: Any = None, method: str = "GET",
                 **kw: Any) -> Response:  # fmt: skip
        assert url.startswith(API), url
        path = url[len(API) :]
        body = json.loads(data) if data else None
        self.calls.append((method, path, body))
        self.seen_headers = dict(headers or {})
        if self.unreachable:
            from urllib.error import URLError

            raise URLError(ConnectionRefusedError(111, "Connection refused"))
        if (headers or {}).get("Authorization") != "Bearer %s" % TOKEN:
            raise self._http_error(url, 401, "a valid bearer token is required")
        if (method, path) in self.errors:
            status, message = self.errors[(method, path)]
            raise self._http_error(url, status, message)
        try:
            return Response(self.route(method, path, body or {}))
        except ApiAnswer as e:
            raise self._http_error(url, e.status, e.message) from None

    @staticmethod
    def _http_error(url: str, status: int, message: str) -> HTTPError:
        fp = io.BytesIO(json.dumps({"error": message}).encode())
        return HTTPError(url, status, "error", {}, fp)  # type: ignore[arg-type]

    def route(self, method: str, path: str, body: dict[str, Any]) -> Any:
        m = re.fullmatch(r"/v1/volumes/([^/]+)(/.*)?", path)
        if path == "/v1/health" and method == "GET":
            return {"ok": True, "node": self.node, "version": 1}
        if path == "/v1/pools":
            if method == "GET":
                return [copy.deepcopy(self.pools[n]) for n in sorted(self.pools)]
            return self.create_pool(body)
        if path.startswith("/v1/pools/") and method == "DELETE":
            return self.delete_pool(path.split("/")[3], body)
        if path == "/v1/volumes":
            if method == "GET":
                return [copy.deepcopy(self.volumes[n]) for n in sorted(self.volumes)]
            return self.create_volume(body)
        if m:
            name, rest = m.group(1), m.group(2) or ""
            if name not in self.volumes:
                raise ApiAnswer(404, "no volume %r on node %s" % (name, self.node))
            return self.volume_route(method, name, rest, body)
        raise ApiAnswer(404, "no such endpoint: %s %s" % (method, path))

    def create_pool(self, body: dict[str, Any]) -> Any:
        name = body["name"]
        if name in self.pools:
            raise ApiAnswer(409, "pool %r exists" % name)
        kw = {k: v for k, v in body.items() if k != "name"}
        return copy.deepcopy(self.add_pool(name, **kw))

    def delete_pool(self, name: str, body: dict[str, Any]) -> Any:
        if name not in self.pools:
            raise ApiAnswer(404, "no pool %r on node %s" % (name, self.node))
        if body.get("confirm") != name:
            raise ApiAnswer(400, 'this destroys the pool: send {"confirm": "%s"}' % name)
        users = [v for v, d in self.volumes.items() if "%s/%s" % (self.node, name) in d["replicas"]]
        if users and not body.get("force"):
            raise ApiAnswer(409, "pool %r holds replicas of %s: move them first, or send "
                            '"force": true' % (name, ", ".join(users)))  # fmt: skip
        del self.pools[name]
        return {"deleted": name, "volumes_affected": users}

    def resolve(self, replica: str) -> None:
        node, pool = replica.split("/")
        known = list(self.pools) if node == self.node else self.peer_pools.get(node)
        if known is None:
            raise ApiAnswer(404, "unknown node %r (replica %s): not in peers" % (node, replica))
        if pool not in known:
            raise ApiAnswer(404, "no pool %r on node %s (replica %s)" % (pool, node, replica))

    def create_volume(self, body: dict[str, Any]) -> Any:
        name = body["name"]
        if name in self.volumes:
            raise ApiAnswer(409, "volume %r exists" % name)
        nodes = [r.split("/")[0] for r in body["replicas"]]
        if len(set(nodes)) != len(nodes) and not body.get("allow_same_node"):
            raise ApiAnswer(400, "replicas: two replicas on one node")
        for r in body["replicas"]:
            self.resolve(r)
        kw = {k: v for k, v in body.items() if k not in ("name", "size", "replicas", "chap")}
        if body.get("chap"):
            kw["chap"] = {"username": body["chap"]["username"]}
        return copy.deepcopy(self.add_volume(name, body["size"], body["replicas"], **kw))

    def volume_route(self, method: str, name: str, rest: str, body: dict[str, Any]) -> Any:
        vol = self.volumes[name]
        if rest == "" and method == "GET":
            return dict(copy.deepcopy(vol), status=self.status(name), status_error=None)
        if rest == "" and method == "PATCH":
            if body["size"] < vol["size"]:
                raise ApiAnswer(400, "size: %d is below %d: a volume never shrinks"
                                % (body["size"], vol["size"]))  # fmt: skip
            vol["size"] = body["size"]
            return copy.deepcopy(vol)
        if rest == "" and method == "DELETE":
            if body.get("confirm") != name:
                raise ApiAnswer(400, 'this destroys the volume: send {"confirm": "%s"}' % name)
            clones = sorted(c for c, v in self.volumes.items()
                            if (v.get("origin") or {}).get("volume") == name)  # fmt: skip
            if clones and not body.get("force"):
                raise ApiAnswer(409, "volume %r has clones %s that depend on its snapshots"
                                % (name, ", ".join(clones)))  # fmt: skip
            del self.volumes[name]
            return {"deleted": name, "replicas": vol["replicas"], "left": {}}
        if rest == "/status":
            return self.status(name)
        if rest == "/replicas" and method == "POST":
            replica = body["pool"]
            if replica in vol["replicas"]:
                raise ApiAnswer(409, "%s is already a replica of %s" % (replica, name))
            self.resolve(replica)
            vol["replicas"].append(replica)
            vol["addresses"][replica] = "10.0.0.9:3232"
            return copy.deepcopy(vol)
        if rest.startswith("/replicas/") and method == "DELETE":
            replica = rest[len("/replicas/") :]
            if replica not in vol["replicas"]:
                raise ApiAnswer(404, "%s is not a replica of %s" % (replica, name))
            vol["replicas"].remove(replica)
            del vol["addresses"][replica]
            return dict(copy.deepcopy(vol), left={})
        if rest == "/snapshots":
            if method == "GET":
                return {"snapshots": copy.deepcopy(self.snapshots[name])}
            if any(s["name"] == body["name"] for s in self.snapshots[name]):
                raise ApiAnswer(
                    409, "target of volume %s: snapshot %s exists" % (name, body["name"])
                )
            snap = {"name": body["name"], "created": "2026-11-02T10:00:00Z",
                    "replicas": list(vol["addresses"].values())}  # fmt: skip
            self.snapshots[name].append(snap)
            return copy.deepcopy(snap)
        if rest.startswith("/snapshots/") and method == "DELETE":
            snap = rest[len("/snapshots/") :]
            if body.get("confirm") != snap:
                raise ApiAnswer(400, 'this destroys the snapshot: send {"confirm": "%s"}' % snap)
            self.snapshots[name] = [s for s in self.snapshots[name] if s["name"] != snap]
            return {"deleted": snap}
        if rest == "/rollback" and method == "POST":
            if body.get("confirm") != name:
                raise ApiAnswer(400, 'send {"confirm": "%s"}' % name)
            return {"snapshot": body["snapshot"], "seq": 7, "replicas": [], "degraded": []}
        if rest == "/clones" and method == "POST":
            if body["name"] in self.volumes:
                raise ApiAnswer(409, "volume %r exists" % body["name"])
            if not any(s["name"] == body["snapshot"] for s in self.snapshots[name]):
                raise ApiAnswer(
                    404, "target of volume %s: no snapshot %s" % (name, body["snapshot"])
                )
            clone = self.add_volume(
                body["name"], vol["size"], list(vol["replicas"]),
                portal=body.get("portal", "10.0.0.1:3261"),
                iqn=body.get("iqn", "iqn.2026-11.io.cairn:%s" % body["name"]),
                origin={"volume": name, "snapshot": body["snapshot"]},
            )  # fmt: skip
            return copy.deepcopy(clone)
        raise ApiAnswer(404, "no such endpoint: %s /v1/volumes/%s%s" % (method, name, rest))


# -- running a module ------------------------------------------------------------------


class ModuleExit(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result)
        self.result = result


class ModuleFail(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result.get("msg"))
        self.result = result


def _exit_json(self: Any, **kwargs: Any) -> None:
    kwargs.setdefault("changed", False)
    raise ModuleExit(kwargs)


def _fail_json(self: Any, msg: str, **kwargs: Any) -> None:
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise ModuleFail(kwargs)


class Runner:
    """Runs a module's ``main`` against a ``FakeAgent``."""

    def __init__(self, agent: FakeAgent, token_file: str) -> None:
        self.agent = agent
        self.token_file = token_file

    def args(self, args: dict[str, Any], check: bool, diff: bool) -> dict[str, Any]:
        full = {"api_url": API, "token_file": self.token_file}
        full.update(args)
        full["_ansible_check_mode"] = check
        full["_ansible_diff"] = diff
        return full

    def run(self, main: Any, args: dict[str, Any], check: bool = False, diff: bool = False
            ) -> dict[str, Any]:  # fmt: skip
        """The module's result; it must succeed."""
        result = self._run(main, args, check, diff)
        assert not result.get("failed"), result
        return result

    def fail(self, main: Any, args: dict[str, Any], check: bool = False, diff: bool = False
             ) -> dict[str, Any]:  # fmt: skip
        """The module's result; it must fail."""
        result = self._run(main, args, check, diff)
        assert result.get("failed"), result
        return result

    def _run(self, main: Any, args: dict[str, Any], check: bool, diff: bool) -> dict[str, Any]:
        warnings: list[str] = []

        def warn(module: Any, text: str, **kw: Any) -> None:
            warnings.append(text)

        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(basic.AnsibleModule, "warn", warn))
            stack.enter_context(patch_module_args(self.args(args, check, diff)))
            stack.enter_context(mock.patch.object(basic.AnsibleModule, "exit_json", _exit_json))
            stack.enter_context(mock.patch.object(basic.AnsibleModule, "fail_json", _fail_json))
            stack.enter_context(mock.patch(
                "ansible_collections.cairn.storage.plugins.module_utils.cairn_api.open_url",
                self.agent.open_url,
            ))  # fmt: skip
            try:
                main()
            except (ModuleExit, ModuleFail) as e:
                if warnings:
                    e.result["warnings"] = warnings
                return e.result
        raise AssertionError("the module returned without exit_json or fail_json")
