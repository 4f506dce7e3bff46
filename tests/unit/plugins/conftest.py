from __future__ import annotations

import pytest
from ansible_collections.cairn.storage.tests.unit.plugins.cairn_fake import (
    TOKEN,
    FakeAgent,
    Runner,
)


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def runner(agent: FakeAgent, tmp_path) -> Runner:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return Runner(agent, str(token))
