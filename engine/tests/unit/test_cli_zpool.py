"""``cairn zpool``: argument handling, exit codes, JSON documents and ``--check``, against a
fake ``zpool`` (a script that prints a captured zfs-fuse ``zpool status`` and logs every
call).  The real thing runs in engine/tests/zfs/test_cli_zpool.py."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from cairn.cli import zpool as cli
from cairn.cli.main import main
from cairn.zfs import DeviceRefused, LayoutError, PoolInUse, PoolNotFound, ZfsError

FAKE_ZPOOL = r'''
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ZPOOL_LOG"], "a") as log:
    log.write(" ".join(args) + "\n")
A, B = os.environ["FAKE_A"], os.environ["FAKE_B"]
STATUS = f"""  pool: tank
 state: ONLINE
 scrub: none requested
config:

\tNAME        STATE     READ WRITE CKSUM
\ttank        ONLINE       0     0     0
\t  mirror-0  ONLINE       0     0     0
\t    {A}  ONLINE       0     0     0
\t    {B}  ONLINE       0     0     0

errors: No known data errors
"""
if args[0] == "status":
    if args[-1] != "tank":
        sys.exit(print(f"cannot open '{args[-1]}': no such pool", file=sys.stderr) or 1)
    print(STATUS)
elif args[0] == "list":
    if "-p" in args:
        sys.exit(print("invalid option 'p'", file=sys.stderr) or 2)
    print("tank" if args[-1] == "name" else "tank\t123M\t544K\t122M\tONLINE")
elif args[0] == "get":
    if "-H" in args:
        sys.exit(print("bad property list: invalid property '-H'", file=sys.stderr) or 2)
    print("NAME  PROPERTY     VALUE   SOURCE")
    print("tank  autoreplace  off     default")
    print("tank  failmode     wait    default")
elif args[0] == "import":
    print("   pool: tank2\n     id: 1\n  state: ONLINE")
elif args[0] == "create" and "fail" in args:
    sys.exit(print("cannot create 'fail': I/O error", file=sys.stderr) or 1)
'''


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    script = tmp_path / "zpool"
    script.write_text(f"#!{sys.executable}\n{FAKE_ZPOOL}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    log.touch()
    devices = {}
    for name in ("a", "b", "c", "d", "e"):
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(64 << 20)
        devices[name] = str(path)
    monkeypatch.setenv("FAKE_ZPOOL_LOG", str(log))
    monkeypatch.setenv("FAKE_A", devices["a"])
    monkeypatch.setenv("FAKE_B", devices["b"])
    return {"zpool": str(script), "log": str(log), **devices}


def calls(fake: dict[str, str]) -> list[list[str]]:
    return [line.split() for line in Path(fake["log"]).read_text().splitlines()]


def mutating(fake: dict[str, str]) -> list[list[str]]:
    """The calls that change something (``import`` without a pool name only lists)."""
    return [
        c
        for c in calls(fake)
        if c[0] in cli.MUTATING_ZPOOL and not (c[0] == "import" and (len(c) == 1 or c[-2] == "-d"))
    ]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cairn")
    cli.add_parser(parser.add_subparsers(dest="group"))
    return parser.parse_args(["zpool", *argv])


def run_json(
    fake: dict[str, str], capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, dict]:
    code = cli.run(parse(*argv, "--json", "--zpool-bin", fake["zpool"]))
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_layout_arguments() -> None:
    args = parse("create", "tank", "--layout", "mirror", "--vdev", "/a", "/b", "--vdev", "/c")
    assert args.action == "create" and args.vdev == ["/a", "/b", "/c"] and args.group == []
    args = parse(
        "add",
        "tank",
        "--layout",
        "raidz1",
        "--group",
        "/a",
        "/b",
        "/c",
        "--group",
        "/d",
        "/e",
        "/f",
    )
    assert args.group == [["/a", "/b", "/c"], ["/d", "/e", "/f"]]
    assert cli.request_groups(args) == [["/a", "/b", "/c"], ["/d", "/e", "/f"]]
    args = parse(
        "create",
        "t",
        "--layout",
        "stripe",
        "--vdev",
        "/a",
        "/b",
        "--property",
        "autoreplace=on",
        "--property",
        "comment=a=b",
    )
    assert cli.request_groups(args) == [["/a"], ["/b"]]
    assert args.property == [("autoreplace", "on"), ("comment", "a=b")]
    both = parse("create", "t", "--layout", "mirror", "--vdev", "/a", "/b", "--group", "/c", "/d")
    with pytest.raises(LayoutError, match="not both"):
        cli.request_groups(both)
    with pytest.raises(LayoutError, match="at least 4 devices"):
        cli.request_groups(parse("create", "t", "--layout", "raidz2", "--vdev", "/a", "/b", "/c"))


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "t", "--layout", "raid5", "--vdev", "/a"],
        ["create", "t", "--vdev", "/a"],  # --layout is required
        ["set", "t", "--property", "noequals"],
        ["set", "t", "--property", "=on"],
        ["set", "t"],
        ["replace", "t", "/a"],
        ["frobnicate", "t"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (LayoutError("bad layout"), cli.EXIT_USAGE),
        (PoolNotFound("no pool"), cli.EXIT_NOT_FOUND),
        (DeviceRefused("/dev/sdb holds an ext4 filesystem"), cli.EXIT_REFUSED),
        (PoolInUse("holds datasets"), cli.EXIT_REFUSED),
        (ZfsError("zpool failed", argv=["zpool", "add"], returncode=1), cli.EXIT_FAILED),
    ],
)
def test_errors_map_to_exit_codes(
    error: Exception, code: int, fake: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    class Failing(cli.Pools):
        def expand(self, *a: object, **kw: object) -> cli.Result:
            raise error

    args = parse(
        "add",
        "tank",
        "--layout",
        "mirror",
        "--vdev",
        fake["c"],
        fake["d"],
        "--json",
        "--zpool-bin",
        fake["zpool"],
    )
    assert cli.run(args, make_pools=Failing) == code
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc == {"error": str(error), "kind": type(error).__name__, "exit_code": code}
    assert str(error) in captured.err


def test_status_json_and_not_imported(
    fake: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = run_json(fake, capsys, "status", "tank")
    assert code == 0
    assert doc["imported"] and doc["health"] == "ONLINE" and doc["layout"] == "mirror"
    assert doc["groups"] == [{"layout": "mirror", "devices": [fake["a"], fake["b"]]}]
    assert doc["properties"] == {"autoreplace": "off", "failmode": "wait"}
    assert doc["size"] == 123 << 20 and doc["sizes_exact"] is False
    assert doc["resilver"]["in_progress"] is False
    code, doc = run_json(fake, capsys, "status", "nope")
    assert code == cli.EXIT_NOT_FOUND and doc == {"name": "nope", "imported": False}


def test_check_runs_nothing_that_changes(
    fake: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = run_json(
        fake, capsys, "add", "tank", "--layout", "mirror", "--vdev", fake["c"], fake["d"], "--check"
    )
    assert code == 0 and doc["changed"] and doc["check"]
    assert doc["commands"] == [[fake["zpool"], "add", "tank", "mirror", fake["c"], fake["d"]]]
    assert doc["before"]["groups"] == [{"layout": "mirror", "devices": [fake["a"], fake["b"]]}]
    assert doc["after"]["groups"][1] == {"layout": "mirror", "devices": [fake["c"], fake["d"]]}
    code, doc = run_json(
        fake,
        capsys,
        "create",
        "new",
        "--layout",
        "raidz1",
        "--vdev",
        fake["c"],
        fake["d"],
        fake["e"],
        "--property",
        "autoreplace=on",
        "--check",
    )
    assert code == 0 and doc["changed"]
    assert doc["before"] == {"imported": False}
    assert doc["after"]["layout"] == "raidz1"
    assert doc["after"]["properties"] == {"autoreplace": "on"}
    code, doc = run_json(fake, capsys, "replace", "tank", fake["a"], fake["e"], "--check")
    assert code == 0 and doc["changed"]
    assert doc["after"]["groups"][0]["devices"] == [fake["e"], fake["b"]]
    code, doc = run_json(
        fake,
        capsys,
        "set",
        "tank",
        "--property",
        "autoreplace=on",
        "--property",
        "failmode=wait",
        "--check",
    )
    assert doc["changed"] and doc["commands"] == [[fake["zpool"], "set", "autoreplace=on", "tank"]]
    assert doc["before"]["properties"] == {"autoreplace": "off", "failmode": "wait"}
    assert doc["after"]["properties"] == {"autoreplace": "on", "failmode": "wait"}
    code, doc = run_json(fake, capsys, "export", "tank", "--check")
    assert doc["changed"] and doc["after"] == {"imported": False}
    code, doc = run_json(fake, capsys, "import", "tank2", "--dir", "/srv", "--check")
    assert doc["changed"] and doc["commands"][-1][-1] == "tank2"
    assert mutating(fake) == []


def test_no_change_when_already_so(
    fake: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = run_json(
        fake,
        capsys,
        "create",
        "tank",
        "--layout",
        "mirror",
        "--vdev",
        fake["a"],
        fake["b"],
        "--property",
        "failmode=wait",
    )
    assert code == 0 and not doc["changed"] and doc["commands"] == []
    assert doc["before"] == doc["after"]
    code, doc = run_json(fake, capsys, "replace", "tank", fake["c"], fake["a"])
    assert not doc["changed"] and "already replaced" in doc["message"]
    code, doc = run_json(fake, capsys, "import", "tank")
    assert not doc["changed"]
    code, doc = run_json(fake, capsys, "destroy", "gone")
    assert code == 0 and not doc["changed"]
    assert mutating(fake) == []


def test_refusals(fake: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(fake, capsys, "destroy", "tank")
    assert code == cli.EXIT_REFUSED and "--confirm tank" in doc["error"]
    code, doc = run_json(fake, capsys, "destroy", "tank", "--confirm", "other")
    assert code == cli.EXIT_REFUSED
    code, doc = run_json(
        fake,
        capsys,
        "create",
        "tank",
        "--layout",
        "raidz1",
        "--vdev",
        fake["c"],
        fake["d"],
        fake["e"],
    )
    assert code == cli.EXIT_USAGE and "does not match" in doc["error"]
    code, doc = run_json(
        fake, capsys, "add", "tank", "--layout", "mirror", "--vdev", fake["a"], fake["c"]
    )
    assert code == cli.EXIT_REFUSED and "already in pool 'tank'" in doc["error"]
    code, doc = run_json(fake, capsys, "set", "nope", "--property", "autoreplace=on")
    assert code == cli.EXIT_NOT_FOUND
    code, doc = run_json(fake, capsys, "import", "nope", "--dir", "/srv")
    assert code == cli.EXIT_NOT_FOUND and "found in /srv" in doc["error"]
    Path(fake["e"]).write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * 512)
    os.truncate(fake["e"], 64 << 20)
    code, doc = run_json(fake, capsys, "replace", "tank", fake["a"], fake["e"])
    assert code == cli.EXIT_REFUSED and "MBR" in doc["error"] and "force" in doc["error"]
    code, doc = run_json(fake, capsys, "create", "fail", "--layout", "stripe", "--vdev", fake["c"])
    assert code == cli.EXIT_FAILED and "I/O error" in doc["error"]
    assert mutating(fake) == [["create", "fail", fake["c"]]]


def test_through_cairn_main(fake: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zpool", "status", "tank", "--json", "--zpool-bin", fake["zpool"]]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tank"
    with pytest.raises(SystemExit) as exc:
        main(["zpool", "status", "tank", "--zpool-bin", fake["zpool"], "--bogus"])
    assert exc.value.code == 2


def test_parse_properties() -> None:
    tabbed = "autoreplace\ton\ncomment\ta b c\n"
    assert cli.parse_properties(tabbed, tabbed=True) == {"autoreplace": "on", "comment": "a b c"}
    table = "NAME  PROPERTY  VALUE  SOURCE\ntank  comment   a b    local\ntank  size  123M  -\n"
    assert cli.parse_properties(table, tabbed=False) == {"comment": "a b", "size": "123M"}
