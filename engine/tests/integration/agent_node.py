"""Node agents as real processes: each ``AgentNode`` is one ``cairn node run`` with its
own node file, state directory, loopback address (its "host") and API/metrics ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from cairn.agent.client import AgentClient

from .cluster import _wait_line
from .conftest import find_cairn, free_port, tail

TOKEN = "integration-token-0123456789"


class AgentNode:
    def __init__(self, root: Path, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.dir / "state"
        self.token_file = self.dir / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.api_port = free_port(address)
        self.metrics_port = free_port(address)
        self.config = self.dir / "node.yml"
        self.log = self.dir / "agent.log"
        self.peers: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        # TLS on the API (``use_tls``): this node's certificate and key, and the
        # certificates it and its clients check agents against
        self.tls: tuple[Path, Path] | None = None
        self.ca_file: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.address}:{self.api_port}"

    def use_tls(self, ca_file: Path) -> Path:
        """Give the API a self-signed certificate for its address (openssl); returns it.
        ``ca_file`` is what this node trusts (its peers' certificates)."""
        cert, key = self.dir / "tls.crt", self.dir / "tls.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={self.name}",
             "-addext", f"subjectAltName=IP:{self.address}"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.tls, self.ca_file = (cert, key), ca_file
        return cert

    def write_config(self) -> None:
        doc: dict[str, Any] = {
            "name": self.name,
            "address": self.address,
            "state_dir": str(self.state_dir),
            "api": {
                "listen": f"{self.address}:{self.api_port}",
                "token_file": str(self.token_file),
            },
            "metrics": {"listen": f"{self.address}:{self.metrics_port}"},
            "peers": self.peers,
        }
        if self.tls:
            doc["api"].update(
                tls_cert=str(self.tls[0]), tls_key=str(self.tls[1]), ca_file=str(self.ca_file)
            )
        self.config.write_text(json.dumps(doc))  # JSON is YAML

    def start(self) -> AgentNode:
        self.write_config()
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [find_cairn(), "node", "run", "--config", str(self.config)],
                stdout=subprocess.PIPE,
                stderr=err,
            )
        _wait_line(self.proc, "ready ", 90)
        return self

    def api(self, token: str | None = TOKEN) -> AgentClient:
        return AgentClient(self.url, token, ca_file=self.ca_file)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.api().call(method, path, body)

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://{self.address}:{self.metrics_port}/metrics", timeout=10
        ) as r:
            return str(r.read().decode())

    def child_pid(self, child: str) -> int:
        doc = json.loads((self.state_dir / "run" / f"{child}.pid").read_text())
        return int(doc["pid"])

    def child_pids(self) -> list[int]:
        pids = []
        for f in (self.state_dir / "run").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError, KeyError):
                pids.append(int(json.loads(f.read_text())["pid"]))
        return pids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(signal.SIGTERM, 30)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.child_pids() if (self.state_dir / "run").exists() else []:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

    def report(self) -> str:
        parts = [f"--- agent {self.name} ---\n{tail(self.log, 60)}"]
        for f in sorted((self.state_dir / "logs").glob("*.log")):
            parts.append(f"--- {self.name} {f.name} ---\n{tail(f, 30)}")
        return "\n".join(parts)


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_for(cond: Any, timeout: float, what: str, report: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as e:  # not there yet
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    extra = report() if report is not None else ""
    raise AssertionError(f"{what} within {timeout} s (last: {last!r})\n{extra}")
