"""The Vagrant lab (Vagrantfile, lab/inventory.rb, playbooks/lab.yml, docs/lab.md) without
booting anything: ``vagrant validate`` with the libvirt provider (vagrant-libvirt) and the
VirtualBox provider, and the inventory the Vagrantfile generates checked with Ansible's own
tools against what site.yml and its roles expect: the groups and per-host variables
(``ansible-inventory``), ``ansible-playbook --syntax-check``/``--list-hosts``/
``--list-tasks``, the roles' argument specs (``ArgumentSpecValidator``) and the replica
placement of the volume role (the ``place_replicas`` filter)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from .ansible_run import ansible_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PROVIDERS = ("libvirt", "virtualbox")
STORAGE = ["storage1", "storage2", "storage3"]


def tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    which = shutil.which(name)
    if which is None:
        pytest.fail(f"{name} is not installed (pip install ansible-core)")
    return which


def run(argv: list[str], env: dict[str, str], timeout: float = 60) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)}: exit {done.returncode}\n{out}"
    return done.stdout


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventory_dir = root / "inventory"
        # Vagrant keeps its home (plugins' data, boxes) and the project's .vagrant
        # (machines, the generated inventory) here, not in the checkout or ~
        self.env = ansible_env(
            root,
            VAGRANT_HOME=str(root / "vagrant-home"),
            VAGRANT_DOTFILE_PATH=str(root / "dot-vagrant"),
            VAGRANT_CHECKPOINT_DISABLE="1",
            CAIRN_LAB_INVENTORY_DIR=str(self.inventory_dir),
        )
        for knob in [
            k for k in self.env if k.startswith("CAIRN_LAB_") and k != "CAIRN_LAB_INVENTORY_DIR"
        ]:
            del self.env[knob]  # the defaults are what is checked

    def inventory(self, provider: str) -> Path:
        return self.inventory_dir / f"{provider}.yml"

    def ansible_inventory(self, provider: str) -> dict[str, Any]:
        argv = [tool("ansible-inventory"), "-i", str(self.inventory(provider)), "--list"]
        return json.loads(run(argv, self.env))  # type: ignore[no-any-return]

    def machines(self) -> list[dict[str, Any]]:
        out = run(["ruby", str(REPO / "lab" / "inventory.rb"), "--machines"], self.env)
        return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if shutil.which("vagrant") is None:
        pytest.fail(
            "vagrant is not installed: scripts/install.sh installs it "
            "(apt-get install --no-install-recommends vagrant vagrant-libvirt)"
        )
    yield Lab(tmp_path_factory.mktemp("vagrant-lab"))


def test_vagrant_validate_libvirt_writes_the_inventory(lab: Lab) -> None:
    env = dict(lab.env, VAGRANT_DEFAULT_PROVIDER="libvirt")
    out = run(["vagrant", "validate"], env, timeout=120)
    assert "Vagrantfile validated successfully." in out, out
    for provider in PROVIDERS:
        written = lab.inventory(provider).read_text()
        printed = run(["ruby", str(REPO / "lab" / "inventory.rb"), provider], lab.env)
        assert written == printed, f"{provider}: the Vagrantfile and lab/inventory.rb differ"


def test_vagrant_validate_virtualbox(lab: Lab) -> None:
    # VirtualBox is not installed here: a stand-in VBoxManage answers the version check
    # (the only call `vagrant validate` makes), so that Vagrant's VirtualBox plugin
    # validates the virtualbox block and the disks; nothing else is asked of it.
    fake = lab.root / "fake-vbox"
    fake.mkdir(exist_ok=True)
    log = fake / "calls"
    vbox = fake / "VBoxManage"
    vbox.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" = --version ] && echo 7.0.20r163906\nexit 0\n'
    )
    vbox.chmod(0o755)
    env = dict(lab.env, VAGRANT_DEFAULT_PROVIDER="virtualbox", PATH=f"{fake}:{lab.env['PATH']}")
    out = run(["vagrant", "validate"], env, timeout=120)
    assert "Vagrantfile validated successfully." in out, out
    assert log.read_text().split("\n")[0] == "--version"

    # the same check refuses a broken virtualbox block: the test can fail
    broken = lab.root / "broken"
    broken.mkdir(exist_ok=True)
    text = (REPO / "Vagrantfile").read_text()
    text = text.replace('require_relative "lab/inventory"', f'require "{REPO}/lab/inventory"')
    text = text.replace(
        'vb.cpus = m["cpus"]', 'vb.cpus = m["cpus"]\n        vb.no_such_setting = 1'
    )
    assert "no_such_setting" in text
    (broken / "Vagrantfile").write_text(text)
    done = subprocess.run(["vagrant", "validate"], capture_output=True, text=True, cwd=broken,
                          env=dict(env, VAGRANT_CWD=str(broken)), timeout=120)  # fmt: skip
    assert done.returncode != 0 and "no_such_setting" in done.stdout + done.stderr, done


def test_inventory_has_the_groups_and_variables(lab: Lab) -> None:
    if not lab.inventory("libvirt").exists():
        run(["vagrant", "validate"], dict(lab.env, VAGRANT_DEFAULT_PROVIDER="libvirt"))
    machines = {m["name"]: m for m in lab.machines()}
    assert list(machines) == [*STORAGE, "client1"]
    ips = [m["ip"] for m in machines.values()]
    assert ips == ["192.168.56.11", "192.168.56.12", "192.168.56.13", "192.168.56.14"]
    for provider in PROVIDERS:
        inv = lab.ansible_inventory(provider)
        assert inv["cairn_storage"]["hosts"] == STORAGE
        assert inv["cairn_targets"]["hosts"] == ["storage1"]
        assert inv["cairn_initiators"]["hosts"] == ["client1"]
        hv = inv["_meta"]["hostvars"]
        for name, m in machines.items():
            assert hv[name]["cairn_address"] == m["ip"]
            assert "ansible_host" not in hv[name]  # Vagrant's own inventory says how to connect
        disks_seen: set[str] = set()
        for name in STORAGE:
            v = hv[name]
            assert v["cairn_zfs_implementation"] == "kernel"
            (pool,) = v["cairn_pools"]
            assert pool["backend"] == "zfs" and pool["layout"] == "mirror"
            assert pool["zpool"] == "tank" and pool["listen"] == f"{machines[name]['ip']}:3232"
            assert pool["vdevs"] == machines[name]["disks"][provider]
            assert len(pool["vdevs"]) == 2
            disks_seen.update(f"{name}:{d}" for d in pool["vdevs"])
            if provider == "libvirt":
                # the by-id names are those of the serials the Vagrantfile gives libvirt
                serials = machines[name]["serials"]
                assert pool["vdevs"] == [f"/dev/disk/by-id/virtio-{s}" for s in serials]
                assert all(len(s) <= 20 for s in serials)  # virtio's limit
            else:
                assert pool["vdevs"] == ["/dev/sdb", "/dev/sdc"]
        assert len(disks_seen) == 6
        (volume,) = hv["client1"]["cairn_volumes"]
        assert volume["name"] == "vol1" and volume["replicas"] == 3
        assert volume["target_host"] == "storage1"
        assert volume["portal"] == "192.168.56.11:3260"
        assert "allow_same_node" not in volume
        client = hv["client1"]
        assert client["cairn_initiator_volumes"] == ["vol1"]
        assert client["cairn_initiator_login"] is True
        assert client["cairn_initiator_wait"] is True
        assert volume["acl"] == [client["cairn_initiator_name"]]
        assert client["cairn_lab_mounts"] == [
            {"volume": "vol1", "path": "/mnt/cairn", "fstype": "ext4"}
        ]


def role_spec(role: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return doc["argument_specs"]["main"]["options"]  # type: ignore[no-any-return]


def to_argument_spec(options: dict[str, Any]) -> dict[str, Any]:
    """A role's argument spec (meta/argument_specs.yml) as an AnsibleModule argument_spec,
    the way ansible.builtin.validate_argument_spec reads it."""
    keep = ("type", "elements", "choices", "required", "options", "default", "no_log")
    spec: dict[str, Any] = {}
    for name, opt in options.items():
        entry = {k: v for k, v in opt.items() if k in keep}
        if isinstance(entry.get("options"), dict):
            entry["options"] = to_argument_spec(entry["options"])
        if entry.get("type") == "path":  # a path's default is a string as-is
            entry["type"] = "str"
        entry.pop("default", None)  # defaults are the roles' business, not the inventory's
        spec[name] = entry
    return spec


def validate(role: str, hostvars: dict[str, Any]) -> list[str]:
    spec = to_argument_spec(role_spec(role))
    params = {k: v for k, v in hostvars.items() if k in spec}
    assert params, f"no variable of role {role} in the inventory"
    result = ArgumentSpecValidator(spec).validate(params)
    return list(result.error_messages)


def test_roles_accept_the_variables(lab: Lab) -> None:
    if not lab.inventory("libvirt").exists():
        run(["vagrant", "validate"], dict(lab.env, VAGRANT_DEFAULT_PROVIDER="libvirt"))
    for provider in PROVIDERS:
        hv = lab.ansible_inventory(provider)["_meta"]["hostvars"]
        for name in STORAGE:
            for role in ("common", "zfs", "pool", "engine"):
                assert validate(role, hv[name]) == [], f"{provider} {name}: role {role}"
        assert validate("volume", hv["storage1"]) == []
        assert validate("iscsi_initiator", hv["client1"]) == []
        assert validate("common", hv["client1"]) == []

    # the same check refuses what the roles would refuse: the test can fail
    hv = lab.ansible_inventory("libvirt")["_meta"]["hostvars"]
    bad = json.loads(json.dumps(hv["storage1"]))
    bad["cairn_pools"][0]["layout"] = "mirrors"
    assert any("mirrors" in e for e in validate("zfs", bad))
    bad = json.loads(json.dumps(hv["storage1"]))
    del bad["cairn_volumes"][0]["size"]
    assert any("size" in e for e in validate("volume", bad))


def load_place_replicas() -> Any:
    path = REPO / "plugins" / "filter" / "place_replicas.py"
    spec = importlib.util.spec_from_file_location("cairn_place_replicas", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.place_replicas


def test_the_volume_role_places_three_replicas_on_three_vms(lab: Lab) -> None:
    if not lab.inventory("libvirt").exists():
        run(["vagrant", "validate"], dict(lab.env, VAGRANT_DEFAULT_PROVIDER="libvirt"))
    place_replicas = load_place_replicas()
    for provider in PROVIDERS:
        inv = lab.ansible_inventory(provider)
        hv = inv["_meta"]["hostvars"]
        # what roles/volume/tasks/main.yml gathers: NODE/POOL of each storage host in order
        pools = [
            f"{hv[h].get('cairn_node_name', h)}/{p['name']}"
            for h in inv["cairn_storage"]["hosts"]
            for p in hv[h]["cairn_pools"]
        ]
        (volume,) = hv["storage1"]["cairn_volumes"]
        chosen = place_replicas(pools, volume["replicas"], volume.get("allow_same_node", False))
        assert chosen == ["storage1/tank", "storage2/tank", "storage3/tank"]
        assert len({c.split("/")[0] for c in chosen}) == 3


def list_hosts(out: str) -> dict[str, list[str]]:
    """``ansible-playbook --list-hosts``: play title -> its hosts, sorted."""
    found: dict[str, list[str]] = {}
    title = None
    for line in out.splitlines():
        play = re.match(r"\s*play #\d+ \(.*?\): (.*)\tTAGS", line)
        if play:
            title = play.group(1)
            found[title] = []
        elif title is not None and re.match(r"\s{6}\S+$", line):
            found[title].append(line.strip())
    return {t: sorted(h) for t, h in found.items()}


def test_site_and_lab_playbooks_accept_the_inventory(lab: Lab) -> None:
    if not lab.inventory("libvirt").exists():
        run(["vagrant", "validate"], dict(lab.env, VAGRANT_DEFAULT_PROVIDER="libvirt"))
    playbook = tool("ansible-playbook")
    for provider in PROVIDERS:
        inv = str(lab.inventory(provider))
        for book in ("site.yml", "playbooks/lab.yml", "playbooks/lab_client.yml"):
            out = run([playbook, "-i", inv, book, "--syntax-check"], lab.env)
            assert f"playbook: {book}" in out

        hosts = run([playbook, "-i", inv, "playbooks/lab.yml", "--list-hosts"], lab.env)
        found = list_hosts(hosts)
        assert found["Lab VMs, what the roles expect to find"] == STORAGE
        assert (
            found["Install the engine and run a node agent on every storage and target host"]
            == STORAGE
        )
        assert found["ZFS and the ZFS pools the storage hosts declare"] == STORAGE
        assert found["Create or grow the volumes, replicas placed on distinct hosts"] == [
            "storage1"
        ]
        assert found["Log the initiators in to their volumes"] == ["client1"]
        assert found["Filesystems on the Cairn volumes, mounted"] == ["client1"]

        tasks = run([playbook, "-i", inv, "playbooks/lab.yml", "--list-tasks"], lab.env)
        for task in ("cairn.storage.engine : Copy the wheelhouse to the host",
                     "cairn.storage.pool : Create the pools through the node agent",
                     "cairn.storage.volume : Gather the storage hosts' pools, in inventory order",
                     "Configure open-iscsi and log in", "Make the filesystem where there is none",
                     "Mount now and at boot"):  # fmt: skip
            assert task in tasks, f"{provider}: {task!r} not in\n{tasks}"


def test_merged_with_the_inventory_vagrant_generates(lab: Lab) -> None:
    """The provisioner passes Vagrant's own inventory (how to connect; written as in
    plugins/provisioners/ansible/provisioner/base.rb of Vagrant 2.3) and the generated one;
    Ansible merges them: connection from the first, groups and Cairn variables from the
    second."""
    if not lab.inventory("libvirt").exists():
        run(["vagrant", "validate"], dict(lab.env, VAGRANT_DEFAULT_PROVIDER="libvirt"))
    vagrants = lab.root / "vagrant_ansible_inventory"
    lines = ["# Generated by Vagrant", ""]
    for i, m in enumerate(lab.machines()):
        key = f"/lab/.vagrant/machines/{m['name']}/virtualbox/private_key"
        lines.append(f"{m['name']} ansible_host=127.0.0.1 ansible_port={2222 + i} "
                     f"ansible_user='vagrant' ansible_ssh_private_key_file='{key}'")  # fmt: skip
    vagrants.write_text("\n".join(lines) + "\n")
    argv = [tool("ansible-inventory"), "-i", str(vagrants), "-i", str(lab.inventory("virtualbox")),
            "--list"]  # fmt: skip
    inv = json.loads(run(argv, lab.env))
    assert inv["cairn_storage"]["hosts"] == STORAGE
    assert inv["cairn_initiators"]["hosts"] == ["client1"]
    hv = inv["_meta"]["hostvars"]
    assert hv["storage3"]["ansible_port"] == 2224
    assert hv["storage3"]["cairn_address"] == "192.168.56.13"
    assert hv["storage3"]["cairn_pools"][0]["vdevs"] == ["/dev/sdb", "/dev/sdc"]
    assert hv["client1"]["ansible_user"] == "vagrant"
    assert hv["client1"]["cairn_initiator_volumes"] == ["vol1"]
