"""The ``engine`` module with its commands, the agent's pid check and its API replaced by a
fake host (``FakeHost``); files (venv, node file, token, unit) are real, in ``tmp_path``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import tarfile
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.error import HTTPError

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.cairn.storage.plugins.module_utils import engine_install
from ansible_collections.cairn.storage.plugins.modules import engine
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import (
    ModuleExit,
    ModuleFail,
    _exit_json,
    _fail_json,
)

TOKEN = "unit-token-0123456789abcdef"


class FakeHost:
    """What the module's commands and requests find on the host."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python_version = "3.11.2"
        self.installed: str | None = None
        self.running = False
        self.pid = 0
        self.starts = 0
        self.node = "node-a"  # the name the API answers with
        self.api_up = True
        self.token_accepted = True
        self.config_error = ""
        self.systemd_active = False
        self.systemd_enabled = False
        self.calls: list[list[str]] = []
        self.wheel_dirs: list[list[str]] = []  # what --find-links held at each install

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def commands(self, word: str) -> list[list[str]]:
        return [c for c in self.calls if word in c]

    def run_command(self, argv: list[str], **kwargs: Any) -> tuple[int, str, str]:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        if argv[1:2] == ["-c"] and "version_info" in argv[2]:
            return 0, self.python_version + "\n", ""
        if argv[0] == str(self.venv / "bin" / "cairn") and argv[1:] == ["--version"]:
            return (0, "cairn %s\n" % self.installed, "") if self.installed else (1, "", "boom")
        if argv[1:3] == ["-m", "venv"]:
            (self.venv / "bin").mkdir(parents=True)
            (self.venv / "bin" / "python").write_text("")
            return 0, "", ""
        if argv[1:4] == ["-m", "pip", "install"]:
            links = argv[argv.index("--find-links") + 1]
            self.wheel_dirs.append(sorted(os.listdir(links)))
            self.installed = argv[-1].split("==")[1]
            (self.venv / "bin" / "cairn").write_text("")
            return 0, "", ""
        if argv[1:3] == ["-c", engine.CHECK_CONFIG]:
            return (2, self.config_error, "") if self.config_error else (0, "", "")
        if argv[1:3] == ["node", "run"]:
            self.starts += 1
            self.running, self.pid = True, 4000 + self.starts
            self.state_dir.mkdir(exist_ok=True)
            (self.state_dir / "agent.pid").write_text("%d\n" % self.pid)
            return 0, "", ""
        if argv[0] == "systemctl":
            return self.systemctl(argv[1:])
        raise AssertionError("unexpected command %r" % argv)

    def systemctl(self, args: list[str]) -> tuple[int, str, str]:
        verb = args[0]
        if verb == "is-active":
            return (0, "active\n", "") if self.systemd_active else (3, "inactive\n", "")
        if verb == "is-enabled":
            return (0, "enabled\n", "") if self.systemd_enabled else (1, "disabled\n", "")
        if verb in ("start", "restart"):
            self.starts += 1
            self.systemd_active = True
        elif verb == "stop":
            self.systemd_active = False
        elif verb == "enable":
            self.systemd_enabled = True
        elif verb == "disable":
            self.systemd_enabled = False
        return 0, "", ""

    def alive(self, pid: Any, config_path: str) -> bool:
        return self.running and pid == self.pid

    def kill(self, pid: int, sig: int) -> None:
        assert pid == self.pid and sig == signal.SIGTERM
        self.calls.append(["kill", str(pid)])
        self.running = False

    def open_url(self, url: str, headers: dict[str, str], **kwargs: Any) -> Any:
        if not self.api_up:
            raise ConnectionRefusedError(111, "Connection refused")
        if url.endswith("/v1/health"):
            return io.BytesIO(json.dumps({"ok": True, "node": self.node}).encode())
        assert url.endswith("/v1/pools")
        if headers.get("Authorization") != "Bearer %s" % TOKEN or not self.token_accepted:
            raise HTTPError(url, 401, "Unauthorized", {}, io.BytesIO(b'{"error": "token"}'))  # type: ignore[arg-type]
        return io.BytesIO(b"[]")


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def wheelhouse(root: Path, *versions: str) -> Path:
    wh = root / "wheels"
    wh.mkdir(exist_ok=True)
    for v in versions:
        (wh / ("cairn_engine-%s-py3-none-any.whl" % v)).write_text("wheel")
    (wh / "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl").write_text("wheel")
    return wh


