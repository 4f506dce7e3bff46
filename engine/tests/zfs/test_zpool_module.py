"""The collection's zpool module, the zfs role and playbooks/replace_disk.yml through
``ansible-playbook`` on this host, against real zfs-fuse with sparse files as devices
(tests/integration/playbooks/zpool_*.yml).  Results are read back with ``zpool status``,
``zpool list`` and ``zpool get``, not with the module's own answer."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..integration.ansible_run import ansible_env, collections_tree, recap
from ..zfs_helpers import ZfsFuse, destroy_pool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PLAYBOOKS = REPO / "tests" / "integration" / "playbooks"
BIN = Path(sys.executable).parent
VDEV_BYTES = 96 << 20


def zpool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["zpool", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LC_ALL": "C"},
    )


def imported() -> list[str]:
    return zpool("list", "-H", "-o", "name").stdout.split()


class Play:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.collections = collections_tree(root)
        self.vdev_dir = root / "vdevs"
        self.vdev_dir.mkdir()
        self.vdevs = {}
        for name in "abcdefghi":
            path = self.vdev_dir / name
            with open(path, "wb") as f:
                f.truncate(VDEV_BYTES)
            self.vdevs[name] = str(path)
        self.zp = f"cairnc{os.getpid()}"
        self.zp_role = f"cairnc{os.getpid()}r"
        self.vars: dict[str, Any] = {
            "zp": self.zp,
            "zp_role": self.zp_role,
            "vdev_dir": str(self.vdev_dir),
            "vdevs": self.vdevs,
            "mnt": str(root / "mnt" / self.zp),
            "mnt_dir": str(root / "mnt"),
            "cairn_bin": str(BIN / "cairn"),
        }
        self.runs = 0

    def run(self, playbook: Path, *, ok: bool = True, **extra: Any) -> tuple[dict[str, int], str]:
        """Run ``playbook``; the PLAY RECAP's counts for localhost, and the output."""
        self.runs += 1
        vars_file = self.root / f"vars-{self.runs}.json"
        vars_file.write_text(json.dumps(dict(self.vars, **extra)))
        env = ansible_env(
            self.root,
            ANSIBLE_DEPRECATION_WARNINGS="0",
        )
        argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                "-e", f"@{vars_file}", str(playbook)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)
        out = done.stdout + done.stderr
        assert (done.returncode == 0) == ok, (
            f"{playbook.name} {extra}: exit {done.returncode}\n{out}"
        )
        return recap(done.stdout), out

    def module(self, *phases: str, **extra: Any) -> dict[str, int]:
        recap, _ = self.run(PLAYBOOKS / "zpool_module.yml", phases=list(phases), **extra)
        return recap

    def cleanup(self) -> None:
        names = imported()
        for name in (self.zp, f"{self.zp}x", self.zp_role):
            if name in names:
                destroy_pool(name)


@pytest.fixture
def play(zfs_fuse: ZfsFuse, tmp_path: Path) -> Iterator[Play]:
    if not (BIN / "ansible-playbook").exists() and shutil.which("ansible-playbook") is None:
        pytest.fail("ansible-playbook is not installed (pip install ansible-core)")
    play = Play(tmp_path)
    try:
        yield play
    finally:
        play.cleanup()


def test_zpool_module_and_replace_disk(play: Play) -> None:
    zp, v = play.zp, play.vdevs
    module = PLAYBOOKS / "zpool_module.yml"
    # a mirror of two files; then the same again (no change) and a second mirror group
    assert play.module("create")["changed"] == 1
    text = zpool("status", zp).stdout
    assert "mirror-0" in text and v["a"] in text and v["b"] in text and "mirror-1" not in text
    assert re.search(r"autoreplace\s+on", zpool("get", "autoreplace", zp).stdout)
    assert play.module("create", "grow")["changed"] == 1  # grow only
    text = zpool("status", zp).stdout
    assert "mirror-1" in text and v["c"] in text and v["d"] in text
    assert play.module("create", "grow")["changed"] == 0

    # replace_disk.yml: refused without confirm_replace, then a, replaced by f, resilvered
    replace = REPO / "playbooks" / "replace_disk.yml"
    args = {"host": "localhost", "zpool": zp, "old": v["a"], "new": v["f"], "poll_interval": 1}
    _, out = play.run(replace, ok=False, **args)
    assert "pass -e confirm_replace=true" in out
    assert v["a"] in zpool("status", zp).stdout
    recap, out = play.run(replace, confirm_replace=True, **args)
    assert recap["changed"] == 1 and recap["failed"] == 0
    assert f"pool {zp}: ONLINE, mirror" in out
    text = zpool("status", zp).stdout
    assert v["f"] in text and v["a"] not in text and "resilver completed" in text
    recap, _ = play.run(replace, confirm_replace=True, **args)
    assert recap["changed"] == 0

    # a file that holds data (an MBR) is refused without force, taken with it
    with open(v["e"], "r+b") as dev:
        dev.seek(510)
        dev.write(b"\x55\xaa")
    _, out = play.run(module, ok=False, phases=["data"])
    assert "MBR partition table" in out and "refused: it would lose data" in out
    assert f"{zp}x" not in imported()
    assert play.module("data", "export", force=True)["changed"] == 2
    assert f"{zp}x" in imported() and zp not in imported()

    # import from the files' directory (the export again changes nothing)
    assert play.module("export", "import")["changed"] == 1
    listed = zpool("list", "-H", "-o", "name,health", zp).stdout.split()
    assert listed == [zp, "ONLINE"]
    assert "mirror-1" in zpool("status", zp).stdout and v["f"] in zpool("status", zp).stdout

    # destroy: refused without confirm_destroy (the import again changes nothing), then done
    _, out = play.run(module, ok=False, phases=["import", "destroy"])
    assert "set confirm_destroy: true" in out
    assert zp in imported() and f"{zp}x" in imported()
    assert play.module("destroy", confirm=True)["changed"] == 1  # a loop counts once
    assert zp not in imported() and f"{zp}x" not in imported()
    assert "no such pool" in zpool("status", zp).stderr


def test_zfs_role_creates_the_declared_pool(play: Play) -> None:
    role = PLAYBOOKS / "zpool_role.yml"
    vdevs = [play.vdevs["g"], play.vdevs["h"], play.vdevs["i"]]
    recap, out = play.run(role, role_vdevs=vdevs)
    assert recap["failed"] == 0 and recap["changed"] >= 1, out
    text = zpool("status", play.zp_role).stdout
    assert "raidz1-0" in text and all(d in text for d in vdevs)
    assert re.search(r"autoreplace\s+on", zpool("get", "autoreplace", play.zp_role).stdout)
    mounted = subprocess.run(["zfs", "get", "-H", "-o", "value", "mountpoint", play.zp_role],
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert mounted == f"{play.vars['mnt_dir']}/{play.zp_role}"
    recap, out = play.run(role, role_vdevs=vdevs)
    assert recap["failed"] == 0 and recap["changed"] == 0, out
