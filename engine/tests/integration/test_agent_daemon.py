"""``cairn node run --daemon``: it detaches, returns once the API answers, writes its pid
file, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from .agent_node import AgentNode, pid_alive, wait_for
from .conftest import find_cairn, free_port

pytestmark = pytest.mark.integration


def test_daemon_mode(tmp_path):
    node = AgentNode(tmp_path, "node-d", "127.0.0.30")
    node.write_config()
    try:
        done = subprocess.run(
            [find_cairn(), "node", "run", "--config", str(node.config), "--daemon"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        pid = int((node.state_dir / "agent.pid").read_text())
        assert pid_alive(pid)
        assert os.getsid(pid) != os.getsid(0)  # its own session: detached from ours
        assert node.call("GET", "/v1/health")["node"] == "node-d"  # answers at once
        node.call(
            "POST", "/v1/pools", {"name": "p1", "listen": f"127.0.0.30:{free_port(node.address)}"}
        )
        pool_pid = node.child_pid("pool-p1")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid), 30, "the daemon exits")
        assert not pid_alive(pool_pid)
        assert not (node.state_dir / "agent.pid").exists()
        assert "agent_stopped" in (node.state_dir / "logs" / "agent.log").read_text()
    finally:
        for p in node.child_pids() if (node.state_dir / "run").exists() else []:
            with __import__("contextlib").suppress(OSError):
                os.killpg(p, signal.SIGKILL)
        if (node.state_dir / "agent.pid").exists():
            with __import__("contextlib").suppress(OSError, ValueError):
                os.kill(int((node.state_dir / "agent.pid").read_text()), signal.SIGKILL)
        time.sleep(0)


def test_a_bad_node_file_names_the_key(tmp_path):
    cfg = tmp_path / "node.yml"
    cfg.write_text(f"state_dir: {tmp_path}\napi: {{token_file: {tmp_path}/t, listen: nowhere}}\n")
    (tmp_path / "t").write_text("0123456789abcdef0")
    for extra in ([], ["--daemon"]):
        done = subprocess.run(
            [find_cairn(), "node", "run", "--config", str(cfg), *extra],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2 and "api.listen" in done.stderr, done.stderr
