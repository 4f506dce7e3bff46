"""``cairn up``: one command starts pools and a replicated volume on this machine, Ctrl-C
stops everything, and a second run resumes the same data (docs/agent.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .agent_node import pid_alive
from .conftest import find_cairn, free_port
from .test_agent import qemu_io

pytestmark = pytest.mark.integration


class Up:
    """One ``cairn up`` process with its own ports, its output collected."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.portal = f"127.0.0.1:{free_port()}"
        self.api = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.pool_port = free_port("127.0.0.2")
        self.proc: subprocess.Popen[str] | None = None
        self.out: list[str] = []
        self.err: list[str] = []

    def argv(self, *extra: str) -> list[str]:
        return [
            find_cairn(), "up", "--data", str(self.data), "--portal", self.portal,
            "--api-listen", self.api, "--metrics-listen", self.metrics,
            "--pool-port", str(self.pool_port), *extra,
        ]  # fmt: skip

    def start(self, *extra: str) -> str:
        """Start it and return the iSCSI URL it prints."""
        self.out, self.err = [], []
        self.proc = subprocess.Popen(
            self.argv(*extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        proc = self.proc

        def drain(stream: Any, into: list[str]) -> None:
            for line in stream:
                into.append(line)

        assert proc.stdout is not None and proc.stderr is not None
        threading.Thread(target=drain, args=(proc.stderr, self.err), daemon=True).start()
        threading.Thread(target=drain, args=(proc.stdout, self.out), daemon=True).start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            urls = [line.strip() for line in self.out if line.startswith("iscsi://")]
            if urls:
                return urls[0]
            assert proc.poll() is None, self.report()
            time.sleep(0.1)
        raise AssertionError("no iSCSI URL within 90 s\n" + self.report())

    def ctrl_c(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)

    def cli(self, *argv: str) -> Any:
        cmd = [
            find_cairn(), *argv, "--api", f"http://{self.api}",
            "--token-file", str(self.data / "token"), "--json",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (cmd, done.stdout, done.stderr)
        return json.loads(done.stdout)

    def report(self) -> str:
        return "stdout:\n" + "".join(self.out) + "stderr:\n" + "".join(self.err[-60:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def children(data: Path) -> list[int]:
    """Pids of pool servers and targets whose command line names ``data``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(data) in cmdline and " up " not in cmdline.replace("\0", " "):
            found.append(int(entry))
    return found


def test_up_serves_resumes_and_stops(tmp_path: Path) -> None:
    if shutil.which("qemu-io") is None:
        pytest.fail("qemu-io is not installed (scripts/install.sh installs qemu-utils)")
    up = Up(tmp_path / "data")
    try:
        url = up.start("--size", "64M", "--replicas", "3")
        assert url.startswith(f"iscsi://{up.portal}/") and url.endswith(":vol1/0"), url
        said = "".join(up.err)
        assert "created 64.0 MiB with 3 replicas on pool1, pool2, pool3" in said, up.report()
        assert f" volume show vol1 --api http://{up.api} --token-file" in said

        v = up.cli("volume", "show", "vol1")
        assert v["status"]["state"] == "healthy", v
        assert [r["state"] for r in v["status"]["replicas"]] == ["healthy"] * 3, v
        hosts = sorted(a.split(":")[0] for a in v["addresses"].values())
        assert hosts == ["127.0.0.2", "127.0.0.3", "127.0.0.4"], v
        assert v["allow_same_node"] is True, v
        qemu_io("write -P 0x3c 1M 2M", "write -P 0xc3 60M 4M", url=url)
        pids = children(up.data)
        assert len(pids) == 4, pids  # three pool servers and the target

        assert up.ctrl_c() == 0, up.report()
        time.sleep(0.5)
        assert not [p for p in pids if pid_alive(p)], ("children left running", up.report())

        # The same data again, grown to 128 MiB: every byte written is there.
        url2 = up.start("--size", "128M")
        assert url2 == url
        assert "resumed, grown to 128.0 MiB" in "".join(up.err), up.report()
        v = up.cli("volume", "show", "vol1")
        assert v["size"] == 128 << 20 and v["status"]["state"] == "healthy", v
        qemu_io("read -P 0x3c 1M 2M", "read -P 0xc3 60M 4M", "read -P 0 64M 64M", url=url)
        assert up.ctrl_c() == 0, up.report()

        # What a resumed volume cannot do is refused before anything starts.
        for extra, says in (
            (["--replicas", "2"], "has 3 replicas, not 2"),
            (["--size", "32M"], "never shrinks"),
            (["--replicas", "12"], "--replicas: from 1 to 9"),
        ):
            done = subprocess.run(up.argv(*extra), capture_output=True, text=True, timeout=60)
            assert done.returncode == 2 and says in done.stderr, (extra, done.stderr)
    finally:
        up.kill()
        for pid in children(up.data):
            os.kill(pid, signal.SIGKILL)
