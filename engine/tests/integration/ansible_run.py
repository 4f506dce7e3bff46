"""Running the collection's playbooks from a test: ``ansible-playbook`` of the venv, the
collection found as ``ansible_collections/cairn/storage`` (a link to this repository in the
test's directory), every Ansible setting that would touch the home directory kept in the
test's directory, and the PLAY RECAP read back as counts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def ansible_playbook() -> str:
    """The ``ansible-playbook`` beside this Python (the venv's), else the one on PATH."""
    found = Path(sys.executable).parent / "ansible-playbook"
    if found.exists():
        return str(found)
    which = shutil.which("ansible-playbook")
    if which is None:
        pytest.fail("ansible-playbook is not installed (pip install ansible-core)")
    return which


def collections_tree(root: Path) -> Path:
    """``root/collections`` holding ``ansible_collections/cairn/storage`` -> the repository."""
    top = root / "collections"
    link = top / "ansible_collections" / "cairn" / "storage"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)
    return top


def ansible_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of an ``ansible-playbook`` run of a test rooted at ``root``."""
    return dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(collections_tree(root)),
        ANSIBLE_HOME=str(root / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(root / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        **extra,
    )


def run_playbook(
    root: Path,
    inventory: Path,
    playbook: Path,
    *extra: str,
    check: bool = False,
    log: Path,
    timeout: float = 300,
    **env: str,
) -> tuple[int, str]:
    """``ansible-playbook -i INVENTORY PLAYBOOK`` with ``-e`` for each of ``extra`` (and
    ``--check``), in the environment of ``ansible_env(root, **env)``; the command, its time
    and output go to ``log``. The exit code and the whole output."""
    argv = [ansible_playbook(), "-i", str(inventory), str(playbook)]
    for e in extra:
        argv += ["-e", e]
    if check:
        argv.append("--check")
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, env=ansible_env(root, **env), timeout=timeout
    )
    out = done.stdout + done.stderr
    log.write_text(f"{argv}\n{time.monotonic() - started:.1f} s\n{out}")
    return done.returncode, out


def recap(stdout: str, *hosts: str) -> dict[str, int]:
    """The PLAY RECAP's counts (ok, changed, failed, ...) summed over ``hosts``
    (default: localhost); fails the test when none of them is in it."""
    names = "|".join(re.escape(h) for h in (hosts or ("localhost",)))
    counts: dict[str, int] = {}
    found = False
    for m in re.finditer(rf"^(?:{names})\s*:\s*(.*)$", stdout, re.MULTILINE):
        found = True
        for k, v in re.findall(r"(\w+)=(\d+)", m.group(1)):
            counts[k] = counts.get(k, 0) + int(v)
    assert found, f"no PLAY RECAP line for {hosts or 'localhost'}:\n{stdout}"
    return counts
