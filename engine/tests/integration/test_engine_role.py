"""The ``cairn.storage.engine`` role (roles/engine, plugins/modules/engine.py) through
``ansible-playbook`` on this machine: a wheelhouse built from engine/ on the "controller",
a venv, the node file, a token made once, the agent in daemon mode on 127.0.0.100; a
second run changes nothing; an upgrade to a wheel of a copy of engine/ with another
version restarts the agent on the new version with the pool, the volume and its data
still there (read back with qemu-io); ``cairn_engine_state: stopped`` stops it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cairn.agent.client import AgentClient, ApiError

from .agent_node import pid_alive, wait_for
from .ansible_run import ansible_env, ansible_playbook, collections_tree, recap
from .conftest import free_port, tail
from .test_agent import qemu_io

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PLAYBOOK = REPO / "tests" / "integration" / "playbooks" / "engine_role.yml"
ROLLING_UPGRADE = REPO / "playbooks" / "rolling_upgrade.yml"
ADDRESS = "127.0.0.100"  # the agent, its pool and its portal
VERSION = re.search(r'(?m)^version = "([^"]+)"', (REPO / "engine/pyproject.toml").read_text())
NEXT = "0.1.1.dev1"
MiB = 1 << 20


def venv_python() -> str:
    """A Python 3.11+ for the engine's venv (the wheels are built for this one's ABI)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if Path(base).exists() else sys.executable


