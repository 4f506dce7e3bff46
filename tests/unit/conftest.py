"""Make ``ansible_collections.cairn.storage`` importable when plain pytest runs these tests
from the repository (``python -m pytest tests/unit``): a temporary tree
``ansible_collections/cairn/storage`` that links to the repository root goes first on
``sys.path`` and in ``ANSIBLE_COLLECTIONS_PATH``.  Under ``ansible-test units`` the
collection is already in such a tree and nothing is done."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _importable() -> bool:
    try:
        import ansible_collections.cairn.storage.plugins.module_utils.cairn_api  # noqa: F401
    except ImportError:
        return False
    return True


def collection_tree(root: Path = ROOT) -> Path:
    """A temporary folder holding ``ansible_collections/cairn/storage`` -> ``root``."""
    top = Path(tempfile.mkdtemp(prefix="cairn-collections-"))
    (top / "ansible_collections" / "cairn").mkdir(parents=True)
    (top / "ansible_collections" / "cairn" / "storage").symlink_to(root)
    atexit.register(shutil.rmtree, top, True)
    return top


if not _importable():
    _top = collection_tree()
    sys.path.insert(0, str(_top))
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(_top)
    for _name in [
        m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")
    ]:
        del sys.modules[_name]