def node_config(host: FakeHost, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "node-a",
        "address": "10.0.0.1",
        "state_dir": str(host.state_dir),
        "api": {"listen": "10.0.0.1:6060"},
        "metrics": {"listen": "10.0.0.1:9500"},
        "peers": {"node-b": "http://10.0.0.2:6060"},
    }
    config.update(extra)
    return config


def args(host: FakeHost, **extra: Any) -> dict[str, Any]:
    a: dict[str, Any] = {
        "version": "0.1.0",
        "wheelhouse": str(wheelhouse(host.root, "0.1.0")),
        "venv": str(host.venv),
        "python": "/usr/bin/python3",
        "config_dir": str(host.root / "etc"),
        "config": node_config(host),
        "token": TOKEN,
        "service_manager": "daemon",
        "unit_dir": str(host.root / "units"),
        "wait_timeout": 5,
    }
    a.update(extra)
    return a


def run(
    host: FakeHost,
    module_args: dict[str, Any],
    check: bool = False,
    diff: bool = False,
    systemd: bool = False,
) -> dict[str, Any]:
    full = dict(module_args, _ansible_check_mode=check, _ansible_diff=diff)
    systemd_dir = host.root / ("run-systemd" if systemd else "no-systemd")
    if systemd:
        systemd_dir.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(patch_module_args(full))
        stack.enter_context(mock.patch.object(basic.AnsibleModule, "exit_json", _exit_json))
        stack.enter_context(mock.patch.object(basic.AnsibleModule, "fail_json", _fail_json))
        stack.enter_context(mock.patch.object(basic.AnsibleModule, "run_command", host.run_command))
        stack.enter_context(mock.patch.object(engine, "agent_alive", host.alive))
        stack.enter_context(mock.patch.object(engine, "open_url", host.open_url))
        stack.enter_context(mock.patch.object(engine, "SYSTEMD_RUN_DIR", str(systemd_dir)))
        stack.enter_context(mock.patch.object(engine.os, "kill", host.kill))
        stack.enter_context(mock.patch.object(engine.time, "sleep", lambda s: None))
        try:
            engine.main()
        except (ModuleExit, ModuleFail) as e:
            return e.result
    raise AssertionError("the module returned without exit_json or fail_json")


