"""The desired state of one node: its pools and the volumes whose target runs here.

It lives in ``STATE_DIR/desired.json``; every change is written to a temporary file,
fsynced, renamed over the old one and the directory fsynced, so that a crash leaves
either the old or the new state, never a mix.  ``version`` counts the changes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from cairn.store._fs import atomic_write

FILE = "desired.json"


class StateError(Exception):
    """desired.json cannot be read or written."""


def _empty() -> dict[str, Any]:
    return {"version": 0, "pools": {}, "volumes": {}}


class DesiredState:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / FILE
        self.doc = _empty()

    # -- reading ---------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: Path) -> DesiredState:
        s = cls(state_dir)
        try:
            raw = s.path.read_text()
        except FileNotFoundError:
            return s
        except OSError as e:
            raise StateError(f"cannot read {s.path}: {e.strerror or e}") from None
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as e:
            raise StateError(f"{s.path} is not valid JSON: {e}") from None
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("version"), int)
            or not isinstance(doc.get("pools"), dict)
            or not isinstance(doc.get("volumes"), dict)
        ):
            raise StateError(f"{s.path}: expected {{version, pools, volumes}}")
        s.doc = doc
        return s

    @property
    def version(self) -> int:
        return int(self.doc["version"])

    @property
    def pools(self) -> dict[str, dict[str, Any]]:
        pools: dict[str, dict[str, Any]] = self.doc["pools"]
        return pools

    @property
    def volumes(self) -> dict[str, dict[str, Any]]:
        volumes: dict[str, dict[str, Any]] = self.doc["volumes"]
        return volumes

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.doc)

    # -- changing --------------------------------------------------------------------

    def commit(self, new: dict[str, Any]) -> int:
        """Make ``new`` (a changed ``snapshot()``) the desired state: version + 1, written
        durably before it is used.  Returns the new version."""
        new = copy.deepcopy(new)
        new["version"] = self.version + 1
        self._write(new)
        self.doc = new
        return self.version

    def _write(self, doc: dict[str, Any]) -> None:
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data, mode=0o600)  # it may name CHAP secrets' files
        except OSError as e:
            raise StateError(f"cannot write {self.path}: {e.strerror or e}") from None