class Host:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "opt" / "venv"
        self.config_dir = root / "etc"
        self.state_dir = root / "state"
        self.token_file = self.config_dir / "token"
        self.api_url = f"http://{ADDRESS}:{free_port(ADDRESS)}"
        self.collections = collections_tree(root)
        self.vars: dict[str, Any] = {
            "cairn_node_name": "engine-a",
            "cairn_address": ADDRESS,
            "cairn_api_url": self.api_url,
            "cairn_metrics_listen": f"{ADDRESS}:{free_port(ADDRESS)}",
            "cairn_config_dir": str(self.config_dir),
            "cairn_state_dir": str(self.state_dir),
            "cairn_venv": str(self.venv),
            "cairn_python": venv_python(),
            "cairn_engine_service": "daemon",
            "cairn_engine_wheelhouse_cache": str(root / "controller-cache"),
            "cairn_engine_host_wheelhouse": str(root / "wheels") + "/{{ cairn_engine_version }}",
            "cairn_engine_wait_timeout": 90,
        }
        self.runs = 0

    def play(self, playbook: Path = PLAYBOOK, **extra: Any) -> tuple[dict[str, int], str]:
        """Run ``playbook``; the PLAY RECAP's counts for localhost and the output.  The
        inventory puts localhost in cairn_storage and cairn_targets."""
        self.runs += 1
        vars_file = self.root / f"vars-{self.runs}.json"
        vars_file.write_text(json.dumps(dict(self.vars, **extra)))
        env = ansible_env(self.root)
        inventory = self.root / "inventory.ini"
        inventory.write_text(
            "[cairn_storage]\nlocalhost ansible_connection=local\n[cairn_targets]\nlocalhost\n"
        )
        argv = [ansible_playbook(), "-i", str(inventory), "-e", f"@{vars_file}", str(playbook)]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        out = done.stdout + done.stderr
        assert done.returncode == 0, (
            f"run {self.runs}: exit {done.returncode}\n{out}\n{self.report()}"
        )
        return recap(done.stdout), out

    def client(self, token: str | None = None) -> AgentClient:
        return AgentClient(self.api_url, token if token is not None else self.token())

    def token(self) -> str:
        return self.token_file.read_text().strip()

    def pid(self) -> int:
        return int((self.state_dir / "agent.pid").read_text())

    def version(self) -> str:
        done = subprocess.run([str(self.venv / "bin" / "cairn"), "--version"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def child_pids(self) -> list[int]:
        pids = []
        for f in (self.state_dir / "run").glob("*.pid"):
            try:
                pids.append(int(json.loads(f.read_text())["pid"]))
            except (ValueError, OSError, KeyError):
                pass
        return pids

    def report(self) -> str:
        parts = [f"--- agent.log ---\n{tail(self.state_dir / 'logs' / 'agent.log', 60)}"]
        for f in sorted((self.state_dir / "logs").glob("*.log")):
            if f.name != "agent.log":
                parts.append(f"--- {f.name} ---\n{tail(f, 30)}")
        return "\n".join(parts)

    def cleanup(self) -> None:
        """Whatever is left running: the agent (SIGTERM, then SIGKILL) and its children."""
        pid_file = self.state_dir / "agent.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists() and str(self.config_dir) in cmdline.read_text():
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        if (self.state_dir / "run").exists():
            for child in self.child_pids():
                try:
                    os.killpg(child, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    if shutil.which("qemu-io") is None:
        pytest.fail("qemu-io is not installed (scripts/install.sh installs qemu-utils)")
    h = Host(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def build_next_wheelhouse(root: Path) -> Path:
    """Wheels of a copy of engine/ whose version is ``NEXT``, and of its dependencies."""
    src = root / "engine-next"
    (src / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(REPO / "engine" / name, src / name)
    shutil.copytree(REPO / "engine" / "src" / "cairn", src / "src" / "cairn",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    assert VERSION is not None
    for f, pattern in ((src / "pyproject.toml", 'version = "{}"'),
                       (src / "src" / "cairn" / "__init__.py", '__version__ = "{}"')):  # fmt: skip
        text = f.read_text()
        old = pattern.format(VERSION.group(1))
        assert old in text, f"{f}: no {old}"
        f.write_text(text.replace(old, pattern.format(NEXT)))
    # its dependencies are the ones already built for the first install
    wheels = root / "wheels-next"
    shutil.copytree(root / "controller-cache" / VERSION.group(1), wheels,
                    ignore=shutil.ignore_patterns("cairn_engine-*"))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
         str(src), "-w", str(wheels)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(p.name.startswith(f"cairn_engine-{NEXT}-") for p in wheels.iterdir())
    return wheels


def test_install_idempotent_upgrade_stop(host: Host) -> None:
    assert VERSION is not None
    current = VERSION.group(1)
    t0 = time.monotonic()

    # fresh install: wheelhouse built on the controller, venv, node file, token, agent
    recap, out = host.play()
    assert recap["failed"] == 0 and recap["changed"] >= 4, (recap, out)
    wheelhouse = host.root / "controller-cache" / current
    assert any(p.name.startswith(f"cairn_engine-{current}-") for p in wheelhouse.iterdir())
    assert host.version() == f"cairn {current}"
    token = host.token()
    assert len(token) >= 16
    assert host.token_file.stat().st_mode & 0o777 == 0o600
    assert token not in out  # no_log
    node_file = (host.config_dir / "node.yml").read_text()
    assert f'listen: "{ADDRESS}:' in node_file and 'name: "engine-a"' in node_file
    assert host.client(token).call("GET", "/v1/health")["node"] == "engine-a"
    assert host.client(token).call("GET", "/v1/pools") == []
    with pytest.raises(ApiError) as refused:
        host.client("not-the-token-0123456789").call("GET", "/v1/pools")
    assert refused.value.status == 401
    pid = host.pid()
    print(f"install: {time.monotonic() - t0:.1f} s")

    # the same run again: nothing changes, the agent is not restarted, the token is kept
    t1 = time.monotonic()
    recap, out = host.play()
    assert recap["failed"] == 0 and recap["changed"] == 0, (recap, out)
    assert host.pid() == pid and pid_alive(pid)
    assert host.token() == token
    print(f"second run: {time.monotonic() - t1:.1f} s")

    # a pool and a 1-replica volume, with data
    api = host.client(token)
    pool_port, portal_port = free_port(ADDRESS), free_port(ADDRESS)
    api.call("POST", "/v1/pools", {"name": "p1", "path": str(host.root / "pools" / "p1"),
                                   "listen": f"{ADDRESS}:{pool_port}"})  # fmt: skip
    api.call("POST", "/v1/volumes", {"name": "vol1", "size": 16 * MiB, "replicas": ["engine-a/p1"],
                                     "portal": f"{ADDRESS}:{portal_port}"})  # fmt: skip
    wait_healthy(host)
    vol = api.call("GET", "/v1/volumes/vol1")
    url = f"iscsi://{vol['portal']}/{vol['iqn']}/0"
    qemu_io("write -P 0xa7 0 1M", "write -P 0x3c 8M 512k", url=url)

    # upgrade with playbooks/rolling_upgrade.yml: the wheels of a copy of engine/ at NEXT,
    # given as cairn_engine_wheelhouse; it waits for the volume before and after
    t2 = time.monotonic()
    wheels = build_next_wheelhouse(host.root)
    print(f"next wheelhouse: {time.monotonic() - t2:.1f} s")
    t3 = time.monotonic()
    recap, out = host.play(
        ROLLING_UPGRADE,
        cairn_engine_version=NEXT,
        cairn_engine_wheelhouse=str(wheels),
        cairn_upgrade_poll_interval=1,
    )
    assert recap["failed"] == 0 and recap["changed"] >= 2, (recap, out)
    assert "Every volume on every target host healthy again after localhost" in out
    assert host.version() == f"cairn {NEXT}"
    new_pid = host.pid()
    assert new_pid != pid and not pid_alive(pid) and pid_alive(new_pid)
    assert host.token() == token
    api = host.client(token)
    assert [p["name"] for p in api.call("GET", "/v1/pools")] == ["p1"]
    assert api.call("GET", "/v1/volumes/vol1")["replicas"] == ["engine-a/p1"]
    wait_healthy(host)
    qemu_io("read -P 0xa7 0 1M", "read -P 0x3c 8M 512k", "read -P 0 1M 1M", url=url)
    print(f"upgrade: {time.monotonic() - t3:.1f} s")

    # the upgraded engine, same run again: no change
    recap, out = host.play(cairn_engine_version=NEXT, cairn_engine_wheelhouse=str(wheels))
    assert recap["failed"] == 0 and recap["changed"] == 0, (recap, out)
    assert host.pid() == new_pid

    # stopped: the agent and its children go
    children = host.child_pids()
    assert len(children) == 2  # the pool server and the target
    recap, out = host.play(cairn_engine_version=NEXT, cairn_engine_wheelhouse=str(wheels),
                           cairn_engine_state="stopped")  # fmt: skip
    assert recap["failed"] == 0 and recap["changed"] == 1, (recap, out)
    assert not pid_alive(new_pid)
    assert not any(pid_alive(c) for c in children)
    print(f"total: {time.monotonic() - t0:.1f} s")


def wait_healthy(host: Host) -> None:
    def healthy() -> bool:
        status = host.client().call("GET", "/v1/volumes/vol1/status")
        return bool(status.get("state") == "healthy")

    wait_for(healthy, 60, "volume vol1 healthy", host.report)
