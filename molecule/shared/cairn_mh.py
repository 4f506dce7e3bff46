"""What the scenarios' testinfra tests share: the scenario's hosts (testinfra hosts from
the scenario's inventory), the node agents' API, ZFS status, and I/O through libiscsi
from the client host (qemu-io and qemu-img speak iSCSI themselves, no kernel initiator)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import testinfra

SHARED = Path(__file__).resolve().parent
CAIRN = "/opt/cairn/venv/bin/cairn"
IQN_PREFIX = "iqn.2026-11.io.cairn"


def inventory_of(config: Any, scenario_dir: Path) -> str:
    """molecule passes the scenario's inventory as --ansible-inventory."""
    return getattr(config.option, "ansible_inventory", None) or str(
        scenario_dir / "inventory"
    )


class Scenario:
    """The hosts of one scenario, as testinfra hosts, with their inventory variables."""

    def __init__(self, inventory: str) -> None:
        self.inventory = inventory
        self._hosts: dict[str, Any] = {}
        self._vars: dict[str, dict[str, Any]] = {}
        out = subprocess.run(
            ["ansible-inventory", "-i", inventory, "--list"],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout  # fmt: skip
        doc = json.loads(out)
        self.groups = {
            g: list(v.get("hosts", [])) for g, v in doc.items() if isinstance(v, dict)
        }
        self.hostvars = doc.get("_meta", {}).get("hostvars", {})

    def host(self, name: str) -> Any:
        if name not in self._hosts:
            self._hosts[name] = testinfra.get_host(
                f"ansible://{name}", ansible_inventory=self.inventory
            )
        return self._hosts[name]

    def address(self, name: str) -> str:
        return str(self.hostvars[name]["ansible_host"])

    def api_url(self, name: str) -> str:
        return f"http://{self.address(name)}:6060"

    def token(self) -> str:
        first = self.groups["cairn_storage"][0]
        return str(self.host(first).file("/etc/cairn/token").content_string.strip())

    def api(self, name: str, path: str, timeout: float = 10) -> Any:
        """GET PATH from the node agent of host NAME, from this machine over the internal
        network, with the cluster's token."""
        req = urllib.request.Request(
            self.api_url(name) + path,
            headers={"Authorization": f"Bearer {self.token()}"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def volume_show(self, target_host: str, volume: str) -> dict[str, Any]:
        """`cairn volume show --json` run on the target host against its own agent."""
        h = self.host(target_host)
        cmd = h.run(
            "%s volume show --json --api %s %s",
            CAIRN,
            self.api_url(target_host),
            volume,
        )
        assert cmd.rc == 0, f"cairn volume show {volume} on {target_host}: {cmd.stderr}"
        return dict(json.loads(cmd.stdout))

    def volume_status(self, target_host: str, volume: str) -> dict[str, Any]:
        return dict(self.api(target_host, f"/v1/volumes/{volume}/status"))


def wait_for(
    what: str, check: Callable[[], Any], timeout: float, interval: float = 2
) -> Any:
    """Call CHECK until it returns something true; fail with WHAT and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (OSError, urllib.error.URLError, ValueError, AssertionError) as e:
            last = f"{type(e).__name__}: {e}"
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {timeout:.0f} s; last seen: {last}"
            )
        time.sleep(interval)


# ---- ZFS -------------------------------------------------------------------------------


def zpool_status(host: Any, pool: str) -> dict[str, Any]:
    """`zpool status POOL` parsed: the pool's state and its top-level data vdevs as
    {"kind": mirror|raidz1|raidz2|disk, "state", "devices": [(path, state)]}."""
    cmd = host.run("zpool status %s", pool)
    assert cmd.rc == 0, f"zpool status {pool}: {cmd.stderr}"
    state = re.search(r"^\s*state:\s*(\S+)", cmd.stdout, re.MULTILINE)
    groups: list[dict[str, Any]] = []
    in_config = False
    pool_indent = None
    for line in cmd.stdout.splitlines():
        if re.match(r"^\s*NAME\s+STATE", line):
            in_config = True
            continue
        if not in_config:
            continue
        if not line.strip() or line.strip().startswith("errors:"):
            break
        indent = len(line) - len(line.lstrip())
        name, vstate = line.split()[:2]
        if pool_indent is None:  # the pool's own line
            pool_indent = indent
            continue
        if indent == pool_indent + 2:  # a top-level vdev
            m = re.match(r"(mirror|raidz[123]?)(-\d+)?$", name)
            kind = m.group(1) if m else "disk"
            if kind == "raidz":
                kind = "raidz1"
            groups.append({"kind": kind, "state": vstate, "devices": []})
            if kind == "disk":
                groups[-1]["devices"].append((name, vstate))
        elif indent > pool_indent + 2 and groups:
            groups[-1]["devices"].append((name, vstate))
    return {
        "state": state.group(1) if state else None,
        "groups": groups,
        "text": cmd.stdout,
    }


# ---- I/O from the client ---------------------------------------------------------------


def iscsi_url(portal: str, volume: str) -> str:
    return f"iscsi://{portal}/{IQN_PREFIX}:{volume}/0"


def raw_opts(portal: str, volume: str, offset: int, size: int) -> str:
    """A qemu --image-opts string for the region [OFFSET, OFFSET+SIZE) of the LUN."""
    host, port = portal.rsplit(":", 1)
    return (
        f"driver=raw,offset={offset},size={size},file.driver=iscsi,file.transport=tcp,"
        f"file.portal={host}:{port},file.target={IQN_PREFIX}:{volume},file.lun=0"
    )


def qemu_io(client: Any, portal: str, volume: str, *commands: str) -> Any:
    """Run qemu-io on the client with COMMANDS against the volume; the testinfra result."""
    args = " ".join(f"-c '{c}'" for c in commands)
    return client.run(f"qemu-io -f raw {args} {iscsi_url(portal, volume)}")


def write_random_region(
    client: Any, portal: str, volume: str, offset: int, size: int
) -> str:
    """Write SIZE random bytes at OFFSET through qemu-img (libiscsi); their sha256."""
    src = f"/root/region-{offset}.bin"
    cmd = client.run(
        f"head -c {size} /dev/urandom > {src} && qemu-img convert -n -f raw {src} "
        f"--target-image-opts '{raw_opts(portal, volume, offset, size)}' && sha256sum {src}"
    )
    assert cmd.rc == 0, f"write {size} bytes at {offset}: {cmd.stdout}{cmd.stderr}"
    return str(cmd.stdout.split()[0])


def read_region_sha256(
    client: Any, portal: str, volume: str, offset: int, size: int
) -> str:
    """Read SIZE bytes at OFFSET back through qemu-img (a new iSCSI session); their sha256."""
    dst = f"/root/back-{offset}.bin"
    cmd = client.run(
        f"rm -f {dst} && qemu-img convert --image-opts '{raw_opts(portal, volume, offset, size)}' "
        f"-O raw {dst} && sha256sum {dst}"
    )
    assert cmd.rc == 0, f"read {size} bytes at {offset}: {cmd.stdout}{cmd.stderr}"
    return str(cmd.stdout.split()[0])
