"""The agent's API over TLS (its own certificate, checked by the CLI and by a peer agent)
and a volume created with CHAP and an initiator ACL through ``cairn volume create``,
checked with a real iSCSI client (docs/agent.md, docs/operations.md)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .agent_node import AgentNode, wait_for
from .conftest import find_cairn, free_port

pytestmark = pytest.mark.integration

ALLOWED = "iqn.2026-11.org.example:allowed"
OTHER = "iqn.2026-11.org.example:other"
SECRET = "a-chap-secret-of-some-length"


@pytest.fixture(scope="module")
def tls_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[AgentNode]]:
    for tool in ("openssl", "iscsi-inq"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/install.sh installs it)")
    root = tmp_path_factory.mktemp("tls")
    nodes = [AgentNode(root, f"node-t{i}", f"127.0.0.{71 + i}") for i in range(2)]
    ca = root / "ca.pem"
    certs = [n.use_tls(ca) for n in nodes]
    ca.write_text("".join(c.read_text() for c in certs))
    for n in nodes:
        n.peers = {m.name: m.url for m in nodes if m is not n}
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.cleanup()


def cli(node: AgentNode, *argv: str, ca: bool = True, url: str | None = None):
    cmd = [find_cairn(), *argv, "--api", url or node.url, "--token-file", str(node.token_file)]
    if ca:
        cmd += ["--ca-file", str(node.ca_file)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_the_api_speaks_tls_and_the_cli_checks_the_certificate(tls_nodes):
    a = tls_nodes[0]
    assert a.url.startswith("https://")
    done = cli(a, "pool", "list")
    assert done.returncode == 0, done.stderr
    # without the certificate to check against: refused, exit 5 (unreachable)
    done = cli(a, "pool", "list", ca=False)
    assert done.returncode == 5 and "certificate" in done.stderr.lower(), done.stderr
    # plain HTTP to the TLS port gets no answer it can use
    done = cli(a, "pool", "list", ca=False, url=a.url.replace("https:", "http:"))
    assert done.returncode != 0, done.stdout


def test_chap_and_acl_at_create_through_a_tls_peer(tls_nodes):
    a, b = tls_nodes
    for n in tls_nodes:
        done = cli(n, "pool", "create", "p1", "--listen", f"{n.address}:{free_port(n.address)}")
        assert done.returncode == 0, done.stderr
    secret = a.dir / "chap.secret"
    secret.write_text(SECRET + "\n")
    portal = f"127.0.0.1:{free_port()}"
    # node-t1's pool is resolved by asking node-t1's agent over TLS
    done = cli(a, "volume", "create", "secure", "--size", "16M", "--portal", portal,
               "--replica", "node-t0/p1", "--replica", "node-t1/p1",
               "--chap-user", "alice", "--chap-secret-file", str(secret),
               "--allow-initiator", ALLOWED, "--block-size", "4096")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    shown = cli(a, "volume", "show", "secure", "--json")
    assert SECRET not in shown.stdout and '"username": "alice"' in shown.stdout, shown.stdout
    iqn = "iqn.2026-11.io.cairn:secure"

    def inq(initiator: str, creds: str = "") -> subprocess.CompletedProcess[str]:
        url = f"iscsi://{creds}{portal}/{iqn}/0"
        return subprocess.run(["iscsi-inq", "-i", initiator, url],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    ok = wait_for(lambda: inq(ALLOWED, f"alice%{SECRET}@").returncode == 0, 60,
                  "CHAP login of the allowed initiator", lambda: a.report())  # fmt: skip
    assert ok
    assert "Vendor" in inq(ALLOWED, f"alice%{SECRET}@").stdout
    cap = subprocess.run(
        ["iscsi-readcapacity16", "-i", ALLOWED, f"iscsi://alice%{SECRET}@{portal}/{iqn}/0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cap.returncode == 0 and "LOGICAL BLOCK LENGTH IN BYTES:4096" in cap.stdout, cap
    assert "Total size:16777216" in cap.stdout, cap.stdout
    assert inq(ALLOWED).returncode != 0  # no CHAP
    assert inq(ALLOWED, "alice%wrong-secret-1234@").returncode != 0  # wrong secret
    assert inq(OTHER, f"alice%{SECRET}@").returncode != 0  # not in the ACL
    # a secret given inline is refused: secrets come from files
    bad = cli(a, "volume", "create", "v2", "--size", "16M", "--replica", "node-t0/p1",
              "--chap-user", "alice")  # fmt: skip
    assert bad.returncode == 2 and "--chap-secret-file" in bad.stderr, bad.stderr
    short = a.dir / "short.secret"
    short.write_text("short\n")
    bad = cli(a, "volume", "create", "v2", "--size", "16M", "--replica", "node-t0/p1",
              "--chap-user", "alice", "--chap-secret-file", str(short))  # fmt: skip
    assert bad.returncode == 2 and "12 to 255" in bad.stderr, bad.stderr
    # the secret is in no log and on no command line
    logs = [a.log, *(a.state_dir / "logs").glob("*.log")]
    assert not [f for f in logs if SECRET in f.read_text(errors="replace")], logs
    for pid in a.child_pids():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert SECRET not in cmdline, cmdline
    done = cli(a, "volume", "delete", "secure", "--yes")
    assert done.returncode == 0, done.stderr
