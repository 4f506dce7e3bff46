"""The zpool module with ``run_command`` mocked: a fake ``cairn zpool`` that answers the
module's commands as the engine's CLI does (the real one runs in
engine/tests/zfs/test_zpool_module.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.cairn.storage.plugins.modules import zpool
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import (
    ModuleExit,
    ModuleFail,
    _exit_json,
    _fail_json,
)

A, B, C, D = "/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sde"


def pool_doc(groups: list[list[str]], layout: str = "mirror", **props: str) -> dict[str, Any]:
    return {
        "name": "tank",
        "imported": True,
        "health": "ONLINE",
        "layout": layout,
        "groups": [{"layout": layout, "devices": g} for g in groups],
        "resilver": {"in_progress": False, "percent": None, "remaining": None, "replacing": []},
        "properties": dict({"autoreplace": "off", "failmode": "wait"}, **props),
    }


def view(doc: dict[str, Any] | None, *keys: str) -> dict[str, Any]:
    if not doc:
        return {"imported": False}
    props = doc["properties"]
    return {
        "imported": True,
        "layout": doc["layout"],
        "groups": doc["groups"],
        "properties": {k: props.get(k) for k in keys},
    }


class FakeCairn:
    """Answers ``cairn zpool ACTION tank ... --json [--check]`` from a pool document."""

    def __init__(self, pool: dict[str, Any] | None = None) -> None:
        self.pool = pool
        self.calls: list[list[str]] = []
        #: action -> (exit code, error) to fail with
        self.failures: dict[str, tuple[int, str]] = {}

    def actions(self) -> list[str]:
        return [c[2] for c in self.calls]

    def changing(self) -> list[list[str]]:
        """The calls that would change the pool (not status, not --check)."""
        return [c for c in self.calls if c[2] != "status" and "--check" not in c]

    def run_command(self, module: Any, argv: list[str], **kw: Any) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        assert argv[1] == "zpool" and argv[3] == "tank" and argv[-1] in ("--json", "--check")
        action, check = argv[2], "--check" in argv
        if action in self.failures:
            code, error = self.failures[action]
            return code, json.dumps({"error": error, "kind": "X", "exit_code": code}), error
        if action == "status":
            if self.pool is None:
                return 3, json.dumps({"name": "tank", "imported": False}), ""
            return 0, json.dumps(self.pool), ""
        before = self.pool
        after, changed = self.apply(action, argv)
        if not check:
            self.pool = after
        keys = [p.split("=", 1)[0] for p in _values(argv, "--property")]
        doc = {
            "changed": changed,
            "check": check,
            "message": "%s done" % action,
            "commands": [["zpool", action, "tank"]] if changed else [],
            "before": view(before, *keys),
            "after": view(after, *keys),
            "pool": after,
        }
        return 0, json.dumps(doc), ""

    def apply(self, action: str, argv: list[str]) -> tuple[dict[str, Any] | None, bool]:
        pool = json.loads(json.dumps(self.pool))
        if action in ("create", "add"):
            layout = argv[argv.index("--layout") + 1]
            groups = [
                g
                for g in _groups(argv)
                if pool is None or {"layout": layout, "devices": g} not in pool["groups"]
            ]
            if pool is None:
                props = dict(p.split("=", 1) for p in _values(argv, "--property"))
                return pool_doc(groups, layout, **props), True
            pool["groups"] += [{"layout": layout, "devices": g} for g in groups]
            return pool, bool(groups)
        if action == "set":
            props = dict(p.split("=", 1) for p in _values(argv, "--property"))
            changed = any(pool["properties"].get(k) != v for k, v in props.items())
            pool["properties"].update(props)
            return pool, changed
        if action == "replace":
            old, new = argv[4], argv[5]
            changed = any(old in g["devices"] for g in pool["groups"])
            for g in pool["groups"]:
                g["devices"] = [new if d == old else d for d in g["devices"]]
            return pool, changed
        if action in ("export", "destroy"):
            return None, pool is not None
        if action == "import":
            return pool or pool_doc([[A, B]]), pool is None
        raise AssertionError(action)


def _values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == option]


def _groups(argv: list[str]) -> list[list[str]]:
    groups: list[list[str]] = []
    current: list[str] | None = None
    for word in argv[5:]:
        if word in ("--group", "--vdev"):
            current = []
            groups.append(current)
        elif word.startswith("--"):
            current = None
        elif current is not None and word not in ("mirror", "stripe", "raidz1", "raidz2"):
            current.append(word)
    if "stripe" in argv:
        return [[d] for g in groups for d in g]
    return groups


@pytest.fixture
def cairn_bin(tmp_path: Path) -> str:
    path = tmp_path / "cairn"
    path.write_text("#!/bin/sh\nexit 99\n")
    path.chmod(0o755)
    return str(path)


def run(
    fake: FakeCairn, cairn_bin: str, args: dict[str, Any], check: bool = False, diff: bool = True
) -> dict[str, Any]:
    full = dict(name="tank", cairn_bin=cairn_bin, **args)
    full["_ansible_check_mode"] = check
    full["_ansible_diff"] = diff
    with contextlib.ExitStack() as stack:
        stack.enter_context(patch_module_args(full))
        stack.enter_context(mock.patch.object(basic.AnsibleModule, "exit_json", _exit_json))
        stack.enter_context(mock.patch.object(basic.AnsibleModule, "fail_json", _fail_json))

        def run_command(module: Any, argv: list[str], **kw: Any) -> tuple[int, str, str]:
            return fake.run_command(module, argv, **kw)

        stack.enter_context(mock.patch.object(basic.AnsibleModule, "run_command", run_command))
        try:
            zpool.main()
        except (ModuleExit, ModuleFail) as e:
            return e.result
    raise AssertionError("the module returned without exit_json or fail_json")


MIRROR = {"layout": "mirror", "vdevs": [A, B], "properties": {"autoreplace": True}}


def test_create_then_nothing_to_do(cairn_bin: str) -> None:
    fake = FakeCairn()
    r = run(fake, cairn_bin, dict(MIRROR, mountpoint="/srv/tank"))
    assert r["changed"] and not r.get("failed"), r
    create = fake.calls[1]
    assert create == [
        cairn_bin,
        "zpool",
        "create",
        "tank",
        "--layout",
        "mirror",
        "--group",
        A,
        B,
        "--property",
        "autoreplace=on",
        "--mountpoint",
        "/srv/tank",
        "--json",
    ]
    assert fake.actions() == ["status", "create"]
    assert r["pool"]["health"] == "ONLINE" and r["pool"]["properties"]["autoreplace"] == "on"
    assert r["diff"]["before"] == {"imported": False}
    assert r["diff"]["after"] == {
        "imported": True,
        "layout": "mirror",
        "groups": [{"layout": "mirror", "devices": [A, B]}],
        "properties": {"autoreplace": "on"},
    }
    assert r["messages"] == ["create done"] and r["commands"] == [["zpool", "create", "tank"]]
    fake.calls.clear()
    again = run(fake, cairn_bin, MIRROR)
    assert not again["changed"] and "diff" not in again
    assert fake.actions() == ["status", "add", "set"]
    assert fake.changing() == [c for c in fake.calls if c[2] != "status"]  # asked, no change
    assert again["pool"]["name"] == "tank"


def test_check_mode_changes_nothing_and_shows_the_diff(cairn_bin: str) -> None:
    fake = FakeCairn()
    r = run(fake, cairn_bin, MIRROR, check=True)
    assert r["changed"] and fake.pool is None
    assert all("--check" in c for c in fake.calls if c[2] != "status")
    assert r["diff"]["after"]["groups"] == [{"layout": "mirror", "devices": [A, B]}]
    assert r["pool"] == {}
    fake.pool = pool_doc([[A, B]])
    r = run(
        fake,
        cairn_bin,
        {"layout": "mirror", "vdevs": [A, B], "properties": {"failmode": "continue"}},
        check=True,
    )
    assert r["changed"] and fake.pool["properties"]["failmode"] == "wait"
    assert r["diff"]["before"]["properties"] == {"failmode": "wait"}
    assert r["diff"]["after"]["properties"] == {"failmode": "continue"}
    assert fake.changing() == []


def test_groups_are_added(cairn_bin: str) -> None:
    fake = FakeCairn(pool_doc([[A, B]]))
    groups = [{"layout": "mirror", "vdevs": [A, B]}, {"layout": "mirror", "vdevs": [C, D]}]
    r = run(fake, cairn_bin, {"groups": groups})
    assert r["changed"]
    assert fake.calls[1][2:] == [
        "add",
        "tank",
        "--layout",
        "mirror",
        "--group",
        A,
        B,
        "--group",
        C,
        D,
        "--json",
    ]
    assert [g["devices"] for g in r["diff"]["after"]["groups"]] == [[A, B], [C, D]]
    assert [g["devices"] for g in r["diff"]["before"]["groups"]] == [[A, B]]


def test_stripe_devices_are_one_flat_list(cairn_bin: str) -> None:
    fake = FakeCairn()
    r = run(fake, cairn_bin, {"layout": "stripe", "vdevs": [A, B]})
    assert r["changed"] and fake.calls[1][4:8] == ["--layout", "stripe", "--vdev", A]


def test_replace_with_wait(cairn_bin: str) -> None:
    fake = FakeCairn(pool_doc([[A, B]]))
    r = run(
        fake,
        cairn_bin,
        {"replace": {"old": A, "new": C}, "wait": True, "wait_timeout": 60, "force": True},
    )
    assert r["changed"]
    assert fake.calls[1][2:] == [
        "replace",
        "tank",
        A,
        C,
        "--force",
        "--wait",
        "--timeout",
        "60",
        "--json",
    ]
    assert r["diff"]["after"]["groups"][0]["devices"] == [C, B]
    assert not run(fake, cairn_bin, {"replace": {"old": A, "new": C}})["changed"]


def test_absent_needs_confirm_destroy(cairn_bin: str) -> None:
    fake = FakeCairn(pool_doc([[A, B]]))
    r = run(fake, cairn_bin, {"state": "absent"})
    assert r["failed"] and "confirm_destroy: true" in r["msg"]
    assert fake.actions() == ["status"] and fake.pool is not None
    r = run(fake, cairn_bin, {"state": "absent", "confirm_destroy": True}, check=True)
    assert r["changed"] and fake.pool is not None
    r = run(fake, cairn_bin, {"state": "absent", "confirm_destroy": True, "force": True})
    assert r["changed"] and fake.pool is None and r["pool"] == {}
    assert fake.calls[-1][2:] == ["destroy", "tank", "--confirm", "tank", "--force", "--json"]
    assert r["diff"]["after"] == {"imported": False}
    fake.calls.clear()
    r = run(fake, cairn_bin, {"state": "absent"})  # nothing to destroy: no flag needed
    assert not r["changed"] and fake.actions() == ["status"]


def test_export_and_import(cairn_bin: str) -> None:
    fake = FakeCairn(pool_doc([[A, B]]))
    r = run(fake, cairn_bin, {"state": "exported"})
    assert r["changed"] and fake.pool is None
    r = run(
        fake,
        cairn_bin,
        {
            "state": "imported",
            "search_dirs": ["/srv/a", "/srv/b"],
            "properties": {"autoreplace": "on"},
        },
    )
    assert r["changed"] and fake.pool["properties"]["autoreplace"] == "on"
    imp = [c for c in fake.calls if c[2] == "import"][0]
    assert imp[4:] == ["--dir", "/srv/a", "--dir", "/srv/b", "--json"]
    assert not run(fake, cairn_bin, {"state": "imported"})["changed"]


def test_engine_refusals_become_failures(cairn_bin: str) -> None:
    fake = FakeCairn()
    fake.failures["create"] = (4, "/dev/sdb holds an ext4 filesystem (force=True overwrites it)")
    r = run(fake, cairn_bin, MIRROR)
    assert r["failed"] and "/dev/sdb holds an ext4 filesystem" in r["msg"]
    assert "exit 4, refused: it would lose data" in r["msg"] and r["rc"] == 4
    fake.failures["create"] = (2, "pool 'tank' exists and does not match the request")
    assert "bad input" in run(fake, cairn_bin, MIRROR)["msg"]
    fake.pool = pool_doc([[C, B]])
    fake.failures["add"] = (4, "/dev/sdc: already in pool 'tank' but not as this group")
    r = run(fake, cairn_bin, MIRROR)
    assert r["failed"] and "Was a disk replaced? Declare the pool's devices" in r["msg"]
    fake.failures["status"] = (1, "zpool failed; stderr: connect: No such file or directory")
    r = run(fake, cairn_bin, MIRROR)
    assert r["failed"] and "connect" in r["msg"] and "zpool failed" in r["msg"]


def test_garbage_output_is_a_failure(cairn_bin: str) -> None:
    fake = FakeCairn()
    with mock.patch.object(fake, "run_command", lambda *a, **k: (0, "Traceback", "boom")):
        r = run(fake, cairn_bin, MIRROR)
    assert r["failed"] and "boom" in r["msg"]


def test_argument_validation(cairn_bin: str, tmp_path: Path) -> None:
    fake = FakeCairn()
    r = run(fake, cairn_bin, {"vdevs": [A, B]})
    assert r["failed"] and "vdevs needs layout" in r["msg"]
    r = run(
        fake,
        cairn_bin,
        {
            "groups": [
                {"layout": "mirror", "vdevs": [A, B]},
                {"layout": "raidz1", "vdevs": [C, D, "/dev/sdf"]},
            ]
        },
    )
    assert r["failed"] and "one layout" in r["msg"]
    r = run(
        fake,
        cairn_bin,
        {"layout": "mirror", "vdevs": [A], "groups": [{"layout": "mirror", "vdevs": [A, B]}]},
    )
    assert r["failed"] and "mutually exclusive" in r["msg"]
    r = run(fake, cairn_bin, {"state": "absent", "vdevs": [A, B], "layout": "mirror"})
    assert r["failed"] and "vdevs is for state present" in r["msg"]
    r = run(fake, cairn_bin, {"layout": "raid5", "vdevs": [A]})
    assert r["failed"] and "layout" in r["msg"]
    r = run(fake, str(tmp_path / "missing"), MIRROR)
    assert r["failed"] and "is not an executable" in r["msg"]
    r = run(fake, cairn_bin, {})
    assert r["failed"] and "not imported; to create it give layout and vdevs" in r["msg"]
    assert fake.changing() == []
