"""molecule/failure verify: the cluster keeps its promises when a storage host goes away
and comes back, and through a rolling upgrade of the engine under client I/O.

The tests run in file order and build on each other (one cluster, one story):
1. baseline: vol1 healthy with 3 replicas;
2. storage3 powered off (`podman stop`): vol1 reports degraded and stays writable;
3. storage3 powered on (`podman start`): systemd starts zfs-fuse and the agent, the agent
   its pool server, the replica rebuilds and vol1 is healthy again within a bound, with
   the data written while degraded;
4. playbooks/rolling_upgrade.yml to a new engine version while client1 writes numbered
   patterns: every acknowledged write reads back, every host runs the new version."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cairn_mh import CAIRN, SHARED, Scenario, iscsi_url, qemu_io, wait_for

REPO = SHARED.parents[1]
VOLUME = "vol1"
TARGET = "storage1"
VICTIM = "storage3"
MiB = 1 << 20
REBUILD_BOUND = 180  # seconds from power-on to healthy
WRITER_BASE = 128 * MiB  # the writer's slots start here
WRITER_SLOT = 8192
WRITER_MAX = 14000  # 14000 slots of 8 KiB: 109 MiB, the volume's 256 MiB not passed

state: dict[str, Any] = {}


def host_ctl(action: str, name: str) -> str:
    done = subprocess.run(
        ["bash", str(SHARED / "host_ctl.sh"), action, name],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, (
        f"host_ctl.sh {action} {name}: {done.stdout}{done.stderr}"
    )
    return done.stdout


def portal(scenario: Scenario) -> str:
    vols = scenario.hostvars[TARGET]["cairn_volumes"]
    return str(next(v for v in vols if v["name"] == VOLUME)["portal"])


def replica_states(status: dict[str, Any]) -> dict[str, str]:
    return {r["address"].rsplit(":", 1)[0]: r["state"] for r in status["replicas"]}


def test_baseline_healthy(scenario: Scenario) -> None:
    status = scenario.volume_status(TARGET, VOLUME)
    assert status["state"] == "healthy", status
    assert list(replica_states(status).values()) == ["healthy"] * 3, status


def test_host_down_volume_degraded_and_writable(scenario: Scenario) -> None:
    host_ctl("stop", VICTIM)
    assert host_ctl("state", VICTIM).strip() == "exited"
    victim = scenario.address(VICTIM)

    def degraded() -> dict[str, Any] | None:
        s = scenario.volume_status(TARGET, VOLUME)
        return (
            s
            if s["state"] == "degraded" and replica_states(s)[victim] != "healthy"
            else None
        )

    status = wait_for("vol1 reports degraded with storage3 off", degraded, timeout=60)
    print(f"\nstorage3 off: vol1 {status['state']}, replicas {replica_states(status)}")
    assert status["writable"] is True, status
    client = scenario.host("client1")
    w = qemu_io(client, portal(scenario), VOLUME, "write -P 0x33 8M 4M")
    assert w.rc == 0 and "wrote 4194304/4194304 bytes" in w.stdout, w.stdout + w.stderr
    r = qemu_io(client, portal(scenario), VOLUME, "read -P 0x33 8M 4M")
    assert r.rc == 0 and "read 4194304/4194304 bytes" in r.stdout, r.stdout + r.stderr
    assert "Pattern verification failed" not in r.stdout
    # still degraded: the write did not bring storage3 back
    assert scenario.volume_status(TARGET, VOLUME)["state"] == "degraded"


def test_host_back_replica_rebuilds_to_healthy(scenario: Scenario) -> None:
    t0 = time.monotonic()
    host_ctl("start", VICTIM)
    victim = scenario.host(VICTIM)
    wait_for(
        "storage3's agent answers after power-on",
        lambda: scenario.api(VICTIM, "/v1/health").get("ok"),
        timeout=90,
    )
    assert victim.service("cairn-agent").is_running
    status = wait_for(
        "vol1 healthy again after storage3 came back",
        lambda: (
            (s := scenario.volume_status(TARGET, VOLUME))["state"] == "healthy" and s
        ),
        timeout=REBUILD_BOUND,
    )
    took = time.monotonic() - t0
    print(
        f"\nstorage3 on: vol1 healthy {took:.0f} s after power-on, {replica_states(status)}"
    )
    assert list(replica_states(status).values()) == ["healthy"] * 3, status
    # the replica that came back took part in the rebuild and holds the newest sequence
    victim_addr = scenario.address(VICTIM)
    rep = next(
        r for r in status["replicas"] if r["address"].startswith(victim_addr + ":")
    )
    assert rep["seq"] == status["last_seq"], status
    r = qemu_io(
        scenario.host("client1"), portal(scenario), VOLUME, "read -P 0x33 8M 4M"
    )
    assert r.rc == 0 and "Pattern verification failed" not in r.stdout, r.stdout


def next_version(current: str) -> str:
    return f"{current}.post1"


def build_next_wheelhouse(scenario: Scenario, current: str, new: str) -> Path:
    """Wheels of a copy of engine/ whose version is NEW, plus the dependency wheels the
    converge built for CURRENT (in cairn_engine_wheelhouse_cache on this machine)."""
    cache = Path(scenario.hostvars[TARGET]["cairn_engine_wheelhouse_cache"])
    root = cache.parent / "engine-next"
    shutil.rmtree(root, ignore_errors=True)
    src = root / "src"
    (src / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(REPO / "engine" / name, src / name)
    shutil.copytree(
        REPO / "engine" / "src" / "cairn",
        src / "src" / "cairn",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for f, pattern in (
        (src / "pyproject.toml", 'version = "{}"'),
        (src / "src" / "cairn" / "__init__.py", '__version__ = "{}"'),
    ):
        text = f.read_text()
        assert pattern.format(current) in text, f"{f}: no {pattern.format(current)}"
        f.write_text(text.replace(pattern.format(current), pattern.format(new)))
    wheels = root / "wheels"
    shutil.copytree(
        cache / current, wheels, ignore=shutil.ignore_patterns("cairn_engine-*")
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            str(src),
            "-w",
            str(wheels),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(p.name.startswith(f"cairn_engine-{new}-") for p in wheels.iterdir())
    return wheels


def read_back(
    client: Any, url: str, acked: list[tuple[int, int]]
) -> tuple[int, list[str]]:
    """Read every acknowledged (offset, pattern) back with qemu-io; (verified, problems)."""
    verified, problems = 0, []
    for i in range(0, len(acked), 400):
        chunk = acked[i : i + 400]
        cmds = " ".join(f"-c 'read -P {pat} {off} {WRITER_SLOT}'" for off, pat in chunk)
        out = client.run(f"qemu-io -f raw {cmds} {url}")
        text = out.stdout + out.stderr
        bad = {
            int(m)
            for m in re.findall(r"Pattern verification failed at offset (\d+)", text)
        }
        good = {
            int(m)
            for m in re.findall(
                rf"read {WRITER_SLOT}/{WRITER_SLOT} bytes at offset (\d+)", text
            )
        }
        for off, pat in chunk:
            if off in bad or off not in good:
                problems.append(
                    f"offset {off} (pattern {pat}): {'wrong data' if off in bad else 'not read'}"
                )
            else:
                verified += 1
    return verified, problems


def test_rolling_upgrade_under_io_loses_no_acknowledged_write(
    scenario: Scenario,
) -> None:
    current = scenario.host(TARGET).run("%s --version", CAIRN).stdout.split()[-1]
    new = next_version(current)
    wheels = build_next_wheelhouse(scenario, current, new)
    client = scenario.host("client1")
    url = iscsi_url(portal(scenario), VOLUME)
    script = base64.b64encode((SHARED / "writer.sh").read_bytes()).decode()
    setup = client.run(
        f"echo {script} | base64 -d > /root/writer.sh && rm -f /root/writer.stop /root/writer.log"
        f" && systemd-run --unit cairn-mh-writer --collect bash /root/writer.sh {url}"
        f" {WRITER_BASE} {WRITER_SLOT} {WRITER_MAX} /root/writer.log /root/writer.stop"
    )
    assert setup.rc == 0, setup.stdout + setup.stderr
    wait_for(
        "the writer's first acknowledged write",
        lambda: "ok " in client.file("/root/writer.log").content_string,
        timeout=60,
        interval=1,
    )
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".collections"))
    t0 = time.monotonic()
    play = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            scenario.inventory,
            str(REPO / "playbooks" / "rolling_upgrade.yml"),
            "-e",
            f"cairn_engine_version={new}",
            "-e",
            f"cairn_engine_wheelhouse={wheels}",
            "-e",
            "cairn_upgrade_wait_timeout=300",
            "-e",
            "cairn_upgrade_poll_interval=2",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    upgrade_s = time.monotonic() - t0
    client.run("touch /root/writer.stop")
    wait_for(
        "the writer to stop",
        lambda: "\nend " in "\n" + client.file("/root/writer.log").content_string,
        timeout=120,
        interval=1,
    )
    recap = re.findall(r"^(\S+)\s+: ok=.*$", play.stdout, re.MULTILINE)
    assert play.returncode == 0, (
        f"rolling upgrade failed:\n{play.stdout[-6000:]}{play.stderr}"
    )
    log = client.file("/root/writer.log").content_string.splitlines()
    acked = [
        (int(ln.split()[2]), int(ln.split()[3])) for ln in log if ln.startswith("ok ")
    ]
    failed = [ln for ln in log if ln.startswith("fail ")]
    verified, problems = read_back(client, url, acked)
    print(
        f"\nrolling upgrade {current} -> {new}: {upgrade_s:.0f} s ({len(recap)} hosts in the recap);"
        f" writes acknowledged {len(acked)}, not acknowledged {len(failed)};"
        f" acknowledged writes read back intact: {verified}/{len(acked)}"
    )
    for ln in failed[:10]:
        print(f"  not acknowledged: {ln[:160]}")
    assert acked, "the writer got no write acknowledged"
    tried = int(next(ln for ln in log if ln.startswith("end ")).split()[1])
    assert tried < WRITER_MAX, "the writer used all its slots before the upgrade ended"
    assert not problems, (
        f"{len(problems)} acknowledged writes lost or wrong: {problems[:20]}"
    )
    assert verified == len(acked)
    state["new"] = new


@pytest.mark.parametrize("name", ["storage1", "storage2", "storage3"])
def test_every_host_runs_the_new_version(scenario: Scenario, name: str) -> None:
    new = state.get("new")
    assert new, "the rolling upgrade did not complete"
    out = scenario.host(name).run("%s --version", CAIRN)
    assert out.rc == 0 and out.stdout.strip() == f"cairn {new}", out.stdout + out.stderr
    assert scenario.host(name).service("cairn-agent").is_running
    assert scenario.api(name, "/v1/health").get("ok") is True


def test_volume_healthy_after_upgrade(scenario: Scenario) -> None:
    status = scenario.volume_status(TARGET, VOLUME)
    assert status["state"] == "healthy", status
    assert list(replica_states(status).values()) == ["healthy"] * 3, status
