"""``cairn zpool`` as a process against real zfs-fuse, with sparse files as devices: each
action, ``--check`` changing nothing, a repeated request changing nothing, the refusals and
their exit codes; the results read back with ``zpool status``/``zpool get``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ZfsLab

pytestmark = pytest.mark.integration

CAIRN = str(Path(sys.executable).parent / "cairn")


def cairn(*argv: str, code: int = 0) -> dict[str, Any]:
    done = subprocess.run(
        [CAIRN, "zpool", *argv, "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == code, f"{argv}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def zpool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["zpool", *argv], capture_output=True, text=True, timeout=60)


def test_each_action_against_zfs_fuse(lab: ZfsLab) -> None:
    a, b, c, d, e, f = lab.files(6)
    name = lab.name()
    mnt = lab.mountpoint(name)
    create = ("create", name, "--layout", "mirror", "--vdev", a, b, "--mountpoint", mnt)

    # --check: the same answer as the real run, and nothing made
    doc = cairn(*create, "--check", "--property", "autoreplace=on")
    assert doc["changed"] and doc["check"] and doc["before"] == {"imported": False}
    assert doc["after"]["groups"] == [{"layout": "mirror", "devices": [a, b]}]
    assert "no such pool" in zpool("status", name).stderr

    doc = cairn(*create, "--property", "autoreplace=on")
    assert doc["changed"] and doc["commands"][0][:2] == ["zpool", "create"]
    assert doc["pool"]["health"] == "ONLINE" and doc["after"]["properties"] == {"autoreplace": "on"}
    text = lab.status_text(name)
    assert "mirror-0" in text and a in text and b in text
    assert " on " in zpool("get", "autoreplace", name).stdout
    before = lab.status_text(name)
    doc = cairn(*create, "--property", "autoreplace=on")
    assert not doc["changed"] and doc["commands"] == [] and doc["before"] == doc["after"]
    assert lab.status_text(name) == before

    # a property that differs is set on the existing pool; then nothing to do
    doc = cairn("set", name, "--property", "autoreplace=off", "--check")
    assert doc["changed"] and " on " in zpool("get", "autoreplace", name).stdout
    doc = cairn("set", name, "--property", "autoreplace=off")
    assert doc["changed"] and doc["before"]["properties"] == {"autoreplace": "on"}
    assert " off " in zpool("get", "autoreplace", name).stdout
    assert not cairn("set", name, "--property", "autoreplace=off")["changed"]

    # add a mirror group (check first), once
    grow = ("add", name, "--layout", "mirror", "--group", c, d)
    assert cairn(*grow, "--check")["changed"]
    assert "mirror-1" not in lab.status_text(name)
    doc = cairn(*grow)
    assert doc["changed"] and len(doc["pool"]["groups"]) == 2
    assert "mirror-1" in lab.status_text(name) and c in lab.status_text(name)
    assert not cairn(*grow)["changed"]
    # another layout, or a device of the pool in a new group: bad input / refused
    assert cairn("add", name, "--layout", "stripe", "--vdev", e, code=2)["kind"] == "LayoutError"
    refused = cairn("add", name, "--layout", "mirror", "--vdev", a, e, code=4)
    assert "already in pool" in refused["error"]

    # replace: a device that holds something is refused unless forced
    with open(e, "r+b") as dev:
        dev.seek(510)
        dev.write(b"\x55\xaa")
    refused = cairn("replace", name, a, e, code=4)
    assert "MBR" in refused["error"] and "force" in refused["error"]
    assert a in lab.status_text(name)
    doc = cairn("replace", name, a, e, "--force", "--wait")
    assert doc["changed"] and not doc["pool"]["resilver"]["in_progress"]
    text = lab.status_text(name)
    assert e in text and a not in text
    assert doc["after"]["groups"][0]["devices"] == [e, b]
    assert not cairn("replace", name, a, e)["changed"]  # done already
    assert cairn("replace", name, f, a, code=3)["kind"] == "DeviceNotFound"

    # export, import from the files' directory
    assert cairn("export", name)["changed"]
    assert "no such pool" in zpool("status", name).stderr
    assert cairn("status", name, code=3) == {"name": name, "imported": False}
    assert not cairn("export", name)["changed"]
    assert "nor found in /dev" in cairn("import", name, code=3)["error"]  # not in /dev
    vdevs = str(Path(a).parent)
    assert cairn("import", name, "--dir", vdevs, "--check")["changed"]
    assert "no such pool" in zpool("status", name).stderr
    doc = cairn("import", name, "--dir", vdevs)
    assert doc["changed"] and doc["pool"]["health"] == "ONLINE"
    assert len(doc["pool"]["groups"]) == 2
    assert not cairn("import", name, "--dir", vdevs)["changed"]

    # destroy: --confirm NAME, and --force while datasets live in it
    lab.zfs("create", "-o", "canmount=off", f"{name}/replica")
    assert "--confirm" in cairn("destroy", name, code=4)["error"]
    assert cairn("destroy", name, "--confirm", "typo", code=4)["kind"] == "Refusal"
    refused = cairn("destroy", name, "--confirm", name, code=4)
    assert refused["kind"] == "PoolInUse" and f"{name}/replica" in refused["error"]
    doc = cairn("destroy", name, "--confirm", name, "--force", "--check")
    assert doc["changed"] and zpool("status", name).returncode == 0
    doc = cairn("destroy", name, "--confirm", name, "--force")
    assert doc["changed"] and doc["after"] == {"imported": False}
    assert "no such pool" in zpool("status", name).stderr
    assert not cairn("destroy", name, "--confirm", name)["changed"]


def test_create_refuses_data_and_other_layouts(lab: ZfsLab) -> None:
    a, b, c = lab.files(3)
    name = lab.name()
    other = lab.name()
    cairn("create", other, "--layout", "stripe", "--vdev", c, "--mountpoint", lab.mountpoint(other))
    refused = cairn("create", name, "--layout", "mirror", "--vdev", a, c, code=4)
    assert f"in use by imported pool '{other}'" in refused["error"]
    cairn("export", other)
    refused = cairn("create", name, "--layout", "mirror", "--vdev", a, c, code=4)
    assert f"pool '{other}' (state: exported)" in refused["error"]
    bad = cairn("create", name, "--layout", "raidz1", "--vdev", a, b, code=2)
    assert "at least 3 devices" in bad["error"]
    assert "no such pool" in zpool("status", name).stderr
    doc = cairn(
        "create", name, "--layout", "raidz1", "--group", a, b, c, "--force",
        "--mountpoint", lab.mountpoint(name),
    )  # fmt: skip
    assert doc["changed"] and doc["pool"]["layout"] == "raidz1"
    assert "raidz1-0" in lab.status_text(name)
