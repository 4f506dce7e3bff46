"""The node agent's pieces without HTTP: the node file, the desired state on disk, the
restart delays and the supervisor with real (small) child processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cairn.agent import config as cfg
from cairn.agent.state import DesiredState, StateError
from cairn.agent.supervisor import Backoff, ChildSpec, Supervisor
from cairn.store import _fs

# --------------------------------------------------------------------------- config


def _token(tmp_path: Path) -> Path:
    p = tmp_path / "token"
    p.write_text("0123456789abcdef-token\n")
    return p


def test_config_defaults(tmp_path):
    c = cfg.parse({"state_dir": str(tmp_path), "api": {"token_file": str(_token(tmp_path))}})
    assert c.name  # the host name
    assert c.api_listen == "0.0.0.0:6060"
    assert c.metrics_listen == "0.0.0.0:9500"
    assert c.peers == {} and c.secret_file is None and not c.tls
    assert c.token() == "0123456789abcdef-token"


def test_config_full_file(tmp_path):
    (tmp_path / "node.yml").write_text(
        f"""
name: node-a
address: 10.0.0.1
state_dir: {tmp_path}/state
api: {{listen: "127.0.0.1:7000", token_file: {_token(tmp_path)}}}
metrics: {{listen: "127.0.0.1:7001"}}
peers: {{node-b: "http://10.0.0.2:6060/"}}
replication: {{secret_file: /etc/cairn/secret}}
"""
    )
    c = cfg.load(tmp_path / "node.yml")
    assert (c.name, c.address, c.api_listen) == ("node-a", "10.0.0.1", "127.0.0.1:7000")
    assert c.peers == {"node-b": "http://10.0.0.2:6060"}
    assert c.secret_file == Path("/etc/cairn/secret")


@pytest.mark.parametrize(
    "doc, key",
    [
        ({"api": {"token_file": "/t"}}, "state_dir"),
        ({"state_dir": "/s"}, "api.token_file"),
        ({"state_dir": "/s", "api": {"token_file": "/t", "listen": "nope"}}, "api.listen"),
        ({"state_dir": "/s", "api": {"token_file": "/t", "port": 1}}, "api.port"),
        (
            {"state_dir": "/s", "api": {"token_file": "/t"}, "metrics": {"listen": "x:99999"}},
            "metrics.listen",
        ),  # fmt: skip
        ({"state_dir": "/s", "api": {"token_file": "/t"}, "peers": {"b": "ftp://x"}}, "peers.b"),
        ({"state_dir": "/s", "api": {"token_file": "/t"}, "peers": ["b"]}, "peers"),
        ({"state_dir": "/s", "api": {"token_file": "/t", "tls_cert": "/c"}}, "api.tls_cert"),
        ({"state_dir": "/s", "api": {"token_file": "/t"}, "name": "a/b"}, "name"),
        ({"state_dir": "/s", "api": {"token_file": "/t"}, "colour": 1}, "colour"),
        (
            {"state_dir": "/s", "api": {"token_file": "/t"}, "replication": {"secret": 1}},
            "replication.secret",
        ),  # fmt: skip
        (
            {
                "state_dir": "/s",
                "api": {"token_file": "/t"},
                "name": "a",
                "peers": {"a": "http://x:1"},
            },
            "peers.a",
        ),  # fmt: skip
    ],
)
def test_config_errors_name_the_key(doc, key):
    with pytest.raises(cfg.ConfigError) as e:
        cfg.parse(doc)
    assert str(e.value).startswith(key), str(e.value)


def test_config_load_errors(tmp_path):
    with pytest.raises(cfg.ConfigError, match="cannot read the node file"):
        cfg.load(tmp_path / "absent.yml")
    (tmp_path / "bad.yml").write_text("name: [unclosed\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load(tmp_path / "bad.yml")
    (tmp_path / "short.yml").write_text(
        f"state_dir: {tmp_path}\napi: {{token_file: {tmp_path}/short}}\n"
    )
    (tmp_path / "short").write_text("abc")
    with pytest.raises(cfg.ConfigError, match="api.token_file.*at least 16"):
        cfg.load(tmp_path / "short.yml")


# --------------------------------------------------------------------------- state


def test_state_round_trip_and_version(tmp_path):
    s = DesiredState.load(tmp_path)
    assert s.version == 0 and s.pools == {} and s.volumes == {}
    new = s.snapshot()
    new["pools"]["p1"] = {"backend": "embedded", "path": "/x", "listen": "1.2.3.4:3232"}
    assert s.commit(new) == 1
    new = s.snapshot()
    new["volumes"]["v"] = {"size": 4096}
    assert s.commit(new) == 2
    again = DesiredState.load(tmp_path)
    assert again.version == 2
    assert again.pools["p1"]["listen"] == "1.2.3.4:3232"
    assert again.volumes == {"v": {"size": 4096}}
    assert oct(os.stat(tmp_path / "desired.json").st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["desired.json"]  # no temporary file left


def test_state_commit_does_not_change_memory_when_the_write_fails(tmp_path, monkeypatch):
    s = DesiredState.load(tmp_path / "d")
    s.commit(s.snapshot())

    def full(src, dst):  # the rename fails as on a full or read-only file system
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_fs.os, "replace", full)
    new = s.snapshot()
    new["pools"]["p"] = {}
    with pytest.raises(StateError):
        s.commit(new)
    assert s.version == 1 and s.pools == {}
    monkeypatch.undo()
    assert DesiredState.load(tmp_path / "d").pools == {}  # the file kept the old state
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["desired.json"]  # no temporary left


def test_state_a_crash_before_the_rename_keeps_the_old_state(tmp_path):
    s = DesiredState.load(tmp_path)
    new = s.snapshot()
    new["pools"]["old"] = {}
    s.commit(new)
    # what a crash between write and rename leaves: a temporary file beside the real one
    (tmp_path / ".desired.json.tmp.999").write_text('{"version": 9, "pools": {"half')
    again = DesiredState.load(tmp_path)
    assert again.version == 1 and list(again.pools) == ["old"]


@pytest.mark.parametrize(
    "text", ["{not json", "[]", '{"version": "1", "pools": {}, "volumes": {}}']
)
def test_state_refuses_a_damaged_file(tmp_path, text):
    (tmp_path / "desired.json").write_text(text)
    with pytest.raises(StateError, match="desired.json"):
        DesiredState.load(tmp_path)


# --------------------------------------------------------------------------- backoff


def test_backoff_doubles_to_the_cap_and_resets_after_a_minute_up():
    b = Backoff()
    assert [b.next_delay(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.next_delay(59.9) == 30
    assert b.next_delay(60.0) == 1  # it ran a minute: start over
    assert b.next_delay(3) == 2


# --------------------------------------------------------------------------- supervisor


def _python_child(code: str) -> list[str]:
    """A child argv for a supervisor whose command is plain Python."""
    return ["-c", code]


def _supervisor(tmp_path: Path, grace: float = 10.0) -> Supervisor:
    sup = Supervisor(tmp_path, grace=grace)
    sup.command = [sys.executable]
    return sup


def test_supervisor_restarts_a_killed_child_and_stops_it(tmp_path):
    async def main() -> None:
        sup = _supervisor(tmp_path)
        child = sup.start(ChildSpec("c1", "pool", _python_child("import time; time.sleep(60)")))
        assert await sup.wait_ready("c1", 5)
        first = child.pid
        assert first is not None
        doc = json.loads((tmp_path / "run" / "c1.pid").read_text())
        assert doc["pid"] == first and doc["argv"][-1] == "import time; time.sleep(60)"
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while (child.pid in (None, first)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert child.pid not in (None, first), child.info()
        assert child.last_exit is not None and child.last_exit["signal"] == "SIGKILL"
        assert child.info()["restarts"] == 1
        second = child.pid
        await sup.stop_all()
        assert (
            not Path(f"/proc/{second}").exists() or "Z" in Path(f"/proc/{second}/stat").read_text()
        )
        assert not (tmp_path / "run" / "c1.pid").exists()
        assert "c1" not in sup.children

    asyncio.run(main())


def test_supervisor_kills_a_child_that_ignores_sigterm(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"

    async def main() -> float:
        sup = _supervisor(tmp_path, grace=0.5)
        child = sup.start(ChildSpec("stubborn", "volume", _python_child(code)))
        await sup.wait_ready("stubborn", 5)
        await asyncio.sleep(0.3)  # let it install its handler
        pid = child.pid
        t = time.monotonic()
        await sup.stop("stubborn")
        assert child.proc is not None and child.proc.returncode == -signal.SIGKILL, pid
        return time.monotonic() - t

    took = asyncio.run(main())
    assert 0.4 < took < 5


def test_supervisor_stops_stale_children_by_their_pid_file(tmp_path):
    """A child left by an agent that died (its pid file still there) is stopped; a pid
    file whose process now runs something else is left alone."""
    sup = _supervisor(tmp_path)
    stale = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)  # fmt: skip
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / "run" / "pool-a.pid").write_text(
            json.dumps(
                {"pid": stale.pid, "argv": [sys.executable, "-c", "import time; time.sleep(60)"]}
            )
        )
        (tmp_path / "run" / "pool-b.pid").write_text(
            json.dumps({"pid": other.pid, "argv": [sys.executable, "-m", "cairn.cli.main"]})
        )
        (tmp_path / "run" / "junk.pid").write_text("not json")
        stopped = asyncio.run(sup.stop_stale())
        assert stopped == ["pool-a"]
        assert stale.wait(5) == -signal.SIGTERM
        assert other.poll() is None
        assert list((tmp_path / "run").iterdir()) == []
    finally:
        for p in (stale, other):
            p.kill()
            p.wait()
