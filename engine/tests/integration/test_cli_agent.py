"""The operator commands (``cairn pool|volume|replica|snapshot|clone ...``) against real
node agents, through the ``cairn`` executable: tables, ``--json`` against the API, and
the exit codes (docs/operations.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .agent_node import AgentNode, wait_for
from .conftest import find_cairn, free_port
from .test_agent import qemu_io

pytestmark = pytest.mark.integration


class Cli:
    def __init__(self, root: Path) -> None:
        self.nodes = [
            AgentNode(root, f"node-{c}", f"127.0.0.{50 + i}") for i, c in enumerate("xyz")
        ]
        for n in self.nodes:
            n.peers = {m.name: m.url for m in self.nodes if m is not n}
        self.bad_token = root / "bad-token"
        self.bad_token.write_text("not-the-token-0123456789\n")

    def run(self, *argv: str, node: int = 0, expect: int | None = 0, token: Path | None = None):
        n = self.nodes[node]
        cmd = [find_cairn(), *argv, "--api", n.url, "--token-file", str(token or n.token_file)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        if expect is not None:
            assert done.returncode == expect, (cmd, done.returncode, done.stdout, done.stderr)
        return done

    def out(self, *argv: str, node: int = 0) -> str:
        return str(self.run(*argv, node=node).stdout)

    def json(self, *argv: str, node: int = 0) -> Any:
        return json.loads(self.run(*argv, "--json", node=node).stdout)

    def report(self) -> str:
        return "\n".join(n.report() for n in self.nodes)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    if shutil.which("qemu-io") is None:
        pytest.fail("qemu-io is not installed (scripts/install.sh installs qemu-utils)")
    c = Cli(tmp_path_factory.mktemp("cli"))
    try:
        for n in c.nodes:
            n.start()
        yield c
    finally:
        for n in c.nodes:
            n.cleanup()


def stable(doc: Any) -> Any:
    """``doc`` without what changes from one answer to the next (uptime, free bytes)."""
    if isinstance(doc, list):
        return [stable(d) for d in doc]
    if isinstance(doc, dict):
        return {k: stable(v) for k, v in doc.items() if k not in ("uptime_s", "capacity")}
    return doc


def healthy(cli: Cli, name: str, replicas: int) -> dict[str, Any]:
    def ok() -> Any:
        st = cli.nodes[0].call("GET", f"/v1/volumes/{name}/status")
        good = st["state"] == "healthy" and all(r["state"] == "healthy" for r in st["replicas"])
        return st if good and len(st["replicas"]) == replicas else None

    return wait_for(ok, 90, f"{name} healthy with {replicas} replicas", cli.report)


def test_pools(cli: Cli) -> None:
    for i, n in enumerate(cli.nodes):
        listen = f"{n.address}:{free_port(n.address)}"
        out = cli.out("pool", "create", "p1", "--listen", listen, node=i)
        assert f"pool {n.name}/p1" in out and listen in out, out
    table = cli.out("pool", "list")
    assert "p1" in table and "node-x" in table and "embedded" in table and "running" in table
    assert stable(cli.json("pool", "list")) == stable(cli.nodes[0].call("GET", "/v1/pools"))
    shown = cli.json("pool", "show", "p1", node=1)
    assert shown["name"] == "p1" and shown["node"] == "node-y"
    assert "FIELD" in cli.out("pool", "show", "p1")

    # not found, conflict, usage, bad token, unreachable
    assert "no pool" in cli.run("pool", "show", "nope", expect=3).stderr
    assert "exists" in cli.run("pool", "create", "p1", expect=4).stderr
    assert "--yes" in cli.run("pool", "delete", "p1", expect=2).stderr
    assert cli.run("pool", "create", "bad", "--path", "relative", expect=2).returncode == 2
    cli.run("pool", "list", expect=5, token=cli.bad_token)
    cli.run("pool", "list", expect=5, token=cli.bad_token.parent / "missing")
    cli.run("pool", "list", expect=5, token=cli.nodes[0].config)  # not one line
    dead = [find_cairn(), "pool", "list", "--api", f"http://127.0.0.1:{free_port()}",
            "--token-file", str(cli.nodes[0].token_file)]  # fmt: skip
    assert subprocess.run(dead, capture_output=True, timeout=60).returncode == 5
    assert subprocess.run([find_cairn(), "pool", "list", "--bogus"]).returncode == 2

    # a pool that is created then deleted
    cli.out("pool", "create", "tmp", "--listen", f"127.0.0.50:{free_port('127.0.0.50')}")
    assert "deleted pool tmp" in cli.out("pool", "delete", "tmp", "--yes")
    assert [p["name"] for p in cli.json("pool", "list")] == ["p1"]


def readcapacity16(url: str) -> int:
    done = subprocess.run(["iscsi-readcapacity16", "-s", url], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def test_volumes_snapshots_clones(cli: Cli) -> None:
    portal = f"127.0.0.1:{free_port()}"
    out = cli.out("volume", "create", "vol", "--size", "16M", "--portal", portal,
                  "--replica", "node-x/p1", "--replica", "node-y/p1")  # fmt: skip
    assert "created volume vol" in out and "node-y/p1" in out, out
    url = f"iscsi://{portal}/iqn.2026-11.io.cairn:vol/0"
    assert url in out
    healthy(cli, "vol", 2)
    qemu_io("write -P 33 0 64k", url=url)

    table = cli.out("volume", "list")
    assert "vol" in table and "16.0 MiB" in table and "node-x/p1, node-y/p1" in table
    listed = cli.json("volume", "list")
    assert stable(listed) == stable(cli.nodes[0].call("GET", "/v1/volumes"))
    assert [v["name"] for v in listed] == ["vol"]
    shown = cli.out("volume", "show", "vol")
    assert "healthy" in shown and url in shown and "node-y/p1" in shown, shown
    assert cli.json("volume", "show", "vol")["replicas"] == ["node-x/p1", "node-y/p1"]
    assert "no volume" in cli.run("volume", "show", "nope", expect=3).stderr
    assert "exists" in cli.run("volume", "create", "vol", "--size", "16M", "--replica",
                               "node-x/p1", expect=4).stderr  # fmt: skip
    cli.run("volume", "create", "v2", "--size", "16M", "--replica", "node-x/p1",
            "--replica", "node-x/p1", expect=2)  # fmt: skip
    cli.run("volume", "create", "v2", "--size", "16M", "--replica", "node-q/p1", expect=3)

    # the old target-API commands still work beside the new ones
    port = cli.nodes[0].call("GET", "/v1/volumes/vol")["status_port"]
    old = subprocess.run([find_cairn(), "volume", "status", "--target", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert old.returncode == 0 and "volume vol: healthy" in old.stdout, old

    # replica add (rebuild), watch until healthy, remove
    out = cli.out("replica", "add", "vol", "node-z/p1")
    assert "node-z/p1" in out
    assert "4" == str(cli.run("replica", "add", "vol", "node-z/p1", expect=4).returncode)
    done = cli.run("volume", "watch", "vol", "--interval", "0.2", "--timeout", "120")
    assert "volume vol: healthy" in done.stdout, done.stdout
    healthy(cli, "vol", 3)
    once = cli.out("volume", "watch", "vol", "--once")
    assert once.startswith("volume vol: healthy") and once.count("healthy") == 4, once
    assert cli.json("volume", "watch", "vol", "--once")["state"] == "healthy"
    cli.run("volume", "watch", "nope", "--once", expect=3)
    assert cli.json("pool", "show", "p1", node=1)["volumes"] == ["vol"]
    out = cli.out("replica", "remove", "vol", "node-y/p1")
    assert "removed node-y/p1" in out and "node-x/p1, node-z/p1" in out, out
    cli.run("replica", "remove", "vol", "node-y/p1", expect=3)
    healthy(cli, "vol", 2)
    # the removed replica's data is deleted from its pool
    assert cli.json("pool", "show", "p1", node=1)["volumes"] == []
    assert "volumes" in cli.out("pool", "show", "p1", node=1)

    # grow while QEMU's iSCSI driver (libiscsi) is logged in: it is told by a Unit Attention,
    # CAPACITY DATA HAS CHANGED, and iscsi-readcapacity16 reads the new size
    assert readcapacity16(url) == 16 << 20
    pipe = subprocess.PIPE
    connected = subprocess.Popen(["qemu-io", "-f", "raw", url], stdin=pipe, stdout=pipe,
                                 stderr=pipe, text=True)  # fmt: skip
    assert connected.stdin is not None and connected.stdout is not None
    connected.stdin.write("read -P 33 0 4k\n")
    connected.stdin.flush()
    assert "read 4096/4096 bytes" in connected.stdout.readline()  # logged in, read done
    assert "now 24.0 MiB" in cli.out("volume", "grow", "vol", "--size", "24M")
    assert cli.json("volume", "show", "vol")["size"] == 24 << 20
    out, err = connected.communicate("read -P 33 0 4k\nquit\n", timeout=60)
    assert out.count("read 4096/4096 bytes") == 1 and "Pattern verification failed" not in out
    assert "UNIT_ATTENTION" in err and "CAPACITY_DATA_HAS_CHANGED" in err, err
    assert readcapacity16(url) == 24 << 20
    cli.run("volume", "grow", "vol", "--size", "16M", expect=2)

    # snapshots
    out = cli.out("snapshot", "create", "vol", "s1")
    assert "snapshot vol@s1" in out, out
    cli.run("snapshot", "create", "vol", "s1", expect=4)
    listing = cli.out("snapshot", "list", "vol")
    assert "s1" in listing and "CREATED" in listing, listing
    assert cli.json("snapshot", "list", "vol") == cli.nodes[0].call(
        "GET", "/v1/volumes/vol/snapshots"
    )
    qemu_io("write -P 34 0 64k", url=url)

    # clone
    cportal = f"127.0.0.1:{free_port()}"
    out = cli.out("clone", "create", "vol", "s1", "c1", "--portal", cportal)
    assert "created volume c1 from vol@s1" in out, out
    clone = cli.json("volume", "show", "c1")
    assert clone["origin"] == {"volume": "vol", "snapshot": "s1"}
    healthy(cli, "c1", 2)
    qemu_io("read -P 33 0 64k", url=f"iscsi://{cportal}/iqn.2026-11.io.cairn:c1/0")
    cli.run("clone", "create", "vol", "nosuch", "c2", expect=3)

    # rollback: --yes, then the snapshot's data is back
    cli.run("snapshot", "rollback", "vol", "s1", expect=2)
    assert "rolled vol back to s1" in cli.out("snapshot", "rollback", "vol", "s1", "--yes")
    qemu_io("read -P 33 0 64k", url=url)

    # deletes: --yes; a snapshot a clone depends on is a conflict
    cli.run("snapshot", "delete", "vol", "s1", expect=2)
    cli.run("snapshot", "delete", "vol", "s1", "--yes", expect=4)
    cli.run("volume", "delete", "c1", expect=2)
    said = cli.run("volume", "delete", "vol", "--yes", expect=4).stderr
    assert "clones c1" in said, said  # the clone depends on vol@s1
    assert sorted(cli.json("pool", "show", "p1")["volumes"]) == ["c1", "vol"]
    # the pool holds replicas: deleting it is a conflict
    cli.run("pool", "delete", "p1", "--yes", expect=4)
    # a replica of vol removed from a pool that holds the clone: its data goes, the
    # clone keeps what it needs of vol@s1 there
    done = cli.run("replica", "remove", "vol", "node-z/p1")
    assert "warning" not in done.stderr, done.stderr
    assert cli.json("pool", "show", "p1", node=2)["volumes"] == ["c1"]
    qemu_io("read -P 33 0 64k", url=f"iscsi://{cportal}/iqn.2026-11.io.cairn:c1/0")
    # forced: vol goes, the clone keeps what it needs and still reads vol@s1's data
    assert "deleted volume vol" in cli.out("volume", "delete", "vol", "--yes", "--force")
    assert [v["name"] for v in cli.json("volume", "list")] == ["c1"]
    qemu_io("read -P 33 0 64k", url=f"iscsi://{cportal}/iqn.2026-11.io.cairn:c1/0")
    assert "deleted volume c1" in cli.out("volume", "delete", "c1", "--yes")
    cli.run("volume", "delete", "c1", "--yes", expect=3)
    assert cli.json("volume", "list") == []
    for node in (0, 2):  # nothing of either is left on their pools
        assert cli.json("pool", "show", "p1", node=node)["volumes"] == []