def ok(host: FakeHost, module_args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = run(host, module_args, **kw)
    assert not result.get("failed"), result
    return result


def fails(host: FakeHost, module_args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = run(host, module_args, **kw)
    assert result.get("failed"), result
    return result


def test_fresh_install_daemon(host: FakeHost) -> None:
    a = args(host)
    r = ok(host, a)
    assert r["changed"] and r["version"] == "0.1.0" and r["previous_version"] is None
    assert r["service_manager"] == "daemon" and not r["restarted"]
    assert r["api_url"] == "http://10.0.0.1:6060" and r["node"] == "node-a"
    assert r["pid"] == host.pid and host.running and host.starts == 1
    assert r["config_path"] == str(host.root / "etc" / "node.yml")
    assert host.commands("venv") == [["/usr/bin/python3", "-m", "venv", str(host.venv)]]
    assert host.commands("pip") == [
        [
            str(host.venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            a["wheelhouse"],
            "cairn-engine==0.1.0",
        ]
    ]
    assert host.commands("run")[0][1:] == ["node", "run", "--config", r["config_path"], "--daemon"]
    token_file = host.root / "etc" / "token"
    assert token_file.read_text() == TOKEN + "\n"
    assert token_file.stat().st_mode & 0o777 == 0o600
    node_file = Path(r["config_path"]).read_text()
    expected = dict(a["config"], api={"listen": "10.0.0.1:6060", "token_file": str(token_file)})
    assert node_file == engine_install.render_node_file(expected)
    assert 'token_file: "%s"' % token_file in node_file
    assert TOKEN not in json.dumps(r)


def test_same_again_changes_nothing(host: FakeHost) -> None:
    ok(host, args(host))
    host.calls.clear()
    r = ok(host, args(host), diff=True)
    assert not r["changed"] and not r["restarted"] and "diff" not in r
    assert r["version"] == r["previous_version"] == "0.1.0"
    assert host.commands("pip") == [] and host.commands("venv") == []
    assert host.commands("run") == [] and host.commands("kill") == []
    assert host.starts == 1 and r["pid"] == host.pid


def test_upgrade_restarts_on_the_new_version(host: FakeHost) -> None:
    ok(host, args(host))
    first = host.pid
    wheelhouse(host.root, "0.1.1")
    r = ok(host, args(host, version="0.1.1"), diff=True)
    assert r["changed"] and r["restarted"]
    assert r["previous_version"] == "0.1.0" and r["version"] == "0.1.1"
    assert host.installed == "0.1.1"
    assert host.commands("pip")[-1][-1] == "cairn-engine==0.1.1"
    assert host.commands("kill") == [["kill", str(first)]]  # SIGTERM to the old agent
    assert host.pid != first and host.running and host.starts == 2
    version_diff = [d for d in r["diff"] if d["before_header"] == "version"]
    assert version_diff == [
        {
            "before_header": "version",
            "after_header": "version",
            "before": "0.1.0\n",
            "after": "0.1.1\n",
        }
    ]
    assert len(host.commands("venv")) == 1  # the venv is kept


def test_config_change_restarts_without_install(host: FakeHost) -> None:
    ok(host, args(host))
    config = node_config(
        host, peers={"node-b": "http://10.0.0.2:6060", "node-c": "http://10.0.0.3:6060"}
    )
    r = ok(host, args(host, config=config), diff=True)
    assert r["changed"] and r["restarted"] and host.starts == 2
    assert len(host.commands("pip")) == 1
    [d] = [d for d in r["diff"] if d["after_header"].endswith("node.yml")]
    assert "node-c" not in d["before"] and '  node-c: "http://10.0.0.3:6060"' in d["after"]
    assert "node-c" in Path(r["config_path"]).read_text()


def test_token_change_needs_no_restart(host: FakeHost) -> None:
    ok(host, args(host))
    new = "another-token-0123456789"
    host.token_accepted = True
    with mock.patch(__name__ + ".TOKEN", new):
        r = ok(host, args(host, token=new))
    assert r["changed"] and not r["restarted"] and host.starts == 1
    assert (host.root / "etc" / "token").read_text() == new + "\n"


def test_check_mode_predicts_and_touches_nothing(host: FakeHost) -> None:
    r = ok(host, args(host), check=True, diff=True)
    assert r["changed"] and not r["restarted"] and r["previous_version"] is None
    assert r["api_url"] == "http://10.0.0.1:6060"
    assert not (host.root / "etc").exists() and not host.venv.exists()
    assert host.commands("pip") == [] and host.commands("run") == [] and host.installed is None
    headers = [d["after_header"] for d in r["diff"]]
    assert headers == ["version", str(host.root / "etc" / "node.yml"), "agent"]
    # on an installed engine: an upgrade is predicted with its restart, nothing is done
    ok(host, args(host))
    wheelhouse(host.root, "0.1.1")
    host.calls.clear()
    r = ok(host, args(host, version="0.1.1"), check=True)
    assert r["changed"] and r["restarted"] and host.installed == "0.1.0"
    assert host.commands("pip") == [] and host.commands("kill") == [] and host.starts == 1


def test_check_mode_before_the_wheelhouse_is_copied(host: FakeHost) -> None:
    r = ok(host, args(host, wheelhouse=str(host.root / "not-yet.tar")), check=True)
    assert r["changed"] and host.commands("pip") == []
    r = fails(host, args(host, wheelhouse=str(host.root / "not-yet.tar")))
    assert "neither a directory nor a tar file" in r["msg"]


def test_python_too_old(host: FakeHost) -> None:
    host.python_version = "3.9.18"
    r = fails(host, args(host))
    assert "is Python 3.9.18; the engine needs 3.11 or newer" in r["msg"]
    assert host.commands("venv") == [] and host.commands("pip") == []
    r = fails(host, args(host, python="no-such-python3"))
    assert "no-such-python3 is not in PATH" in r["msg"]


def test_old_venv_is_refused(host: FakeHost) -> None:
    (host.venv / "bin").mkdir(parents=True)
    (host.venv / "bin" / "python").write_text("")
    host.python_version = "3.10.12"
    r = fails(host, args(host))
    assert "runs Python 3.10.12" in r["msg"] and "state: absent" in r["msg"]


def test_wheelhouse_without_the_version(host: FakeHost) -> None:
    r = fails(host, args(host, version="0.2.0"))
    assert "has no wheel of cairn-engine 0.2.0" in r["msg"]
    assert "cairn_engine-0.1.0-py3-none-any.whl" in r["msg"]
    r = fails(host, args(host, wheelhouse=None))
    assert "give wheelhouse:" in r["msg"]
    r = fails(host, args(host, wheelhouse=str(host.root / "nowhere")))
    assert "neither a directory nor a tar file" in r["msg"]
    assert host.commands("pip") == []


def test_wheelhouse_as_a_tar_file(host: FakeHost) -> None:
    wh = wheelhouse(host.root, "0.1.0")
    archive = host.root / "wheels.tar"
    with tarfile.open(archive, "w") as tar:
        for f in sorted(wh.iterdir()):
            tar.add(f, arcname=f.name)
    r = ok(host, args(host, wheelhouse=str(archive)))
    assert r["changed"] and host.installed == "0.1.0"
    assert host.wheel_dirs == [sorted(p.name for p in wh.iterdir())]
    assert not list(host.root.glob(".cairn-wheels.*"))  # the unpacked copy is gone


def test_tar_with_a_path_is_refused(host: FakeHost) -> None:
    archive = host.root / "bad.tar"
    wheel = host.root / "cairn_engine-0.1.0-py3-none-any.whl"
    wheel.write_text("x")
    with tarfile.open(archive, "w") as tar:
        tar.add(wheel, arcname=wheel.name)
        tar.add(wheel, arcname="../evil.whl")
    r = fails(host, args(host, wheelhouse=str(archive)))
    assert "cannot unpack" in r["msg"] and "'../evil.whl' is not a wheel file" in r["msg"]
    assert host.installed is None and not (host.root.parent / "evil.whl").exists()


def test_token_problems(host: FakeHost) -> None:
    r = fails(host, args(host, token=None))
    assert "no token" in r["msg"] and "etc/token" in r["msg"]
    r = fails(host, args(host, token="short"))
    assert "at least 16 characters" in r["msg"]
    # an existing token file is used as it is
    (host.root / "etc").mkdir()
    (host.root / "etc" / "token").write_text(TOKEN + "\n")
    r = ok(host, args(host, token=None))
    assert r["changed"] and host.running


def test_config_refused_by_the_engine(host: FakeHost) -> None:
    host.config_error = "api.bogus: unknown key (known: ca_file, listen, ...)"
    r = fails(host, args(host, config=node_config(host, api={"bogus": 1})))
    assert "the engine refuses the node file: api.bogus: unknown key" in r["msg"]
    assert not (host.root / "etc" / "node.yml").exists() and not host.running
    r = fails(host, args(host, config={"name": "node-a"}))
    assert "state_dir is required" in r["msg"]


def test_api_not_answering_or_someone_else(host: FakeHost) -> None:
    host.api_up = False
    r = fails(host, args(host, wait_timeout=0))
    assert "did not answer within 0 s" in r["msg"] and "agent.log" in r["msg"]
    host.api_up, host.node = True, "node-z"
    r = fails(host, args(host))
    assert "answers as node node-z, not node-a" in r["msg"]
    host.node, host.token_accepted = "node-a", False
    r = fails(host, args(host))
    assert "refuses the token" in r["msg"]


def test_systemd(host: FakeHost) -> None:
    a = args(host, service_manager="auto")
    r = ok(host, a, systemd=True, diff=True)
    assert r["changed"] and r["service_manager"] == "systemd"
    unit = host.root / "units" / "cairn-agent.service"
    text = unit.read_text()
    assert (
        "ExecStart=%s node run --config %s\n" % (host.venv / "bin" / "cairn", r["config_path"])
        in text
    )
    assert "KillMode=mixed" in text and "WantedBy=multi-user.target" in text
    assert [
        c[1] for c in host.commands("systemctl") if c[1] not in ("is-active", "is-enabled")
    ] == ["daemon-reload", "enable", "start"]
    assert [d["after_header"] for d in r["diff"]][-2:] == [str(unit), "agent"]
    host.calls.clear()
    again = ok(host, a, systemd=True)
    assert not again["changed"] and host.starts == 1
    # a unit that differs (another stop timeout) is rewritten and the agent restarted
    r = ok(host, dict(a, stop_timeout=90), systemd=True)
    assert r["changed"] and r["restarted"] and "TimeoutStopSec=90" in unit.read_text()
    assert [c[1] for c in host.commands("systemctl") if c[1] in ("stop", "start")] == [
        "stop",
        "start",
    ]
    r = fails(host, dict(a, service_manager="systemd"))
    assert "systemd does not run on this host" in r["msg"]


def test_stopped_and_absent(host: FakeHost) -> None:
    ok(host, args(host))
    pid = host.pid
    r = ok(host, args(host, state="stopped"))
    assert r["changed"] and not host.running and host.commands("kill") == [["kill", str(pid)]]
    assert not ok(host, args(host, state="stopped"))["changed"]
    ok(host, args(host))
    r = ok(
        host,
        {
            "state": "absent",
            "venv": str(host.venv),
            "config_dir": str(host.root / "etc"),
            "service_manager": "daemon",
        },
    )
    assert r["changed"] and r["previous_version"] == "0.1.0" and r["version"] is None
    assert not host.venv.exists() and not host.running
    assert (host.root / "etc" / "node.yml").exists() and (host.root / "etc" / "token").exists()
    again = ok(
        host,
        {
            "state": "absent",
            "venv": str(host.venv),
            "config_dir": str(host.root / "etc"),
            "service_manager": "daemon",
        },
    )
    assert not again["changed"]


def test_none_installs_only(host: FakeHost) -> None:
    r = ok(host, args(host, service_manager="none"))
    assert r["changed"] and r["service_manager"] == "none" and host.installed == "0.1.0"
    assert host.commands("run") == [] and "api_url" not in r


def test_node_file_rendering() -> None:
    text = engine_install.render_node_file(
        {
            "peers": {"yes": "http://10.0.0.2:6060", "node-b": "http://10.0.0.3:6060"},
            "name": "node-a",
            "state_dir": "/var/lib/cairn",
            "extra": [],
            "api": {"listen": ":6060"},
        }
    )
    assert text == engine_install.HEADER + (
        'name: "node-a"\n'
        'state_dir: "/var/lib/cairn"\n'
        "api:\n"
        '  listen: ":6060"\n'
        "peers:\n"
        '  node-b: "http://10.0.0.3:6060"\n'
        '  "yes": "http://10.0.0.2:6060"\n'
        "extra: []\n"
    )
    assert engine_install.state_dir_of(text) == "/var/lib/cairn"
    assert engine_install.default_api_url({"api": {"listen": "0.0.0.0:7000"}}) == (
        "http://127.0.0.1:7000"
    )
    assert (
        engine_install.default_api_url({"api": {"listen": "10.0.0.1:6060", "tls_cert": "/c"}})
        == "https://10.0.0.1:6060"
    )
    assert engine_install.parse_cairn_version("cairn 0.1.1.dev1\n") == "0.1.1.dev1"
    assert engine_install.parse_cairn_version("usage: ...") is None
    assert engine_install.parse_python_version("3.11.2\n") == (3, 11, 2)
