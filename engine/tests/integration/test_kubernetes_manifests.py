"""playbooks/kubernetes.yml through ``ansible-playbook`` against two real node agents
(node-a, node-b on 127.0.0.150-151, one pool each) serving two volumes: ``secure`` with
mutual CHAP (target on node-a) and ``plain`` without (target on node-b).

The playbook renders the manifests (``cairn_k8s_render_dir``); every one must pass the
offline validator ``kubernetes-validate`` against the Kubernetes 1.37 schemas in strict mode
(an unknown field is an error), and a deliberately broken one must fail it.  The PVs must
carry what the agents report (portal, IQN, size), and the CHAP Secret's keys must log in to
the real target with libiscsi (discovery and session), where no credentials are refused.
Apply mode is run too, against an address where no API server listens: kubernetes.core.k8s
must accept its arguments and fail only on the connection (no cluster here)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .agent_node import AgentNode, wait_for
from .ansible_run import collections_tree, run_playbook
from .conftest import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PLAYBOOK = REPO / "playbooks" / "kubernetes.yml"
ADDRESSES = [f"127.0.0.{150 + i}" for i in range(3)]  # this test's loopback addresses
K8S_VERSION = "1.37.0"  # the newest schemas kubernetes-validate bundles
MiB = 1 << 20
CHAP = {
    "username": "k8s-client",
    "secret": "client-secret-0123",
    "target_username": "cairn-target",
    "target_secret": "target-secret-4567",
}


def validator() -> str:
    found = Path(sys.executable).parent / "kubernetes-validate"
    if found.exists():
        return str(found)
    which = shutil.which("kubernetes-validate")
    if which is None:
        pytest.fail("kubernetes-validate is not installed (requirements.txt)")
    return which


def validate(*files: Path) -> subprocess.CompletedProcess[str]:
    """The offline validator on ``files``, strict, against K8S_VERSION's schemas."""
    argv = [validator(), "--strict", "--kubernetes-version", K8S_VERSION, *map(str, files)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes = [AgentNode(root, f"node-{c}", ADDRESSES[i]) for i, c in enumerate("ab")]
        for n in self.nodes:
            n.peers = {m.name: m.url for m in self.nodes if m is not n}
        self.a, self.b = self.nodes
        self.collections = collections_tree(root) / "ansible_collections"
        self.portals = {
            "secure": f"{self.a.address}:{free_port(self.a.address)}",
            "plain": f"{self.b.address}:{free_port(self.b.address)}",
        }
        self.volumes: list[dict[str, Any]] = [
            {
                "name": "secure",
                "size": "64M",
                "replicas": ["node-a/p1", "node-b/p1"],
                "target_host": "node-a",
                "portal": self.portals["secure"],
                "chap": CHAP,
            },
            {
                "name": "plain",
                "size": "1G",
                "replicas": ["node-b/p1", "node-a/p1"],
                "target_host": "node-b",
                "portal": self.portals["plain"],
            },
        ]
        hosts = {
            n.name: {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "cairn_address": n.address,
                "cairn_api_url": n.url,
                "cairn_token_file": str(n.token_file),
            }
            for n in self.nodes
        }
        self.inventory = root / "inventory.json"
        self.inventory.write_text(
            json.dumps(
                {
                    "all": {
                        "vars": {"cairn_volumes": self.volumes},
                        "children": {
                            "cairn_storage": {"hosts": hosts},
                            "cairn_targets": {"hosts": {h: {} for h in hosts}},
                        },
                    }
                }
            )
        )
        self.runs = 0

    def play(self, *extra: str, rc: int = 0, check: bool = False) -> str:
        """Run the playbook with ``-e`` for each of ``extra``; its whole output.  ``rc`` is
        the exit code expected."""
        self.runs += 1
        code, out = run_playbook(
            self.root,
            self.inventory,
            PLAYBOOK,
            *extra,
            check=check,
            log=self.root / f"run-{self.runs}.log",
            ANSIBLE_LOCALHOST_WARNING="0",
            ANSIBLE_PIPELINING="1",
        )
        assert code == rc, f"{extra}: exit {code}, not {rc}\n{out}"
        return out

    def report(self) -> str:
        return "\n".join(n.report() for n in self.nodes)


def kubernetes_core() -> Path:
    """kubernetes.core as scripts/collections.sh puts it into the checkout (run here: it
    does nothing when the pinned version is there)."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "collections.sh")],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHON=sys.executable),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    path = REPO / ".collections" / "ansible_collections" / "kubernetes" / "core"
    assert (path / "plugins" / "modules" / "k8s.py").is_file(), done.stdout
    return path


def inq(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iscsi-inq", url], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    for tool in ("iscsi-inq", "iscsi-ls"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/install.sh installs libiscsi-bin)")
    lab = Lab(tmp_path_factory.mktemp("k8s"))
    try:
        for n in lab.nodes:
            n.start()
        for n in lab.nodes:
            n.call(
                "POST", "/v1/pools", {"name": "p1", "listen": f"{n.address}:{free_port(n.address)}"}
            )
        for v, node in zip(lab.volumes, lab.nodes, strict=True):
            body = {k: v[k] for k in ("name", "size", "replicas", "portal")}
            if "chap" in v:
                body["chap"] = v["chap"]
            node.call("POST", "/v1/volumes", body)
        for v, node in zip(lab.volumes, lab.nodes, strict=True):
            wait_for(
                lambda v=v, node=node: (
                    node.call("GET", f"/v1/volumes/{v['name']}").get("status") or {}
                ).get("state") == "healthy",
                60, f"{v['name']} healthy", lab.report,
            )  # fmt: skip
        (lab.collections / "kubernetes").mkdir()
        (lab.collections / "kubernetes" / "core").symlink_to(kubernetes_core())
        yield lab
    finally:
        for n in lab.nodes:
            n.cleanup()


@pytest.fixture(scope="module")
def rendered(lab: Lab) -> dict[str, Any]:
    out_dir = lab.root / "manifests"
    out = lab.play(f"cairn_k8s_render_dir={out_dir}")
    assert "ok: [localhost]" in out
    files = sorted(out_dir.glob("*.yml"))
    docs = {f.name: yaml.safe_load(f.read_text()) for f in files}
    return {"dir": out_dir, "files": files, "docs": docs, "out": out}


def test_renders_one_file_per_object(rendered: dict[str, Any]) -> None:
    assert sorted(rendered["docs"]) == [
        "cairn-plain.pod.yml",
        "cairn-plain.pv.yml",
        "cairn-plain.pvc.yml",
        "cairn-secure.pod.yml",
        "cairn-secure.pv.yml",
        "cairn-secure.pvc.yml",
        "cairn-secure.secret.yml",  # the volume without CHAP gets no Secret
    ]
    secret = rendered["dir"] / "cairn-secure.secret.yml"
    assert secret.stat().st_mode & 0o777 == 0o600
    # the secrets never show in the playbook's output
    for value in CHAP.values():
        assert value not in rendered["out"]
        assert base64.b64encode(value.encode()).decode() not in rendered["out"]


def test_every_manifest_passes_the_strict_schema_validation(rendered: dict[str, Any]) -> None:
    done = validate(*rendered["files"])
    assert done.returncode == 0, done.stdout + done.stderr
    for f in rendered["files"]:
        assert re.search(rf"{re.escape(str(f))} passed", done.stdout), done.stdout


def test_a_broken_manifest_fails_the_validation(rendered: dict[str, Any], lab: Lab) -> None:
    pv = rendered["docs"]["cairn-secure.pv.yml"]
    typo = json.loads(json.dumps(pv))  # an optional field misspelled: unknown in strict mode
    typo["spec"]["iscsi"]["fstype"] = typo["spec"]["iscsi"].pop("fsType")
    required = json.loads(json.dumps(pv))  # a required field misspelled
    required["spec"]["iscsi"]["targetPortl"] = required["spec"]["iscsi"].pop("targetPortal")
    wrong_type = json.loads(json.dumps(pv))
    wrong_type["spec"]["iscsi"]["lun"] = "zero"
    claim = json.loads(json.dumps(rendered["docs"]["cairn-secure.pvc.yml"]))
    claim["spec"]["storageClass"] = claim["spec"].pop("storageClassName")
    for name, doc, field in (
        ("typo.yml", typo, "'fstype' was unexpected"),
        ("required.yml", required, "'targetPortal' is a required property"),
        ("type.yml", wrong_type, "zero"),
        ("claim.yml", claim, "'storageClass' was unexpected"),
    ):
        bad = lab.root / name
        bad.write_text(yaml.safe_dump(doc))
        done = validate(bad)
        assert done.returncode != 0, f"{name} passed:\n{done.stdout}{done.stderr}"
        assert field in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_persistent_volumes_match_the_agents(rendered: dict[str, Any], lab: Lab) -> None:
    docs = rendered["docs"]
    for v, node in zip(lab.volumes, lab.nodes, strict=True):
        agent = node.call("GET", f"/v1/volumes/{v['name']}")
        pv = docs[f"cairn-{v['name']}.pv.yml"]
        spec = pv["spec"]
        assert pv["metadata"]["name"] == f"cairn-{v['name']}"
        assert pv["metadata"]["labels"]["cairn.io/volume"] == v["name"]
        assert spec["iscsi"]["targetPortal"] == agent["portal"] == lab.portals[v["name"]]
        assert spec["iscsi"]["iqn"] == agent["iqn"]
        assert spec["iscsi"]["lun"] == 0 and spec["iscsi"]["fsType"] == "ext4"
        assert spec["iscsi"]["readOnly"] is False
        assert spec["accessModes"] == ["ReadWriteOnce"]
        assert spec["persistentVolumeReclaimPolicy"] == "Retain"
        assert spec["storageClassName"] == ""
        assert spec["claimRef"]["name"] == f"cairn-{v['name']}"
        want = {"secure": "64Mi", "plain": "1Gi"}[v["name"]]
        assert spec["capacity"]["storage"] == want
        assert int(pv["metadata"]["annotations"]["cairn.io/size-bytes"]) == agent["size"]
        assert agent["size"] == {"secure": 64 * MiB, "plain": 1024 * MiB}[v["name"]]
        pvc = docs[f"cairn-{v['name']}.pvc.yml"]
        assert pvc["spec"]["storageClassName"] == ""
        assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
        assert pvc["spec"]["resources"]["requests"]["storage"] == want
        pod = docs[f"cairn-{v['name']}.pod.yml"]
        claims = [x["persistentVolumeClaim"]["claimName"] for x in pod["spec"]["volumes"]]
        assert claims == [pvc["metadata"]["name"]]
    secure = docs["cairn-secure.pv.yml"]["spec"]["iscsi"]
    assert secure["chapAuthSession"] is True and secure["chapAuthDiscovery"] is True
    assert secure["secretRef"] == {"name": "cairn-secure-chap", "namespace": "default"}
    plain = docs["cairn-plain.pv.yml"]["spec"]["iscsi"]
    assert plain["chapAuthSession"] is False and plain["chapAuthDiscovery"] is False
    assert "secretRef" not in plain


def test_the_chap_secret_logs_in_to_the_real_target(rendered: dict[str, Any], lab: Lab) -> None:
    secret = rendered["docs"]["cairn-secure.secret.yml"]
    assert secret["type"] == "kubernetes.io/iscsi-chap"
    assert secret["metadata"]["namespace"] == "default"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for prefix in ("discovery.sendtargets.auth", "node.session.auth"):
        assert data[f"{prefix}.username"] == CHAP["username"]
        assert data[f"{prefix}.password"] == CHAP["secret"]
        assert data[f"{prefix}.username_in"] == CHAP["target_username"]
        assert data[f"{prefix}.password_in"] == CHAP["target_secret"]
    assert len(data) == 8
    iscsi = rendered["docs"]["cairn-secure.pv.yml"]["spec"]["iscsi"]
    portal, iqn = iscsi["targetPortal"], iscsi["iqn"]
    user, password = data["node.session.auth.username"], data["node.session.auth.password"]
    mutual = (
        f"?target_user={data['node.session.auth.username_in']}"
        f"&target_password={data['node.session.auth.password_in']}"
    )
    # the session the kubelet's open-iscsi would open, with the Secret's credentials
    done = inq(f"iscsi://{user}%{password}@{portal}/{iqn}/{iscsi['lun']}{mutual}")
    assert done.returncode == 0 and "Vendor" in done.stdout, done.stdout + done.stderr
    # discovery (SendTargets) with the discovery keys finds the PV's IQN
    d_user = data["discovery.sendtargets.auth.username"]
    d_password = data["discovery.sendtargets.auth.password"]
    done = subprocess.run(
        ["iscsi-ls", f"iscsi://{d_user}%{d_password}@{portal}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and iqn in done.stdout, done.stdout + done.stderr
    # without them, or with a wrong one, the target refuses
    assert inq(f"iscsi://{portal}/{iqn}/0").returncode != 0
    assert inq(f"iscsi://{user}%wrong-secret-0000@{portal}/{iqn}/0").returncode != 0
    # the volume without CHAP needs none
    plain = rendered["docs"]["cairn-plain.pv.yml"]["spec"]["iscsi"]
    done = inq(f"iscsi://{plain['targetPortal']}/{plain['iqn']}/0")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_second_render_changes_nothing(rendered: dict[str, Any], lab: Lab) -> None:
    before = {f.name: f.read_bytes() for f in rendered["files"]}
    out = lab.play(f"cairn_k8s_render_dir={rendered['dir']}")
    assert re.search(r"^localhost\s*:.*changed=0\s", out, re.MULTILINE), out
    assert {f.name: f.read_bytes() for f in rendered["dir"].glob("*.yml")} == before


def test_one_volume_in_another_namespace(lab: Lab) -> None:
    out_dir = lab.root / "one"
    lab.play(
        f"cairn_k8s_render_dir={out_dir}",
        '{"cairn_k8s_volumes": ["plain"], "cairn_k8s_namespace": "storage-test",'
        ' "cairn_k8s_example_pods": false, "cairn_k8s_portals": {"plain": ["127.0.0.152:3260"]}}',
    )
    names = sorted(f.name for f in out_dir.glob("*.yml"))
    assert names == ["cairn-plain.pv.yml", "cairn-plain.pvc.yml"], names
    pv = yaml.safe_load((out_dir / "cairn-plain.pv.yml").read_text())
    assert pv["spec"]["claimRef"]["namespace"] == "storage-test"
    assert pv["spec"]["iscsi"]["portals"] == ["127.0.0.152:3260"]
    pvc = yaml.safe_load((out_dir / "cairn-plain.pvc.yml").read_text())
    assert pvc["metadata"]["namespace"] == "storage-test"
    done = validate(*sorted(out_dir.glob("*.yml")))
    assert done.returncode == 0, done.stdout + done.stderr


def test_refusals(lab: Lab) -> None:
    # a volume that no agent serves
    out = lab.play(
        f"cairn_k8s_render_dir={lab.root / 'none'}", '{"cairn_k8s_volumes": ["nosuch"]}', rc=2
    )
    assert "cairn_k8s_volumes names nosuch, which no agent of cairn_targets" in out, out
    # a CHAP volume whose secret the inventory does not give
    volumes = [{k: v for k, v in vol.items() if k != "chap"} for vol in lab.volumes]
    out = lab.play(
        f"cairn_k8s_render_dir={lab.root / 'nochap'}",
        json.dumps({"cairn_volumes": volumes}),
        rc=2,
    )
    assert "volume secure requires CHAP (user k8s-client)" in out, out
    assert not (lab.root / "nochap").exists()
    # removal without its confirm variable
    out = lab.play("cairn_k8s_state=absent", rc=2)
    assert "pass -e cairn_k8s_confirm_remove=true" in out, out


def test_apply_mode_reaches_for_the_cluster(lab: Lab) -> None:
    """No Kubernetes here: kubernetes.core.k8s is given a kubeconfig whose API server
    address has no listener.  The module must load, take its arguments and fail only on
    the connection."""
    address = ADDRESSES[2]
    kubeconfig = lab.root / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "none",
                        "cluster": {"server": f"http://{address}:{free_port(address)}"},
                    }
                ],
                "users": [{"name": "nobody", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "nobody"}}],
                "current-context": "none",
            }
        )
    )
    for check in (False, True):
        out = lab.play(
            f"cairn_k8s_kubeconfig={kubeconfig}", "cairn_k8s_context=none", rc=2, check=check
        )
        assert "TASK [Apply the CHAP Secrets]" in out, out
        assert "Unsupported parameters" not in out and "couldn't resolve module" not in out, out
        assert re.search(r"Connection refused|Max retries exceeded|Failed to get client", out), out
        for value in CHAP.values():
            assert value not in out
