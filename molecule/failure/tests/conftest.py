"""The scenario's hosts for the testinfra tests (molecule/shared/cairn_mh.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCENARIO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCENARIO_DIR.parent / "shared"))

from cairn_mh import Scenario, inventory_of


@pytest.fixture(scope="session")
def scenario(request: pytest.FixtureRequest) -> Scenario:
    # the cluster scenario's inventory (molecule.yml passes it as --ansible-inventory)
    return Scenario(inventory_of(request.config, SCENARIO_DIR.parent / "cluster"))
