"""The README's main command, ``ansible-playbook -i inventories/local site.yml``, on this
machine: the engine installed into a venv from a wheelhouse built from engine/, the node
agent in daemon mode, four embedded pools, ``vol1`` with 3 replicas on three of them, and
the closing report with its health and iSCSI URL. A second run changes nothing. Then the
day-2 playbooks against it (snapshot, clone, grow, move a replica), each checked through
the engine's CLI and with a real iSCSI client (qemu-io, iscsi-readcapacity16), and a last
run of site.yml still changes nothing.

The inventory is the repository's; only where things go is moved by extra variables: every
path into the test's directory, the agent, pools and portals onto 127.0.0.140-144."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .agent_node import pid_alive
from .ansible_run import ansible_env, ansible_playbook, collections_tree, recap
from .conftest import find_cairn, tail
from .test_agent import qemu_io

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
ADDRESS = "127.0.0.140"
PORTAL = f"{ADDRESS}:3260"
CLONE_PORTAL = f"{ADDRESS}:3261"
URL = f"iscsi://{PORTAL}/iqn.2026-11.io.cairn:vol1/0"
MiB = 1 << 20


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.config_dir = root / "etc"
        self.token_file = self.config_dir / "token"
        self.api_url = f"http://{ADDRESS}:6060"
        self.collections = collections_tree(root)
        base = getattr(sys, "_base_executable", None) or sys.executable
        self.vars: dict[str, Any] = {
            "cairn_address": ADDRESS,
            "cairn_metrics_listen": f"{ADDRESS}:9500",
            "cairn_config_dir": str(self.config_dir),
            "cairn_state_dir": str(self.state_dir),
            "cairn_venv": str(root / "venv"),
            "cairn_python": base if Path(base).exists() else sys.executable,
            "cairn_engine_service": "daemon",
            "cairn_engine_wheelhouse_cache": str(root / "controller-cache"),
            "cairn_engine_host_wheelhouse": str(root / "wheels"),
            "cairn_pools": [
                {"name": f"pool{i}", "listen": f"127.0.0.{140 + i}:3232"} for i in range(1, 5)
            ],
            "cairn_volumes": [
                {"name": "vol1", "size": "64M", "replicas": 3, "target_host": "local",
                 "portal": PORTAL, "allow_same_node": True},
            ],
        }  # fmt: skip
        self.runs = 0

    def play(self, playbook: str, *extra: str, expect: int = 0) -> tuple[dict[str, int], str]:
        """Run ``playbook`` with the local inventory; the PLAY RECAP's counts for ``local``."""
        self.runs += 1
        vars_file = self.root / f"vars-{self.runs}.json"
        vars_file.write_text(json.dumps(self.vars))
        env = ansible_env(self.root)
        argv = [ansible_playbook(), "-i", str(REPO / "inventories" / "local"),
                "-e", f"@{vars_file}", *extra, str(REPO / playbook)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=600)  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == expect, (
            f"{playbook}: exit {done.returncode}\n{out}\n{self.report()}"
        )
        return recap(done.stdout, "local", "localhost"), out

    def cli(self, *argv: str) -> Any:
        done = subprocess.run([find_cairn(), *argv, "--json", "--api", self.api_url,
                               "--token-file", str(self.token_file)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return json.loads(done.stdout)

    def report(self) -> str:
        logs = self.state_dir / "logs"
        parts = [f"--- {f.name} ---\n{tail(f, 40)}" for f in sorted(logs.glob("*.log"))]
        return "\n".join(parts)

    def stop(self) -> None:
        """The agent the playbook started (SIGTERM stops its children too)."""
        pid_file = self.state_dir / "agent.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline")
        if not cmdline.exists() or str(self.config_dir) not in cmdline.read_text():
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def readcapacity16(url: str) -> int:
    done = subprocess.run(["iscsi-readcapacity16", "-s", url], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def healthy_replicas(doc: dict[str, Any]) -> list[str]:
    status = doc.get("status") or {}
    assert status.get("state") == "healthy", doc
    return sorted(r["name"] if "name" in r else r["address"] for r in status["replicas"]
                  if r["state"] == "healthy")  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("site"))
    try:
        yield s
    finally:
        s.stop()


def test_site_yml_then_day2_playbooks(site: Site) -> None:
    # the main command: a healthy 3-replica volume, its health and URL printed at the end
    counts, out = site.play("site.yml")
    assert counts["changed"] > 0 and counts["failed"] == 0, out
    assert re.search(r"vol1: healthy,\s+3 of 3 replicas healthy,.*" + re.escape(URL), out), out
    vol = site.cli("volume", "show", "vol1")
    assert sorted(vol["replicas"]) == ["local/pool1", "local/pool2", "local/pool3"]
    assert vol["size"] == 64 * MiB and len(healthy_replicas(vol)) == 3
    qemu_io("write -P 71 0 1M", url=URL)

    # a second run changes nothing
    counts, out = site.play("site.yml")
    assert counts["changed"] == 0 and counts["failed"] == 0, out

    # snapshot
    counts, out = site.play("playbooks/snapshot.yml", "-e", "volume=vol1", "-e", "snapshot=s1")
    assert counts["changed"] == 1, out
    assert [s["name"] for s in site.cli("snapshot", "list", "vol1")["snapshots"]] == ["s1"]
    qemu_io("write -P 72 0 1M", url=URL)  # after the snapshot: not in the clone

    # clone of the snapshot, on its own portal: the data of before the snapshot
    counts, out = site.play("playbooks/clone.yml", "-e", "clone=c1", "-e", "volume=vol1",
                            "-e", "snapshot=s1", "-e", f"portal={CLONE_PORTAL}")  # fmt: skip
    assert counts["changed"] == 1, out
    clone = site.cli("volume", "show", "c1")
    assert clone["origin"] == {"volume": "vol1", "snapshot": "s1"}
    qemu_io("read -P 71 0 1M", url=f"iscsi://{CLONE_PORTAL}/{clone['iqn']}/0")

    # grow: the new size through the CLI and READ CAPACITY (16)
    assert readcapacity16(URL) == 64 * MiB
    counts, out = site.play("playbooks/resize.yml", "-e", "volume=vol1", "-e", "size=96M")
    assert counts["changed"] == 1, out
    assert site.cli("volume", "show", "vol1")["size"] == 96 * MiB
    assert readcapacity16(URL) == 96 * MiB

    # move a replica: add local/pool4 (rebuilt), then remove local/pool1
    counts, out = site.play("playbooks/replica.yml", "-e", "volume=vol1", "-e", "add=local/pool4",
                            "-e", "remove=local/pool1", "-e", "confirm_remove=true")  # fmt: skip
    assert counts["changed"] >= 2, out
    vol = site.cli("volume", "show", "vol1")
    assert sorted(vol["replicas"]) == ["local/pool2", "local/pool3", "local/pool4"]
    assert len(healthy_replicas(vol)) == 3
    qemu_io("read -P 72 0 1M", url=URL)  # the data of after the snapshot, on the new set

    # site.yml again: the volume keeps its grown size and its moved replicas
    counts, out = site.play("site.yml")
    assert counts["changed"] == 0 and counts["failed"] == 0, out
    assert re.search(r"vol1: healthy,\s+3 of 3 replicas healthy,\s+96\.00 MB", out), out
